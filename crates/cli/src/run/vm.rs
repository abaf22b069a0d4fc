//! `veil run --sandbox vm`: the VM sandbox behind the same `veil run` flow
//! as the process sandbox (see `docs/vm.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use veil_agent::proto::Hello;
use veil_runtime::vm::qemu::{self, Accel, GuestForward, WorkloadNet};
use veil_runtime::vm::{TeeChoice, VmConfig, VmSandbox, guest};
use veil_runtime::{AgentClient, CallError, ProcessSandbox, SandboxConfig, SimPlatform};

/// How long an auto-selected KVM guest may take to get its agent ready
/// before veil falls back to TCG (a KVM boot takes a few seconds).
const KVM_FIRST_DEADLINE: Duration = Duration::from_secs(30);

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
    /// Seconds to wait for the VM's agent (boot and attestation) [default: 300].
    #[arg(long)]
    pub boot_timeout: Option<u64>,
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
        self.tee == veil_agent::proto::NO_TEE
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
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        let sib = exe.with_file_name("veil-agent");
        if sib.is_file() {
            return Ok(sib);
        }
    }
    for dir in std::env::var("PATH").unwrap_or_default().split(':') {
        let p = Path::new(dir).join("veil-agent");
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "veil-agent not found in $VEIL_AGENT, next to veil or in PATH; build it with `cargo build -p veil-agent` or pass --agent"
    )
}

