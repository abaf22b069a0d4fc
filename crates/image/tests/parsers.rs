//! Property tests for every parser of untrusted image bytes that had none
//! at the module level: OCI documents (index, manifest, config) through
//! `source::resolve`, ocicrypt annotations (public options, private
//! options, the KBS key-provider packet), cosign payloads and signature
//! attachments, containers-policy.json documents and GPG keyrings.
//!
//! Each feeds arbitrary bytes (must never panic) and mutations of valid
//! documents (must be refused, or accepted only as what was really there).

use std::collections::HashMap;
use std::io::Read;

use proptest::prelude::*;
use veil_image::crypt::kbs::{KbsUnwrapper, KbsWrapper, LocalKeks, ResourceUri};
use veil_image::crypt::{self, KeyUnwrapper, KeyWrapper, PrivateOptions, PublicOptions};
use veil_image::sign::cosign;
use veil_image::sign::gpg::Keyring;
use veil_image::sign::payload::{Payload, PayloadKind};
use veil_image::sign::policy::Policy;
use veil_image::source::{self, BlobSource, SourceError, VerifyingReader};
use veil_image::spec::{Descriptor, Platform, media_type};
use veil_image::{Digest, ImageConfig, Manifest};
use zeroize::Zeroizing;

/// Blobs in memory, served verified like any other source.
#[derive(Default)]
struct Mem(HashMap<String, Vec<u8>>);

impl Mem {
    fn put(&mut self, bytes: &[u8], media_type: &str) -> Descriptor {
        let d = Descriptor::new(media_type, Digest::sha256(bytes), bytes.len() as u64);
        self.0.insert(d.digest.to_string(), bytes.to_vec());
        d
    }
}

impl BlobSource for Mem {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, SourceError> {
        let b = self
            .0
            .get(&desc.digest.to_string())
            .ok_or_else(|| SourceError::NotFound(desc.digest.to_string()))?;
        Ok(Box::new(VerifyingReader::new(&b[..], desc, "blob")))
    }
}

/// A valid single-layer image: (source, manifest descriptor, manifest bytes).
fn valid_image() -> (Mem, Descriptor, Vec<u8>) {
    let mut m = Mem::default();
    let layer = m.put(b"layer", media_type::OCI_LAYER_TAR);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
    });
    let config = m.put(config.to_string().as_bytes(), media_type::OCI_CONFIG);
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
        "config": config, "layers": [layer],
    })
    .to_string()
    .into_bytes();
    let desc = m.put(&manifest, media_type::OCI_MANIFEST);
    (m, desc, manifest)
}

/// Whatever resolves is self-consistent: every document hashes to the
/// digest it was reached by.
fn check_resolved(img: &veil_image::ResolvedImage) {
    assert_eq!(
        &Digest::sha256(&img.manifest_bytes),
        img.manifest_digest(),
        "manifest bytes and digest disagree"
    );
    assert_eq!(
        &Digest::sha256(&img.config_bytes),
        img.config_digest(),
        "config bytes and digest disagree"
    );
    assert_eq!(img.diff_ids().len(), img.layers().len());
    assert!(Platform::linux_amd64().matches(&img.config.platform()));
}

const ROOT_TYPES: [&str; 4] = [
    media_type::OCI_INDEX,
    media_type::OCI_MANIFEST,
    media_type::DOCKER_MANIFEST_LIST,
    media_type::DOCKER_MANIFEST,
];

fn kid() -> ResourceUri {
    ResourceUri::parse("kbs:///default/key/layer").unwrap()
}

