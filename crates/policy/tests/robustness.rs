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

/// A fixed image for generation properties.
struct FixedImage;

impl veil_policy::generate::ImageResolver for FixedImage {
    fn resolve(&self, _reference: &str) -> Result<veil_policy::generate::ImageInfo, String> {
        Ok(veil_policy::generate::ImageInfo {
            digest: format!("sha256:{}", "ab".repeat(32)),
            entrypoint: vec!["/bin/app".into()],
            cmd: vec!["--serve".into()],
            env: vec!["PATH=/bin".into()],
            working_dir: "/".into(),
            user: "1000:1000".into(),
            stop_signal: None,
        })
    }
}

/// Arbitrary JSON-ish values to put where Kubernetes expects something.
fn value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            proptest::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Pod-shaped documents with arbitrary values in the fields generation
    /// reads: never a panic; a generated policy is valid and its init-data
    /// parses back to the digest printed.
    #[test]
    fn arbitrary_pod_fields_never_panic(
        field in prop::sample::select(vec![
            "command", "args", "env", "envFrom", "workingDir", "securityContext", "volumeMounts",
            "ports", "resources", "lifecycle", "image", "name", "stdin", "tty",
        ]),
        pod_field in prop::sample::select(vec![
            "volumes", "securityContext", "initContainers", "hostNetwork", "shareProcessNamespace",
            "runtimeClassName", "serviceAccountName", "hostname",
        ]),
        kind in prop::sample::select(vec!["Pod", "Deployment", "Job", "CronJob", "StatefulSet"]),
        v in value(),
        w in value(),
    ) {
        let mut container = serde_json::json!({"name": "app", "image": "registry.example/app:1"});
        container[field] = v;
        let mut spec = serde_json::json!({"containers": [container]});
        spec[pod_field] = w;
        let pod_spec = serde_json::json!({"metadata": {"labels": {"app": "x"}}, "spec": spec});
        let doc = match kind {
            "Pod" => serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec}),
            "CronJob" => serde_json::json!({"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "c"},
                "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": pod_spec}}}}),
            k => serde_json::json!({"apiVersion": "apps/v1", "kind": k, "metadata": {"name": "d"},
                "spec": {"selector": {"matchLabels": {"app": "x"}}, "template": pod_spec}}),
        };
        // JSON is YAML.
        let text = doc.to_string();
        if let Ok(g) = veil_policy::generate::generate(&[&text], &FixedImage, &veil_policy::Settings::default()) {
            for wl in &g.workloads {
                prop_assert!(wl.policy.validate().is_ok());
                let p = ParsedInitData::parse(wl.init_data_toml.as_bytes()).unwrap();
                prop_assert_eq!(p.digest(), wl.digest.clone());
            }
        }
    }
}
