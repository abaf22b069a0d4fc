//! The process sandbox: `veil-agent` in its own namespaces, with the sim
//! platform channel and the agent socket.
//!
//! Isolation (see `docs/run.md`):
//! - as root: new mount (private propagation), UTS, IPC and PID namespaces.
//!   The agent becomes PID 1 of its PID namespace (it forks itself right
//!   after start), so when it dies the kernel kills every container process;
//!   its tmpfs (unpacked images, secrets) exists only in its mount
//!   namespace and disappears with it.
//! - not root: the same plus a user namespace mapping the caller to root
//!   (containers can then only run as that one user).
//! - the network namespace is shared: the agent reaches the KBS on the
//!   host's loopback. Containers get their own network namespace.
//!
//! The agent stub gets `PR_SET_PDEATHSIG(SIGKILL)`: if the process that
//! launched it dies, so does the sandbox. Launch from a thread that lives as
//! long as the sandbox (the main thread), since the death signal follows
//! the launching thread.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use veil_agent_api::proto::Hello;
use veil_policy::{BindingField, InitDataDigest, ParsedInitData};

use crate::client::AgentClient;
use crate::measure::{LaunchConfig, file_sha384_cached, measurement};
use crate::sim::{LaunchRecord, SimPlatform};

/// The fd number the agent finds the sim platform channel at.
pub const PLATFORM_FD: i32 = 3;
/// Agent socket file name inside the sandbox dir.
pub const AGENT_SOCKET: &str = "agent.sock";

/// Sandbox errors.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("init-data: {0}")]
    InitData(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the agent exited before it was ready ({status}):\n{log}")]
    AgentExited { status: String, log: String },
    #[error("the agent was not ready within {seconds} s:\n{log}")]
    Timeout { seconds: u64, log: String },
    #[error("sim platform: {0}")]
    Platform(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let context = context.into();
    move |source| SandboxError::Io { context, source }
}

/// How to launch one sandbox.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Sandbox id (`[a-z0-9]`, used in paths).
    pub id: String,
    /// The `veil-agent` binary.
    pub agent_binary: PathBuf,
    /// The sandbox's runtime dir; created by launch, removed on teardown.
    pub dir: PathBuf,
    /// Where the agent's log goes (outside `dir`, kept after teardown).
    pub log_path: PathBuf,
    /// The init-data whose digest the platform records at launch.
    pub init_data: Vec<u8>,
    /// What the host hands the agent, when it differs from `init_data` (a
    /// host that swaps init-data after launch; tests model that host).
    pub handover_init_data: Option<Vec<u8>>,
    /// An OCI image layout exposed read-only to the agent.
    pub oci_layout: Option<PathBuf>,
    /// Launch with debugging enabled (recorded in the evidence).
    pub debug: bool,
    /// `RUST_LOG`-style filter for the agent's log.
    pub log_filter: String,
    /// How long to wait for the agent to be ready (attestation included).
    pub ready_timeout: Duration,
    /// The pod's network namespace (see [`crate::net`]); without it the
    /// agent makes one with loopback only.
    pub pod_netns: Option<PathBuf>,
}

/// What `launch` measured and recorded.
#[derive(Debug, Clone)]
pub struct LaunchInfo {
    pub measurement: [u8; 48],
    pub init_data_digest: InitDataDigest,
    pub namespaces: Vec<&'static str>,
    pub agent_sha384: [u8; 48],
}

/// A running process sandbox. Dropping it tears it down.
#[derive(Debug)]
pub struct ProcessSandbox {
    id: String,
    dir: PathBuf,
    log_path: PathBuf,
    child: Option<Child>,
    platform: Option<JoinHandle<()>>,
    hello: Hello,
    launch: LaunchInfo,
}

/// Last `n` lines of a log file.
pub fn log_tail(path: &Path, n: usize) -> String {
    let mut s = String::new();
    if let Ok(mut f) = fs::File::open(path) {
        let mut buf = Vec::new();
        let _ = f.by_ref().take(4 << 20).read_to_end(&mut buf);
        s = String::from_utf8_lossy(&buf).into_owned();
    }
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn namespaces(root: bool) -> Vec<&'static str> {
    let mut v = vec!["mnt", "uts", "ipc", "pid"];
    if !root {
        v.insert(0, "user");
    }
    v
}

