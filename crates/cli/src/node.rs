//! `veil node install` / `veil node uninstall`: a thin front-end over
//! `veil_runtime::node` (what is written, and how it is undone, is
//! documented there and in docs/kubernetes.md).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand, ValueEnum};
use veil_runtime::node::{self, InstallOptions, Report, Schema};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Make this node's containerd run pods with the veil RuntimeClass
    /// handlers: the shim, a containerd config drop-in, per-handler shim
    /// configs. Running it again changes nothing.
    Install(InstallArgs),
    /// Undo `veil node install`: containerd's config is restored byte for
    /// byte (unless it was changed since; then only veil's import is removed).
    Uninstall(UninstallArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum SchemaArg {
    /// containerd 1.6 / 1.7 (`version = 2`).
    V2,
    /// containerd 2.x (`version = 3`).
    V3,
}

#[derive(Args)]
pub struct InstallArgs {
    /// The node's root directory (`/host` in the installer DaemonSet, where
    /// the node's root is mounted).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// containerd's main config, as a path on the node.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: PathBuf,
    /// RuntimeClass handlers to install (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "veil,veil-vm-sim,veil-vm-snp,veil-vm-tdx"
    )]
    handlers: Vec<String>,
    /// The shim binary to install (default: containerd-shim-veil-v2 next
    /// to veil).
    #[arg(long)]
    shim: Option<PathBuf>,
    /// containerd's config schema (default: the config's `version`, else
    /// from `containerd --version`).
    #[arg(long, value_enum)]
    schema: Option<SchemaArg>,
    /// containerd's version, when the config does not declare its schema
    /// (default: `containerd --version`).
    #[arg(long)]
    containerd_version: Option<String>,
    /// Restart containerd afterwards (`systemctl restart containerd`), only
    /// when something changed.
    #[arg(long)]
    restart_containerd: bool,
}

#[derive(Args)]
pub struct UninstallArgs {
    /// The node's root directory.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Restart containerd afterwards, only when something changed.
    #[arg(long)]
    restart_containerd: bool,
}

pub fn run(cmd: NodeCommand) -> Result<ExitCode> {
    match cmd {
        NodeCommand::Install(a) => install(a),
        NodeCommand::Uninstall(a) => uninstall(a),
    }
}

fn default_shim() -> Result<PathBuf> {
    let me = std::env::current_exe().context("locating the veil binary")?;
    let p = me
        .parent()
        .map(|d| d.join(node::SHIM_BINARY))
        .ok_or_else(|| anyhow!("veil's own path has no directory"))?;
    if !p.is_file() {
        bail!(
            "{} not found next to veil (expected {}); pass --shim PATH",
            node::SHIM_BINARY,
            p.display()
        );
    }
    Ok(p)
}

/// `containerd --version` → `1.6.20~ds1`.
fn containerd_version() -> Option<String> {
    let out = Command::new("containerd").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "containerd github.com/containerd/containerd 1.6.20~ds1 <rev>"
    text.split_whitespace()
        .find(|w| {
            w.trim_start_matches('v')
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(str::to_string)
}

fn print(report: &Report, what: &str) {
    if report.changed.is_empty() {
        println!("{what}: nothing to change");
    }
    for c in &report.changed {
        println!("{what}: {}", veil_kbs::text::escape_controls(c));
    }
    for w in &report.warnings {
        eprintln!("veil: warning: {}", veil_kbs::text::escape_controls(w));
    }
}

fn restart(root: &Path, report: &Report) -> Result<()> {
    if report.changed.is_empty() {
        return Ok(());
    }
    if root != Path::new("/") {
        bail!(
            "--restart-containerd restarts this machine's containerd, but the install went to {}; run it in the node's namespaces (as the DaemonSet does) or restart containerd there",
            root.display()
        );
    }
    let st = Command::new("systemctl")
        .args(["restart", "containerd"])
        .status()
        .context("running systemctl restart containerd")?;
    if !st.success() {
        bail!("systemctl restart containerd: {st}");
    }
    println!("restarted containerd");
    Ok(())
}

fn install(a: InstallArgs) -> Result<ExitCode> {
    let shim = match a.shim {
        Some(p) => p,
        None => default_shim()?,
    };
    let o = InstallOptions {
        root: a.root.clone(),
        containerd_config: a.containerd_config,
        handlers: a.handlers,
        shim,
        schema: a.schema.map(|s| match s {
            SchemaArg::V2 => Schema::V2,
            SchemaArg::V3 => Schema::V3,
        }),
        containerd_version: a.containerd_version.or_else(containerd_version),
    };
    let report = node::install(&o).map_err(|e| anyhow!("veil node install: {e}"))?;
    print(&report, "installed");
    if a.restart_containerd {
        restart(&a.root, &report)?;
    } else if !report.changed.is_empty() {
        println!(
            "restart containerd (or pass --restart-containerd) for it to read the new runtimes"
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn uninstall(a: UninstallArgs) -> Result<ExitCode> {
    let report = node::uninstall(&a.root).map_err(|e| anyhow!("veil node uninstall: {e}"))?;
    print(&report, "removed");
    if a.restart_containerd {
        restart(&a.root, &report)?;
    }
    Ok(ExitCode::SUCCESS)
}
