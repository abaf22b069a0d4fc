//! Azure confidential VMs (`az-snp-vtpm`, `az-tdx-vtpm`): the paravisor
//! (HCL) binds the vTPM's attestation key into a hardware report; the vTPM
//! then quotes the PCRs with a verifier-chosen nonce.
//!
//! Verification, in order (each refusal names its check):
//!
//! 1. the evidence document and the HCL report parse ([`evidence`], [`hcl`];
//!    every HCL byte not covered by a signature or hash must have its only
//!    valid value);
//! 2. the HCL wraps the right hardware report (`azure.report_type`);
//! 3. the hash of the HCL runtime data (variable data) is the start of the
//!    hardware report's REPORT_DATA (`azure.var_data_hash`);
//! 4. the hardware report is genuine: SNP through [`crate::snp::verify_report`]
//!    with the VCEK in the evidence and AMD's pinned roots (`snp.*`), and it
//!    came from VMPL 0, the paravisor (`azure.vmpl`); TDX through the DCAP
//!    verifier with collateral (`dcap.*`), and the HCL's TDREPORT agrees with
//!    the signed TD quote (`azure.td_report`);
//! 5. the attestation key from the runtime data (`HCLAkPub`) signed the TPM
//!    quote, which is a genuine quote whose PCR digest matches the PCR values
//!    (`tpm.*`, see [`crate::tpm::verify_quote`]);
//! 6. evidence version 2: the runtime data's `user-data` starts with the
//!    quote's nonce (`azure.user_data`).
//!
//! Claims: measurement, TCB, debug and platform come from the hardware
//! report; `report_data` is the TPM quote's extraData (what the key broker
//! binds its nonce to) zero-padded to 64 bytes; `init_data` is PCR 8, which
//! holds [`expected_pcr8`] of the init-data digest. `raw` carries the
//! hardware claims under `snp` / `tdx`, the authenticated PCRs under `pcrs`,
//! the quote under `tpm_quote` and the HCL facts under `hcl`.

pub mod bench;
pub mod evidence;
pub mod hcl;

use serde_json::json;

pub use self::evidence::{AzureEvidence, Kind};
pub use self::hcl::{HclReport, ReportType, RuntimeData};
use crate::claims::{Claims, Tee};
use crate::dcap::{Collateral, TcbPolicy};
use crate::error::{Error, Result};
pub use crate::tpm::expected_pcr8;
use crate::tpm::{self, VerifiedQuote};
use crate::{snp, tdx};

/// The VMPL Azure's paravisor runs at; only it can write the HCL report.
pub const PARAVISOR_VMPL: u32 = 0;

/// Verify `az-snp-vtpm` evidence (versions 0, 1, 2) at `now_unix`.
/// `opts` adds certificates, a VCEK source and a chain cache; the VCEK in
/// the evidence is used first. Expectations (nonce through report data,
/// init-data through PCR 8) are applied by the caller.
pub fn verify_snp_vtpm(evidence: &[u8], opts: &snp::Options<'_>, now_unix: u64) -> Result<Claims> {
    let ev = evidence::parse(Kind::Snp, evidence)?;
    let hcl = HclReport::parse(&ev.hcl_report)?;
    expect_report_type(&hcl, ReportType::Snp)?;
    let report = snp::Report::parse(&hcl.hw_report)?;
    hcl.check_var_data_binding(&report.report_data)?;

    let mut certs = Vec::new();
    if let Some(vcek) = &ev.vcek {
        certs.extend(snp::certs::parse_certs(vcek)?);
    }
    for der in &opts.certs {
        certs.extend(snp::certs::parse_certs(der)?);
    }
    let hw = snp::verify_report(&report, &certs, opts, now_unix)?;
    if report.vmpl != PARAVISOR_VMPL {
        return Err(Error::mismatch(
            "azure.vmpl",
            "SNP report was not requested by the paravisor at VMPL 0, so its runtime data may not come from the HCL",
            PARAVISOR_VMPL.to_string(),
            report.vmpl.to_string(),
        ));
    }
    finish(Tee::AzSnpVtpm, "snp", hw, &ev, &hcl)
}

/// Verify `az-tdx-vtpm` evidence (versions 0, 1): the TD quote with DCAP
/// `collateral` under `policy` at `now_unix`, then the vTPM part.
pub fn verify_tdx_vtpm(
    evidence: &[u8],
    collateral: &Collateral,
    policy: &TcbPolicy,
    now_unix: u64,
) -> Result<Claims> {
    tdx_vtpm(evidence, Some((collateral, policy, now_unix)))
}

/// Check `az-tdx-vtpm` evidence WITHOUT verifying the TD quote's signature
/// chain (no collateral): every vTPM and HCL check runs, the TD quote is
/// only parsed. The claims say so: `hardware_backed` is false and
/// `raw.tdx.signature_verified` is false.
pub fn inspect_tdx_vtpm(evidence: &[u8]) -> Result<Claims> {
    tdx_vtpm(evidence, None)
}

