//! Launching a sandbox of either kind: the process sandbox, or a QEMU VM
//! (none/sim/SNP/TDX) with the guest image built or cached in the data dir,
//! and, for an auto-selected KVM that does not work on this host, a
//! relaunch under TCG (see `docs/vm.md`).

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use veil_agent_api::proto::Hello;

use crate::vm::qemu::{self, Accel, GuestForward, WorkloadNet};
use crate::vm::{TeeChoice, VmConfig, VmError, VmSandbox, guest};
use crate::{AgentClient, CallError, ProcessSandbox, SandboxConfig, SandboxError, SimPlatform};

/// How long an auto-selected KVM guest may take to get its agent ready
/// before the launch falls back to TCG (a KVM boot takes a few seconds).
pub const KVM_FIRST_DEADLINE: Duration = Duration::from_secs(30);

/// The TEE a sandbox runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tee {
    /// No TEE (VM sandbox only): nothing attested, no KBS, no secrets.
    None,
    /// The simulated TEE (both sandboxes).
    Sim,
    /// AMD SEV-SNP (VM sandbox).
    Snp,
    /// Intel TDX (VM sandbox).
    Tdx,
}

impl Tee {
    /// `none`, `sim`, `snp`, `tdx`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::None => veil_agent_api::proto::NO_TEE,
            Tee::Sim => "sim",
            Tee::Snp => "snp",
            Tee::Tdx => "tdx",
        }
    }
}

impl fmt::Display for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tee {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Tee::None),
            "sim" => Ok(Tee::Sim),
            "snp" => Ok(Tee::Snp),
            "tdx" => Ok(Tee::Tdx),
            other => Err(format!("TEE {other:?}: expected none, sim, snp or tdx")),
        }
    }
}

/// What a VM sandbox is launched with.
#[derive(Debug, Clone)]
pub struct VmOptions {
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// `None`: KVM when usable (falling back to TCG if it does not work
    /// here), else TCG. `Some`: exactly that, never a fallback.
    pub accel: Option<Accel>,
    /// Guest kernel and initrd; `None`: the image built into `<data>/guest`
    /// from the agent binary (built on first use, rebuilt when stale).
    pub guest_image: Option<(PathBuf, PathBuf)>,
    /// OVMF (SNP) or TDVF (TDX).
    pub firmware: Option<PathBuf>,
    /// vCPUs (measured).
    pub vcpus: u32,
    /// Memory in MiB (measured).
    pub memory_mib: u32,
    /// How long boot and attestation may take.
    pub boot_timeout: Duration,
    /// The program (and arguments) QEMU runs per guest connection to a
    /// host service, with the `127.0.0.1:PORT` to relay to appended and the
    /// connection on its stdin/stdout (`veil guest relay`).
    pub relay_command: Vec<String>,
    /// Encrypted volume files, in the order of the policy's encrypted
    /// volumes (sorted by pod volume name), attached writable.
    pub volume_disks: Vec<PathBuf>,
    /// Size of the encrypted scratch disk (emptyDirs and container layers
    /// on a disk the guest encrypts with a key of its own); `None`: none,
    /// they stay in guest RAM. See [`scratch_bytes`].
    pub scratch_bytes: Option<u64>,
    /// `veil bench volume` only: the size of each of its two blank disks
    /// (one the guest encrypts, one it leaves plain); `None` otherwise.
    pub bench_disk_bytes: Option<u64>,
}

/// The scratch disk for a pod: `base` (a user's choice, else
/// [`crate::vm::DEFAULT_SCRATCH_BYTES`]) plus every disk-backed emptyDir's
/// `sizeLimit`, rounded up to 4 KiB.
pub fn scratch_bytes(base: Option<u64>, volumes: &[veil_policy::model::VolumePolicy]) -> u64 {
    let limits: u64 = volumes
        .iter()
        .filter(|v| v.kind == veil_policy::model::VolumeKind::EmptyDir && !v.memory)
        .filter_map(|v| v.size_limit)
        .fold(0u64, u64::saturating_add);
    base.unwrap_or(crate::vm::DEFAULT_SCRATCH_BYTES)
        .saturating_add(limits)
        .min(u64::MAX - 4095)
        .div_ceil(4096)
        * 4096
}

