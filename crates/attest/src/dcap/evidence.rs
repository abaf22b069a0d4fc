//! DCAP evidence as it arrives: a raw quote, or the CoCo attester's JSON
//! (`{"quote":"<base64>","cc_eventlog":"<base64>"|null}` for TDX,
//! `{"quote":"<base64>"}` for SGX).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use serde::Deserialize;

use super::quote::MAX_QUOTE_BYTES;
use crate::error::{Error, Result};

/// Largest evidence document accepted (quote plus a TDX event log).
pub const MAX_DCAP_EVIDENCE_BYTES: usize = crate::MAX_EVIDENCE_BYTES;

/// A quote with what came beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DcapEvidence {
    /// The raw quote bytes.
    pub quote: Vec<u8>,
    /// The TDX CC event log (CCEL), if the evidence carried one. Not replayed
    /// against the RTMRs by this crate.
    pub cc_eventlog: Option<Vec<u8>>,
    /// True when the input was the CoCo JSON form.
    pub from_json: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CocoJson {
    quote: String,
    #[serde(default)]
    cc_eventlog: Option<String>,
    #[serde(default)]
    aa_eventlog: Option<serde_json::Value>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>> {
    let s = s.trim();
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(v) = engine.decode(s) {
            return Ok(v);
        }
    }
    Err(Error::malformed(
        "DCAP evidence",
        format!("{field} is not base64"),
    ))
}

impl DcapEvidence {
    /// Accept a raw quote (first byte is the version, 3..5) or the CoCo JSON.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_DCAP_EVIDENCE_BYTES {
            return Err(Error::malformed(
                "DCAP evidence",
                format!(
                    "{} bytes is more than the {MAX_DCAP_EVIDENCE_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
        if first != Some(&b'{') {
            return Ok(DcapEvidence {
                quote: bytes.to_vec(),
                cc_eventlog: None,
                from_json: false,
            });
        }
        let j: CocoJson = serde_json::from_slice(bytes)
            .map_err(|e| Error::malformed("DCAP evidence JSON", e.to_string()))?;
        let _ = j.aa_eventlog;
        let quote = b64("quote", &j.quote)?;
        if quote.len() > MAX_QUOTE_BYTES {
            return Err(Error::malformed(
                "DCAP evidence",
                format!(
                    "quote of {} bytes is more than the {MAX_QUOTE_BYTES}-byte limit",
                    quote.len()
                ),
            ));
        }
        let cc_eventlog = j
            .cc_eventlog
            .as_deref()
            .map(|s| b64("cc_eventlog", s))
            .transpose()?;
        Ok(DcapEvidence {
            quote,
            cc_eventlog,
            from_json: true,
        })
    }

    /// Evidence facts for `raw`: whether it was JSON and the event log's size.
    pub(crate) fn raw_fields(&self, raw: &mut serde_json::Map<String, serde_json::Value>) {
        if let Some(log) = &self.cc_eventlog {
            raw.insert(
                "cc_eventlog".into(),
                serde_json::json!({
                    "bytes": log.len(),
                    "replayed": false,
                }),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_and_json_forms() {
        let raw = vec![4u8, 0, 2, 0];
        assert_eq!(DcapEvidence::parse(&raw).unwrap().quote, raw);
        let json = format!(
            r#"{{"quote":"{}","cc_eventlog":"{}"}}"#,
            STANDARD.encode(&raw),
            STANDARD.encode(b"log")
        );
        let e = DcapEvidence::parse(json.as_bytes()).unwrap();
        assert_eq!(e.quote, raw);
        assert_eq!(e.cc_eventlog.as_deref(), Some(&b"log"[..]));
        assert!(DcapEvidence::parse(br#"{"quote":"!!"}"#).is_err());
        assert!(DcapEvidence::parse(br#"{"quote":"AA==","extra":1}"#).is_err());
    }
}
