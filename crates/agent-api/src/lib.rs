//! The host<->agent wire protocol, whole: every request the (untrusted) host
//! may send to the in-guest veil agent, as typed, versioned, serde-JSON
//! structures, and (in [`proto`]) what the agent answers: [`proto::Hello`],
//! [`proto::AgentResponse`] and the result of each request kind. Both sides
//! link this crate; the host never links the agent.
//!
//! The wire form of one request is an [`AgentMessage`]:
//!
//! ```json
//! {"api_version": 1, "kind": "exec_process", "request": {"container_id": "c1", ...}}
//! ```
//!
//! The same JSON, with bulk payloads replaced by their length (see
//! [`AgentRequest::policy_view`]), is what the workload policy (Rego) sees as
//! `input.request`. Keep this crate small: it is linked into the agent.
//!
//! Not in this crate: the byte framing (`veil_tee::channel`, shared with the
//! sim platform's channel), the policy itself (`veil-policy`), and the
//! agent's behaviour.

use std::collections::BTreeMap;
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

pub mod bench;
pub mod nic;
pub mod proto;
pub mod resources;

/// The agent API version this crate speaks.
pub const API_VERSION: u32 = 1;

/// Largest accepted serialized message (JSON), in bytes.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Largest payload (stdin chunk, file chunk, config value) in one request, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4 * 1024 * 1024;
/// Largest number of argv / env entries / mounts in one process or container.
pub const MAX_LIST_ITEMS: usize = 4096;
/// Largest single string (argument, environment entry, path) in bytes.
pub const MAX_STRING_BYTES: usize = 64 * 1024;
/// Largest identifier (container id, exec id, sandbox id) in bytes.
pub const MAX_ID_BYTES: usize = 128;

/// Errors decoding or validating an agent message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    #[error("agent message is {actual} bytes, larger than the limit of {limit} bytes")]
    TooLarge { limit: usize, actual: usize },
    #[error("agent message is not valid JSON for this API: {0}")]
    Json(String),
    #[error("unsupported agent API version: expected {expected}, got {actual}")]
    Version { expected: u32, actual: u32 },
    #[error("unknown request kind {0:?}")]
    UnknownKind(String),
    #[error("invalid field {field}: {reason}")]
    Invalid { field: String, reason: String },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ApiError {
    ApiError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Bytes carried as standard base64 in JSON.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Bytes(pub Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&B64.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.len() > MAX_PAYLOAD_BYTES / 3 * 4 + 4 {
            return Err(serde::de::Error::custom(format!(
                "payload larger than {MAX_PAYLOAD_BYTES} bytes"
            )));
        }
        B64.decode(s.as_bytes())
            .map(Bytes)
            .map_err(|e| serde::de::Error::custom(format!("invalid base64: {e}")))
    }
}

/// Secret bytes: base64 in JSON, zeroized on drop, never printed.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretBytes(pub Zeroizing<Vec<u8>>);

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes(<{} bytes redacted>)", self.0.len())
    }
}

impl Serialize for SecretBytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let encoded = Zeroizing::new(B64.encode(self.0.as_slice()));
        s.serialize_str(&encoded)
    }
}

impl<'de> Deserialize<'de> for SecretBytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = Zeroizing::new(String::deserialize(d)?);
        if s.len() > MAX_PAYLOAD_BYTES / 3 * 4 + 4 {
            return Err(serde::de::Error::custom(format!(
                "payload larger than {MAX_PAYLOAD_BYTES} bytes"
            )));
        }
        B64.decode(s.as_bytes())
            .map(|v| SecretBytes(Zeroizing::new(v)))
            .map_err(|_| serde::de::Error::custom("invalid base64 in secret payload"))
    }
}

/// An image as the host names it: the reference and the manifest digest it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRef {
    /// e.g. `registry.example/app:1.2`.
    pub reference: String,
    /// Manifest digest, `sha256:<64 hex>`.
    pub digest: String,
}

/// The user a process runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Linux capability sets (names such as `CAP_NET_BIND_SERVICE`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

/// An OCI process: what a container's init process or an exec runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    /// argv, including argv\[0\].
    pub args: Vec<String>,
    /// `NAME=value` entries.
    #[serde(default)]
    pub env: Vec<String>,
    /// Working directory (absolute).
    pub cwd: String,
    #[serde(default)]
    pub user: User,
    #[serde(default)]
    pub capabilities: Capabilities,
    #[serde(default)]
    pub no_new_privileges: bool,
    /// Run on a pseudo-terminal made inside the container (`docker -t`):
    /// stdout and stderr arrive merged on the stdout stream.
    #[serde(default, skip_serializing_if = "is_false")]
    pub terminal: bool,
    /// Keep stdin open for `write_stdin` (`docker -i`); otherwise the
    /// process reads end-of-file at once.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stdin: bool,
    /// The terminal's initial window size (with `terminal`), so that the
    /// workload never sees 0x0 before the first `resize_terminal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_size: Option<ConsoleSize>,
}

