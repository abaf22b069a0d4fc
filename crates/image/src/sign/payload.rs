//! The "simple signing" payload that both GPG signatures and cosign /
//! sigstore signatures sign:
//!
//! ```json
//! {"critical":{"identity":{"docker-reference":"…"},
//!              "image":{"docker-manifest-digest":"sha256:…"},
//!              "type":"atomic container signature"},
//!  "optional":{"creator":"…","timestamp":1700000000}}
//! ```
//!
//! As in `containers/image`, `critical` must hold exactly these fields
//! (an unknown critical field is refused, so a signer can never add a
//! constraint a verifier would silently ignore); `optional` is free-form.

use serde::Deserialize;

use crate::digest::Digest;

use super::SignError;
use super::reference::DockerReference;

/// `critical.type` of a GPG simple-signing signature.
pub const TYPE_SIMPLE: &str = "atomic container signature";
/// `critical.type` of a cosign / sigstore signature.
pub const TYPE_COSIGN: &str = "cosign container image signature";
/// Largest signed payload accepted.
pub const MAX_PAYLOAD_BYTES: usize = 4 << 20;

/// Which kind of signature a payload belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadKind {
    /// GPG ("atomic container signature").
    Simple,
    /// cosign ("cosign container image signature").
    Cosign,
}

impl PayloadKind {
    fn type_name(self) -> &'static str {
        match self {
            PayloadKind::Simple => TYPE_SIMPLE,
            PayloadKind::Cosign => TYPE_COSIGN,
        }
    }
}

/// A parsed, not yet trusted payload: what a signature claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// `critical.identity.docker-reference`, as written.
    pub docker_reference: String,
    /// `critical.image.docker-manifest-digest`.
    pub manifest_digest: Digest,
    /// `optional.creator`, informational.
    pub creator: Option<String>,
    /// `optional.timestamp`, informational.
    pub timestamp: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Critical {
    identity: Identity,
    image: Image,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Identity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Image {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    critical: Critical,
    #[serde(default)]
    optional: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Payload {
    /// Parse `bytes` as a payload of `kind`.
    pub fn parse(bytes: &[u8], kind: PayloadKind) -> Result<Self, SignError> {
        let bad = |reason: String| SignError::Malformed {
            what: "signature payload".into(),
            reason,
        };
        if bytes.len() > MAX_PAYLOAD_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_PAYLOAD_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let raw: Raw = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if raw.critical.kind != kind.type_name() {
            return Err(bad(format!(
                "critical.type is {:?}, expected {:?}",
                raw.critical.kind.chars().take(100).collect::<String>(),
                kind.type_name()
            )));
        }
        let manifest_digest = raw
            .critical
            .image
            .docker_manifest_digest
            .parse()
            .map_err(|e| bad(format!("docker-manifest-digest: {e}")))?;
        let optional = raw.optional.unwrap_or_default();
        Ok(Payload {
            docker_reference: raw.critical.identity.docker_reference,
            manifest_digest,
            creator: optional
                .get("creator")
                .and_then(|v| v.as_str())
                .map(str::to_owned),
            timestamp: optional.get("timestamp").and_then(|v| v.as_i64()),
        })
    }

    /// The signed identity, parsed.
    pub fn identity(&self) -> Result<DockerReference, SignError> {
        DockerReference::parse(&self.docker_reference)
    }

    /// Serialize a payload of `kind` for `identity` and `digest`.
    pub fn build(
        kind: PayloadKind,
        identity: &DockerReference,
        digest: &Digest,
        timestamp: i64,
    ) -> Vec<u8> {
        serde_json::json!({
            "critical": {
                "identity": {"docker-reference": identity.to_string()},
                "image": {"docker-manifest-digest": digest.to_string()},
                "type": kind.type_name(),
            },
            "optional": {
                "creator": concat!("veil ", env!("CARGO_PKG_VERSION")),
                "timestamp": timestamp,
            },
        })
        .to_string()
        .into_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips_and_is_strict() {
        let id = DockerReference::parse("registry.example/app:v1").unwrap();
        let d = Digest::sha256(b"manifest");
        let bytes = Payload::build(PayloadKind::Cosign, &id, &d, 7);
        let p = Payload::parse(&bytes, PayloadKind::Cosign).unwrap();
        assert_eq!(p.manifest_digest, d);
        assert_eq!(p.identity().unwrap(), id);
        assert_eq!(p.timestamp, Some(7));
        // The type must match the signature kind.
        assert!(Payload::parse(&bytes, PayloadKind::Simple).is_err());
        // An extra critical field is refused.
        let mut v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        v["critical"]["extra"] = 1.into();
        assert!(Payload::parse(v.to_string().as_bytes(), PayloadKind::Cosign).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Payload::parse(&b, PayloadKind::Simple);
        }
    }
}
