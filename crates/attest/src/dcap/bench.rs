//! Throughput of TDX/SGX quote verification with collateral already parsed,
//! against a named baseline in the same run: dcap-qvl's own
//! `QuoteVerifier::verify_with_policy` on the same quote and collateral
//! (what veil adds: quote parsing, collateral checks, policy, claims).
//!
//! `veil bench attest` calls [`measure`]; `cargo bench -p veil-attest --bench
//! dcap` runs it on the shared fixtures.

use std::time::Duration;

pub use crate::bench::Figure;
use crate::bench::rate;
use crate::claims::Tee;
use crate::dcap::{Collateral, INTEL_SGX_ROOT_CA_DER, TcbPolicy};
use crate::error::{Error, Result};

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
    let ours = rate(min, "input", || {
        verify(quote, collateral, policy, now).is_ok()
    })?;
    let qvl = dcap_qvl::verify::QuoteVerifier::new(INTEL_SGX_ROOT_CA_DER.to_vec())
        .allow_debug(policy.allow_debug);
    let baseline = rate(min, "input", || {
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
