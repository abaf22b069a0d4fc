//! Rego policies (regorus, Rego v1): the compiled-policy wrapper, resource
//! policies with their scopes, and the shipped templates.
//!
//! Resource policy: `input` = the verified token claims, `data` =
//! `{"plugin": "resource", "resource-path": [repo, type, tag], "query": {…}}`;
//! the rule `data.policy.allow` must be `true`. A policy is set for a scope —
//! every resource (`""`), a repository (`repo`), `repo/type`, or one resource
//! (`repo/type/tag`) — and the most specific one that exists decides. With
//! no policy at all, everything is denied.

use std::num::NonZeroU32;
use std::time::Duration;

/// Longest policy text accepted.
pub const MAX_POLICY_BYTES: usize = 256 * 1024;
/// Evaluation time limit per decision.
pub const EVAL_TIME_LIMIT: Duration = Duration::from_secs(2);

/// A compiled Rego policy.
#[derive(Clone)]
pub struct RegoPolicy {
    engine: regorus::Engine,
    text: String,
}

impl std::fmt::Debug for RegoPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegoPolicy({} bytes)", self.text.len())
    }
}

fn new_engine() -> regorus::Engine {
    let mut engine = regorus::Engine::new();
    engine.set_rego_v0(false);
    engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
        limit: EVAL_TIME_LIMIT,
        check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
    });
    engine
}

impl RegoPolicy {
    /// Parse a policy and check that `rule` evaluates (against empty input).
    pub fn compile(text: &str, rule: &str) -> Result<Self, String> {
        Self::compile_with(text, rule, |_| Ok(()))
    }

    /// [`compile`](Self::compile) on an engine `setup` prepared first (with
    /// extension functions, say).
    pub fn compile_with(
        text: &str,
        rule: &str,
        setup: impl FnOnce(&mut regorus::Engine) -> Result<(), String>,
    ) -> Result<Self, String> {
        if text.len() > MAX_POLICY_BYTES {
            return Err(format!(
                "policy is {} bytes, limit {MAX_POLICY_BYTES}",
                text.len()
            ));
        }
        let mut engine = new_engine();
        setup(&mut engine)?;
        engine
            .add_policy("policy.rego".into(), text.into())
            .map_err(|e| format!("Rego (v1 syntax: `allow if {{ … }}`) does not parse: {e}"))?;
        let p = RegoPolicy {
            engine,
            text: text.to_string(),
        };
        p.eval(serde_json::json!({}), serde_json::json!({}), rule)
            .map_err(|e| format!("policy does not evaluate {rule}: {e}"))?;
        Ok(p)
    }

    /// The policy text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Evaluate `rule` for an input and extra data. `Null` when undefined.
    pub fn eval(
        &self,
        input: serde_json::Value,
        data: serde_json::Value,
        rule: &str,
    ) -> Result<serde_json::Value, String> {
        let mut engine = self.engine.clone();
        engine
            .add_data(regorus::Value::from(data))
            .map_err(|e| format!("policy data: {e}"))?;
        engine.set_input(regorus::Value::from(input));
        let v = engine
            .eval_rule(rule.to_string())
            .map_err(|e| e.to_string())?;
        if v == regorus::Value::Undefined {
            return Ok(serde_json::Value::Null);
        }
        let s = v.to_json_str().map_err(|e| e.to_string())?;
        serde_json::from_str(&s).map_err(|e| e.to_string())
    }
}

/// The rule a resource policy must define.
pub const RESOURCE_RULE: &str = "data.policy.allow";

/// Compile a resource policy.
pub fn compile_resource_policy(text: &str) -> Result<RegoPolicy, String> {
    let p = RegoPolicy::compile(text, RESOURCE_RULE)?;
    Ok(p)
}

