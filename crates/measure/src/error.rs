//! Why a measurement cannot be computed. Every variant names the check, and
//! the expected and actual values where there are some.

use crate::guid::Guid;

/// An error computing or loading a launch measurement.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The firmware image is smaller than the fixed OVMF trailer.
    #[error("firmware is {len} bytes: too small to be an OVMF image (at least {min} bytes)")]
    FirmwareTooSmall { len: usize, min: usize },
    /// The firmware image is larger than anything mapped below 4 GiB.
    #[error("firmware is {len} bytes: larger than the {max}-byte limit")]
    FirmwareTooLarge { len: u64, max: u64 },
    /// SEV-SNP measures the firmware in whole 4 KiB pages.
    #[error("firmware is {len} bytes: not a multiple of the 4096-byte page size")]
    FirmwareNotPageAligned { len: usize },
    /// No OVMF GUIDed-table footer where OVMF puts it.
    #[error(
        "not an OVMF image: the GUIDed table footer {expected} is not at offset {offset:#x} \
         (32 + 18 bytes before the end); found {found}"
    )]
    NotOvmf {
        expected: Guid,
        found: Guid,
        offset: usize,
    },
    /// The GUIDed table is malformed.
    #[error("OVMF GUIDed table: {0}")]
    FooterTable(String),
    /// A table entry a measurement needs is absent.
    #[error("OVMF GUIDed table has no {name} entry ({guid}): {why}")]
    MissingTableEntry {
        name: &'static str,
        guid: Guid,
        why: &'static str,
    },
    /// The firmware has no SEV metadata: it was not built for SEV-SNP.
    #[error(
        "firmware has no SEV metadata (OVMF table entry {guid}): it was not built with \
         SEV-SNP support; use an OVMF with SEV metadata (e.g. Debian's OVMF.fd or an AmdSevX64 build)"
    )]
    NoSevMetadata { guid: Guid },
    /// The SEV metadata is malformed.
    #[error("SEV metadata: {0}")]
    SevMetadata(String),
    /// The firmware has no TDVF metadata: it was not built for TDX.
    #[error(
        "firmware has no TDX metadata (OVMF table entry {guid}): it is not a TDVF (TDX-capable OVMF) build"
    )]
    NoTdvfMetadata { guid: Guid },
    /// The TDVF metadata is malformed or unsupported.
    #[error("TDVF metadata: {0}")]
    TdvfMetadata(String),
    /// Kernel hashes were requested but the firmware cannot check them.
    #[error(
        "kernel hashes requested (a kernel was given) but the firmware has no SNP_KERNEL_HASHES \
         metadata section: it cannot verify a directly booted kernel; use an OVMF built from \
         OvmfPkg/AmdSev (AmdSevX64) or measure without --kernel/--initrd/--append"
    )]
    NoKernelHashesSection,
    /// The SEV hashes table does not fit where the firmware says it is.
    #[error("SEV hashes table: {0}")]
    HashesTable(String),
    /// Unknown vCPU model name.
    #[error("unknown vCPU type {name:?}; known: {known}")]
    UnknownVcpuType { name: String, known: String },
    /// vCPU count out of range.
    #[error("vCPU count {actual} is out of range: expected 1..={max}")]
    VcpuCount { actual: u32, max: u32 },
    /// A measurement report (JSON) is malformed.
    #[error("measurement file: {0}")]
    Report(String),
}
