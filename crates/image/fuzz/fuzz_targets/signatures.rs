//! Signature material from untrusted places: simple-signing and cosign
//! payloads, stored signature blobs, cosign attachment manifests,
//! containers-policy.json documents, GPG keyrings and docker references.
#![no_main]

use std::collections::HashMap;
use std::io::Read;

use libfuzzer_sys::fuzz_target;
use veil_image::sign::cosign;
use veil_image::sign::gpg::Keyring;
use veil_image::sign::payload::{Payload, PayloadKind};
use veil_image::sign::policy::Policy;
use veil_image::sign::reference::DockerReference;
use veil_image::sign::StoredSignature;
use veil_image::source::{BlobSource, SourceError, VerifyingReader};
use veil_image::spec::{Descriptor, media_type};
use veil_image::Digest;

struct Mem(HashMap<String, Vec<u8>>);

impl BlobSource for Mem {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, SourceError> {
        let b = self
            .0
            .get(&desc.digest.to_string())
            .ok_or_else(|| SourceError::NotFound(desc.digest.to_string()))?;
        Ok(Box::new(VerifyingReader::new(&b[..], desc, "blob")))
    }
}

fuzz_target!(|data: &[u8]| {
    for kind in [PayloadKind::Simple, PayloadKind::Cosign] {
        if let Ok(p) = Payload::parse(data, kind) {
            let _ = p.identity();
        }
    }
    let _ = StoredSignature::from_blob(data);
    let _ = Policy::parse(data, std::path::Path::new("/nonexistent"));
    let _ = Keyring::parse(data);
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = DockerReference::parse(s) {
            let _ = r.policy_scopes();
        }
    }
    // As a cosign attachment manifest whose blobs are the input itself.
    let mut blobs = HashMap::new();
    blobs.insert(Digest::sha256(data).to_string(), data.to_vec());
    let m = Mem(blobs);
    let desc = Descriptor::new(media_type::OCI_MANIFEST, Digest::sha256(data), data.len() as u64);
    let _ = cosign::read_attachment(&m, &desc);
});
