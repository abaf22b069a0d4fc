//! Resource release: the caller's token (a Bearer token or the token of an
//! attested session) is verified, the release pin and the resource policy
//! of the most specific scope decide, and the resource is unsealed and
//! encrypted to the TEE key the token carries. Every outcome is counted;
//! releases and refusals (other than malformed paths) are audited.

use kbs_types::TeePubKey;
use veil_kbs_client::ResourcePath;
use veil_kbs_client::protocol::FlattenedJwe;
use veil_kbs_client::protocol::SESSION_COOKIE;

use crate::error::{KbsError, Result};
use crate::metrics::Metrics;
use crate::rcar::lookup_refusal;
use crate::session::Session;
use crate::source::SourceKey;
use crate::state::{AppState, now};

/// What a resource request presents.
pub enum Credential<'a> {
    /// `Authorization: Bearer <token>`.
    Bearer(&'a str),
    /// The cookie of a (hopefully attested) session.
    Session(&'a str),
}

/// A resource path from the URL (after `/resource/`).
pub fn resource_path(rest: &str) -> Result<ResourcePath> {
    if rest.starts_with("kbs:") {
        return Err(KbsError::InvalidRequestPath(
            "resource path must be <repo>/<type>/<tag>".into(),
        ));
    }
    ResourcePath::parse(rest).map_err(|e| KbsError::InvalidRequestPath(e.to_string()))
}

/// Release the resource at `rest` to `credential` (from `source`); `query` holds the URL's
/// query parameters, given to the policy as `data.query`. Does store I/O
/// and policy evaluation inline: call it off the async workers.
pub fn release(
    st: &AppState,
    source: &SourceKey,
    credential: Option<Credential<'_>>,
    rest: &str,
    query: serde_json::Map<String, serde_json::Value>,
) -> Result<FlattenedJwe> {
    let r = release_inner(st, credential, rest, query);
    match &r {
        Ok(_) => Metrics::inc(&st.metrics.resource_released),
        Err(e) => {
            Metrics::inc(&st.metrics.resource_refused);
            if !matches!(e, KbsError::InvalidRequestPath(_)) {
                st.audit_refusal(source, "resource", rest, &e.to_string());
            }
        }
    }
    r
}

fn release_inner(
    st: &AppState,
    credential: Option<Credential<'_>>,
    rest: &str,
    query: serde_json::Map<String, serde_json::Value>,
) -> Result<FlattenedJwe> {
    let path = resource_path(rest)?;
    let now = now();
    let token = match credential {
        Some(Credential::Bearer(t)) => t.to_string(),
        Some(Credential::Session(id)) => match st.sessions.get(id, now) {
            Ok(Session::Attested { token, .. }) => token,
            Ok(Session::Authed { .. }) => {
                return Err(KbsError::TokenNotFound(
                    "this session has not attested yet: POST /kbs/v0/attest first".into(),
                ));
            }
            Err(l) => return Err(lookup_refusal(l, KbsError::TokenNotFound)),
        },
        None => {
            return Err(KbsError::TokenNotFound(format!(
                "send the attestation token as `Authorization: Bearer <token>` or the {SESSION_COOKIE} cookie of an attested session"
            )));
        }
    };
    let claims = st
        .signer
        .verify(&token, now)
        .map_err(KbsError::TokenVerifierError)?;
    let evidence = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence")
        .ok_or_else(|| {
            KbsError::TokenVerifierError("token has no submods.cpu0 annotated evidence".into())
        })?;
    let tee = evidence.get("tee").and_then(|v| v.as_str()).unwrap_or("");
    if tee == "sim" && !st.cfg.dev {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: the token comes from the simulated TEE (no hardware protection); sim tokens get resources only from a KBS started with --dev"
        )));
    }
    if tee == "sample" && !st.cfg.insecure_allow_sample {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: sample tokens get resources only from a KBS started with --insecure-allow-sample"
        )));
    }
    let tee_pubkey: TeePubKey = evidence
        .pointer("/runtime_data_claims/tee-pubkey")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| KbsError::TokenVerifierError("token carries no usable tee-pubkey".into()))?;
    if let Some(pin) = st.release_pin() {
        pin.check(&path.to_string(), evidence)
            .map_err(KbsError::PolicyDeny)?;
    }
    let policies = st.resource_policies();
    let scopes = crate::policy::scopes_for(&path);
    let Some((scope, policy)) = scopes
        .iter()
        .find_map(|s| policies.get(s).map(|p| (s.clone(), p)))
    else {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: no resource policy covers this resource (scopes tried: {}), and the default is to deny",
            scopes
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let data =
        serde_json::json!({"plugin": "resource", "resource-path": path.segments(), "query": query});
    let decision = policy
        .eval(claims.clone(), data, crate::policy::RESOURCE_RULE)
        .map_err(|e| {
            KbsError::PolicyEngineError(format!("resource policy for scope {scope:?}: {e}"))
        })?;
    // Only policies that define a `gpu` rule have GPU requirements.
    let gpu = if crate::gpu::defines_gpu_rule(policy.text()) {
        policy
            .eval(claims.clone(), serde_json::json!({}), crate::gpu::GPU_RULE)
            .map_err(|e| {
                KbsError::PolicyEngineError(format!("resource policy for scope {scope:?}: {e}"))
            })?
    } else {
        serde_json::Value::Null
    };
    if !gpu.is_null() {
        crate::gpu::check_requirements(&claims, &gpu).map_err(|e| {
            KbsError::PolicyDeny(format!(
                "{path}: the resource policy for scope {scope:?} requires attested GPUs: {e}"
            ))
        })?;
    }
    if decision != serde_json::Value::Bool(true) {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: the resource policy for scope {scope:?} does not allow release to this token (data.policy.allow = {}). {}",
            if decision.is_null() {
                "undefined".to_string()
            } else {
                decision.to_string()
            },
            token_summary(&claims, &st.reference_values())
        )));
    }
    let (meta, blob) = st
        .store
        .get_resource(&path.to_string())
        .map_err(KbsError::store)?
        .ok_or_else(|| KbsError::PluginInternalError(format!("resource {path} not found")))?;
    let plaintext = st
        .cfg
        .kek
        .open(&format!("resource:{path}"), &blob)
        .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
    let jwe = crate::jwe::encrypt(&tee_pubkey, &plaintext)
        .map_err(|e| KbsError::JweError(e.to_string()))?;
    let kty = match &tee_pubkey {
        TeePubKey::EC { crv, .. } => crv.clone(),
        TeePubKey::RSA { .. } => "RSA".into(),
        TeePubKey::AKP { .. } => "AKP".into(),
    };
    // Durable with the answer: no release leaves without its audit row.
    st.audit(
        "resource",
        &path.to_string(),
        "allow",
        &format!("released by policy scope {scope:?}"),
        serde_json::json!({"tee": tee, "size": meta.size, "key": kty, "token_jti": claims.get("jti")}),
    )
    .map_err(|e| {
        let why =
            format!("{path}: the audit row of this release could not be written ({e}), so nothing is released");
        if e.is_unavailable() {
            KbsError::StoreUnavailable(why)
        } else {
            KbsError::PluginInternalError(why)
        }
    })?;
    tracing::info!(resource = %path, tee, "resource released");
    Ok(jwe)
}