impl ProcessSandbox {
    /// Measure, record, start the agent and wait until it is ready.
    pub fn launch(platform: &Arc<SimPlatform>, cfg: &SandboxConfig) -> Result<Self, SandboxError> {
        let parsed = ParsedInitData::parse(&cfg.init_data)
            .map_err(|e| SandboxError::InitData(e.to_string()))?;
        let digest = parsed.digest();
        let root = nix::unistd::geteuid().is_root();
        let ns = namespaces(root);
        let agent_sha384 =
            file_sha384_cached(&cfg.agent_binary, platform.dir()).map_err(io_err(format!(
                "reading the agent binary {}",
                cfg.agent_binary.display()
            )))?;
        let m = measurement(
            &agent_sha384,
            &LaunchConfig {
                sandbox: "process",
                tee: "sim",
                namespaces: ns.clone(),
                debug: cfg.debug,
            },
        );
        let binding: [u8; 64] = digest
            .binding(BindingField::Sim)
            .try_into()
            .map_err(|_| SandboxError::InitData("sim binding is not 64 bytes".into()))?;
        let record = LaunchRecord {
            measurement: m,
            init_data: binding,
            debug: cfg.debug,
        };

        fs::DirBuilder::new()
            .mode(0o700)
            .create(&cfg.dir)
            .map_err(io_err(format!(
                "creating the sandbox dir {}",
                cfg.dir.display()
            )))?;
        let mut sb = ProcessSandbox {
            id: cfg.id.clone(),
            dir: cfg.dir.clone(),
            log_path: cfg.log_path.clone(),
            child: None,
            platform: None,
            hello: Hello {
                agent_version: String::new(),
                api_version: 0,
                tee: String::new(),
                init_data_digest: String::new(),
                measurement: String::new(),
                attestation: veil_agent_api::proto::AttestationStatus {
                    status: String::new(),
                    kbs_url: String::new(),
                    token_exp: 0,
                    ear_status: String::new(),
                    secrets: Vec::new(),
                    error: String::new(),
                },
            },
            launch: LaunchInfo {
                measurement: m,
                init_data_digest: digest,
                namespaces: ns,
                agent_sha384,
            },
        };
        // From here on, `sb` cleans up on error (Drop).
        let handover = cfg.handover_init_data.as_deref().unwrap_or(&cfg.init_data);
        let init_path = cfg.dir.join("init-data.toml");
        fs::write(&init_path, handover)
            .map_err(io_err(format!("writing {}", init_path.display())))?;
        let guest = cfg.dir.join("guest");
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&guest)
            .map_err(io_err("creating the guest dir"))?;
        let socket = cfg.dir.join(AGENT_SOCKET);

        let (channel, handle) = platform
            .launch(record)
            .map_err(|e| SandboxError::Platform(e.to_string()))?;
        sb.platform = Some(handle);
        let channel: OwnedFd = channel.into();

        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&cfg.log_path)
            .map_err(io_err(format!(
                "opening the agent log {}",
                cfg.log_path.display()
            )))?;
        let log2 = log.try_clone().map_err(io_err("agent log"))?;

        let mut cmd = Command::new(&cfg.agent_binary);
        cmd.arg("serve")
            .arg("--init-data")
            .arg(&init_path)
            .arg("--tee")
            .arg("sim")
            .arg("--platform-fd")
            .arg(PLATFORM_FD.to_string())
            .arg("--listen")
            .arg(&socket)
            .arg("--guest-root")
            .arg(&guest)
            .arg("--sandbox-id")
            .arg(&cfg.id)
            .arg("--pid-namespace");
        if let Some(l) = &cfg.oci_layout {
            cmd.arg("--oci-layout").arg(l);
        }
        if let Some(n) = &cfg.pod_netns {
            cmd.arg("--pod-netns").arg(n);
        }
        cmd.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("RUST_LOG", &cfg.log_filter)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2));
        let pre = PreExec::new(root, channel.as_raw_fd())?;
        // SAFETY: the closure only makes async-signal-safe system calls on
        // data prepared before the fork (no allocation, no locks).
        unsafe {
            cmd.pre_exec(move || pre.run());
        }
        let child = cmd
            .spawn()
            .map_err(io_err(format!("starting {}", cfg.agent_binary.display())))?;
        drop(channel);
        sb.child = Some(child);
        sb.wait_ready(&socket, cfg.ready_timeout)?;
        Ok(sb)
    }

    fn wait_ready(&mut self, socket: &Path, timeout: Duration) -> Result<(), SandboxError> {
        let start = Instant::now();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(SandboxError::AgentExited {
                        status: describe(status),
                        log: log_tail(&self.log_path, 20),
                    });
                }
            }
            if socket.exists() {
                if let Ok(c) = AgentClient::connect(socket, Duration::from_secs(5)) {
                    self.hello = c.hello().clone();
                    return Ok(());
                }
            }
            if start.elapsed() > timeout {
                return Err(SandboxError::Timeout {
                    seconds: timeout.as_secs(),
                    log: log_tail(&self.log_path, 20),
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent's hello (TEE, digests, attestation status).
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// What was measured and recorded at launch.
    pub fn launch_info(&self) -> &LaunchInfo {
        &self.launch
    }

    /// The agent socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join(AGENT_SOCKET)
    }

    /// The agent's log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Host PID of the agent (stub) process.
    pub fn agent_pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// A new connection to the agent.
    pub fn connect(&self) -> Result<AgentClient, crate::CallError> {
        AgentClient::connect(&self.socket(), Duration::from_secs(30))
    }

    /// Whether the agent has exited (and how).
    pub fn try_wait(&mut self) -> Option<String> {
        exit_status(self.child.as_mut())
    }

    /// Stop the agent (SIGTERM, then SIGKILL after `grace`), wait for it and
    /// remove the sandbox dir.
    pub fn stop(mut self, grace: Duration) -> Result<(), SandboxError> {
        self.teardown(grace)
    }

    fn teardown(&mut self, grace: Duration) -> Result<(), SandboxError> {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, grace);
        }
        if let Some(h) = self.platform.take() {
            let _ = h.join();
        }
        remove_sandbox_dir(&self.dir).map_err(io_err(format!(
            "removing the sandbox dir {}",
            self.dir.display()
        )))
    }
}

