//! DCAP collateral: what Intel's PCS (or a PCCS cache) publishes to appraise a
//! quote — the PCK CRL and the root CA CRL, the TCB info and the QE identity
//! (each a signed JSON document), and the issuer chains of all of them.
//!
//! Two input forms:
//! - one JSON document with the fields of `QuoteCollateralV3` (as in
//!   `shared/fixtures/tdx/collateral.json`; byte fields in hex), see
//!   [`Collateral::from_json`];
//! - the raw files as the PCS serves them, one per file, see
//!   [`Collateral::from_pcs_files`] and [`PCS_FILES`].
//!
//! Parsing checks structure and records every date; it verifies nothing.
//! The signatures and chains are checked per quote, at the verification time.

use serde::Deserialize;
use serde_json::value::RawValue;
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::der::Decode;

use super::{format_time, parse_rfc3339};
use crate::error::{Error, Result};

/// Largest collateral document (or single PCS file) accepted.
pub const MAX_COLLATERAL_BYTES: usize = 1 << 20;
/// Most certificates accepted in one issuer chain.
const MAX_CHAIN_CERTS: usize = 8;

const WHAT: &str = "DCAP collateral";

/// Validity of one dated collateral item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dated {
    /// What it is, for messages: `TCB info`, `PCK CRL`, `TCB signing certificate "…"`.
    pub item: String,
    /// Name of the start field (`issueDate`, `thisUpdate`, `notBefore`).
    pub from_field: &'static str,
    /// Start of validity, Unix seconds.
    pub from: u64,
    /// Name of the end field (`nextUpdate`, `notAfter`).
    pub until_field: &'static str,
    /// End of validity, Unix seconds (`None`: a CRL without nextUpdate).
    pub until: Option<u64>,
}

/// Facts read from the TCB info JSON (signed by Intel; checked per quote).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcbInfoMeta {
    /// `SGX` or `TDX`.
    pub id: String,
    /// TCB info format version (3 for current SGX and TDX).
    pub version: u64,
    /// Platform family (FMSPC), hex upper-case as Intel writes it.
    pub fmspc: String,
    /// Intel's TCB evaluation data number (TCB recovery generation).
    pub tcb_evaluation_data_number: u64,
}

/// Facts read from the QE identity JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QeIdentityMeta {
    /// `QE` (SGX) or `TD_QE` (TDX).
    pub id: String,
    /// Format version.
    pub version: u64,
}

/// Parsed collateral, ready to appraise any number of quotes.
#[derive(Debug, Clone)]
pub struct Collateral {
    pub(crate) inner: dcap_qvl::QuoteCollateralV3,
    /// TCB info facts.
    pub tcb_info: TcbInfoMeta,
    /// QE identity facts.
    pub qe_identity: QeIdentityMeta,
    /// Every dated item, in the order refusals name them: TCB info, QE
    /// identity, PCK CRL, root CA CRL, then the issuer chain certificates.
    pub dated: Vec<Dated>,
    pub(crate) tcb_info_chain: Vec<Certificate>,
    pub(crate) qe_identity_chain: Vec<Certificate>,
    pub(crate) pck_crl_chain: Vec<Certificate>,
    pub(crate) pck_crl: CertificateList,
    pub(crate) root_ca_crl: CertificateList,
    pub(crate) pck_chain_override: Option<Vec<Certificate>>,
}

/// The JSON collateral layout (dcap-qvl's `QuoteCollateralV3`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollateralJson {
    pck_crl_issuer_chain: String,
    root_ca_crl: String,
    pck_crl: String,
    tcb_info_issuer_chain: String,
    tcb_info: String,
    tcb_info_signature: String,
    qe_identity_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: String,
    #[serde(default)]
    pck_certificate_chain: Option<String>,
}

