//! The Azure vTPM evidence documents, as produced by Trustee's guest
//! attesters (kbs-protocol §14.5, §14.6). Every version is accepted as it
//! was published; unknown members and versions are refused.
//!
//! | kind | version | shape |
//! |---|---|---|
//! | az-snp-vtpm | 0 | `{"quote": {"signature": [u8], "message": [u8], "pcrs": [[u8; 32]; 24]}, "report": [u8], "vcek": "<PEM>"}` |
//! | az-snp-vtpm | 1, 2 | `{"version": n, "tpm_quote": {"signature": hex, "message": hex, "pcrs": [hex; 24]}, "hcl_report": b64url, "vcek": b64url DER}` |
//! | az-tdx-vtpm | 0 | `{"tpm_quote": {"signature": [u8], "message": [u8], "pcrs": [[u8; 32]; 24]}, "hcl_report": [u8], "td_quote": [u8]}` |
//! | az-tdx-vtpm | 1 | `{"version": 1, "tpm_quote": {hex as above}, "hcl_report": b64url, "td_quote": b64url}` |
//!
//! The quote's `signature` is the bare RSASSA-PKCS1-v1_5 SHA-256 signature
//! (not a `TPMT_SIGNATURE`); `message` is the `TPMS_ATTEST`. From version 2
//! the HCL runtime data's `user-data` carries the binding digest too.

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::tpm::{PcrValues, Signature, alg};

/// A TPM quote's message, signature and PCR values, decoded.
type QuoteParts = (Vec<u8>, Vec<u8>, Vec<Vec<u8>>);

/// Which Azure evidence kind is being parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `az-snp-vtpm`: versions 0, 1, 2.
    Snp,
    /// `az-tdx-vtpm`: versions 0, 1.
    Tdx,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Snp => "az-snp-vtpm evidence",
            Kind::Tdx => "az-tdx-vtpm evidence",
        }
    }
    /// Evidence versions accepted for this kind.
    pub fn versions(self) -> &'static [u64] {
        match self {
            Kind::Snp => &[0, 1, 2],
            Kind::Tdx => &[0, 1],
        }
    }
}

