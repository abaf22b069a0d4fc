//! Init-data: the CoCo TOML document whose digest is bound at launch.
//!
//! ```toml
//! version = "0.1.0"
//! algorithm = "sha384"
//!
//! [data]
//! "policy.rego" = '''
//! package agent_policy
//! ...'''
//! ```
//!
//! [`InitData::to_toml`] writes the canonical form: fixed key order
//! (`version`, `algorithm`, then `[data]` entries sorted by key), one
//! quoting rule per value, `\n` line endings. The same [`InitData`] always
//! gives the same bytes. [`ParsedInitData::parse`] reads any valid init-data
//! (from the host: untrusted) with size limits and keeps the exact bytes,
//! because the digest covers those bytes, not a re-serialization.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use crate::binding::{HashAlgorithm, InitDataDigest};

/// The only init-data format version.
pub const INIT_DATA_VERSION: &str = "0.1.0";
/// Largest accepted init-data TOML, in bytes.
pub const MAX_INIT_DATA_BYTES: usize = 4 * 1024 * 1024;
/// Largest number of `[data]` entries.
pub const MAX_DATA_ENTRIES: usize = 64;
/// Kubernetes annotation carrying base64(gzip(init-data)) (the CoCo / Kata key).
pub const INIT_DATA_ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// `[data]` key of the agent policy.
pub const POLICY_KEY: &str = "policy.rego";
/// `[data]` key of the attestation-agent configuration.
pub const AA_KEY: &str = "aa.toml";
/// `[data]` key of the confidential-data-hub configuration.
pub const CDH_KEY: &str = "cdh.toml";

/// Init-data errors.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InitDataError {
    #[error("init-data is {actual} bytes, larger than the limit of {limit} bytes")]
    TooLarge { limit: usize, actual: usize },
    #[error("init-data is not UTF-8")]
    NotUtf8,
    #[error("init-data is not valid TOML: {0}")]
    Toml(String),
    #[error("init-data version: expected \"{INIT_DATA_VERSION}\", got {0:?}")]
    Version(String),
    #[error("init-data algorithm: expected one of sha256, sha384, sha512, got {0:?}")]
    Algorithm(String),
    #[error("init-data has {actual} [data] entries, limit {limit}")]
    TooManyEntries { limit: usize, actual: usize },
    #[error("init-data [data] has no {0:?} entry")]
    MissingEntry(String),
    #[error("init-data value for {key:?} cannot be written as TOML: {reason}")]
    Unrepresentable { key: String, reason: String },
    #[error("init-data annotation: {0}")]
    Annotation(String),
}

/// Init-data content: the algorithm and the `[data]` map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitData {
    pub algorithm: HashAlgorithm,
    pub data: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInitData {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// Write `s` as a TOML basic string (`"..."` with escapes).
pub(crate) fn basic_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Write `s` as a TOML string value in one deterministic form: a multi-line
/// literal string when `s` has several lines and that form can hold it
/// exactly, else a basic string.
fn value_string(s: &str, out: &mut String) {
    let literal_ok = !s.contains("'''")
        && !s.ends_with('\'')
        && !s.contains('\r')
        && s.chars().all(|c| c == '\n' || c == '\t' || !c.is_control());
    if literal_ok && s.contains('\n') {
        out.push_str("'''\n");
        out.push_str(s);
        out.push_str("'''");
    } else {
        basic_string(s, out);
    }
}

impl InitData {
    /// New init-data with an empty `[data]`.
    pub fn new(algorithm: HashAlgorithm) -> Self {
        InitData {
            algorithm,
            data: BTreeMap::new(),
        }
    }

    /// The canonical TOML bytes.
    pub fn to_toml(&self) -> Result<String, InitDataError> {
        let mut out = String::new();
        out.push_str(&format!("version = \"{INIT_DATA_VERSION}\"\n"));
        out.push_str(&format!("algorithm = \"{}\"\n\n[data]\n", self.algorithm));
        for (k, v) in &self.data {
            if k.is_empty() {
                return Err(InitDataError::Unrepresentable {
                    key: String::new(),
                    reason: "empty key".into(),
                });
            }
            basic_string(k, &mut out);
            out.push_str(" = ");
            value_string(v, &mut out);
            out.push('\n');
        }
        // Self-check: what we wrote must parse back to exactly this content.
        let back = ParsedInitData::parse(out.as_bytes())?;
        if back.init_data != *self {
            return Err(InitDataError::Unrepresentable {
                key: String::new(),
                reason: "canonical form did not round-trip".into(),
            });
        }
        Ok(out)
    }

    /// Digest of the canonical TOML.
    pub fn digest(&self) -> Result<InitDataDigest, InitDataError> {
        Ok(self.algorithm.digest(self.to_toml()?.as_bytes()))
    }

    /// The policy text (`[data]."policy.rego"`).
    pub fn policy(&self) -> Result<&str, InitDataError> {
        self.data
            .get(POLICY_KEY)
            .map(String::as_str)
            .ok_or_else(|| InitDataError::MissingEntry(POLICY_KEY.into()))
    }
}

/// Init-data parsed from bytes, keeping the exact bytes its digest covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedInitData {
    pub init_data: InitData,
    raw: Vec<u8>,
}

