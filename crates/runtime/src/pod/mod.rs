//! The sandbox lifecycle as a library: what `veil run` (and `veil exec`,
//! `kill`, `ps`, …) and `containerd-shim-veil-v2` both call.
//!
//! - [`Sandbox`]: the owner's handle. [`Sandbox::launch`] networks and
//!   launches a sandbox (process or VM; TEE none/sim/SNP/TDX) with its
//!   init-data, records it in the [`record`] store, and
//!   [`Sandbox::create_pod`] hands the agent the pod (hostname, DNS,
//!   volume contents); [`Sandbox::stop`] tears everything down.
//! - [`PodClient`]: one connection to a running sandbox's agent, from the
//!   owner or from any other process that found the sandbox in the record
//!   store ([`PodClient::reconnect`]): create/start/exec/kill/wait/delete a
//!   container, resize a terminal, close stdin, stats and pids.
//! - [`stdio`]: a process's streams wired to the caller's terminal, files,
//!   descriptors or FIFO paths; an attached process's end gives its exit
//!   code, waited for ([`Attached::wait`]) or as an exit event
//!   ([`Attached::on_exit`]).
//! - [`launch`]: the launch itself (KVM→TCG fallback, the guest image,
//!   routing a loopback KBS into a VM).
//!
//! Every request goes to the agent, which decides it against the policy in
//! the sandbox's init-data: a refusal comes back as [`CallError::Denied`]
//! with the policy's explanation, for the front-end to show as it is.
//!
//! Not here: argument parsing, docker flags, progress output and
//! summaries, image pulls with their progress UI, policy generation (the
//! front-ends; `veil-policy`), and the KBS. A sandbox is handed a KBS URL
//! (named in its init-data, with the CA certificate the init-data carries)
//! and never links a KBS server: `veil run`'s embedded KBS lives in the CLI.

pub mod launch;
pub mod record;
pub mod stdio;

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use veil_agent_api::proto::{CreateContainerResult, StartContainerResult, StatsContainerResult};
use veil_agent_api::{
    AgentRequest, CreateContainerRequest, CreateSandboxRequest, ExecProcessRequest,
    RemoveContainerRequest, ResizeTerminalRequest, SignalProcessRequest, StartContainerRequest,
    StatsContainerRequest, WriteStdinRequest,
};

pub use launch::{AnySandbox, LaunchError, LaunchEvent, SandboxKind, Tee, VmOptions};
pub use record::{Record, RecordError};
pub use stdio::{Attached, Exit, Sink, Source, Stdio};

use veil_policy::ParsedInitData;

use crate::net::{NetError, NetSettings, NetworkMode, PodNetwork, PortMapping};
use crate::vm::qemu::{GuestForward, WorkloadNet};
use crate::{AgentClient, CallError, SandboxConfig, SimPlatform};

/// The state file of a sandbox's network, in its record dir.
pub const NET_STATE_FILE: &str = "net.json";

/// How long a [`PodClient`] call may wait for the agent by default (image
/// pulls happen inside `create_container`).
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// Why a lifecycle step failed.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Record(#[from] RecordError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// The sandbox is in the store but not running.
    #[error("sandbox {id} is {status}")]
    NotRunning { id: String, status: String },
    /// The agent refused or failed a request (`what` names it).
    #[error("{what}: {source}")]
    Call {
        what: String,
        #[source]
        source: CallError,
    },
    /// The sim platform's key could not be loaded or created.
    #[error("{0}")]
    Platform(String),
    /// A network the sandbox asked for cannot be set up.
    #[error("{0}")]
    Network(String),
    #[error("setting up the pod network ({mode}): {source}")]
    NetSetup {
        mode: NetworkMode,
        #[source]
        source: NetError,
    },
    #[error(transparent)]
    Volume(#[from] crate::volume::VolumeError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl PodError {
    /// Whether the policy refused (the message is the policy's explanation).
    pub fn is_denied(&self) -> bool {
        matches!(self, PodError::Call { source, .. } if source.is_denied())
    }
}

