//! Producing TEE evidence inside the guest.
//!
//! - [`tsm`]: the Linux configfs-tsm report interface
//!   (`/sys/kernel/config/tsm/report`), behind a small [`tsm::ConfigFs`]
//!   trait so it can be tested against a fake tree.
//! - [`snp`], [`tdx`]: attesters for AMD SEV-SNP and Intel TDX on top of it,
//!   producing the CoCo evidence JSON and reading the launch-time init-data
//!   binding (SNP `HOST_DATA`, TDX `MRCONFIGID`) from a fresh report.
//! - [`sim`]: the simulated TEE: the guest asks the host-side sim platform
//!   over a byte channel handed to it at launch.
//! - [`detect`]: which of these applies; it never falls back to `sim`
//!   silently — sim is used only when asked for by name.
//! - `nvidia` (feature `nvidia-gpu`): NVIDIA GPU evidence through a
//!   transport trait over NVML's documented calls, and the GPU ready state.
//! - `nvml` (feature `nvml`, which dlopens the driver's library): NVML as
//!   that transport.
//! - [`channel`]: length-prefixed JSON frames, shared by the sim platform
//!   channel and the agent API.
//!
//! Not for: verifying evidence (`veil-attest`), talking to the KBS
//! (`veil-kbs-client`).

pub mod channel;
pub mod detect;
#[cfg(any(feature = "nvidia-gpu", test))]
pub mod nvidia;
#[cfg(any(feature = "nvml", test))]
pub mod nvml;
pub mod sim;
pub mod snp;
pub mod tdx;
pub mod tsm;

use std::fmt;

pub use detect::{DetectRoots, detect};

/// Size of the REPORT_DATA every backend binds.
pub const REPORT_DATA_LEN: usize = 64;

/// A TEE kind this crate can produce evidence for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TeeKind {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// The simulated TEE (software key on the host; no protection).
    Sim,
}

impl TeeKind {
    /// The KBS protocol name (`snp`, `tdx`, `sim`).
    pub fn as_str(self) -> &'static str {
        match self {
            TeeKind::Snp => "snp",
            TeeKind::Tdx => "tdx",
            TeeKind::Sim => "sim",
        }
    }

    /// Parse a protocol name.
    pub fn parse(s: &str) -> Result<Self, TeeError> {
        match s {
            "snp" => Ok(TeeKind::Snp),
            "tdx" => Ok(TeeKind::Tdx),
            "sim" => Ok(TeeKind::Sim),
            other => Err(TeeError::Unsupported(format!(
                "unknown TEE {:?}; supported: snp, tdx, sim",
                other.chars().take(32).collect::<String>()
            ))),
        }
    }

    /// Whether evidence of this kind is signed by hardware.
    pub fn hardware_backed(self) -> bool {
        !matches!(self, TeeKind::Sim)
    }
}

impl fmt::Display for TeeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Errors producing evidence. Each names what was checked and what was found.
#[derive(Debug, thiserror::Error)]
pub enum TeeError {
    #[error("{0}")]
    Unsupported(String),
    #[error("no TEE detected: {0}")]
    NotDetected(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{check}: expected {expected}, got {actual}")]
    Check {
        check: &'static str,
        expected: String,
        actual: String,
    },
    #[error("malformed {what}: {reason}")]
    Malformed { what: String, reason: String },
    #[error("sim platform: {0}")]
    Platform(String),
    #[error(transparent)]
    Channel(#[from] channel::ChannelError),
}

impl TeeError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        TeeError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl Into<String>) -> Self {
        TeeError::Malformed {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Evidence from one TEE: the JSON the KBS expects as `primary_evidence`.
#[derive(Debug, Clone)]
pub struct Evidence {
    pub tee: TeeKind,
    pub json: serde_json::Value,
}

/// Something that produces evidence inside a TEE.
pub trait Attester: Send + Sync + fmt::Debug {
    /// The TEE kind.
    fn tee(&self) -> TeeKind;
    /// Evidence binding `report_data`.
    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, TeeError>;
    /// The launch-time init-data binding as the platform reports it now
    /// (SNP HOST_DATA, 32 bytes; TDX MRCONFIGID, 48 bytes; sim, 64 bytes).
    fn init_data_binding(&self) -> Result<Vec<u8>, TeeError>;
    /// The launch measurement as the platform reports it (for display).
    fn measurement(&self) -> Result<Vec<u8>, TeeError>;
}