/// File names [`Collateral::from_pcs_files`] understands, with what each holds.
/// CRLs may be DER, PEM or hex; chains PEM (or URL-encoded PEM, as in the PCS
/// response headers).
pub const PCS_FILES: &[(&str, &str)] = &[
    (
        "tcb_info.json",
        "body of PCS GET /{sgx,tdx}/certification/v4/tcb?fmspc=…: {\"tcbInfo\":…,\"signature\":…}",
    ),
    (
        "tcb_info_issuer_chain.pem",
        "PCS response header TCB-Info-Issuer-Chain",
    ),
    (
        "qe_identity.json",
        "body of PCS GET /{sgx,tdx}/certification/v4/qe/identity: {\"enclaveIdentity\":…,\"signature\":…}",
    ),
    (
        "qe_identity_issuer_chain.pem",
        "PCS response header SGX-Enclave-Identity-Issuer-Chain",
    ),
    (
        "pck_crl.der",
        "body of PCS GET /sgx/certification/v4/pckcrl?ca=platform|processor (also pck_crl.pem)",
    ),
    (
        "pck_crl_issuer_chain.pem",
        "PCS response header SGX-PCK-CRL-Issuer-Chain",
    ),
    (
        "root_ca_crl.der",
        "Intel SGX Root CA CRL (IntelSGXRootCA.der; also root_ca_crl.pem)",
    ),
    (
        "pck_cert_chain.pem",
        "optional: PCK certificate chain, for quotes that do not carry it",
    ),
];

