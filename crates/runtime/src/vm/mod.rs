//! The VM sandbox: `veil-agent` as PID 1 of a small guest (kernel + initrd
//! from [`guest`]) under QEMU, with KVM when it works and TCG otherwise.
//!
//! Channels between host and guest (QEMU's user-mode network with
//! `restrict=on`, so the guest has no route anywhere else):
//! - agent API: the agent listens on TCP [`qemu::AGENT_PORT`] in the guest;
//!   QEMU forwards a free port on the host's 127.0.0.1 to it, and the
//!   launcher serves a unix socket (0600, in the sandbox dir) that relays
//!   each connection there, so host tools use the same socket path as with
//!   the process sandbox and may open several connections;
//! - host services (the KBS): `guestfwd` to [`qemu::HOST_SERVICES_IP`], one
//!   relay process per guest connection;
//! - sim platform: a virtio-serial port backed by one end of a socket pair
//!   whose other end the host's [`SimPlatform`] serves (only this VM holds it);
//! - init-data: fw_cfg `opt/veil/init-data` (checked in the guest against
//!   the platform's binding, as SNP HOST_DATA would be);
//! - the OCI layout: a read-only virtio-blk disk holding a tar of the
//!   layout, which the agent unpacks into its tmpfs and checks against the
//!   policy's digests (never a writable host share).
//!
//! - scratch: a fresh sparse file in the sandbox dir ([`SCRATCH_FILE`]),
//!   a writable virtio-blk disk that the guest encrypts with a key of its
//!   own and uses for emptyDirs and container layers (docs/storage.md);
//! - `veil bench volume` only: two fresh sparse files of one size
//!   ([`BENCH_FILES`]), one the guest encrypts and one it leaves plain,
//!   to measure one against the other.
//!
//! Teardown (stop, error, drop; QEMU also gets `PR_SET_PDEATHSIG`) kills
//! QEMU, joins every thread and removes the sandbox dir, the scratch file
//! with it; [`reap_scratch`] removes the scratch file a killed owner left.

pub mod cpio;
pub mod guest;
pub mod measure;
pub mod pvh;
pub mod qemu;

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use veil_agent_api::proto::Hello;
use veil_policy::{BindingField, InitDataDigest, ParsedInitData};

use crate::client::AgentClient;
use crate::measure::file_sha384_cached;
use crate::sandbox::{AGENT_SOCKET, log_tail};
use crate::sim::{LaunchRecord, SimPlatform};
use qemu::{Accel, GuestForward, QemuConfig, VmTee};

/// The scratch disk's file in the sandbox dir.
pub const SCRATCH_FILE: &str = "scratch.img";
/// The scratch disk's size when nothing asks for more (sparse: the host
/// stores only what the guest writes).
pub const DEFAULT_SCRATCH_BYTES: u64 = 4 << 30;

/// The benchmark disks' files in the sandbox dir (`veil bench volume`):
/// the plain one, then the one the guest encrypts.
pub const BENCH_FILES: [&str; 2] = ["bench-plain.img", "bench-crypt.img"];

/// Make the scratch disk: a new sparse file of `bytes` (0600, never an
/// existing file or a symlink).
pub fn make_scratch(path: &Path, bytes: u64) -> Result<(), VmError> {
    make_sparse(path, bytes, "scratch disk")
}

/// A new sparse file of `bytes` for the disk `what` (0600, never an
/// existing file or a symlink).
pub fn make_sparse(path: &Path, bytes: u64, what: &str) -> Result<(), VmError> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(io_err(format!("creating the {what} {}", path.display())))?;
    f.set_len(bytes).map_err(io_err(format!(
        "sizing the {what} {} to {bytes} bytes",
        path.display()
    )))
}

