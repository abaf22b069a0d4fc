//! NVIDIA Hopper GPU attestation: verify an SPDM attestation report and its
//! device certificate chain up to NVIDIA's pinned device root, offline, and
//! turn it into [`GpuClaims`].
//!
//! Checks, each named in a refusal: `nvidia.cert_chain` (issuer names, CA
//! flags, ECDSA P-384/SHA-384 signatures, root equal to the pinned one),
//! `nvidia.cert_validity` (every certificate, root included, valid at the
//! verification time), `nvidia.arch` (only Hopper), `nvidia.signature` (the
//! leaf's key signed SHA-384 of the request and the response up to the
//! signature), `nvidia.fwid` (the leaf certificate's firmware ID equals the
//! report's) and `nvidia.nonce` (the request's nonce equals the expected one).
//!
//! Measurements are appraised only by [`DeviceChain::verify_report_with_rims`]
//! (signature-verified driver and VBIOS RIMs, see [`rim`]); [`verify`]
//! reports them unappraised; [`DeviceChain::verify_report_selecting_rims`]
//! picks the RIMs from an operator's directory first ([`rim_select`]).
//! Revocation is checked from OCSP responses the caller supplies
//! ([`DeviceChain::check_revocation`], [`rim::Rim::check_revocation`]); the
//! claims say whether it was.

pub mod bench;
pub mod certs;
pub mod claims;
pub mod evidence;
pub mod ocsp;
pub mod report;
pub mod rim;
pub mod rim_select;
pub mod xmldsig;

use p384::ecdsa::Signature;
use x509_cert::Certificate;

pub use self::claims::{GpuClaims, ReportClaims};
pub use self::report::Report;
use crate::dcap::format_time;
use crate::error::{Error, Result};

/// A device certificate chain that verified up to the pinned root: reuse it
/// for several reports from the same GPU (the chain check costs four ECDSA
/// verifications, a report one).
#[derive(Debug, Clone)]
pub struct DeviceChain {
    leaf_name: String,
    leaf_key: crate::ecdsa::EcdsaKey,
    fwid: Vec<u8>,
    arch: String,
    hwmodel: String,
    ueid: String,
    /// The chain's joint validity window, Unix seconds.
    valid: (u64, u64),
    /// The certificates below the pinned root, leaf first.
    certs: Vec<Certificate>,
    /// Whether [`Self::check_revocation`] passed.
    revocation_checked: bool,
}

/// The architecture a chain belongs to, from its certificates' names
/// (`NVIDIA GH100 Identity`, `GH100 A01 GSP BROM`, …).
fn arch_of(chain: &[Certificate]) -> Option<&'static str> {
    chain
        .iter()
        .map(certs::subject_cn)
        .find_map(|cn| cn.contains("GH100").then_some("Hopper"))
}

impl DeviceChain {
    /// Verify a PEM chain (leaf first; the root may be included) at
    /// `now_unix`, and read the leaf's key and firmware ID.
    pub fn verify(cert_chain_pem: &[u8], now_unix: u64) -> Result<Self> {
        let chain = certs::parse_chain(cert_chain_pem)?;
        certs::verify_chain(certs::DEVICE_CHAIN, &chain, now_unix)?;
        let leaf = &chain[0];
        let arch = arch_of(&chain).ok_or_else(|| {
            Error::mismatch(
                "nvidia.arch",
                "the device chain is not a Hopper GPU's; only Hopper reports are verified",
                "a GH100 certificate",
                format!(
                    "{:?}",
                    chain.iter().map(certs::subject_cn).collect::<Vec<_>>()
                ),
            )
        })?;
        let (mut from, mut until) = certs::validity(certs::device_root());
        for c in &chain {
            let (nb, na) = certs::validity(c);
            from = from.max(nb);
            until = until.min(na);
        }
        let mut below_root = chain.clone();
        if below_root.last() == Some(certs::device_root()) {
            below_root.pop();
        }
        Ok(DeviceChain {
            certs: below_root,
            revocation_checked: false,
            leaf_name: certs::subject_cn(leaf),
            leaf_key: crate::ecdsa::EcdsaKey::p384(&certs::p384_key(
                certs::DEVICE_CHAIN.chain_check,
                leaf,
            )?),
            fwid: certs::fwid(leaf)?,
            arch: arch.to_string(),
            hwmodel: chain.get(1).map(certs::subject_cn).unwrap_or_default(),
            ueid: hex::encode(leaf.tbs_certificate.serial_number.as_bytes()),
            valid: (from, until),
        })
    }

