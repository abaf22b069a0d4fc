//! `veil attest verify --tee tdx|sgx`: Intel DCAP quotes with collateral
//! (`--collateral FILE|DIR`), a TCB status policy (`--accept-tcb-status`),
//! or parsing only (`--no-collateral`, which says loudly it verified nothing).

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use veil_attest::dcap::{self, Collateral, TcbPolicy, TcbStatus};
use veil_attest::{Claims, Expectations, Tee};

use crate::attest::{Checked, NOT_VERIFIED};
use crate::outln;
use crate::output::{self, read_limited};

/// Read `--collateral`: a JSON document, or a directory of raw PCS files.
pub fn read_collateral(path: &Path) -> Result<Collateral> {
    let limit = dcap::collateral::MAX_COLLATERAL_BYTES;
    let meta = fs::metadata(path).with_context(|| format!("collateral {}", path.display()))?;
    if meta.is_dir() {
        let mut files = Vec::new();
        let entries = fs::read_dir(path).with_context(|| format!("reading {}", path.display()))?;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !entry.file_type()?.is_file() {
                continue;
            }
            let data = read_limited(&entry.path(), "collateral file", limit)?;
            files.push((name, data));
        }
        Ok(Collateral::from_pcs_files(
            files.iter().map(|(n, d)| (n.as_str(), d.as_slice())),
        )?)
    } else {
        let bytes = read_limited(path, "collateral", limit)?;
        Ok(Collateral::from_json(&bytes)?)
    }
}

/// What the `verify` command hands over for a DCAP TEE.
pub struct DcapArgs<'a> {
    pub tee: Tee,
    pub evidence: &'a [u8],
    pub collateral: Option<&'a Path>,
    pub no_collateral: bool,
    pub accept: &'a [TcbStatus],
    pub expectations: Expectations,
    /// `--min-tcb`, checked by [`crate::attest::report`].
    pub min_tcb: std::collections::BTreeMap<String, u64>,
    pub now_unix: u64,
    pub json: bool,
}

/// Verify (or with `--no-collateral` only parse) a TDX/SGX quote.
/// Exit 0 verified, 1 refused, 2 malformed, 3 only parsed.
pub fn verify(a: DcapArgs<'_>) -> Result<ExitCode> {
    let result = if a.no_collateral {
        if a.collateral.is_some() {
            bail!("--no-collateral and --collateral exclude each other");
        }
        eprintln!(
            "veil: WARNING: --no-collateral: the {} quote is only parsed; its signature, QE report and PCK certificate chain are NOT verified",
            a.tee
        );
        dcap::inspect(a.tee, a.evidence)
    } else {
        let Some(path) = a.collateral else {
            bail!(
                "{} evidence needs --collateral FILE|DIR (collateral JSON, or a directory of PCS files: {}); --no-collateral only parses the quote without verifying it",
                a.tee,
                dcap::PCS_FILES
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        };
        let collateral = match read_collateral(path) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("veil: {e:#}");
                return Ok(ExitCode::from(2));
            }
        };
        let policy = tcb_policy(a.expectations.allow_debug, a.accept)?;
        let opts = dcap::Options {
            collateral: Some(collateral),
            policy,
        };
        dcap::verify(a.tee, a.evidence, &opts, a.now_unix)
    };
    crate::attest::report(
        result.and_then(|c| a.expectations.check(&c).map(|()| c)),
        Checked::from_flag(a.no_collateral),
        &a.min_tcb,
        a.json,
        print_summary,
    )
}

/// The TCB status policy of `--accept-tcb-status` (UpToDate only without it).
pub fn tcb_policy(allow_debug: bool, accept: &[TcbStatus]) -> Result<TcbPolicy> {
    TcbPolicy {
        allow_debug,
        ..TcbPolicy::default()
    }
    .accept_all(accept.iter().copied())
    .map_err(|e| anyhow::anyhow!("--accept-tcb-status: {e}"))
}

fn print_summary(c: &Claims, checked: Checked) {
    let verified = checked == Checked::Verified && c.raw["signature_verified"] == true;
    if verified {
        outln!(
            "verified: {} evidence, signed by PCK ({} platform {})",
            c.tee,
            c.platform.product,
            c.raw["fmspc"].as_str().unwrap_or("")
        );
    } else {
        outln!(
            "{NOT_VERIFIED}: {} quote; its signature chain was not checked",
            c.tee
        );
    }
    let tcb: Vec<String> = c.tcb.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let label = if c.tee == Tee::Tdx {
        "mr_td"
    } else {
        "mr_enclave"
    };
    output::kv(label, &hex::encode(&c.measurement));
    output::kv("report_data", &hex::encode(&c.report_data));
    output::kv(
        if c.tee == Tee::Tdx {
            "mr_config_id"
        } else {
            "config_id"
        },
        &hex::encode(&c.init_data),
    );
    output::kv("tcb", &tcb.join(" "));
    output::kv("debug", if c.debug { "ON" } else { "off" });
    if verified {
        let status = c.raw["tcb_status"].as_str().unwrap_or("?");
        let advisories: Vec<&str> = c.raw["advisory_ids"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let mut line = status.to_string();
        if !advisories.is_empty() {
            line.push_str(&format!(" ({})", advisories.join(", ")));
        }
        if c.raw["tcb_policy"]["exception"].is_string() {
            line.push_str(" — ACCEPTED BY POLICY EXCEPTION (--accept-tcb-status)");
        }
        output::kv("tcb_status", &line);
        output::kv(
            "collateral",
            &format!(
                "valid until {}",
                c.raw["collateral_expiration"].as_str().unwrap_or("?")
            ),
        );
        output::kv("ppid", &c.platform.chip_id);
    } else {
        output::kv("verified", "NO (--no-collateral)");
    }
}