/// The pod network a sandbox gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodNet {
    /// Process sandbox: loopback only, veil's bridge with published ports,
    /// or join a network namespace someone else made (the shim is handed the
    /// pod's by CRI/CNI).
    Process {
        mode: NetworkMode,
        ports: Vec<PortMapping>,
    },
    /// VM sandbox: a NIC on QEMU user networking with these forwards, or
    /// (`None`) loopback only.
    Vm(Option<WorkloadNet>),
    /// VM sandbox joined to the network namespace at this path, which
    /// someone else made (CNI, the shim's case; `ip netns add`): the
    /// guest's NIC is a tap there, mirrored with `tc` to the namespace's
    /// interface, and takes that interface's MAC, addresses and routes
    /// ([`crate::net::tap`]).
    VmJoin(PathBuf),
}

/// Everything [`Sandbox::launch`] needs.
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Sandbox id (`[a-z0-9]`): names its record, dirs and network.
    pub id: String,
    /// veil's data dir (records under `<data>/run`, sim key, guest image).
    pub data: PathBuf,
    /// The `veil-agent` binary (see [`launch::find_agent`]).
    pub agent_binary: PathBuf,
    pub kind: SandboxKind,
    pub tee: Tee,
    /// The init-data whose digest the platform binds at launch; the policy
    /// and the KBS URL (and CA) the agent uses come from it.
    pub init_data: Vec<u8>,
    /// An OCI image layout handed read-only to the agent (images not in it
    /// are pulled by the agent itself, inside the sandbox).
    pub oci_layout: Option<PathBuf>,
    /// Host services forwarded into a VM (the KBS: [`launch::route_kbs`]).
    pub forwards: Vec<GuestForward>,
    pub network: PodNet,
    /// `RUST_LOG`-style filter for the agent's log.
    pub log_filter: String,
    /// How long the process sandbox's agent may take to be ready (a VM's
    /// is [`VmOptions::boot_timeout`]).
    pub ready_timeout: Duration,
}

/// A running sandbox, owned by this process. Dropping it stops it as
/// [`Sandbox::stop`] does (the agent or QEMU first, then the network; field
/// order), without reporting errors; an owner killed outright leaves the
/// network to the next [`reap_networks`].
pub struct Sandbox {
    id: String,
    sandbox: AnySandbox,
    net: Option<PodNetwork>,
    dns: Vec<String>,
    /// A joined VM's NIC configuration, for `create_sandbox`.
    workload_nic: Option<veil_agent_api::nic::WorkloadNic>,
    /// The encrypted volumes attached to a VM, locked to this sandbox
    /// while it lives (released when it is dropped, after its stop).
    _volume_locks: Vec<crate::volume::VolumeLock>,
}