/// Remove the scratch file (and `veil bench volume`'s disk files) of
/// every sandbox dir `<run>/<id>/sandbox` whose owner is gone (`alive(id)`
/// false): a killed `veil run` leaves its sandbox dir behind, and the
/// scratch may hold gigabytes of ciphertext. Returns the ids cleaned.
pub fn reap_scratch(run_root: &Path, alive: impl Fn(&str) -> bool) -> Vec<String> {
    let Ok(rd) = fs::read_dir(run_root) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let files: Vec<PathBuf> = std::iter::once(SCRATCH_FILE)
            .chain(BENCH_FILES)
            .map(|n| e.path().join("sandbox").join(n))
            .filter(|f| fs::symlink_metadata(f).is_ok())
            .collect();
        if files.is_empty() {
            continue;
        }
        let id = e.file_name().to_string_lossy().into_owned();
        if alive(&id) {
            continue;
        }
        if files
            .iter()
            .fold(false, |any, f| fs::remove_file(f).is_ok() | any)
        {
            out.push(id);
        }
    }
    out
}

/// VM sandbox errors.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("init-data: {0}")]
    InitData(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Host(String),
    #[error("QEMU could not be started ({qemu}): {source}")]
    Spawn {
        qemu: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the VM stopped before its agent was ready (QEMU {status}); last console lines:\n{log}"
    )]
    Exited { status: String, log: String },
    #[error(
        "the VM's agent was not ready within {seconds} s (QEMU killed); last console lines:\n{log}"
    )]
    Timeout { seconds: u64, log: String },
    #[error("sim platform: {0}")]
    Platform(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let context = context.into();
    move |source| VmError::Io { context, source }
}

/// Which TEE the VM runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TeeChoice {
    /// No TEE, no attestation.
    None,
    /// The sim platform.
    Sim,
    /// AMD SEV-SNP with this OVMF (built with SEV support).
    Snp { firmware: PathBuf },
    /// Intel TDX with this TDVF.
    Tdx { firmware: PathBuf },
}

impl TeeChoice {
    pub fn name(&self) -> &'static str {
        match self {
            TeeChoice::None => "none",
            TeeChoice::Sim => "sim",
            TeeChoice::Snp { .. } => "snp",
            TeeChoice::Tdx { .. } => "tdx",
        }
    }
}

/// How to launch one VM sandbox.
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Sandbox id (`[a-z0-9]`).
    pub id: String,
    /// The QEMU binary.
    pub qemu: PathBuf,
    /// Force an accelerator; `None`: KVM when usable, else TCG.
    pub accel: Option<Accel>,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub vcpus: u32,
    pub memory_mib: u32,
    pub tee: TeeChoice,
    /// The sandbox's runtime dir; created by launch, removed on teardown.
    pub dir: PathBuf,
    /// The console log (outside `dir`, kept after teardown).
    pub log_path: PathBuf,
    /// The init-data whose digest is bound at launch.
    pub init_data: Vec<u8>,
    /// What the host hands the guest, when it differs (tests model a host
    /// that swaps init-data).
    pub handover_init_data: Option<Vec<u8>>,
    /// The OCI layout to expose read-only.
    pub oci_layout: Option<PathBuf>,
    /// Encrypted volume files, in the order of the policy's encrypted
    /// volumes (sorted by pod volume name); attached writable.
    pub volume_disks: Vec<PathBuf>,
    /// Size of the encrypted scratch disk; `None`: no scratch disk (the
    /// guest keeps emptyDirs and container layers in its RAM).
    pub scratch_bytes: Option<u64>,
    /// `veil bench volume` only: the size of each of its two disks.
    pub bench_disk_bytes: Option<u64>,
    /// Host services the guest reaches at `10.0.2.100:port`.
    pub forwards: Vec<GuestForward>,
    /// The pod's NIC and published ports; `None`: loopback only.
    pub workload: Option<qemu::WorkloadNet>,
    pub debug: bool,
    /// How long to wait for the agent (boot and attestation included).
    pub ready_timeout: Duration,
}

/// What launch measured and bound.
#[derive(Debug, Clone)]
pub struct VmLaunchInfo {
    /// The sim measurement (zero when the TEE is not sim: the hardware measures).
    pub measurement: [u8; 48],
    pub init_data_digest: InitDataDigest,
    pub kernel_sha384: [u8; 48],
    pub initrd_sha384: [u8; 48],
    pub cmdline: String,
    pub accel: Accel,
    /// Why this accelerator.
    pub accel_reason: String,
    pub argv: Vec<String>,
}

