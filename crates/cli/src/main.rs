//! `veil`: the one user-facing binary. Each subcommand lives in its own
//! module; this file only wires them together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod attest;
mod attest_dcap;
mod bench;
mod image;
mod kbs;
mod output;
mod policy;

/// Run unmodified OCI containers inside hardware TEEs (AMD SEV-SNP, Intel TDX)
/// and prove, with hardware-signed evidence, exactly what runs there before
/// any secret is released.
#[derive(Parser)]
#[command(name = "veil", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Verify and produce attestation evidence (SNP, TDX, SGX, Azure vTPM, sim).
    #[command(subcommand)]
    Attest(attest::AttestCommand),
    /// Measure veil against named baselines (throughput, ratios).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// OCI images: inspect, measure (dm-verity), encrypt/decrypt, sign/verify, unpack.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Key broker (Trustee KBS protocol): serve, administer, fetch resources as a guest.
    #[command(subcommand)]
    Kbs(kbs::KbsCommand),
    /// Workload policies: generate from Kubernetes YAML, digest, check, diff.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attest(cmd) => attest::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Kbs(cmd) => kbs::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veil: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