/// Check the sandbox/TEE combination and route the KBS: the URL the
/// policy names (as the guest sees it) and the host services to forward.
pub fn route_kbs(v: &VmArgs, kbs_url: &str) -> Result<(String, Vec<GuestForward>)> {
    if !v.is_vm() {
        if v.tee != "sim" {
            bail!(
                "--tee {}: the process sandbox only runs the simulated TEE; use --sandbox vm",
                v.tee
            );
        }
        return Ok((kbs_url.to_string(), Vec::new()));
    }
    if matches!(v.tee.as_str(), "snp" | "tdx") {
        qemu::check_host_tee(&v.tee, &qemu::HostRoots::default())
            .map_err(|e| anyhow!("--tee {}: {e}", v.tee))?;
    }
    if v.no_tee() {
        // check_no_tee made sure there is no KBS to reach.
        return Ok((String::new(), Vec::new()));
    }
    let (_scheme, rest) = kbs_url
        .split_once("://")
        .ok_or_else(|| anyhow!("KBS URL {kbs_url:?} has no scheme"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| anyhow!("KBS URL {kbs_url:?} needs an explicit port for the VM sandbox"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| anyhow!("KBS URL {kbs_url:?}: bad port"))?;
    if !matches!(host, "127.0.0.1" | "localhost") {
        bail!(
            "KBS URL {kbs_url:?}: the VM sandbox's network (QEMU user mode, restrict=on) reaches only services on this host's loopback; run the KBS (or a relay to it) on 127.0.0.1"
        );
    }
    let exe = std::env::current_exe()?;
    let forward = GuestForward {
        guest_port: port,
        command: vec![
            exe.to_string_lossy().into_owned(),
            "guest".into(),
            "relay".into(),
            format!("127.0.0.1:{port}"),
        ],
    };
    // The URL stays as it is: the agent relays the guest's own loopback
    // port to the forwarded host service, so init-data (and its digest) is
    // the same in both sandboxes.
    Ok((kbs_url.to_string(), vec![forward]))
}

/// What `veil run` needs from the launch.
pub struct Launched {
    pub measurement: [u8; 48],
}

/// A running sandbox of either kind.
pub enum AnySandbox {
    Process(Box<ProcessSandbox>),
    Vm(Box<VmSandbox>, Box<Hello>),
}

impl AnySandbox {
    pub fn hello(&self) -> &Hello {
        match self {
            AnySandbox::Process(s) => s.hello(),
            AnySandbox::Vm(_, h) => h,
        }
    }
    pub fn launch_info(&self) -> Launched {
        Launched {
            measurement: match self {
                AnySandbox::Process(s) => s.launch_info().measurement,
                AnySandbox::Vm(s, _) => s.launch_info().measurement,
            },
        }
    }
    /// The agent process (process sandbox) or QEMU (VM).
    pub fn agent_pid(&self) -> Option<u32> {
        match self {
            AnySandbox::Process(s) => s.agent_pid(),
            AnySandbox::Vm(s, _) => s.qemu_pid(),
        }
    }
    pub fn socket(&self) -> PathBuf {
        match self {
            AnySandbox::Process(s) => s.socket(),
            AnySandbox::Vm(s, _) => s.socket(),
        }
    }
    pub fn connect(&self) -> Result<AgentClient, CallError> {
        match self {
            AnySandbox::Process(s) => s.connect(),
            AnySandbox::Vm(s, _) => s.connect(),
        }
    }
    /// How the agent (process sandbox) or QEMU (VM) exited, waiting up to a
    /// second for it; `None` while it runs.
    pub fn exit_status(&mut self) -> Option<String> {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        loop {
            let s = match self {
                AnySandbox::Process(s) => s.try_wait().map(|s| format!("agent {s}")),
                AnySandbox::Vm(s, _) => s.try_wait().map(|s| format!("QEMU {s}")),
            };
            if s.is_some() || std::time::Instant::now() >= deadline {
                return s;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    /// `process sandbox` or `VM sandbox (QEMU, kvm|tcg)`.
    pub fn label(&self) -> String {
        match self {
            AnySandbox::Process(_) => "process sandbox".into(),
            AnySandbox::Vm(s, _) => {
                format!("VM sandbox (QEMU, {})", s.launch_info().accel.as_str())
            }
        }
    }
    /// Boot phases of a VM.
    pub fn add_timings(&self, t: &mut serde_json::Map<String, serde_json::Value>) {
        if let AnySandbox::Vm(s, _) = self {
            for (k, v) in s.boot_timings() {
                t.insert(format!("vm_{k}"), v.into());
            }
        }
    }
    pub fn stop(self, grace: Duration) -> Result<()> {
        match self {
            AnySandbox::Process(s) => s.stop(grace).map_err(|e| anyhow!("{e}")),
            AnySandbox::Vm(s, _) => s.stop(grace).map_err(|e| anyhow!("{e}")),
        }
    }
}

/// The guest image: --kernel/--initrd, else the one built into the data
/// dir from this agent (built now if missing or stale).
fn guest_image(v: &VmArgs, data: &Path, agent: &Path, quiet: bool) -> Result<(PathBuf, PathBuf)> {
    if let (Some(k), Some(i)) = (&v.kernel, &v.initrd) {
        return Ok((k.clone(), i.clone()));
    }
    let dir = data.join("guest");
    if let Some(img) = guest::cached(&dir, agent, &veil_runtime::paths::sim_dir(data)) {
        return Ok((img.boot_kernel(&v.tee).0.to_path_buf(), img.initrd));
    }
    if !quiet {
        eprintln!(
            "veil: building the guest image into {} (veil guest build)",
            dir.display()
        );
    }
    let img = guest::build(
        &guest::GuestBuildConfig {
            agent: agent.to_path_buf(),
            kernel: None,
            modules_dir: None,
        },
        &dir,
    )
    .map_err(|e| anyhow!("building the guest image: {e}"))?;
    Ok((img.boot_kernel(&v.tee).0.to_path_buf(), img.initrd))
}

/// Launch the sandbox `v` asks for, from the process sandbox's config;
/// with a note when an auto-selected KVM failed and the VM runs under TCG.
pub fn launch(
    v: &VmArgs,
    data: &Path,
    platform: &Arc<SimPlatform>,
    cfg: &SandboxConfig,
    forwards: Vec<GuestForward>,
    workload: Option<WorkloadNet>,
    quiet: bool,
) -> Result<(AnySandbox, Option<String>)> {
    let volume_disks = crate::volume::disks_for(data, &cfg.init_data, v.is_vm())?;
    if !v.is_vm() {
        return ProcessSandbox::launch(platform, cfg)
            .map(|s| (AnySandbox::Process(Box::new(s)), None))
            .map_err(|e| anyhow!("starting the sandbox: {e}"));
    }
    let tee = match v.tee.as_str() {
        "none" => TeeChoice::None,
        "sim" => TeeChoice::Sim,
        "snp" | "tdx" => {
            qemu::check_host_tee(&v.tee, &qemu::HostRoots::default())
                .map_err(|e| anyhow!("--tee {}: {e}", v.tee))?;
            let firmware = v.firmware.clone().ok_or_else(|| {
                anyhow!(
                    "--tee {} needs --firmware ({})",
                    v.tee,
                    if v.tee == "snp" {
                        "an OVMF built with SEV-SNP support, e.g. AmdSev OvmfPkg"
                    } else {
                        "TDVF, e.g. OVMF.inteltdx.fd"
                    }
                )
            })?;
            if v.tee == "snp" {
                TeeChoice::Snp { firmware }
            } else {
                TeeChoice::Tdx { firmware }
            }
        }
        other => bail!("--tee {other} is not available for the VM sandbox"),
    };
    let (kernel, initrd) = guest_image(v, data, &cfg.agent_binary, quiet)?;
    let accel = match v.accel().as_str() {
        "kvm" => Some(Accel::Kvm),
        "tcg" => Some(Accel::Tcg),
        _ => None,
    };
    let vc = VmConfig {
        id: cfg.id.clone(),
        qemu: v.qemu(),
        accel,
        kernel,
        initrd,
        vcpus: v.vcpus(),
        memory_mib: v.memory_mib(),
        tee,
        dir: cfg.dir.clone(),
        log_path: cfg.log_path.clone(),
        init_data: cfg.init_data.clone(),
        handover_init_data: cfg.handover_init_data.clone(),
        oci_layout: cfg.oci_layout.clone(),
        volume_disks,
        forwards,
        workload,
        debug: cfg.debug,
        ready_timeout: Duration::from_secs(v.boot_timeout()),
    };
    // Auto-selected KVM gets a short first deadline: on some hosts (nested
    // virtualization) KVM runs a trivial guest but a Linux kernel never
    // gets past its real-mode setup, and on others QEMU aborts under KVM at
    // once (e.g. "failed to set MSR 0x10a", SIGABRT). Either way the guest
    // is relaunched under TCG, and veil says why, rather than failing or
    // waiting out --boot-timeout. `--accel kvm` never falls back.
    let auto_kvm = accel.is_none()
        && matches!(vc.tee, TeeChoice::Sim | TeeChoice::None)
        && (assume_kvm() || qemu::choose_accel(None).0 == Accel::Kvm);
    let mut fell_back = None;
    // On a terminal, a spinner while QEMU starts, the kernel boots, the agent
    // sets up and attests (cleared before the summary; nothing otherwise).
    let spinner = (!quiet).then(|| {
        crate::progress::Spinner::new("booting the VM sandbox: QEMU, kernel, agent, attestation")
    });
    let sb = if auto_kvm && vc.ready_timeout > KVM_FIRST_DEADLINE {
        let mut first = vc.clone();
        first.accel = Some(Accel::Kvm);
        first.ready_timeout = KVM_FIRST_DEADLINE;
        let why = match VmSandbox::launch(platform, &first) {
            Ok(sb) => Ok(sb),
            Err(veil_runtime::vm::VmError::Timeout { seconds, .. }) => Err(format!(
                "the guest made no progress under KVM within {seconds} s (this host's KVM runs guests only partly, e.g. nested virtualization)"
            )),
            // A guest that powers off by itself (agent refusal, panic) is
            // not KVM's fault: only QEMU failing is.
            Err(veil_runtime::vm::VmError::Exited { status, log }) if status != "exit code 0" => {
                Err(format!(
                    "QEMU failed under KVM before the agent was ready ({status}{})",
                    qemu_error(&log)
                        .map(|l| format!(": {l}"))
                        .unwrap_or_default()
                ))
            }
            Err(e) => return Err(anyhow!("starting the VM sandbox: {e}")),
        };
        match why {
            Ok(sb) => sb,
            Err(why) => {
                if !quiet {
                    eprintln!(
                        "veil: {why}; relaunching under TCG (software emulation, slow; --accel kvm would fail here instead)"
                    );
                }
                let mut tcg = vc.clone();
                tcg.accel = Some(Accel::Tcg);
                fell_back = Some(why);
                VmSandbox::launch(platform, &tcg)
                    .map_err(|e| anyhow!("starting the VM sandbox (TCG, after KVM failed): {e}"))?
            }
        }
    } else {
        VmSandbox::launch(platform, &vc).map_err(|e| anyhow!("starting the VM sandbox: {e}"))?
    };
    drop(spinner);
    if !quiet {
        let li = sb.launch_info();
        if let Some(why) = &fell_back {
            eprintln!("veil: VM sandbox: QEMU with tcg (software emulation, slow: {why})");
        } else {
            eprintln!("veil: VM sandbox: QEMU with {}", li.accel_reason);
        }
        eprintln!("  kernel       sha384:{}", hex::encode(li.kernel_sha384));
        eprintln!("  initrd       sha384:{}", hex::encode(li.initrd_sha384));
        eprintln!("  cmdline      {}", li.cmdline);
    }
    let hello = sb
        .hello()
        .cloned()
        .ok_or_else(|| anyhow!("the VM's agent did not say hello"))?;
    let note = fell_back.map(|why| format!("under TCG: {why}"));
    Ok((AnySandbox::Vm(Box::new(sb), Box::new(hello)), note))
}

/// `VEIL_VM_ASSUME_KVM=1`: `--accel auto` takes KVM as usable without
/// probing `/dev/kvm`. For tests that put a fake QEMU (`--qemu`) in front
/// of the real one to reproduce a host whose QEMU fails under KVM; it
/// changes nothing else (the fake still decides what runs).
fn assume_kvm() -> bool {
    std::env::var("VEIL_VM_ASSUME_KVM").is_ok_and(|v| v == "1")
}

/// The line of QEMU's own output that says what went wrong (QEMU's stderr
/// goes to the console log): its last line naming QEMU or an assertion.
fn qemu_error(log: &str) -> Option<String> {
    log.lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            l.contains("qemu-system")
                || l.contains("qemu:")
                || l.contains("Assertion")
                || l.starts_with("error:")
        })
        .map(|l| l.chars().take(300).collect())
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
    fn the_qemu_error_line_is_found_in_the_console_log() {
        let log = "SeaBIOS\nqemu-system-x86_64: error: failed to set MSR 0x10a to 0x0\nqemu-system-x86_64: kvm.c:3016: kvm_buf_set_msrs: Assertion `ret' failed.\n";
        assert!(
            qemu_error(log)
                .unwrap()
                .contains("kvm_buf_set_msrs: Assertion")
        );
        assert_eq!(qemu_error("Linux version 6.1\nreboot: Power down\n"), None);
    }

    #[test]
    fn kbs_on_loopback_is_forwarded_and_others_are_refused() {
        let v = T::parse_from(["t", "--sandbox", "vm"]).v;
        let (url, fwd) = route_kbs(&v, "http://127.0.0.1:4040").unwrap();
        assert_eq!(url, "http://127.0.0.1:4040");
        assert_eq!(fwd[0].guest_port, 4040);
        assert_eq!(fwd[0].command.last().unwrap(), "127.0.0.1:4040");
        let e = route_kbs(&v, "https://kbs.example.com:8080").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let p = T::parse_from(["t", "--tee", "snp"]).v;
        let e = route_kbs(&p, "http://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("--sandbox vm"), "{e}");
        let p = T::parse_from(["t"]).v;
        assert_eq!(
            route_kbs(&p, "http://127.0.0.1:1").unwrap().0,
            "http://127.0.0.1:1"
        );
    }
}
