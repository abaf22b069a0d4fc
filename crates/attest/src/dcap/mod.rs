//! Intel DCAP: the quote format, collateral and appraisal shared by
//! [`crate::tdx`] and [`crate::sgx`].
//!
//! Verification of a quote with its collateral, at a time the caller gives:
//!
//! 1. parse the quote ([`quote`]) and check its kind (TEE type, version, QE
//!    vendor, that it carries a PCK certificate chain);
//! 2. check the collateral is for this kind of quote and valid at that time
//!    (TCB info, QE identity, both CRLs and every issuer certificate);
//! 3. hand quote and collateral to `dcap-qvl` (pure Rust, offline, the
//!    authority here), which verifies: the root CA CRL with the pinned root;
//!    the TCB info and QE identity signatures and chains; the PCK chain to the
//!    pinned Intel SGX Root CA with revocation; the QE report signature by the
//!    PCK key; the attestation key's binding in the QE report; the QE report
//!    against the QE identity; the quote signature by the attestation key;
//!    the platform's TCB level (and TDX module) in the TCB info; TD/enclave
//!    attributes (debug refused unless allowed);
//! 4. apply the [`TcbPolicy`] to the converged TCB status.
//!
//! When dcap-qvl refuses, this module works out which check failed (which
//! chain, which signature, expected and actual values) so the refusal names it.
//!
//! The Intel SGX Root CA is pinned: [`INTEL_SGX_ROOT_CA_DER`] (the file
//! `roots/intel-sgx-root-ca.der`, identical to the one dcap-qvl pins and to
//! Intel's `Intel_SGX_Provisioning_Certification_RootCA.cer`).

pub mod bench;
pub mod chain;
pub mod collateral;
pub mod evidence;
pub mod policy;
pub mod quote;

use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use x509_cert::Certificate;
use x509_cert::der::Decode;

pub use self::collateral::{Collateral, PCS_FILES};
pub use self::evidence::DcapEvidence;
pub use self::policy::{TcbPolicy, TcbStatus};
pub use self::quote::Quote;
use crate::error::{Error, Result};

/// Intel SGX Root CA (DER), the root of every DCAP chain. Subject
/// `CN=Intel SGX Root CA, O=Intel Corporation, L=Santa Clara, ST=CA, C=US`,
/// valid 2018-05-21 to 2049-12-31.
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("roots/intel-sgx-root-ca.der");
/// SHA-256 of [`INTEL_SGX_ROOT_CA_DER`].
pub const INTEL_SGX_ROOT_CA_SHA256: &str =
    "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3";

/// The pinned Intel SGX Root CA, parsed.
pub fn pinned_root() -> &'static Certificate {
    static ROOT: OnceLock<Certificate> = OnceLock::new();
    ROOT.get_or_init(|| {
        #[allow(clippy::expect_used)]
        Certificate::from_der(INTEL_SGX_ROOT_CA_DER)
            .expect("the pinned Intel SGX Root CA is a valid certificate (checked by tests)")
    })
}

/// Unix seconds as RFC 3339 (`2025-07-19T10:16:03Z`).
pub fn format_time(secs: u64) -> String {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{secs} (Unix seconds)"))
}

/// Parse an RFC 3339 time (`2025-07-01T00:00:00Z`) into Unix seconds.
pub fn parse_rfc3339(s: &str) -> std::result::Result<u64, String> {
    let t = time::OffsetDateTime::parse(s.trim(), &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time ({e}): {s:?}"))?;
    u64::try_from(t.unix_timestamp()).map_err(|_| format!("time before 1970: {s:?}"))
}

/// DCAP options for the top-level dispatcher (`veil_attest::verify`).
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Collateral to appraise quotes with. Without it, TDX/SGX evidence is
    /// refused (use [`inspect`] to parse without verifying).
    pub collateral: Option<Collateral>,
    /// Which TCB statuses to accept; debug enclaves/TDs.
    pub policy: TcbPolicy,
}

