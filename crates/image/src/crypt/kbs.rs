//! The CoCo key-provider recipient: the layer key options are wrapped with
//! AES-256-GCM under a key-encryption key (KEK) that lives in the KBS as the
//! resource named by `kid` (`kbs:///repo/type/tag`). The annotation is the
//! "annotation packet" of confidential-containers/guest-components
//! (`confidential-data-hub/hub/src/image/annotation_packet/{v1,v2}.rs`):
//!
//! ```json
//! {"kid":"kbs:///default/key/id1","wrapped_data":"<b64>","iv":"<b64, 12 bytes>","wrap_type":"A256GCM"}
//! ```
//!
//! stored base64-encoded under `org.opencontainers.image.enc.keys.provider.attestation-agent`,
//! as `skopeo copy --encryption-key provider:attestation-agent:…` writes it.
//!
//! Where the KEK comes from is a [`KekSource`]: the KBS client inside the
//! guest, or [`LocalKeks`] (the `offline_fs_kbc` resources-file format) for
//! tests and offline use.

use std::collections::BTreeMap;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use super::{CryptError, KeyUnwrapper, KeyWrapper};

/// Annotation of the `attestation-agent` key provider.
pub const ANNOTATION_PROVIDER_AA: &str =
    "org.opencontainers.image.enc.keys.provider.attestation-agent";
/// Largest annotation packet accepted.
pub const MAX_PACKET_BYTES: usize = 64 * 1024;

/// A KBS resource path `kbs://[host]/repo/type/tag`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ResourceUri {
    /// The KBS host part (usually empty: the guest's configured KBS).
    pub host: String,
    /// Repository (`default`).
    pub repository: String,
    /// Resource type (`key`).
    pub kind: String,
    /// Tag (`id1`).
    pub tag: String,
}

impl ResourceUri {
    /// Parse `kbs:///repo/type/tag` (or with a host).
    pub fn parse(s: &str) -> Result<Self, CryptError> {
        let bad = |why: &str| CryptError::Key(format!("KBS resource URI {s:?}: {why}"));
        let rest = s
            .strip_prefix("kbs://")
            .ok_or_else(|| bad("expected kbs:///repository/type/tag"))?;
        let (host, path) = rest.split_once('/').ok_or_else(|| bad("no path"))?;
        let parts: Vec<&str> = path.split('/').collect();
        let [repository, kind, tag] = parts.as_slice() else {
            return Err(bad(
                "expected exactly three path segments repository/type/tag",
            ));
        };
        for seg in [repository, kind, tag] {
            if seg.is_empty()
                || *seg == "."
                || *seg == ".."
                || !seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(bad(
                    "segments must be non-empty [A-Za-z0-9._-], not . or ..",
                ));
            }
        }
        Ok(ResourceUri {
            host: host.into(),
            repository: (*repository).into(),
            kind: (*kind).into(),
            tag: (*tag).into(),
        })
    }

    /// `repo/type/tag`, the KBS resource path.
    pub fn path(&self) -> String {
        format!("{}/{}/{}", self.repository, self.kind, self.tag)
    }
}

impl std::fmt::Display for ResourceUri {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kbs://{}/{}", self.host, self.path())
    }
}

/// The KBS resources named as key-encryption keys by a layer's
/// `attestation-agent` annotation (what a guest will ask the KBS for to
/// decrypt it). Malformed entries are skipped: decryption refuses them.
pub fn key_ids_of(layer: &crate::spec::Descriptor) -> Vec<ResourceUri> {
    let Some(value) = layer.annotations.get(ANNOTATION_PROVIDER_AA) else {
        return Vec::new();
    };
    value
        .split(',')
        .take(64)
        .filter_map(|part| B64.decode(part.trim()).ok())
        .filter(|blob| blob.len() <= MAX_PACKET_BYTES)
        .filter_map(|blob| serde_json::from_slice::<AnnotationPacket>(&blob).ok())
        .filter_map(|p| ResourceUri::parse(&p.kid).ok())
        .collect()
}