/// A parsed Azure vTPM evidence document.
#[derive(Debug, Clone)]
pub struct AzureEvidence {
    /// Document version.
    pub version: u64,
    /// The HCL report bytes.
    pub hcl_report: Vec<u8>,
    /// The `TPMS_ATTEST` the vTPM signed.
    pub message: Vec<u8>,
    /// The AK's signature over `message`.
    pub signature: Signature,
    /// PCR 0..23, SHA-256 bank.
    pub pcrs: PcrValues,
    /// SNP: the VCEK (DER, or PEM in version 0).
    pub vcek: Option<Vec<u8>>,
    /// TDX: the DCAP TD quote.
    pub td_quote: Option<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BinQuote {
    signature: Vec<u8>,
    message: Vec<u8>,
    pcrs: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HexQuote {
    signature: String,
    message: String,
    pcrs: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnpV0 {
    quote: BinQuote,
    report: Vec<u8>,
    vcek: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnpV1 {
    #[allow(dead_code)]
    version: u64,
    tpm_quote: HexQuote,
    hcl_report: String,
    vcek: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TdxV0 {
    tpm_quote: BinQuote,
    hcl_report: Vec<u8>,
    td_quote: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TdxV1 {
    #[allow(dead_code)]
    version: u64,
    tpm_quote: HexQuote,
    hcl_report: String,
    td_quote: String,
}

/// base64url, with or without padding (serde_with writes it padded).
const B64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

struct Ctx(Kind);

impl Ctx {
    fn err(&self, r: impl Into<String>) -> Error {
        Error::malformed(self.0.name(), r)
    }
    fn b64url(&self, field: &str, s: &str) -> Result<Vec<u8>> {
        B64URL
            .decode(s.trim())
            .map_err(|e| self.err(format!("{field} is not base64url: {e}")))
    }
    fn hex(&self, field: &str, s: &str) -> Result<Vec<u8>> {
        hex::decode(s.trim()).map_err(|e| self.err(format!("{field} is not hex: {e}")))
    }
    fn decode<T: for<'de> Deserialize<'de>>(&self, v: Value, version: u64) -> Result<T> {
        serde_json::from_value(v).map_err(|e| self.err(format!("version {version}: {e}")))
    }
    fn hex_quote(&self, q: HexQuote) -> Result<QuoteParts> {
        let pcrs = q
            .pcrs
            .iter()
            .enumerate()
            .map(|(i, p)| self.hex(&format!("tpm_quote.pcrs[{i}]"), p))
            .collect::<Result<Vec<_>>>()?;
        Ok((
            self.hex("tpm_quote.signature", &q.signature)?,
            self.hex("tpm_quote.message", &q.message)?,
            pcrs,
        ))
    }
}

/// Parse Azure evidence of `kind`.
pub fn parse(kind: Kind, bytes: &[u8]) -> Result<AzureEvidence> {
    let c = Ctx(kind);
    if bytes.len() > crate::MAX_EVIDENCE_BYTES {
        return Err(c.err(format!(
            "{} bytes exceeds the {} byte limit",
            bytes.len(),
            crate::MAX_EVIDENCE_BYTES
        )));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| c.err(e.to_string()))?;
    let Some(obj) = v.as_object() else {
        return Err(c.err("not a JSON object"));
    };
    let version = match obj.get("version") {
        None => 0,
        Some(n) => n
            .as_u64()
            .ok_or_else(|| c.err(format!("version is not a non-negative integer: {n}")))?,
    };
    if !kind.versions().contains(&version) {
        return Err(c.err(format!(
            "unsupported evidence version {version} (supported: {:?})",
            kind.versions()
        )));
    }
    let (sig, message, pcrs, hcl_report, vcek, td_quote) = match (kind, version) {
        (Kind::Snp, 0) => {
            let d: SnpV0 = c.decode(v, 0)?;
            let q = d.quote;
            (
                q.signature,
                q.message,
                q.pcrs,
                d.report,
                Some(d.vcek.into_bytes()),
                None,
            )
        }
        (Kind::Snp, _) => {
            let d: SnpV1 = c.decode(v, version)?;
            let (s, m, p) = c.hex_quote(d.tpm_quote)?;
            let hcl = c.b64url("hcl_report", &d.hcl_report)?;
            (s, m, p, hcl, Some(c.b64url("vcek", &d.vcek)?), None)
        }
        (Kind::Tdx, 0) => {
            let d: TdxV0 = c.decode(v, 0)?;
            let q = d.tpm_quote;
            (
                q.signature,
                q.message,
                q.pcrs,
                d.hcl_report,
                None,
                Some(d.td_quote),
            )
        }
        (Kind::Tdx, _) => {
            let d: TdxV1 = c.decode(v, version)?;
            let (s, m, p) = c.hex_quote(d.tpm_quote)?;
            let hcl = c.b64url("hcl_report", &d.hcl_report)?;
            (s, m, p, hcl, None, Some(c.b64url("td_quote", &d.td_quote)?))
        }
    };
    if sig.len() > crate::tpm::signature::MAX_RSA_SIG_LEN {
        return Err(c.err(format!("tpm_quote.signature has {} bytes", sig.len())));
    }
    Ok(AzureEvidence {
        version,
        hcl_report,
        message,
        signature: Signature::RsaSsa {
            hash: alg::SHA256,
            sig,
        },
        pcrs: PcrValues::new(pcrs)?,
        vcek,
        td_quote,
    })
}

impl AzureEvidence {
    /// Serialize in the document format of `version` (for tests and tools
    /// that rebuild evidence, e.g. after altering a field).
    pub fn to_json(&self, kind: Kind) -> String {
        let (Signature::RsaSsa { sig, .. } | Signature::RsaPss { sig, .. }) = &self.signature
        else {
            return String::new();
        };
        let pcrs_bin: Vec<Vec<u8>> = self.pcrs.0.iter().map(|p| p.to_vec()).collect();
        let pcrs_hex: Vec<String> = self.pcrs.0.iter().map(hex::encode).collect();
        let hex_quote = serde_json::json!({
            "signature": hex::encode(sig),
            "message": hex::encode(&self.message),
            "pcrs": pcrs_hex,
        });
        let bin_quote = serde_json::json!({
            "signature": sig,
            "message": self.message,
            "pcrs": pcrs_bin,
        });
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE.encode(b);
        let v = match (kind, self.version) {
            (Kind::Snp, 0) => serde_json::json!({
                "quote": bin_quote,
                "report": self.hcl_report,
                "vcek": String::from_utf8_lossy(self.vcek.as_deref().unwrap_or_default()),
            }),
            (Kind::Snp, _) => serde_json::json!({
                "version": self.version,
                "tpm_quote": hex_quote,
                "hcl_report": b64(&self.hcl_report),
                "vcek": b64(self.vcek.as_deref().unwrap_or_default()),
            }),
            (Kind::Tdx, 0) => serde_json::json!({
                "tpm_quote": bin_quote,
                "hcl_report": self.hcl_report,
                "td_quote": self.td_quote,
            }),
            (Kind::Tdx, _) => serde_json::json!({
                "version": self.version,
                "tpm_quote": hex_quote,
                "hcl_report": b64(&self.hcl_report),
                "td_quote": b64(self.td_quote.as_deref().unwrap_or_default()),
            }),
        };
        v.to_string()
    }
}