impl Collateral {
    /// Parse the JSON collateral document (dcap-qvl `QuoteCollateralV3`
    /// layout; CRLs and signatures hex-encoded).
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        check_size("collateral JSON", bytes)?;
        let j: CollateralJson = serde_json::from_slice(bytes)
            .map_err(|e| Error::malformed(WHAT, format!("collateral JSON: {e}")))?;
        Self::build(Parts {
            tcb_info: j.tcb_info,
            tcb_info_signature: decode_hex("tcb_info_signature", &j.tcb_info_signature)?,
            tcb_info_issuer_chain: j.tcb_info_issuer_chain,
            qe_identity: j.qe_identity,
            qe_identity_signature: decode_hex("qe_identity_signature", &j.qe_identity_signature)?,
            qe_identity_issuer_chain: j.qe_identity_issuer_chain,
            pck_crl: decode_hex("pck_crl", &j.pck_crl)?,
            pck_crl_issuer_chain: j.pck_crl_issuer_chain,
            root_ca_crl: decode_hex("root_ca_crl", &j.root_ca_crl)?,
            pck_certificate_chain: j.pck_certificate_chain,
        })
    }

    /// Build collateral from raw PCS files given as `(file name, contents)`
    /// (the caller reads the directory). Names are those in [`PCS_FILES`];
    /// an unknown or repeated name, or a missing required file, is refused.
    pub fn from_pcs_files<'a>(
        files: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> Result<Self> {
        let mut tcb_info = None;
        let mut tcb_chain = None;
        let mut qe_identity = None;
        let mut qe_chain = None;
        let mut pck_crl = None;
        let mut pck_crl_chain = None;
        let mut root_crl = None;
        let mut pck_chain = None;
        for (name, data) in files {
            check_size(name, data)?;
            let slot = match name {
                "tcb_info.json" => &mut tcb_info,
                "tcb_info_issuer_chain.pem" => &mut tcb_chain,
                "qe_identity.json" => &mut qe_identity,
                "qe_identity_issuer_chain.pem" => &mut qe_chain,
                "pck_crl.der" | "pck_crl.pem" => &mut pck_crl,
                "pck_crl_issuer_chain.pem" => &mut pck_crl_chain,
                "root_ca_crl.der" | "root_ca_crl.pem" => &mut root_crl,
                "pck_cert_chain.pem" => &mut pck_chain,
                other => {
                    let known: Vec<_> = PCS_FILES.iter().map(|(n, _)| *n).collect();
                    return Err(Error::malformed(
                        WHAT,
                        format!(
                            "unexpected file {other:?} in the collateral directory; known: {}, pck_crl.pem, root_ca_crl.pem",
                            known.join(", ")
                        ),
                    ));
                }
            };
            if slot.replace(data).is_some() {
                return Err(Error::malformed(
                    WHAT,
                    format!("{name}: given twice (DER and PEM forms?)"),
                ));
            }
        }
        let need = |v: Option<&'a [u8]>, name: &str| {
            v.ok_or_else(|| {
                Error::malformed(WHAT, format!("missing {name} in the collateral directory"))
            })
        };
        let (tcb_body, tcb_sig) =
            split_signed_json("tcb_info.json", need(tcb_info, "tcb_info.json")?, "tcbInfo")?;
        let (qe_body, qe_sig) = split_signed_json(
            "qe_identity.json",
            need(qe_identity, "qe_identity.json")?,
            "enclaveIdentity",
        )?;
        Self::build(Parts {
            tcb_info: tcb_body,
            tcb_info_signature: tcb_sig,
            tcb_info_issuer_chain: pem_text(
                "tcb_info_issuer_chain.pem",
                need(tcb_chain, "tcb_info_issuer_chain.pem")?,
            )?,
            qe_identity: qe_body,
            qe_identity_signature: qe_sig,
            qe_identity_issuer_chain: pem_text(
                "qe_identity_issuer_chain.pem",
                need(qe_chain, "qe_identity_issuer_chain.pem")?,
            )?,
            pck_crl: crl_der("pck_crl", need(pck_crl, "pck_crl.der (or .pem)")?)?,
            pck_crl_issuer_chain: pem_text(
                "pck_crl_issuer_chain.pem",
                need(pck_crl_chain, "pck_crl_issuer_chain.pem")?,
            )?,
            root_ca_crl: crl_der("root_ca_crl", need(root_crl, "root_ca_crl.der (or .pem)")?)?,
            pck_certificate_chain: pck_chain
                .map(|c| pem_text("pck_cert_chain.pem", c))
                .transpose()?,
        })
    }

    fn build(p: Parts) -> Result<Self> {
        let tcb_v: serde_json::Value = serde_json::from_str(&p.tcb_info)
            .map_err(|e| Error::malformed(WHAT, format!("tcb_info is not JSON: {e}")))?;
        let qe_v: serde_json::Value = serde_json::from_str(&p.qe_identity)
            .map_err(|e| Error::malformed(WHAT, format!("qe_identity is not JSON: {e}")))?;
        let tcb_info = TcbInfoMeta {
            id: json_str(&tcb_v, "tcb_info", "id")?,
            version: json_u64(&tcb_v, "tcb_info", "version")?,
            fmspc: json_str(&tcb_v, "tcb_info", "fmspc")?,
            tcb_evaluation_data_number: json_u64(&tcb_v, "tcb_info", "tcbEvaluationDataNumber")?,
        };
        let qe_identity = QeIdentityMeta {
            id: json_str(&qe_v, "qe_identity", "id")?,
            version: json_u64(&qe_v, "qe_identity", "version")?,
        };
        for (name, sig) in [
            ("tcb_info_signature", &p.tcb_info_signature),
            ("qe_identity_signature", &p.qe_identity_signature),
        ] {
            if sig.len() != 64 {
                return Err(Error::malformed(
                    WHAT,
                    format!(
                        "{name} must be 64 bytes (ECDSA P-256 r ‖ s), got {}",
                        sig.len()
                    ),
                ));
            }
        }

        let mut dated = vec![
            json_dates(&tcb_v, "TCB info")?,
            json_dates(&qe_v, "QE identity")?,
        ];
        let pck_crl = CertificateList::from_der(&p.pck_crl)
            .map_err(|e| Error::malformed(WHAT, format!("pck_crl is not a DER CRL: {e}")))?;
        let root_ca_crl = CertificateList::from_der(&p.root_ca_crl)
            .map_err(|e| Error::malformed(WHAT, format!("root_ca_crl is not a DER CRL: {e}")))?;
        dated.push(crl_dates(&pck_crl, "PCK CRL"));
        dated.push(crl_dates(&root_ca_crl, "root CA CRL"));

        let tcb_info_chain = parse_chain("tcb_info_issuer_chain", &p.tcb_info_issuer_chain)?;
        let qe_identity_chain =
            parse_chain("qe_identity_issuer_chain", &p.qe_identity_issuer_chain)?;
        let pck_crl_chain = parse_chain("pck_crl_issuer_chain", &p.pck_crl_issuer_chain)?;
        let pck_chain_override = p
            .pck_certificate_chain
            .as_deref()
            .map(|c| parse_chain("pck_certificate_chain", c))
            .transpose()?;
        for (role, chain) in [
            ("TCB info issuer chain", &tcb_info_chain),
            ("QE identity issuer chain", &qe_identity_chain),
            ("PCK CRL issuer chain", &pck_crl_chain),
        ] {
            for c in chain {
                let d = cert_dates(c, role);
                if !dated.contains(&d) {
                    dated.push(d);
                }
            }
        }

        let inner = dcap_qvl::QuoteCollateralV3 {
            pck_crl_issuer_chain: p.pck_crl_issuer_chain,
            root_ca_crl: p.root_ca_crl,
            pck_crl: p.pck_crl,
            tcb_info_issuer_chain: p.tcb_info_issuer_chain,
            tcb_info: p.tcb_info,
            tcb_info_signature: p.tcb_info_signature,
            qe_identity_issuer_chain: p.qe_identity_issuer_chain,
            qe_identity: p.qe_identity,
            qe_identity_signature: p.qe_identity_signature,
            pck_certificate_chain: p.pck_certificate_chain,
        };
        Ok(Collateral {
            inner,
            tcb_info,
            qe_identity,
            dated,
            tcb_info_chain,
            qe_identity_chain,
            pck_crl_chain,
            pck_crl,
            root_ca_crl,
            pck_chain_override,
        })
    }

    /// The earliest end of validity over every item (the collateral expires then).
    pub fn expiration(&self) -> Option<u64> {
        self.dated.iter().filter_map(|d| d.until).min()
    }

    /// Refuse if any item is not valid at `now` (Unix seconds). Names the
    /// first expired item (TCB info first), its date and the verification
    /// time, then every other expired item.
    pub fn check_fresh(&self, now: u64) -> Result<()> {
        let expired: Vec<_> = self
            .dated
            .iter()
            .filter(|d| d.until.is_some_and(|u| now > u))
            .collect();
        if let Some((first, rest)) = expired.split_first() {
            let mut msg = format!(
                "collateral expired: {} {} {}, verification time {}",
                first.item,
                first.until_field,
                format_time(first.until.unwrap_or_default()),
                format_time(now)
            );
            if !rest.is_empty() {
                let others: Vec<_> = rest
                    .iter()
                    .map(|d| {
                        format!(
                            "{} {} {}",
                            d.item,
                            d.until_field,
                            format_time(d.until.unwrap_or_default())
                        )
                    })
                    .collect();
                msg.push_str(&format!("; also expired: {}", others.join(", ")));
            }
            return Err(Error::refused("dcap.collateral_expired", msg));
        }
        if let Some(d) = self.dated.iter().find(|d| now < d.from) {
            return Err(Error::refused(
                "dcap.collateral_not_yet_valid",
                format!(
                    "collateral not yet valid: {} {} {}, verification time {}",
                    d.item,
                    d.from_field,
                    format_time(d.from),
                    format_time(now)
                ),
            ));
        }
        Ok(())
    }
}