/// Which sandbox to launch.
#[derive(Debug, Clone)]
// One value per launch: boxing the VM's options would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum SandboxKind {
    /// `veil-agent` in its own namespaces on the host (sim TEE only).
    Process,
    /// A QEMU guest.
    Vm(VmOptions),
}

impl SandboxKind {
    /// Whether this is the VM sandbox.
    pub fn is_vm(&self) -> bool {
        matches!(self, SandboxKind::Vm(_))
    }
}

/// What a launch reports while it runs (for a front-end's progress output).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LaunchEvent {
    /// The guest image is missing or stale and is being built into this dir.
    BuildingGuestImage(PathBuf),
    /// QEMU is starting; the kernel boots, the agent sets up and attests.
    Booting,
    /// An auto-selected KVM failed here; the guest is relaunched under TCG.
    KvmFallback(String),
}

/// Why a sandbox could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("starting the sandbox: {0}")]
    Process(#[source] SandboxError),
    #[error("starting the VM sandbox: {0}")]
    Vm(#[source] VmError),
    #[error("starting the VM sandbox (TCG, after KVM failed): {0}")]
    VmAfterKvm(#[source] VmError),
    #[error("building the guest image: {0}")]
    GuestImage(String),
    /// The host cannot run this TEE (no device, no firmware, wrong sandbox).
    #[error("--tee {tee}: {reason}")]
    Tee { tee: Tee, reason: String },
    #[error(
        "--tee {tee} needs --firmware ({})",
        if *tee == Tee::Snp { "an OVMF built with SEV-SNP support, e.g. AmdSev OvmfPkg" } else { "TDVF, e.g. OVMF.inteltdx.fd" }
    )]
    NoFirmware { tee: Tee },
    /// The KBS cannot be reached from this sandbox as given.
    #[error("{0}")]
    Kbs(String),
    #[error("the VM's agent did not say hello")]
    NoHello,
}

/// The `veil-agent` binary: `explicit`, else next to the running program,
/// else in PATH.
pub fn find_agent(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Ok(exe) = std::env::current_exe() {
        let sib = exe.with_file_name("veil-agent");
        if sib.is_file() {
            return Some(sib);
        }
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| Path::new(dir).join("veil-agent"))
        .find(|p| p.is_file())
}

/// Check the sandbox/TEE combination and route the KBS: the URL the
/// policy names (as the guest sees it) and the host services to forward.
pub fn route_kbs(
    kind: &SandboxKind,
    tee: Tee,
    kbs_url: &str,
) -> Result<(String, Vec<GuestForward>), LaunchError> {
    let v = match kind {
        SandboxKind::Process => {
            if tee != Tee::Sim {
                return Err(LaunchError::Tee {
                    tee,
                    reason: "the process sandbox only runs the simulated TEE; use --sandbox vm"
                        .into(),
                });
            }
            return Ok((kbs_url.to_string(), Vec::new()));
        }
        SandboxKind::Vm(v) => v,
    };
    if matches!(tee, Tee::Snp | Tee::Tdx) {
        qemu::check_host_tee(tee.as_str(), &qemu::HostRoots::default())
            .map_err(|reason| LaunchError::Tee { tee, reason })?;
    }
    if tee == Tee::None {
        // No TEE: no KBS to reach (the front-end refused one before).
        return Ok((String::new(), Vec::new()));
    }
    let bad = |why: &str| LaunchError::Kbs(format!("KBS URL {kbs_url:?}{why}"));
    let (_scheme, rest) = kbs_url
        .split_once("://")
        .ok_or_else(|| bad(" has no scheme"))?;
    let hostport = rest.split('/').next().unwrap_or(rest);
    let (host, port) = hostport
        .rsplit_once(':')
        .ok_or_else(|| bad(" needs an explicit port for the VM sandbox"))?;
    let port: u16 = port.parse().map_err(|_| bad(": bad port"))?;
    if !matches!(host, "127.0.0.1" | "localhost") {
        return Err(bad(
            ": the VM sandbox's network (QEMU user mode, restrict=on) reaches only services on this host's loopback; run the KBS (or a relay to it) on 127.0.0.1",
        ));
    }
    let mut command = v.relay_command.clone();
    command.push(format!("127.0.0.1:{port}"));
    let forward = GuestForward {
        guest_port: port,
        command,
    };
    // The URL stays as it is: the agent relays the guest's own loopback
    // port to the forwarded host service, so init-data (and its digest) is
    // the same in both sandboxes.
    Ok((kbs_url.to_string(), vec![forward]))
}

