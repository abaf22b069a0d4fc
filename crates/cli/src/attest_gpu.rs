//! `veil attest verify-gpu`: an NVIDIA GPU (Hopper) attestation report
//! verified offline with `veil_attest::nvidia` (docs/gpu.md).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Result, bail};
use clap::Args;
use veil_attest::Error;
use veil_attest::nvidia::{DeviceChain, rim};

use crate::output::read_limited;

/// Arguments of `veil attest verify-gpu`.
#[derive(Args)]
pub struct VerifyGpuArgs {
    /// The attestation report (SPDM GET_MEASUREMENTS request and response), raw or hex.
    #[arg(long, value_name = "FILE")]
    pub report: PathBuf,
    /// The device certificate chain (PEM, leaf first), as the driver returns it.
    #[arg(long, value_name = "FILE")]
    pub cert_chain: PathBuf,
    /// Expected requester nonce (32 bytes, hex or base64): the challenge the
    /// verifier sent. Without it, freshness is not checked (and the output says so).
    #[arg(long, value_name = "NONCE")]
    pub nonce: Option<String>,
    /// The driver RIM (signed SWID tag) for the report's driver version.
    #[arg(long, value_name = "FILE", requires = "vbios_rim")]
    pub driver_rim: Option<PathBuf>,
    /// The VBIOS RIM (signed SWID tag) for the report's VBIOS version.
    #[arg(long, value_name = "FILE", requires = "driver_rim")]
    pub vbios_rim: Option<PathBuf>,
    /// Verification time (RFC 3339), default now (NVIDIA's RIM signing
    /// certificates expire: verify at a time inside their validity).
    #[arg(long, value_name = "TIME")]
    pub at: Option<String>,
    /// Print the claims (or the refusal) as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Exit 0 verified, 1 refused (the check named), 2 malformed input.
pub fn verify_gpu(a: VerifyGpuArgs) -> Result<ExitCode> {
    let limit = veil_attest::MAX_EVIDENCE_BYTES;
    let report = read_limited(&a.report, "report", limit)?;
    let chain = read_limited(&a.cert_chain, "certificate chain", limit)?;
    let nonce: Option<[u8; 32]> = match &a.nonce {
        Some(n) => {
            let b = crate::output::parse_bytes("nonce", n)?;
            match <[u8; 32]>::try_from(b.as_slice()) {
                Ok(n) => Some(n),
                Err(_) => bail!("--nonce: expected 32 bytes, got {}", b.len()),
            }
        }
        None => None,
    };
    let now = crate::attest::at_time(a.at.as_deref())?;
    let rims = match (&a.driver_rim, &a.vbios_rim) {
        (Some(d), Some(v)) => Some((
            read_limited(d, "driver RIM", limit)?,
            read_limited(v, "VBIOS RIM", limit)?,
        )),
        _ => None,
    };
    let result = DeviceChain::verify(&chain, now).and_then(|c| match &rims {
        None => c.verify_report(&report, nonce.as_ref(), now),
        Some((d, v)) => {
            let (d, v) = (rim::Rim::verify(d, now)?, rim::Rim::verify(v, now)?);
            let rims = rim::Rims {
                driver: &d,
                vbios: &v,
            };
            c.verify_report_with_rims(&report, nonce.as_ref(), now, &rims)
        }
    });
    match result {
        Ok(claims) => {
            let caveats = caveats(nonce.is_some(), claims.measurements_appraised);
            if a.json {
                let mut v = serde_json::to_value(&claims)?;
                v["verified"] = true.into();
                v["caveats"] = caveats.clone().into();
                crate::outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                crate::outln!(
                    "verified: NVIDIA {} GPU report (driver {}, VBIOS {}), signed by a device chaining to NVIDIA's pinned root",
                    claims.arch,
                    claims.report.driver_version,
                    claims.report.vbios_version
                );
                for c in &caveats {
                    crate::outln!("  caveat       {c}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let code = match e {
                Error::Malformed { .. } => 2,
                Error::Refused(_) => 1,
            };
            if a.json {
                crate::outln!(
                    "{}",
                    serde_json::json!({"verified": false, "check": e.check(), "error": e.to_string()})
                );
            }
            match e.check() {
                Some(check) => eprintln!("veil: refused by {check}: {e}"),
                None => eprintln!("veil: {e}"),
            }
            Ok(ExitCode::from(code))
        }
    }
}

/// What a successful verification did not establish.
fn caveats(nonce: bool, appraised: bool) -> Vec<String> {
    let mut c = vec!["revocation not checked (no OCSP responses)".to_string()];
    if !nonce {
        c.push("freshness not checked (no --nonce)".into());
    }
    if !appraised {
        c.push("measurements not appraised (give --driver-rim and --vbios-rim)".into());
    }
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn caveats_name_what_was_not_checked() {
        let c = super::caveats(false, false);
        assert_eq!(c.len(), 3);
        assert_eq!(super::caveats(true, true).len(), 1);
    }
}