/// Verify TDX or SGX evidence (a raw quote or CoCo JSON) with `opts` at
/// `now_unix`.
pub fn verify(
    tee: crate::Tee,
    evidence: &[u8],
    opts: &Options,
    now_unix: u64,
) -> Result<crate::Claims> {
    let Some(collateral) = &opts.collateral else {
        return Err(Error::refused(
            "dcap.collateral",
            format!(
                "{tee} evidence cannot be verified without collateral (PCK CRL, root CA CRL, TCB info, QE identity and their issuer chains)"
            ),
        ));
    };
    match tee {
        crate::Tee::Tdx => {
            crate::tdx::verify_evidence(evidence, collateral, &opts.policy, now_unix)
        }
        crate::Tee::Sgx => {
            crate::sgx::verify_evidence(evidence, collateral, &opts.policy, now_unix)
        }
        other => Err(Error::refused(
            "tee",
            format!("{other} evidence is not a DCAP quote"),
        )),
    }
}

/// Parse TDX or SGX evidence WITHOUT verifying it (see [`crate::tdx::inspect`]).
pub fn inspect(tee: crate::Tee, evidence: &[u8]) -> Result<crate::Claims> {
    match tee {
        crate::Tee::Tdx => crate::tdx::inspect_evidence(evidence),
        crate::Tee::Sgx => crate::sgx::inspect_evidence(evidence),
        other => Err(Error::refused(
            "tee",
            format!("{other} evidence is not a DCAP quote"),
        )),
    }
}

/// The outcome of verifying a quote with collateral.
#[derive(Debug, Clone)]
pub struct Appraisal {
    /// The parsed (now verified) quote.
    pub quote: Quote,
    /// Converged TCB status of platform, TDX module and QE.
    pub tcb_status: TcbStatus,
    /// Intel security advisories that apply to this TCB.
    pub advisory_ids: Vec<String>,
    /// The non-`UpToDate` status that passed only because the policy accepts it.
    pub accepted_exception: Option<TcbStatus>,
    /// The policy's accepted statuses.
    pub accepted: Vec<TcbStatus>,
    /// Earliest end of validity over all collateral and certificates (Unix s).
    pub collateral_expiration: u64,
    /// The verification time (Unix s).
    pub verified_at: u64,
    /// Platform family from the PCK certificate.
    pub fmspc: [u8; 6],
    /// Platform provisioning id from the PCK certificate.
    pub ppid: Vec<u8>,
    /// CPU SVN from the PCK certificate.
    pub pck_cpu_svn: [u8; 16],
    /// PCE SVN from the PCK certificate.
    pub pck_pce_svn: u16,
    /// Status of the matched platform TCB level alone.
    pub platform_tcb_status: TcbStatus,
    /// Date of the matched platform TCB level.
    pub platform_tcb_date: String,
    /// Status of the matched QE TCB level alone.
    pub qe_tcb_status: TcbStatus,
    /// Lower of the TCB info and QE identity evaluation data numbers.
    pub tcb_evaluation_data_number: u32,
}

impl Appraisal {
    /// The verification facts every DCAP claim set carries in `raw`.
    fn raw_fields(&self, raw: &mut serde_json::Map<String, serde_json::Value>) {
        use serde_json::json;
        raw.insert("signature_verified".into(), json!(true));
        raw.insert("tcb_status".into(), json!(self.tcb_status.as_str()));
        raw.insert("advisory_ids".into(), json!(self.advisory_ids));
        raw.insert(
            "tcb_policy".into(),
            json!({
                "accepted": self.accepted.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
                "exception": self.accepted_exception.map(|s| s.as_str()),
            }),
        );
        raw.insert(
            "platform_tcb_status".into(),
            json!(self.platform_tcb_status.as_str()),
        );
        raw.insert("platform_tcb_date".into(), json!(self.platform_tcb_date));
        raw.insert("qe_tcb_status".into(), json!(self.qe_tcb_status.as_str()));
        raw.insert(
            "tcb_evaluation_data_number".into(),
            json!(self.tcb_evaluation_data_number),
        );
        raw.insert(
            "collateral_expiration".into(),
            json!(format_time(self.collateral_expiration)),
        );
        raw.insert(
            "verification_time".into(),
            json!(format_time(self.verified_at)),
        );
        raw.insert("fmspc".into(), json!(hex::encode(self.fmspc)));
        raw.insert(
            "pck".into(),
            json!({
                "ppid": hex::encode(&self.ppid),
                "cpu_svn": hex::encode(self.pck_cpu_svn),
                "pce_svn": self.pck_pce_svn,
            }),
        );
        raw.insert("root_ca_sha256".into(), json!(INTEL_SGX_ROOT_CA_SHA256));
    }
}

