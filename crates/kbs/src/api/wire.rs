//! The admin API's request bodies (Trustee's shapes), parsed with limits
//! into what the admin operations take.

use base64::Engine;

use crate::error::{KbsError, Result};

fn decode_policy_text(b64: &str) -> Result<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|e| KbsError::SerdeError(format!("policy must be base64url (no padding): {e}")))?;
    String::from_utf8(bytes).map_err(|_| KbsError::SerdeError("policy is not UTF-8".into()))
}

#[derive(serde::Deserialize)]
struct ResourcePolicyBody {
    policy: String,
    #[serde(default)]
    scope: Option<String>,
}

/// `POST /resource-policy`: `(scope, policy text)`; no scope = "".
pub fn resource_policy(bytes: &[u8]) -> Result<(String, String)> {
    let b: ResourcePolicyBody =
        crate::json::parse("resource policy", bytes).map_err(KbsError::SerdeError)?;
    Ok((b.scope.unwrap_or_default(), decode_policy_text(&b.policy)?))
}

#[derive(serde::Deserialize)]
struct AttestationPolicyBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    policy_id: Option<String>,
    policy: String,
}

/// `POST /attestation-policy`: `(policy_id, policy text)`; Rego only.
pub fn attestation_policy(bytes: &[u8]) -> Result<(Option<String>, String)> {
    let b: AttestationPolicyBody =
        crate::json::parse("attestation policy", bytes).map_err(KbsError::SerdeError)?;
    if let Some(k) = &b.kind {
        if k != "rego" {
            return Err(KbsError::PolicyEngineError(format!(
                "policy type {k:?}; only \"rego\" is supported"
            )));
        }
    }
    Ok((b.policy_id, decode_policy_text(&b.policy)?))
}

#[derive(serde::Deserialize)]
struct RvpsMessage {
    version: String,
    #[serde(rename = "type")]
    kind: String,
    payload: String,
}

/// `POST /reference-value`: an RVPS "sample" message, whose payload is a
/// JSON object of name → values.
pub fn reference_values(bytes: &[u8]) -> Result<serde_json::Map<String, serde_json::Value>> {
    let msg: RvpsMessage =
        crate::json::parse("reference value message", bytes).map_err(KbsError::SerdeError)?;
    if msg.version != "0.1.0" || msg.kind != "sample" {
        return Err(KbsError::RvpsError(format!(
            "message version {:?} type {:?}; supported: version \"0.1.0\", type \"sample\"",
            msg.version, msg.kind
        )));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&msg.payload)
        .map_err(|e| KbsError::RvpsError(format!("payload is not standard base64: {e}")))?;
    crate::json::parse("reference value payload", &payload).map_err(KbsError::RvpsError)
}

/// `GET /audit?limit=N&kind=K`: `(limit, kind)`, limit ≤ 10 000.
pub fn audit_query(query: &str) -> Result<(u32, Option<String>)> {
    let mut limit = 100u32;
    let mut kind = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("limit", v)) => {
                limit = v
                    .parse::<u32>()
                    .map_err(|_| KbsError::SerdeError(format!("limit {v:?} is not a number")))?
                    .min(10_000)
            }
            Some(("kind", v)) => kind = Some(v.to_string()),
            _ => {
                return Err(KbsError::SerdeError(format!(
                    "unknown audit query parameter {kv:?}; known: limit, kind"
                )));
            }
        }
    }
    Ok((limit, kind))
}
