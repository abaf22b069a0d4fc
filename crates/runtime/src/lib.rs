//! The host side of veil: everything that runs *outside* the TEE.
//!
//! - [`sim`]: the sim platform (the secure processor's stand-in): the sim
//!   key, the launch record of each sandbox, report signing on the
//!   sandbox's own channel.
//! - [`measure`]: the launch measurement of a process sandbox.
//! - [`sandbox`]: the process sandbox: `veil-agent` in its own mount, PID,
//!   UTS and IPC namespaces, torn down completely on stop.
//! - [`client`]: the agent API client (framed JSON over the agent socket).
//! - [`vm`]: the VM sandbox (QEMU, KVM or TCG; none/sim/SNP/TDX) and the
//!   guest image builder.
//! - [`paths`]: veil's data dir.
//! - [`node`]: `veil node install`/`uninstall` (containerd config drop-in,
//!   shim, per-handler shim configs; idempotent, exactly reversible).
//!
//! The host is untrusted by design: nothing here can make the agent do what
//! its policy does not allow. Not for: the agent itself (`veil-agent`), the
//! KBS (`veil-kbs`).

pub mod client;
pub mod measure;
pub mod net;
pub mod node;
pub mod paths;
pub mod requests;
pub mod sandbox;
pub mod sim;
pub mod vm;

pub use client::{AgentClient, CallError};
pub use sandbox::{ProcessSandbox, SandboxConfig, SandboxError};
pub use sim::{LaunchRecord, SimPlatform};
pub use vm::{VmConfig, VmError, VmSandbox};