/// A terminal's window size.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleSize {
    pub rows: u16,
    pub cols: u16,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// An OCI mount.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    pub destination: String,
    pub source: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    #[serde(default)]
    pub options: Vec<String>,
}

/// Create the pod sandbox (once per guest).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateSandboxRequest {
    pub sandbox_id: String,
    pub hostname: String,
    #[serde(default)]
    pub pod_name: String,
    #[serde(default)]
    pub pod_namespace: String,
    #[serde(default)]
    pub dns: Vec<String>,
    /// Kernel modules the host asks the guest to load.
    #[serde(default)]
    pub kernel_modules: Vec<String>,
    /// Share one PID namespace across the sandbox's containers.
    #[serde(default)]
    pub sandbox_pidns: bool,
    /// The content of the pod's configMap, secret, downwardAPI and
    /// projected volumes. The agent checks every file against the digests
    /// the policy pins before writing it into the sandbox.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumeContent>,
    /// VM sandbox joined to a network namespace the host was handed: the
    /// MAC, MTU, addresses and routes of that namespace's interface, for
    /// the guest's pod NIC (checked by the agent, [`nic::WorkloadNic::check`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_nic: Option<nic::WorkloadNic>,
}

/// Most bytes of volume content one sandbox may be handed (all files together).
pub const MAX_VOLUME_BYTES: usize = 4 * 1024 * 1024;
/// Most files over all volumes of one sandbox.
pub const MAX_VOLUME_FILES: usize = 1024;

/// The files of one content volume, as the host hands them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeContent {
    /// The pod volume's name.
    pub name: String,
    pub files: Vec<VolumeFileContent>,
}

/// One file of a content volume. Secret volumes' bytes are secrets: they
/// are zeroized on drop and never printed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeFileContent {
    /// Relative path inside the volume.
    pub path: String,
    pub data: SecretBytes,
}

/// Create (but not start) a container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateContainerRequest {
    pub container_id: String,
    /// The Kubernetes container name (the policy entry it claims to be).
    pub name: String,
    pub image: ImageRef,
    pub process: Process,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub read_only_rootfs: bool,
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Device paths to expose.
    #[serde(default)]
    pub devices: Vec<String>,
    /// The ports this container declares and which of them the host
    /// publishes (and on which host port): checked against the ports the
    /// policy pins for this container, and recorded as this container's,
    /// so that no other container of the pod can claim them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<ContainerPort>,
    /// The limits to apply to the container (the OCI spec's
    /// `linux.resources`): range-checked here, bounded by the policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Box<resources::Resources>>,
}

/// The VM sandbox's workload network: the second NIC, on QEMU's user-mode
/// network, that the guest agent moves into the pod's network namespace.
/// Separate from the NIC that carries this API. Both sides use these
/// addresses (QEMU's defaults for `net=10.0.3.0/24`).
/// The virtio-blk serial of the VM sandbox's encrypted volume disk `i`
/// is this prefix followed by `i` (the volume's index among the policy's
/// encrypted volumes, sorted by name). Untrusted: the guest checks each
/// disk's LUKS2 UUID against the policy.
pub const VOLUME_SERIAL_PREFIX: &str = "veil-vol-";

/// The virtio-blk serial of the VM sandbox's scratch disk: a fresh sparse
/// disk the guest encrypts with a key born in the guest (docs/storage.md).
pub const SCRATCH_SERIAL: &str = "veil-scratch";
/// The fw_cfg item that tells the guest the scratch disk's size in bytes
/// (decimal ASCII). The guest uses a disk with [`SCRATCH_SERIAL`] only when
/// this item is there, and only when the disk has exactly this size.
pub const SCRATCH_FW_CFG: &str = "opt/veil/scratch-bytes";
/// Smallest scratch disk (LUKS2 header and dm-integrity tags take ~17 MiB).
pub const MIN_SCRATCH_BYTES: u64 = 128 << 20;
/// Largest scratch disk (64 TiB).
pub const MAX_SCRATCH_BYTES: u64 = 64 << 40;

pub mod luks2;

pub mod workload_net {
    /// The NIC's MAC address, which is how the guest tells it from the
    /// agent channel's NIC.
    pub const MAC: &str = "52:54:00:76:65:01";
    /// The MAC QEMU gives the NIC instead when it is a tap joined to a
    /// network namespace the host was handed: the guest moves it into the
    /// pod's namespace, and configures it only when `create_sandbox`
    /// brings the namespace's MAC, addresses and routes
    /// ([`crate::nic::WorkloadNic`]).
    pub const JOIN_MAC: &str = "52:54:00:76:65:02";
    /// The subnet QEMU's user network gives it.
    pub const SUBNET: &str = "10.0.3.0/24";
    /// The pod's address (what QEMU's `hostfwd` forwards to).
    pub const GUEST_IP: [u8; 4] = [10, 0, 3, 15];
    /// The netmask of [`SUBNET`].
    pub const NETMASK: [u8; 4] = [255, 255, 255, 0];
    /// The default gateway (QEMU's NAT to the host's network).
    pub const GATEWAY: [u8; 4] = [10, 0, 3, 2];
    /// QEMU's DNS relay.
    pub const DNS: [u8; 4] = [10, 0, 3, 3];
    /// The name it gets in the pod's namespace.
    pub const POD_IFNAME: &str = "eth0";
}

