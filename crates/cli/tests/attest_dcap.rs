//! `veil attest verify --tee tdx|sgx`: collateral as JSON or a PCS directory,
//! the verification time, the TCB status policy and `--no-collateral`, with
//! the exit codes and messages users see (0 verified, 1 refused, 2 malformed,
//! 3 parsed only).

use assert_cmd::Command;
use predicates::prelude::*;

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/");
const INSIDE: &str = "2025-07-01T00:00:00Z";

fn veil() -> Command {
    Command::cargo_bin("veil").unwrap()
}

fn fx(p: &str) -> String {
    format!("{FIX}{p}")
}

/// `veil attest verify --tee TEE --evidence EVIDENCE`.
fn verify(tee: &str, evidence: &str) -> Command {
    let mut c = veil();
    c.args(["attest", "verify", "--tee", tee, "--evidence", evidence]);
    c
}

/// [`verify`] with `--collateral COLLATERAL --at AT`.
fn verify_at(tee: &str, evidence: &str, collateral: &str, at: &str) -> Command {
    let mut c = verify(tee, evidence);
    c.args(["--collateral", collateral, "--at", at]);
    c
}

/// The fixture quote of `tee` (tdx or sgx) with its JSON collateral, at a
/// time inside the collateral's validity.
fn fixture_quote(tee: &str) -> Command {
    verify_at(
        tee,
        &fx(&format!("{tee}/quote.bin")),
        &fx(&format!("{tee}/collateral.json")),
        INSIDE,
    )
}

#[test]
fn tdx_verifies_with_json_collateral() {
    fixture_quote("tdx")
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "verified: tdx evidence, signed by PCK",
        ))
        .stdout(predicate::str::contains("tcb_status    UpToDate"))
        .stdout(predicate::str::contains("valid until 2025-07-19T10:00:35Z"));
    let out = fixture_quote("tdx").arg("--json").output().unwrap();
    assert!(out.status.success());
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["tee"], "tdx");
    assert_eq!(c["measurement"], c["raw"]["mr_td"]);
    assert_eq!(c["init_data"], c["raw"]["mr_config_id"]);
    assert_eq!(c["raw"]["signature_verified"], true);
}

#[test]
fn tdx_expired_collateral_exits_1_naming_tcb_info() {
    verify_at("tdx", &fx("tdx/quote.bin"), &fx("tdx/collateral.json"), "2025-08-01T00:00:00Z")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refused: collateral expired: TCB info nextUpdate 2025-07-19T10:16:03Z, verification time 2025-08-01T00:00:00Z",
        ));
}

#[test]
fn sgx_status_policy() {
    fixture_quote("sgx")
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "TCB status ConfigurationAndSWHardeningNeeded not accepted (advisories INTEL-SA-00289, INTEL-SA-00615); accepted: UpToDate",
        ));
    fixture_quote("sgx")
        .args(["--accept-tcb-status", "ConfigurationAndSWHardeningNeeded"])
        .assert()
        .success()
        .stdout(predicate::str::contains(
            "ConfigurationAndSWHardeningNeeded (INTEL-SA-00289, INTEL-SA-00615) — ACCEPTED BY POLICY EXCEPTION",
        ));
    verify("sgx", &fx("sgx/quote.bin"))
        .args([
            "--collateral",
            &fx("sgx/collateral.json"),
            "--accept-tcb-status",
            "Fine",
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown TCB status \"Fine\""));
}