/// The verification facts in `raw`: the appraisal's, or for a quote parsed
/// without collateral (`None`), a loud statement that nothing was verified.
pub(crate) fn verification_raw_fields(
    a: Option<&Appraisal>,
    raw: &mut serde_json::Map<String, serde_json::Value>,
) {
    use serde_json::json;
    if let Some(a) = a {
        return a.raw_fields(raw);
    }
    raw.insert("signature_verified".into(), json!(false));
    raw.insert(
        "verification".into(),
        json!("NOT VERIFIED: parsed without collateral; the quote signature, QE report and PCK certificate chain were not checked"),
    );
}

/// The QE and PCE SVNs of the quote header, as every DCAP claim set
/// carries them in `tcb`.
pub(crate) fn header_tcb(q: &Quote, tcb: &mut std::collections::BTreeMap<String, u64>) {
    tcb.insert("qe_svn".into(), u64::from(q.header.qe_svn));
    tcb.insert("pce_svn".into(), u64::from(q.header.pce_svn));
}

/// The platform of a DCAP claim set: the PPID from the PCK certificate and
/// `pck` as signer when appraised, `unverified` when only parsed.
pub(crate) fn platform(product: &str, a: Option<&Appraisal>) -> crate::Platform {
    crate::Platform {
        product: product.into(),
        chip_id: a.map(|a| hex::encode(&a.ppid)).unwrap_or_default(),
        signer: if a.is_some() { "pck" } else { "unverified" }.into(),
    }
}

/// Fields of the quote header every DCAP claim set carries in `raw`.
pub(crate) fn header_raw_fields(q: &Quote, raw: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::json;
    raw.insert("quote_version".into(), json!(q.header.version));
    raw.insert("qe_svn".into(), json!(q.header.qe_svn));
    raw.insert("pce_svn".into(), json!(q.header.pce_svn));
    raw.insert(
        "qe_vendor_id".into(),
        json!(hex::encode(q.header.qe_vendor_id)),
    );
    raw.insert("user_data".into(), json!(hex::encode(q.header.user_data)));
}

/// Parse a quote and check it is of the expected kind (`tee_type`).
pub(crate) fn parse_expecting(bytes: &[u8], tee_type: u32) -> Result<Quote> {
    let q = Quote::parse(bytes)?;
    if q.header.tee_type != tee_type {
        return Err(Error::mismatch(
            "dcap.tee_type",
            "quote is for another TEE",
            format!(
                "{} quote (tee_type {tee_type:#x})",
                quote::tee_type_name(tee_type)
            ),
            format!("{} quote (tee_type {:#x})", q.tee_name(), q.header.tee_type),
        ));
    }
    Ok(q)
}