struct Parts {
    tcb_info: String,
    tcb_info_signature: Vec<u8>,
    tcb_info_issuer_chain: String,
    qe_identity: String,
    qe_identity_signature: Vec<u8>,
    qe_identity_issuer_chain: String,
    pck_crl: Vec<u8>,
    pck_crl_issuer_chain: String,
    root_ca_crl: Vec<u8>,
    pck_certificate_chain: Option<String>,
}

fn check_size(what: &str, b: &[u8]) -> Result<()> {
    if b.len() > MAX_COLLATERAL_BYTES {
        return Err(Error::malformed(
            WHAT,
            format!(
                "{what}: {} bytes is more than the {MAX_COLLATERAL_BYTES}-byte limit",
                b.len()
            ),
        ));
    }
    Ok(())
}

fn decode_hex(field: &str, s: &str) -> Result<Vec<u8>> {
    hex::decode(s.trim()).map_err(|e| Error::malformed(WHAT, format!("{field} is not hex: {e}")))
}

fn json_str(v: &serde_json::Value, doc: &str, field: &str) -> Result<String> {
    v.get(field)
        .and_then(|x| x.as_str())
        .map(str::to_string)
        .ok_or_else(|| Error::malformed(WHAT, format!("{doc}: missing string field {field:?}")))
}

fn json_u64(v: &serde_json::Value, doc: &str, field: &str) -> Result<u64> {
    v.get(field)
        .and_then(|x| x.as_u64())
        .ok_or_else(|| Error::malformed(WHAT, format!("{doc}: missing number field {field:?}")))
}

fn json_dates(v: &serde_json::Value, item: &str) -> Result<Dated> {
    let date = |field: &str| -> Result<u64> {
        let s = json_str(v, item, field)?;
        parse_rfc3339(&s).map_err(|e| Error::malformed(WHAT, format!("{item} {field} {s:?}: {e}")))
    };
    Ok(Dated {
        item: item.to_string(),
        from_field: "issueDate",
        from: date("issueDate")?,
        until_field: "nextUpdate",
        until: Some(date("nextUpdate")?),
    })
}