/// `tcp` or `udp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    Tcp,
    Udp,
}

impl std::fmt::Display for PortProtocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        })
    }
}

/// A port of a container, and whether the host publishes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPort {
    /// The port the container listens on, in the pod's network.
    pub container_port: u16,
    pub protocol: PortProtocol,
    /// The host port it is published on; 0 when it is not published.
    #[serde(default)]
    pub host_port: u16,
    /// The host address it is published on (empty: every address).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_ip: String,
}

/// Start a created container's init process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartContainerRequest {
    pub container_id: String,
}

/// Remove a container (stopping it first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoveContainerRequest {
    pub container_id: String,
    #[serde(default)]
    pub timeout_secs: u32,
}

/// Run an additional process in a running container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecProcessRequest {
    pub container_id: String,
    pub exec_id: String,
    pub process: Process,
}

/// Send a signal to a container's init process (empty `exec_id`) or an exec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignalProcessRequest {
    pub container_id: String,
    #[serde(default)]
    pub exec_id: String,
    pub signal: u32,
}

/// Which output stream to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Read a process's stdout/stderr (container logs).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReadStreamRequest {
    pub container_id: String,
    #[serde(default)]
    pub exec_id: String,
    pub stream: Stream,
    #[serde(default)]
    pub max_bytes: u32,
}

/// Write to a process's stdin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteStdinRequest {
    pub container_id: String,
    #[serde(default)]
    pub exec_id: String,
    pub data: Bytes,
}

/// Set the window size of a process's terminal (the host's SIGWINCH).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeTerminalRequest {
    pub container_id: String,
    #[serde(default)]
    pub exec_id: String,
    pub rows: u16,
    pub cols: u16,
}

/// What kind of file a copy creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
}

/// Copy a file (chunk) into the sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CopyFileRequest {
    /// Absolute destination path in the guest.
    pub path: String,
    pub file_type: FileType,
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub offset: u64,
    #[serde(default)]
    pub data: Bytes,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub symlink_target: Option<String>,
}

/// Resource usage of one container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatsContainerRequest {
    pub container_id: String,
}

/// Produce TEE evidence binding `runtime_data`, domain-separated from any KBS
/// binding: REPORT_DATA = SHA-384("veil/user-runtime-data/v1\0" ‖ runtime_data)
/// ‖ "VEIL:USERDATA:v1" (see [`proto::report_data_for`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetEvidenceRequest {
    #[serde(default)]
    pub runtime_data: Bytes,
}

/// Whether an update carries a secret or plain configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfigKind {
    Secret,
    Config,
}

/// Replace a named secret or configuration value inside the guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateConfigRequest {
    pub kind: ConfigKind,
    /// e.g. `db-password`.
    pub name: String,
    pub data: SecretBytes,
}

/// The kinds of request, as named on the wire and in the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RequestKind {
    CreateSandbox,
    CreateContainer,
    StartContainer,
    RemoveContainer,
    ExecProcess,
    SignalProcess,
    ReadStream,
    WriteStdin,
    CopyFile,
    StatsContainer,
    GetEvidence,
    UpdateConfig,
    ResizeTerminal,
    /// Benchmark-only (`veil bench volume`): see [`bench`].
    BenchVolume,
}

impl RequestKind {
    /// Every kind, in a fixed order.
    pub const ALL: [RequestKind; 14] = [
        RequestKind::CreateSandbox,
        RequestKind::CreateContainer,
        RequestKind::StartContainer,
        RequestKind::RemoveContainer,
        RequestKind::ExecProcess,
        RequestKind::SignalProcess,
        RequestKind::ReadStream,
        RequestKind::WriteStdin,
        RequestKind::CopyFile,
        RequestKind::StatsContainer,
        RequestKind::GetEvidence,
        RequestKind::UpdateConfig,
        RequestKind::ResizeTerminal,
        RequestKind::BenchVolume,
    ];

