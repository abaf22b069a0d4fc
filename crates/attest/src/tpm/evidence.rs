//! The `tpm` evidence document (Trustee's generic TPM attester,
//! kbs-protocol §14.7):
//!
//! ```json
//! {"ak_public": "<standard base64 DER SubjectPublicKeyInfo>",
//!  "tpm_quote": {"signature": "<base64 TPMT_SIGNATURE>",
//!                "message":   "<base64 TPMS_ATTEST>",
//!                "pcrs":      ["<hex SHA-256 PCR 0>", "…", "<PCR 23>"]}}
//! ```
//!
//! Unknown members are refused.

use base64::Engine;
use serde::Deserialize;

use super::{AkPublic, PcrValues, Signature};
use crate::error::{Error, Result};

/// Parsed `tpm` evidence.
#[derive(Debug, Clone)]
pub struct TpmEvidence {
    /// The AK the attester claims signed the quote.
    pub ak: AkPublic,
    /// The marshalled `TPMS_ATTEST` (the signed bytes).
    pub message: Vec<u8>,
    /// The `TPMT_SIGNATURE`.
    pub signature: Signature,
    /// PCR 0..23 of the SHA-256 bank.
    pub pcrs: PcrValues,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    ak_public: String,
    tpm_quote: QuoteDoc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct QuoteDoc {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

const WHAT: &str = "tpm evidence";

fn b64(field: &str, s: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|e| Error::malformed(WHAT, format!("{field} is not standard base64: {e}")))
}

impl TpmEvidence {
    /// Parse the JSON document.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > crate::MAX_EVIDENCE_BYTES {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "{} bytes exceeds the {} byte limit",
                    bytes.len(),
                    crate::MAX_EVIDENCE_BYTES
                ),
            ));
        }
        let doc: Doc =
            serde_json::from_slice(bytes).map_err(|e| Error::malformed(WHAT, e.to_string()))?;
        let ak = AkPublic::from_spki_der(&b64("ak_public", &doc.ak_public)?)?;
        let message = b64("tpm_quote.message", &doc.tpm_quote.message)?;
        let signature = Signature::parse(&b64("tpm_quote.signature", &doc.tpm_quote.signature)?)?;
        let pcrs = doc
            .tpm_quote
            .pcrs
            .iter()
            .enumerate()
            .map(|(i, p)| {
                hex::decode(p.trim()).map_err(|e| {
                    Error::malformed(WHAT, format!("tpm_quote.pcrs[{i}] is not hex: {e}"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(TpmEvidence {
            ak,
            message,
            signature,
            pcrs: PcrValues::new(pcrs)?,
        })
    }

    /// Serialize back to the JSON document (for building evidence in tests
    /// and tools).
    pub fn to_json(&self) -> String {
        let e = base64::engine::general_purpose::STANDARD;
        serde_json::json!({
            "ak_public": e.encode(self.ak.spki_der()),
            "tpm_quote": {
                "signature": e.encode(self.signature.to_bytes()),
                "message": e.encode(&self.message),
                "pcrs": self.pcrs.0.iter().map(hex::encode).collect::<Vec<_>>(),
            }
        })
        .to_string()
    }
}
