//! Which TEE this guest runs in.
//!
//! Hardware is detected from the kernel's device nodes (the CoCo attester's
//! checks): TDX if `/dev/tdx_guest` or the `tdx_guest` misc device exists,
//! SNP if `/dev/sev-guest` or the `sev-guest` platform device exists.
//! Detection never yields `sim`: the simulated TEE is used only when it is
//! requested by name *and* the host handed over a sim platform channel. A
//! guest with no TEE and no explicit `sim` request gets an error, not
//! evidence that silently proves nothing.

use std::io::{Read, Write};
use std::path::PathBuf;

use crate::sim::SimAttester;
use crate::snp::{self, SnpAttester};
use crate::tdx::{self, TdxAttester};
use crate::tsm::{KernelConfigFs, TsmReport};
use crate::{Attester, TeeError, TeeKind};

/// The filesystem roots detection looks at (tests point them at a temp dir).
#[derive(Debug, Clone)]
pub struct DetectRoots {
    /// `/dev`.
    pub dev: PathBuf,
    /// `/sys`.
    pub sys: PathBuf,
    /// `/sys/kernel/config/tsm/report`.
    pub tsm: PathBuf,
}

impl Default for DetectRoots {
    fn default() -> Self {
        DetectRoots {
            dev: "/dev".into(),
            sys: "/sys".into(),
            tsm: crate::tsm::DEFAULT_ROOT.into(),
        }
    }
}

impl DetectRoots {
    /// The hardware TEEs whose guest devices are present, TDX first.
    pub fn probe(&self) -> Vec<TeeKind> {
        let mut found = Vec::new();
        if self.dev.join("tdx_guest").exists()
            || self.sys.join("devices/virtual/misc/tdx_guest").exists()
        {
            found.push(TeeKind::Tdx);
        }
        if self.dev.join("sev-guest").exists()
            || self.sys.join("devices/platform/sev-guest").exists()
        {
            found.push(TeeKind::Snp);
        }
        found
    }

    fn looked_at(&self) -> String {
        format!(
            "{}, {}, {}, {}",
            self.dev.join("tdx_guest").display(),
            self.sys.join("devices/virtual/misc/tdx_guest").display(),
            self.dev.join("sev-guest").display(),
            self.sys.join("devices/platform/sev-guest").display()
        )
    }

    fn hardware(&self, kind: TeeKind) -> Result<Box<dyn Attester>, TeeError> {
        if !self.tsm.is_dir() {
            return Err(TeeError::NotDetected(format!(
                "{kind} evidence needs configfs-tsm, but {} does not exist (mount configfs at /sys/kernel/config; Linux 6.7 or later)",
                self.tsm.display()
            )));
        }
        Ok(match kind {
            TeeKind::Snp => Box::new(SnpAttester::new(TsmReport::new(
                &self.tsm,
                Box::new(KernelConfigFs),
                snp::PROVIDER,
            ))?),
            TeeKind::Tdx => Box::new(TdxAttester::new(TsmReport::new(
                &self.tsm,
                Box::new(KernelConfigFs),
                tdx::PROVIDER,
            ))?),
            TeeKind::Sim => return Err(TeeError::Unsupported("sim is not hardware".into())),
        })
    }
}

/// Choose the attester.
///
/// - `requested = Some(Sim)`: the sim platform over `sim_channel`, which
///   must be present.
/// - `requested = Some(Snp | Tdx)`: that TEE through configfs-tsm; its guest
///   device must be present.
/// - `requested = None`: the detected hardware TEE, or an error naming what
///   was looked for. Never sim.
pub fn detect<S: Read + Write + Send + 'static>(
    requested: Option<TeeKind>,
    roots: &DetectRoots,
    sim_channel: Option<S>,
) -> Result<Box<dyn Attester>, TeeError> {
    let found = roots.probe();
    match requested {
        Some(TeeKind::Sim) => match sim_channel {
            Some(ch) => Ok(Box::new(SimAttester::new(ch))),
            None => Err(TeeError::NotDetected(
                "the simulated TEE was requested, but the host handed over no sim platform channel"
                    .into(),
            )),
        },
        Some(kind) => {
            if !found.contains(&kind) {
                return Err(TeeError::NotDetected(format!(
                    "{kind} was requested, but its guest device is missing (looked at {})",
                    roots.looked_at()
                )));
            }
            roots.hardware(kind)
        }
        None => match found.first() {
            Some(&kind) => roots.hardware(kind),
            None => Err(TeeError::NotDetected(format!(
                "no TEE guest device found (looked at {}); on a machine without a TEE, request the simulated TEE explicitly with --tee sim (it gives no protection)",
                roots.looked_at()
            ))),
        },
    }
}