impl Sandbox {
    /// Network and launch the sandbox `spec` describes, filling `rec` (the
    /// caller's record, saved to the store here once the agent is up) with
    /// what it is: network, address, ports, hello, socket, agent PID, kind,
    /// and (unless the caller set it) the init-data file. The record dir
    /// `<data>/run/<id>` is created (0700) if it does not exist. A VM's
    /// launch with an auto accelerator reports a KVM→TCG fallback through
    /// `on` and in the returned note.
    pub fn launch(
        spec: SandboxSpec,
        rec: &mut Record,
        on: &mut dyn FnMut(LaunchEvent),
    ) -> Result<(Sandbox, Option<String>), PodError> {
        // Before anything is made: a volume another running sandbox has
        // attached is refused (one guest per LUKS2 volume).
        let volume_locks = match &spec.kind {
            SandboxKind::Vm(v) => crate::volume::lock_all(&v.volume_disks, &|f| {
                volume_holders(&spec.data, &spec.id, f)
            })?,
            SandboxKind::Process => Vec::new(),
        };
        rec.volumes = volume_locks
            .iter()
            .map(|l| l.file().to_path_buf())
            .collect();
        let dir = record::dir_of(&spec.data, &spec.id);
        // Private: it holds the agent socket, logs and workload output.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| PodError::Io {
                context: format!("creating {}", dir.display()),
                source,
            })?;
        let platform = Arc::new(
            SimPlatform::load_or_create(&crate::paths::sim_dir(&spec.data))
                .map_err(|e| PodError::Platform(e.to_string()))?,
        );
        let mut tap: Option<crate::net::tap::JoinedTap> = None;
        let (net, workload) = match &spec.network {
            PodNet::Process { mode, ports } => (
                setup_network(&spec.data, &dir, &spec.id, mode, ports, rec)?,
                None,
            ),
            PodNet::Vm(w) => {
                rec.network = if w.is_some() { "user" } else { "none" }.into();
                rec.ports = w
                    .iter()
                    .flat_map(|w| w.ports.iter().map(ToString::to_string))
                    .collect();
                if w.is_some() {
                    let [a, b, c, d] = veil_agent_api::workload_net::GUEST_IP;
                    rec.address = format!("{a}.{b}.{c}.{d}");
                }
                (None, w.clone())
            }
            PodNet::VmJoin(netns) => {
                let (net, joined) = join_vm_network(&spec.data, &dir, &spec.id, netns, rec)?;
                tap = Some(joined);
                (Some(net), None)
            }
        };
        // QEMU inherits the joined namespace's tap; veil's copy closes
        // once the VM is launched, so the tap goes with QEMU.
        let workload = match &tap {
            Some(t) => Some(WorkloadNet {
                ports: Vec::new(),
                tap_fd: Some(std::os::fd::AsRawFd::as_raw_fd(&t.fd)),
            }),
            None => workload,
        };
        if rec.init_data_file.as_os_str().is_empty() {
            // What a second client reads the policy from (Record::policy).
            let path = dir.join("init-data.toml");
            std::fs::write(&path, &spec.init_data).map_err(|source| PodError::Io {
                context: format!("writing {}", path.display()),
                source,
            })?;
            rec.init_data_file = path;
        }
        rec.save(&spec.data)?;
        let dns = if workload.as_ref().is_some_and(|w| w.tap_fd.is_none()) {
            // QEMU's DNS relay on the VM's pod NIC: the agent writes resolv.conf.
            let [a, b, c, d] = veil_agent_api::workload_net::DNS;
            vec![format!("{a}.{b}.{c}.{d}")]
        } else {
            Vec::new()
        };
        let oci_layout = match &spec.oci_layout {
            Some(l) => Some(std::fs::canonicalize(l).map_err(|source| PodError::Io {
                context: l.display().to_string(),
                source,
            })?),
            None => None,
        };
        let cfg = SandboxConfig {
            id: spec.id.clone(),
            agent_binary: spec.agent_binary.clone(),
            dir: dir.join("sandbox"),
            log_path: dir.join("agent.log"),
            init_data: spec.init_data.clone(),
            handover_init_data: None,
            oci_layout,
            debug: false,
            log_filter: spec.log_filter.clone(),
            ready_timeout: spec.ready_timeout,
            // A VM's pod namespace is the guest's own.
            pod_netns: net
                .as_ref()
                .filter(|_| !spec.kind.is_vm())
                .map(|n| n.netns().to_path_buf()),
        };
        let (sandbox, note) = launch::launch(
            &spec.kind,
            spec.tee,
            &spec.data,
            &platform,
            &cfg,
            spec.forwards.clone(),
            workload,
            on,
        )?;
        let (workload_nic, tap_notes) = match tap {
            Some(t) => (Some(t.nic), t.notes),
            None => (None, Vec::new()),
        };
        rec.notes.extend(tap_notes);
        rec.notes.extend(note.clone());
        sandbox.add_timings(&mut rec.timings);
        rec.hello = Some(sandbox.hello().clone());
        rec.expected_measurement = hex::encode(sandbox.launch_info().measurement);
        rec.agent_pid = sandbox.agent_pid().unwrap_or(0);
        rec.socket = sandbox.socket();
        rec.kind = if spec.kind.is_vm() { "vm" } else { "process" }.into();
        rec.sandbox_label = sandbox.label();
        rec.save(&spec.data)?;
        let sb = Sandbox {
            id: spec.id,
            sandbox,
            net,
            dns,
            workload_nic,
            _volume_locks: volume_locks,
        };
        Ok((sb, note))
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The launched sandbox (hello, measurement, VM details).
    pub fn inner(&self) -> &AnySandbox {
        &self.sandbox
    }

    /// How the agent (or QEMU) ended, if it has (waits up to a second).
    pub fn exit_status(&mut self) -> Option<String> {
        self.sandbox.exit_status()
    }

    /// A new client of this sandbox's agent.
    pub fn client(&self) -> Result<PodClient, CallError> {
        let client = self.sandbox.connect()?;
        client.set_timeout(DEFAULT_CALL_TIMEOUT)?;
        Ok(PodClient {
            id: self.id.clone(),
            socket: self.sandbox.socket(),
            client,
        })
    }

    /// The pod part of `create_sandbox`, with the sandbox's DNS filled in
    /// (a VM's pod NIC uses QEMU's relay) unless the request names one.
    pub fn create_pod(
        &self,
        c: &mut PodClient,
        mut req: CreateSandboxRequest,
    ) -> Result<(), PodError> {
        if req.dns.is_empty() {
            req.dns = self.dns.clone();
        }
        if req.workload_nic.is_none() {
            req.workload_nic = self.workload_nic.clone();
        }
        c.client
            .call(AgentRequest::CreateSandbox(req))
            .map(|_| ())
            .map_err(|source| PodError::Call {
                what: "create_sandbox".into(),
                source,
            })
    }

    /// Stop the agent (and with it every process and mount of the sandbox),
    /// then tear down its network. A network that could not be removed is
    /// returned as a warning (the next [`reap_networks`] retries).
    pub fn stop(self, grace: Duration) -> Result<Option<String>, PodError> {
        self.sandbox.stop(grace)?;
        Ok(self.net.and_then(|mut n| {
            n.teardown().err().map(|e| {
                format!("tearing down the pod network: {e}; the next veil command retries")
            })
        }))
    }
}

