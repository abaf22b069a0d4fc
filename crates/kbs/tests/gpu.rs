//! Composite CPU + GPU appraisal (issue 18, must-hold 3): sim CPU evidence
//! plus NVIDIA's recorded Hopper evidence (`shared/fixtures/nvidia`, in
//! Trustee's additional-evidence shape) through a real KBS over TLS. The
//! resource is released only when the policy's GPU conditions hold; every
//! refusal names the device and the check.

mod common;

use base64::Engine;
use common::{Options, start};
use veil_kbs_client::{KeyType, ResourcePath};

const FIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/nvidia/"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}{name}")).unwrap()
}

/// `{"nvidia": {"device_evidence_list": [...]}}` for the fixture GPU.
fn gpu_evidence(report_hex: &str) -> String {
    serde_json::json!({"nvidia": {"device_evidence_list": [{
        "arch": "HOPPER",
        "uuid": "GPU-fixture-0",
        "evidence": report_hex,
        "certificate": base64::engine::general_purpose::STANDARD.encode(fixture("hopperCertChain.txt")),
    }]}})
    .to_string()
}

fn report_hex() -> String {
    String::from_utf8(fixture("hopperAttestationReport.txt"))
        .unwrap()
        .trim()
        .to_string()
}

fn policy(gpu: &str) -> String {
    format!(
        "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {{\n\tdata.plugin == \"resource\"\n}}\n\ngpu := {gpu}\n"
    )
}

/// The resource `ai/model/key` stored, and a guest sending the fixture GPU
/// evidence beside its sim CPU evidence.
fn gpu_guest(f: &common::Fixture) -> veil_kbs_client::KbsClient<veil_kbs::simguest::SimGuest> {
    f.admin
        .put_resource(&path("ai/model/key"), b"model key")
        .unwrap();
    let mut guest = f.guest();
    guest.additional_evidence = gpu_evidence(&report_hex());
    f.client_with(guest)
}

/// The claims of the client's current token.
fn token_claims(
    client: &mut veil_kbs_client::KbsClient<veil_kbs::simguest::SimGuest>,
) -> serde_json::Value {
    let token = client.token().unwrap().token;
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap()
}

fn path(s: &str) -> ResourcePath {
    ResourcePath::parse(s).unwrap()
}

