//! `veil run --sandbox vm`: the VM sandbox behind the same `veil run` flow
//! as the process sandbox (see `docs/vm.md`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use veil_runtime::pod::launch::{self, AnySandbox, LaunchEvent, SandboxKind, Tee, VmOptions};
use veil_runtime::vm::qemu::{self, Accel, GuestForward};

/// Sandbox and TEE options of `veil run`.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct VmArgs {
    /// The sandbox: `process` (veil-agent in namespaces) or `vm` (a QEMU guest).
    #[arg(long, default_value = "process", value_parser = ["process", "vm"])]
    pub sandbox: String,
    /// The TEE: `sim` (both sandboxes), `snp`, `tdx` or `none` (VM only).
    #[arg(long, default_value = "sim", value_parser = ["none", "sim", "snp", "tdx"])]
    pub tee: String,
    /// Guest kernel (default: built by `veil guest build` into the data dir).
    #[arg(long, requires = "initrd")]
    pub kernel: Option<PathBuf>,
    /// Guest initrd (with --kernel).
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Firmware for --tee snp (AMD SEV OVMF) or tdx (TDVF).
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// The QEMU binary [default: $VEIL_QEMU, else qemu-system-x86_64].
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Accelerator: auto (KVM when usable, else TCG), kvm, tcg [default: $VEIL_VM_ACCEL, else auto].
    #[arg(long, value_parser = ["auto", "kvm", "tcg"])]
    pub accel: Option<String>,
    /// vCPUs of the VM (measured) [default: 1].
    #[arg(long)]
    pub vcpus: Option<u32>,
    /// Memory of the VM, MiB or with a unit: 512M, 2G (measured) [default: 1024M].
    #[arg(long, value_parser = parse_memory_mib)]
    pub memory: Option<u32>,
    /// Encrypted scratch disk for emptyDirs and container layers, with a
    /// unit: 10G (sparse; plus the pod's emptyDir sizeLimits) [default: 4G].
    #[arg(long, value_parser = parse_scratch_size)]
    pub scratch_size: Option<u64>,
    /// Seconds to wait for the VM's agent (boot and attestation) [default: 300].
    #[arg(long)]
    pub boot_timeout: Option<u64>,
}

/// `--scratch-size`: bytes or a size with a unit (`512M`, `10G`).
pub fn parse_scratch_size(s: &str) -> Result<u64, String> {
    use veil_agent_api::{MAX_SCRATCH_BYTES, MIN_SCRATCH_BYTES};
    let b = crate::volume::parse_bytes_with_unit(s)?;
    if !(MIN_SCRATCH_BYTES..=MAX_SCRATCH_BYTES).contains(&b) {
        return Err(format!(
            "{s:?}: the scratch disk takes {} MiB to {} TiB (its LUKS2 header and integrity tags alone take ~17 MiB)",
            MIN_SCRATCH_BYTES >> 20,
            MAX_SCRATCH_BYTES >> 40
        ));
    }
    Ok(b)
}

/// `--memory`: MiB, or a number with a unit `M`/`MiB`, `G`/`GiB` (binary units).
pub fn parse_memory_mib(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected MiB or a size like 512M, 2G"))?;
    let mib = match unit.to_ascii_lowercase().as_str() {
        "" | "m" | "mb" | "mib" => Some(n),
        "g" | "gb" | "gib" => n.checked_mul(1024),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use M or G)")),
    };
    mib.and_then(|m| u32::try_from(m).ok())
        .filter(|m| *m > 0)
        .ok_or_else(|| format!("{s:?}: out of range"))
}

