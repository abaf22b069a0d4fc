//! Admin operations behind the admin API: authorization of the admin
//! token, resources, resource and attestation policies, reference values
//! and the audit log. Each successful operation is counted and audited;
//! each refused token is counted and audited. Store I/O runs inline: call
//! these off the async workers.

use veil_kbs_client::ResourcePath;

use crate::error::{KbsError, Result};
use crate::metrics::Metrics;
use crate::source::SourceKey;
use crate::state::{AppState, now};
use crate::store::{AuditRecord, ResourceMeta};

/// Lifetime of sample-provisioned reference values (as Trustee's RVPS).
pub const REFERENCE_VALUE_LIFETIME_SECS: u64 = 365 * 24 * 3600;

/// Check the admin token of a call to `what` from `source`; returns its
/// subject.
pub fn authorize(
    st: &AppState,
    source: &SourceKey,
    bearer: Option<&str>,
    what: &str,
) -> Result<String> {
    let r = match bearer {
        None => Err(format!(
            "{what}: no `Authorization: Bearer <admin token>` header"
        )),
        Some(t) => crate::admin_auth::verify_admin_token(
            t,
            &st.cfg.admin_keys,
            &st.admin_token_rules(),
            &st.admin_jtis,
            now(),
        )
        .map_err(|e| format!("{what}: {e}")),
    };
    r.map_err(|e| {
        Metrics::inc(&st.metrics.admin_refused);
        st.audit_refusal(source, "admin", what, &e);
        KbsError::AdminAuthAccess(e)
    })
}

fn done(st: &AppState, what: &str, subject: &str, details: serde_json::Value) {
    Metrics::inc(&st.metrics.admin_ok);
    // The change is made; a failed audit write is logged by `audit`.
    let _ = st.audit("admin", what, "ok", subject, details);
}

fn internal(e: crate::store::StoreError) -> KbsError {
    KbsError::store(e)
}

/// Seal and store a resource value.
pub fn put_resource(st: &AppState, path: &ResourcePath, plaintext: &[u8]) -> Result<()> {
    let blob = st.cfg.kek.seal(&format!("resource:{path}"), plaintext);
    st.store
        .put_resource(&path.to_string(), plaintext.len() as u64, &blob, now())
        .map_err(internal)?;
    done(
        st,
        "put resource",
        &path.to_string(),
        serde_json::json!({"size": plaintext.len()}),
    );
    Ok(())
}

/// Delete a resource; refuses one that does not exist.
pub fn delete_resource(st: &AppState, path: &ResourcePath) -> Result<()> {
    if !st
        .store
        .delete_resource(&path.to_string())
        .map_err(internal)?
    {
        return Err(KbsError::PluginInternalError(format!(
            "resource {path} not found"
        )));
    }
    done(
        st,
        "delete resource",
        &path.to_string(),
        serde_json::json!({}),
    );
    Ok(())
}

/// Metadata of every resource.
pub fn list_resources(st: &AppState) -> Result<Vec<ResourceMeta>> {
    let list = st.store.list_resources().map_err(internal)?;
    done(
        st,
        "list resources",
        "",
        serde_json::json!({"count": list.len()}),
    );
    Ok(list)
}

/// Metadata of one resource (never its value).
pub fn resource_info(st: &AppState, path: &ResourcePath) -> Result<ResourceMeta> {
    let (meta, _) = st
        .store
        .get_resource(&path.to_string())
        .map_err(internal)?
        .ok_or_else(|| KbsError::PluginInternalError(format!("resource {path} not found")))?;
    done(
        st,
        "resource info",
        &path.to_string(),
        serde_json::json!({}),
    );
    Ok(meta)
}

/// Compile and store the resource policy of `scope` ("" = every resource).
pub fn set_resource_policy(st: &AppState, scope: &str, text: &str) -> Result<()> {
    crate::policy::validate_scope(scope).map_err(KbsError::InvalidRequestPath)?;
    crate::policy::compile_resource_policy(text).map_err(KbsError::PolicyEngineError)?;
    st.store
        .set_policy("resource", scope, text, now())
        .map_err(internal)?;
    st.reload().map_err(KbsError::PolicyEngineError)?;
    done(
        st,
        "set resource policy",
        scope,
        serde_json::json!({"bytes": text.len()}),
    );
    Ok(())
}

/// Every resource policy in force, `(scope, text)`.
pub fn resource_policies(st: &AppState) -> Vec<(String, String)> {
    st.resource_policies()
        .iter()
        .map(|(scope, p)| (scope.clone(), p.text().to_string()))
        .collect()
}

/// Compile and store the attestation policy; `policy_id` is recorded in
/// the audit log.
pub fn set_attestation_policy(st: &AppState, policy_id: Option<&str>, text: &str) -> Result<()> {
    crate::appraisal::compile(text).map_err(KbsError::PolicyEngineError)?;
    st.store
        .set_policy("attestation", "", text, now())
        .map_err(internal)?;
    st.reload().map_err(KbsError::PolicyEngineError)?;
    done(
        st,
        "set attestation policy",
        policy_id.unwrap_or("default_cpu"),
        serde_json::json!({}),
    );
    Ok(())
}

/// Store reference values (name → value: usually an array of accepted
/// values, or one value as Trustee's policies compare some with `==`),
/// each valid for
/// [`REFERENCE_VALUE_LIFETIME_SECS`].
pub fn set_reference_values(
    st: &AppState,
    values: &serde_json::Map<String, serde_json::Value>,
) -> Result<()> {
    for name in values.keys() {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(KbsError::RvpsError(format!(
                "reference value name {name:?} must be 1-128 of [A-Za-z0-9_.-]"
            )));
        }
    }
    let expires = now() + REFERENCE_VALUE_LIFETIME_SECS;
    for (name, v) in values {
        st.store
            .set_reference_value(name, v, expires)
            .map_err(|e| KbsError::RvpsError(e.to_string()))?;
    }
    st.reload().map_err(KbsError::PolicyEngineError)?;
    done(
        st,
        "set reference value",
        &values.keys().cloned().collect::<Vec<_>>().join(","),
        serde_json::json!({}),
    );
    Ok(())
}

/// One reference value by name, or all of them (`name` empty).
pub fn reference_values(st: &AppState, name: &str) -> Result<serde_json::Value> {
    let rv = st.reference_values();
    if name.is_empty() {
        return Ok(serde_json::Value::Object((*rv).clone()));
    }
    rv.get(name).cloned().ok_or_else(|| {
        KbsError::RvpsError(format!(
            "no reference value named {:?}",
            name.chars().take(128).collect::<String>()
        ))
    })
}

/// The newest `limit` audit records, newest first, of one `kind` or all.
pub fn audit(st: &AppState, limit: u32, kind: Option<&str>) -> Result<Vec<AuditRecord>> {
    // Refusal rows are queued, not waited for: commit them first so that
    // the answer holds every refusal made before it was asked for.
    st.audit_log.sync().map_err(KbsError::store)?;
    let recs = st.store.query_audit(limit, kind).map_err(internal)?;
    Metrics::inc(&st.metrics.admin_ok);
    Ok(recs)
}
