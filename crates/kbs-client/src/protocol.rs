//! Wire types of the Trustee KBS protocol v0.4.0 (RCAR) that `kbs-types`
//! does not cover, and the names both sides must agree on.
//!
//! The request, challenge, attestation and error bodies are the `kbs-types`
//! 0.18 structures (re-exported here). The `/auth` request is parsed with
//! [`AuthRequest`] instead of `kbs_types::Request` so that veil's `sim` TEE,
//! which is not a `kbs-types` variant, can be named.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use kbs_types::{
    Attestation, Challenge, CompositeEvidence, ErrorInformation, InitData, RuntimeData, TeePubKey,
};

/// The protocol version this crate speaks (and the only one the server accepts).
pub const PROTOCOL_VERSION: &str = "0.4.0";
/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Prefix of every RFC 7807 `type` URI, as Trustee spells it.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";
/// Upper bound on any response body this client reads (tokens, JWEs, errors).
pub const MAX_RESPONSE_BYTES: u64 = 4 << 20;

/// `POST /kbs/v0/auth` body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AuthRequest {
    /// Protocol version, `"0.4.0"`.
    pub version: String,
    /// TEE name: a `kbs-types` name (`snp`, `tdx`, …) or `sim`.
    pub tee: String,
    /// `{"supported-hash-algorithms": [...]}`, `""` or `{}`.
    #[serde(rename = "extra-params", default)]
    pub extra_params: serde_json::Value,
}

/// `POST /kbs/v0/attest` response body.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AttestResponse {
    /// The EAR attestation token (compact JWS).
    pub token: String,
}

/// The JWE a resource GET returns, flattened JSON serialization (RFC 7516
/// §7.2.2). `protected` is kept as the exact base64url string received: it
/// is the AAD of the content encryption.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FlattenedJwe {
    /// base64url of the protected header JSON.
    pub protected: String,
    /// base64url of the wrapped content-encryption key.
    pub encrypted_key: String,
    /// base64url of the 12-byte GCM IV.
    pub iv: String,
    /// base64url of the ciphertext.
    pub ciphertext: String,
    /// base64url of the 16-byte GCM tag.
    pub tag: String,
}

/// A resource address `<repo>/<type>/<tag>`, validated with Trustee's rule:
/// exactly three segments, each `[A-Za-z0-9_-][A-Za-z0-9_.-]*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ResourcePath {
    repo: String,
    kind: String,
    tag: String,
}

/// Why a resource path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid resource path {path:?}: {reason} (expected <repo>/<type>/<tag>, each segment [A-Za-z0-9_-][A-Za-z0-9_.-]*)"
)]
pub struct InvalidResourcePath {
    /// The path as given (truncated to 200 characters).
    pub path: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Longest accepted segment.
const MAX_SEGMENT: usize = 128;

fn check_segment(seg: &str) -> Result<(), String> {
    let mut chars = seg.chars();
    let Some(first) = chars.next() else {
        return Err("empty segment".into());
    };
    if seg.len() > MAX_SEGMENT {
        return Err(format!("segment longer than {MAX_SEGMENT} bytes"));
    }
    if !(first.is_ascii_alphanumeric() || first == '_' || first == '-') {
        return Err(format!("segment {seg:?} starts with {first:?}"));
    }
    if let Some(bad) = chars.find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(format!("segment {seg:?} contains {bad:?}"));
    }
    Ok(())
}

impl ResourcePath {
    /// Parse `repo/type/tag`; also accepts `kbs:///repo/type/tag` and
    /// `kbs://host/repo/type/tag` resource URIs.
    pub fn parse(s: &str) -> Result<Self, InvalidResourcePath> {
        let err = |reason: String| InvalidResourcePath {
            path: s.chars().take(200).collect(),
            reason,
        };
        let body = match s.strip_prefix("kbs://") {
            Some(rest) => match rest.split_once('/') {
                Some((_host, path)) => path,
                None => return Err(err("resource URI has no path".into())),
            },
            None => s,
        };
        let segs: Vec<&str> = body.split('/').collect();
        if segs.len() != 3 {
            return Err(err(format!("{} segments, expected 3", segs.len())));
        }
        for seg in &segs {
            check_segment(seg).map_err(err)?;
        }
        Ok(ResourcePath {
            repo: segs[0].to_string(),
            kind: segs[1].to_string(),
            tag: segs[2].to_string(),
        })
    }

    /// The repository (first segment).
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The three segments, as policies see them (`resource-path`).
    pub fn segments(&self) -> [&str; 3] {
        [&self.repo, &self.kind, &self.tag]
    }
}

impl fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.repo, self.kind, self.tag)
    }
}

impl std::str::FromStr for ResourcePath {
    type Err = InvalidResourcePath;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ResourcePath::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_trustee_paths() {
        let p = ResourcePath::parse("default/key/1").unwrap();
        assert_eq!(p.segments(), ["default", "key", "1"]);
        assert_eq!(p.to_string(), "default/key/1");
        assert_eq!(
            ResourcePath::parse("kbs:///a/b.c/d-e").unwrap().to_string(),
            "a/b.c/d-e"
        );
        assert_eq!(
            ResourcePath::parse("kbs://h:8080/a/b/c")
                .unwrap()
                .to_string(),
            "a/b/c"
        );
    }

    #[test]
    fn refuses_traversal_and_extra_segments() {
        for bad in [
            "../b/c", "a/../c", "a/b/..", "a/b", "a/b/c/d", "a//c", "", "a/b/c/", "a/b/c d",
            "/a/b/c",
        ] {
            let e = ResourcePath::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("invalid resource path"),
                "{bad}: {e}"
            );
        }
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_roundtrips(s in ".{0,80}") {
            if let Ok(p) = ResourcePath::parse(&s) {
                prop_assert!(p.segments().iter().all(|s| !s.starts_with('.') && !s.contains('/')));
                prop_assert_eq!(ResourcePath::parse(&p.to_string()).unwrap(), p);
            }
        }
    }
}