/// The sandboxes of `data`'s store (other than `id`) whose records say
/// they attached the volume `file`, for the refusal of a locked volume.
fn volume_holders(data: &Path, id: &str, file: &Path) -> Vec<String> {
    Record::all(data)
        .unwrap_or_default()
        .into_iter()
        .filter(|r| r.id != id && r.volumes.iter().any(|v| v == file))
        // A record whose owner died holds nothing (the shim's records name
        // no owner and go with their pod).
        .filter(|r| r.owner_pid == 0 || r.owner_alive())
        .map(|r| match r.name.as_str() {
            "" => format!("sandbox {}", r.id),
            n => format!("sandbox {} ({n})", r.id),
        })
        .collect()
}

/// Set up the network of a process sandbox, recording it in `rec`; the
/// returned guard tears it down when dropped (also on every error path).
fn setup_network(
    data: &Path,
    dir: &Path,
    id: &str,
    mode: &NetworkMode,
    ports: &[PortMapping],
    rec: &mut Record,
) -> Result<Option<PodNetwork>, PodError> {
    rec.network = mode.to_string();
    rec.ports = ports.iter().map(ToString::to_string).collect();
    if !nix::unistd::geteuid().is_root() {
        if *mode != NetworkMode::None || !ports.is_empty() {
            return Err(PodError::Network(format!(
                "--network {mode}{}: needs root (veil creates a network namespace and a \
                 bridge port, and changes the host's NAT rules); run as root, or use \
                 --network none without -p",
                if ports.is_empty() { "" } else { " with -p" }
            )));
        }
        // The agent makes the loopback-only namespace itself.
        return Ok(None);
    }
    let settings = NetSettings::from_env(data);
    let net = PodNetwork::setup(&settings, id, mode, ports, &dir.join(NET_STATE_FILE)).map_err(
        |source| PodError::NetSetup {
            mode: mode.clone(),
            source,
        },
    )?;
    rec.address = net.state().address.clone();
    Ok(Some(net))
}

