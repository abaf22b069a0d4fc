//! What the per-backend benchmarks (`snp::bench`, `dcap::bench`,
//! `azure::bench`) share: a figure against a named baseline and the loop
//! that measures a rate.

use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// One benchmark figure and its baseline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// What was measured, e.g. `tdx verify (collateral parsed)`.
    pub name: String,
    /// Verifications per second through veil.
    pub per_second: f64,
    /// Name of the baseline.
    pub baseline: String,
    /// Verifications per second through the baseline.
    pub baseline_per_second: f64,
    /// `per_second / baseline_per_second`.
    pub ratio: f64,
}

/// Calls of `f` per second, running for at least `min` and 3 calls. `f`
/// says whether its `input` (named in the refusal) still verifies; one
/// untimed call first checks that it verifies at all.
pub(crate) fn rate(min: Duration, input: &str, mut f: impl FnMut() -> bool) -> Result<f64> {
    if !f() {
        return Err(Error::refused(
            "bench",
            format!("benchmark {input} does not verify"),
        ));
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while n < 3 || start.elapsed() < min {
        if !f() {
            return Err(Error::refused(
                "bench",
                format!("benchmark {input} stopped verifying"),
            ));
        }
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}