impl ParsedInitData {
    /// Parse init-data TOML (untrusted input).
    pub fn parse(bytes: &[u8]) -> Result<Self, InitDataError> {
        if bytes.len() > MAX_INIT_DATA_BYTES {
            return Err(InitDataError::TooLarge {
                limit: MAX_INIT_DATA_BYTES,
                actual: bytes.len(),
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| InitDataError::NotUtf8)?;
        let raw: RawInitData = toml::from_str(text).map_err(|e| {
            InitDataError::Toml(e.to_string().lines().take(6).collect::<Vec<_>>().join(" "))
        })?;
        if raw.version != INIT_DATA_VERSION {
            return Err(InitDataError::Version(raw.version));
        }
        let algorithm =
            HashAlgorithm::parse(&raw.algorithm).ok_or(InitDataError::Algorithm(raw.algorithm))?;
        if raw.data.len() > MAX_DATA_ENTRIES {
            return Err(InitDataError::TooManyEntries {
                limit: MAX_DATA_ENTRIES,
                actual: raw.data.len(),
            });
        }
        Ok(ParsedInitData {
            init_data: InitData {
                algorithm,
                data: raw.data,
            },
            raw: bytes.to_vec(),
        })
    }

    /// The exact bytes.
    pub fn raw(&self) -> &[u8] {
        &self.raw
    }

    /// Digest of the exact bytes with the document's own algorithm.
    pub fn digest(&self) -> InitDataDigest {
        self.init_data.algorithm.digest(&self.raw)
    }

    /// Whether these bytes are the canonical form of their content.
    pub fn is_canonical(&self) -> bool {
        self.init_data
            .to_toml()
            .map(|t| t.as_bytes() == self.raw.as_slice())
            .unwrap_or(false)
    }
}

/// Encode init-data bytes for the Kubernetes annotation: base64(gzip(bytes)),
/// with a fixed gzip header (no name, mtime 0) so the output is deterministic.
pub fn encode_annotation(toml_bytes: &[u8]) -> Result<String, InitDataError> {
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(toml_bytes)
        .map_err(|e| InitDataError::Annotation(e.to_string()))?;
    let bytes = gz
        .finish()
        .map_err(|e| InitDataError::Annotation(e.to_string()))?;
    Ok(B64.encode(bytes))
}

/// Decode an annotation value (base64 of gzip) to init-data bytes, bounded.
pub fn decode_annotation(value: &str) -> Result<Vec<u8>, InitDataError> {
    if value.len() > MAX_INIT_DATA_BYTES {
        return Err(InitDataError::TooLarge {
            limit: MAX_INIT_DATA_BYTES,
            actual: value.len(),
        });
    }
    let gz = B64
        .decode(value.trim().as_bytes())
        .map_err(|e| InitDataError::Annotation(format!("invalid base64: {e}")))?;
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .take(MAX_INIT_DATA_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| InitDataError::Annotation(format!("invalid gzip: {e}")))?;
    if out.len() > MAX_INIT_DATA_BYTES {
        return Err(InitDataError::TooLarge {
            limit: MAX_INIT_DATA_BYTES,
            actual: out.len(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> InitData {
        let mut d = InitData::new(HashAlgorithm::Sha384);
        d.data.insert(
            "policy.rego".into(),
            "package agent_policy\nx := 1\n".into(),
        );
        d.data.insert(
            "aa.toml".into(),
            "[token_configs.kbs]\nurl = \"https://kbs\"\n".into(),
        );
        d
    }

    #[test]
    fn canonical_form_is_stable_and_parses() {
        let t = sample().to_toml().unwrap();
        assert!(
            t.starts_with("version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"aa.toml\"")
        );
        let p = ParsedInitData::parse(t.as_bytes()).unwrap();
        assert_eq!(p.init_data, sample());
        assert!(p.is_canonical());
        assert_eq!(p.digest(), sample().digest().unwrap());
    }

    #[test]
    fn digest_is_over_exact_bytes() {
        let t = sample().to_toml().unwrap();
        let spaced = t.replace("algorithm = ", "algorithm  = ");
        let a = ParsedInitData::parse(t.as_bytes()).unwrap();
        let b = ParsedInitData::parse(spaced.as_bytes()).unwrap();
        assert_eq!(a.init_data, b.init_data);
        assert_ne!(a.digest(), b.digest());
        assert!(!b.is_canonical());
    }

    #[test]
    fn awkward_values_round_trip() {
        let mut d = InitData::new(HashAlgorithm::Sha256);
        d.data.insert("a'''b".into(), "x'''y\n".into());
        d.data.insert("c".into(), "ends with quote'\n".into());
        d.data.insert("d".into(), "tab\tand\r\ncr\u{1}".into());
        d.data.insert("e".into(), "one line".into());
        let t = d.to_toml().unwrap();
        assert_eq!(ParsedInitData::parse(t.as_bytes()).unwrap().init_data, d);
    }

    #[test]
    fn malformed_is_refused() {
        for (bytes, want) in [
            (
                &b"version = \"0.2.0\"\nalgorithm = \"sha384\"\n"[..],
                "version",
            ),
            (
                &b"version = \"0.1.0\"\nalgorithm = \"md5\"\n"[..],
                "algorithm",
            ),
            (
                &b"version = \"0.1.0\"\nalgorithm = \"sha384\"\nextra = 1\n"[..],
                "TOML",
            ),
            (&b"\xff\xfe"[..], "UTF-8"),
            (&b"version = "[..], "TOML"),
        ] {
            let e = ParsedInitData::parse(bytes).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn annotation_round_trip_is_deterministic() {
        let t = sample().to_toml().unwrap();
        let a = encode_annotation(t.as_bytes()).unwrap();
        assert_eq!(a, encode_annotation(t.as_bytes()).unwrap());
        assert_eq!(decode_annotation(&a).unwrap(), t.as_bytes());
        assert!(decode_annotation("!!!").is_err());
        assert!(decode_annotation("aGVsbG8=").is_err());
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ParsedInitData::parse(&bytes);
        }

        #[test]
        fn any_content_round_trips(entries in proptest::collection::btree_map("[ -~]{1,12}", "(?s).{0,80}", 0..5)) {
            let d = InitData { algorithm: HashAlgorithm::Sha512, data: entries };
            let t = d.to_toml().unwrap();
            let p = ParsedInitData::parse(t.as_bytes()).unwrap();
            prop_assert_eq!(&p.init_data, &d);
            prop_assert!(p.is_canonical());
        }
    }
}