impl VmArgs {
    pub fn is_vm(&self) -> bool {
        self.sandbox == "vm"
    }
    /// The QEMU binary: --qemu, $VEIL_QEMU, else `qemu-system-x86_64` in PATH.
    pub fn qemu(&self) -> PathBuf {
        self.qemu
            .clone()
            .or_else(|| std::env::var_os("VEIL_QEMU").map(PathBuf::from))
            .unwrap_or_else(|| "qemu-system-x86_64".into())
    }
    /// --accel, else $VEIL_VM_ACCEL, else `auto`.
    pub fn accel(&self) -> String {
        self.accel
            .clone()
            .or_else(|| {
                std::env::var("VEIL_VM_ACCEL")
                    .ok()
                    .filter(|v| !v.is_empty())
            })
            .unwrap_or_else(|| "auto".into())
    }
    pub fn vcpus(&self) -> u32 {
        self.vcpus.unwrap_or(crate::guest::DEFAULT_VCPUS)
    }
    pub fn memory_mib(&self) -> u32 {
        self.memory.unwrap_or(crate::guest::DEFAULT_MEMORY_MIB)
    }
    pub fn boot_timeout(&self) -> u64 {
        self.boot_timeout.unwrap_or(300)
    }
    /// The VM-only flags given to a process sandbox: refuse them rather
    /// than ignore them (the first one is named).
    pub fn check_process_flags(&self) -> Result<()> {
        if self.is_vm() {
            return Ok(());
        }
        let given = [
            ("--kernel", self.kernel.is_some()),
            ("--initrd", self.initrd.is_some()),
            ("--firmware", self.firmware.is_some()),
            ("--qemu", self.qemu.is_some()),
            ("--accel", self.accel.is_some()),
            ("--vcpus", self.vcpus.is_some()),
            ("--memory", self.memory.is_some()),
            ("--scratch-size", self.scratch_size.is_some()),
            ("--boot-timeout", self.boot_timeout.is_some()),
        ];
        if let Some((flag, _)) = given.iter().find(|(_, g)| *g) {
            bail!(
                "{flag} only applies to the VM sandbox (--sandbox vm); the process sandbox has no VM to configure"
            );
        }
        Ok(())
    }
    /// `--tee none`.
    pub fn no_tee(&self) -> bool {
        self.tee == veil_agent_api::proto::NO_TEE
    }
    /// `--tee`.
    pub fn tee(&self) -> Result<Tee> {
        self.tee.parse().map_err(|e: String| anyhow!(e))
    }
    /// The sandbox to launch, as the library takes it.
    pub fn kind(&self) -> Result<SandboxKind> {
        if !self.is_vm() {
            return Ok(SandboxKind::Process);
        }
        let accel = match self.accel().as_str() {
            "kvm" => Some(Accel::Kvm),
            "tcg" => Some(Accel::Tcg),
            _ => None,
        };
        let exe = std::env::current_exe()?;
        Ok(SandboxKind::Vm(VmOptions {
            qemu: self.qemu(),
            accel,
            guest_image: self.kernel.clone().zip(self.initrd.clone()),
            firmware: self.firmware.clone(),
            vcpus: self.vcpus(),
            memory_mib: self.memory_mib(),
            boot_timeout: Duration::from_secs(self.boot_timeout()),
            relay_command: vec![
                exe.to_string_lossy().into_owned(),
                "guest".into(),
                "relay".into(),
            ],
            volume_disks: Vec::new(),
            // Sized from the policy by `volume::with_disks`.
            scratch_bytes: None,
            bench_disk_bytes: None,
        }))
    }
}

/// `--tee none` runs no KBS: refuse what would need one, before anything
/// starts, rather than boot a guest that cannot get it.
pub fn check_no_tee(a: &super::RunArgs, init_data_kbs: Option<&str>) -> Result<()> {
    let why = "without a TEE there is no evidence, so no KBS releases anything to the guest; use --tee sim (or snp, tdx)";
    if !a.vm.is_vm() {
        bail!("--tee none: only the VM sandbox runs without a TEE (--sandbox vm)");
    }
    if let Some(u) = &a.kbs {
        bail!("--tee none with --kbs {u}: {why}");
    }
    if let Some(s) = a.secrets.first() {
        bail!("--tee none with --secret {s}: {why}");
    }
    if let Some(u) = init_data_kbs {
        bail!("--tee none: the --init-data names a KBS ({u}): {why}");
    }
    Ok(())
}

/// The `veil-agent` binary: `explicit`, else next to `veil`, else in PATH.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf> {
    launch::find_agent(explicit).ok_or_else(|| {
        anyhow!(
            "veil-agent not found in $VEIL_AGENT, next to veil or in PATH; build it with `cargo build -p veil-agent` or pass --agent"
        )
    })
}

/// Check the sandbox/TEE combination and route the KBS: the URL the
/// policy names (as the guest sees it) and the host services to forward.
pub fn route_kbs(v: &VmArgs, kbs_url: &str) -> Result<(String, Vec<GuestForward>)> {
    launch::route_kbs(&v.kind()?, v.tee()?, kbs_url).map_err(|e| anyhow!("{e}"))
}