impl Drop for ProcessSandbox {
    fn drop(&mut self) {
        let _ = self.teardown(Duration::from_secs(5));
    }
}

/// SIGTERM `child`, give it `grace` to exit, then SIGKILL; reap it.
/// Shared by the process and the VM sandbox.
pub(crate) fn terminate(child: &mut std::process::Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(None)) {
        let pid = Pid::from_raw(child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let start = Instant::now();
        while matches!(child.try_wait(), Ok(None)) && start.elapsed() < grace {
            std::thread::sleep(Duration::from_millis(10));
        }
        if matches!(child.try_wait(), Ok(None)) {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    let _ = child.wait();
}

/// Remove a sandbox dir; one that is already gone is fine.
pub(crate) fn remove_sandbox_dir(dir: &Path) -> std::io::Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

/// How a sandbox's child (the agent, or QEMU) ended; `None` while it runs.
pub(crate) fn exit_status(child: Option<&mut std::process::Child>) -> Option<String> {
    match child {
        None => Some("not running".into()),
        Some(c) => match c.try_wait() {
            Ok(Some(s)) => Some(describe(s)),
            _ => None,
        },
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => "unknown status".into(),
    }
}

/// Everything the child does between fork and exec, prepared in advance.
struct PreExec {
    root: bool,
    platform_fd: i32,
    uid_map: CString,
    gid_map: CString,
    deny: CString,
}

impl PreExec {
    fn new(root: bool, platform_fd: i32) -> Result<Self, SandboxError> {
        let uid = nix::unistd::geteuid().as_raw();
        let gid = nix::unistd::getegid().as_raw();
        let c =
            |s: String| CString::new(s).map_err(|_| SandboxError::Platform("NUL in map".into()));
        Ok(PreExec {
            root,
            platform_fd,
            uid_map: c(format!("0 {uid} 1"))?,
            gid_map: c(format!("0 {gid} 1"))?,
            deny: c("deny".into())?,
        })
    }

    fn write_file(path: &[u8], data: &CString) -> std::io::Result<()> {
        // SAFETY: `path` is NUL-terminated; plain syscalls.
        unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            let b = data.as_bytes();
            let n = libc::write(fd, b.as_ptr().cast(), b.len());
            libc::close(fd);
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn run(&self) -> std::io::Result<()> {
        let check = |r: libc::c_int| {
            if r < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: async-signal-safe syscalls only.
        unsafe {
            // The agent creates container root filesystems: their modes come
            // from the image, not from the private umask of `veil run`.
            libc::umask(0o022);
            check(libc::setsid())?;
            check(libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ))?;
            if !self.root {
                check(libc::unshare(libc::CLONE_NEWUSER))?;
                Self::write_file(b"/proc/self/setgroups\0", &self.deny)?;
                Self::write_file(b"/proc/self/uid_map\0", &self.uid_map)?;
                Self::write_file(b"/proc/self/gid_map\0", &self.gid_map)?;
            }
            check(libc::unshare(
                libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC,
            ))?;
            check(libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            if self.platform_fd == PLATFORM_FD {
                // dup2 onto itself keeps FD_CLOEXEC: clear it instead.
                check(libc::fcntl(PLATFORM_FD, libc::F_SETFD, 0))?;
            } else {
                check(libc::dup2(self.platform_fd, PLATFORM_FD))?;
            }
        }
        // Nothing the caller of `veil run` held crosses into the sandbox:
        // only stdio and the platform channel.
        veil_fds::cloexec_all_but(Some(PLATFORM_FD))
    }
}
