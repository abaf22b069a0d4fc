//! `veil`: the one user-facing binary. Each subcommand lives in its own
//! module; this file only wires them together.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod attest;
mod attest_dcap;
mod attest_gpu;
mod bench;
mod cli_docs;
mod guest;
mod image;
mod image_import;
mod info;
mod kbs;
mod kbs_gpu;
mod limits;
mod measure;
mod node;
mod output;
mod policy;
mod progress;
mod run;
mod sim_root;
mod volume;

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
    Attest(sim_root::AttestCli),
    /// Measure veil against named baselines (throughput, ratios).
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Shell completion script for bash, zsh or fish, on stdout.
    Completion(cli_docs::CompletionArgs),
    /// The VM sandbox's guest image: kernel + initrd with veil-agent as PID 1.
    #[command(subcommand)]
    Guest(guest::GuestCommand),
    /// OCI images: inspect, measure (dm-verity), encrypt/decrypt, sign/verify, unpack.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// What this host offers veil: KVM, QEMU (SNP/TDX), TEE devices, the sim
    /// platform's root key, the guest image, containerd and the shim.
    #[command(visible_alias = "doctor")]
    Info(info::InfoArgs),
    /// Key broker (Trustee KBS protocol): serve, administer, fetch resources as a guest.
    #[command(subcommand)]
    Kbs(kbs::KbsCommand),
    /// Man pages: veil.1 on stdout, or one page per (sub)command into a directory.
    Man(cli_docs::ManArgs),
    /// Kubernetes nodes: install or remove the containerd shim and runtimes.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Expected launch measurements (SEV-SNP digest, TDX MRTD) as KBS reference values.
    #[command(subcommand)]
    Measure(measure::MeasureCommand),
    /// Workload policies: generate from Kubernetes YAML, digest, check, diff.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Run an image (or pod) confidentially: policy, sandbox, attestation, secrets.
    Run(Box<run::RunArgs>),
    /// List sandboxes.
    Ps(run::PsArgs),
    /// Show a sandbox's output (if its policy allows reading it).
    Logs(run::logs::LogsArgs),
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
    /// Containers' resource usage and limits (live, or as last seen at exit), OOM kills.
    Stats(run::stats::StatsArgs),
    /// Secrets of the embedded KBS that `veil run` starts without --kbs.
    #[command(subcommand)]
    Secret(run::SecretCommand),
    /// Encrypted persistent volumes (LUKS2 + dm-integrity in the VM
    /// sandbox, keys in the KBS): create, inspect, list, recover the key.
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
}

fn main() -> ExitCode {
    output::hide_broken_pipe_panics();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `veil run` with a bad flag: docker's 125 (veil failed before the
        // container ran); clap's own 2 for every other command.
        Err(e) if e.use_stderr() && std::env::args().nth(1).as_deref() == Some("run") => {
            let _ = e.print();
            return ExitCode::from(run::docker::EXIT_VEIL_FAILED);
        }
        Err(e) => e.exit(),
    };
    // veil's own failures: 125 for `veil run`, as docker; 2 otherwise.
    let failed = if matches!(cli.command, Command::Run(_)) {
        run::docker::EXIT_VEIL_FAILED
    } else {
        2
    };
    let result = match cli.command {
        Command::Attest(cmd) => sim_root::run(cmd),
        Command::Bench(cmd) => bench::run(cmd),
        Command::Completion(a) => cli_docs::completion::<Cli>(a),
        Command::Guest(cmd) => guest::run(cmd),
        Command::Image(cmd) => image::run(cmd),
        Command::Info(a) => info::run(a),
        Command::Kbs(cmd) => kbs::run(cmd),
        Command::Man(a) => cli_docs::man::<Cli>(a),
        Command::Measure(cmd) => measure::run(cmd),
        Command::Node(cmd) => node::run(cmd),
        Command::Policy(cmd) => policy::run(cmd),
        Command::Run(a) => run::run(*a),
        Command::Ps(a) => run::ps(a),
        Command::Logs(a) => run::logs(a),
        Command::Exec(a) => run::exec(a),
        Command::Kill(a) => run::kill(a),
        Command::Stop(a) => run::stop(a),
        Command::Rm(a) => run::rm(a),
        Command::Prune(a) => run::prune(a),
        Command::Inspect(a) => run::inspect(a),
        Command::Stats(a) => run::stats::stats(a),
        Command::Secret(cmd) => run::secret(cmd),
        Command::Volume(cmd) => volume::run(cmd),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("veil: error: {e:#}");
            match e.downcast_ref::<run::docker::ExitWith>() {
                Some(x) => ExitCode::from(x.code),
                None => ExitCode::from(failed),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap's consistency checks over every subcommand (duplicate ids,
    /// groups, flags), which otherwise only fire when that subcommand runs.
    #[test]
    fn cli_definition_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
