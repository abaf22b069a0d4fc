//! Intel SGX quotes from `shared/fixtures/sgx`: the TCB status policy
//! (the fixture platform is ConfigurationAndSWHardeningNeeded), the
//! collateral window, parsing without collateral, and tampering.

mod dcap_common;

use dcap_common::{INSIDE, at};
use veil_attest::Tee;
use veil_attest::dcap::{Collateral, TcbPolicy, TcbStatus};
use veil_attest::sgx;

fn fixture(name: &str) -> Vec<u8> {
    dcap_common::fixture("sgx", name)
}

fn collateral() -> Collateral {
    dcap_common::collateral("sgx")
}

/// The fixture quote with its collateral under `policy` at `time`.
fn verify_fixture(
    policy: &TcbPolicy,
    time: &str,
) -> Result<veil_attest::Claims, veil_attest::Error> {
    sgx::verify(&fixture("quote.bin"), &collateral(), policy, at(time))
}

fn accepting() -> TcbPolicy {
    TcbPolicy::default()
        .accept(TcbStatus::ConfigurationAndSWHardeningNeeded)
        .unwrap()
}

#[test]
fn default_policy_refuses_and_says_why() {
    let e = verify_fixture(&TcbPolicy::default(), INSIDE).unwrap_err();
    assert_eq!(e.check(), Some("dcap.tcb_status"));
    assert_eq!(
        e.to_string(),
        "TCB status ConfigurationAndSWHardeningNeeded not accepted (advisories INTEL-SA-00289, INTEL-SA-00615); accepted: UpToDate"
    );
}

#[test]
fn accepted_status_verifies_and_is_listed() {
    let c = verify_fixture(&accepting(), INSIDE).unwrap();
    assert_eq!(c.tee, Tee::Sgx);
    assert!(c.hardware_backed);
    assert_eq!(c.raw["tcb_status"], "ConfigurationAndSWHardeningNeeded");
    assert_eq!(
        c.raw["advisory_ids"],
        serde_json::json!(["INTEL-SA-00289", "INTEL-SA-00615"])
    );
    assert_eq!(
        c.raw["tcb_policy"]["exception"],
        "ConfigurationAndSWHardeningNeeded"
    );
    assert_eq!(
        c.raw["tcb_policy"]["accepted"],
        serde_json::json!(["UpToDate", "ConfigurationAndSWHardeningNeeded"])
    );
    // MRENCLAVE is the measurement; CONFIGID (64 bytes) the init-data field.
    assert_eq!(
        hex::encode(&c.measurement),
        c.raw["mr_enclave"].as_str().unwrap()
    );
    assert_eq!(c.init_data.len(), 64);
    assert_eq!(
        hex::encode(&c.init_data),
        c.raw["config_id"].as_str().unwrap()
    );
    for k in ["mr_signer", "attributes", "report_data"] {
        assert!(c.raw[k].is_string(), "{k}");
    }
    assert!(c.raw["isv_prod_id"].is_u64());
    assert_eq!(c.tcb["isv_svn"], c.raw["isv_svn"].as_u64().unwrap());
    assert_eq!(c.raw["quote_version"], 3);
    assert_eq!(c.debug, c.raw["debug"].as_bool().unwrap());
}

#[test]
fn accepting_another_status_is_not_enough() {
    let p = TcbPolicy::default()
        .accept(TcbStatus::SWHardeningNeeded)
        .unwrap();
    let e = verify_fixture(&p, INSIDE).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("accepted: UpToDate, SWHardeningNeeded"),
        "{e}"
    );
}

#[test]
fn refused_after_window() {
    let e = verify_fixture(&accepting(), "2025-08-01T00:00:00Z").unwrap_err();
    assert_eq!(e.check(), Some("dcap.collateral_expired"));
    assert!(
        e.to_string().starts_with("collateral expired: TCB info nextUpdate 2025-07-19T10:56:11Z, verification time 2025-08-01T00:00:00Z"),
        "{e}"
    );
}

#[test]
fn inspect_without_collateral_says_unverified() {
    for name in ["quote.bin", "occlum-quote.bin"] {
        let c = sgx::inspect(&fixture(name)).unwrap();
        assert!(!c.hardware_backed);
        assert_eq!(c.raw["signature_verified"], false, "{name}");
        assert_eq!(c.measurement.len(), 32);
        assert_eq!(c.init_data.len(), 64);
    }
}

#[test]
fn coco_json_evidence() {
    use base64::Engine;
    let ev = serde_json::json!({
        "quote": base64::engine::general_purpose::STANDARD.encode(fixture("quote.bin"))
    });
    let c = sgx::verify_evidence(
        ev.to_string().as_bytes(),
        &collateral(),
        &accepting(),
        at(INSIDE),
    )
    .unwrap();
    assert_eq!(c.raw["tcb_status"], "ConfigurationAndSWHardeningNeeded");
}

#[test]
fn tdx_quote_is_not_an_sgx_quote() {
    let tdx = dcap_common::fixture("tdx", "quote.bin");
    let e = sgx::verify(&tdx, &collateral(), &accepting(), at(INSIDE)).unwrap_err();
    assert_eq!(e.check(), Some("dcap.tee_type"));
}

#[test]
fn flipped_bytes_fail_naming_the_check() {
    let quote = fixture("quote.bin");
    let coll = collateral();
    let now = at(INSIDE);
    let q = veil_attest::dcap::Quote::parse(&quote).unwrap();
    let sig_start = q.signed_len + 4;
    let key_start = sig_start + 64;
    let qe_report_start = key_start + 64; // v3: the QE report follows directly
    let qe_sig_start = qe_report_start + 384;
    let auth_start = qe_sig_start + 64 + 2;
    let chain_start = auth_start + q.qe_auth_data.len() + 6;
    let cases: &[(&str, usize, &str)] = &[
        ("header pce_svn", 10, "dcap.quote_signature"),
        ("CPUSVN", 48, "dcap.quote_signature"),
        ("attributes", 48 + 48, "dcap.quote_signature"),
        ("MRENCLAVE", 48 + 64, "dcap.quote_signature"),
        ("MRSIGNER", 48 + 128 + 31, "dcap.quote_signature"),
        ("CONFIGID", 48 + 192, "dcap.quote_signature"),
        ("ISVSVN", 48 + 258, "dcap.quote_signature"),
        ("report data", 48 + 383, "dcap.quote_signature"),
        ("quote signature", sig_start + 40, "dcap.quote_signature"),
        ("attestation key", key_start + 63, "dcap.attestation_key"),
        (
            "QE report",
            qe_report_start + 64,
            "dcap.qe_report_signature",
        ),
        (
            "QE report signature",
            qe_sig_start,
            "dcap.qe_report_signature",
        ),
        ("QE auth data", auth_start + 31, "dcap.attestation_key"),
        ("PCK chain PEM", chain_start + 300, "dcap.pck_chain"),
    ];
    for (what, off, check) in cases {
        let mut t = quote.clone();
        t[*off] ^= 0x80;
        let e = sgx::verify(&t, &coll, &accepting(), now).unwrap_err();
        assert_eq!(e.check(), Some(*check), "{what} at {off:#x}: {e}");
    }
}
