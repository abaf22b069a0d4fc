//! Trustee interop, server side (issue 19): an attestation policy in the
//! style of Trustee's default one (its builtin `query_reference_value`
//! over reference values, its `input.<tee>` shape) appraises as Trustee
//! would; sample evidence carrying init-data is accepted with the init-data
//! marked unbound.

mod common;

use base64::Engine;
use common::{Options, start};
use veil_kbs_client::{KeyType, TeeKeyPair};

/// Written here for these tests (not Trustee's text): the same builtin and
/// input shape as Trustee's default CPU policy, for the `sample` TEE.
const TRUSTEE_STYLE_POLICY: &str = r#"package policy
import rego.v1

default executables := 33
default hardware := 97
default configuration := 36

executables := 3 if {
	input.sample
	input.sample.launch_digest in query_reference_value("launch_digest")
}

hardware := 2 if {
	input.sample
	input.sample.svn in query_reference_value("svn")
	input.sample.platform_version.major == query_reference_value("major_version")
	input.sample.platform_version.minor >= query_reference_value("minimum_minor_version")
}

configuration := 2 if {
	input.sample
	input.sample.debug == false
}

trust_claims := {
	"executables": executables,
	"hardware": hardware,
	"configuration": configuration,
}
"#;

/// `/auth` + `/attest` with sample evidence (and `init_data` TOML if
/// given); returns the token's `submods.cpu0`.
fn attest_sample(f: &common::Fixture, init_data: Option<&str>) -> serde_json::Value {
    let kp = TeeKeyPair::generate(KeyType::EcP256).unwrap();
    let jwk = kp.public_jwk();
    let (cookie, nonce) = f.auth("sample");
    let digest = veil_kbs_client::binding::binding_digest(&nonce, &jwk, "");
    let mut att = serde_json::json!({
        "runtime-data": {"nonce": nonce, "tee-pubkey": jwk},
        "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64::engine::general_purpose::STANDARD.encode(digest)}, "additional_evidence": ""},
    });
    if let Some(body) = init_data {
        att["init-data"] = serde_json::json!({"format": "toml", "body": body});
    }
    let r = f.post_json("/kbs/v0/attest", Some(&cookie), &att.to_string());
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let payload = v["token"].as_str().unwrap().split('.').nth(1).unwrap();
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    claims["submods"]["cpu0"].clone()
}

fn sample_kbs() -> common::Fixture {
    start(Options {
        allow_sample: true,
        ..Options::default()
    })
}

#[test]
fn trustee_style_policy_uses_query_reference_value() {
    let f = sample_kbs();
    f.admin
        .set_attestation_policy(TRUSTEE_STYLE_POLICY)
        .unwrap();
    // No reference values yet: the builtin answers null, nothing affirms.
    let cpu0 = attest_sample(&f, None);
    let v = &cpu0["ear.trustworthiness-vector"];
    assert_eq!(
        (v["executables"].as_i64(), v["hardware"].as_i64()),
        (Some(33), Some(97)),
        "{cpu0}"
    );
    assert_eq!(v["configuration"], 2);

    // Reference values as Trustee's RVPS holds them: lists, and single
    // values that the policy compares with == and >=.
    f.admin
        .set_reference_value("launch_digest", &[serde_json::json!("abcde")])
        .unwrap();
    f.admin
        .set_reference_value("svn", &[serde_json::json!("1")])
        .unwrap();
    set_single(&f, "major_version", serde_json::json!(1));
    set_single(&f, "minimum_minor_version", serde_json::json!(4));
    let cpu0 = attest_sample(&f, None);
    let v = &cpu0["ear.trustworthiness-vector"];
    assert_eq!(
        (v["executables"].as_i64(), v["hardware"].as_i64()),
        (Some(3), Some(2)),
        "{cpu0}"
    );
    assert_eq!(cpu0["ear.status"], "affirming");

    // A reference value the evidence does not meet: that claim drops back.
    set_single(&f, "minimum_minor_version", serde_json::json!(5));
    let cpu0 = attest_sample(&f, None);
    assert_eq!(cpu0["ear.trustworthiness-vector"]["hardware"], 97, "{cpu0}");
    assert_eq!(cpu0["ear.trustworthiness-vector"]["executables"], 3);
}

/// An RVPS sample message whose value is one JSON value, not a list.
fn set_single(f: &common::Fixture, name: &str, value: serde_json::Value) {
    let payload = serde_json::json!({ name: value }).to_string();
    let msg = serde_json::json!({"version": "0.1.0", "type": "sample",
        "payload": base64::engine::general_purpose::STANDARD.encode(payload)});
    let token = format!("Bearer {}", admin_token(f));
    let r = f
        .http
        .send(
            "POST",
            "/kbs/v0/reference-value",
            &[("authorization", &token)],
            Some(("application/json", msg.to_string().as_bytes())),
        )
        .unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

fn admin_token(f: &common::Fixture) -> String {
    veil_kbs_client::admin::AdminKey::from_pem(&f.admin_key_pem)
        .unwrap()
        .token_for(veil_kbs_client::admin::DEFAULT_ADMIN_AUDIENCE, 60)
}

#[test]
fn sample_evidence_with_init_data_is_accepted_unbound() {
    let f = sample_kbs();
    let toml = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\n\"policy.rego\" = \"package agent_policy\"\n";
    let digest = hex::encode(veil_kbs::simguest::init_data_digest(toml).unwrap());
    let cpu0 = attest_sample(&f, Some(toml));
    let ae = &cpu0["ear.veraison.annotated-evidence"];
    assert_eq!(ae["init_data"], digest.as_str());
    assert_eq!(ae["init_data_claims"]["bound"], false, "{ae}");
    assert_eq!(ae["sample"]["init_data_bound"], false);
    assert_eq!(ae["sample"]["hardware_backed"], false);
    // Without init-data, nothing claims to be unbound.
    let cpu0 = attest_sample(&f, None);
    assert!(
        cpu0["ear.veraison.annotated-evidence"]["sample"]
            .get("init_data_bound")
            .is_none()
    );
}