    /// The snake_case name used on the wire and as the policy rule prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestKind::CreateSandbox => "create_sandbox",
            RequestKind::CreateContainer => "create_container",
            RequestKind::StartContainer => "start_container",
            RequestKind::RemoveContainer => "remove_container",
            RequestKind::ExecProcess => "exec_process",
            RequestKind::SignalProcess => "signal_process",
            RequestKind::ReadStream => "read_stream",
            RequestKind::WriteStdin => "write_stdin",
            RequestKind::CopyFile => "copy_file",
            RequestKind::StatsContainer => "stats_container",
            RequestKind::GetEvidence => "get_evidence",
            RequestKind::UpdateConfig => "update_config",
            RequestKind::ResizeTerminal => "resize_terminal",
            RequestKind::BenchVolume => "bench_volume",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| ApiError::UnknownKind(s.chars().take(64).collect()))
    }
}

impl fmt::Display for RequestKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One request from the host to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentRequest {
    CreateSandbox(CreateSandboxRequest),
    CreateContainer(CreateContainerRequest),
    StartContainer(StartContainerRequest),
    RemoveContainer(RemoveContainerRequest),
    ExecProcess(ExecProcessRequest),
    SignalProcess(SignalProcessRequest),
    ReadStream(ReadStreamRequest),
    WriteStdin(WriteStdinRequest),
    CopyFile(CopyFileRequest),
    StatsContainer(StatsContainerRequest),
    GetEvidence(GetEvidenceRequest),
    UpdateConfig(UpdateConfigRequest),
    ResizeTerminal(ResizeTerminalRequest),
    BenchVolume(bench::BenchVolumeRequest),
}

impl AgentRequest {
    /// The request's kind.
    pub fn kind(&self) -> RequestKind {
        match self {
            AgentRequest::CreateSandbox(_) => RequestKind::CreateSandbox,
            AgentRequest::CreateContainer(_) => RequestKind::CreateContainer,
            AgentRequest::StartContainer(_) => RequestKind::StartContainer,
            AgentRequest::RemoveContainer(_) => RequestKind::RemoveContainer,
            AgentRequest::ExecProcess(_) => RequestKind::ExecProcess,
            AgentRequest::SignalProcess(_) => RequestKind::SignalProcess,
            AgentRequest::ReadStream(_) => RequestKind::ReadStream,
            AgentRequest::WriteStdin(_) => RequestKind::WriteStdin,
            AgentRequest::CopyFile(_) => RequestKind::CopyFile,
            AgentRequest::StatsContainer(_) => RequestKind::StatsContainer,
            AgentRequest::GetEvidence(_) => RequestKind::GetEvidence,
            AgentRequest::UpdateConfig(_) => RequestKind::UpdateConfig,
            AgentRequest::ResizeTerminal(_) => RequestKind::ResizeTerminal,
            AgentRequest::BenchVolume(_) => RequestKind::BenchVolume,
        }
    }

    /// The request body as full JSON (payloads base64-encoded).
    pub fn body_json(&self) -> serde_json::Value {
        let r = match self {
            AgentRequest::CreateSandbox(r) => serde_json::to_value(r),
            AgentRequest::CreateContainer(r) => serde_json::to_value(r),
            AgentRequest::StartContainer(r) => serde_json::to_value(r),
            AgentRequest::RemoveContainer(r) => serde_json::to_value(r),
            AgentRequest::ExecProcess(r) => serde_json::to_value(r),
            AgentRequest::SignalProcess(r) => serde_json::to_value(r),
            AgentRequest::ReadStream(r) => serde_json::to_value(r),
            AgentRequest::WriteStdin(r) => serde_json::to_value(r),
            AgentRequest::CopyFile(r) => serde_json::to_value(r),
            AgentRequest::StatsContainer(r) => serde_json::to_value(r),
            AgentRequest::GetEvidence(r) => serde_json::to_value(r),
            AgentRequest::UpdateConfig(r) => serde_json::to_value(r),
            AgentRequest::ResizeTerminal(r) => serde_json::to_value(r),
            AgentRequest::BenchVolume(r) => serde_json::to_value(r),
        };
        // Serializing these plain structs to a Value cannot fail (string keys only).
        r.unwrap_or(serde_json::Value::Null)
    }

    /// The body as the policy sees it: the JSON of the request with every
    /// bulk payload (`data`) replaced by `data_len`, so secrets and file
    /// contents never enter the policy engine.
    pub fn policy_view(&self) -> serde_json::Value {
        let mut v = self.body_json();
        let len = match self {
            AgentRequest::WriteStdin(r) => Some(r.data.0.len()),
            AgentRequest::CopyFile(r) => Some(r.data.0.len()),
            AgentRequest::GetEvidence(r) => Some(r.runtime_data.0.len()),
            AgentRequest::UpdateConfig(r) => Some(r.data.0.len()),
            _ => None,
        };
        if let (AgentRequest::CreateSandbox(r), Some(obj)) = (self, v.as_object_mut()) {
            // Volume files: their paths and sizes, never their bytes.
            let volumes: Vec<serde_json::Value> = r
                .volumes
                .iter()
                .map(|vol| {
                    let files: Vec<serde_json::Value> = vol
                        .files
                        .iter()
                        .map(|f| serde_json::json!({"path": f.path, "data_len": f.data.0.len()}))
                        .collect();
                    serde_json::json!({"name": vol.name, "files": files})
                })
                .collect();
            if volumes.is_empty() {
                obj.remove("volumes");
            } else {
                obj.insert("volumes".into(), volumes.into());
            }
        }
        if let (Some(len), Some(obj)) = (len, v.as_object_mut()) {
            obj.remove("data");
            obj.remove("runtime_data");
            obj.insert("data_len".into(), serde_json::Value::from(len as u64));
        }
        v
    }