#[test]
fn no_collateral_parses_and_says_not_verified() {
    // The v4 sample is a debug TD: refused unless debug is allowed.
    verify("tdx", &fx("tdx/quote-v4-noncollateral.bin"))
        .arg("--no-collateral")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("debugging enabled"));
    // Parsed, not verified: exit 3, never 0, and never "verified: <yes>".
    for (tee, q) in [
        ("tdx", "tdx/quote-v4-noncollateral.bin"),
        ("tdx", "tdx/quote-v5-noncollateral.bin"),
        // A genuine quote with its collateral at hand is still not verified.
        ("tdx", "tdx/quote.bin"),
        ("sgx", "sgx/quote.bin"),
    ] {
        let out = verify(tee, &fx(q))
            .args(["--no-collateral", "--allow-debug"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{q}: {stdout}{stderr}");
        assert!(
            stdout.starts_with("NOT VERIFIED (parsed only: --no-collateral): "),
            "{stdout}"
        );
        assert!(
            stdout.contains("signature chain was not checked"),
            "{stdout}"
        );
        assert!(stderr.contains("NOT verified"), "{stderr}");
        never_says_verified(&stdout);
        never_says_verified(&stderr);
    }
    let out = verify("tdx", &fx("tdx/quote-v5-noncollateral.bin"))
        .args(["--no-collateral", "--allow-debug", "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    let c: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["verified"], false);
    assert_eq!(c["outcome"], "parsed-only");
    assert_eq!(c["hardware_backed"], false);
    assert_eq!(c["raw"]["signature_verified"], false);
    assert_eq!(c["platform"]["signer"], "unverified");
}

/// Every `verified:` in `text` (any case) is followed by NO or NOT.
fn never_says_verified(text: &str) {
    let lower = text.to_lowercase();
    for (i, _) in lower.match_indices("verified:") {
        let rest = text[i + "verified:".len()..].trim_start();
        assert!(
            rest.starts_with("NO ") || rest.starts_with("NOT"),
            "claims verification: {text}"
        );
    }
}

#[test]
fn missing_collateral_is_a_usage_error() {
    verify("tdx", &fx("tdx/quote.bin"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains(
            "tdx evidence needs --collateral FILE|DIR",
        ));
}

#[test]
fn pcs_directory_and_tampering() {
    let dir = tempfile::tempdir().unwrap();
    let j: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fx("tdx/collateral.json")).unwrap()).unwrap();
    let s = |k: &str| j[k].as_str().unwrap().to_string();
    let w = |name: &str, data: Vec<u8>| std::fs::write(dir.path().join(name), data).unwrap();
    w(
        "tcb_info.json",
        format!(
            r#"{{"tcbInfo":{},"signature":"{}"}}"#,
            s("tcb_info"),
            s("tcb_info_signature")
        )
        .into_bytes(),
    );
    w(
        "qe_identity.json",
        format!(
            r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
            s("qe_identity"),
            s("qe_identity_signature")
        )
        .into_bytes(),
    );
    for chain in [
        "tcb_info_issuer_chain",
        "qe_identity_issuer_chain",
        "pck_crl_issuer_chain",
    ] {
        w(&format!("{chain}.pem"), s(chain).into_bytes());
    }
    for crl in ["pck_crl", "root_ca_crl"] {
        w(&format!("{crl}.der"), hex::decode(s(crl)).unwrap());
    }
    let d = dir.path().to_str().unwrap();
    verify_at("tdx", &fx("tdx/quote.bin"), d, INSIDE)
        .assert()
        .success();

    // A byte of MRTD changed: the quote signature check names itself.
    let qdir = tempfile::tempdir().unwrap();
    let mut q = std::fs::read(fx("tdx/quote.bin")).unwrap();
    q[48 + 140] ^= 1;
    let qp = qdir.path().join("tampered.bin");
    std::fs::write(&qp, q).unwrap();
    verify_at("tdx", qp.to_str().unwrap(), d, INSIDE)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "quote signature does not verify with the attestation key",
        ));

    // Truncated quote: malformed, exit 2, names the field.
    let qp = qdir.path().join("short.bin");
    std::fs::write(&qp, &std::fs::read(fx("tdx/quote.bin")).unwrap()[..700]).unwrap();
    verify_at(
        "tdx",
        qp.to_str().unwrap(),
        &fx("tdx/collateral.json"),
        INSIDE,
    )
    .assert()
    .code(2)
    .stderr(predicate::str::contains("malformed DCAP quote"));
}

#[test]
fn expectations_apply_to_dcap_claims() {
    fixture_quote("tdx")
        .args(["--init-data-digest", &"ab".repeat(48)])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "mr_config_id mismatch (init-data digest)",
        ));
}