#[derive(Debug, Default)]
struct Markers {
    first_output: Option<Duration>,
    agent_start: Option<Duration>,
    kernel_uptime_ms: Option<u64>,
    attest_start: Option<Duration>,
    attested: Option<Duration>,
    /// The agent logged "agent ready" (it listens).
    listening: Option<Duration>,
}

/// A running VM sandbox. Dropping it tears it down.
#[derive(Debug)]
pub struct VmSandbox {
    id: String,
    dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    platform: Option<JoinHandle<()>>,
    serial: Option<JoinHandle<()>>,
    proxy: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    markers: Arc<Mutex<Markers>>,
    ready_after: Duration,
    hello: Option<Hello>,
    launch: VmLaunchInfo,
}

fn free_port() -> Result<u16, VmError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    Ok(l.local_addr()
        .map_err(io_err("finding a free port"))?
        .port())
}

/// Write the OCI layout at `src` as a tar (sorted, mtime 0, uid/gid 0).
pub fn write_layout_tar(src: &Path, dst: &Path) -> Result<(), VmError> {
    let f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dst)
        .map_err(io_err(format!("creating {}", dst.display())))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    fn walk(b: &mut tar::Builder<impl Write>, root: &Path, rel: &Path) -> std::io::Result<()> {
        let mut names: Vec<_> = fs::read_dir(root.join(rel))?
            .flatten()
            .map(|e| e.file_name())
            .collect();
        names.sort();
        for n in names {
            let r = rel.join(&n);
            let p = root.join(&r);
            let md = fs::symlink_metadata(&p)?;
            let mut h = tar::Header::new_gnu();
            h.set_mtime(0);
            h.set_uid(0);
            h.set_gid(0);
            if md.is_dir() {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, &r, std::io::empty())?;
                walk(b, root, &r)?;
            } else if md.is_file() {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o644);
                h.set_size(md.len());
                b.append_data(&mut h, &r, fs::File::open(&p)?)?;
            }
            // Anything else (symlinks, devices) is not part of an OCI layout.
        }
        Ok(())
    }
    walk(&mut b, src, Path::new(""))
        .and_then(|_| b.into_inner())
        .and_then(|mut w| w.flush())
        .map_err(io_err(format!(
            "archiving the OCI layout {}",
            src.display()
        )))
}

