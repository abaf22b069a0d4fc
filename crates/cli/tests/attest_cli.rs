//! `veil attest` from the command line: exit codes (0 verified, 1 refused,
//! 2 malformed, 3 parsed only) and messages users see, as text and JSON.

use assert_cmd::Command;
use predicates::prelude::*;

const SNP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/snp/");

fn veil() -> Command {
    Command::cargo_bin("veil").unwrap()
}

fn snp(name: &str) -> String {
    format!("{SNP}{name}")
}

/// `veil attest verify --tee TEE --evidence EVIDENCE`.
fn verify(tee: &str, evidence: &str) -> Command {
    let mut c = veil();
    c.args(["attest", "verify", "--tee", tee, "--evidence", evidence]);
    c
}

/// `veil attest verify --tee snp` of the fixture `report` with the fixture
/// certificate `cert`.
fn snp_with_cert(report: &str, cert: &str) -> Command {
    let mut c = verify("snp", &snp(report));
    c.args(["--cert", &snp(cert)]);
    c
}

/// `veil attest sim-report --key KEY -o OUT`.
fn sim_report(key: &str, out: &str) -> Command {
    let mut c = veil();
    c.args(["attest", "sim-report", "--key", key, "-o", out]);
    c
}

/// `veil attest sim-keygen --key KEY --root ROOT`.
fn sim_keygen(key: &str, root: &str) -> Command {
    let mut c = veil();
    c.args(["attest", "sim-keygen", "--key", key, "--root", root]);
    c
}

#[test]
fn verifies_real_snp_report_with_summary_and_json() {
    snp_with_cert("milan-vcek-report.bin", "milan-vcek.der")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "verified: snp evidence, signed by VCEK (Milan)",
        ));
    let out = snp_with_cert("milan-report-2.hex", "milan-report-2-vcek.der")
        .args(["--cert", &snp("milan-cert-chain.pem"), "--json"])
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
    snp_with_cert("milan-vcek-report.bin", "invalid-vcek-new.der")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refused: signature on certificate SEV-VCEK does not verify",
        ));
    snp_with_cert("milan-vcek-report.bin", "milan-vcek.der")
        .args(["--report-data", "00"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "report_data mismatch: expected 00",
        ));
    snp_with_cert("milan-vcek-report.bin", "milan-vcek.der")
        .args(["--min-tcb", "snp=9"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "TCB component snp below minimum: expected >= 9, got 8",
        ));
    // A misspelt component is the caller's mistake, not the evidence's:
    // usage error (2), naming the components the evidence reports.
    snp_with_cert("milan-vcek-report.bin", "milan-vcek.der")
        .args(["--min-tcb", "ucode=115"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "--min-tcb: snp evidence has no TCB component ucode; it reports: bootloader, microcode, snp, tee",
        ));
    snp_with_cert("milan-vlek-report.bin", "milan-vlek.der")
        // The VLEK certificate expires 2025-12-10: verify inside its validity.
        .args(["--at", "2025-06-01T00:00:00Z"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "unexpected VMPL: expected 0, got 1",
        ));
    snp_with_cert("milan-vlek-report.bin", "milan-vlek.der")
        .args(["--vmpl", "1", "--at", "2025-06-01T00:00:00Z"])
        .assert()
        .success()
        .stdout(predicate::str::contains("signed by VLEK (Milan)"));
    // Today the VLEK has expired, and veil says so.
    snp_with_cert("milan-vlek-report.bin", "milan-vlek.der")
        .args(["--vmpl", "1", "--at", "2026-01-01T00:00:00Z"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "certificate SEV-VLEK is not valid at the verification time",
        ));
}

