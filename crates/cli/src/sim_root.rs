//! `veil attest sim-root`: the root public key of the sim platform that
//! `veil run` uses, so a standalone verifier (`veil kbs serve --sim-root`,
//! `veil attest verify --sim-root`) can trust it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use clap::{Args, Subcommand};
use veil_attest::sim::SimRootKey;
use veil_runtime::SimPlatform;

/// `veil attest`: the attestation commands plus `sim-root`.
// Parsed once per process; boxing would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum AttestCli {
    #[command(flatten)]
    Attest(crate::attest::AttestCommand),
    /// Print the root public key (PEM) of the sim platform `veil run` uses
    /// (created in the data dir if it does not exist yet).
    SimRoot(SimRootArgs),
    /// Verify an NVIDIA GPU (Hopper) attestation report offline: device
    /// chain to NVIDIA's pinned root, report signature, FWID, nonce; with
    /// RIMs, the measurements. Exit 0 verified, 1 refused, 2 malformed.
    VerifyGpu(crate::attest_gpu::VerifyGpuArgs),
}

/// Arguments of `veil attest sim-root`.
#[derive(Args)]
pub struct SimRootArgs {
    /// Write the PEM to FILE instead of stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// Run `veil attest …`.
pub fn run(cmd: AttestCli) -> Result<ExitCode> {
    match cmd {
        AttestCli::Attest(c) => crate::attest::run(c),
        AttestCli::SimRoot(a) => sim_root(a),
        AttestCli::VerifyGpu(a) => crate::attest_gpu::verify_gpu(a),
    }
}

/// The root key of the sim platform in `sim_dir` and its PEM (the key is
/// created if missing, exactly as `veil run` does).
pub fn root(sim_dir: &Path) -> Result<(SimRootKey, String)> {
    let platform = SimPlatform::load_or_create(sim_dir).map_err(|e| anyhow!("{e}"))?;
    let root = platform.root();
    let pem = root.to_pem()?;
    Ok((root, pem))
}

fn sim_root(a: SimRootArgs) -> Result<ExitCode> {
    let dir = veil_runtime::paths::sim_dir(&veil_runtime::paths::data_dir());
    let (_, pem) = root(&dir)?;
    eprintln!("veil: WARNING: {}", veil_attest::sim::WARNING);
    match &a.output {
        Some(p) => {
            crate::output::write_atomic(p, pem.as_bytes())?;
            eprintln!(
                "veil: sim root of {} written to {}",
                dir.display(),
                p.display()
            );
        }
        None => std::io::stdout().write_all(pem.as_bytes())?,
    }
    Ok(ExitCode::SUCCESS)
}