    /// Check the request's fields against the API limits and syntax rules.
    pub fn validate(&self) -> Result<(), ApiError> {
        match self {
            AgentRequest::CreateSandbox(r) => {
                check_id("sandbox_id", &r.sandbox_id)?;
                check_str("hostname", &r.hostname)?;
                check_str("pod_name", &r.pod_name)?;
                check_str("pod_namespace", &r.pod_namespace)?;
                check_list("dns", &r.dns)?;
                check_list("kernel_modules", &r.kernel_modules)?;
                if let Some(n) = &r.workload_nic {
                    check_str("workload_nic.mac", &n.mac)?;
                    if n.addresses.len() > nic::MAX_ADDRESSES {
                        return Err(invalid("workload_nic.addresses", "too many entries"));
                    }
                    if n.routes.len() > nic::MAX_ROUTES {
                        return Err(invalid("workload_nic.routes", "too many entries"));
                    }
                }
                check_volumes(&r.volumes)
            }
            AgentRequest::CreateContainer(r) => {
                check_id("container_id", &r.container_id)?;
                check_str("name", &r.name)?;
                check_str("image.reference", &r.image.reference)?;
                check_str("image.digest", &r.image.digest)?;
                check_process("process", &r.process)?;
                if r.mounts.len() > MAX_LIST_ITEMS {
                    return Err(invalid("mounts", "too many entries"));
                }
                for (i, m) in r.mounts.iter().enumerate() {
                    check_path(&format!("mounts[{i}].destination"), &m.destination)?;
                    check_str(&format!("mounts[{i}].source"), &m.source)?;
                    check_str(&format!("mounts[{i}].type"), &m.fs_type)?;
                    check_list(&format!("mounts[{i}].options"), &m.options)?;
                }
                if r.sysctls.len() > MAX_LIST_ITEMS {
                    return Err(invalid("sysctls", "too many entries"));
                }
                if r.ports.len() > MAX_LIST_ITEMS {
                    return Err(invalid("ports", "too many entries"));
                }
                for (i, p) in r.ports.iter().enumerate() {
                    if p.container_port == 0 {
                        return Err(invalid(format!("ports[{i}].container_port"), "port 0"));
                    }
                    check_str(&format!("ports[{i}].host_ip"), &p.host_ip)?;
                }
                check_list("devices", &r.devices)?;
                match &r.resources {
                    Some(res) => res.check().map_err(|e| invalid("resources", e)),
                    None => Ok(()),
                }
            }
            AgentRequest::StartContainer(r) => check_id("container_id", &r.container_id),
            AgentRequest::RemoveContainer(r) => check_id("container_id", &r.container_id),
            AgentRequest::ExecProcess(r) => {
                check_id("container_id", &r.container_id)?;
                check_id("exec_id", &r.exec_id)?;
                check_process("process", &r.process)
            }
            AgentRequest::SignalProcess(r) => {
                check_id("container_id", &r.container_id)?;
                check_opt_id("exec_id", &r.exec_id)?;
                if r.signal == 0 || r.signal > 64 {
                    return Err(invalid("signal", format!("{} is not in 1..=64", r.signal)));
                }
                Ok(())
            }
            AgentRequest::ReadStream(r) => {
                check_id("container_id", &r.container_id)?;
                check_opt_id("exec_id", &r.exec_id)
            }
            AgentRequest::WriteStdin(r) => {
                check_id("container_id", &r.container_id)?;
                check_opt_id("exec_id", &r.exec_id)
            }
            AgentRequest::CopyFile(r) => {
                check_path("path", &r.path)?;
                if let Some(t) = &r.symlink_target {
                    check_str("symlink_target", t)?;
                }
                if r.file_type == FileType::Symlink && r.symlink_target.is_none() {
                    return Err(invalid("symlink_target", "required for a symlink"));
                }
                Ok(())
            }
            AgentRequest::StatsContainer(r) => check_id("container_id", &r.container_id),
            AgentRequest::GetEvidence(r) => {
                if r.runtime_data.0.len() > 64 * 1024 {
                    return Err(invalid("runtime_data", "larger than 64 KiB"));
                }
                Ok(())
            }
            AgentRequest::UpdateConfig(r) => check_id("name", &r.name),
            AgentRequest::ResizeTerminal(r) => {
                check_id("container_id", &r.container_id)?;
                check_opt_id("exec_id", &r.exec_id)?;
                if r.rows == 0 || r.cols == 0 {
                    return Err(invalid(
                        "rows/cols",
                        format!(
                            "{}x{} is not a window size (both must be > 0)",
                            r.rows, r.cols
                        ),
                    ));
                }
                Ok(())
            }
            AgentRequest::BenchVolume(r) => r.check().map_err(|e| invalid("seconds", e)),
        }
    }
}

