//! `veil guest`: the guest image (kernel + initrd with `veil-agent` as PID 1)
//! that `veil run --sandbox vm` boots.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;
use veil_runtime::vm::guest::{GuestBuildConfig, build};
use veil_runtime::vm::{measure, qemu};

/// Default vCPUs of a VM sandbox.
pub const DEFAULT_VCPUS: u32 = 1;
/// Default memory of a VM sandbox, MiB.
pub const DEFAULT_MEMORY_MIB: u32 = 1024;

#[derive(Subcommand, Debug)]
pub enum GuestCommand {
    /// Build the guest kernel + initrd (reproducible) and print their digests
    /// and the sim launch measurement of a default VM sandbox.
    Build {
        /// Output dir (default: <data dir>/guest).
        #[arg(short, long)]
        out: Option<PathBuf>,
        /// The kernel, /boot/vmlinuz-<version> (default: the newest installed).
        #[arg(long)]
        kernel: Option<PathBuf>,
        /// The veil-agent binary (default: $VEIL_AGENT, then next to veil, then PATH).
        #[arg(long, env = "VEIL_AGENT")]
        agent: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Internal: relay stdin/stdout to a TCP address (QEMU runs this per
    /// guest connection to a host service).
    #[command(hide = true)]
    Relay { addr: String },
}

/// The sim measurement of a default VM sandbox booting these images.
pub fn default_measurement(kernel: &str, initrd: &str) -> Result<String> {
    let h = |s: &str| -> Result<[u8; 48]> {
        hex::decode(s)
            .ok()
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| anyhow!("bad digest {s}"))
    };
    Ok(hex::encode(measure::measurement(
        &h(kernel)?,
        &h(initrd)?,
        &measure::VmLaunchConfig {
            machine: "q35".into(),
            vcpus: DEFAULT_VCPUS,
            memory_mib: DEFAULT_MEMORY_MIB,
            cmdline: qemu::kernel_cmdline("sim"),
            tee: "sim".into(),
            debug: false,
        },
    )))
}

pub fn run(cmd: GuestCommand) -> Result<ExitCode> {
    match cmd {
        GuestCommand::Build {
            out,
            kernel,
            agent,
            json,
        } => {
            let agent = crate::run::find_agent(agent.as_deref())?;
            let out = out.unwrap_or_else(|| veil_runtime::paths::data_dir().join("guest"));
            let spinner = crate::progress::Spinner::new(&format!(
                "building the guest image into {}",
                out.display()
            ));
            let img = build(
                &GuestBuildConfig {
                    agent,
                    kernel,
                    modules_dir: None,
                },
                &out,
            )
            .map_err(|e| anyhow!("veil guest build: {e}"))?;
            drop(spinner);
            // What `veil run --sandbox vm --tee sim` boots by default.
            let (boot, boot_sha384) = img.boot_kernel("sim");
            let m = default_measurement(boot_sha384, &img.initrd_sha384)?;
            if json {
                let mut v = serde_json::to_value(&img)?;
                v["boot_kernel"] = boot.display().to_string().into();
                v["sim_measurement"] = m.into();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!("kernel   {} ({})", img.kernel.display(), img.kernel_version);
                println!("  sha384 {}", img.kernel_sha384);
                match (
                    &img.pvh_kernel,
                    &img.pvh_kernel_sha384,
                    &img.pvh_unavailable,
                ) {
                    (Some(k), Some(h), _) => {
                        println!("vmlinux  {} (PVH boot for --tee sim|none)", k.display());
                        println!("  sha384 {h}");
                    }
                    (_, _, why) => println!(
                        "vmlinux  none ({}); --tee sim|none boot the bzImage",
                        why.as_deref().unwrap_or("not extracted")
                    ),
                }
                println!("initrd   {}", img.initrd.display());
                println!("  sha384 {}", img.initrd_sha384);
                println!("modules  {}", img.modules.len());
                println!(
                    "sim launch measurement ({}, {DEFAULT_VCPUS} vCPU, {DEFAULT_MEMORY_MIB} MiB, cmdline {:?}):\n  {m}",
                    boot.display(),
                    qemu::kernel_cmdline("sim")
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        GuestCommand::Relay { addr } => relay(&addr),
    }
}

fn relay(addr: &str) -> Result<ExitCode> {
    // Die with QEMU.
    // SAFETY: plain prctl.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    let s = std::net::TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    let mut up = s.try_clone()?;
    let t = std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        let mut stdin = std::io::stdin().lock();
        while let Ok(n) = stdin.read(&mut buf) {
            if n == 0 || up.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = s;
    let mut buf = [0u8; 16384];
    let mut stdout = std::io::stdout().lock();
    while let Ok(n) = down.read(&mut buf) {
        if n == 0
            || stdout
                .write_all(&buf[..n])
                .and_then(|_| stdout.flush())
                .is_err()
        {
            break;
        }
    }
    drop(t);
    Ok(ExitCode::SUCCESS)
}