#[test]
fn json_refusal_is_json_with_the_failed_check() {
    // One byte of the signed region (MEASUREMENT at 0x90) flipped.
    let dir = tempfile::tempdir().unwrap();
    let mut report = std::fs::read(snp("milan-vcek-report.bin")).unwrap();
    report[0x90] ^= 1;
    let tampered = dir.path().join("tampered.bin");
    std::fs::write(&tampered, &report).unwrap();
    let out = verify("snp", tampered.to_str().unwrap())
        .args(["--cert", &snp("milan-vcek.der"), "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)));
    assert_eq!(v["verified"], false);
    assert_eq!(v["outcome"], "refused");
    assert!(
        v["check"].as_str().is_some_and(|c| c.starts_with("snp.")),
        "{v}"
    );
    assert!(v["error"].as_str().unwrap().contains("signature"), "{v}");
    // A mismatch carries the expected and the actual value.
    let out = snp_with_cert("milan-vcek-report.bin", "milan-vcek.der")
        .args(["--min-tcb", "snp=9", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["expected"], ">= 9");
    assert_eq!(v["actual"], "8");
    // Malformed evidence: JSON too, exit 2.
    std::fs::write(&tampered, vec![0xFFu8; 1184]).unwrap();
    let out = verify("snp", tampered.to_str().unwrap())
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false);
    assert_eq!(v["outcome"], "malformed");
    // And a verified report says so in JSON.
    let out = snp_with_cert("milan-vcek-report.bin", "milan-vcek.der")
        .arg("--json")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], true);
}

#[test]
fn malformed_input_exits_2_without_panic() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.bin");
    std::fs::write(&junk, vec![0xFFu8; 1184]).unwrap();
    verify("snp", junk.to_str().unwrap())
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "malformed SNP report: version at offset 0x0",
        ));
    std::fs::write(&junk, b"{\"attestation_report\": 12}").unwrap();
    verify("snp", junk.to_str().unwrap())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("malformed SNP evidence JSON"));
    verify("nope", junk.to_str().unwrap())
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown TEE"));
}

#[test]
fn sim_keygen_report_verify_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    sim_keygen(&p("k.pem"), &p("root.pem"))
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
    sim_keygen(&p("k.pem"), &p("root.pem")).assert().code(2);
    let digest = "ab".repeat(48);
    sim_report(&p("k.pem"), &p("ev.json"))
        .args(["--report-data", "0102", "--init-data-digest", &digest])
        .args(["--measurement", "77"])
        .assert()
        .success();
    verify("sim", &p("ev.json"))
        .args(["--sim-root", &p("root.pem")])
        .args(["--report-data", "0102", "--init-data-digest", &digest])
        .assert()
        .success()
        .stdout(predicate::str::contains("NO: simulated TEE"))
        .stderr(predicate::str::contains("WARNING"));
    // The same values in the other formats veil prints: the digest as
    // `sha384:HEX` (as `veil policy digest` shows it), report data as base64.
    verify("sim", &p("ev.json"))
        .args(["--sim-root", &p("root.pem")])
        .args(["--report-data", "AQI=", "--init-data-digest"])
        .arg(format!("sha384:{digest}"))
        .assert()
        .success();
    verify("sim", &p("ev.json"))
        .args(["--sim-root", &p("root.pem")])
        .args(["--init-data-digest", &format!("sha256:{digest}")])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("a sha256 digest is 32 bytes"));
    // Without the root, or with another root: refused.
    verify("sim", &p("ev.json"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("--sim-root"));
    sim_keygen(&p("k2.pem"), &p("root2.pem")).assert().success();
    verify("sim", &p("ev.json"))
        .args(["--sim-root", &p("root2.pem")])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("another sim platform"));
    // Debug sim reports are refused unless allowed.
    sim_report(&p("k.pem"), &p("dbg.json"))
        .arg("--debug")
        .assert()
        .success();
    verify("sim", &p("dbg.json"))
        .args(["--sim-root", &p("root.pem")])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("debugging enabled"));
    verify("sim", &p("dbg.json"))
        .args(["--sim-root", &p("root.pem"), "--allow-debug"])
        .assert()
        .success();
}