fn tdx_vtpm(evidence: &[u8], dcap: Option<(&Collateral, &TcbPolicy, u64)>) -> Result<Claims> {
    let ev = evidence::parse(Kind::Tdx, evidence)?;
    let hcl = HclReport::parse(&ev.hcl_report)?;
    expect_report_type(&hcl, ReportType::Tdx)?;
    let quote_bytes = ev
        .td_quote
        .as_deref()
        .ok_or_else(|| Error::malformed("az-tdx-vtpm evidence", "no td_quote"))?;
    // Parse first so that a malformed quote is reported as such, and the
    // binding is checked before the (slower) DCAP verification.
    let quote = crate::dcap::Quote::parse(quote_bytes)?;
    let td = quote
        .td()
        .ok_or_else(|| Error::malformed("az-tdx-vtpm evidence", "td_quote is not a TDX quote"))?;
    hcl.check_var_data_binding(&td.report_data)?;
    check_td_report(&hcl.hw_report, td)?;
    let hw = match dcap {
        Some((c, p, now)) => tdx::verify(quote_bytes, c, p, now)?,
        None => tdx::inspect(quote_bytes)?,
    };
    finish(Tee::AzTdxVtpm, "tdx", hw, &ev, &hcl)
}

fn expect_report_type(hcl: &HclReport, want: ReportType) -> Result<()> {
    if hcl.report_type != want {
        return Err(Error::mismatch(
            "azure.report_type",
            "HCL report wraps another kind of hardware report than this evidence kind",
            format!("{} report ({})", want.name().to_uppercase(), want.code()),
            format!(
                "{} report ({})",
                hcl.report_type.name().to_uppercase(),
                hcl.report_type.code()
            ),
        ));
    }
    Ok(())
}

/// The HCL's TDREPORT is not signed (its MAC is checkable only on the
/// platform); it must say what the signed TD quote says.
fn check_td_report(hw: &[u8], td: &crate::dcap::quote::TdReport) -> Result<()> {
    let rtmr: Vec<u8> = td.rtmr.iter().flatten().copied().collect();
    let signed: [&[u8]; 12] = [
        &td.report_data,
        &td.tee_tcb_svn,
        &td.mr_seam,
        &td.mr_signer_seam,
        &td.seam_attributes,
        &td.td_attributes,
        &td.xfam,
        &td.mr_td,
        &td.mr_config_id,
        &td.mr_owner,
        &td.mr_owner_config,
        &rtmr,
    ];
    for ((name, range), quoted) in hcl::TD_REPORT_FIELDS.iter().zip(signed) {
        let in_hcl = hw.get(range.clone()).unwrap_or_default();
        if in_hcl != quoted {
            return Err(Error::mismatch(
                "azure.td_report",
                format!("the HCL report's TDREPORT {name} differs from the signed TD quote's"),
                hex::encode(quoted),
                hex::encode(in_hcl),
            ));
        }
    }
    Ok(())
}

/// Steps 5–6 and the claims, once the hardware report verified.
fn finish(
    tee: Tee,
    hw_key: &str,
    hw: Claims,
    ev: &AzureEvidence,
    hcl: &HclReport,
) -> Result<Claims> {
    let rt = hcl.runtime_data()?;
    let q = tpm::verify_quote(&ev.message, &ev.signature, &ev.pcrs, &rt.ak)?;
    if ev.version >= 2 {
        check_user_data(&rt, &q)?;
    }
    let mut raw = serde_json::Map::new();
    raw.insert("evidence_version".into(), json!(ev.version));
    raw.insert(hw_key.into(), hw.raw);
    raw.insert("pcrs".into(), q.pcrs_json());
    raw.insert("tpm_quote".into(), q.quote_json());
    raw.insert("hcl".into(), hcl.to_json(&rt));
    Ok(Claims {
        tee,
        hardware_backed: hw.hardware_backed,
        measurement: hw.measurement,
        report_data: q.report_data(),
        init_data: q.init_data()?,
        tcb: hw.tcb,
        debug: hw.debug,
        platform: hw.platform,
        raw: serde_json::Value::Object(raw),
    })
}

fn check_user_data(rt: &RuntimeData, q: &VerifiedQuote) -> Result<()> {
    let nonce = &q.attest.extra_data;
    let Some(ud) = &rt.user_data else {
        return Err(Error::mismatch(
            "azure.user_data",
            "evidence version 2 binds the nonce into the HCL runtime data's user-data, which is missing",
            hex::encode(nonce),
            "no user-data",
        ));
    };
    let head = ud.get(..nonce.len());
    if head.is_none_or(|h| !crate::expect::ct_eq(h, nonce)) {
        return Err(Error::mismatch(
            "azure.user_data",
            "HCL runtime data user-data does not start with the TPM quote's nonce",
            hex::encode(nonce),
            hex::encode(ud),
        ));
    }
    Ok(())
}
