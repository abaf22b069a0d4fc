//! Containers: the images pulled, the processes started, their output.
//!
//! The manager only ever acts on requests the policy allowed (see
//! [`crate::server`]); here each request is carried out. Processes are
//! started through the launcher ([`crate::init`]), a re-exec of the agent
//! binary, so that namespace setup happens in a fresh single-threaded
//! process.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use veil_agent_api::{
    CopyFileRequest, CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest, FileType,
    Process,
};

use crate::guest::GuestPaths;
use crate::init::{CapSets, InitSpec, MountSpec, STATUS_FD};
use crate::kbs::Kbs;
use crate::pull::Source;
use crate::streams::Stream;
use veil_agent_api::proto::{CreateContainerResult, StartContainerResult, StatsContainerResult};

/// A running (or exited) process.
pub struct Proc {
    /// The launcher's PID in the agent's namespace.
    pub launcher: u32,
    pub stdout: Stream,
    pub stderr: Stream,
    /// Where `write_stdin` goes: the stdin pipe, or the terminal's master;
    /// `None` once closed (or when stdin was not asked for).
    stdin: Mutex<Option<Box<dyn Write + Send>>>,
    /// The terminal's master, when the process runs on one.
    tty: Option<fs::File>,
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc")
            .field("launcher", &self.launcher)
            .field("terminal", &self.tty.is_some())
            .finish_non_exhaustive()
    }
}

impl Proc {
    /// The exit code, once exited.
    pub fn exit_code(&self) -> Option<i32> {
        self.stdout.exit_code()
    }
}

/// One container.
#[derive(Debug)]
pub struct Container {
    pub id: String,
    pub name: String,
    pub image_digest: String,
    dir: PathBuf,
    spec: InitSpec,
    /// The init process keeps stdin open (`process.stdin`).
    stdin: bool,
    init: Mutex<Option<Arc<Proc>>>,
    execs: Mutex<BTreeMap<String, Arc<Proc>>>,
    /// Its own cgroup (VM sandbox), which every process of it joins.
    cgroup: Option<crate::cgroup::ContainerCgroup>,
}

/// What the manager needs from the rest of the agent.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub paths: GuestPaths,
    /// The agent binary (re-executed as the launcher).
    pub agent_exe: PathBuf,
    /// The read-only OCI layout images are pulled from; without one, they
    /// are pulled from their registries.
    pub oci_layout: Option<PathBuf>,
    /// How registries are reached when there is no layout.
    pub registry: crate::registry::RegistryAccess,
    /// Install the default seccomp profile.
    pub seccomp: bool,
    /// The image signature trust policy init-data names, if any.
    pub image_trust: Option<crate::kbs::ImageTrust>,
    /// Bounds on unpacking each image (from the policy).
    pub unpack_limits: veil_image::unpack::UnpackLimits,
    /// The pod's network namespace, joined by every container.
    pub pod_netns: Option<PathBuf>,
    /// The pod's `eth0` waits for its configuration from `create_sandbox`
    /// (a VM NIC joined to a namespace the host was handed).
    pub nic_awaits_config: bool,
    /// The pod's volumes as the policy declares them.
    pub volumes: Vec<veil_policy::model::VolumePolicy>,
    /// The cgroup2 tree containers get their cgroups in (VM sandbox); `None`
    /// where the host owns the cgroups (process sandbox): no limits, usage
    /// from `/proc`.
    pub cgroups: Option<crate::cgroup::Cgroups>,
    /// The pod's GPUs, when its policy has containers that need some.
    pub gpus: Option<crate::gpu::PodGpus>,
}

/// All containers of the sandbox.
#[derive(Debug)]
pub struct Manager {
    cfg: ManagerConfig,
    kbs: Option<Arc<Kbs>>,
    sandbox: Mutex<Option<(String, String)>>,
    containers: Mutex<BTreeMap<String, Arc<Container>>>,
}

