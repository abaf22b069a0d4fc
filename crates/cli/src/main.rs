//! `veil`: the one user-facing binary. Each subcommand lives in its own
//! module; this file only wires them together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod attest;
mod attest_dcap;
mod bench;
mod guest;
mod image;
mod kbs;
mod limits;
mod measure;
mod output;
mod policy;
mod run;

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
    /// The VM sandbox's guest image: kernel + initrd with veil-agent as PID 1.
    #[command(subcommand)]
    Guest(guest::GuestCommand),
    /// OCI images: inspect, measure (dm-verity), encrypt/decrypt, sign/verify, unpack.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Key broker (Trustee KBS protocol): serve, administer, fetch resources as a guest.
    #[command(subcommand)]
    Kbs(kbs::KbsCommand),
    /// Expected launch measurements (SEV-SNP digest, TDX MRTD) as KBS reference values.
    #[command(subcommand)]
    Measure(measure::MeasureCommand),
    /// Workload policies: generate from Kubernetes YAML, digest, check, diff.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run an image (or pod) confidentially: policy, sandbox, attestation, secrets.
    Run(run::RunArgs),
    /// List sandboxes.
    Ps(run::PsArgs),
    /// Show a sandbox's output (if its policy allows reading it).
    Logs(run::IdArgs),
    /// Run a command in a running sandbox (if its policy allows it).
    Exec(run::ExecArgs),
    /// Send a signal to a sandbox's containers.
    Kill(run::KillArgs),
    /// Stop a sandbox (everything is torn down).
    Stop(run::IdsArgs),
    /// Remove a sandbox's record.
    Rm(run::RmArgs),
    /// Remove the records of every sandbox that is not running.
    Prune(run::PruneArgs),
    /// Show a sandbox's record and fresh, verified evidence.
    Inspect(run::IdArgs),
    /// Secrets of the embedded KBS that `veil run` starts without --kbs.
    #[command(subcommand)]
    Secret(run::SecretCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attest(cmd) => attest::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Guest(cmd) => guest::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Kbs(cmd) => kbs::run(cmd),
        Command::Measure(cmd) => measure::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Run(a) => run::run(a),
        Command::Ps(a) => run::ps(a),
        Command::Logs(a) => run::logs(a),
        Command::Exec(a) => run::exec(a),
        Command::Kill(a) => run::kill(a),
        Command::Stop(a) => run::stop(a),
        Command::Rm(a) => run::rm(a),
        Command::Prune(a) => run::prune(a),
        Command::Inspect(a) => run::inspect(a),
        Command::Secret(cmd) => run::secret(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veil: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