/// Verify `quote_bytes` (a quote of kind `tee_type`) with `collateral` at
/// `now` (Unix seconds), then apply `policy`.
pub(crate) fn verify_quote(
    quote_bytes: &[u8],
    tee_type: u32,
    collateral: &Collateral,
    policy: &TcbPolicy,
    now: u64,
) -> Result<Appraisal> {
    let q = parse_expecting(quote_bytes, tee_type)?;
    let is_tdx = tee_type == quote::TEE_TYPE_TDX;
    let versions: &[u16] = if is_tdx { &[4, 5] } else { &[3] };
    if !versions.contains(&q.header.version) {
        return Err(Error::mismatch(
            "dcap.quote_version",
            format!("unsupported {} quote version", q.tee_name()),
            format!("{versions:?}"),
            q.header.version.to_string(),
        ));
    }
    if q.header.qe_vendor_id != quote::INTEL_QE_VENDOR_ID {
        return Err(Error::mismatch(
            "dcap.qe_vendor",
            "quote was not produced by Intel's quoting enclave",
            hex::encode(quote::INTEL_QE_VENDOR_ID),
            hex::encode(q.header.qe_vendor_id),
        ));
    }
    if q.cert_data_type != quote::CERT_TYPE_PCK_CHAIN && collateral.pck_chain_override.is_none() {
        return Err(Error::mismatch(
            "dcap.pck_chain",
            "quote does not carry its PCK certificate chain and the collateral has none (pck_certificate_chain)",
            format!("certification data type {}", quote::CERT_TYPE_PCK_CHAIN),
            format!("type {}", q.cert_data_type),
        ));
    }
    if collateral.pck_chain_override.is_none() {
        pck_chain_from_quote(&q)?;
    }
    let (want_tcb, want_qe) = if is_tdx {
        ("TDX", "TD_QE")
    } else {
        ("SGX", "QE")
    };
    if collateral.tcb_info.id != want_tcb {
        return Err(Error::mismatch(
            "dcap.collateral_kind",
            format!("collateral TCB info is not for {} quotes", q.tee_name()),
            format!("TCB info id {want_tcb}"),
            format!("TCB info id {}", collateral.tcb_info.id),
        ));
    }
    if collateral.qe_identity.id != want_qe {
        return Err(Error::mismatch(
            "dcap.collateral_kind",
            format!("collateral QE identity is not for {} quotes", q.tee_name()),
            format!("QE identity id {want_qe}"),
            format!("QE identity id {}", collateral.qe_identity.id),
        ));
    }
    collateral.check_fresh(now)?;

    let verifier = dcap_qvl::verify::QuoteVerifier::new(INTEL_SGX_ROOT_CA_DER.to_vec())
        .allow_debug(policy.allow_debug);
    let claims = verifier
        .verify_with_policy(
            quote_bytes,
            &collateral.inner,
            now,
            &dcap_qvl::QuotePolicy::claims_only(now),
        )
        .map_err(|e| explain(&format!("{e:#}"), &q, collateral, now))?;

    let tcb_status = TcbStatus::from_qvl(claims.tcb.status);
    let advisory_ids = claims.tcb.advisory_ids.clone();
    if !policy.accepts(tcb_status) {
        let adv = if advisory_ids.is_empty() {
            "no advisories".to_string()
        } else {
            format!("advisories {}", advisory_ids.join(", "))
        };
        return Err(Error::refused(
            "dcap.tcb_status",
            format!(
                "TCB status {tcb_status} not accepted ({adv}); accepted: {}",
                policy.accepted_list()
            ),
        ));
    }
    Ok(Appraisal {
        tcb_status,
        accepted_exception: (tcb_status != TcbStatus::UpToDate).then_some(tcb_status),
        accepted: policy.accepted().collect(),
        advisory_ids,
        collateral_expiration: claims.earliest_expiration_date,
        verified_at: now,
        fmspc: claims.platform.pck.fmspc,
        ppid: claims.platform.pck.ppid.clone(),
        pck_cpu_svn: claims.platform.pck.cpu_svn,
        pck_pce_svn: claims.platform.pck.pce_svn,
        platform_tcb_status: TcbStatus::from_qvl(claims.platform.tcb_level.tcb_status),
        platform_tcb_date: claims.platform.tcb_level.tcb_date.clone(),
        qe_tcb_status: TcbStatus::from_qvl(claims.qe.tcb_level.tcb_status),
        tcb_evaluation_data_number: claims.tcb.eval_data_number,
        quote: q,
    })
}

