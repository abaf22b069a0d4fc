//! `veil-measure`: the launch measurement a confidential VM's hardware will
//! report, computed in advance from the images the host boots, so that a key
//! broker can be told which measurements to trust.
//!
//! - [`snp::launch_digest`]: the AMD SEV-SNP launch digest of an OVMF guest
//!   (firmware pages, SEV metadata sections, the kernel-hashes page of a
//!   directly booted kernel, one VMSA per vCPU), as the PSP computes it.
//! - [`tdx::mrtd`]: the Intel TDX MRTD of a TDVF guest, as the TDX module
//!   computes it from TDH.MEM.PAGE.ADD / TDH.MR.EXTEND.
//! - [`report`]: the JSON document `veil measure` prints and the KBS loads as
//!   reference values.
//!
//! Pure computation over bytes the caller passes in: no I/O, no C. Not for
//! verifying evidence (that is `veil-attest`).

pub mod error;
pub mod guid;
pub mod ovmf;
pub mod report;
pub mod snp;
pub mod tdx;

pub use error::Error;
pub use ovmf::Firmware;