#[test]
fn kbs_releases_to_cpu_plus_gpu_evidence_only_when_the_gpu_conditions_hold() {
    // The fixture's GPU nonce is fixed: this KBS (dev mode) does not compare
    // it with the session's; the GPU evidence is bound through the sim CPU
    // evidence's report data, which covers the additional evidence.
    let f = start(Options {
        gpu_nonce_via_cpu: true,
        ..Options::default()
    });
    let mut client = gpu_guest(&f);

    // Conditions hold (driver 550.90.07 >= 550.54): released.
    f.admin
        .set_resource_policy(
            Some("ai"),
            &policy(
                r#"{"min_driver": "550.54", "allow_debug": true, "allow_unbound_nonce": true}"#,
            ),
        )
        .unwrap();
    assert_eq!(
        client
            .get_resource(&path("ai/model/key"))
            .unwrap()
            .as_slice(),
        b"model key"
    );
    // The token carries the GPU in its own submodule, Trustee-named claims.
    let claims = token_claims(&mut client);
    let gpu = &claims["submods"]["gpu0"]["ear.veraison.annotated-evidence"]["nvidia"];
    assert_eq!(gpu["driver_version"], "550.90.07", "{claims}");
    assert_eq!(gpu["config"]["VBIOS_VERSION"], "96.00.9f.00.01", "{gpu}");
    assert_eq!(gpu["uuid"], "GPU-fixture-0");
    assert_eq!(gpu["nonce_bound"], false);
    assert_eq!(claims["submods"]["gpu0"]["ear.status"], "warning");

    // Driver below the minimum: refused, naming the device and the check.
    f.admin
        .set_resource_policy(
            Some("ai"),
            &policy(r#"{"min_driver": "555.0", "allow_debug": true, "allow_unbound_nonce": true}"#),
        )
        .unwrap();
    let e = client
        .get_resource(&path("ai/model/key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gpu0 (uuid GPU-fixture-0): check gpu.driver_version")
            && e.contains("expected >= 555.0, got 550.90.07"),
        "{e}"
    );
    // "No debug" needs measurements appraised against NVIDIA's RIMs: refused.
    f.admin
        .set_resource_policy(
            Some("ai"),
            &policy(r#"{"min_driver": "550", "allow_unbound_nonce": true}"#),
        )
        .unwrap();
    let e = client
        .get_resource(&path("ai/model/key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gpu0 (uuid GPU-fixture-0): check gpu.debug"),
        "{e}"
    );
    // An unbound nonce is refused unless the policy accepts it.
    f.admin
        .set_resource_policy(Some("ai"), &policy(r#"{"allow_debug": true}"#))
        .unwrap();
    let e = client
        .get_resource(&path("ai/model/key"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("check gpu.nonce"), "{e}");

    // A CPU-only guest gets nothing from a policy that requires a GPU.
    let mut cpu_only = f.client(KeyType::EcP256);
    f.admin
        .set_resource_policy(
            Some("ai"),
            &policy(r#"{"allow_debug": true, "allow_unbound_nonce": true}"#),
        )
        .unwrap();
    let e = cpu_only
        .get_resource(&path("ai/model/key"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("check gpu.count"), "{e}");
}

#[test]
fn kbs_refuses_gpu_evidence_with_a_foreign_nonce_or_a_forged_report_naming_the_device() {
    // Default KBS: each GPU report's nonce must be this session's device digest.
    let f = start(Options::default());
    f.admin
        .put_resource(&path("ai/model/key"), b"model key")
        .unwrap();
    f.admin
        .set_resource_policy(Some("ai"), common::templates_allow_all())
        .unwrap();
    let mut guest = f.guest();
    guest.additional_evidence = gpu_evidence(&report_hex());
    let e = attest_err(f.client_with(guest));
    assert!(
        e.contains("nvidia.nonce") && e.contains("gpu0 (uuid GPU-fixture-0)"),
        "{e}"
    );

    // A flipped byte in the signed part (dev GPU-nonce mode, so the nonce
    // is not what refuses it): the signature check names the device.
    let f = start(Options {
        gpu_nonce_via_cpu: true,
        ..Options::default()
    });
    let mut hex = report_hex();
    let i = 2 * 200;
    let flipped = if &hex[i..i + 1] == "0" { "1" } else { "0" };
    hex.replace_range(i..i + 1, flipped);
    let mut guest = f.guest();
    guest.additional_evidence = gpu_evidence(&hex);
    let e = attest_err(f.client_with(guest));
    assert!(e.contains("nvidia.signature") && e.contains("gpu0"), "{e}");

    // Evidence for a device kind this KBS does not know: refused, named.
    let mut guest = f.guest();
    guest.additional_evidence = r#"{"tpu": {}}"#.into();
    let e = attest_err(f.client_with(guest));
    assert!(e.contains("\"tpu\" is not supported"), "{e}");
}

fn attest_err(mut client: veil_kbs_client::KbsClient<veil_kbs::simguest::SimGuest>) -> String {
    match client.attest() {
        Ok(_) => panic!("attestation with this GPU evidence was accepted"),
        Err(e) => e.to_string(),
    }
}

/// The OCSP directory of the operator test (a `tweak` cannot capture).
static OCSP_DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

#[test]
fn kbs_appraises_gpus_with_the_operators_rim_cache_and_ocsp_responses() {
    // The operator's RIM cache is NVIDIA's RIMs from the fixtures (none is
    // for the fixture report's VBIOS 96.00.9f.00.01), its OCSP directory is
    // empty: the GPU evidence still verifies, but a policy requiring
    // appraised measurements or checked revocation is refused, naming the
    // device, the check and why the KBS could not establish it.
    let ocsp = tempfile::tempdir().unwrap();
    OCSP_DIR.set(ocsp.path().to_path_buf()).unwrap();
    let f = start(Options {
        gpu_nonce_via_cpu: true,
        tweak: |cfg| {
            cfg.gpu_rim_dir = Some(format!("{FIX}rims").into());
            cfg.gpu_ocsp_dir = OCSP_DIR.get().cloned();
        },
        ..Options::default()
    });
    let mut client = gpu_guest(&f);

    f.admin
        .set_resource_policy(
            Some("ai"),
            &policy(r#"{"min_driver": "550", "allow_unbound_nonce": true}"#),
        )
        .unwrap();
    let e = client
        .get_resource(&path("ai/model/key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gpu0 (uuid GPU-fixture-0): check gpu.debug")
            && e.contains("nvidia.rim_select")
            && e.contains("no RIM for VBIOS 96.00.9f.00.01"),
        "{e}"
    );
    f.admin
        .set_resource_policy(
            Some("ai"),
            &policy(
                r#"{"allow_debug": true, "allow_unbound_nonce": true, "require_revocation": true}"#,
            ),
        )
        .unwrap();
    let e = client
        .get_resource(&path("ai/model/key"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gpu0 (uuid GPU-fixture-0): check gpu.revocation") && e.contains("nvidia.ocsp"),
        "{e}"
    );
    // Without those requirements the same evidence releases the resource,
    // and the token says what the KBS could not establish.
    f.admin
        .set_resource_policy(
            Some("ai"),
            &policy(r#"{"allow_debug": true, "allow_unbound_nonce": true}"#),
        )
        .unwrap();
    assert_eq!(
        client
            .get_resource(&path("ai/model/key"))
            .unwrap()
            .as_slice(),
        b"model key"
    );
    let claims = token_claims(&mut client);
    let gpu = &claims["submods"]["gpu0"]["ear.veraison.annotated-evidence"]["nvidia"];
    assert_eq!(gpu["measurements_appraised"], false, "{gpu}");
    assert_eq!(gpu["revocation_checked"], false, "{gpu}");
    assert_eq!(
        gpu["appraisal_errors"].as_array().unwrap().len(),
        2,
        "{gpu}"
    );
}