/// What a denied token says, for the refusal: its appraisal (the claims
/// that are not "none") and its measurement, and whether that measurement
/// is among the reference values (the usual reason for a denial). The
/// reference values themselves are not listed, only counted.
fn token_summary(
    claims: &serde_json::Value,
    reference: &serde_json::Map<String, serde_json::Value>,
) -> String {
    let cpu0 = claims.pointer("/submods/cpu0");
    let status = cpu0
        .and_then(|c| c.get("ear.status"))
        .and_then(|s| s.as_str())
        .unwrap_or("?");
    let vector: Vec<String> = cpu0
        .and_then(|c| c.get("ear.trustworthiness-vector"))
        .and_then(|v| v.as_object())
        .map(|v| {
            v.iter()
                .filter_map(|(k, n)| {
                    let n = n.as_i64()?;
                    (n != 0).then(|| format!("{k} {n} ({})", crate::appraisal::tier(n).1))
                })
                .collect()
        })
        .unwrap_or_default();
    let evidence = cpu0.and_then(|c| c.get("ear.veraison.annotated-evidence"));
    let measurement = evidence
        .and_then(|e| e.get(e.get("tee")?.as_str()?))
        .and_then(|c| c.get("measurement"))
        .and_then(|m| m.as_str());
    // The init-data digest the token carries: what an init-data-digest
    // policy compared (all zeros when the guest sent no init-data).
    let init_data = evidence
        .and_then(|e| e.get("init_data"))
        .and_then(|d| d.as_str());
    let mut out = format!("The token: ear.status {status}");
    if !vector.is_empty() {
        out.push_str(&format!("; {}", vector.join(", ")));
    }
    if let Some(m) = measurement {
        let listed = reference
            .get("measurement")
            .and_then(|v| v.as_array())
            .map(|a| a.as_slice())
            .unwrap_or_default();
        let found = listed.iter().any(|v| v.as_str() == Some(m));
        out.push_str(&format!(
            "; measurement {m} {} the {} reference value(s) \"measurement\"",
            if found { "is among" } else { "is NOT among" },
            listed.len()
        ));
    }
    if let Some(d) = init_data {
        let algorithm = evidence
            .and_then(|e| e.pointer("/init_data_claims/algorithm"))
            .and_then(|a| a.as_str());
        match algorithm {
            Some(a) => out.push_str(&format!("; init-data digest {a}:{d}")),
            None => out.push_str(&format!(
                "; init-data digest {d} (no init-data sent: the TEE's field)"
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_says_what_the_token_holds() {
        let claims = serde_json::json!({"submods": {"cpu0": {
            "ear.status": "contraindicated",
            "ear.trustworthiness-vector": {"instance-identity": 0, "executables": 33, "hardware": 97, "configuration": 2},
            "ear.veraison.annotated-evidence": {"tee": "sim", "sim": {"measurement": "abcd"},
                "init_data": "0f0e", "init_data_claims": {"algorithm": "sha384"}},
        }}});
        let mut reference = serde_json::Map::new();
        reference.insert("measurement".into(), serde_json::json!(["1234", "5678"]));
        let s = token_summary(&claims, &reference);
        assert_eq!(
            s,
            "The token: ear.status contraindicated; executables 33 (warning), hardware 97 (contraindicated), configuration 2 (affirming); measurement abcd is NOT among the 2 reference value(s) \"measurement\"; init-data digest sha384:0f0e"
        );
        reference.insert("measurement".into(), serde_json::json!(["abcd"]));
        assert!(token_summary(&claims, &reference).contains("abcd is among the 1 reference"));
        // Whatever the token lacks is left out rather than guessed.
        assert_eq!(
            token_summary(&serde_json::json!({}), &serde_json::Map::new()),
            "The token: ear.status ?"
        );
    }
}
