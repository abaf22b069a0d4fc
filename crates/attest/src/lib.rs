#![recursion_limit = "256"]
//! Verify attestation evidence from Trusted Execution Environments and turn it
//! into [`Claims`]: one normalized, JSON-serializable description of what runs
//! in the TEE, whatever the hardware.
//!
//! This crate is pure: it does no network I/O and reads no files. Callers pass
//! in the evidence, the certificates or collateral, the trusted roots (beyond
//! the vendor roots pinned here) and the current time. That keeps it usable in
//! the in-guest agent, the key broker and the offline `veil attest verify`.
//!
//! Not for: producing evidence (that is `veil-tee`), deciding whether a secret
//! may be released (that is the key broker's policy).

pub mod azure;
pub mod bench;
pub mod claims;
pub mod dcap;
pub mod ecdsa;
pub mod error;
pub mod expect;
mod fields;
pub mod hexbytes;
pub mod nvidia;
pub mod sgx;
pub mod sim;
pub mod snp;
pub mod tdx;
pub mod tpm;

pub use claims::{Claims, Platform, Tee};
pub use error::{Error, Refusal};
pub use expect::Expectations;

/// Upper bound on any evidence document this crate will parse.
pub const MAX_EVIDENCE_BYTES: usize = 1 << 20;

/// Everything a verification needs besides the evidence itself.
#[derive(Default)]
pub struct Context<'a> {
    /// Verification time, Unix seconds (certificate and collateral validity).
    pub now_unix: u64,
    /// Values the evidence must carry (report data, init-data digest, …).
    pub expectations: Expectations,
    /// SEV-SNP certificates and options.
    pub snp: snp::Options<'a>,
    /// The sim root to trust; sim evidence is refused without one.
    pub sim_root: Option<sim::SimRootKey>,
    /// Attestation keys trusted for plain `tpm` evidence (refused without one).
    pub tpm_aks: Vec<tpm::AkPublic>,
}

/// Verify `evidence` of kind `tee` and apply the context's expectations.
pub fn verify(tee: Tee, evidence: &[u8], ctx: &Context<'_>) -> Result<Claims, Error> {
    let claims = match tee {
        Tee::Snp => snp::verify(evidence, &ctx.snp, ctx.now_unix)?,
        Tee::Sim => sim::verify(evidence, ctx.sim_root.as_ref())?,
        Tee::AzSnpVtpm => azure::verify_snp_vtpm(evidence, &ctx.snp, ctx.now_unix)?,
        Tee::Tpm => tpm::verify(evidence, &ctx.tpm_aks)?,
        Tee::Nvidia => nvidia::verify_evidence(evidence, ctx.now_unix)?,
        other => {
            return Err(Error::refused(
                "tee",
                format!("verification of {other} evidence is not available in this build"),
            ));
        }
    };
    ctx.expectations.check(&claims)?;
    Ok(claims)
}
