//! The policy text: the rules followed by `policy_data := {...}`.
//!
//! As in Kata's genpolicy, the data object is the last statement of
//! `policy.rego`, as JSON (which is valid Rego). Trustee extracts that
//! object into the `agent_policy_claims` of its token; [`extract_policy_data`]
//! does the same here.

use crate::model::PolicyData;

/// The veil rules (format version 1).
pub const RULES: &str = include_str!("rules.rego");

/// The marker that starts the data object.
pub const POLICY_DATA_MARKER: &str = "\npolicy_data := ";

/// Errors reading a policy text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RegoTextError {
    #[error("policy.rego has no `policy_data := {{...}}` statement")]
    NoPolicyData,
    #[error("policy.rego `policy_data` is not valid veil policy data: {0}")]
    BadPolicyData(String),
}

/// Rebuild every object with its keys in sorted order, whatever map type
/// serde_json was compiled with.
fn sort_keys(v: serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => {
            let mut entries: Vec<_> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, sort_keys(v)))
                    .collect(),
            )
        }
        serde_json::Value::Array(a) => {
            serde_json::Value::Array(a.into_iter().map(sort_keys).collect())
        }
        other => other,
    }
}

/// Render the full `policy.rego`: the rules, then the data as pretty JSON with sorted keys.
pub fn render_policy(data: &PolicyData) -> String {
    let mut data = data.clone();
    data.canonicalize();
    // Sort object keys explicitly: another crate in the build may enable
    // serde_json's `preserve_order`, which would keep insertion order.
    let value = sort_keys(serde_json::to_value(&data).unwrap_or(serde_json::Value::Null));
    let json = serde_json::to_string_pretty(&value).unwrap_or_default();
    let mut out = String::with_capacity(RULES.len() + json.len() + 32);
    out.push_str(RULES.trim_end());
    out.push('\n');
    out.push_str(POLICY_DATA_MARKER);
    out.push_str(&json);
    out.push('\n');
    out
}

/// The raw JSON object that follows `policy_data :=` (the last one in the text).
pub fn extract_policy_json(policy: &str) -> Result<serde_json::Value, RegoTextError> {
    let start = policy
        .rfind(POLICY_DATA_MARKER)
        .ok_or(RegoTextError::NoPolicyData)?
        + POLICY_DATA_MARKER.len();
    let mut de = serde_json::Deserializer::from_str(&policy[start..]);
    let v: serde_json::Value = serde::Deserialize::deserialize(&mut de)
        .map_err(|e| RegoTextError::BadPolicyData(e.to_string()))?;
    de.end()
        .map_err(|e| RegoTextError::BadPolicyData(format!("trailing text: {e}")))?;
    Ok(v)
}

/// The typed policy data of a `policy.rego`.
pub fn extract_policy_data(policy: &str) -> Result<PolicyData, RegoTextError> {
    let v = extract_policy_json(policy)?;
    let data: PolicyData =
        serde_json::from_value(v).map_err(|e| RegoTextError::BadPolicyData(e.to_string()))?;
    data.validate().map_err(RegoTextError::BadPolicyData)?;
    Ok(data)
}
