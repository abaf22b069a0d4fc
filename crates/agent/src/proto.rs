//! The agent API wire protocol: how the typed requests of `veil-agent-api`
//! travel over a byte stream (a unix socket in the process sandbox; vsock or
//! virtio-serial in a VM), and what the agent answers.
//!
//! Every frame is a 4-byte big-endian length and JSON ([`veil_tee::channel`]).
//! On connect the agent sends one [`Hello`]; then the host sends an
//! [`veil_agent_api::AgentMessage`] and the agent answers one
//! [`AgentResponse`], in turn, until either side closes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

/// The TEE name of a guest without one (`Hello::tee`, `veil.tee=none`).
pub const NO_TEE: &str = "none";

/// What every place that reports a guest without a TEE says.
pub const NO_TEE_WARNING: &str = "no TEE (--tee none): the host can read and change this VM's memory and everything in it; nothing is attested, init-data is not bound to the launch, and no KBS releases secrets or image keys to it";

/// The 64-byte REPORT_DATA binding caller-supplied runtime data (for
/// `get_evidence` and the workload API): SHA-384 of the bytes, zero-padded.
pub fn report_data_for(runtime_data: &[u8]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..48].copy_from_slice(&Sha384::digest(runtime_data));
    rd
}

/// Largest response frame the host accepts (a read chunk plus JSON overhead).
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Largest chunk returned by one `read_stream`.
pub const MAX_READ_CHUNK: usize = 1024 * 1024;
/// Default chunk when the request says 0.
pub const DEFAULT_READ_CHUNK: usize = 64 * 1024;

/// What the agent says first on every connection: who it is and what it
/// proved at start. Public information only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// veil-agent version.
    pub agent_version: String,
    /// Agent API version spoken.
    pub api_version: u32,
    /// The TEE the agent attests with (`sim`, `snp`, `tdx`).
    pub tee: String,
    /// Init-data digest the agent verified against the platform, `alg:hex`.
    pub init_data_digest: String,
    /// Launch measurement the platform reports, hex.
    pub measurement: String,
    /// Attestation to the KBS at start.
    pub attestation: AttestationStatus,
}

/// The outcome of the agent's attestation to the KBS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationStatus {
    /// `ok`, `failed`, or `not_configured` (init-data names no KBS).
    pub status: String,
    /// The KBS URL from init-data.
    #[serde(default)]
    pub kbs_url: String,
    /// Token expiry (Unix seconds), when attested.
    #[serde(default)]
    pub token_exp: u64,
    /// EAR status claim of the token (`affirming`, `warning`, …), when attested.
    #[serde(default)]
    pub ear_status: String,
    /// Names of the secrets placed under `/run/veil/secrets`.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Why attestation failed.
    #[serde(default)]
    pub error: String,
}

/// One violation of a denial, as the policy explained it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedBecause {
    pub rule: String,
    pub field: String,
    pub expected: String,
    pub actual: String,
    pub message: String,
}

/// The agent's answer to one request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum AgentResponse {
    /// Done; `result` is the request kind's result (see the `*Result` types).
    Ok { result: serde_json::Value },
    /// The policy refused the request; nothing happened.
    Denied {
        kind: String,
        violations: Vec<DeniedBecause>,
    },
    /// The request was malformed or failed; `message` says why.
    Error { message: String },
}

impl AgentResponse {
    /// One line per reason, for the user.
    pub fn explain(&self) -> String {
        match self {
            AgentResponse::Ok { .. } => "ok".into(),
            AgentResponse::Denied { kind, violations } => {
                let mut s = format!("refused by the policy ({kind})");
                for v in violations {
                    s.push_str(": ");
                    s.push_str(&v.message);
                }
                s
            }
            AgentResponse::Error { message } => message.clone(),
        }
    }
}

/// `create_container` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateContainerResult {
    /// The manifest digest that was pulled and verified.
    pub image_digest: String,
    /// Layers unpacked.
    pub layers: u32,
    /// Layers that were encrypted (decrypted with keys from the KBS).
    pub encrypted_layers: u32,
    /// Milliseconds spent pulling, decrypting and unpacking.
    pub pull_ms: u64,
}

/// `start_container` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartContainerResult {
    /// The container init's PID in the sandbox.
    pub pid: u32,
    /// Milliseconds from the request to the process running.
    pub start_ms: u64,
}

/// `read_stream` result: a chunk of output, and whether it has ended.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStreamResult {
    /// Standard base64 of the bytes.
    pub data: String,
    /// The stream is closed and fully read.
    pub eof: bool,
    /// The process's exit code, once it has exited (128+N for signal N).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Bytes dropped because the host read too slowly.
    #[serde(default)]
    pub dropped: u64,
}

/// `stats_container` result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsContainerResult {
    /// `created`, `running` or `exited`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub pid: u32,
    /// The policy container name.
    pub name: String,
    pub image_digest: String,
    /// Running exec processes.
    #[serde(default)]
    pub execs: Vec<String>,
}

/// `get_evidence` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEvidenceResult {
    pub tee: String,
    /// The evidence JSON, binding the request's runtime data (SHA-384, zero-padded to 64 bytes).
    pub evidence: serde_json::Value,
}