/// What `veil run` shows while a sandbox launches: the guest image build,
/// a spinner while a VM boots, a KVM→TCG fallback and, once up, the VM's
/// accelerator and measured boot files.
pub struct LaunchOutput {
    quiet: bool,
    spinner: Option<crate::progress::Spinner>,
    fell_back: Option<String>,
}

impl LaunchOutput {
    pub fn new(quiet: bool) -> Self {
        LaunchOutput {
            quiet,
            spinner: None,
            fell_back: None,
        }
    }

    /// Show one launch event.
    pub fn event(&mut self, e: LaunchEvent) {
        match e {
            LaunchEvent::BuildingGuestImage(dir) if !self.quiet => eprintln!(
                "veil: building the guest image into {} (veil guest build)",
                dir.display()
            ),
            // On a terminal, a spinner while QEMU starts, the kernel boots,
            // the agent sets up and attests (cleared before the summary).
            LaunchEvent::Booting if !self.quiet => {
                self.spinner = Some(crate::progress::Spinner::new(
                    "booting the VM sandbox: QEMU, kernel, agent, attestation",
                ))
            }
            LaunchEvent::KvmFallback(why) => {
                if !self.quiet {
                    eprintln!(
                        "veil: {why}; relaunching under TCG (software emulation, slow; --accel kvm would fail here instead)"
                    );
                }
                self.fell_back = Some(why);
            }
            _ => {}
        }
    }

    /// The launch is over: clear the spinner and describe the VM.
    pub fn launched(mut self, sb: &AnySandbox) {
        drop(self.spinner.take());
        let (Some(vm), false) = (sb.vm(), self.quiet) else {
            return;
        };
        let li = vm.launch_info();
        if let Some(why) = &self.fell_back {
            eprintln!("veil: VM sandbox: QEMU with tcg (software emulation, slow: {why})");
        } else {
            eprintln!("veil: VM sandbox: QEMU with {}", li.accel_reason);
        }
        eprintln!("  kernel       sha384:{}", hex::encode(li.kernel_sha384));
        eprintln!("  initrd       sha384:{}", hex::encode(li.initrd_sha384));
        eprintln!("  cmdline      {}", li.cmdline);
    }
}

type ImageFn = fn(&Path) -> Result<veil_image::OciLayout>;
type FirstLineFn = fn(std::process::Command) -> Result<(f64, String)>;