/// Turn a dcap-qvl refusal into one that names the failed check.
fn explain(msg: &str, q: &Quote, c: &Collateral, now: u64) -> Error {
    let has = |s: &str| msg.contains(s);
    if has("Signature is invalid for tcb_info") {
        return Error::refused(
            "dcap.tcb_info_signature",
            "TCB info signature does not verify with the TCB signing certificate",
        );
    }
    if has("Signature is invalid for qe_identity") {
        return Error::refused(
            "dcap.qe_identity_signature",
            "QE identity signature does not verify with the TCB signing certificate",
        );
    }
    if has("Signature is invalid for qe_report") {
        return Error::refused(
            "dcap.qe_report_signature",
            "QE report signature does not verify with the PCK certificate's key",
        );
    }
    if has("QE report hash mismatch") {
        let mut h = Sha256::new();
        h.update(q.attestation_key);
        h.update(&q.qe_auth_data);
        return Error::mismatch(
            "dcap.attestation_key",
            "attestation key is not the one the QE report binds (SHA-256 of attestation key ‖ QE auth data vs QE REPORT_DATA[0..32])",
            hex::encode(h.finalize()),
            hex::encode(&q.qe_report.report_data[..32]),
        );
    }
    if has("ISV enclave report signature is invalid") {
        return Error::refused(
            "dcap.quote_signature",
            format!(
                "quote signature does not verify with the attestation key (signed bytes 0..{:#x}: header and {} report)",
                q.signed_len,
                q.tee_name()
            ),
        );
    }
    if has("QE MRSIGNER")
        || has("QE ISVPRODID")
        || has("QE MISCSELECT")
        || has("QE ATTRIBUTES")
        || has("QE ISVSVN")
        || has("QE report validation")
    {
        return Error::refused(
            "dcap.qe_identity",
            format!("quoting enclave does not match Intel's QE identity: {msg}"),
        );
    }
    if has("Fmspc mismatch") {
        return Error::refused(
            "dcap.fmspc",
            format!(
                "PCK certificate's FMSPC does not match the TCB info (TCB info FMSPC {}): collateral is for another platform family",
                c.tcb_info.fmspc
            ),
        );
    }
    if has("No matching TCB level") {
        return Error::refused(
            "dcap.tcb_level",
            "no TCB level in the TCB info matches the platform's SVNs (PCK CPUSVN/PCESVN, TEE TCB SVN)",
        );
    }
    if has("TDX module") {
        return Error::refused("dcap.tdx_module", format!("TDX module check failed: {msg}"));
    }
    if has("Revoked") && has("TCB status") {
        return Error::mismatch(
            "dcap.tcb_status",
            "TCB status Revoked is never accepted: the platform's keys are revoked",
            "not Revoked",
            "Revoked",
        );
    }
    if has("Debug mode is enabled") {
        return Error::mismatch(
            "debug",
            format!(
                "{} launched with debugging enabled (host can read its memory)",
                if q.td().is_some() { "TD" } else { "enclave" }
            ),
            "debug off",
            "debug on",
        );
    }
    if has("TD profiling")
        || has("TD migration")
        || has("SEPT_VE_DISABLE")
        || has("Reserved bits in TD attributes")
        || has("SERVTD_EXT")
        || has("MR service TD")
    {
        let attrs = q
            .td()
            .map(|t| hex::encode(t.td_attributes))
            .unwrap_or_default();
        return Error::refused(
            "dcap.td_attributes",
            format!("TD attributes {attrs} refused: {msg}"),
        );
    }
    if let Err(diag) = diagnose_chains(q, c, now) {
        return diag;
    }
    if has("expired") || has("in the future") {
        return Error::refused(
            "dcap.collateral_expired",
            format!("collateral not valid at {}: {msg}", format_time(now)),
        );
    }
    if has("TCB info") || has("QE Identity") {
        return Error::refused(
            "dcap.collateral_kind",
            format!("collateral does not fit the quote: {msg}"),
        );
    }
    Error::refused(
        "dcap.verify",
        format!("DCAP quote verification failed: {msg}"),
    )
}

