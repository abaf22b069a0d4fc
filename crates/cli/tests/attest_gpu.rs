//! `veil attest verify-gpu` on NVIDIA's real Hopper report and chain
//! (`../shared/fixtures/nvidia`): verified with its nonce, refused with
//! another one, outside the chain's validity, or with a flipped signed
//! byte, each naming the check; malformed input exits 2.

use std::path::PathBuf;
use std::process::{Command, Output};

const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const AT: &str = "2025-01-01T00:00:00Z";

fn fix(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/fixtures/nvidia")
        .join(name)
}

fn verify_gpu(report: &std::path::Path, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["attest", "verify-gpu", "--report"])
        .arg(report)
        .arg("--cert-chain")
        .arg(fix("hopperCertChain.txt"))
        .args(extra)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn the_hopper_fixture_verifies_and_refusals_name_the_check() {
    let report = fix("hopperAttestationReport.txt");
    let out = verify_gpu(&report, &["--nonce", NONCE, "--at", AT, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], true);
    assert_eq!(v["driver_version"], "550.90.07", "{v}");
    assert_eq!(v["vbios_version"], "96.00.9f.00.01", "{v}");
    assert!(
        v["caveats"].to_string().contains("revocation not checked"),
        "{v}"
    );
    // Text: says what was not checked.
    let out = verify_gpu(&report, &["--at", AT]);
    assert_eq!(out.status.code(), Some(0));
    let t = text(&out.stdout);
    assert!(
        t.starts_with("verified: NVIDIA") && t.contains("freshness not checked"),
        "{t}"
    );

    let other = "00".repeat(32);
    let out = verify_gpu(&report, &["--nonce", &other, "--at", AT, "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (v["verified"].clone(), v["check"].clone()),
        (false.into(), "nvidia.nonce".into())
    );

    let out = verify_gpu(&report, &["--at", "2019-01-01T00:00:00Z"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("nvidia.cert_validity"),
        "{}",
        text(&out.stderr)
    );

    // A flipped byte in the signed part: refused by the signature check.
    let dir = tempfile::tempdir().unwrap();
    let mut hex = std::fs::read_to_string(&report).unwrap().trim().to_string();
    let i = 2 * 200;
    let flipped = if &hex[i..i + 1] == "0" { "1" } else { "0" };
    hex.replace_range(i..i + 1, flipped);
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, &hex).unwrap();
    let out = verify_gpu(&bad, &["--at", AT]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("nvidia.signature"),
        "{}",
        text(&out.stderr)
    );

    // Not a report at all: malformed, exit 2.
    let junk = dir.path().join("junk.txt");
    std::fs::write(&junk, "not a report").unwrap();
    let out = verify_gpu(&junk, &["--at", AT]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
}

#[test]
fn rim_dir_selection_refuses_naming_the_missing_vbios_rim_and_never_follows_symlinks() {
    let report = fix("hopperAttestationReport.txt");
    let rims = fix("rims");
    let args = ["--nonce", NONCE, "--at", "2024-06-01T00:00:00Z", "--json"];
    let out = verify_gpu(
        &report,
        &[&args[..], &["--rim-dir", rims.to_str().unwrap()]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["check"], "nvidia.rim_select", "{v}");
    let err = text(&out.stderr);
    assert!(
        err.contains("no RIM for VBIOS 96.00.9f.00.01")
            && err.contains("have: 545.00, 96.00.5E.00.01"),
        "{err}"
    );

    // A directory holding only a symbolic link to a RIM: the link is not
    // followed, so the directory has no RIM at all.
    let dir = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(
        rims.join("Driver_RIM_test_no_gpu.swidtag"),
        dir.path().join("driver.swidtag"),
    )
    .unwrap();
    let out = verify_gpu(
        &report,
        &[&args[..], &["--rim-dir", dir.path().to_str().unwrap()]].concat(),
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("have: no GH100 RIM"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn revocation_can_be_required_and_ocsp_files_are_parsed() {
    let report = fix("hopperAttestationReport.txt");
    // Without OCSP responses a policy that requires revocation refuses.
    let out = verify_gpu(&report, &["--at", AT, "--require-revocation", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["check"], "nvidia.revocation", "{v}");
    assert!(
        text(&out.stderr).contains("--ocsp"),
        "{}",
        text(&out.stderr)
    );
    // A file that is not an OCSP response: malformed, exit 2.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("leaf.ocsp");
    std::fs::write(&junk, b"\x30\x03\x0a\x01\x00").unwrap();
    let out = verify_gpu(&report, &["--at", AT, "--ocsp", junk.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("OCSP response"),
        "{}",
        text(&out.stderr)
    );
}

fn verify_tee_nvidia(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["attest", "verify", "--tee", "nvidia", "--at", AT])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn generic_verify_tee_nvidia_gives_normalized_claims_and_fails_closed_on_debug() {
    let report = fix("hopperAttestationReport.txt");
    let chain = fix("hopperCertChain.txt");
    let os = |s: &'static str| std::ffi::OsStr::new(s);
    let base = [
        os("--evidence"),
        report.as_os_str(),
        os("--cert"),
        chain.as_os_str(),
        os("--report-data"),
        os(NONCE),
    ];
    // Measurements not appraised: "not debug" is not established, refused.
    let out = verify_tee_nvidia(&base);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let e = text(&out.stderr);
    assert!(e.contains("debug") && e.contains("RIMs"), "{e}");
    // Accepting that: verified, normalized claims with the GPU's in raw.
    let mut args = base.to_vec();
    args.extend([os("--allow-debug"), os("--json")]);
    let out = verify_tee_nvidia(&args);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tee"], "nvidia");
    assert_eq!(v["verified"], true);
    assert_eq!(v["report_data"], NONCE);
    assert_eq!(v["debug"], true);
    assert_eq!(v["platform"]["signer"], "nvidia-device");
    assert_eq!(v["raw"]["driver_version"], "550.90.07", "{v}");
    // Text summary names what was not appraised.
    let out = verify_tee_nvidia(
        &base[..4]
            .iter()
            .copied()
            .chain([os("--allow-debug")])
            .collect::<Vec<_>>(),
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("550.90.07") && t.contains("NOT appraised"),
        "{t}"
    );
    // Another nonce: refused by report_data, exit 1.
    let other = "11".repeat(32);
    let mut args = base[..4].to_vec();
    args.extend([
        os("--report-data"),
        std::ffi::OsStr::new(&other),
        os("--allow-debug"),
    ]);
    let out = verify_tee_nvidia(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("report_data"),
        "{}",
        text(&out.stderr)
    );
    // Trustee's device evidence JSON is taken as is.
    use base64::Engine;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("gpu.json");
    std::fs::write(
        &json,
        serde_json::json!({"arch": "HOPPER", "uuid": "GPU-1",
            "evidence": std::fs::read_to_string(&report).unwrap().trim(),
            "certificate": base64::engine::general_purpose::STANDARD.encode(std::fs::read(&chain).unwrap())})
        .to_string(),
    )
    .unwrap();
    let out = verify_tee_nvidia(&[
        os("--evidence"),
        json.as_os_str(),
        os("--allow-debug"),
        os("--json"),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["raw"]["uuid"], "GPU-1");
    // A report without its chain: a usage error naming --cert.
    let out = verify_tee_nvidia(&[os("--evidence"), report.as_os_str()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("--cert"),
        "{}",
        text(&out.stderr)
    );
}
