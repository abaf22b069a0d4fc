//! `veil attest verify-gpu`: an NVIDIA GPU (Hopper) attestation report
//! verified offline with `veil_attest::nvidia` (docs/gpu.md).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use veil_attest::Error;
use veil_attest::nvidia::rim_select::RimFile;
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

/// The candidate RIMs of an operator's RIM directory (shared with the KBS).
fn read_rim_dir(dir: &Path) -> Result<Vec<RimFile>> {
    veil_kbs::gpu::read_rim_dir(dir).map_err(anyhow::Error::msg)
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

/// NVIDIA's verifier driver (scripts/nvidia-verifier-oracle.py), built into
/// veil so `veil bench attest --tee nvidia` runs it anywhere.
const NVIDIA_ORACLE: &str = include_str!("../../../scripts/nvidia-verifier-oracle.py");
/// The requester nonce of the fixture report the benchmark verifies.
const BENCH_NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

/// The venv python scripts/install-deps.sh makes for NVIDIA's verifier.
fn nvidia_python(given: Option<&Path>) -> PathBuf {
    if let Some(p) = given {
        return p.to_path_buf();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/nonexistent"));
    cache.join("veil/nv-local-gpu-verifier-2.7.3/bin/python")
}

/// Reports per second through NVIDIA's Python verifier (chain and report
/// each time, as it does), on the same files, for at least `seconds`.
fn nvidia_rate(python: &Path, report: &[u8], chain: &[u8], now: u64, seconds: f64) -> Result<f64> {
    use std::io::Write;
    let dir = tempfile::tempdir()?;
    let script = dir.path().join("oracle.py");
    std::fs::write(&script, NVIDIA_ORACLE)?;
    std::fs::write(dir.path().join("report.txt"), report)?;
    std::fs::write(dir.path().join("chain.pem"), chain)?;
    let case = serde_json::json!([{
        "name": "bench", "report": dir.path().join("report.txt"),
        "chain": dir.path().join("chain.pem"), "nonce": BENCH_NONCE, "at": now,
    }]);
    let mut child = std::process::Command::new(python)
        .arg(&script)
        .arg("--bench-seconds")
        .arg(seconds.to_string())
        .current_dir(dir.path())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("running {}", python.display()))?;
    child
        .stdin
        .take()
        .context("oracle stdin")?
        .write_all(case.to_string().as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "NVIDIA's verifier ({}) failed: {}",
            python.display(),
            veil_kbs::text::escape_controls(String::from_utf8_lossy(&out.stderr).trim())
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("NVIDIA's verifier output")?;
    v["reports_per_second"]
        .as_f64()
        .context("NVIDIA's verifier printed no reports_per_second")
}

/// `veil bench attest --tee nvidia`: the fixture GPU report verified per
/// second by veil (chain each time, chain cached) beside NVIDIA's Python
/// verifier on the same report in the same run.
pub fn bench(
    a: &crate::bench::AttestBench,
    read: &dyn Fn(&str) -> Result<Vec<u8>>,
) -> Result<ExitCode> {
    let report = read("nvidia/hopperAttestationReport.txt")?;
    let chain = read("nvidia/hopperCertChain.txt")?;
    let nonce: [u8; 32] = hex::decode(BENCH_NONCE)?
        .try_into()
        .map_err(|_| anyhow::anyhow!("nonce length"))?;
    // 2025-01-01: inside the fixture chain's validity.
    let now = 1_735_689_600;
    let min = std::time::Duration::from_secs_f64(a.seconds);
    let veil = veil_attest::nvidia::bench::measure(&report, &chain, &nonce, now, min)?;
    let python = nvidia_python(a.nvidia_python.as_deref());
    let baseline = if python.exists() {
        Some(nvidia_rate(&python, &report, &chain, now, a.seconds)?)
    } else {
        None
    };
    let ratio = |x: f64| baseline.map(|b| x / b);
    if a.json {
        let out = serde_json::json!({ "nvidia": {
            "full_per_second": veil.full_per_second,
            "cached_chain_per_second": veil.cached_chain_per_second,
            "baseline": "nv-local-gpu-verifier 2.7.3 (chain + report signature + nonce)",
            "baseline_per_second": baseline,
            "full_ratio": ratio(veil.full_per_second),
            "cached_ratio": ratio(veil.cached_chain_per_second),
        }});
        crate::outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    crate::outln!(
        "veil bench attest --tee nvidia (one core, {:.1}s per method)",
        a.seconds
    );
    crate::outln!(
        "  nvidia full verify (chain each time) {:>10.0} /s",
        veil.full_per_second
    );
    crate::outln!(
        "  nvidia verify, chain cached          {:>10.0} /s",
        veil.cached_chain_per_second
    );
    match baseline {
        Some(b) => crate::outln!(
            "  baseline: nv-local-gpu-verifier      {b:>10.1} /s   (full = {:.1}x, cached = {:.1}x of baseline)",
            veil.full_per_second / b,
            veil.cached_chain_per_second / b
        ),
        None => crate::outln!(
            "  baseline: nv-local-gpu-verifier not found at {} (run scripts/install-deps.sh or pass --nvidia-python)",
            python.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// `veil attest verify --tee nvidia`: the evidence as Trustee lists one
/// device. Trustee's JSON is passed through; a report (raw or hex) is
/// paired with its chain (`--cert`, PEM, leaf first).
pub fn device_evidence(evidence: &[u8], certs: &[Vec<u8>]) -> Result<Vec<u8>> {
    use base64::Engine;
    if evidence.trim_ascii_start().starts_with(b"{") {
        if !certs.is_empty() {
            bail!("--cert: the nvidia evidence JSON carries its own certificate chain");
        }
        return Ok(evidence.to_vec());
    }
    let [chain] = certs else {
        bail!(
            "--tee nvidia: give the device certificate chain with one --cert CHAIN.pem \
             (leaf first, as the driver returns it), or Trustee's device evidence JSON"
        );
    };
    let text = evidence.trim_ascii();
    let report = if !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit) {
        String::from_utf8_lossy(text).into_owned()
    } else {
        hex::encode(evidence)
    };
    let b64 = base64::engine::general_purpose::STANDARD;
    Ok(serde_json::to_vec(&serde_json::json!({
        "arch": "HOPPER",
        "evidence": report,
        "certificate": b64.encode(chain),
    }))?)
}

/// The summary lines of `veil attest verify --tee nvidia`.
pub fn print_summary(c: &veil_attest::Claims) {
    let s = |k: &str| veil_kbs::text::escape_controls(c.raw[k].as_str().unwrap_or("?"));
    crate::output::kv("driver", &s("driver_version"));
    crate::output::kv("vbios", &s("vbios_version"));
    crate::output::kv("nonce", &hex::encode(&c.report_data));
    crate::output::kv("ueid", &c.platform.chip_id);
    crate::output::kv(
        "measurements",
        if c.debug {
            "NOT appraised (no RIMs: use `veil attest verify-gpu --rim-dir DIR`)"
        } else {
            "appraised against NVIDIA's RIMs"
        },
    );
    crate::output::kv(
        "revocation",
        if c.raw["revocation_checked"] == true {
            "checked"
        } else {
            "not checked (use `veil attest verify-gpu --ocsp`)"
        },
    );
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
