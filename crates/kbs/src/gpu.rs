//! Composite CPU + GPU appraisal (issue 18): the KBS protocol's
//! `additional_evidence` (a JSON map `{"nvidia": <Trustee device
//! evidence>}`) verified at attestation time, each GPU becoming a token
//! submodule `gpu<i>`; and a resource policy's GPU requirements
//! (`gpu := {...}` in the Rego policy) checked at release, each denial
//! naming the device and the check.
//!
//! Binding: the CPU evidence's report data covers the additional evidence
//! string (Trustee's runtime data), and each GPU report's requester nonce
//! must equal Trustee's device runtime-data digest
//! `SHA-384(JCS({nonce, tee-pubkey}))` truncated to 32 bytes, so GPU and
//! CPU evidence are tied to the same session nonce and TEE key. A KBS in
//! dev mode can be told to skip the GPU nonce comparison
//! ([`crate::state::ServerConfig::dev_gpu_nonce_via_cpu_evidence`], for
//! recorded evidence whose nonce is fixed); the submodule then says
//! `nonce_bound: false` and GPU requirements refuse it unless the policy
//! sets `allow_unbound_nonce`.

use serde_json::Value;
use veil_attest::nvidia::evidence;
use veil_kbs_client::protocol::TeePubKey;

/// The Rego rule a resource policy defines to require attested GPUs.
pub const GPU_RULE: &str = "data.policy.gpu";

/// Whether a Rego policy text defines the `gpu` rule at top level.
pub fn defines_gpu_rule(text: &str) -> bool {
    text.lines().any(|l| {
        let rest = l.strip_prefix("gpu").unwrap_or("");
        l.starts_with("gpu") && matches!(rest.trim_start().chars().next(), Some(':' | '=' | '{'))
            || l.starts_with("gpu if")
    })
}

/// Verify the additional evidence of an attestation; returns the token
/// submodules to add (`gpu0`, `gpu1`, …). Empty evidence adds none.
pub fn appraise_additional(
    additional: &str,
    nonce: &str,
    tee_pubkey: &TeePubKey,
    now: u64,
    skip_nonce: bool,
) -> Result<Vec<(String, Value)>, String> {
    if additional.is_empty() {
        return Ok(Vec::new());
    }
    let map: serde_json::Map<String, Value> = serde_json::from_str(additional).map_err(|e| {
        format!("additional_evidence is not a JSON object of TEE name → evidence: {e}")
    })?;
    let mut out = Vec::new();
    for (tee, ev) in &map {
        if tee != "nvidia" {
            return Err(format!(
                "additional evidence for {:?} is not supported (known: nvidia)",
                crate::text::escape_controls(&tee.chars().take(32).collect::<String>())
            ));
        }
        let digest = veil_kbs_client::binding::digest_of(
            &veil_kbs_client::binding::runtime_data_object(nonce, tee_pubkey, None),
        );
        let mut expected = [0u8; 32];
        expected.copy_from_slice(&digest[..32]);
        let devices =
            evidence::verify(ev, (!skip_nonce).then_some(&expected), now).map_err(|e| {
                match e.check() {
                    Some(check) => format!("NVIDIA GPU evidence refused by {check}: {e}"),
                    None => format!("NVIDIA GPU evidence: {e}"),
                }
            })?;
        for d in devices {
            let mut claims = d.to_json();
            claims["nonce_bound"] = (!skip_nonce).into();
            let status = if d.claims.measurements_appraised {
                "affirming"
            } else {
                "warning"
            };
            out.push((
                d.name(),
                serde_json::json!({
                    "ear.status": status,
                    "ear.veraison.annotated-evidence": {"tee": "nvidia", "nvidia": claims},
                }),
            ));
        }
    }
    Ok(out)
}

/// Compare dotted version strings numerically (`550.90.07` ≥ `550.54`).
fn version_at_least(actual: &str, min: &str) -> Option<bool> {
    let parse = |s: &str| -> Option<Vec<u64>> { s.split('.').map(|p| p.parse().ok()).collect() };
    let (a, m) = (parse(actual)?, parse(min)?);
    let len = a.len().max(m.len());
    let pad = |v: &[u64]| {
        (0..len)
            .map(|i| v.get(i).copied().unwrap_or(0))
            .collect::<Vec<_>>()
    };
    Some(pad(&a) >= pad(&m))
}