/// Validate a policy scope: `""`, `repo`, `repo/type` or `repo/type/tag`.
pub fn validate_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Ok(());
    }
    let segs: Vec<&str> = scope.split('/').collect();
    if segs.len() > 3 {
        return Err(format!(
            "scope {scope:?} has {} segments, at most 3",
            segs.len()
        ));
    }
    let padded = match segs.len() {
        1 => format!("{scope}/x/x"),
        2 => format!("{scope}/x"),
        _ => scope.to_string(),
    };
    veil_kbs_client::ResourcePath::parse(&padded)
        .map(|_| ())
        .map_err(|e| format!("scope {scope:?}: {e}"))
}

/// Scopes that apply to a resource, most specific first.
pub fn scopes_for(path: &veil_kbs_client::ResourcePath) -> [String; 4] {
    let [r, t, g] = path.segments();
    [
        format!("{r}/{t}/{g}"),
        format!("{r}/{t}"),
        r.to_string(),
        String::new(),
    ]
}

/// Shipped resource-policy templates.
pub mod templates {
    /// Release every resource (to any token that passed attestation and the
    /// built-in sim/sample guards).
    pub const ALLOW_ALL: &str = "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tdata.plugin == \"resource\"\n}\n";

    /// Deny everything.
    pub const DENY_ALL: &str = "package policy\nimport rego.v1\n\ndefault allow := false\n";

    /// Every submodule of the token must be `affirming`.
    pub const AFFIRMING: &str = "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tcount(input.submods) > 0\n\tevery _, sub in input.submods {\n\t\tsub[\"ear.status\"] == \"affirming\"\n\t}\n}\n";

    fn quote(s: &str) -> String {
        serde_json::Value::String(s.to_string()).to_string()
    }

