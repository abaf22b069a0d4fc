//! The agent's side of the wire protocol: how the typed requests of this
//! crate travel over a byte stream (a unix socket in the process sandbox, a
//! loopback-forwarded TCP port in a VM), and what the agent answers.
//!
//! Every frame is a 4-byte big-endian length and JSON (`veil_tee::channel`).
//! On connect the agent sends one [`Hello`]; then the host sends an
//! [`crate::AgentMessage`] and the agent answers one
//! [`AgentResponse`], in turn, until either side closes.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha384};

/// The TEE name of a guest without one (`Hello::tee`, `veil.tee=none`).
pub const NO_TEE: &str = "none";

/// What every place that reports a guest without a TEE says.
pub const NO_TEE_WARNING: &str = "no TEE (--tee none): the host can read and change this VM's memory and everything in it; nothing is attested, init-data is not bound to the launch, and no KBS releases secrets or image keys to it";

/// Prefix hashed before every caller-supplied runtime data (`get_evidence`
/// from the host, `/aa/evidence` from a workload). No KBS binding starts with
/// it: Trustee's and veil's bind `SHA-384(JCS({...}))`, whose input is a JSON
/// object and so starts with `{`.
pub const USER_RUNTIME_DATA_DOMAIN: &[u8] = b"veil/user-runtime-data/v1\0";

/// The last 16 bytes of REPORT_DATA for caller-supplied runtime data. A KBS
/// binding (Trustee RCAR, veil) puts a SHA-384 digest zero-padded to 64 bytes
/// (or a full SHA-512) there, so evidence carrying this tag can never be
/// accepted as binding a KBS nonce and key.
pub const USER_REPORT_DATA_TAG: [u8; 16] = *b"VEIL:USERDATA:v1";

/// The 64-byte REPORT_DATA for caller-supplied runtime data (`get_evidence`
/// and the workload API): `SHA-384(USER_RUNTIME_DATA_DOMAIN ‖ runtime_data)
/// ‖ USER_REPORT_DATA_TAG`. Domain-separated from the KBS binding, so that
/// neither the host nor a workload can obtain evidence a KBS accepts for a
/// key the agent did not generate (docs/run.md, "What the host can ask").
pub fn report_data_for(runtime_data: &[u8]) -> [u8; 64] {
    let mut h = Sha384::new();
    h.update(USER_RUNTIME_DATA_DOMAIN);
    h.update(runtime_data);
    let mut rd = [0u8; 64];
    rd[..48].copy_from_slice(&h.finalize());
    rd[48..].copy_from_slice(&USER_REPORT_DATA_TAG);
    rd
}

/// Whether a REPORT_DATA value carries the caller-supplied tag (evidence from
/// `get_evidence` or the workload API, never a KBS binding).
pub fn is_user_report_data(report_data: &[u8]) -> bool {
    report_data.len() == 64 && report_data[48..] == USER_REPORT_DATA_TAG
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
    /// Where the guest pulled the image from: `layout` (the read-only disk
    /// or directory the host exposed) or `registry HOST[:PORT]`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub pulled_from: String,
    /// What the host should tell the user about the request, once (e.g.
    /// resource limits the process sandbox cannot enforce).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
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
    /// Resource usage and limits, once the container has started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::resources::ResourceUsage>,
}

/// `get_evidence` result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetEvidenceResult {
    pub tee: String,
    /// The evidence JSON; its REPORT_DATA is [`report_data_for`] the request's runtime data.
    pub evidence: serde_json::Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The attack of issue #13: the host builds the KBS binding bytes for its
    /// own key and asks the agent for evidence over them. Whatever bytes it
    /// chooses, the REPORT_DATA differs from any zero-padded SHA-384 binding.
    #[test]
    fn caller_runtime_data_never_yields_a_kbs_binding() {
        let jcs = br#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ES256","crv":"P-256","kty":"EC","x":"AA","y":"AA"}}"#;
        let mut kbs_binding = [0u8; 64];
        kbs_binding[..48].copy_from_slice(&Sha384::digest(jcs));
        for rd in [&jcs[..], &kbs_binding[..48], b""] {
            let got = report_data_for(rd);
            assert_ne!(got, kbs_binding);
            assert_ne!(&got[48..], &[0u8; 16], "the tail is never zero padding");
            assert!(is_user_report_data(&got));
        }
        assert!(!is_user_report_data(&kbs_binding));
        // Deterministic and documented: SHA-384(domain ‖ data) ‖ tag.
        let mut h = Sha384::new();
        h.update(b"veil/user-runtime-data/v1\0abc");
        assert_eq!(report_data_for(b"abc")[..48], h.finalize()[..]);
        assert_eq!(&report_data_for(b"abc")[48..], b"VEIL:USERDATA:v1");
    }
}
