//! Throughput of TDX/SGX quote verification with collateral already parsed,
//! against a named baseline in the same run: dcap-qvl's own
//! `QuoteVerifier::verify_with_policy` on the same quote and collateral
//! (what veil adds: quote parsing, collateral checks, policy, claims).
//!
//! `veil bench attest` calls [`measure`]; `cargo bench -p veil-attest --bench
//! dcap` runs it on the shared fixtures.

use std::time::{Duration, Instant};

use crate::claims::Tee;
use crate::dcap::{Collateral, INTEL_SGX_ROOT_CA_DER, TcbPolicy};
use crate::error::{Error, Result};

/// One benchmark figure and its baseline.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figure {
    /// What was measured, e.g. `tdx verify (collateral parsed)`.
    pub name: String,
    /// Quotes per second through veil (`tdx::verify` / `sgx::verify`).
    pub per_second: f64,
    /// Name of the baseline.
    pub baseline: String,
    /// Quotes per second through the baseline.
    pub baseline_per_second: f64,
    /// `per_second / baseline_per_second`.
    pub ratio: f64,
}

fn rate(min: Duration, mut f: impl FnMut() -> bool) -> Result<f64> {
    // One untimed call checks the input verifies at all.
    if !f() {
        return Err(Error::refused("bench", "benchmark input does not verify"));
    }
    let start = Instant::now();
    let mut n: u64 = 0;
    while n < 3 || start.elapsed() < min {
        if !f() {
            return Err(Error::refused("bench", "benchmark input stopped verifying"));
        }
        n += 1;
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Measure quotes verified per second for `tee` (Tdx or Sgx) on one core,
/// each side running for at least `min` time. `policy` must accept the
/// quote's TCB status at `now`.
pub fn measure(
    tee: Tee,
    quote: &[u8],
    collateral: &Collateral,
    policy: &TcbPolicy,
    now: u64,
    min: Duration,
) -> Result<Figure> {
    let verify: fn(&[u8], &Collateral, &TcbPolicy, u64) -> Result<crate::Claims> = match tee {
        Tee::Tdx => crate::tdx::verify,
        Tee::Sgx => crate::sgx::verify,
        other => {
            return Err(Error::malformed(
                "benchmark",
                format!("DCAP benchmark is for tdx or sgx, not {other}"),
            ));
        }
    };
    verify(quote, collateral, policy, now)?;
    let ours = rate(min, || verify(quote, collateral, policy, now).is_ok())?;
    let qvl = dcap_qvl::verify::QuoteVerifier::new(INTEL_SGX_ROOT_CA_DER.to_vec())
        .allow_debug(policy.allow_debug);
    let baseline = rate(min, || {
        qvl.verify_with_policy(
            quote,
            &collateral.inner,
            now,
            &dcap_qvl::QuotePolicy::claims_only(now),
        )
        .is_ok()
    })?;
    Ok(Figure {
        name: format!("{tee} verify (collateral parsed)"),
        per_second: ours,
        baseline: "dcap-qvl 0.7 QuoteVerifier::verify_with_policy (rustcrypto)".into(),
        baseline_per_second: baseline,
        ratio: ours / baseline,
    })
}