    /// Release only to a TEE launched with this init-data digest (hex).
    pub fn init_data_digest(digest_hex: &str) -> Result<String, String> {
        let d = digest_hex.trim().to_ascii_lowercase();
        if !(d.len() == 64 || d.len() == 96 || d.len() == 128)
            || !d.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err(format!(
                "init-data digest must be 64, 96 or 128 hex characters (sha256/384/512), got {:?}",
                digest_hex
            ));
        }
        Ok(format!(
            "package policy\nimport rego.v1\n\ndefault allow := false\n\nevidence := input.submods.cpu0[\"ear.veraison.annotated-evidence\"]\n\nallow if {{\n\tevidence.init_data == {}\n}}\n",
            quote(&d)
        ))
    }

    /// Release only to a TEE whose launch measurement is one of `measurements`
    /// (hex), with debugging off and every TCB component at least its minimum.
    pub fn measurement(
        measurements: &[String],
        min_tcb: &std::collections::BTreeMap<String, u64>,
    ) -> Result<String, String> {
        if measurements.is_empty() {
            return Err("at least one measurement is required".into());
        }
        let mut set = Vec::new();
        for m in measurements {
            let m = m.trim().to_ascii_lowercase();
            if m.is_empty() || m.len() > 256 || !m.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("measurement {m:?} is not hex"));
            }
            set.push(quote(&m));
        }
        let tcb = serde_json::to_string(min_tcb).map_err(|e| e.to_string())?;
        Ok(format!(
            "package policy\nimport rego.v1\n\ndefault allow := false\n\nevidence := input.submods.cpu0[\"ear.veraison.annotated-evidence\"]\nclaims := evidence[evidence.tee]\n\nmeasurements := {{{}}}\nmin_tcb := {tcb}\n\nallow if {{\n\tclaims.measurement in measurements\n\tclaims.debug == false\n\tevery component, min in min_tcb {{\n\t\tclaims.tcb[component] >= min\n\t}}\n}}\n",
            set.join(", ")
        ))
    }

    /// Azure key-release style policy: `{"anyOf": [{"allOf": [{"claim": "tcb.snp", "equals": 8}, …]}, …]}`.
    /// A claim is a dotted path into the TEE's normalized claims.
    pub fn claims(spec: &serde_json::Value) -> Result<String, String> {
        let any = spec
            .get("anyOf")
            .and_then(|v| v.as_array())
            .ok_or("the key-release policy needs an \"anyOf\" array")?;
        if any.is_empty() {
            return Err("\"anyOf\" is empty".into());
        }
        let mut rules = String::new();
        for (i, group) in any.iter().enumerate() {
            let all = group
                .get("allOf")
                .and_then(|v| v.as_array())
                .ok_or_else(|| format!("anyOf[{i}] needs an \"allOf\" array"))?;
            if all.is_empty() {
                return Err(format!("anyOf[{i}].allOf is empty"));
            }
            rules.push_str("\nallow if {\n");
            for (j, cond) in all.iter().enumerate() {
                let claim = cond
                    .get("claim")
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("anyOf[{i}].allOf[{j}] needs a \"claim\" string"))?;
                let value = cond
                    .get("equals")
                    .ok_or_else(|| format!("anyOf[{i}].allOf[{j}] needs an \"equals\" value"))?;
                if claim.is_empty() || claim.split('.').any(str::is_empty) {
                    return Err(format!("anyOf[{i}].allOf[{j}]: bad claim path {claim:?}"));
                }
                let path: String = claim
                    .split('.')
                    .map(|k| format!("[{}]", quote(k)))
                    .collect();
                rules.push_str(&format!("\tclaims{path} == {value}\n"));
            }
            rules.push_str("}\n");
        }
        Ok(format!(
            "package policy\nimport rego.v1\n\ndefault allow := false\n\nevidence := input.submods.cpu0[\"ear.veraison.annotated-evidence\"]\nclaims := evidence[evidence.tee]\n{rules}"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_claims(
        tee: &str,
        measurement: &str,
        snp: u64,
        debug: bool,
        init: &str,
    ) -> serde_json::Value {
        serde_json::json!({"submods": {"cpu0": {"ear.status": "affirming", "ear.veraison.annotated-evidence": {
            "tee": tee, "init_data": init,
            tee: {"measurement": measurement, "debug": debug, "tcb": {"snp": snp}, "platform": {"product": "Genoa"}}
        }}}})
    }

    fn allowed(text: &str, input: serde_json::Value) -> bool {
        let p = compile_resource_policy(text).unwrap();
        p.eval(
            input,
            serde_json::json!({"plugin": "resource", "resource-path": ["a", "b", "c"]}),
            RESOURCE_RULE,
        )
        .unwrap()
            == serde_json::Value::Bool(true)
    }

    #[test]
    fn templates_decide() {
        let good = token_claims("snp", "aa", 8, false, "11");
        assert!(allowed(templates::ALLOW_ALL, good.clone()));
        assert!(!allowed(templates::DENY_ALL, good.clone()));
        assert!(allowed(templates::AFFIRMING, good.clone()));
        let t = templates::init_data_digest(&"11".repeat(32)).unwrap();
        assert!(!allowed(&t, good.clone()));
        assert!(allowed(
            &t,
            token_claims("snp", "aa", 8, false, &"11".repeat(32))
        ));
        let min = [("snp".to_string(), 8u64)].into_iter().collect();
        let t = templates::measurement(&["AA".into()], &min).unwrap();
        assert!(allowed(&t, good.clone()));
        assert!(!allowed(&t, token_claims("snp", "aa", 7, false, "")));
        assert!(!allowed(&t, token_claims("snp", "aa", 8, true, "")));
        assert!(!allowed(&t, token_claims("snp", "bb", 8, false, "")));
        let spec = serde_json::json!({"anyOf": [{"allOf": [{"claim": "platform.product", "equals": "Genoa"}, {"claim": "debug", "equals": false}]}]});
        let t = templates::claims(&spec).unwrap();
        assert!(allowed(&t, good.clone()));
        assert!(!allowed(&t, token_claims("snp", "aa", 8, true, "")));
    }

    #[test]
    fn refuses_bad_policies() {
        assert!(compile_resource_policy("package policy\nallow { true }").is_err());
        assert!(compile_resource_policy("not rego").is_err());
        assert!(validate_scope("a/b").is_ok());
        assert!(validate_scope("a/../b").is_err());
        assert!(validate_scope("a/b/c/d").is_err());
    }
}
