//! Throughput of `az-snp-vtpm` verification against a named baseline in
//! the same run: verifying only the SNP report embedded in the same
//! evidence (`snp::verify_report` with the same VCEK). The ratio shows what
//! the vTPM layer (HCL parsing, runtime-data hash, JWK, RSA quote signature,
//! PCR digest) costs on top of the hardware report. Both sides share a
//! [`crate::snp::ChainCache`], as a busy key broker would.
//!
//! `veil bench attest` can call [`measure`].

use std::time::Duration;

use crate::azure::{self, HclReport, Kind};
use crate::bench::{Figure, rate};
use crate::error::{Error, Result};
use crate::snp;

/// Measure `az-snp-vtpm` evidence verified per second on one core, each
/// side running for at least `min`. `now` must be inside the VCEK's validity.
pub fn measure(evidence: &[u8], now: u64, min: Duration) -> Result<Figure> {
    let cache = snp::ChainCache::default();
    let opts = snp::Options {
        chain_cache: Some(&cache),
        vmpl: Some(0),
        ..Default::default()
    };
    azure::verify_snp_vtpm(evidence, &opts, now)?;
    let ours = rate(min, "input", || {
        azure::verify_snp_vtpm(evidence, &opts, now).is_ok()
    })?;

    let ev = azure::evidence::parse(Kind::Snp, evidence)?;
    let hcl = HclReport::parse(&ev.hcl_report)?;
    let vcek = ev
        .vcek
        .as_deref()
        .ok_or_else(|| Error::malformed("benchmark", "evidence has no VCEK"))?;
    let certs = snp::certs::parse_certs(vcek)?;
    let baseline = rate(min, "input", || {
        snp::Report::parse(&hcl.hw_report)
            .and_then(|r| snp::verify_report(&r, &certs, &opts, now))
            .is_ok()
    })?;
    Ok(Figure {
        name: "az-snp-vtpm verify".into(),
        per_second: ours,
        baseline: "snp::verify_report on the embedded SNP report alone (same VCEK, chain cached)"
            .into(),
        baseline_per_second: baseline,
        ratio: ours / baseline,
    })
}
