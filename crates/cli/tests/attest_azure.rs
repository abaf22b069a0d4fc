//! `veil attest verify --tee az-snp-vtpm | az-tdx-vtpm | tpm` from the
//! command line: exit codes (0 verified, 1 refused, 2 malformed, 3 parsed
//! only) and the
//! messages users see, on the real Azure fixtures.

use assert_cmd::Command;
use predicates::prelude::*;
use veil_attest::azure::{self, HclReport, Kind};
use veil_attest::tpm::evidence::TpmEvidence;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/");
/// Inside the fixture VCEKs' validity.
const AT: &str = "2025-06-01T00:00:00Z";

fn veil() -> Command {
    Command::cargo_bin("veil").unwrap()
}

fn fx(path: &str) -> String {
    format!("{FIX}{path}")
}

fn verify(tee: &str, evidence: &str) -> Command {
    let mut c = veil();
    c.args([
        "attest",
        "verify",
        "--tee",
        tee,
        "--evidence",
        evidence,
        "--at",
        AT,
    ]);
    c
}

#[test]
fn azure_snp_vtpm_verifies_with_nonce() {
    for v in 0..=2 {
        verify(
            "az-snp-vtpm",
            &fx(&format!("azure-snp-vtpm/evidence-v{v}.json")),
        )
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "verified: az-snp-vtpm evidence, signed by VCEK (Milan)",
        ));
    }
    let out = verify("az-snp-vtpm", &fx("azure-snp-vtpm/evidence-v1.json"))
        .args(["--report-data", "6368616c6c656e6765", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["tee"], "az-snp-vtpm");
    assert_eq!(claims["raw"]["pcrs"].as_array().unwrap().len(), 24);
}

#[test]
fn azure_refusals_exit_1_and_name_the_check() {
    verify("az-snp-vtpm", &fx("azure-snp-vtpm/evidence-v1.json"))
        .args(["--report-data", "6e6f6e6365"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused: report_data mismatch"));
    verify("az-snp-vtpm", &fx("azure-snp-vtpm/evidence-v2.json"))
        .args(["--init-data-digest", &"ab".repeat(32)])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("PCR 8 mismatch"));

    let dir = tempfile::tempdir().unwrap();
    let mut ev = azure::evidence::parse(
        Kind::Snp,
        &std::fs::read(fx("azure-snp-vtpm/evidence-v2.json")).unwrap(),
    )
    .unwrap();
    ev.pcrs.0[4][0] ^= 1;
    let altered = dir.path().join("altered.json");
    std::fs::write(&altered, ev.to_json(Kind::Snp)).unwrap();
    verify("az-snp-vtpm", altered.to_str().unwrap())
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "PCR values do not match the quote's PCR digest",
        ));

    // VCEK expired at that time.
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "az-snp-vtpm",
            "--at",
            "2033-01-01T00:00:00Z",
        ])
        .args(["--evidence", &fx("azure-snp-vtpm/evidence-v2.json")])
        .assert()
        .code(1);
}

#[test]
fn malformed_azure_evidence_exits_2() {
    // SNP evidence given as TDX evidence: version 2 is unknown for az-tdx-vtpm.
    verify("az-tdx-vtpm", &fx("azure-snp-vtpm/evidence-v2.json"))
        .arg("--no-collateral")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unsupported evidence version 2"));
    verify("az-snp-vtpm", &fx("azure-snp-vtpm/hcl-report.bin"))
        .assert()
        .code(2);
}

#[test]
fn azure_tdx_vtpm_needs_collateral_or_says_it_did_not_verify() {
    verify("az-tdx-vtpm", &fx("azure-tdx-vtpm/evidence-v1.json"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("needs --collateral"));
    // The vTPM part checks out, the TD quote is only parsed: exit 3, and
    // nothing says "verified".
    for v in 0..=1 {
        let out = verify(
            "az-tdx-vtpm",
            &fx(&format!("azure-tdx-vtpm/evidence-v{v}.json")),
        )
        .args(["--no-collateral", "--report-data", "6368616c6c656e6765"])
        .output()
        .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stdout}{stderr}");
        assert!(stderr.contains("TD quote is only parsed"), "{stderr}");
        assert!(
            stdout.starts_with("NOT VERIFIED (parsed only: --no-collateral): az-tdx-vtpm evidence"),
            "{stdout}"
        );
        for (i, _) in stdout.to_lowercase().match_indices("verified:") {
            let rest = stdout[i + "verified:".len()..].trim_start();
            assert!(
                rest.starts_with("NO ") || rest.starts_with("NOT"),
                "{stdout}"
            );
        }
        assert!(!stdout.contains("signed by"), "{stdout}");
    }
    let out = verify("az-tdx-vtpm", &fx("azure-tdx-vtpm/evidence-v0.json"))
        .args(["--no-collateral", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["verified"], false);
    assert_eq!(c["outcome"], "parsed-only");
    // With collateral, the TD quote goes through DCAP (this collateral is
    // for another platform).
    veil()
        .args([
            "attest",
            "verify",
            "--tee",
            "az-tdx-vtpm",
            "--at",
            "2025-07-01T00:00:00Z",
        ])
        .args(["--evidence", &fx("azure-tdx-vtpm/evidence-v1.json")])
        .args(["--collateral", &fx("tdx/collateral.json")])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("FMSPC"));
}

#[test]
fn tpm_quote_verifies_only_with_its_ak() {
    let ev = azure::evidence::parse(
        Kind::Snp,
        &std::fs::read(fx("azure-snp-vtpm/evidence-v1.json")).unwrap(),
    )
    .unwrap();
    let ak = HclReport::parse(&ev.hcl_report)
        .unwrap()
        .runtime_data()
        .unwrap()
        .ak;
    let dir = tempfile::tempdir().unwrap();
    let evidence = dir.path().join("tpm.json");
    let tpm = TpmEvidence {
        ak: ak.clone(),
        message: ev.message,
        signature: ev.signature,
        pcrs: ev.pcrs,
    };
    std::fs::write(&evidence, tpm.to_json()).unwrap();
    let ak_file = dir.path().join("ak.der");
    std::fs::write(&ak_file, ak.spki_der()).unwrap();
    let evidence = evidence.to_str().unwrap();

    verify("tpm", evidence)
        .args([
            "--ak",
            ak_file.to_str().unwrap(),
            "--report-data",
            "6368616c6c656e6765",
        ])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "verified: tpm evidence, signed by AK (TPM 2.0)",
        ))
        .stdout(predicate::str::contains(
            "trust rests on the given attestation key",
        ));
    verify("tpm", evidence)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no trusted attestation key"));
    verify("tpm", evidence)
        .args(["--ak", &fx("snp/milan-vcek.der")])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--ak"));
}