/// Where key-encryption keys come from (the KBS, or a local file).
pub trait KekSource {
    /// The 32-byte KEK stored at `kid`.
    fn kek(&self, kid: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CryptError>;
}

/// KEKs held locally, keyed by `repo/type/tag`. Reads the `offline_fs_kbc`
/// resources format `{"default/key/1": "<base64>"}`.
#[derive(Default)]
pub struct LocalKeks {
    keys: BTreeMap<String, Zeroizing<Vec<u8>>>,
}

impl LocalKeks {
    /// Parse a resources JSON document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, CryptError> {
        if bytes.len() > MAX_PACKET_BYTES * 16 {
            return Err(CryptError::Key("KEK file is too large".into()));
        }
        let mut raw: BTreeMap<String, String> =
            serde_json::from_slice(bytes).map_err(|e| CryptError::Key(format!("KEK file: {e}")))?;
        let mut keys = BTreeMap::new();
        for (k, v) in raw.iter_mut() {
            let key = B64
                .decode(v.as_bytes())
                .map_err(|e| CryptError::Key(format!("KEK {k:?}: {e}")));
            v.zeroize();
            keys.insert(k.clone(), Zeroizing::new(key?));
        }
        Ok(LocalKeks { keys })
    }

    /// Add one key.
    pub fn insert(&mut self, kid: &ResourceUri, key: Zeroizing<Vec<u8>>) {
        self.keys.insert(kid.path(), key);
    }
}

impl KekSource for LocalKeks {
    fn kek(&self, kid: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CryptError> {
        self.keys
            .get(&kid.path())
            .cloned()
            .ok_or_else(|| CryptError::NoKey(format!("no key-encryption key for {kid}")))
    }
}

/// The annotation packet (v1 fields plus the optional v2 ones).
#[derive(Debug, Serialize, Deserialize)]
struct AnnotationPacket {
    kid: String,
    wrapped_data: String,
    iv: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    wrap_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    provider_settings: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<serde_json::Value>,
}

/// Wraps layer keys under a KBS-held KEK.
pub struct KbsWrapper {
    kid: ResourceUri,
    kek: Zeroizing<[u8; 32]>,
}

impl KbsWrapper {
    /// A wrapper for the KEK `kek`, stored in the KBS at `kid`.
    pub fn new(kid: ResourceUri, kek: &[u8]) -> Result<Self, CryptError> {
        let kek: [u8; 32] = kek.try_into().map_err(|_| {
            CryptError::Key(format!(
                "key-encryption key for {kid} must be 32 bytes, got {}",
                kek.len()
            ))
        })?;
        Ok(KbsWrapper {
            kid,
            kek: Zeroizing::new(kek),
        })
    }
}

impl KeyWrapper for KbsWrapper {
    fn annotation_key(&self) -> String {
        ANNOTATION_PROVIDER_AA.into()
    }

    fn wrap(&self, private_opts: &[u8]) -> Result<Vec<u8>, CryptError> {
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let cipher = Aes256Gcm::new_from_slice(&self.kek[..])
            .map_err(|_| CryptError::Internal("AES key length"))?;
        let wrapped = cipher
            .encrypt(
                &Nonce::from(iv),
                Payload {
                    msg: private_opts,
                    aad: &[],
                },
            )
            .map_err(|_| CryptError::Internal("AES-GCM encryption failed"))?;
        let packet = AnnotationPacket {
            kid: self.kid.to_string(),
            wrapped_data: B64.encode(wrapped),
            iv: B64.encode(iv),
            wrap_type: Some("A256GCM".into()),
            version: None,
            provider: None,
            provider_settings: None,
            annotations: None,
        };
        serde_json::to_vec(&packet).map_err(|e| CryptError::Malformed {
            what: "annotation packet".into(),
            reason: e.to_string(),
        })
    }
}

/// Unwraps annotation packets with KEKs from a [`KekSource`].
pub struct KbsUnwrapper<S> {
    source: S,
}

impl<S: KekSource> KbsUnwrapper<S> {
    /// An unwrapper fetching KEKs from `source`.
    pub fn new(source: S) -> Self {
        KbsUnwrapper { source }
    }
}

fn malformed(reason: impl Into<String>) -> CryptError {
    CryptError::Malformed {
        what: "annotation packet".into(),
        reason: reason.into(),
    }
}

impl<S: KekSource> KeyUnwrapper for KbsUnwrapper<S> {
    fn annotation_key(&self) -> String {
        ANNOTATION_PROVIDER_AA.into()
    }