/// `veil bench run --sandbox vm`: time to the first output line of `veil
/// run --sandbox vm` (KVM when usable, else TCG) against the process
/// sandbox in the same run, with the VM's boot phases.
pub fn bench(
    iterations: usize,
    json: bool,
    image: ImageFn,
    first_line: FirstLineFn,
) -> Result<std::process::ExitCode> {
    let tmp = tempfile::tempdir()?;
    let layout = image(tmp.path())?;
    let data = tmp.path().join("data");
    let exe = std::env::current_exe()?;
    let img = format!("oci:{}:bench:1", layout.root().display());
    let (accel, why) = qemu::choose_accel(match std::env::var("VEIL_VM_ACCEL").as_deref() {
        Ok("tcg") => Some(Accel::Tcg),
        Ok("kvm") => Some(Accel::Kvm),
        _ => None,
    });
    let (mut vm_ms, mut proc_ms) = (Vec::new(), Vec::new());
    let mut phases: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    for i in 0..=iterations.max(1) {
        let mut c = std::process::Command::new(&exe);
        c.args([
            "run",
            "--rm",
            "--timings",
            "--sandbox",
            "vm",
            "--tee",
            "sim",
            "--accel",
            accel.as_str(),
            &img,
        ])
        .env("VEIL_DATA_DIR", &data);
        let (t, stderr) = first_line(c)?;
        let mut p = std::process::Command::new(&exe);
        p.args(["run", "--rm", "--timings", &img])
            .env("VEIL_DATA_DIR", &data);
        let (tp, _) = first_line(p)?;
        if i == 0 {
            continue; // warm-up: guest image build, sim key, KBS
        }
        vm_ms.push(t);
        proc_ms.push(tp);
        if let Some(j) = stderr
            .lines()
            .find_map(|l| l.strip_prefix("veil: timings "))
        {
            if let Ok(serde_json::Value::Object(m)) = serde_json::from_str(j) {
                phases.push(m);
            }
        }
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (v, p) = (med(&mut vm_ms), med(&mut proc_ms));
    let pick = |k: &str| -> f64 {
        let mut xs: Vec<f64> = phases
            .iter()
            .filter_map(|m| m.get(k).and_then(|x| x.as_f64()))
            .collect();
        med(&mut xs)
    };
    // Phases in order; each is a duration.
    let agent_start = pick("vm_agent_start_ms");
    let attest_start = pick("vm_attest_start_ms");
    let attested = pick("vm_attested_ms");
    let ready = pick("vm_agent_ready_ms");
    let report = serde_json::json!({
        "benchmark": "time from `veil run` to the workload's first output line (busybox echo, one gzip layer)",
        "subject": format!("veil run --sandbox vm --tee sim ({why})"),
        "baseline": "veil run (process sandbox, sim) of the same image",
        "iterations": iterations.max(1),
        "vm_ms": v,
        "process_ms": p,
        "ratio": v / p,
        "accel": accel.as_str(),
        "vm_phases_ms": {
            "qemu_start": pick("vm_qemu_start_ms"),
            "kernel": pick("vm_kernel_ms"),
            "agent_setup": attest_start - agent_start,
            "attestation": attested - attest_start,
            "agent_ready": ready - attested,
            "image_pull_unpack": pick("pull_decrypt_unpack_ms"),
            "container_start": pick("start_ms"),
            "first_output_since_start": pick("first_output_ms"),
        },
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "veil run --sandbox vm vs the process sandbox, time to the first output line (median of {}):",
            iterations.max(1)
        );
        println!("  accelerator  {why}");
        println!("  vm           {v:8.1} ms");
        println!("  process      {p:8.1} ms");
        println!("  ratio        {:8.2}x", v / p);
        println!("  VM phases (median ms):");
        if let Some(m) = report["vm_phases_ms"].as_object() {
            for (k, x) in m {
                println!("    {k:<26} {x}");
            }
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        v: VmArgs,
    }

    #[test]
    fn memory_takes_mib_or_a_unit() {
        for (s, mib) in [
            ("512", 512),
            ("512M", 512),
            ("512MiB", 512),
            ("2G", 2048),
            ("1gib", 1024),
        ] {
            assert_eq!(parse_memory_mib(s), Ok(mib), "{s}");
        }
        for s in ["", "0", "2X", "M", "-1G", "5000000G"] {
            assert!(parse_memory_mib(s).is_err(), "{s}");
        }
    }

    #[test]
    fn scratch_size_takes_a_unit_within_bounds() {
        assert_eq!(parse_scratch_size("256M"), Ok(256 << 20));
        assert_eq!(parse_scratch_size("10G"), Ok(10 << 30));
        for s in ["64M", "65T", "10X", ""] {
            assert!(parse_scratch_size(s).is_err(), "{s}");
        }
        assert!(
            parse_scratch_size("64M")
                .unwrap_err()
                .contains("128 MiB to 64 TiB")
        );
        let v = T::parse_from(["t", "--scratch-size", "1G"]).v;
        let e = v.check_process_flags().unwrap_err().to_string();
        assert!(
            e.starts_with("--scratch-size only applies to the VM sandbox"),
            "{e}"
        );
    }

    #[test]
    fn vm_only_flags_are_refused_with_the_process_sandbox() {
        let v = T::parse_from(["t", "--memory", "2G"]).v;
        let e = v.check_process_flags().unwrap_err().to_string();
        assert!(
            e.starts_with("--memory only applies to the VM sandbox"),
            "{e}"
        );
        let v = T::parse_from(["t", "--sandbox", "vm", "--memory", "2G"]).v;
        assert_eq!(v.memory_mib(), 2048);
        assert!(v.check_process_flags().is_ok());
        assert!(T::parse_from(["t"]).v.check_process_flags().is_ok());
    }

    #[test]
    fn kbs_on_loopback_is_forwarded_through_veil_guest_relay() {
        let v = T::parse_from(["t", "--sandbox", "vm"]).v;
        let (url, fwd) = route_kbs(&v, "http://127.0.0.1:4040").unwrap();
        assert_eq!(url, "http://127.0.0.1:4040");
        assert_eq!(fwd[0].guest_port, 4040);
        assert_eq!(fwd[0].command[1..], ["guest", "relay", "127.0.0.1:4040"]);
        let e = route_kbs(&v, "https://kbs.example.com:8080").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let p = T::parse_from(["t", "--tee", "snp"]).v;
        let e = route_kbs(&p, "http://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("--sandbox vm"), "{e}");
    }
}
