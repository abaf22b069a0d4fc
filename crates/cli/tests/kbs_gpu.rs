//! `veil kbs get-resource --gpu-evidence` against `veil kbs serve` (issue 18,
//! must-hold 3 from the command line): sim CPU evidence plus NVIDIA's
//! recorded Hopper evidence (`shared/fixtures/nvidia`) as additional
//! evidence. The resource is released only when the policy's GPU conditions
//! hold; otherwise the refusal names `gpu0` and the check.

use std::path::Path;
use std::process::Output;

use veil_testkit::kbs::{DevKbs, make_keys};
use veil_testkit::run_ok;

const VEIL: &str = env!("CARGO_BIN_EXE_veil");
const FIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/nvidia"
);

fn policy(dir: &Path, kbs: &DevKbs, gpu: &str) {
    let f = dir.join("policy.rego");
    std::fs::write(
        &f,
        format!(
            "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {{\n\tdata.plugin == \"resource\"\n}}\n\ngpu := {gpu}\n"
        ),
    )
    .unwrap();
    run_ok(
        kbs.client()
            .args([
                "kbs",
                "policy",
                "set",
                "--insecure-http",
                "--scope",
                "ai",
                "--file",
            ])
            .arg(&f),
    );
}

fn get(kbs: &DevKbs, gpu: &[&Path]) -> Output {
    let mut c = kbs.sim_guest();
    for g in gpu {
        c.arg("--gpu-evidence").arg(g);
    }
    c.arg("ai/model/key").output().unwrap()
}

fn released(out: &Output) -> Vec<u8> {
    use base64::Engine;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap()
}

fn refused(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty());
    err
}

#[test]
fn get_resource_with_gpu_evidence_is_released_only_when_the_gpu_conditions_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    // The fixture's GPU nonce is fixed (recorded evidence): this dev KBS
    // binds the GPU evidence through the sim CPU evidence only.
    let kbs = DevKbs::serve_with(Path::new(VEIL), d, &["--dev-gpu-nonce-via-cpu-evidence"]);
    std::fs::write(d.join("model.key"), "model key").unwrap();
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "ai/model/key"])
            .arg(d.join("model.key")),
    );
    let fixtures = Path::new(FIX);

    // Conditions hold (driver 550.90.07 >= 550.54): released, and the
    // command says the recorded evidence's nonce is not this session's.
    policy(
        d,
        &kbs,
        r#"{"min_driver": "550.54", "allow_debug": true, "allow_unbound_nonce": true}"#,
    );
    let out = get(&kbs, &[fixtures]);
    assert_eq!(released(&out), b"model key");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("gpu0 (uuid GPU-recorded-nvidia): recorded evidence")
            && err.contains("931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"),
        "{err}"
    );

    // The same GPU as Trustee's device evidence JSON, with its UUID.
    use base64::Engine;
    let json = d.join("gpu.json");
    std::fs::write(
        &json,
        serde_json::json!({
            "arch": "HOPPER",
            "uuid": "GPU-11111111-2222-3333-4444-555555555555",
            "evidence": std::fs::read_to_string(fixtures.join("hopperAttestationReport.txt")).unwrap().trim(),
            "certificate": base64::engine::general_purpose::STANDARD
                .encode(std::fs::read(fixtures.join("hopperCertChain.txt")).unwrap()),
        })
        .to_string(),
    )
    .unwrap();
    assert_eq!(released(&get(&kbs, &[&json])), b"model key");

    // Driver below the minimum: refused, naming the device and the check.
    policy(
        d,
        &kbs,
        r#"{"min_driver": "555.0", "allow_debug": true, "allow_unbound_nonce": true}"#,
    );
    let err = refused(&get(&kbs, &[&json]));
    assert!(
        err.contains(
            "gpu0 (uuid GPU-11111111-2222-3333-4444-555555555555): check gpu.driver_version"
        ) && err.contains("expected >= 555.0, got 550.90.07"),
        "{err}"
    );
    // Two GPUs required, one sent: gpu.count.
    policy(
        d,
        &kbs,
        r#"{"min_count": 2, "allow_debug": true, "allow_unbound_nonce": true}"#,
    );
    assert!(refused(&get(&kbs, &[fixtures])).contains("check gpu.count"));
    // Two sent: the second is gpu1 and both are appraised.
    assert_eq!(released(&get(&kbs, &[fixtures, &json])), b"model key");
    // "No debug" needs measurements appraised against NVIDIA's RIMs.
    policy(d, &kbs, r#"{"allow_unbound_nonce": true}"#);
    let err = refused(&get(&kbs, &[fixtures]));
    assert!(
        err.contains("gpu0 (uuid GPU-recorded-nvidia): check gpu.debug"),
        "{err}"
    );
    // Recorded evidence is not bound to the session: refused unless the
    // policy accepts that.
    policy(d, &kbs, r#"{"allow_debug": true}"#);
    assert!(refused(&get(&kbs, &[fixtures])).contains("check gpu.nonce"));
    // No GPU evidence at all: gpu.count.
    policy(
        d,
        &kbs,
        r#"{"allow_debug": true, "allow_unbound_nonce": true}"#,
    );
    assert!(refused(&get(&kbs, &[])).contains("check gpu.count"));

    // A report with a flipped signed byte: the attestation is refused,
    // naming the device and the signature check.
    let forged = d.join("forged");
    std::fs::create_dir(&forged).unwrap();
    let mut hex = std::fs::read_to_string(fixtures.join("hopperAttestationReport.txt")).unwrap();
    let i = 2 * 200;
    let flipped = if &hex[i..i + 1] == "0" { "1" } else { "0" };
    hex.replace_range(i..i + 1, flipped);
    std::fs::write(forged.join("report.txt"), hex).unwrap();
    std::fs::copy(
        fixtures.join("hopperCertChain.txt"),
        forged.join("chain.pem"),
    )
    .unwrap();
    std::fs::write(forged.join("uuid"), "GPU-forged\n").unwrap();
    let err = refused(&get(&kbs, &[&forged]));
    assert!(
        err.contains("nvidia.signature") && err.contains("gpu0 (uuid GPU-forged)"),
        "{err}"
    );
}

#[test]
fn a_kbs_without_the_dev_gpu_nonce_flag_refuses_recorded_gpu_evidence_by_its_nonce() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    let kbs = DevKbs::serve(Path::new(VEIL), d);
    std::fs::write(d.join("model.key"), "model key").unwrap();
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "ai/model/key"])
            .arg(d.join("model.key")),
    );
    policy(
        d,
        &kbs,
        r#"{"allow_debug": true, "allow_unbound_nonce": true}"#,
    );
    let err = refused(&get(&kbs, &[Path::new(FIX)]));
    assert!(
        err.contains("nvidia.nonce") && err.contains("gpu0 (uuid GPU-recorded-nvidia)"),
        "{err}"
    );

    // The flag exists only in dev mode.
    let out = std::process::Command::new(VEIL)
        .args([
            "kbs",
            "serve",
            "--insecure-http",
            "--dev-gpu-nonce-via-cpu-evidence",
            "--data-dir",
        ])
        .arg(d.join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--dev"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An ambiguous directory is refused, naming the candidates.
    let amb = d.join("amb");
    std::fs::create_dir(&amb).unwrap();
    std::fs::write(amb.join("report.txt"), "00").unwrap();
    std::fs::write(amb.join("report.bin"), "00").unwrap();
    let out = get(&kbs, &[&amb]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("2 files could be the attestation report"),
        "{err}"
    );
}