/// What a front-end needs from the launch.
pub struct Launched {
    pub measurement: [u8; 48],
}

/// A running sandbox of either kind.
pub enum AnySandbox {
    Process(Box<ProcessSandbox>),
    Vm(Box<VmSandbox>, Box<Hello>),
}

impl AnySandbox {
    /// What the agent said at start.
    pub fn hello(&self) -> &Hello {
        match self {
            AnySandbox::Process(s) => s.hello(),
            AnySandbox::Vm(_, h) => h,
        }
    }
    /// The launch measurement the host computed.
    pub fn launch_info(&self) -> Launched {
        Launched {
            measurement: match self {
                AnySandbox::Process(s) => s.launch_info().measurement,
                AnySandbox::Vm(s, _) => s.launch_info().measurement,
            },
        }
    }
    /// The VM, for a VM sandbox (its boot details).
    pub fn vm(&self) -> Option<&VmSandbox> {
        match self {
            AnySandbox::Process(_) => None,
            AnySandbox::Vm(s, _) => Some(s),
        }
    }
    /// The agent process (process sandbox) or QEMU (VM).
    pub fn agent_pid(&self) -> Option<u32> {
        match self {
            AnySandbox::Process(s) => s.agent_pid(),
            AnySandbox::Vm(s, _) => s.qemu_pid(),
        }
    }
    /// The agent socket other clients connect to.
    pub fn socket(&self) -> PathBuf {
        match self {
            AnySandbox::Process(s) => s.socket(),
            AnySandbox::Vm(s, _) => s.socket(),
        }
    }
    /// A new connection to the agent.
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
    /// The VM's boot phases, as `vm_<phase>` timings.
    pub fn add_timings(&self, t: &mut serde_json::Map<String, serde_json::Value>) {
        if let AnySandbox::Vm(s, _) = self {
            for (k, v) in s.boot_timings() {
                t.insert(format!("vm_{k}"), v.into());
            }
        }
    }
    /// Stop the sandbox: every process and mount of it goes.
    pub fn stop(self, grace: Duration) -> Result<(), LaunchError> {
        match self {
            AnySandbox::Process(s) => s.stop(grace).map_err(LaunchError::Process),
            AnySandbox::Vm(s, _) => s.stop(grace).map_err(LaunchError::Vm),
        }
    }
}

/// The guest image: the given kernel/initrd, else the one built into the
/// data dir from this agent (built now if missing or stale).
fn guest_image(
    v: &VmOptions,
    tee: Tee,
    data: &Path,
    agent: &Path,
    on: &mut dyn FnMut(LaunchEvent),
) -> Result<(PathBuf, PathBuf), LaunchError> {
    if let Some((k, i)) = &v.guest_image {
        return Ok((k.clone(), i.clone()));
    }
    let dir = data.join("guest");
    if let Some(img) = guest::cached(&dir, agent, &crate::paths::sim_dir(data)) {
        return Ok((img.boot_kernel(tee.as_str()).0.to_path_buf(), img.initrd));
    }
    on(LaunchEvent::BuildingGuestImage(dir.clone()));
    let img = guest::build(
        &guest::GuestBuildConfig {
            agent: agent.to_path_buf(),
            kernel: None,
            modules_dir: None,
        },
        &dir,
    )
    .map_err(|e| LaunchError::GuestImage(e.to_string()))?;
    Ok((img.boot_kernel(tee.as_str()).0.to_path_buf(), img.initrd))
}

