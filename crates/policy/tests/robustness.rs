//! Property tests: arbitrary input never panics and never makes evaluation
//! fail open.

use proptest::prelude::*;
use veil_agent_api::AgentMessage;
use veil_policy::enforce::PolicyEngine;
use veil_policy::initdata::ParsedInitData;

const GOLDEN: &str = include_str!("data/golden/pod-multi.web.toml");

fn engine() -> PolicyEngine {
    let p = ParsedInitData::parse(GOLDEN.as_bytes()).unwrap();
    PolicyEngine::from_init_data(&p.init_data).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any create_container the host makes up is decided (allowed or denied
    /// with reasons), never an engine error; and only exact policy matches pass.
    #[test]
    fn arbitrary_create_container_is_decided(
        args in proptest::collection::vec(".{0,12}", 1..4),
        env in proptest::collection::vec("[A-Z_]{1,8}=.{0,12}", 0..6),
        cwd in "/[a-z]{0,6}",
        uid in 0u32..3000,
        name in "(api|worker|migrate|[a-z]{1,6})",
    ) {
        let mut e = engine();
        let v = serde_json::json!({"api_version": 1, "kind": "create_sandbox", "request": {
            "sandbox_id": "sb", "hostname": "web", "pod_name": "web", "pod_namespace": "prod"}});
        prop_assert!(e.enforce(&AgentMessage::from_value(v).unwrap()).unwrap().allowed);
        let v = serde_json::json!({"api_version": 1, "kind": "create_container", "request": {
            "container_id": "c1", "name": name,
            "image": {"reference": "x", "digest": "sha256:b33d5f797a33f95164df0284b403e91987025642adf9fe880442caa323fdae22"},
            "process": {"args": args, "env": env, "cwd": cwd, "user": {"uid": uid, "gid": uid}}}});
        if let Ok(msg) = AgentMessage::from_value(v) {
            let d = e.evaluate(&msg).unwrap();
            // No generated request carries the api container's required env, so none may pass.
            prop_assert!(!d.allowed);
            prop_assert!(!d.violations.is_empty());
        }
    }

    #[test]
    fn arbitrary_yaml_never_panics(text in "(?s).{0,300}") {
        let _ = veil_policy::generate::parse_documents(&[&text]);
    }
}

#[test]
fn arbitrary_policy_text_is_refused_cleanly() {
    for text in [
        "",
        "package agent_policy\n",
        "policy_data := {",
        "\npolicy_data := {\"version\": 2}",
        "package x\n\npolicy_data := []\n",
    ] {
        assert!(PolicyEngine::new(text).is_err(), "{text:?}");
    }
    let bad = GOLDEN.replace("\"version\": 1", "\"version\": 7");
    let p = ParsedInitData::parse(bad.as_bytes()).unwrap();
    let e = PolicyEngine::from_init_data(&p.init_data)
        .unwrap_err()
        .to_string();
    assert!(e.contains("version"), "{e}");
}
