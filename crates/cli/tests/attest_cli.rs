//! `veil attest` from the command line: exit codes and messages users see.

use assert_cmd::Command;
use predicates::prelude::*;

const SNP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/snp/");

fn veil() -> Command {
    Command::cargo_bin("veil").unwrap()
}

fn snp(name: &str) -> String {
    format!("{SNP}{name}")
}

#[test]
fn verifies_real_snp_report_with_summary_and_json() {
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &snp("milan-vcek-report.bin"),
        ])
        .args(["--cert", &snp("milan-vcek.der")])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "verified: snp evidence, signed by VCEK (Milan)",
        ));
    let out = veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--json",
            "--evidence",
            &snp("milan-report-2.hex"),
        ])
        .args([
            "--cert",
            &snp("milan-report-2-vcek.der"),
            "--cert",
            &snp("milan-cert-chain.pem"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "snp");
    assert_eq!(claims["hardware_backed"], true);
    assert_eq!(claims["platform"]["product"], "Milan");
    assert_eq!(claims["measurement"].as_str().unwrap().len(), 96);
}

#[test]
fn refusals_exit_1_and_name_the_check() {
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &snp("milan-vcek-report.bin"),
        ])
        .args(["--cert", &snp("invalid-vcek-new.der")])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refused: signature on certificate SEV-VCEK does not verify",
        ));
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &snp("milan-vcek-report.bin"),
        ])
        .args(["--cert", &snp("milan-vcek.der"), "--report-data", "00"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "report_data mismatch: expected 00",
        ));
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &snp("milan-vcek-report.bin"),
        ])
        .args(["--cert", &snp("milan-vcek.der"), "--min-tcb", "snp=9"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "TCB component snp below minimum: expected >= 9, got 8",
        ));
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &snp("milan-vlek-report.bin"),
        ])
        // The VLEK certificate expires 2025-12-10: verify inside its validity.
        .args([
            "--cert",
            &snp("milan-vlek.der"),
            "--at",
            "2025-06-01T00:00:00Z",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "unexpected VMPL: expected 0, got 1",
        ));
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &snp("milan-vlek-report.bin"),
        ])
        .args([
            "--cert",
            &snp("milan-vlek.der"),
            "--vmpl",
            "1",
            "--at",
            "2025-06-01T00:00:00Z",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains("signed by VLEK (Milan)"));
    // Today the VLEK has expired, and veil says so.
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            &snp("milan-vlek-report.bin"),
        ])
        .args([
            "--cert",
            &snp("milan-vlek.der"),
            "--vmpl",
            "1",
            "--at",
            "2026-01-01T00:00:00Z",
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "certificate SEV-VLEK is not valid at the verification time",
        ));
}

#[test]
fn malformed_input_exits_2_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, vec![0xFFu8; 1184]).unwrap();
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            junk.to_str().unwrap(),
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "malformed SNP report: version at offset 0x0",
        ));
    std::fs::write(&junk, b"{\"attestation_report\": 12}").unwrap();
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "snp",
            "--evidence",
            junk.to_str().unwrap(),
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("malformed SNP evidence JSON"));
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "nope",
            "--evidence",
            junk.to_str().unwrap(),
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown TEE"));
}

#[test]
fn sim_keygen_report_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    veil()
        .args([
            "attest",
            "sim-keygen",
            "--key",
            &p("k.pem"),
            "--root",
            &p("root.pem"),
        ])
        .assert()
        .success()
        .stderr(predicate::str::contains("WARNING: simulated TEE"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(p("k.pem")).unwrap().permissions().mode();
        assert_eq!(
            mode & 0o077,
            0,
            "private sim key must not be group/world readable"
        );
    }
    // A second keygen does not clobber the key.
    veil()
        .args([
            "attest",
            "sim-keygen",
            "--key",
            &p("k.pem"),
            "--root",
            &p("root.pem"),
        ])
        .assert()
        .code(2);
    let digest = "ab".repeat(48);
    veil()
        .args([
            "attest",
            "sim-report",
            "--key",
            &p("k.pem"),
            "--report-data",
            "0102",
        ])
        .args([
            "--init-data-digest",
            &digest,
            "--measurement",
            "77",
            "-o",
            &p("ev.json"),
        ])
        .assert()
        .success();
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "sim",
            "--evidence",
            &p("ev.json"),
            "--sim-root",
            &p("root.pem"),
        ])
        .args(["--report-data", "0102", "--init-data-digest", &digest])
        .assert()
        .success()
        .stdout(predicate::str::contains("NO: simulated TEE"))
        .stderr(predicate::str::contains("WARNING"));
    // Without the root, or with another root: refused.
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "sim",
            "--evidence",
            &p("ev.json"),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--sim-root"));
    veil()
        .args([
            "attest",
            "sim-keygen",
            "--key",
            &p("k2.pem"),
            "--root",
            &p("root2.pem"),
        ])
        .assert()
        .success();
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "sim",
            "--evidence",
            &p("ev.json"),
            "--sim-root",
            &p("root2.pem"),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("another sim platform"));
    // Debug sim reports are refused unless allowed.
    veil()
        .args([
            "attest",
            "sim-report",
            "--key",
            &p("k.pem"),
            "--debug",
            "-o",
            &p("dbg.json"),
        ])
        .assert()
        .success();
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "sim",
            "--evidence",
            &p("dbg.json"),
            "--sim-root",
            &p("root.pem"),
        ])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("debugging enabled"));
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "sim",
            "--evidence",
            &p("dbg.json"),
            "--sim-root",
            &p("root.pem"),
            "--allow-debug",
        ])
        .assert()
        .success();
}