/// The PCK chain a quote carries (certification data type 5), parsed
/// strictly: every byte must belong to a PEM certificate (NUL padding and
/// whitespace aside), so no part of it is silently skipped.
fn pck_chain_from_quote(q: &Quote) -> Result<Vec<Certificate>> {
    let pem = std::str::from_utf8(&q.cert_data).map_err(|_| {
        Error::refused(
            "dcap.pck_chain",
            "PCK certificate chain in the quote is not PEM text",
        )
    })?;
    let pem = pem.trim_end_matches('\0');
    if !strict_pem_layout(pem) {
        return Err(Error::refused(
            "dcap.pck_chain",
            "PCK certificate chain in the quote is not a plain sequence of PEM certificates separated by newlines",
        ));
    }
    let chain = collateral::parse_chain("PCK certificate chain", pem).map_err(|e| {
        Error::refused(
            "dcap.pck_chain",
            format!("PCK certificate chain in the quote does not parse: {e}"),
        )
    })?;
    if !(2..=3).contains(&chain.len()) {
        return Err(Error::mismatch(
            "dcap.pck_chain",
            "PCK certificate chain in the quote has an unexpected length",
            "PCK certificate, PCK CA and optionally the root: 2 or 3 certificates",
            format!("{} certificate(s)", chain.len()),
        ));
    }
    // A root copy in the quote is not needed (the root is pinned) but must
    // be the pinned root itself, so that no byte of the chain goes unchecked.
    if let Some(root) = chain.get(2) {
        let same = x509_cert::der::Encode::to_der(root)
            .map(|d| d == INTEL_SGX_ROOT_CA_DER)
            .unwrap_or(false);
        if !same {
            return Err(Error::mismatch(
                "dcap.pck_chain",
                "PCK certificate chain in the quote ends in a certificate that is not the pinned Intel SGX Root CA",
                format!("Intel SGX Root CA (SHA-256 {INTEL_SGX_ROOT_CA_SHA256})"),
                format!("{:?}", chain::subject_cn(root)),
            ));
        }
    }
    Ok(chain)
}

/// PEM certificates back to back, one newline between blocks and at most one
/// at the end: the layout Intel's quoting library writes. Anything else in
/// the chain text would go unauthenticated.
fn strict_pem_layout(pem: &str) -> bool {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    let body = pem.strip_suffix('\n').unwrap_or(pem);
    body.starts_with(BEGIN)
        && body.ends_with(END)
        && body
            .split(END)
            .skip(1)
            .all(|rest| rest.is_empty() || rest.starts_with(&format!("\n{BEGIN}")))
}

/// Check every chain and CRL independently to name the one that fails.
fn diagnose_chains(q: &Quote, c: &Collateral, now: u64) -> Result<()> {
    chain::check_crl("dcap.root_ca_crl", "root CA CRL", &c.root_ca_crl, &[])?;
    let root_crl = [&c.root_ca_crl];
    chain::check_chain(
        "dcap.tcb_info_chain",
        "TCB info issuer chain",
        &c.tcb_info_chain,
        &root_crl,
        now,
    )?;
    chain::check_chain(
        "dcap.qe_identity_chain",
        "QE identity issuer chain",
        &c.qe_identity_chain,
        &root_crl,
        now,
    )?;
    let pck_chain = match &c.pck_chain_override {
        Some(chain) => chain.clone(),
        None => pck_chain_from_quote(q)?,
    };
    chain::check_chain(
        "dcap.pck_chain",
        "PCK certificate chain",
        &pck_chain,
        &[&c.root_ca_crl, &c.pck_crl],
        now,
    )?;
    let issuers: Vec<Certificate> = c
        .pck_crl_chain
        .iter()
        .chain(pck_chain.iter())
        .cloned()
        .collect();
    chain::check_crl("dcap.pck_crl", "PCK CRL", &c.pck_crl, &issuers)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_root_is_intel_sgx_root_ca() {
        let root = pinned_root();
        assert_eq!(chain::subject_cn(root), "Intel SGX Root CA");
        assert_eq!(
            hex::encode(Sha256::digest(INTEL_SGX_ROOT_CA_DER)),
            INTEL_SGX_ROOT_CA_SHA256
        );
        assert!(chain::signed_by(root, root), "self-signed");
    }

    #[test]
    fn rfc3339_round_trip() {
        let t = parse_rfc3339("2025-07-01T00:00:00Z").unwrap();
        assert_eq!(t, 1_751_328_000);
        assert_eq!(format_time(t), "2025-07-01T00:00:00Z");
        assert!(parse_rfc3339("yesterday").is_err());
    }
}