fn keks(kek: &[u8; 32]) -> LocalKeks {
    let mut k = LocalKeks::default();
    k.insert(&kid(), Zeroizing::new(kek.to_vec()));
    k
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Arbitrary bytes as an index or manifest, then as a config.
    #[test]
    fn arbitrary_oci_documents_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
        root in 0usize..4,
    ) {
        let mut m = Mem::default();
        let desc = m.put(&bytes, ROOT_TYPES[root]);
        if let Ok(img) = source::resolve(&m, &desc, &Platform::linux_amd64()) {
            check_resolved(&img);
        }
        let _ = serde_json::from_slice::<Manifest>(&bytes);
        let _ = serde_json::from_slice::<ImageConfig>(&bytes).map(|c| (c.platform(), c.env().len()));
    }

    /// One byte of a valid manifest changed: refused, or still consistent.
    #[test]
    fn mutated_manifests_resolve_only_consistently(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let (mut m, _, mut manifest) = valid_image();
        let i = pos.index(manifest.len());
        manifest[i] ^= xor;
        let desc = m.put(&manifest, media_type::OCI_MANIFEST);
        if let Ok(img) = source::resolve(&m, &desc, &Platform::linux_amd64()) {
            check_resolved(&img);
        }
    }

    /// A descriptor whose digest or size does not match the bytes is refused.
    #[test]
    fn wrong_descriptors_are_refused(size_delta in 1u64..100, flip in any::<bool>()) {
        let (m, mut desc, _) = valid_image();
        if flip {
            desc.digest = Digest::sha256(b"other");
        } else {
            desc.size += size_delta;
        }
        prop_assert!(source::resolve(&m, &desc, &Platform::linux_amd64()).is_err());
    }

    /// ocicrypt public options, private options and KEK files.
    #[test]
    fn arbitrary_ocicrypt_options_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        text in ".{0,400}",
    ) {
        let _ = PublicOptions::from_annotation(&text);
        let _ = PrivateOptions::from_json(&bytes);
        let _ = LocalKeks::from_json(&bytes);
        let _ = ResourceUri::parse(&text);
        // As layer annotations, through the recipient lookup.
        let mut layer = Descriptor::new(media_type::OCI_LAYER_TAR, Digest::sha256(b"x"), 1);
        layer.annotations.insert(format!("{}provider.attestation-agent", crypt::ANNOTATION_KEYS_PREFIX), text.clone());
        layer.annotations.insert(crypt::ANNOTATION_PUBOPTS.into(), text);
        let kbs = KbsUnwrapper::new(keks(&[7; 32]));
        let _ = crypt::unwrap_options(&layer, &[&kbs as &dyn KeyUnwrapper]);
    }

    /// One byte of a valid KBS key-provider packet changed: it never
    /// unwraps to anything but the original options.
    #[test]
    fn mutated_kbs_packets_never_unwrap_to_other_options(pos in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let kek = [9u8; 32];
        let opts = br#"{"symkey":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=","digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000","cipheroptions":{"nonce":"AAAAAAAAAAAAAAAAAAAAAA=="}}"#;
        let mut packet = KbsWrapper::new(kid(), &kek).unwrap().wrap(opts).unwrap();
        let i = pos.index(packet.len());
        packet[i] ^= xor;
        if let Ok(Some(got)) = KbsUnwrapper::new(keks(&kek)).unwrap(&packet) {
            prop_assert_eq!(&got[..], &opts[..]);
        }
    }

    /// cosign and simple-signing payloads: arbitrary bytes and arbitrary
    /// values in the right shape.
    #[test]
    fn arbitrary_payloads_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..512),
        kind in prop::sample::select(vec!["cosign container image signature", "atomic container signature", "x"]),
        reference in ".{0,80}",
        digest in ".{0,80}",
    ) {
        let _ = Payload::parse(&bytes, PayloadKind::Cosign);
        let doc = serde_json::json!({"critical": {"identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest}, "type": kind}, "optional": {"creator": "x"}});
        let doc = doc.to_string();
        for k in [PayloadKind::Cosign, PayloadKind::Simple] {
            if let Ok(p) = Payload::parse(doc.as_bytes(), k) {
                prop_assert_eq!(&p.docker_reference, &reference);
                prop_assert_eq!(p.manifest_digest.to_string(), digest.clone());
                let _ = p.identity();
            }
        }
    }

    /// Signature attachment manifests (cosign `sha256-….sig`).
    #[test]
    fn arbitrary_attachments_never_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..1024),
        sig in ".{0,100}",
    ) {
        let mut m = Mem::default();
        let desc = m.put(&bytes, media_type::OCI_MANIFEST);
        let _ = cosign::read_attachment(&m, &desc);
        // A well-formed attachment with an arbitrary signature and payload.
        let payload = m.put(&bytes, "application/vnd.dev.cosign.simplesigning.v1+json");
        let mut layer = serde_json::to_value(&payload).unwrap();
        layer["annotations"] = serde_json::json!({"dev.cosignproject.cosign/signature": sig});
        let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": media_type::OCI_MANIFEST,
            "config": payload, "layers": [layer]}).to_string();
        let desc = m.put(manifest.as_bytes(), media_type::OCI_MANIFEST);
        let sigs = cosign::read_attachment(&m, &desc).unwrap();
        prop_assert_eq!(sigs.len(), 1);
        prop_assert_eq!(&sigs[0].payload, &bytes);
        // An arbitrary signature never verifies.
        let key = cosign::PrivateKey::generate().public_key();
        prop_assert!(key.verify(&sigs[0].payload, &sigs[0].signature).is_err());
    }

    /// containers-policy.json: arbitrary values in the right shape.
    #[test]
    fn arbitrary_policy_documents_never_panic(
        kind in prop::sample::select(vec!["insecureAcceptAnything", "reject", "signedBy", "sigstoreSigned", "other"]),
        key_type in prop::sample::select(vec!["GPGKeys", "x"]),
        scope in ".{0,40}",
        identity in prop::sample::select(vec!["matchExact", "matchRepoDigestOrExact", "matchRepository", "exactReference", "exactRepository", "remapIdentity", "bogus"]),
        value in ".{0,40}",
    ) {
        let doc = serde_json::json!({
            "default": [{"type": "reject"}],
            "transports": {"docker": {scope: [{"type": kind, "keyType": key_type, "keyData": value,
                "signedIdentity": {"type": identity, "dockerReference": value, "dockerRepository": value,
                    "prefix": value, "signedPrefix": value}}]}}});
        let _ = Policy::parse(doc.to_string().as_bytes(), std::path::Path::new("/nonexistent"));
    }

    /// GPG keyrings (binary or armored).
    #[test]
    fn arbitrary_keyrings_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024), body in "[A-Za-z0-9+/=\n]{0,200}") {
        let _ = Keyring::parse(&bytes);
        let armored = format!("-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{body}\n-----END PGP PUBLIC KEY BLOCK-----\n");
        let _ = Keyring::parse(armored.as_bytes());
    }
}