/// Launch the sandbox `kind` asks for, from the process sandbox's config;
/// with a note when an auto-selected KVM failed and the VM runs under TCG.
/// `forwards` and `workload` apply to a VM only.
#[allow(clippy::too_many_arguments)]
pub fn launch(
    kind: &SandboxKind,
    tee: Tee,
    data: &Path,
    platform: &Arc<SimPlatform>,
    cfg: &SandboxConfig,
    forwards: Vec<GuestForward>,
    workload: Option<WorkloadNet>,
    on: &mut dyn FnMut(LaunchEvent),
) -> Result<(AnySandbox, Option<String>), LaunchError> {
    let v = match kind {
        SandboxKind::Process => {
            return ProcessSandbox::launch(platform, cfg)
                .map(|s| (AnySandbox::Process(Box::new(s)), None))
                .map_err(LaunchError::Process);
        }
        SandboxKind::Vm(v) => v,
    };
    let tee_choice = match tee {
        Tee::None => TeeChoice::None,
        Tee::Sim => TeeChoice::Sim,
        Tee::Snp | Tee::Tdx => {
            qemu::check_host_tee(tee.as_str(), &qemu::HostRoots::default())
                .map_err(|reason| LaunchError::Tee { tee, reason })?;
            let firmware = v.firmware.clone().ok_or(LaunchError::NoFirmware { tee })?;
            if tee == Tee::Snp {
                TeeChoice::Snp { firmware }
            } else {
                TeeChoice::Tdx { firmware }
            }
        }
    };
    let (kernel, initrd) = guest_image(v, tee, data, &cfg.agent_binary, on)?;
    let vc = VmConfig {
        id: cfg.id.clone(),
        qemu: v.qemu.clone(),
        accel: v.accel,
        kernel,
        initrd,
        vcpus: v.vcpus,
        memory_mib: v.memory_mib,
        tee: tee_choice,
        dir: cfg.dir.clone(),
        log_path: cfg.log_path.clone(),
        init_data: cfg.init_data.clone(),
        handover_init_data: cfg.handover_init_data.clone(),
        oci_layout: cfg.oci_layout.clone(),
        volume_disks: v.volume_disks.clone(),
        scratch_bytes: v.scratch_bytes,
        bench_disk_bytes: v.bench_disk_bytes,
        forwards,
        workload,
        debug: cfg.debug,
        ready_timeout: v.boot_timeout,
    };
    // Auto-selected KVM gets a short first deadline: on some hosts (nested
    // virtualization) KVM runs a trivial guest but a Linux kernel never
    // gets past its real-mode setup, and on others QEMU aborts under KVM at
    // once (e.g. "failed to set MSR 0x10a", SIGABRT). Either way the guest
    // is relaunched under TCG, and the caller is told why, rather than
    // failing or waiting out the boot timeout. A forced KVM never falls back.
    let auto_kvm = v.accel.is_none()
        && matches!(vc.tee, TeeChoice::Sim | TeeChoice::None)
        && (assume_kvm() || qemu::choose_accel(None).0 == Accel::Kvm);
    let mut fell_back = None;
    on(LaunchEvent::Booting);
    let sb = if auto_kvm && vc.ready_timeout > KVM_FIRST_DEADLINE {
        let mut first = vc.clone();
        first.accel = Some(Accel::Kvm);
        first.ready_timeout = KVM_FIRST_DEADLINE;
        let why = match VmSandbox::launch(platform, &first) {
            Ok(sb) => Ok(sb),
            Err(VmError::Timeout { seconds, .. }) => Err(format!(
                "the guest made no progress under KVM within {seconds} s (this host's KVM runs guests only partly, e.g. nested virtualization)"
            )),
            // A guest that powers off by itself (agent refusal, panic) is
            // not KVM's fault: only QEMU failing is.
            Err(VmError::Exited { status, log }) if status != "exit code 0" => Err(format!(
                "QEMU failed under KVM before the agent was ready ({status}{})",
                qemu_error(&log)
                    .map(|l| format!(": {l}"))
                    .unwrap_or_default()
            )),
            Err(e) => return Err(LaunchError::Vm(e)),
        };
        match why {
            Ok(sb) => sb,
            Err(why) => {
                on(LaunchEvent::KvmFallback(why.clone()));
                let mut tcg = vc.clone();
                tcg.accel = Some(Accel::Tcg);
                fell_back = Some(why);
                VmSandbox::launch(platform, &tcg).map_err(LaunchError::VmAfterKvm)?
            }
        }
    } else {
        VmSandbox::launch(platform, &vc).map_err(LaunchError::Vm)?
    };
    let hello = sb.hello().cloned().ok_or(LaunchError::NoHello)?;
    let note = fell_back.map(|why| format!("under TCG: {why}"));
    Ok((AnySandbox::Vm(Box::new(sb), Box::new(hello)), note))
}