    /// Check every certificate of the chain below the root against OCSP
    /// responses supplied as files (`nvidia.ocsp`, see [`ocsp`]); claims
    /// from this chain then say `revocation_checked: true`.
    pub fn check_revocation(
        &mut self,
        responses: &[ocsp::Response],
        fresh: &ocsp::Freshness,
    ) -> Result<()> {
        ocsp::check_chain(
            "nvidia.ocsp",
            &self.certs,
            certs::device_root(),
            responses,
            fresh,
        )?;
        self.revocation_checked = true;
        Ok(())
    }

    /// The certificates below the pinned root, leaf first.
    pub fn certificates(&self) -> &[Certificate] {
        &self.certs
    }

    /// The firmware ID the leaf certificate carries.
    pub fn fwid(&self) -> &[u8] {
        &self.fwid
    }

    /// Verify a report (raw bytes or hex text) signed by this chain's leaf,
    /// at `now_unix` (the chain must still be valid). With `expected_nonce`,
    /// the GET_MEASUREMENTS request's nonce must equal it.
    pub fn verify_report(
        &self,
        report: &[u8],
        expected_nonce: Option<&[u8; report::NONCE_LEN]>,
        now_unix: u64,
    ) -> Result<GpuClaims> {
        self.verify_parsed(report, expected_nonce, now_unix)
            .map(|(_, claims)| claims)
    }

    /// [`Self::verify_report`], then appraise the report's measurements with
    /// signature-verified driver and VBIOS RIMs ([`rim::appraise`]); the
    /// claims then say `measurements_appraised: true`.
    pub fn verify_report_with_rims(
        &self,
        report: &[u8],
        expected_nonce: Option<&[u8; report::NONCE_LEN]>,
        now_unix: u64,
        rims: &rim::Rims<'_>,
    ) -> Result<GpuClaims> {
        let (report, mut claims) = self.verify_parsed(report, expected_nonce, now_unix)?;
        rim::appraise(&report, rims)?;
        claims.measurements_appraised = true;
        claims.revocation_checked &=
            rims.driver.revocation_checked && rims.vbios.revocation_checked;
        Ok(claims)
    }

    /// [`Self::verify_report`], then select the driver and VBIOS RIMs for
    /// the report's versions among `files` (an operator's RIM directory,
    /// named `source` in refusals; [`rim_select::select`]) and appraise
    /// with them. Returns the claims and which files were used.
    pub fn verify_report_selecting_rims(
        &self,
        report: &[u8],
        expected_nonce: Option<&[u8; report::NONCE_LEN]>,
        now_unix: u64,
        files: &[rim_select::RimFile],
        source: &str,
        revocation: Option<(&[ocsp::Response], &ocsp::Freshness)>,
    ) -> Result<(GpuClaims, rim_select::Selected)> {
        let (parsed, mut claims) = self.verify_parsed(report, expected_nonce, now_unix)?;
        let want = rim_select::Wanted::for_report(&parsed)?;
        let mut selected = rim_select::select(&want, files, source, now_unix)?;
        if let Some((responses, fresh)) = revocation {
            selected.driver.check_revocation(responses, fresh)?;
            selected.vbios.check_revocation(responses, fresh)?;
        }
        claims.revocation_checked &=
            selected.driver.revocation_checked && selected.vbios.revocation_checked;
        let rims = rim::Rims {
            driver: &selected.driver,
            vbios: &selected.vbios,
        };
        rim::appraise(&parsed, &rims)?;
        claims.measurements_appraised = true;
        Ok((claims, selected))
    }

    fn verify_parsed(
        &self,
        report: &[u8],
        expected_nonce: Option<&[u8; report::NONCE_LEN]>,
        now_unix: u64,
    ) -> Result<(Report, GpuClaims)> {
        let report = Report::parse(report)?;
        let (from, until) = self.valid;
        if now_unix < from || now_unix > until {
            return Err(Error::mismatch(
                "nvidia.cert_validity",
                "the device certificate chain is not valid at the verification time",
                format!("{} .. {}", format_time(from), format_time(until)),
                format_time(now_unix),
            ));
        }
        let verified = Signature::from_slice(&report.signature)
            .is_ok_and(|sig| self.leaf_key.verify_p384(report.signed_bytes(), &sig));
        if !verified {
            return Err(Error::refused(
                "nvidia.signature",
                format!(
                    "the report's ECDSA P-384 signature does not verify with the key of {:?}",
                    self.leaf_name
                ),
            ));
        }
        let report_fwid = report.fwid()?;
        if report_fwid != self.fwid.as_slice() {
            return Err(Error::mismatch(
                "nvidia.fwid",
                "the report's firmware ID (opaque field 20) differs from the leaf certificate's",
                hex::encode(&self.fwid),
                hex::encode(report_fwid),
            ));
        }
        if let Some(expected) = expected_nonce {
            if report.request.nonce != *expected {
                return Err(Error::mismatch(
                    "nvidia.nonce",
                    "the GET_MEASUREMENTS request nonce differs from the expected nonce",
                    hex::encode(expected),
                    hex::encode(report.request.nonce),
                ));
            }
        }
        let claims = GpuClaims {
            arch: self.arch.clone(),
            hwmodel: self.hwmodel.clone(),
            ueid: self.ueid.clone(),
            revocation_checked: self.revocation_checked,
            measurements_appraised: false,
            report: ReportClaims::from_report(&report)?,
        };
        Ok((report, claims))
    }
}

