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

use std::path::Path;

use serde_json::Value;
use veil_attest::nvidia::evidence::{self, Appraisal};
use veil_attest::nvidia::ocsp;
use veil_attest::nvidia::rim_select::{self, RimFile};
use veil_kbs_client::protocol::TeePubKey;

/// What the operator supplies for GPU appraisal
/// ([`crate::state::ServerConfig::gpu_rim_dir`], `gpu_ocsp_dir`).
#[derive(Default, Clone, Copy)]
pub struct Operator<'a> {
    /// RIM cache directory.
    pub rim_dir: Option<&'a Path>,
    /// OCSP responses directory.
    pub ocsp_dir: Option<&'a Path>,
}

/// Most bytes read from a RIM directory in all.
pub const MAX_RIM_DIR_BYTES: u64 = 256 << 20;
/// Oldest OCSP response without `nextUpdate` the KBS accepts, seconds.
pub const OCSP_MAX_AGE_SECS: u64 = 7 * 24 * 3600;

/// The regular files directly in `dir`, each at most `limit` bytes, at most
/// `max_files` and `max_total` bytes in all: symbolic links are skipped,
/// never followed out of the directory (O_NOFOLLOW), nothing recurses.
pub fn read_dir_files(
    dir: &Path,
    what: &str,
    limit: usize,
    max_files: usize,
    max_total: u64,
) -> Result<Vec<RimFile>, String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let shown = || crate::text::escape_controls(&dir.display().to_string());
    let err = |e: std::io::Error| format!("reading {what} directory {}: {e}", shown());
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(err)? {
        if names.len() >= max_files {
            return Err(format!(
                "{what} directory {} holds more than {max_files} entries; keep only {what}s there",
                shown()
            ));
        }
        names.push(entry.map_err(err)?.file_name());
    }
    names.sort();
    let mut files = Vec::new();
    let mut total = 0u64;
    for name in names {
        let path = dir.join(&name);
        let file = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ELOOP) => continue,
            Err(e) => return Err(err(e)),
        };
        if !file.metadata().map_err(err)?.is_file() {
            continue;
        }
        let mut bytes = Vec::new();
        file.take(limit as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(err)?;
        total += bytes.len() as u64;
        if total > max_total {
            return Err(format!(
                "{what} directory {} holds more than {max_total} bytes of files",
                shown()
            ));
        }
        files.push(RimFile {
            name: name.to_string_lossy().into_owned(),
            bytes,
        });
    }
    Ok(files)
}

/// The candidate RIMs in an operator's RIM directory (`veil kbs serve
/// --gpu-rim-dir`, `veil attest verify-gpu --rim-dir`).
pub fn read_rim_dir(dir: &Path) -> Result<Vec<RimFile>, String> {
    read_dir_files(
        dir,
        "RIM",
        veil_attest::nvidia::rim::MAX_RIM_BYTES,
        rim_select::MAX_CANDIDATES,
        MAX_RIM_DIR_BYTES,
    )
}

/// The OCSP responses in an operator's directory; a file that is not one
/// is refused, named (fail closed: the operator put it there).
pub fn read_ocsp_dir(dir: &Path) -> Result<Vec<ocsp::Response>, String> {
    read_dir_files(
        dir,
        "OCSP response",
        ocsp::MAX_OCSP_BYTES,
        rim_select::MAX_CANDIDATES,
        MAX_RIM_DIR_BYTES,
    )?
    .iter()
    .map(|f| {
        ocsp::Response::parse(&f.bytes, &f.name).map_err(|e| {
            format!(
                "OCSP response directory {}: {e}",
                crate::text::escape_controls(&dir.display().to_string())
            )
        })
    })
    .collect()
}

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
    operator: &Operator<'_>,
) -> Result<Vec<(String, Value)>, String> {
    if additional.is_empty() {
        return Ok(Vec::new());
    }
    // An unreadable RIM or OCSP directory leaves measurements unappraised
    // or revocation unchecked, with the reason, for the policy to refuse.
    let mut dir_errors = Vec::new();
    let rims = match operator.rim_dir.map(read_rim_dir) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            dir_errors.push(format!("measurements not appraised: {e}"));
            None
        }
    };
    let rim_source = operator
        .rim_dir
        .map(|d| d.display().to_string())
        .unwrap_or_default();
    let responses = match operator.ocsp_dir.map(read_ocsp_dir) {
        None => None,
        Some(Ok(r)) => Some(r),
        Some(Err(e)) => {
            dir_errors.push(format!("revocation not checked: {e}"));
            None
        }
    };
    let fresh = ocsp::Freshness {
        now_unix: now,
        max_age_secs: OCSP_MAX_AGE_SECS,
        nonce: None,
    };
    let appraisal = Appraisal {
        rims: rims.as_deref().map(|r| (r, rim_source.as_str())),
        ocsp: responses.as_deref().map(|r| (r, &fresh)),
    };
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
            evidence::verify_appraised(ev, (!skip_nonce).then_some(&expected), now, &appraisal)
                .map_err(|e| match e.check() {
                    Some(check) => format!("NVIDIA GPU evidence refused by {check}: {e}"),
                    None => format!("NVIDIA GPU evidence: {e}"),
                })?;
        for mut d in devices {
            d.appraisal_errors.extend(dir_errors.iter().cloned());
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
        // Why the KBS could not appraise (RIM or OCSP trouble), if it tried.
        let why = |prefix: &str| -> String {
            let reasons: Vec<String> = c
                .get("appraisal_errors")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter(|e| e.starts_with(prefix))
                .map(crate::text::escape_controls)
                .collect();
            if reasons.is_empty() {
                String::new()
            } else {
                format!(" ({})", reasons.join("; "))
            }
        };
        if !flag("allow_debug") && c.get("measurements_appraised") != Some(&Value::Bool(true)) {
            return Err(format!(
                "{device}: check gpu.debug: not established that the GPU runs release (non-debug) firmware: its measurements were not appraised against NVIDIA's RIMs{}; give the KBS a RIM cache (--gpu-rim-dir) holding the report's driver and VBIOS RIMs, or set allow_debug in the policy's gpu rule to accept that",
                why("measurements")
            ));
        }
        if flag("require_revocation") && c.get("revocation_checked") != Some(&Value::Bool(true)) {
            return Err(format!(
                "{device}: check gpu.revocation: revocation of its certificates was not checked{}; give the KBS current OCSP responses (--gpu-ocsp-dir) for the device chain and the RIM signers",
                why("")
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