/// The checked configuration of a joined pod NIC, when this guest has
/// one; a refusal when the request and the NIC do not go together.
fn joined_nic_config(
    nic: Option<&veil_agent_api::nic::WorkloadNic>,
    awaits_config: bool,
) -> Result<Option<veil_agent_api::nic::NicConfig>, String> {
    match (nic, awaits_config) {
        (Some(n), true) => n.check().map(Some).map_err(|e| {
            format!(
                "create_sandbox: workload_nic: {e}; refusing to configure the pod's NIC \
                 (the host reads these from the network namespace the pod joins: check \
                 that namespace's interface)"
            )
        }),
        (Some(_), false) => Err(
            "create_sandbox: workload_nic is given, but this sandbox's pod NIC is not joined \
             to a network namespace (a VM started with --network user or none, or a process \
             sandbox): nothing to configure; send create_sandbox without workload_nic"
                .into(),
        ),
        (None, true) => Err(
            "create_sandbox: workload_nic is missing: the pod's NIC is joined to a network \
             namespace the host was handed, and its MAC, addresses and routes come with \
             create_sandbox; without them the pod has no network"
                .into(),
        ),
        (None, false) => Ok(None),
    }
}

fn err(context: &str, e: impl std::fmt::Display) -> String {
    format!("{context}: {e}")
}

fn caps(p: &Process) -> CapSets {
    let c = &p.capabilities;
    CapSets {
        bounding: c.bounding.clone(),
        effective: c.effective.clone(),
        inheritable: c.inheritable.clone(),
        permitted: c.permitted.clone(),
        ambient: c.ambient.clone(),
    }
}

impl Manager {
    /// A manager with no containers.
    pub fn new(cfg: ManagerConfig, kbs: Option<Arc<Kbs>>) -> Self {
        Manager {
            cfg,
            kbs,
            sandbox: Mutex::new(None),
            containers: Mutex::new(BTreeMap::new()),
        }
    }

    fn container(&self, id: &str) -> Result<Arc<Container>, String> {
        self.containers
            .lock()
            .map_err(|_| "container table lock poisoned".to_string())?
            .get(id)
            .cloned()
            .ok_or_else(|| format!("no container {id:?}"))
    }

