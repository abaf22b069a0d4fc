//! What the Task service needs from a veil sandbox: the seam between the
//! ttrpc glue (`service`) and veil-runtime's sandbox lifecycle.
//!
//! Everything that decides (policy, images, attestation) is behind these
//! traits, in veil-runtime and the guest; the service only keeps
//! containerd's bookkeeping (states, exit statuses, events).

use std::path::PathBuf;

use veil_agent_api::resources::ResourceUsage;
use veil_policy::initdata::ParsedInitData;

use crate::config::HandlerConfig;
use crate::spec::{ContainerSpec, RawProcess};

/// Why a sandbox operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureKind {
    /// The policy refused the request (the message is its explanation).
    Denied,
    /// No such container or process.
    NotFound,
    /// The process has already exited.
    Exited,
    /// Anything else.
    Failed,
}

/// A failed sandbox operation, with a message for the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    pub kind: FailureKind,
    pub message: String,
}

impl BackendError {
    pub fn failed(message: impl Into<String>) -> Self {
        BackendError {
            kind: FailureKind::Failed,
            message: message.into(),
        }
    }
}

/// Where a process's stdio goes: containerd's FIFO paths (empty = none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessIo {
    pub stdin: Option<PathBuf>,
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
    pub terminal: bool,
}

/// A sandbox to launch: one per pod (or per `ctr run` container).
#[derive(Debug, Clone)]
pub struct SandboxRequest {
    /// The id containerd gave the pod sandbox (or the standalone container).
    pub id: String,
    /// containerd's namespace of the task.
    pub namespace: String,
    pub handler_name: String,
    pub handler: HandlerConfig,
    /// The pod's init-data (measured at launch).
    pub init_data: ParsedInitData,
    /// Which annotation it came from (for messages).
    pub init_data_source: String,
    /// The shim's own dir for this sandbox (removed with it).
    pub dir: PathBuf,
    /// The OCI layout holding the policy's images (in `dir`); `None`: the
    /// guest pulls them from their registries (the handler's `pull = "guest"`).
    pub layout: Option<PathBuf>,
    /// The pod's network namespace from the spec, joined when given.
    pub netns: Option<PathBuf>,
    /// Pod name / namespace from the CRI annotations, when present.
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
    pub hostname: Option<String>,
}

/// A container to create in the sandbox.
#[derive(Debug, Clone)]
pub struct ContainerRequest {
    pub id: String,
    /// The CRI container name (the policy's container name), if any.
    pub name: Option<String>,
    pub spec: ContainerSpec,
    pub io: ProcessIo,
}

/// An exec into a container.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub container_id: String,
    pub exec_id: String,
    pub process: RawProcess,
    pub io: ProcessIo,
}

/// A process of the sandbox: a container's init process or one of its execs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProcRef {
    pub container_id: String,
    pub exec_id: Option<String>,
}

/// Blocks until the process exits; returns its exit status (128+N when
/// killed by signal N).
pub type Waiter = Box<dyn FnOnce() -> Result<u32, BackendError> + Send>;

/// A running sandbox.
pub trait Sandbox: Send {
    /// The host PID that stands for the sandbox (its agent, its VM).
    fn pid(&self) -> u32;
    fn create_container(&mut self, req: &ContainerRequest) -> Result<(), BackendError>;
    /// Start a created process; the waiter is run on a thread of its own.
    fn start(&mut self, p: &ProcRef) -> Result<Waiter, BackendError>;
    fn exec(&mut self, req: &ExecRequest) -> Result<(), BackendError>;
    fn signal(&mut self, p: &ProcRef, signal: u32) -> Result<(), BackendError>;
    fn resize_pty(&mut self, p: &ProcRef, width: u32, height: u32) -> Result<(), BackendError>;
    fn close_stdin(&mut self, p: &ProcRef) -> Result<(), BackendError>;
    /// A container's resource usage (its cgroup in the VM sandbox, `/proc`
    /// in the process sandbox), checked by the host; `None` before it runs
    /// (and in the process sandbox after it exits).
    fn stats(&mut self, container_id: &str) -> Result<Option<ResourceUsage>, BackendError>;
    /// Remove a container (stopped or not) and everything it holds.
    fn remove_container(&mut self, id: &str) -> Result<(), BackendError>;
    /// Stop the sandbox and remove everything it made on the host.
    fn stop(self: Box<Self>) -> Result<(), BackendError>;
}

/// Launches sandboxes. Called on the shim's sandbox-owner thread, which
/// lives as long as the shim (the process sandbox dies with the thread that
/// launched it).
pub trait Launcher: Send + Sync {
    fn launch(&self, req: SandboxRequest) -> Result<Box<dyn Sandbox>, BackendError>;
    /// Remove what a dead shim left for sandbox `id` (the `delete` action).
    fn cleanup(
        &self,
        handler: &HandlerConfig,
        namespace: &str,
        id: &str,
    ) -> Result<(), BackendError>;
}