fn crl_dates(crl: &CertificateList, item: &str) -> Dated {
    let tbs = &crl.tbs_cert_list;
    Dated {
        item: item.to_string(),
        from_field: "thisUpdate",
        from: tbs.this_update.to_unix_duration().as_secs(),
        until_field: "nextUpdate",
        until: tbs.next_update.map(|t| t.to_unix_duration().as_secs()),
    }
}

pub(crate) fn cert_dates(c: &Certificate, role: &str) -> Dated {
    let v = &c.tbs_certificate.validity;
    Dated {
        item: format!("{role} certificate {:?}", super::chain::subject_cn(c)),
        from_field: "notBefore",
        from: v.not_before.to_unix_duration().as_secs(),
        until_field: "notAfter",
        until: Some(v.not_after.to_unix_duration().as_secs()),
    }
}

/// Parse a PEM chain (leaf first).
pub(crate) fn parse_chain(field: &str, pem: &str) -> Result<Vec<Certificate>> {
    let chain = Certificate::load_pem_chain(pem.as_bytes()).map_err(|e| {
        Error::malformed(WHAT, format!("{field} is not a PEM certificate chain: {e}"))
    })?;
    if chain.is_empty() || chain.len() > MAX_CHAIN_CERTS {
        return Err(Error::malformed(
            WHAT,
            format!(
                "{field} has {} certificates; expected 1 to {MAX_CHAIN_CERTS}",
                chain.len()
            ),
        ));
    }
    Ok(chain)
}

/// PEM text from a file that holds PEM, or URL-encoded PEM as in the PCS
/// response headers.
fn pem_text(name: &str, data: &[u8]) -> Result<String> {
    let text = std::str::from_utf8(data)
        .map_err(|_| Error::malformed(WHAT, format!("{name} is not text (expected PEM)")))?
        .trim();
    let text = if text.starts_with("-----BEGIN") {
        text.to_string()
    } else if text.starts_with("%2D%2D") || text.starts_with("%2d%2d") {
        percent_decode(text)
            .ok_or_else(|| Error::malformed(WHAT, format!("{name}: bad URL encoding")))?
    } else {
        return Err(Error::malformed(
            WHAT,
            format!("{name} does not start with -----BEGIN CERTIFICATE-----"),
        ));
    };
    Ok(text)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// A CRL given as DER, PEM (`X509 CRL`) or hex text, as DER.
fn crl_der(name: &str, data: &[u8]) -> Result<Vec<u8>> {
    if data.first() == Some(&0x30) {
        return Ok(data.to_vec());
    }
    let text = std::str::from_utf8(data)
        .map_err(|_| Error::malformed(WHAT, format!("{name}: neither DER, PEM nor hex")))?
        .trim();
    if text.starts_with("-----BEGIN") {
        let (label, der) = x509_cert::der::pem::decode_vec(text.as_bytes())
            .map_err(|e| Error::malformed(WHAT, format!("{name}: bad PEM: {e}")))?;
        if label != "X509 CRL" {
            return Err(Error::malformed(
                WHAT,
                format!("{name}: PEM label is {label:?}, expected \"X509 CRL\""),
            ));
        }
        return Ok(der);
    }
    decode_hex(name, text)
}

/// Split a PCS signed JSON body (`{"tcbInfo":{…},"signature":"…"}`) into the
/// exact bytes of the signed object and the decoded signature. The signature
/// covers the object's bytes exactly as served, so it is not re-serialized.
fn split_signed_json(name: &str, data: &[u8], key: &str) -> Result<(String, Vec<u8>)> {
    #[derive(Deserialize)]
    struct Signed<'a> {
        #[serde(borrow, rename = "tcbInfo", default)]
        tcb_info: Option<&'a RawValue>,
        #[serde(borrow, rename = "enclaveIdentity", default)]
        enclave_identity: Option<&'a RawValue>,
        signature: String,
    }
    let s: Signed<'_> =
        serde_json::from_slice(data).map_err(|e| Error::malformed(WHAT, format!("{name}: {e}")))?;
    let body = match key {
        "tcbInfo" => s.tcb_info,
        _ => s.enclave_identity,
    }
    .ok_or_else(|| Error::malformed(WHAT, format!("{name}: missing {key:?}")))?;
    Ok((
        body.get().to_string(),
        decode_hex(&format!("{name} signature"), &s.signature)?,
    ))
}