fn check_str(field: &str, s: &str) -> Result<(), ApiError> {
    if s.len() > MAX_STRING_BYTES {
        return Err(invalid(
            field,
            format!("{} bytes, limit {MAX_STRING_BYTES}", s.len()),
        ));
    }
    if s.contains('\0') {
        return Err(invalid(field, "contains a NUL byte"));
    }
    Ok(())
}

fn check_list(field: &str, items: &[String]) -> Result<(), ApiError> {
    if items.len() > MAX_LIST_ITEMS {
        return Err(invalid(
            field,
            format!("{} entries, limit {MAX_LIST_ITEMS}", items.len()),
        ));
    }
    for (i, s) in items.iter().enumerate() {
        check_str(&format!("{field}[{i}]"), s)?;
    }
    Ok(())
}

/// Volume content: bounded in files and bytes, each path relative and
/// without `.`/`..` or empty components.
fn check_volumes(volumes: &[VolumeContent]) -> Result<(), ApiError> {
    let files: usize = volumes.iter().map(|v| v.files.len()).sum();
    if volumes.len() > MAX_VOLUME_FILES || files > MAX_VOLUME_FILES {
        return Err(invalid(
            "volumes",
            format!(
                "{files} files in {} volumes, limit {MAX_VOLUME_FILES} files",
                volumes.len()
            ),
        ));
    }
    let bytes: usize = volumes
        .iter()
        .flat_map(|v| &v.files)
        .map(|f| f.data.0.len())
        .sum();
    if bytes > MAX_VOLUME_BYTES {
        return Err(invalid(
            "volumes",
            format!("{bytes} bytes of content, limit {MAX_VOLUME_BYTES}"),
        ));
    }
    for (i, v) in volumes.iter().enumerate() {
        check_id(&format!("volumes[{i}].name"), &v.name)?;
        for (j, f) in v.files.iter().enumerate() {
            let field = format!("volumes[{i}].files[{j}].path");
            check_str(&field, &f.path)?;
            if f.path.is_empty()
                || f.path.starts_with('/')
                || f.path
                    .split('/')
                    .any(|c| c.is_empty() || c == "." || c == "..")
            {
                return Err(invalid(
                    field,
                    format!(
                        "{:?} must be a relative path without empty, '.' or '..' components",
                        f.path
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn check_path(field: &str, p: &str) -> Result<(), ApiError> {
    check_str(field, p)?;
    if !p.starts_with('/') {
        return Err(invalid(field, format!("{p:?} is not an absolute path")));
    }
    Ok(())
}

/// Identifiers: 1..=128 bytes of `[A-Za-z0-9_.-]`, not starting with `.`.
fn check_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(invalid(
            field,
            format!("length {} is not in 1..={MAX_ID_BYTES}", id.len()),
        ));
    }
    if id.starts_with('.')
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
    {
        return Err(invalid(
            field,
            format!("{id:?} may only contain A-Z a-z 0-9 _ - . and not start with ."),
        ));
    }
    Ok(())
}

fn check_opt_id(field: &str, id: &str) -> Result<(), ApiError> {
    if id.is_empty() {
        Ok(())
    } else {
        check_id(field, id)
    }
}

fn check_process(field: &str, p: &Process) -> Result<(), ApiError> {
    if p.args.is_empty() {
        return Err(invalid(format!("{field}.args"), "empty argv"));
    }
    check_list(&format!("{field}.args"), &p.args)?;
    check_list(&format!("{field}.env"), &p.env)?;
    for (i, e) in p.env.iter().enumerate() {
        if !e.contains('=') {
            return Err(invalid(
                format!("{field}.env[{i}]"),
                format!("{e:?} is not NAME=value"),
            ));
        }
    }
    check_path(&format!("{field}.cwd"), &p.cwd)?;
    let c = &p.capabilities;
    for (n, set) in [
        ("bounding", &c.bounding),
        ("effective", &c.effective),
        ("inheritable", &c.inheritable),
        ("permitted", &c.permitted),
        ("ambient", &c.ambient),
    ] {
        check_list(&format!("{field}.capabilities.{n}"), set)?;
    }
    if p.user.additional_gids.len() > MAX_LIST_ITEMS {
        return Err(invalid(format!("{field}.user.additional_gids"), "too many"));
    }
    Ok(())
}

/// A versioned request as sent on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentMessage {
    pub api_version: u32,
    pub request: AgentRequest,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    api_version: u32,
    kind: String,
    request: serde_json::Value,
}

fn body<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(v).map_err(|e| ApiError::Json(e.to_string()))
}

impl AgentMessage {
    /// Wrap a request in the current API version.
    pub fn new(request: AgentRequest) -> Self {
        AgentMessage {
            api_version: API_VERSION,
            request,
        }
    }

    /// Decode and validate a message from untrusted bytes.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ApiError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(ApiError::TooLarge {
                limit: MAX_MESSAGE_BYTES,
                actual: bytes.len(),
            });
        }
        let raw: RawMessage =
            serde_json::from_slice(bytes).map_err(|e| ApiError::Json(e.to_string()))?;
        Self::from_raw(raw)
    }

    /// Decode and validate a message from an already-parsed JSON value.
    pub fn from_value(v: serde_json::Value) -> Result<Self, ApiError> {
        let raw: RawMessage =
            serde_json::from_value(v).map_err(|e| ApiError::Json(e.to_string()))?;
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawMessage) -> Result<Self, ApiError> {
        if raw.api_version != API_VERSION {
            return Err(ApiError::Version {
                expected: API_VERSION,
                actual: raw.api_version,
            });
        }
        let b = raw.request;
        let request = match RequestKind::parse(&raw.kind)? {
            RequestKind::CreateSandbox => AgentRequest::CreateSandbox(body(b)?),
            RequestKind::CreateContainer => AgentRequest::CreateContainer(body(b)?),
            RequestKind::StartContainer => AgentRequest::StartContainer(body(b)?),
            RequestKind::RemoveContainer => AgentRequest::RemoveContainer(body(b)?),
            RequestKind::ExecProcess => AgentRequest::ExecProcess(body(b)?),
            RequestKind::SignalProcess => AgentRequest::SignalProcess(body(b)?),
            RequestKind::ReadStream => AgentRequest::ReadStream(body(b)?),
            RequestKind::WriteStdin => AgentRequest::WriteStdin(body(b)?),
            RequestKind::CopyFile => AgentRequest::CopyFile(body(b)?),
            RequestKind::StatsContainer => AgentRequest::StatsContainer(body(b)?),
            RequestKind::GetEvidence => AgentRequest::GetEvidence(body(b)?),
            RequestKind::UpdateConfig => AgentRequest::UpdateConfig(body(b)?),
            RequestKind::ResizeTerminal => AgentRequest::ResizeTerminal(body(b)?),
            RequestKind::BenchVolume => AgentRequest::BenchVolume(body(b)?),
        };
        request.validate()?;
        Ok(AgentMessage {
            api_version: raw.api_version,
            request,
        })
    }

    /// The wire JSON.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "api_version": self.api_version,
            "kind": self.request.kind().as_str(),
            "request": self.request.body_json(),
        })
    }

    /// The wire JSON with payloads replaced by their length (see [`AgentRequest::policy_view`]).
    pub fn policy_view(&self) -> serde_json::Value {
        serde_json::json!({
            "api_version": self.api_version,
            "kind": self.request.kind().as_str(),
            "request": self.request.policy_view(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exec() -> AgentMessage {
        AgentMessage::new(AgentRequest::ExecProcess(ExecProcessRequest {
            container_id: "c1".into(),
            exec_id: "e1".into(),
            process: Process {
                args: vec!["sh".into(), "-c".into(), "id".into()],
                env: vec!["PATH=/bin".into()],
                cwd: "/".into(),
                ..Default::default()
            },
        }))
    }

    fn sandbox_with_volume(path: &str, data: &[u8]) -> AgentRequest {
        AgentRequest::CreateSandbox(CreateSandboxRequest {
            sandbox_id: "sb".into(),
            hostname: "web".into(),
            pod_name: "web".into(),
            pod_namespace: "default".into(),
            dns: vec![],
            kernel_modules: vec![],
            sandbox_pidns: false,
            volumes: vec![VolumeContent {
                name: "creds".into(),
                files: vec![VolumeFileContent {
                    path: path.into(),
                    data: SecretBytes(Zeroizing::new(data.to_vec())),
                }],
            }],
            workload_nic: None,
        })
    }

    #[test]
    fn volume_bytes_never_reach_the_policy_engine_and_paths_stay_inside() {
        let r = sandbox_with_volume("db/password", b"hunter2");
        let view = r.policy_view().to_string();
        assert!(view.contains("\"data_len\":7"), "{view}");
        assert!(!view.contains(&B64.encode(b"hunter2")), "{view}");
        assert!(!format!("{r:?}").contains("hunter2"));
        r.validate().unwrap();
        for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", ""] {
            let e = sandbox_with_volume(bad, b"x").validate().unwrap_err();
            assert!(
                e.to_string().contains("volumes[0].files[0].path"),
                "{bad}: {e}"
            );
        }
        let big = sandbox_with_volume("big", &vec![0u8; MAX_VOLUME_BYTES + 1]);
        assert!(big.validate().unwrap_err().to_string().contains("limit"));
    }

    #[test]
    fn round_trip_json() {
        let m = exec();
        let bytes = serde_json::to_vec(&m.to_json()).unwrap();
        assert_eq!(AgentMessage::from_json(&bytes).unwrap(), m);
    }

    #[test]
    fn rejects_unknown_version_kind_and_fields() {
        let mut v = exec().to_json();
        v["api_version"] = 2.into();
        assert_eq!(
            AgentMessage::from_value(v).unwrap_err(),
            ApiError::Version {
                expected: 1,
                actual: 2
            }
        );
        let mut v = exec().to_json();
        v["kind"] = "pull_image".into();
        assert!(matches!(
            AgentMessage::from_value(v),
            Err(ApiError::UnknownKind(_))
        ));
        let mut v = exec().to_json();
        v["request"]["hooks"] = serde_json::json!([]);
        assert!(matches!(
            AgentMessage::from_value(v),
            Err(ApiError::Json(_))
        ));
    }

    #[test]
    fn rejects_bad_ids_and_env() {
        let mut v = exec().to_json();
        v["request"]["container_id"] = "../etc".into();
        assert!(matches!(
            AgentMessage::from_value(v),
            Err(ApiError::Invalid { .. })
        ));
        let mut v = exec().to_json();
        v["request"]["process"]["env"] = serde_json::json!(["NOEQUALS"]);
        let e = AgentMessage::from_value(v).unwrap_err();
        assert!(e.to_string().contains("process.env[0]"), "{e}");
    }

    #[test]
    fn policy_view_hides_payloads() {
        let m = AgentMessage::new(AgentRequest::UpdateConfig(UpdateConfigRequest {
            kind: ConfigKind::Secret,
            name: "db-password".into(),
            data: SecretBytes(Zeroizing::new(b"hunter2".to_vec())),
        }));
        let v = m.policy_view();
        assert_eq!(v["request"]["data_len"], 7);
        assert!(!v.to_string().contains("aHVudGVyMg"));
        assert!(!format!("{m:?}").contains("hunter2"));
    }

    #[test]
    fn terminal_requests_round_trip_and_a_zero_size_is_refused() {
        let m = AgentMessage::new(AgentRequest::ResizeTerminal(ResizeTerminalRequest {
            container_id: "c1".into(),
            exec_id: String::new(),
            rows: 40,
            cols: 120,
        }));
        let bytes = serde_json::to_vec(&m.to_json()).unwrap();
        assert_eq!(AgentMessage::from_json(&bytes).unwrap(), m);
        let mut v = m.to_json();
        v["request"]["cols"] = 0.into();
        let e = AgentMessage::from_value(v).unwrap_err();
        assert!(e.to_string().contains("not a window size"), "{e}");
        // stdin/terminal are omitted when false: older agents read the same bytes.
        let v = exec().to_json();
        assert!(v["request"]["process"].get("stdin").is_none(), "{v}");
        let mut v = exec().to_json();
        v["request"]["process"]["terminal"] = true.into();
        v["request"]["process"]["console_size"] = serde_json::json!({"rows": 2, "cols": 3});
        let m = AgentMessage::from_value(v).unwrap();
        let AgentRequest::ExecProcess(r) = m.request else {
            panic!()
        };
        assert!(r.process.terminal);
        assert_eq!(
            r.process.console_size,
            Some(ConsoleSize { rows: 2, cols: 3 })
        );
    }

    #[test]
    fn bench_volume_round_trips_and_its_seconds_are_bounded() {
        let m = AgentMessage::new(AgentRequest::BenchVolume(bench::BenchVolumeRequest {
            seconds: 2,
            seed: 7,
        }));
        let v = m.to_json();
        assert_eq!(v["kind"], "bench_volume");
        let bytes = serde_json::to_vec(&v).unwrap();
        assert_eq!(AgentMessage::from_json(&bytes).unwrap(), m);
        let mut v = m.to_json();
        v["request"]["seconds"] = 0.into();
        let e = AgentMessage::from_value(v).unwrap_err();
        assert!(e.to_string().contains("invalid field seconds"), "{e}");
        let mut v = m.to_json();
        v["request"]["disk"] = "/dev/vda".into();
        assert!(matches!(
            AgentMessage::from_value(v),
            Err(ApiError::Json(_))
        ));
    }

    #[test]
    fn too_large_is_refused() {
        let big = vec![b' '; MAX_MESSAGE_BYTES + 1];
        assert!(matches!(
            AgentMessage::from_json(&big),
            Err(ApiError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = AgentMessage::from_json(&bytes);
        }

        #[test]
        fn arbitrary_json_shapes_never_panic(kind in "[a-z_]{0,20}", id in ".{0,40}", sig in any::<u32>()) {
            let v = serde_json::json!({"api_version": 1, "kind": kind, "request": {"container_id": id, "signal": sig}});
            let _ = AgentMessage::from_value(v);
        }
    }
}
