//! Workload policy for veil: what makes a confidential container *this*
//! workload and not any workload.
//!
//! - [`model`]: the policy data (per container: image digest, argv, env
//!   rules, user, capabilities, mounts, exec commands, signals, stdio).
//! - [`rego`]: the policy text, Kata-style: rules + `policy_data := {...}`.
//! - [`initdata`]: the canonical CoCo init-data TOML that carries the policy
//!   and the agent's configuration; [`binding`]: its digest and the launch
//!   fields it is bound to (SNP HOST_DATA, TDX MRCONFIGID, sim).
//! - [`enforce`] (feature `enforce`): deciding agent requests with regorus,
//!   with explanations naming rule, field, expected and actual value.
//! - [`generate`] (feature `generate`): policies from Kubernetes YAML and
//!   OCI images; [`diff`]: a semantic diff of two policies.
//!
//! Not for: transporting requests (see `veil-agent-api`), pulling images in
//! the guest, or verifying evidence.

pub mod binding;
pub mod diff;
#[cfg(feature = "enforce")]
pub mod enforce;
#[cfg(feature = "generate")]
pub mod generate;
pub mod initdata;
pub mod model;
pub mod rego;
pub mod settings;

pub use binding::{BindingError, BindingField, HashAlgorithm, InitDataDigest};
#[cfg(feature = "enforce")]
pub use enforce::{Decision, EnforceError, GuestState, PolicyEngine, Violation};
pub use initdata::{InitData, InitDataError, ParsedInitData};
pub use model::PolicyData;
pub use settings::Settings;