/// Join a VM to the network namespace `netns` someone else made, recording
/// it in `rec`; the guard undoes the tap and mirroring when dropped.
fn join_vm_network(
    data: &Path,
    dir: &Path,
    id: &str,
    netns: &Path,
    rec: &mut Record,
) -> Result<(PodNetwork, crate::net::tap::JoinedTap), PodError> {
    let mode = NetworkMode::Join(netns.to_path_buf());
    rec.network = mode.to_string();
    rec.ports = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        return Err(PodError::Network(format!(
            "--network {mode} with the VM sandbox: needs root (veil creates a tap in that \
             namespace and mirrors it with tc); run as root, or use --network user"
        )));
    }
    let settings = NetSettings::from_env(data);
    let (net, joined) = PodNetwork::join_vm(&settings, id, netns, &dir.join(NET_STATE_FILE))
        .map_err(|source| PodError::NetSetup { mode, source })?;
    rec.address = net.state().address.clone();
    Ok((net, joined))
}

/// The KBS URL an init-data document names (`aa.toml`'s `url`), if any:
/// the KBS its agent attests to, which a VM sandbox must be able to reach
/// ([`launch::route_kbs`]).
pub fn kbs_url_of(p: &ParsedInitData) -> Option<String> {
    let aa = p.init_data.data.get(veil_policy::initdata::AA_KEY)?;
    aa.lines().find_map(|l| {
        let v = l
            .trim()
            .strip_prefix("url")?
            .trim_start()
            .strip_prefix('=')?;
        Some(v.trim().trim_matches('"').to_string())
    })
}

/// Tear down the networks that killed owners left behind (their owner is
/// gone, the state file is still there). Returns, per sandbox id, whether
/// one was removed (`Ok(true)`) or why it could not be.
pub fn reap_networks(data: &Path) -> Vec<(String, Result<bool, NetError>)> {
    let settings = NetSettings::from_env(data);
    let Ok(rd) = std::fs::read_dir(record::run_root(data)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let state: PathBuf = e.path().join(NET_STATE_FILE);
        if !state.exists() {
            continue;
        }
        let Some(id) = e.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if Record::load(data, &id).is_ok_and(|r| r.owner_alive()) {
            continue;
        }
        let r = crate::net::teardown_state_file(&state, &settings.cni_path);
        out.push((id, r));
    }
    out
}

/// The host PIDs are not visible to the host (they live in the sandbox's
/// PID namespace or the guest); what the agent reports instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pids {
    /// The container init's PID in the sandbox (0 before start).
    pub init: u32,
    /// Ids of the exec processes still running.
    pub execs: Vec<String>,
}

/// One connection to a running sandbox's agent. Calls are sequential; open
/// one client per thread (each output stream of [`stdio::attach`] opens its
/// own).
#[derive(Debug)]
pub struct PodClient {
    id: String,
    socket: PathBuf,
    client: AgentClient,
}

impl PodClient {
    /// Connect to the agent at `socket`.
    pub fn connect(id: &str, socket: &Path, timeout: Duration) -> Result<Self, PodError> {
        let client = AgentClient::connect(socket, timeout).map_err(|source| PodError::Call {
            what: format!("connecting to the agent of {id}"),
            source,
        })?;
        Ok(PodClient {
            id: id.into(),
            socket: socket.into(),
            client,
        })
    }

    /// Find a running sandbox in the record store (by id, unique id prefix
    /// or name) and connect to its agent: how a second process (`veil
    /// exec`, another shim instance) reaches a sandbox it does not own.
    pub fn reconnect(
        data: &Path,
        key: &str,
        timeout: Duration,
    ) -> Result<(Record, PodClient), PodError> {
        let rec = Record::find(data, key)?;
        let status = rec.effective_status();
        if status != "running" {
            return Err(PodError::NotRunning { id: rec.id, status });
        }
        let c = PodClient::connect(&rec.id, &rec.socket, timeout)?;
        Ok((rec, c))
    }

    /// The sandbox id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The agent socket (for further connections).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The agent's hello on this connection.
    pub fn hello(&self) -> &veil_agent_api::proto::Hello {
        self.client.hello()
    }

    /// The underlying agent connection, for requests this API does not wrap.
    pub fn agent(&mut self) -> &mut AgentClient {
        &mut self.client
    }

