//! `veil attest verify-gpu`: an NVIDIA GPU (Hopper) attestation report
//! verified offline with `veil_attest::nvidia` (docs/gpu.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use veil_attest::Error;
use veil_attest::nvidia::rim_select::{self, RimFile};
use veil_attest::nvidia::{DeviceChain, ocsp, rim};

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
    /// A directory of RIMs (an operator-filled cache): the driver and VBIOS
    /// RIMs are selected by the report's versions and board.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["driver_rim", "vbios_rim"])]
    pub rim_dir: Option<PathBuf>,
    /// The driver RIM (signed SWID tag) for the report's driver version.
    #[arg(long, value_name = "FILE", requires = "vbios_rim")]
    pub driver_rim: Option<PathBuf>,
    /// The VBIOS RIM (signed SWID tag) for the report's VBIOS version.
    #[arg(long, value_name = "FILE", requires = "driver_rim")]
    pub vbios_rim: Option<PathBuf>,
    /// An OCSP response (DER, as the responder returns it) about a device or
    /// RIM signing certificate; repeat for each. With any, every certificate
    /// below the roots must be covered, fresh and good.
    #[arg(long = "ocsp", value_name = "FILE")]
    pub ocsp: Vec<PathBuf>,
    /// The nonce the OCSP requests carried (hex): the responses must echo it.
    #[arg(long, value_name = "HEX", requires = "ocsp")]
    pub ocsp_nonce: Option<String>,
    /// Oldest OCSP response accepted when it has no nextUpdate, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 86_400)]
    pub ocsp_max_age: u64,
    /// Refuse unless revocation was checked (`nvidia.revocation`).
    #[arg(long)]
    pub require_revocation: bool,
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
    let rim_dir = match &a.rim_dir {
        Some(dir) => Some((read_rim_dir(dir)?, dir.display().to_string())),
        None => None,
    };
    let mut ocsp_raw = Vec::new();
    for path in &a.ocsp {
        ocsp_raw.push((
            read_limited(path, "OCSP response", ocsp::MAX_OCSP_BYTES)?,
            path.display().to_string(),
        ));
    }
    let fresh = ocsp::Freshness {
        now_unix: now,
        max_age_secs: a.ocsp_max_age,
        nonce: match &a.ocsp_nonce {
            Some(n) => Some(hex::decode(n.trim()).context("--ocsp-nonce: not hex")?),
            None => None,
        },
    };
    let mut used = None;
    let result = (|| {
        let responses = ocsp_raw
            .iter()
            .map(|(der, name)| ocsp::Response::parse(der, name))
            .collect::<veil_attest::error::Result<Vec<_>>>()?;
        let revocation = (!responses.is_empty()).then_some((responses.as_slice(), &fresh));
        let mut c = DeviceChain::verify(&chain, now)?;
        if let Some((r, f)) = revocation {
            c.check_revocation(r, f)?;
        }
        let claims = verify_with(
            &c,
            &report,
            nonce.as_ref(),
            now,
            &rims,
            &rim_dir,
            revocation,
            &mut used,
        )?;
        if a.require_revocation && !claims.revocation_checked {
            return Err(Error::refused(
                "nvidia.revocation",
                "revocation was not checked for every certificate involved (--require-revocation); \
                 pass OCSP responses for the device chain and both RIM signer chains with --ocsp",
            ));
        }
        Ok(claims)
    })();
    match result {
        Ok(claims) => {
            let caveats = caveats(
                nonce.is_some(),
                claims.measurements_appraised,
                claims.revocation_checked,
            );
            if a.json {
                let mut v = serde_json::to_value(&claims)?;
                v["verified"] = true.into();
                v["caveats"] = caveats.clone().into();
                if let Some((d, vb)) = &used {
                    v["rims"] = serde_json::json!({"driver": d, "vbios": vb});
                }
                crate::outln!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                crate::outln!(
                    "verified: NVIDIA {} GPU report (driver {}, VBIOS {}), signed by a device chaining to NVIDIA's pinned root",
                    claims.arch,
                    claims.report.driver_version,
                    claims.report.vbios_version
                );
                if let Some((d, vb)) = &used {
                    crate::outln!(
                        "  rims         driver {}, VBIOS {}",
                        veil_kbs::text::escape_controls(d),
                        veil_kbs::text::escape_controls(vb)
                    );
                }
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

type Revocation<'a> = Option<(&'a [ocsp::Response], &'a ocsp::Freshness)>;

/// Verify the report with the chain, appraising it with the RIMs given
/// (files or a directory) and checking their revocation when asked.
#[allow(clippy::too_many_arguments)]
fn verify_with(
    c: &DeviceChain,
    report: &[u8],
    nonce: Option<&[u8; 32]>,
    now: u64,
    rims: &Option<(Vec<u8>, Vec<u8>)>,
    rim_dir: &Option<(Vec<RimFile>, String)>,
    revocation: Revocation<'_>,
    used: &mut Option<(String, String)>,
) -> veil_attest::error::Result<veil_attest::nvidia::GpuClaims> {
    match (rims, rim_dir) {
        (_, Some((files, source))) => {
            let (claims, selected) =
                c.verify_report_selecting_rims(report, nonce, now, files, source, revocation)?;
            *used = Some((selected.driver_file, selected.vbios_file));
            Ok(claims)
        }
        (None, None) => c.verify_report(report, nonce, now),
        (Some((d, v)), None) => {
            let (mut d, mut v) = (rim::Rim::verify(d, now)?, rim::Rim::verify(v, now)?);
            if let Some((r, f)) = revocation {
                d.check_revocation(r, f)?;
                v.check_revocation(r, f)?;
            }
            let rims = rim::Rims {
                driver: &d,
                vbios: &v,
            };
            c.verify_report_with_rims(report, nonce, now, &rims)
        }
    }
}

/// Most bytes read from a RIM directory in all.
const MAX_RIM_DIR_BYTES: u64 = 256 << 20;

/// The regular files directly in `dir` (not followed if they are symbolic
/// links, not recursing), each at most `MAX_RIM_BYTES`: the candidates
/// `rim_select` chooses from.
fn read_rim_dir(dir: &Path) -> Result<Vec<RimFile>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading RIM directory {}", dir.display()))?
    {
        let entry = entry.with_context(|| format!("reading RIM directory {}", dir.display()))?;
        if names.len() >= rim_select::MAX_CANDIDATES {
            bail!(
                "RIM directory {} holds more than {} entries; keep only RIMs there",
                dir.display(),
                rim_select::MAX_CANDIDATES
            );
        }
        names.push(entry.file_name());
    }
    names.sort();
    let mut files = Vec::new();
    let mut total = 0u64;
    for name in names {
        let path = dir.join(&name);
        // O_NOFOLLOW: a symbolic link is skipped, never followed out of the directory.
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
            Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
        };
        if !file.metadata()?.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        file.take(rim::MAX_RIM_BYTES as u64 + 1)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", path.display()))?;
        total += bytes.len() as u64;
        if total > MAX_RIM_DIR_BYTES {
            bail!(
                "RIM directory {} holds more than {MAX_RIM_DIR_BYTES} bytes of files",
                dir.display()
            );
        }
        files.push(RimFile {
            name: name.to_string_lossy().into_owned(),
            bytes,
        });
    }
    Ok(files)
}

/// What a successful verification did not establish.
fn caveats(nonce: bool, appraised: bool, revocation: bool) -> Vec<String> {
    let mut c = Vec::new();
    if !revocation {
        c.push("revocation not checked (give --ocsp responses)".to_string());
    }
    if !nonce {
        c.push("freshness not checked (no --nonce)".into());
    }
    if !appraised {
        c.push(
            "measurements not appraised (give --rim-dir, or --driver-rim and --vbios-rim)".into(),
        );
    }
    c
}

#[cfg(test)]
mod tests {
    #[test]
    fn caveats_name_what_was_not_checked() {
        let c = super::caveats(false, false, false);
        assert_eq!(c.len(), 3);
        assert!(c[0].starts_with("revocation not checked"));
        assert_eq!(super::caveats(true, true, false).len(), 1);
        assert!(super::caveats(true, true, true).is_empty());
    }
}