/// Check a token's GPU submodules against a policy's `gpu` requirements:
/// `min_count` (default 1), `min_driver`, `min_vbios`, `allow_debug`
/// (default false: measurements must have been appraised against NVIDIA's
/// RIMs, the only evidence of which firmware runs), `require_revocation`,
/// `allow_unbound_nonce`. The refusal names the device and the check.
pub fn check_requirements(claims: &Value, req: &Value) -> Result<(), String> {
    let obj = req
        .as_object()
        .ok_or_else(|| format!("the policy's gpu rule must be an object, got {req}"))?;
    const KNOWN: [&str; 6] = [
        "min_count",
        "min_driver",
        "min_vbios",
        "allow_debug",
        "require_revocation",
        "allow_unbound_nonce",
    ];
    if let Some(k) = obj.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "the policy's gpu rule has unknown field {k:?} (known: {})",
            KNOWN.join(", ")
        ));
    }
    let flag = |k: &str| obj.get(k).and_then(Value::as_bool).unwrap_or(false);
    let min_count = obj.get("min_count").and_then(Value::as_u64).unwrap_or(1);
    let gpus: Vec<(&String, &Value)> = claims
        .get("submods")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .filter(|(k, _)| k.starts_with("gpu"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    if (gpus.len() as u64) < min_count {
        return Err(format!(
            "check gpu.count: the policy requires at least {min_count} attested GPU(s), the token has {}; send GPU evidence as additional_evidence when attesting",
            gpus.len()
        ));
    }
    for (name, sub) in gpus {
        let c = sub
            .pointer("/ear.veraison.annotated-evidence/nvidia")
            .ok_or_else(|| format!("{name}: the token's submodule has no nvidia claims"))?;
        let field = |k: &str| c.get(k).and_then(Value::as_str).unwrap_or("");
        let device = format!(
            "{name} (uuid {})",
            crate::text::escape_controls(field("uuid"))
        );
        for (key, claim, what) in [
            ("min_driver", "driver_version", "driver"),
            ("min_vbios", "vbios_version", "VBIOS"),
        ] {
            if let Some(min) = obj.get(key) {
                let min = min
                    .as_str()
                    .ok_or_else(|| format!("gpu.{key} must be a string"))?;
                let actual = field(claim);
                match version_at_least(actual, min) {
                    Some(true) => {}
                    Some(false) => {
                        return Err(format!(
                            "{device}: check gpu.{claim}: {what} version below the policy's minimum: expected >= {min}, got {actual}"
                        ));
                    }
                    None => {
                        return Err(format!(
                            "{device}: check gpu.{claim}: cannot compare {what} version {actual:?} with {min:?} (dotted numbers expected)"
                        ));
                    }
                }
            }
        }
        if !flag("allow_debug") && c.get("measurements_appraised") != Some(&Value::Bool(true)) {
            return Err(format!(
                "{device}: check gpu.debug: not established that the GPU runs release (non-debug) firmware: its measurements were not appraised against NVIDIA's RIMs; set allow_debug in the policy's gpu rule to accept that"
            ));
        }
        if flag("require_revocation") && c.get("revocation_checked") != Some(&Value::Bool(true)) {
            return Err(format!(
                "{device}: check gpu.revocation: revocation of its certificates was not checked"
            ));
        }
        if !flag("allow_unbound_nonce") && c.get("nonce_bound") != Some(&Value::Bool(true)) {
            return Err(format!(
                "{device}: check gpu.nonce: the GPU report's nonce was not compared with this session's (KBS in dev GPU-nonce mode); set allow_unbound_nonce in the policy's gpu rule to accept that"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_compare_numerically() {
        assert_eq!(version_at_least("550.90.07", "550.54"), Some(true));
        assert_eq!(version_at_least("550.90.07", "550.100"), Some(false));
        assert_eq!(version_at_least("96.00.9f.00.01", "96"), None);
        assert_eq!(version_at_least("550", "550.0.0"), Some(true));
    }

    #[test]
    fn requirements_name_the_device_and_the_check() {
        let claims = serde_json::json!({"submods": {"cpu0": {}, "gpu0": {"ear.veraison.annotated-evidence": {"nvidia": {
            "uuid": "GPU-1", "driver_version": "550.90.07", "vbios_version": "96.00.9F.00.01",
            "measurements_appraised": false, "revocation_checked": false, "nonce_bound": true}}}}});
        check_requirements(
            &claims,
            &serde_json::json!({"min_driver": "550", "allow_debug": true}),
        )
        .unwrap();
        let e = check_requirements(
            &claims,
            &serde_json::json!({"min_driver": "555", "allow_debug": true}),
        )
        .unwrap_err();
        assert!(
            e.starts_with("gpu0 (uuid GPU-1): check gpu.driver_version"),
            "{e}"
        );
        let e = check_requirements(&claims, &serde_json::json!({})).unwrap_err();
        assert!(e.contains("check gpu.debug"), "{e}");
        let e = check_requirements(
            &claims,
            &serde_json::json!({"min_count": 2, "allow_debug": true}),
        )
        .unwrap_err();
        assert!(e.contains("check gpu.count"), "{e}");
        let e = check_requirements(&claims, &serde_json::json!({"mni_driver": "1"})).unwrap_err();
        assert!(e.contains("unknown field \"mni_driver\""), "{e}");
    }
}