/// Verify an NVIDIA GPU attestation report (raw bytes or hex text) with its
/// device certificate chain (PEM, leaf first) at `now_unix`. With
/// `expected_nonce`, the requester nonce of the report's GET_MEASUREMENTS
/// request must equal it (the GPU's own responder nonce is not compared).
pub fn verify(
    report: &[u8],
    cert_chain_pem: &[u8],
    expected_nonce: Option<&[u8; report::NONCE_LEN]>,
    now_unix: u64,
) -> Result<GpuClaims> {
    DeviceChain::verify(cert_chain_pem, now_unix)?.verify_report(report, expected_nonce, now_unix)
}

/// `veil_attest::verify(Tee::Nvidia, …)`: one device's evidence as Trustee
/// lists it, `{"arch": "HOPPER", "uuid"?, "evidence": hex or base64 report,
/// "certificate": base64 PEM chain}` (or a `device_evidence_list` of one),
/// verified at `now_unix` and normalized ([`to_claims`]). The nonce is the
/// claims' `report_data`, compared by the caller's expectations.
pub fn verify_evidence(evidence: &[u8], now_unix: u64) -> Result<crate::Claims> {
    const WHAT: &str = "NVIDIA device evidence";
    if evidence.len() > crate::MAX_EVIDENCE_BYTES {
        return Err(Error::malformed(WHAT, "larger than 1 MiB"));
    }
    let v: serde_json::Value = serde_json::from_slice(evidence).map_err(|e| {
        Error::malformed(
            WHAT,
            format!(
                "not JSON ({e}); give {{\"arch\", \"evidence\", \"certificate\"}} \
                 or, from the CLI, the report with --cert CHAIN.pem"
            ),
        )
    })?;
    let list = if v.get("device_evidence_list").is_some() {
        v
    } else {
        serde_json::json!({ "device_evidence_list": [v] })
    };
    let mut devices = evidence::verify(&list, None, now_unix)?;
    if devices.len() != 1 {
        return Err(Error::malformed(
            WHAT,
            format!(
                "{} devices listed; verify one at a time (the KBS appraises several)",
                devices.len()
            ),
        ));
    }
    let d = devices.remove(0);
    to_claims(&d.claims, Some(&d.uuid))
}

/// Normalized [`crate::Claims`] of a verified GPU: `report_data` is the
/// 32-byte requester nonce, `measurement` and `init_data` are empty (a GPU
/// has many measurement blocks, appraised against RIMs, and no launch
/// configuration), `tcb` is empty (driver and VBIOS versions are text, in
/// `raw`), `debug` is true unless the measurements were appraised against
/// NVIDIA's RIMs (the report has no debug flag: fail closed), `platform` is
/// the GPU (`product` the architecture and hardware model, `chip_id` the
/// leaf serial, `signer` `nvidia-device`), `raw` the [`GpuClaims`].
pub fn to_claims(gpu: &GpuClaims, uuid: Option<&str>) -> Result<crate::Claims> {
    let nonce = hex::decode(&gpu.report.nonce)
        .map_err(|e| Error::malformed("NVIDIA claims", format!("nonce: {e}")))?;
    let mut raw =
        serde_json::to_value(gpu).map_err(|e| Error::malformed("NVIDIA claims", e.to_string()))?;
    if let (Some(o), Some(u)) = (raw.as_object_mut(), uuid) {
        o.insert("uuid".into(), u.into());
    }
    Ok(crate::Claims {
        tee: crate::Tee::Nvidia,
        hardware_backed: true,
        measurement: Vec::new(),
        report_data: nonce,
        init_data: Vec::new(),
        tcb: Default::default(),
        debug: !gpu.measurements_appraised,
        platform: crate::Platform {
            product: format!("{} ({})", gpu.arch, gpu.hwmodel),
            chip_id: gpu.ueid.clone(),
            signer: "nvidia-device".into(),
        },
        raw,
    })
}