/// `VEIL_VM_ASSUME_KVM=1`: an auto accelerator takes KVM as usable without
/// probing `/dev/kvm`. For tests that put a fake QEMU in front of the real
/// one to reproduce a host whose QEMU fails under KVM; it changes nothing
/// else (the fake still decides what runs).
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

#[cfg(test)]
mod tests {
    use super::*;

    fn vm() -> SandboxKind {
        SandboxKind::Vm(VmOptions {
            qemu: "qemu-system-x86_64".into(),
            accel: None,
            guest_image: None,
            firmware: None,
            vcpus: 1,
            memory_mib: 1024,
            boot_timeout: Duration::from_secs(300),
            relay_command: vec!["/usr/bin/veil".into(), "guest".into(), "relay".into()],
            volume_disks: Vec::new(),
            scratch_bytes: None,
            bench_disk_bytes: None,
        })
    }

    #[test]
    fn scratch_is_the_base_plus_disk_backed_size_limits() {
        use veil_policy::model::{VolumeKind, VolumePolicy};
        let v = |name: &str, memory: bool, limit: Option<u64>| VolumePolicy {
            name: name.into(),
            kind: VolumeKind::EmptyDir,
            source: "emptyDir".into(),
            memory,
            size_limit: limit,
            host_path: String::new(),
            files: Vec::new(),
            fs_group: None,
            encrypted: None,
        };
        let vols = [
            v("a", false, Some(1 << 30)),
            v("m", true, Some(1 << 30)),
            v("b", false, Some(1000)),
            v("c", false, None),
        ];
        assert_eq!(
            scratch_bytes(None, &vols),
            crate::vm::DEFAULT_SCRATCH_BYTES + (1 << 30) + 4096
        );
        assert_eq!(scratch_bytes(Some(256 << 20), &[]), 256 << 20);
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
        let (url, fwd) = route_kbs(&vm(), Tee::Sim, "http://127.0.0.1:4040").unwrap();
        assert_eq!(url, "http://127.0.0.1:4040");
        assert_eq!(fwd[0].guest_port, 4040);
        assert_eq!(
            fwd[0].command,
            ["/usr/bin/veil", "guest", "relay", "127.0.0.1:4040"]
        );
        let e = route_kbs(&vm(), Tee::Sim, "https://kbs.example.com:8080").unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = route_kbs(&SandboxKind::Process, Tee::Snp, "http://127.0.0.1:1").unwrap_err();
        assert!(e.to_string().contains("--sandbox vm"), "{e}");
        assert_eq!(
            route_kbs(&SandboxKind::Process, Tee::Sim, "http://127.0.0.1:1")
                .unwrap()
                .0,
            "http://127.0.0.1:1"
        );
    }

    #[test]
    fn tees_parse_and_print_as_the_cli_and_shim_config_spell_them() {
        for t in [Tee::None, Tee::Sim, Tee::Snp, Tee::Tdx] {
            assert_eq!(t.as_str().parse::<Tee>(), Ok(t));
        }
        assert!("sgx".parse::<Tee>().unwrap_err().contains("expected none"));
    }
}
