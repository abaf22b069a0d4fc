//! Appraisal: the attestation policy (Rego) maps verified claims and the
//! stored reference values to the EAR trustworthiness vector; the status is
//! the worst tier of the vector (AR4SI tiers as the `ear` crate computes them).
//!
//! The policy's `input` is the annotated evidence
//! `{"tee": "<name>", "<name>": {claims}, "report_data", "init_data",
//! "runtime_data_claims", "init_data_claims"}`; `data.reference` maps each
//! reference-value name to its list of values. It must define
//! `data.policy.trust_claims`, an object of AR4SI claim → integer.

use crate::policy::RegoPolicy;

/// The rule the attestation policy must define.
pub const TRUST_RULE: &str = "data.policy.trust_claims";

/// AR4SI trustworthiness claims, in EAR order.
pub const AR4SI_CLAIMS: [&str; 8] = [
    "instance-identity",
    "configuration",
    "executables",
    "file-system",
    "hardware",
    "runtime-opaque",
    "storage-opaque",
    "sourced-data",
];

/// The built-in attestation policy, for veil's normalized claims (every TEE).
///
/// - `executables` 2 if the measurement is in reference values
///   `measurement`, else 33 (warning: unknown software);
/// - `hardware` 2 if the evidence is hardware-signed and every TCB component
///   is at least reference value `min_tcb_<component>`; 96 if a TCB
///   component is too old; 97 for software-signed evidence (sim, sample);
/// - `configuration` 2 if debugging is off, 97 if it is on.
pub const DEFAULT_POLICY: &str = r#"package policy
import rego.v1

claims := input[input.tee]

default executables := 33
executables := 2 if {
	claims.measurement in data.reference.measurement
}

tcb_too_old if {
	some component, svn in claims.tcb
	minimum := data.reference[concat("", ["min_tcb_", component])][0]
	svn < minimum
}

default hardware := 97
hardware := 2 if {
	claims.hardware_backed == true
	not tcb_too_old
}
hardware := 96 if {
	claims.hardware_backed == true
	tcb_too_old
}

default configuration := 97
configuration := 2 if {
	claims.debug == false
}

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
}
"#;

/// The Trustee attestation-policy builtin: `query_reference_value(name)`
/// is the reference value stored under `name` (what `data.reference[name]`
/// holds), `null` when there is none — as Trustee's RVPS answers.
pub const QUERY_REFERENCE_VALUE: &str = "query_reference_value";

std::thread_local! {
    /// The reference values of the appraisal running on this thread
    /// (regorus evaluates synchronously, on the caller's thread).
    static REFERENCE: std::cell::RefCell<serde_json::Value> =
        const { std::cell::RefCell::new(serde_json::Value::Null) };
}

fn query_reference_value(args: Vec<regorus::Value>) -> anyhow::Result<regorus::Value> {
    let name = match args.as_slice() {
        [regorus::Value::String(name)] => name.to_string(),
        _ => {
            anyhow::bail!("{QUERY_REFERENCE_VALUE} takes one string, the reference value's name")
        }
    };
    let found = REFERENCE.with(|r| r.borrow().get(&name).cloned());
    Ok(found.map_or(regorus::Value::Null, regorus::Value::from))
}

/// Compile an attestation policy (Trustee's builtins available).
pub fn compile(text: &str) -> Result<RegoPolicy, String> {
    RegoPolicy::compile_with(text, TRUST_RULE, |engine| {
        engine
            .add_extension(
                QUERY_REFERENCE_VALUE.into(),
                1,
                Box::new(query_reference_value),
            )
            .map_err(|e| format!("{QUERY_REFERENCE_VALUE}: {e}"))
    })
}

/// AR4SI tier of one claim value.
pub fn tier(v: i64) -> (u8, &'static str) {
    match v.unsigned_abs() {
        0..=1 => (0, "none"),
        2..=31 => (1, "affirming"),
        32..=95 => (2, "warning"),
        _ => (3, "contraindicated"),
    }
}

/// Result of an appraisal.
#[derive(Debug, Clone)]
pub struct Appraisal {
    /// `ear.trustworthiness-vector`.
    pub vector: serde_json::Map<String, serde_json::Value>,
    /// `ear.status`.
    pub status: &'static str,
}

/// Run the policy.
pub fn appraise(
    policy: &RegoPolicy,
    input: &serde_json::Value,
    reference: serde_json::Value,
) -> Result<Appraisal, String> {
    // `query_reference_value` reads them from here during this evaluation.
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            REFERENCE.with(|r| *r.borrow_mut() = serde_json::Value::Null);
        }
    }
    REFERENCE.with(|r| *r.borrow_mut() = reference.clone());
    let _reset = Reset;
    let out = policy.eval(
        input.clone(),
        serde_json::json!({ "reference": reference }),
        TRUST_RULE,
    )?;
    let obj = out.as_object().ok_or_else(|| {
        format!("{TRUST_RULE} must be an object of AR4SI claim -> integer, got {out}")
    })?;
    let mut vector = serde_json::Map::new();
    let mut worst = (0u8, "none");
    for name in AR4SI_CLAIMS {
        let v = match obj.get(name) {
            None => 0,
            Some(v) => v
                .as_i64()
                .filter(|n| (-128..=127).contains(n))
                .ok_or_else(|| {
                    format!("trust claim {name} must be an integer in -128..=127, got {v}")
                })?,
        };
        let t = tier(v);
        if t.0 > worst.0 {
            worst = t;
        }
        vector.insert(name.to_string(), v.into());
    }
    if let Some(unknown) = obj.keys().find(|k| !AR4SI_CLAIMS.contains(&k.as_str())) {
        return Err(format!(
            "unknown trust claim {unknown:?}; known: {}",
            AR4SI_CLAIMS.join(", ")
        ));
    }
    Ok(Appraisal {
        vector,
        status: worst.1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(hw: bool, debug: bool, m: &str, snp: u64) -> serde_json::Value {
        serde_json::json!({"tee": "snp", "snp": {"hardware_backed": hw, "debug": debug, "measurement": m, "tcb": {"snp": snp}}})
    }

    #[test]
    fn default_policy_tiers() {
        let p = compile(DEFAULT_POLICY).unwrap();
        let rv = serde_json::json!({"measurement": ["aa"], "min_tcb_snp": [8]});
        let a = appraise(&p, &input(true, false, "aa", 8), rv.clone()).unwrap();
        assert_eq!(a.status, "affirming", "{:?}", a.vector);
        let a = appraise(&p, &input(true, false, "bb", 8), rv.clone()).unwrap();
        assert_eq!(a.status, "warning");
        assert_eq!(a.vector["executables"], 33);
        let a = appraise(&p, &input(true, false, "aa", 7), rv.clone()).unwrap();
        assert_eq!(a.status, "contraindicated");
        assert_eq!(a.vector["hardware"], 96);
        let a = appraise(&p, &input(false, false, "aa", 8), rv.clone()).unwrap();
        assert_eq!(a.vector["hardware"], 97);
        let a = appraise(&p, &input(true, true, "aa", 8), serde_json::json!({})).unwrap();
        assert_eq!(a.vector["configuration"], 97);
    }
}
