//! Table-driven allow/deny suite in the style of Kata's `testcases.json`:
//! every case gives a guest state and one agent request, whether it must be
//! allowed, and for denials a fragment of the explanation and the field path.

use serde::Deserialize;
use veil_agent_api::AgentMessage;
use veil_policy::enforce::{GuestState, PolicyEngine};
use veil_policy::model::PolicyData;
use veil_policy::rego::render_policy;
use veil_policy::settings::Settings;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/suite");

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    description: String,
    allowed: bool,
    state: GuestState,
    kind: String,
    request: serde_json::Value,
    #[serde(default)]
    error_contains: Option<String>,
    #[serde(default)]
    field: Option<String>,
}

/// The suite's policy: `policy_data.json` plus the default platform env and mounts.
pub fn suite_policy() -> String {
    let text = std::fs::read_to_string(format!("{DATA}/policy_data.json")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let s = Settings::default();
    v["platform_env"] = serde_json::to_value(&s.platform_env).unwrap();
    v["default_mounts"] = serde_json::to_value(&s.default_mounts).unwrap();
    let data: PolicyData = serde_json::from_value(v).unwrap();
    data.validate().unwrap();
    render_policy(&data)
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(format!("{DATA}/testcases.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn testcases() {
    let cases = cases();
    assert!(cases.len() >= 60, "only {} cases", cases.len());
    let mut engine = PolicyEngine::new(&suite_policy()).unwrap();
    let mut failures = Vec::new();
    for c in &cases {
        assert_eq!(c.request["kind"], c.kind.as_str(), "{}", c.description);
        let msg = match AgentMessage::from_value(c.request.clone()) {
            Ok(m) => m,
            Err(e) => {
                // Malformed requests never reach the policy: the agent refuses them.
                if c.allowed || c.error_contains.as_deref() != Some("!malformed") {
                    failures.push(format!("{}: request does not decode: {e}", c.description));
                }
                continue;
            }
        };
        engine.set_state(c.state.clone());
        let d = engine.evaluate(&msg).unwrap();
        if d.allowed != c.allowed {
            failures.push(format!(
                "{}: expected allowed={}, got {}",
                c.description, c.allowed, d
            ));
            continue;
        }
        if let Some(want) = &c.error_contains {
            if !d
                .violations
                .iter()
                .any(|v| v.message.contains(want.as_str()))
            {
                failures.push(format!(
                    "{}: no violation mentions {want:?}; got: {d}",
                    c.description
                ));
            }
        }
        if let Some(field) = &c.field {
            if !d.violations.iter().any(|v| &v.field == field) {
                failures.push(format!(
                    "{}: no violation on field {field:?}; got: {:?}",
                    c.description,
                    d.violations.iter().map(|v| &v.field).collect::<Vec<_>>()
                ));
            }
        }
        for v in &d.violations {
            assert_eq!(v.rule, c.kind, "{}", c.description);
            assert!(
                v.message.starts_with(&format!("{}:", c.kind)),
                "{}",
                v.message
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn every_request_kind_is_covered() {
    let cases = cases();
    for k in veil_agent_api::RequestKind::ALL {
        let n = |allowed: bool| {
            cases
                .iter()
                .filter(|c| c.kind == k.as_str() && c.allowed == allowed)
                .count()
        };
        // bench_volume: no workload policy admits it (see
        // bench_volume_is_admitted_only_by_the_bench_policy).
        if !matches!(k, veil_agent_api::RequestKind::BenchVolume) {
            assert!(n(true) >= 1, "no allowed case for {k}");
        }
        if !matches!(k, veil_agent_api::RequestKind::GetEvidence) {
            assert!(n(false) >= 1, "no denied case for {k}");
        }
    }
}

/// `bench_volume` is refused by name by a workload policy (and by one
/// whose data predates the field) and admitted only when the policy data
/// says `sandbox.bench_volume: true`, as `veil bench volume` generates it.
#[test]
fn bench_volume_is_admitted_only_by_the_bench_policy() {
    let msg = AgentMessage::from_value(serde_json::json!({
        "api_version": 1, "kind": "bench_volume", "request": {"seconds": 1}
    }))
    .unwrap();
    let text = suite_policy();
    let d = PolicyEngine::new(&text).unwrap().evaluate(&msg).unwrap();
    assert!(!d.allowed);
    assert_eq!(
        d.to_string(),
        "bench_volume: refused by policy: sandbox.bench_volume is false (only the policy `veil bench volume` generates admits it)"
    );
    assert_eq!(
        (
            d.violations[0].field.as_str(),
            d.violations[0].expected.as_str(),
            d.violations[0].actual.as_str()
        ),
        ("sandbox.bench_volume", "true", "false")
    );
    // The field is omitted when false: a workload's init-data is unchanged.
    assert!(
        !text.contains("bench_volume\":"),
        "the data names the field"
    );
    let mut data = veil_policy::PolicyEngine::new(&text)
        .unwrap()
        .data()
        .clone();
    data.sandbox.bench_volume = true;
    let bench = render_policy(&data);
    assert!(bench.contains("\"bench_volume\": true"));
    let d = PolicyEngine::new(&bench).unwrap().evaluate(&msg).unwrap();
    assert!(d.allowed, "{d}");
}

#[test]
fn denial_explains_rule_field_expected_and_actual() {
    let mut engine = PolicyEngine::new(&suite_policy()).unwrap();
    let case = cases()
        .into_iter()
        .find(|c| c.description == "create_container: env value changed")
        .unwrap();
    engine.set_state(case.state);
    let d = engine
        .evaluate(&AgentMessage::from_value(case.request).unwrap())
        .unwrap();
    assert!(!d.allowed);
    let v = &d.violations[0];
    assert_eq!(v.rule, "create_container");
    assert_eq!(v.field, "process.env[1]");
    assert_eq!(v.expected, "DB_HOST=db.internal");
    assert_eq!(v.actual, "DB_HOST=evil");
    assert_eq!(
        v.message,
        r#"create_container: env "DB_HOST=evil" matches no rule for container "api"; allowed: DB_HOST=db.internal"#
    );
}

#[test]
fn lifecycle_sequence_updates_state() {
    let mut engine = PolicyEngine::new(&suite_policy()).unwrap();
    let cases = cases();
    let req = |desc: &str| {
        AgentMessage::from_value(
            cases
                .iter()
                .find(|c| c.description == desc)
                .unwrap()
                .request
                .clone(),
        )
        .unwrap()
    };
    for desc in [
        "create_sandbox: expected pod",
        "create_container: api as generated",
    ] {
        assert!(engine.enforce(&req(desc)).unwrap().allowed, "{desc}");
    }
    let start: AgentMessage = AgentMessage::from_value(serde_json::json!(
        {"api_version": 1, "kind": "start_container", "request": {"container_id": "c-api"}}
    ))
    .unwrap();
    // Exec before start is refused; after start it is allowed, once.
    let exec = req("exec_process: health check");
    assert!(!engine.enforce(&exec).unwrap().allowed);
    assert!(engine.enforce(&start).unwrap().allowed);
    assert!(!engine.enforce(&start).unwrap().allowed, "second start");
    assert!(engine.enforce(&exec).unwrap().allowed);
    let again = engine.enforce(&exec).unwrap();
    assert!(!again.allowed && again.to_string().contains("already exists"));
    // A denied request changes nothing.
    let before = engine.state().clone();
    assert!(
        !engine
            .enforce(&req("create_container: privileged"))
            .unwrap()
            .allowed
    );
    assert_eq!(engine.state(), &before);
}

#[test]
fn unknown_rule_is_denied_not_allowed() {
    // A policy with data but without the rules: every request is denied, with a reason.
    let policy = suite_policy();
    let data_only = format!(
        "package agent_policy\n{}",
        &policy[policy.rfind("\npolicy_data := ").unwrap()..]
    );
    let mut engine = PolicyEngine::new(&data_only).unwrap();
    let msg = AgentMessage::from_value(serde_json::json!(
        {"api_version": 1, "kind": "get_evidence", "request": {}}
    ))
    .unwrap();
    let d = engine.evaluate(&msg).unwrap();
    assert!(!d.allowed);
    assert!(d.to_string().contains("no rule"), "{d}");
}
