//! Throughput of SNP report verification on one core, with and without the
//! certificate-chain cache, against the irreducible cost in the same run:
//! one bare ECDSA P-384 signature check of the same report (the CLI adds
//! OpenSSL's own P-384 verify rate, `openssl speed ecdsap384`).
//! `veil bench attest` prints these figures.

use std::time::Duration;

use super::{ChainCache, Options, Report, certs};
use crate::bench::rate;
use crate::error::{Error, Result};

/// Reports verified per second by each method.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Figures {
    /// Full verification, RSA chain checked every time.
    pub full_per_second: f64,
    /// Full verification with the chain cache warm.
    pub cached_chain_per_second: f64,
    /// Baseline: a bare ECDSA P-384 check of the report signature.
    pub bare_ecdsa_per_second: f64,
}

/// Measure with `report` and its endorsement key `ek_der`, each method
/// running for at least `min`.
pub fn measure(
    report: &[u8],
    ek_der: &[u8],
    vmpl: u32,
    now: u64,
    min: Duration,
) -> Result<Figures> {
    let cache = ChainCache::default();
    let plain = Options {
        certs: vec![ek_der.to_vec()],
        vmpl: Some(vmpl),
        ..Default::default()
    };
    let cached = Options {
        certs: vec![ek_der.to_vec()],
        vmpl: Some(vmpl),
        chain_cache: Some(&cache),
        ..Default::default()
    };
    let full_per_second = rate(min, "report", || super::verify(report, &plain, now).is_ok())?;
    let cached_chain_per_second = rate(min, "report", || {
        super::verify(report, &cached, now).is_ok()
    })?;

    let parsed = Report::parse(report)?;
    let ek = certs::parse_certs(ek_der)?
        .into_iter()
        .next()
        .ok_or_else(|| Error::malformed("certificate", "empty"))?;
    let vk = super::ek_verifying_key(&ek)?;
    let sig = p384::ecdsa::Signature::from_scalars(parsed.sig_r, parsed.sig_s)
        .map_err(|_| Error::malformed("SNP report", "signature"))?;
    let key = crate::ecdsa::EcdsaKey::p384(&vk);
    let bare_ecdsa_per_second = rate(min, "report", || {
        key.verify_p384(parsed.signed_bytes(), &sig)
    })?;
    Ok(Figures {
        full_per_second,
        cached_chain_per_second,
        bare_ecdsa_per_second,
    })
}