    /// Create the sandbox's hostname, hosts and resolv.conf.
    pub fn create_sandbox(&self, r: &CreateSandboxRequest) -> Result<(), String> {
        let nic = joined_nic_config(r.workload_nic.as_ref(), self.cfg.nic_awaits_config)?;
        let dir = self.cfg.paths.sandbox(&r.sandbox_id);
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| err("creating the sandbox dir", e))?;
        fs::write(dir.join("hostname"), format!("{}\n", r.hostname))
            .map_err(|e| err("writing hostname", e))?;
        fs::write(
            dir.join("hosts"),
            format!(
                "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{}\n",
                r.hostname
            ),
        )
        .map_err(|e| err("writing hosts", e))?;
        let resolv: String = r.dns.iter().map(|d| format!("nameserver {d}\n")).collect();
        fs::write(dir.join("resolv.conf"), resolv).map_err(|e| err("writing resolv.conf", e))?;
        crate::volumes::check_content(&self.cfg.volumes, &r.volumes)?;
        crate::volumes::write_content(
            &self.cfg.volumes,
            &r.volumes,
            &dir.join(crate::volumes::VOLUMES_DIR),
        )?;
        if let (Some(c), Some(ns)) = (&nic, &self.cfg.pod_netns) {
            crate::net::configure_joined_nic(ns, c)
                .map_err(|e| err("configuring the pod's NIC (workload_nic)", e))?;
        }
        if let Ok(mut s) = self.sandbox.lock() {
            *s = Some((r.sandbox_id.clone(), r.hostname.clone()));
        }
        Ok(())
    }

    fn mounts(
        &self,
        r: &CreateContainerRequest,
        gpu_nodes: &[String],
    ) -> Result<Vec<MountSpec>, String> {
        let mut out = Vec::new();
        for m in &r.mounts {
            let source = if m.fs_type == "bind" {
                let p = self.cfg.paths.resolve(&m.source).ok_or_else(|| {
                    format!("bind mount source {:?} is not under /run/veil", m.source)
                })?;
                if let Some(name) = self.volume_name(&m.source) {
                    crate::volumes::prepare_mount(&self.cfg.volumes, &name, &p, &m.options)?;
                }
                p.to_string_lossy().into_owned()
            } else {
                m.source.clone()
            };
            out.push(MountSpec {
                destination: m.destination.clone(),
                fs_type: m.fs_type.clone(),
                source,
                options: m.options.clone(),
            });
        }
        let has = |d: &str| out.iter().any(|m| m.destination == d);
        let mut base = Vec::new();
        if !has("/proc") {
            base.push(MountSpec {
                destination: "/proc".into(),
                fs_type: "proc".into(),
                source: "proc".into(),
                options: vec!["nosuid".into(), "noexec".into(), "nodev".into()],
            });
        }
        if !has("/dev") {
            base.push(MountSpec {
                destination: "/dev".into(),
                fs_type: "tmpfs".into(),
                source: "tmpfs".into(),
                options: vec!["nosuid".into(), "mode=755".into(), "size=65536k".into()],
            });
        }
        base.extend(out);
        // Agent-provided: the secrets tmpfs (read-only) and the local API socket.
        let secrets = self.cfg.paths.secrets();
        if secrets.is_dir() {
            base.push(MountSpec {
                destination: "/run/veil/secrets".into(),
                fs_type: "bind".into(),
                source: secrets.to_string_lossy().into_owned(),
                options: vec![
                    "ro".into(),
                    "nosuid".into(),
                    "nodev".into(),
                    "noexec".into(),
                ],
            });
        }
        let api = self.cfg.paths.api_socket();
        if api.exists() {
            base.push(MountSpec {
                destination: "/run/veil/api.sock".into(),
                fs_type: "bind".into(),
                source: api.to_string_lossy().into_owned(),
                options: vec![],
            });
        }
        // The GPUs the KBS accepted, for a container that needs them
        // (crate::gpu): the guest's device nodes, bound in.
        for node in gpu_nodes {
            base.push(MountSpec {
                destination: node.clone(),
                fs_type: "bind".into(),
                source: node.clone(),
                options: vec!["nosuid".into(), "noexec".into()],
            });
        }
        // Order mounts so that parents come before children.
        base.sort_by_key(|m| m.destination.matches('/').count());
        Ok(base)
    }

    /// The pod volume `source` names (`/run/veil/sandbox/<this sandbox>/volumes/<name>`).
    fn volume_name(&self, source: &str) -> Option<String> {
        let (sid, _) = self.sandbox.lock().ok().and_then(|s| s.clone())?;
        source
            .strip_prefix(&format!("/run/veil/sandbox/{sid}/volumes/"))
            .filter(|n| !n.is_empty() && !n.contains('/') && *n != "." && *n != "..")
            .map(str::to_string)
    }

    /// Pull and unpack the image; prepare (but do not start) the container.
    pub fn create_container(
        &self,
        r: &CreateContainerRequest,
    ) -> Result<CreateContainerResult, String> {
        let dir = self.cfg.paths.container(&r.container_id);
        if dir.exists() {
            return Err(format!("container {} already exists", r.container_id));
        }
        // Before pulling anything: a container that needs GPUs waits for
        // the KBS to have accepted them.
        let gpu_nodes = match &self.cfg.gpus {
            Some(g) => g.nodes_for(&r.name)?,
            None => Vec::new(),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| err("creating the container dir", e))?;
        let rootfs = dir.join("rootfs");
        let pull = |source| {
            crate::pull::pull(
                source,
                &r.image,
                &rootfs,
                self.kbs.as_ref(),
                self.cfg.image_trust.as_ref(),
                &self.cfg.unpack_limits,
            )
        };
        let pulled = match &self.cfg.oci_layout {
            Some(layout) => pull(Source::Layout(layout)),
            // Its own thread: it enters the pod's network namespace to
            // connect, and a failure to come back ends it, not the agent's
            // request thread.
            None => std::thread::scope(|s| {
                s.spawn(|| pull(Source::Registry(&self.cfg.registry)))
                    .join()
                    .unwrap_or_else(|_| Err("the registry pull thread panicked".into()))
            }),
        };
        let stats = match pulled {
            Ok(s) => s,
            Err(e) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let limits = r.resources.as_deref().cloned().unwrap_or_default();
        let mut warnings = Vec::new();
        let cgroup = match &self.cfg.cgroups {
            Some(cgs) => match cgs.create(&r.container_id, &limits) {
                Ok(cg) => Some(cg),
                Err(e) => {
                    let _ = fs::remove_dir_all(&dir);
                    return Err(e);
                }
            },
            None => {
                if !limits.is_empty() {
                    let w = crate::cgroup::not_enforced_warning(&r.container_id, &limits);
                    tracing::warn!("{w}");
                    warnings.push(w);
                }
                None
            }
        };
        // The rootfs must be traversable by the container user.
        let _ = fs::set_permissions(&dir, fs::Permissions::from_mode(0o711));
        let hostname = self
            .sandbox
            .lock()
            .ok()
            .and_then(|s| s.as_ref().map(|(_, h)| h.clone()))
            .unwrap_or_default();
        let spec = InitSpec {
            rootfs,
            exec_into: None,
            args: r.process.args.clone(),
            env: r.process.env.clone(),
            cwd: r.process.cwd.clone(),
            uid: r.process.user.uid,
            gid: r.process.user.gid,
            additional_gids: r.process.user.additional_gids.clone(),
            capabilities: caps(&r.process),
            no_new_privileges: r.process.no_new_privileges,
            read_only_rootfs: r.read_only_rootfs,
            hostname,
            mounts: self.mounts(r, &gpu_nodes)?,
            sysctls: r.sysctls.clone(),
            seccomp: self.cfg.seccomp,
            netns: self.cfg.pod_netns.clone(),
            terminal: r.process.terminal,
            console_size: r.process.console_size.map(|s| (s.rows, s.cols)),
        };
        let c = Arc::new(Container {
            id: r.container_id.clone(),
            name: r.name.clone(),
            image_digest: stats.digest.clone(),
            dir,
            spec,
            stdin: r.process.stdin,
            init: Mutex::new(None),
            execs: Mutex::new(BTreeMap::new()),
            cgroup,
        });
        self.containers
            .lock()
            .map_err(|_| "container table lock poisoned".to_string())?
            .insert(r.container_id.clone(), c);
        Ok(CreateContainerResult {
            image_digest: stats.digest,
            layers: stats.layers,
            encrypted_layers: stats.encrypted_layers,
            pull_ms: stats.ms,
            pulled_from: stats.source,
            warnings,
        })
    }

    /// Start a created container's init process.
    pub fn start_container(&self, id: &str) -> Result<StartContainerResult, String> {
        let start = Instant::now();
        let c = self.container(id)?;
        let mut init = c.init.lock().map_err(|_| "lock poisoned".to_string())?;
        if init.is_some() {
            return Err(format!("container {id} was already started"));
        }
        let p = self.launch(
            &c.dir.join("spec.json"),
            &c.spec,
            c.stdin,
            c.cgroup.as_ref(),
        )?;
        let pid = p.launcher;
        *init = Some(Arc::new(p));
        Ok(StartContainerResult {
            pid,
            start_ms: start.elapsed().as_millis() as u64,
        })
    }

    /// Run an additional process in a running container.
    pub fn exec(&self, r: &ExecProcessRequest) -> Result<(), String> {
        let c = self.container(&r.container_id)?;
        let launcher = match c
            .init
            .lock()
            .map_err(|_| "lock poisoned".to_string())?
            .as_ref()
        {
            Some(p) if p.exit_code().is_none() => p.launcher,
            Some(_) => return Err(format!("container {} has exited", r.container_id)),
            None => return Err(format!("container {} has not been started", r.container_id)),
        };
        let mut spec = c.spec.clone();
        spec.exec_into = Some(launcher);
        spec.args = r.process.args.clone();
        spec.env = r.process.env.clone();
        spec.cwd = r.process.cwd.clone();
        spec.uid = r.process.user.uid;
        spec.gid = r.process.user.gid;
        spec.additional_gids = r.process.user.additional_gids.clone();
        spec.capabilities = caps(&r.process);
        spec.no_new_privileges = r.process.no_new_privileges;
        spec.terminal = r.process.terminal;
        spec.console_size = r.process.console_size.map(|s| (s.rows, s.cols));
        let mut execs = c.execs.lock().map_err(|_| "lock poisoned".to_string())?;
        if execs.contains_key(&r.exec_id) {
            return Err(format!("exec {} already exists", r.exec_id));
        }
        let p = self.launch(
            &c.dir.join(format!("exec-{}.json", r.exec_id)),
            &spec,
            r.process.stdin,
            c.cgroup.as_ref(),
        )?;
        execs.insert(r.exec_id.clone(), Arc::new(p));
        Ok(())
    }

    /// The process `exec_id` (empty: the init process) of a container.
    pub fn process(&self, container: &str, exec_id: &str) -> Result<Arc<Proc>, String> {
        let c = self.container(container)?;
        if exec_id.is_empty() {
            c.init
                .lock()
                .map_err(|_| "lock poisoned".to_string())?
                .clone()
                .ok_or_else(|| format!("container {container} has not been started"))
        } else {
            c.execs
                .lock()
                .map_err(|_| "lock poisoned".to_string())?
                .get(exec_id)
                .cloned()
                .ok_or_else(|| format!("no exec {exec_id:?} in container {container}"))
        }
    }

    /// Signal a process (its workload, not the launcher).
    pub fn signal(&self, container: &str, exec_id: &str, signal: u32) -> Result<(), String> {
        let p = self.process(container, exec_id)?;
        if p.exit_code().is_some() {
            return Ok(());
        }
        let sig =
            nix::sys::signal::Signal::try_from(signal as i32).map_err(|e| err("signal", e))?;
        let target = workload_pid(p.launcher).unwrap_or(p.launcher);
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(target as i32), sig)
            .map_err(|e| err("kill", e))
    }

    /// Write to a process's stdin; empty data closes it (on a terminal,
    /// the host's end of input is just the end of what it forwards: the
    /// user types ^D, as on any terminal).
    pub fn write_stdin(&self, container: &str, exec_id: &str, data: &[u8]) -> Result<(), String> {
        let p = self.process(container, exec_id)?;
        let mut g = p.stdin.lock().map_err(|_| "lock poisoned".to_string())?;
        if data.is_empty() {
            *g = None;
            return Ok(());
        }
        match g.as_mut() {
            Some(s) => s.write_all(data).map_err(|e| err("writing stdin", e)),
            None => Err(
                "stdin is closed (or was not kept open: the process was started without stdin)"
                    .into(),
            ),
        }
    }

    /// Set the window size of a process's terminal.
    pub fn resize_terminal(
        &self,
        container: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), String> {
        let p = self.process(container, exec_id)?;
        let tty = p.tty.as_ref().ok_or_else(|| {
            format!("resize_terminal: the process {container}/{exec_id} has no terminal")
        })?;
        crate::tty::set_window_size(tty, rows, cols)
    }

    /// State of a container.
    pub fn stats(&self, id: &str) -> Result<StatsContainerResult, String> {
        let c = self.container(id)?;
        let init = c
            .init
            .lock()
            .map_err(|_| "lock poisoned".to_string())?
            .clone();
        let (state, exit_code, pid) = match &init {
            None => ("created", None, 0),
            Some(p) => match p.exit_code() {
                Some(code) => ("exited", Some(code), p.launcher),
                None => ("running", None, p.launcher),
            },
        };
        let execs = c
            .execs
            .lock()
            .map_err(|_| "lock poisoned".to_string())?
            .iter()
            .filter(|(_, p)| p.exit_code().is_none())
            .map(|(k, _)| k.clone())
            .collect();
        let resources = match (&c.cgroup, state) {
            (_, "created") => None,
            (Some(cg), _) => Some(cg.usage()?),
            (None, "running") => Some(crate::cgroup::proc_usage(pid)),
            // The processes are gone, and /proc with them.
            (None, _) => None,
        };
        Ok(StatsContainerResult {
            state: state.into(),
            exit_code,
            pid,
            name: c.name.clone(),
            image_digest: c.image_digest.clone(),
            execs,
            resources,
        })
    }

    /// Kill (if running) and remove a container and its rootfs.
    pub fn remove(&self, id: &str, timeout: Duration) -> Result<(), String> {
        let c = self.container(id)?;
        let procs: Vec<Arc<Proc>> = {
            let mut v: Vec<Arc<Proc>> = c
                .execs
                .lock()
                .map_err(|_| "lock poisoned".to_string())?
                .values()
                .cloned()
                .collect();
            if let Some(p) = c
                .init
                .lock()
                .map_err(|_| "lock poisoned".to_string())?
                .clone()
            {
                v.push(p);
            }
            v
        };
        for p in &procs {
            if p.exit_code().is_none() {
                let target = workload_pid(p.launcher).unwrap_or(p.launcher);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(target as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let deadline = Instant::now() + timeout.max(Duration::from_secs(1));
        for p in &procs {
            while p.exit_code().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if p.exit_code().is_none() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(p.launcher as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        if let Some(cg) = &c.cgroup {
            cg.remove();
        }
        fs::remove_dir_all(&c.dir).map_err(|e| err("removing the container's files", e))?;
        self.containers
            .lock()
            .map_err(|_| "lock poisoned".to_string())?
            .remove(id);
        Ok(())
    }

    /// Kill everything (agent shutdown).
    pub fn kill_all(&self) {
        let ids: Vec<String> = self
            .containers
            .lock()
            .map(|c| c.keys().cloned().collect())
            .unwrap_or_default();
        for id in ids {
            let _ = self.remove(&id, Duration::from_secs(2));
        }
    }

    /// Replace a secret (`/run/veil/secrets/NAME`) or a config value (`/run/veil/config/NAME`).
    pub fn update_config(&self, r: &veil_agent_api::UpdateConfigRequest) -> Result<(), String> {
        let dir = match r.kind {
            veil_agent_api::ConfigKind::Secret => self.cfg.paths.secrets(),
            veil_agent_api::ConfigKind::Config => self.cfg.paths.root().join("config"),
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&dir)
            .map_err(|e| err("creating the dir", e))?;
        write_private(&dir.join(&r.name), &r.data.0)
    }

    /// Copy a file into the guest (only under /run/veil).
    pub fn copy_file(&self, r: &CopyFileRequest) -> Result<(), String> {
        let path = self
            .cfg
            .paths
            .resolve(&r.path)
            .ok_or_else(|| format!("copy_file: {:?} is not under /run/veil", r.path))?;
        // Pod volumes are the policy's (content) and the containers'
        // (emptyDir): never the host's to write, whatever the policy's
        // copy_file patterns say.
        let under_volumes = r
            .path
            .strip_prefix("/run/veil/sandbox/")
            .is_some_and(|rest| rest.split('/').nth(1) == Some(crate::volumes::VOLUMES_DIR));
        if under_volumes {
            return Err(format!(
                "copy_file: {:?} is inside a pod volume; the host may not write pod volumes (content volumes are handed in with create_sandbox and checked against the policy's digests)",
                r.path
            ));
        }
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| err("creating parent dirs", e))?;
        }
        match r.file_type {
            FileType::Directory => {
                fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o755)
                    .create(&path)
                    .map_err(|e| err("creating the directory", e))?;
            }
            FileType::Symlink => {
                let target = r
                    .symlink_target
                    .as_deref()
                    .ok_or("symlink without a target")?;
                let _ = fs::remove_file(&path);
                std::os::unix::fs::symlink(target, &path)
                    .map_err(|e| err("creating the symlink", e))?;
                return Ok(());
            }
            FileType::Regular => {
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .write(true)
                    .truncate(r.offset == 0)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(|e| err("opening the file", e))?;
                use std::io::Seek;
                f.seek(std::io::SeekFrom::Start(r.offset))
                    .map_err(|e| err("seek", e))?;
                f.write_all(&r.data.0)
                    .map_err(|e| err("writing the file", e))?;
            }
        }
        if r.mode != 0 {
            fs::set_permissions(&path, fs::Permissions::from_mode(r.mode & 0o7777))
                .map_err(|e| err("chmod", e))?;
        }
        nix::unistd::chown(
            &path,
            Some(nix::unistd::Uid::from_raw(r.uid)),
            Some(nix::unistd::Gid::from_raw(r.gid)),
        )
        .map_err(|e| err("chown", e))?;
        Ok(())
    }

    /// Start the launcher for `spec`. Without `stdin` the process reads
    /// end-of-file at once (docker without `-i`); with a terminal its
    /// stdout and stderr are the terminal's master.
    fn launch(
        &self,
        spec_path: &Path,
        spec: &InitSpec,
        stdin: bool,
        cgroup: Option<&crate::cgroup::ContainerCgroup>,
    ) -> Result<Proc, String> {
        let cgroup_procs = cgroup.map(|c| c.procs_path()).transpose()?;
        let json = serde_json::to_vec(spec).map_err(|e| err("encoding the launch spec", e))?;
        fs::write(spec_path, json).map_err(|e| err("writing the launch spec", e))?;
        let (r, w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| err("pipe", e))?;
        let w_fd = w.as_raw_fd();
        // The console socket: the launcher's end is moved above the fds
        // pre_exec writes to, so dup2 cannot clobber it.
        let console = if spec.terminal {
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| err("creating the console socket", e))?;
            let theirs: std::os::fd::OwnedFd = theirs.into();
            // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own.
            let high = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
            if high < 0 {
                return Err(err(
                    "moving the console socket",
                    std::io::Error::last_os_error(),
                ));
            }
            // SAFETY: `high` is ours (just duplicated).
            Some((ours, unsafe {
                <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(high)
            }))
        } else {
            None
        };
        let console_fd = console.as_ref().map(|(_, t)| t.as_raw_fd());
        let mut cmd = Command::new(&self.cfg.agent_exe);
        cmd.arg("init")
            .arg(spec_path)
            .env_clear()
            .stdin(if stdin && !spec.terminal {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(if spec.terminal {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stderr(Stdio::piped());
        // SAFETY: dup2, fcntl and close_range are async-signal-safe; no allocation.
        unsafe {
            cmd.pre_exec(move || {
                // Into the container's cgroup before anything of it runs.
                if let Some(procs) = &cgroup_procs {
                    crate::cgroup::join_in_pre_exec(procs)?;
                }
                if libc::dup2(w_fd, STATUS_FD) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(c) = console_fd {
                    if libc::dup2(c, crate::tty::CONSOLE_FD) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // Only stdio, the status pipe (and the console socket) reach the launcher.
                veil_fds::cloexec_all_but(Some(STATUS_FD))?;
                if console_fd.is_some() && libc::fcntl(crate::tty::CONSOLE_FD, libc::F_SETFD, 0) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| err("starting the container launcher", e))?;
        drop(w);
        let console = console.map(|(ours, theirs)| {
            drop(theirs);
            ours
        });
        let mut status = String::new();
        let mut rf = fs::File::from(r);
        let _ = Read::by_ref(&mut rf)
            .take(64 * 1024)
            .read_to_string(&mut status);
        if !status.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("the container could not start: {status}"));
        }
        // The terminal's master was sent before the workload's exec, which
        // closed the status pipe: it is waiting in the socket.
        let tty = match &console {
            Some(sock) => match crate::tty::recv_fd(sock.as_raw_fd()) {
                Ok(m) => Some(m),
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            },
            None => None,
        };
        let tty_reader =
            match &tty {
                Some(m) => Some(Box::new(m.try_clone().map_err(|e| err("terminal", e))?)
                    as Box<dyn Read + Send>),
                None => None,
            };
        let stdout = Stream::default();
        let stderr = Stream::default();
        for (pipe, stream) in [
            (
                tty_reader.or_else(|| {
                    child
                        .stdout
                        .take()
                        .map(|p| Box::new(p) as Box<dyn Read + Send>)
                }),
                stdout.clone(),
            ),
            (
                child
                    .stderr
                    .take()
                    .map(|p| Box::new(p) as Box<dyn Read + Send>),
                stderr.clone(),
            ),
        ] {
            if let Some(mut pipe) = pipe {
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 32 * 1024];
                    loop {
                        match pipe.read(&mut buf) {
                            // A terminal's master reads EIO once every slave is closed.
                            Ok(0) | Err(_) => break,
                            Ok(n) => stream.push(&buf[..n]),
                        }
                    }
                    stream.close();
                });
            }
        }
        let stdin: Option<Box<dyn Write + Send>> = match &tty {
            Some(m) if stdin => Some(Box::new(m.try_clone().map_err(|e| err("terminal", e))?)),
            Some(_) => None,
            None => child
                .stdin
                .take()
                .map(|s| Box::new(s) as Box<dyn Write + Send>),
        };
        let launcher = child.id();
        let (o, e) = (stdout.clone(), stderr.clone());
        std::thread::spawn(move || {
            let code = match child.wait() {
                Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                Err(_) => 127,
            };
            tracing::info!(launcher, code, "container process exited");
            // The host may stop the VM as soon as it hears of the exit.
            crate::storage::flush();
            o.set_exit(code);
            e.set_exit(code);
        });
        Ok(Proc {
            launcher,
            stdout,
            stderr,
            stdin: Mutex::new(stdin),
            tty,
        })
    }
}

/// The workload process started by a launcher (its only child).
pub fn workload_pid(launcher: u32) -> Option<u32> {
    let children = fs::read_to_string(format!("/proc/{launcher}/task/{launcher}/children")).ok();
    if let Some(pid) =
        children.and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
    {
        return Some(pid);
    }
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(status) = fs::read_to_string(e.path().join("status")) else {
            continue;
        };
        let ppid = status
            .lines()
            .find_map(|l| l.strip_prefix("PPid:"))
            .and_then(|v| v.trim().parse::<u32>().ok());
        if ppid == Some(launcher) {
            return Some(pid);
        }
    }
    None
}

/// Write a file readable by everyone in the sandbox's containers (0444),
/// atomically (temporary file + rename).
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), String> {
    let tmp = path.with_extension("veil-tmp");
    let mut f = fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o444)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(|e| err("creating the file", e))?;
    f.write_all(data).map_err(|e| err("writing the file", e))?;
    drop(f);
    fs::rename(&tmp, path).map_err(|e| err("renaming the file", e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_agent_api::nic::WorkloadNic;

    fn nic(gateway: &str) -> WorkloadNic {
        serde_json::from_value(serde_json::json!({
            "mac": "0a:58:0a:58:00:05", "mtu": 1500, "addresses": ["10.88.0.5/16"],
            "routes": [{"dst": "0.0.0.0/0", "gateway": gateway}],
        }))
        .unwrap()
    }

    #[test]
    fn a_joined_nic_needs_a_checked_configuration_and_only_a_joined_one_takes_one() {
        let c = joined_nic_config(Some(&nic("10.88.0.1")), true)
            .unwrap()
            .unwrap();
        assert_eq!(c.addresses[0].to_string(), "10.88.0.5/16");
        assert_eq!(joined_nic_config(None, false), Ok(None));
        let e = joined_nic_config(Some(&nic("192.0.2.1")), true).unwrap_err();
        assert!(
            e.starts_with(
                "create_sandbox: workload_nic: routes[0].gateway: 192.0.2.1 is not on-link"
            ),
            "{e}"
        );
        let e = joined_nic_config(None, true).unwrap_err();
        assert!(e.contains("workload_nic is missing"), "{e}");
        let e = joined_nic_config(Some(&nic("10.88.0.1")), false).unwrap_err();
        assert!(e.contains("not joined to a network namespace"), "{e}");
    }
}
