//! Throughput of NVIDIA GPU report verification on one core: the whole
//! check (device chain to the pinned root, then the report) and the report
//! alone against a chain verified once ([`DeviceChain`] reused).
//! `veil bench attest --tee nvidia` prints these beside NVIDIA's own
//! Python verifier on the same report in the same run.

use std::time::Duration;

use super::{DeviceChain, report::NONCE_LEN};
use crate::bench::rate;
use crate::error::Result;

/// Reports verified per second by each method.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    /// Chain and report verified every time.
    pub full_per_second: f64,
    /// The report only, its chain verified once beforehand.
    pub cached_chain_per_second: f64,
}

/// Measure with `report` (raw or hex), its PEM chain and nonce at `now`,
/// each method running for at least `min`.
pub fn measure(
    report: &[u8],
    chain_pem: &[u8],
    nonce: &[u8; NONCE_LEN],
    now: u64,
    min: Duration,
) -> Result<Figures> {
    let full_per_second = rate(min, "GPU report", || {
        super::verify(report, chain_pem, Some(nonce), now).is_ok()
    })?;
    let chain = DeviceChain::verify(chain_pem, now)?;
    let cached_chain_per_second = rate(min, "GPU report", || {
        chain.verify_report(report, Some(nonce), now).is_ok()
    })?;
    Ok(Figures {
        full_per_second,
        cached_chain_per_second,
    })
}
