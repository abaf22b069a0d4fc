//! Arbitrary bytes as an OCI index / manifest / config, resolved through
//! `source::resolve` from an in-memory source: never panics, and whatever
//! resolves is consistent with its digests.
#![no_main]

use std::collections::HashMap;
use std::io::Read;

use libfuzzer_sys::fuzz_target;
use veil_image::source::{self, BlobSource, SourceError, VerifyingReader};
use veil_image::spec::{Descriptor, Index, Platform, media_type};
use veil_image::{Digest, ImageConfig, Manifest};

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

const ROOT_TYPES: [&str; 4] = [
    media_type::OCI_INDEX,
    media_type::OCI_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
    media_type::DOCKER_MANIFEST,
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, doc)) = data.split_first() else { return };
    // Two documents: the root and one more blob (a config or a child
    // manifest) it may point to, split at a 0xff byte.
    let (root, other) = match doc.iter().position(|&b| b == 0xff) {
        Some(i) => (&doc[..i], &doc[i + 1..]),
        None => (doc, &[][..]),
    };
    let mut blobs = HashMap::new();
    blobs.insert(Digest::sha256(root).to_string(), root.to_vec());
    blobs.insert(Digest::sha256(other).to_string(), other.to_vec());
    let m = Mem(blobs);
    let desc = Descriptor::new(
        ROOT_TYPES[usize::from(selector) % ROOT_TYPES.len()],
        Digest::sha256(root),
        root.len() as u64,
    );
    if let Ok(img) = source::resolve(&m, &desc, &Platform::linux_amd64()) {
        assert_eq!(&Digest::sha256(&img.manifest_bytes), img.manifest_digest());
        assert_eq!(&Digest::sha256(&img.config_bytes), img.config_digest());
        assert_eq!(img.diff_ids().len(), img.layers().len());
    }
    let _ = serde_json::from_slice::<Index>(doc);
    let _ = serde_json::from_slice::<Manifest>(doc);
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(doc) {
        let _ = (c.platform(), c.entrypoint(), c.cmd(), c.env(), c.user());
    }
});
