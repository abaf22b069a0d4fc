//! The host side of veil: everything that runs *outside* the TEE, as a
//! library. `veil run` and `containerd-shim-veil-v2` are front-ends over
//! [`pod`], the sandbox lifecycle; the other modules are its parts.
//!
//! - [`pod`]: the sandbox lifecycle: launch a sandbox into its network,
//!   create/start/exec/kill/wait/delete containers, stdio wiring, the
//!   record store other processes find a sandbox by.
//! - [`sim`]: the sim platform (the secure processor's stand-in): the sim
//!   key, the launch record of each sandbox, report signing on the
//!   sandbox's own channel.
//! - [`measure`]: the launch measurement of a process sandbox.
//! - [`sandbox`]: the process sandbox: `veil-agent` in its own mount, PID,
//!   UTS and IPC namespaces, torn down completely on stop.
//! - [`client`]: the agent API client (framed JSON over the agent socket;
//!   the protocol itself is `veil-agent-api`).
//! - [`net`]: pod networking (CNI bridge, loopback only, or joining a
//!   namespace someone else made); [`requests`]: agent requests from a policy.
//! - [`vm`]: the VM sandbox (QEMU, KVM or TCG; none/sim/SNP/TDX) and the
//!   guest image builder.
//! - [`paths`]: veil's data dir.
//! - [`volume`]: the node's store of encrypted persistent volumes (lookup
//!   against a policy's pins, one sandbox per volume).
//! - [`node`]: `veil node install`/`uninstall` (containerd config drop-in,
//!   shim, per-handler shim configs; idempotent, exactly reversible).
//!
//! The host is untrusted by design: nothing here can make the agent do what
//! its policy does not allow. Not for: the agent itself (`veil-agent`), the
//! KBS (`veil-kbs`; a sandbox is handed a KBS URL), argument parsing and
//! terminal output (the front-ends).

pub mod client;
pub mod measure;
pub mod net;
pub mod node;
pub mod paths;
pub mod pod;
pub mod requests;
pub mod sandbox;
pub mod sim;
pub mod vm;
pub mod volume;

pub use client::{AgentClient, CallError};
pub use sandbox::{ProcessSandbox, SandboxConfig, SandboxError};
pub use sim::{LaunchRecord, SimPlatform};
pub use vm::{VmConfig, VmError, VmSandbox};
