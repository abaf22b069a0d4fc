//! Checks that do not depend on the TEE: expected report data and init-data
//! digest, minimum TCB, debug. Each verifier calls [`Expectations::check`]
//! on its claims after the signature and chain checks.

use std::collections::BTreeMap;

use subtle::ConstantTimeEq;

use crate::claims::Claims;
use crate::error::{Error, Result};

/// What the caller expects of the evidence, beyond a valid signature.
#[derive(Debug, Clone, Default)]
pub struct Expectations {
    /// Expected REPORT_DATA; shorter values are zero-padded to the field size
    /// (the binding digest is 48 bytes, the field 64).
    pub report_data: Option<Vec<u8>>,
    /// Expected init-data digest; zero-padded or truncated to the TEE's field
    /// (32 bytes for SNP HOST_DATA, 48 for TDX MRCONFIGID).
    pub init_data_digest: Option<Vec<u8>>,
    /// Minimum SVN per TCB component (names as in [`Claims::tcb`]).
    pub min_tcb: BTreeMap<String, u64>,
    /// Accept a TEE launched with debugging enabled.
    pub allow_debug: bool,
}

/// Zero-pad or truncate `value` to `len` bytes, as Trustee's `regularize_data`.
pub fn regularize(value: &[u8], len: usize) -> Vec<u8> {
    let mut v = value[..value.len().min(len)].to_vec();
    v.resize(len, 0);
    v
}

/// Constant-time equality of two byte strings (lengths are not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

impl Expectations {
    /// Apply every expectation to verified claims.
    pub fn check(&self, claims: &Claims) -> Result<()> {
        if let Some(expected) = &self.report_data {
            if expected.len() > claims.report_data.len() {
                return Err(Error::mismatch(
                    "report_data",
                    "expected report_data is longer than the evidence's field",
                    format!("at most {} bytes", claims.report_data.len()),
                    format!("{} bytes", expected.len()),
                ));
            }
            let want = regularize(expected, claims.report_data.len());
            if !ct_eq(&want, &claims.report_data) {
                return Err(Error::mismatch(
                    "report_data",
                    "report_data mismatch",
                    hex::encode(&want),
                    hex::encode(&claims.report_data),
                ));
            }
        }
        if let Some(digest) = &self.init_data_digest {
            // vTPM TEEs carry init-data as PCR 8 = SHA-256(zeros ‖ digest).
            let want = match claims.tee {
                crate::Tee::AzSnpVtpm | crate::Tee::AzTdxVtpm | crate::Tee::Tpm => {
                    crate::tpm::expected_init_data_field(digest)?
                }
                _ => regularize(digest, claims.init_data.len()),
            };
            if !ct_eq(&want, &claims.init_data) {
                return Err(Error::mismatch(
                    "init_data",
                    init_data_label(claims),
                    hex::encode(&want),
                    hex::encode(&claims.init_data),
                ));
            }
        }
        for (component, min) in &self.min_tcb {
            let Some(actual) = claims.tcb.get(component) else {
                let known: Vec<_> = claims.tcb.keys().map(String::as_str).collect();
                return Err(Error::mismatch(
                    "tcb",
                    format!(
                        "minimum TCB names component {component:?} that this evidence does not report"
                    ),
                    format!("one of {}", known.join(", ")),
                    component.clone(),
                ));
            };
            if actual < min {
                return Err(Error::mismatch(
                    "tcb",
                    format!("TCB component {component} below minimum"),
                    format!(">= {min}"),
                    actual.to_string(),
                ));
            }
        }
        if claims.debug && !self.allow_debug && claims.tee == crate::Tee::Nvidia {
            return Err(Error::mismatch(
                "debug",
                "GPU firmware not shown to be production: its report has no debug flag and its \
                 measurements were not appraised against NVIDIA's RIMs (appraise them with \
                 `veil attest verify-gpu --rim-dir DIR`, or allow debug)",
                "measurements appraised",
                "not appraised",
            ));
        }
        if claims.debug && !self.allow_debug {
            return Err(Error::mismatch(
                "debug",
                "TEE launched with debugging enabled (host can read its memory)",
                "debug off",
                "debug on",
            ));
        }
        Ok(())
    }
}

fn init_data_label(claims: &Claims) -> &'static str {
    match claims.tee {
        crate::Tee::Snp => "host_data mismatch (init-data digest)",
        crate::Tee::Tdx => "mr_config_id mismatch (init-data digest)",
        crate::Tee::AzSnpVtpm | crate::Tee::AzTdxVtpm | crate::Tee::Tpm => {
            "PCR 8 mismatch (init-data digest extended into a zeroed PCR 8)"
        }
        _ => "init_data mismatch (init-data digest)",
    }
}

/// Parse `name=value,name=value` minimum-TCB text (`bootloader=3,snp=8`).
pub fn parse_min_tcb(s: &str) -> std::result::Result<BTreeMap<String, u64>, String> {
    let mut out = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("expected NAME=SVN, got {part:?}"))?;
        let v: u64 = v
            .trim()
            .parse()
            .map_err(|e| format!("SVN for {k:?} is not a number: {e}"))?;
        out.insert(k.trim().to_string(), v);
    }
    Ok(out)
}