    /// Create a container (the agent pulls, verifies and unpacks its image
    /// inside the sandbox); see [`crate::requests::create_container`].
    pub fn create_container(
        &mut self,
        req: CreateContainerRequest,
    ) -> Result<CreateContainerResult, CallError> {
        self.client.call_typed(AgentRequest::CreateContainer(req))
    }

    /// Start a created container's process.
    pub fn start(&mut self, container_id: &str) -> Result<StartContainerResult, CallError> {
        self.client
            .call_typed(AgentRequest::StartContainer(StartContainerRequest {
                container_id: container_id.into(),
            }))
    }

    /// Start another process in a running container (see
    /// [`crate::requests::exec_process`]); attach its streams with
    /// [`stdio::attach`] to learn its exit.
    pub fn exec(&mut self, req: ExecProcessRequest) -> Result<(), CallError> {
        self.client.call(AgentRequest::ExecProcess(req)).map(|_| ())
    }

    /// Send `signal` to a container's init (`exec_id` empty) or an exec.
    pub fn kill(
        &mut self,
        container_id: &str,
        exec_id: &str,
        signal: u32,
    ) -> Result<(), CallError> {
        self.client
            .call(AgentRequest::SignalProcess(SignalProcessRequest {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                signal,
            }))
            .map(|_| ())
    }

    /// Wait for a container's init process to exit; its exit code (128+N
    /// for signal N).
    pub fn wait(&mut self, container_id: &str) -> Result<i32, CallError> {
        stdio::wait_init(&mut self.client, container_id, Duration::from_millis(50))
    }

    /// Remove a container: its processes get SIGTERM, then SIGKILL after
    /// `timeout_secs`; its mounts and rootfs go.
    pub fn delete(&mut self, container_id: &str, timeout_secs: u32) -> Result<(), CallError> {
        self.client
            .call(AgentRequest::RemoveContainer(RemoveContainerRequest {
                container_id: container_id.into(),
                timeout_secs,
            }))
            .map(|_| ())
    }

    /// Resize the terminal of a container's init (`exec_id` empty) or an exec.
    pub fn resize_pty(
        &mut self,
        container_id: &str,
        exec_id: &str,
        rows: u16,
        cols: u16,
    ) -> Result<(), CallError> {
        self.client
            .call(AgentRequest::ResizeTerminal(ResizeTerminalRequest {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                rows,
                cols,
            }))
            .map(|_| ())
    }

    /// Close a process's stdin (it reads end-of-file).
    pub fn close_stdin(&mut self, container_id: &str, exec_id: &str) -> Result<(), CallError> {
        self.client
            .call(AgentRequest::WriteStdin(WriteStdinRequest {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                data: veil_agent_api::Bytes(Vec::new()),
            }))
            .map(|_| ())
    }

    /// A container's state, exit code, init PID, running execs and
    /// resource usage (checked: figures no real guest reports are refused).
    pub fn stats(&mut self, container_id: &str) -> Result<StatsContainerResult, CallError> {
        let s: StatsContainerResult =
            self.client
                .call_typed(AgentRequest::StatsContainer(StatsContainerRequest {
                    container_id: container_id.into(),
                }))?;
        if let Some(r) = &s.resources {
            r.check().map_err(|e| {
                CallError::Result(format!(
                    "stats_container {container_id}: the agent's answer fails the host's check: {e}"
                ))
            })?;
        }
        Ok(s)
    }

    /// The processes of a container, as the agent knows them.
    pub fn pids(&mut self, container_id: &str) -> Result<Pids, CallError> {
        let s = self.stats(container_id)?;
        Ok(Pids {
            init: s.pid,
            execs: s.execs,
        })
    }

    /// Wire a process's streams (see [`stdio::attach`]).
    pub fn attach(
        &self,
        container_id: &str,
        exec_id: &str,
        stdio: Stdio,
    ) -> Result<Attached, CallError> {
        stdio::attach(
            &self.socket,
            container_id,
            exec_id,
            stdio,
            Duration::from_secs(30),
        )
    }
}