impl VmSandbox {
    /// Check the host, measure, bind, start QEMU and wait until the agent is ready.
    pub fn launch(platform: &Arc<SimPlatform>, cfg: &VmConfig) -> Result<Self, VmError> {
        let parsed =
            ParsedInitData::parse(&cfg.init_data).map_err(|e| VmError::InitData(e.to_string()))?;
        let digest = parsed.digest();
        let hardware = matches!(cfg.tee, TeeChoice::Snp { .. } | TeeChoice::Tdx { .. });
        if hardware {
            qemu::check_host_tee(cfg.tee.name(), &qemu::HostRoots::default())
                .map_err(VmError::Host)?;
        }
        let (accel, accel_reason) = qemu::choose_accel(cfg.accel);
        if hardware && accel != Accel::Kvm {
            return Err(VmError::Host(format!(
                "--tee {} needs KVM, but the accelerator is {accel_reason}",
                cfg.tee.name()
            )));
        }
        let kernel_sha384 = file_sha384_cached(&cfg.kernel, platform.dir()).map_err(io_err(
            format!("reading the kernel {}", cfg.kernel.display()),
        ))?;
        let initrd_sha384 = file_sha384_cached(&cfg.initrd, platform.dir()).map_err(io_err(
            format!("reading the initrd {}", cfg.initrd.display()),
        ))?;
        let cmdline = qemu::kernel_cmdline(cfg.tee.name());
        let m = measure::measurement(
            &kernel_sha384,
            &initrd_sha384,
            &measure::VmLaunchConfig {
                machine: "q35".into(),
                vcpus: cfg.vcpus,
                memory_mib: cfg.memory_mib,
                cmdline: cmdline.clone(),
                tee: cfg.tee.name().into(),
                debug: cfg.debug,
            },
        );
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&cfg.dir)
            .map_err(io_err(format!(
                "creating the sandbox dir {}",
                cfg.dir.display()
            )))?;
        let mut sb = VmSandbox {
            id: cfg.id.clone(),
            dir: cfg.dir.clone(),
            log_path: cfg.log_path.clone(),
            child: None,
            platform: None,
            serial: None,
            proxy: None,
            markers: Arc::default(),
            ready_after: Duration::ZERO,
            hello: None,
            launch: VmLaunchInfo {
                measurement: if cfg.tee == TeeChoice::Sim {
                    m
                } else {
                    [0; 48]
                },
                init_data_digest: digest.clone(),
                kernel_sha384,
                initrd_sha384,
                cmdline: cmdline.clone(),
                accel,
                accel_reason,
                argv: Vec::new(),
            },
        };
        // From here on, `sb` cleans up on error (Drop).
        let init_path = cfg.dir.join("init-data.toml");
        fs::write(
            &init_path,
            cfg.handover_init_data.as_deref().unwrap_or(&cfg.init_data),
        )
        .map_err(io_err(format!("writing {}", init_path.display())))?;
        let oci_disk = match &cfg.oci_layout {
            Some(l) => {
                let d = cfg.dir.join("oci-layout.tar");
                write_layout_tar(l, &d)?;
                Some(d)
            }
            None => None,
        };
        let scratch = match cfg.scratch_bytes {
            Some(bytes) => {
                let file = cfg.dir.join(SCRATCH_FILE);
                make_scratch(&file, bytes)?;
                Some(qemu::ScratchDisk { file, bytes })
            }
            None => None,
        };
        let bench = match cfg.bench_disk_bytes {
            Some(bytes) => {
                let [plain, crypt] = BENCH_FILES.map(|n| cfg.dir.join(n));
                make_sparse(&plain, bytes, "benchmark disk")?;
                make_sparse(&crypt, bytes, "benchmark disk")?;
                Some(qemu::BenchDisks {
                    plain,
                    crypt,
                    bytes,
                })
            }
            None => None,
        };
        let mut guest_channel = None;
        let tee = match &cfg.tee {
            TeeChoice::None => VmTee::None,
            TeeChoice::Sim => {
                let binding: [u8; 64] = digest
                    .binding(BindingField::Sim)
                    .try_into()
                    .map_err(|_| VmError::InitData("sim binding is not 64 bytes".into()))?;
                let (ch, handle) = platform
                    .launch(LaunchRecord {
                        measurement: m,
                        init_data: binding,
                        debug: cfg.debug,
                    })
                    .map_err(|e| VmError::Platform(e.to_string()))?;
                sb.platform = Some(handle);
                let fd = ch.as_raw_fd();
                guest_channel = Some(ch);
                VmTee::Sim { channel_fd: fd }
            }
            TeeChoice::Snp { firmware } => VmTee::Snp {
                firmware: firmware.clone(),
                host_data: digest
                    .binding(BindingField::SnpHostData)
                    .try_into()
                    .map_err(|_| VmError::InitData("HOST_DATA is not 32 bytes".into()))?,
                cbitpos: 51,
                reduced_phys_bits: 1,
            },
            TeeChoice::Tdx { firmware } => VmTee::Tdx {
                firmware: firmware.clone(),
                mrconfigid: digest
                    .binding(BindingField::TdxMrConfigId)
                    .try_into()
                    .map_err(|_| VmError::InitData("MRCONFIGID is not 48 bytes".into()))?,
            },
        };
        let port = free_port()?;
        let qc = QemuConfig {
            accel,
            kernel: cfg.kernel.clone(),
            initrd: cfg.initrd.clone(),
            cmdline,
            vcpus: cfg.vcpus,
            memory_mib: cfg.memory_mib,
            agent_host_port: port,
            forwards: cfg.forwards.clone(),
            init_data_file: init_path,
            oci_disk,
            volume_disks: cfg.volume_disks.clone(),
            scratch,
            bench,
            tee,
            workload: cfg.workload.clone(),
        };
        let argv = qemu::argv(&qc);
        sb.launch.argv = argv.clone();

        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&cfg.log_path)
            .map_err(io_err(format!(
                "opening the console log {}",
                cfg.log_path.display()
            )))?;
        let mut serial_log = log.try_clone().map_err(io_err("console log"))?;
        let mut cmd = Command::new(&cfg.qemu);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        // The sim channel and a joined namespace's tap (-1: none).
        let keep_fds = [
            guest_channel.as_ref().map_or(-1, |c| c.as_raw_fd()),
            cfg.workload.as_ref().and_then(|w| w.tap_fd).unwrap_or(-1),
        ];
        // SAFETY: async-signal-safe syscalls only.
        unsafe {
            cmd.pre_exec(move || {
                // `veil run` blocks SIGTERM/SIGINT for its signal thread;
                // QEMU must not inherit that, or it ignores the SIGTERM of
                // a teardown and is only stopped by SIGKILL after the grace.
                let mut none: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut none);
                libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
                libc::setsid();
                if libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                ) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                // Only stdio, the guest channel and the tap reach QEMU.
                veil_fds::cloexec_all_but_these(&keep_fds)
            });
        }
        let t0 = Instant::now();
        let mut child = cmd.spawn().map_err(|source| VmError::Spawn {
            qemu: cfg.qemu.display().to_string(),
            source,
        })?;
        drop(guest_channel);
        let stdout = child.stdout.take();
        sb.child = Some(child);
        if let Some(mut out) = stdout {
            let markers = sb.markers.clone();
            sb.serial = Some(std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut line = Vec::new();
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let _ = serial_log.write_all(&buf[..n]);
                    let t = t0.elapsed();
                    let Ok(mut m) = markers.lock() else { break };
                    m.first_output.get_or_insert(t);
                    for &b in &buf[..n] {
                        if b != b'\n' {
                            if line.len() < 4096 {
                                line.push(b);
                            }
                            continue;
                        }
                        let l = String::from_utf8_lossy(&line);
                        if let Some(rest) = l.split("PID 1 started at kernel uptime ").nth(1) {
                            m.agent_start.get_or_insert(t);
                            m.kernel_uptime_ms =
                                rest.split(' ').next().and_then(|v| v.parse().ok());
                        } else if l.contains("veil-agent: PID 1") {
                            m.agent_start.get_or_insert(t);
                        } else if l.contains("init-data matches") {
                            m.attest_start.get_or_insert(t);
                        } else if l.contains("attested to the KBS") {
                            m.attested.get_or_insert(t);
                        } else if l.contains("agent ready") {
                            m.listening.get_or_insert(t);
                        }
                        line.clear();
                    }
                }
            }));
        }
        sb.start_proxy(port)?;
        sb.wait_ready(cfg.ready_timeout, t0)?;
        Ok(sb)
    }

    fn start_proxy(&mut self, port: u16) -> Result<(), VmError> {
        let path = self.socket();
        let listener = UnixListener::bind(&path).map_err(io_err(format!(
            "binding the agent socket {}",
            path.display()
        )))?;
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o600));
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let h = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(unix) = conn else { continue };
                std::thread::spawn(move || relay(unix, port));
            }
        });
        self.proxy = Some((stop, h));
        Ok(())
    }

    fn wait_ready(&mut self, timeout: Duration, t0: Instant) -> Result<(), VmError> {
        let socket = self.socket();
        loop {
            if let Some(status) = self.try_wait() {
                // Let the serial thread drain QEMU's last words.
                if let Some(h) = self.serial.take() {
                    let _ = h.join();
                }
                return Err(VmError::Exited {
                    status,
                    log: log_tail(&self.log_path, 25),
                });
            }
            // Until the agent says it listens, try briefly: a connection
            // made before the guest's network is up waits out QEMU's TCP
            // SYN retransmission (1 s, then 3 s…); a fresh one does not.
            let listening = self.markers.lock().is_ok_and(|m| m.listening.is_some());
            let per_try = if listening {
                Duration::from_secs(5)
            } else {
                Duration::from_millis(500)
            };
            if let Ok(c) = AgentClient::connect(&socket, per_try) {
                self.hello = Some(c.hello().clone());
                self.ready_after = t0.elapsed();
                return Ok(());
            }
            if t0.elapsed() > timeout {
                self.kill();
                return Err(VmError::Timeout {
                    seconds: timeout.as_secs(),
                    log: log_tail(&self.log_path, 25),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent's hello.
    pub fn hello(&self) -> Option<&Hello> {
        self.hello.as_ref()
    }

    /// What was measured and bound at launch.
    pub fn launch_info(&self) -> &VmLaunchInfo {
        &self.launch
    }

    /// The host-side agent socket (relayed into the guest).
    pub fn socket(&self) -> PathBuf {
        self.dir.join(AGENT_SOCKET)
    }

    /// The console log.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// QEMU's PID.
    pub fn qemu_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A new connection to the agent.
    pub fn connect(&self) -> Result<AgentClient, crate::CallError> {
        AgentClient::connect(&self.socket(), Duration::from_secs(30))
    }

    /// Boot phases in ms since QEMU was started: `first_console_ms`,
    /// `agent_start_ms` (PID 1 running), `attest_start_ms`, `attested_ms`,
    /// `agent_ready_ms`; and durations `qemu_start_ms` (QEMU and firmware,
    /// until the kernel starts) and `kernel_ms` (kernel until PID 1, from
    /// the guest's uptime).
    pub fn boot_timings(&self) -> BTreeMap<String, u64> {
        let mut t = BTreeMap::new();
        if let Ok(m) = self.markers.lock() {
            for (k, v) in [
                ("first_console_ms", m.first_output),
                ("agent_start_ms", m.agent_start),
                ("attest_start_ms", m.attest_start),
                ("attested_ms", m.attested),
            ] {
                if let Some(v) = v {
                    t.insert(k.to_string(), v.as_millis() as u64);
                }
            }
            if let (Some(start), Some(up)) = (m.agent_start, m.kernel_uptime_ms) {
                // QEMU and firmware until the kernel starts; the kernel until PID 1.
                t.insert(
                    "qemu_start_ms".into(),
                    (start.as_millis() as u64).saturating_sub(up),
                );
                t.insert("kernel_ms".into(), up);
            }
        }
        t.insert("agent_ready_ms".into(), self.ready_after.as_millis() as u64);
        t
    }

    /// Whether QEMU has exited (and how).
    pub fn try_wait(&mut self) -> Option<String> {
        crate::sandbox::exit_status(self.child.as_mut())
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stop QEMU (SIGTERM, SIGKILL after `grace`), join every thread and
    /// remove the sandbox dir.
    pub fn stop(mut self, grace: Duration) -> Result<(), VmError> {
        self.teardown(grace)
    }

    fn teardown(&mut self, grace: Duration) -> Result<(), VmError> {
        if let Some(mut child) = self.child.take() {
            crate::sandbox::terminate(&mut child, grace);
        }
        if let Some(h) = self.serial.take() {
            let _ = h.join();
        }
        if let Some((stop, h)) = self.proxy.take() {
            stop.store(true, Ordering::SeqCst);
            let _ = UnixStream::connect(self.socket());
            let _ = h.join();
        }
        if let Some(h) = self.platform.take() {
            let _ = h.join();
        }
        crate::sandbox::remove_sandbox_dir(&self.dir).map_err(io_err(format!(
            "removing the sandbox dir {}",
            self.dir.display()
        )))
    }
}

impl Drop for VmSandbox {
    fn drop(&mut self) {
        let _ = self.teardown(Duration::from_secs(2));
    }
}

/// Relay one host connection to the agent's forwarded port.
fn relay(unix: UnixStream, port: u16) {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(tcp) = TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return;
    };
    let _ = tcp.set_nodelay(true);
    let (Ok(mut u2), Ok(mut t2)) = (unix.try_clone(), tcp.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let _ = std::io::copy(&mut u2, &mut t2);
        let _ = t2.shutdown(Shutdown::Write);
    });
    let (mut t, mut u) = (tcp, unix);
    let _ = std::io::copy(&mut t, &mut u);
    let _ = u.shutdown(Shutdown::Both);
    let _ = t.shutdown(Shutdown::Both);
    let _ = up.join();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_tar_is_deterministic_and_round_trips_through_the_agent() {
        let d = tempfile::tempdir().unwrap();
        let l = d.path().join("layout");
        fs::create_dir_all(l.join("blobs/sha256")).unwrap();
        fs::write(l.join("oci-layout"), b"{}").unwrap();
        fs::write(l.join("blobs/sha256/ab"), b"blob").unwrap();
        write_layout_tar(&l, &d.path().join("a.tar")).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write_layout_tar(&l, &d.path().join("b.tar")).unwrap();
        let a = fs::read(d.path().join("a.tar")).unwrap();
        assert_eq!(a, fs::read(d.path().join("b.tar")).unwrap());
        let out = d.path().join("out");
        fs::create_dir(&out).unwrap();
        veil_agent_unpack(&a, &out);
        assert_eq!(fs::read(out.join("blobs/sha256/ab")).unwrap(), b"blob");
    }

    #[test]
    fn scratch_is_sparse_new_and_reaped_only_when_its_owner_is_gone() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        for id in ["live", "dead"] {
            let sb = d.path().join(id).join("sandbox");
            fs::create_dir_all(&sb).unwrap();
            make_scratch(&sb.join(SCRATCH_FILE), 1 << 30).unwrap();
        }
        let f = d.path().join("dead/sandbox").join(SCRATCH_FILE);
        let m = fs::metadata(&f).unwrap();
        assert_eq!(m.len(), 1 << 30);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "not sparse: {} blocks",
            m.blocks()
        );
        assert_eq!(m.mode() & 0o777, 0o600);
        // Never over an existing file, never through a symlink.
        assert!(make_scratch(&f, 1 << 30).is_err());
        let link = d.path().join("link");
        std::os::unix::fs::symlink(d.path().join("target"), &link).unwrap();
        assert!(make_scratch(&link, 1 << 30).is_err());
        assert!(!d.path().join("target").exists());
        assert_eq!(reap_scratch(d.path(), |id| id == "live"), ["dead"]);
        assert!(!f.exists());
        assert!(d.path().join("live/sandbox").join(SCRATCH_FILE).exists());
        // A killed `veil bench volume` leaves its two disks: reaped alike.
        let sb = d.path().join("bench/sandbox");
        fs::create_dir_all(&sb).unwrap();
        for n in BENCH_FILES {
            make_sparse(&sb.join(n), 64 << 20, "benchmark disk").unwrap();
        }
        let e = make_sparse(&sb.join(BENCH_FILES[0]), 64 << 20, "benchmark disk")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("creating the benchmark disk"), "{e}");
        assert_eq!(reap_scratch(d.path(), |id| id == "live"), ["bench"]);
        assert!(BENCH_FILES.iter().all(|n| !sb.join(n).exists()));
    }

    fn veil_agent_unpack(bytes: &[u8], out: &Path) {
        // The guest side reads the same format with `tar` (directories and
        // regular files only); mirror it here without linking the agent.
        let mut ar = tar::Archive::new(bytes);
        for e in ar.entries().unwrap() {
            let mut e = e.unwrap();
            let p = out.join(e.path().unwrap());
            match e.header().entry_type() {
                tar::EntryType::Directory => fs::create_dir_all(&p).unwrap(),
                tar::EntryType::Regular => {
                    let mut f = fs::File::create(&p).unwrap();
                    std::io::copy(&mut e, &mut f).unwrap();
                }
                t => panic!("unexpected {t:?}"),
            }
        }
    }
}