    fn unwrap(&self, blob: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, CryptError> {
        if blob.len() > MAX_PACKET_BYTES {
            return Err(malformed(format!(
                "{} bytes (at most {MAX_PACKET_BYTES})",
                blob.len()
            )));
        }
        let p: AnnotationPacket =
            serde_json::from_slice(blob).map_err(|e| malformed(e.to_string()))?;
        if let Some(w) = p.wrap_type.as_deref() {
            if w != "A256GCM" {
                return Err(malformed(format!("wrap_type {w:?} (expected \"A256GCM\")")));
            }
        }
        if let Some(provider) = p.provider.as_deref() {
            if provider != "kbs" {
                return Err(malformed(format!(
                    "provider {provider:?}: only the KBS provider is supported"
                )));
            }
        }
        let kid = ResourceUri::parse(&p.kid)?;
        let iv = B64
            .decode(&p.iv)
            .map_err(|e| malformed(format!("iv: {e}")))?;
        let iv: [u8; 12] = iv
            .try_into()
            .map_err(|v: Vec<u8>| malformed(format!("iv of {} bytes (expected 12)", v.len())))?;
        let wrapped = B64
            .decode(&p.wrapped_data)
            .map_err(|e| malformed(format!("wrapped_data: {e}")))?;
        let kek = self.source.kek(&kid)?;
        let cipher = Aes256Gcm::new_from_slice(&kek).map_err(|_| {
            CryptError::Key(format!(
                "key-encryption key {kid} must be 32 bytes, got {}",
                kek.len()
            ))
        })?;
        cipher
            .decrypt(
                &Nonce::from(iv),
                Payload {
                    msg: &wrapped,
                    aad: &[],
                },
            )
            .map(|v| Some(Zeroizing::new(v)))
            .map_err(|_| CryptError::Refused {
                check: "annotation packet AES-GCM tag",
                reason: format!("the wrapped key does not decrypt under the KEK at {kid}"),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_uris() {
        let r = ResourceUri::parse("kbs:///default/key/id1").unwrap();
        assert_eq!(r.path(), "default/key/id1");
        assert_eq!(r.to_string(), "kbs:///default/key/id1");
        for bad in [
            "kbs:///a/b",
            "kbs:///a/../c",
            "kbs:///a/b/c/d",
            "http:///a/b/c",
            "kbs:///a//c",
        ] {
            assert!(ResourceUri::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn packet_round_trip_and_wrong_kek() {
        let kid = ResourceUri::parse("kbs:///default/key/id1").unwrap();
        let w = KbsWrapper::new(kid.clone(), &[7; 32]).unwrap();
        let packet = w.wrap(b"opts").unwrap();
        let v: serde_json::Value = serde_json::from_slice(&packet).unwrap();
        assert_eq!(v["kid"], "kbs:///default/key/id1");
        assert_eq!(v["wrap_type"], "A256GCM");
        let mut keks = LocalKeks::default();
        keks.insert(&kid, Zeroizing::new(vec![7; 32]));
        let out = KbsUnwrapper::new(keks).unwrap(&packet).unwrap().unwrap();
        assert_eq!(&out[..], b"opts");
        let mut wrong = LocalKeks::default();
        wrong.insert(&kid, Zeroizing::new(vec![8; 32]));
        assert!(matches!(
            KbsUnwrapper::new(wrong).unwrap(&packet),
            Err(CryptError::Refused { .. })
        ));
        let keks = LocalKeks::from_json(
            br#"{"default/key/id1":"BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="}"#,
        )
        .unwrap();
        assert!(KbsUnwrapper::new(keks).unwrap(&packet).unwrap().is_some());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_packets_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let _ = KbsUnwrapper::new(LocalKeks::default()).unwrap(&bytes);
        }
    }
}
