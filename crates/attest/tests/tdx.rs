//! Intel TDX quotes from `shared/fixtures/tdx`: verification with collateral
//! at a time inside and outside its validity, parsing without collateral,
//! and tampering with every signed region.

mod dcap_common;

use dcap_common::{INSIDE, at};
use veil_attest::Tee;
use veil_attest::dcap::{Collateral, TcbPolicy};
use veil_attest::tdx;

fn fixture(name: &str) -> Vec<u8> {
    dcap_common::fixture("tdx", name)
}

fn collateral() -> Collateral {
    dcap_common::collateral("tdx")
}

/// The fixture quote with its collateral and the default policy at `time`.
fn verify_fixture_at(time: &str) -> Result<veil_attest::Claims, veil_attest::Error> {
    tdx::verify(
        &fixture("quote.bin"),
        &collateral(),
        &TcbPolicy::default(),
        at(time),
    )
}

/// The fixture quote checked against the collateral `j` (JSON) at INSIDE:
/// the refusal.
fn refused_with_collateral(j: &serde_json::Value) -> veil_attest::Error {
    let c = Collateral::from_json(j.to_string().as_bytes()).unwrap();
    tdx::verify(&fixture("quote.bin"), &c, &TcbPolicy::default(), at(INSIDE)).unwrap_err()
}

#[test]
fn quote_verifies_up_to_date_inside_window() {
    let c = verify_fixture_at(INSIDE).unwrap();
    assert_eq!(c.tee, Tee::Tdx);
    assert!(c.hardware_backed);
    assert_eq!(c.platform.signer, "pck");
    assert_eq!(c.raw["tcb_status"], "UpToDate");
    assert_eq!(c.raw["advisory_ids"], serde_json::json!([]));
    assert_eq!(c.raw["signature_verified"], true);
    assert_eq!(c.raw["tcb_policy"]["exception"], serde_json::Value::Null);
    assert_eq!(c.raw["quote_version"], 4);
    // MRTD is the measurement, MRCONFIGID the init-data field (48 bytes).
    assert_eq!(
        hex::encode(&c.measurement),
        c.raw["mr_td"].as_str().unwrap()
    );
    assert_eq!(c.init_data.len(), 48);
    assert_eq!(
        hex::encode(&c.init_data),
        c.raw["mr_config_id"].as_str().unwrap()
    );
    assert_eq!(c.report_data.len(), 64);
    assert_eq!(
        c.tcb.len(),
        18,
        "16 TEE_TCB_SVN components + qe_svn + pce_svn"
    );
    for k in [
        "rtmr0",
        "rtmr1",
        "rtmr2",
        "rtmr3",
        "mr_owner",
        "mr_owner_config",
        "mr_seam",
        "xfam",
        "td_attributes",
    ] {
        assert!(c.raw[k].is_string(), "{k}");
    }
    assert!(!c.debug);
    // The earliest expiry of the collateral is the PCK CRL's nextUpdate.
    assert_eq!(c.raw["collateral_expiration"], "2025-07-19T10:00:35Z");
}

#[test]
fn refused_after_window_naming_tcb_info() {
    let e = verify_fixture_at("2025-08-01T00:00:00Z").unwrap_err();
    assert_eq!(e.check(), Some("dcap.collateral_expired"));
    let m = e.to_string();
    assert!(
        m.starts_with("collateral expired: TCB info nextUpdate 2025-07-19T10:16:03Z, verification time 2025-08-01T00:00:00Z"),
        "{m}"
    );
    assert!(m.contains("QE identity nextUpdate"), "{m}");
}

#[test]
fn refused_before_window() {
    let e = verify_fixture_at("2025-06-01T00:00:00Z").unwrap_err();
    assert_eq!(e.check(), Some("dcap.collateral_not_yet_valid"), "{e}");
    assert!(
        e.to_string()
            .contains("verification time 2025-06-01T00:00:00Z"),
        "{e}"
    );
}

#[test]
fn coco_json_evidence_verifies() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let ev = serde_json::json!({
        "quote": b64.encode(fixture("quote.bin")),
        "cc_eventlog": b64.encode(b"not replayed"),
    });
    let c = tdx::verify_evidence(
        ev.to_string().as_bytes(),
        &collateral(),
        &TcbPolicy::default(),
        at(INSIDE),
    )
    .unwrap();
    assert_eq!(c.raw["cc_eventlog"]["bytes"], 12);
    assert_eq!(c.raw["cc_eventlog"]["replayed"], false);
}

#[test]
fn noncollateral_quotes_parse_but_say_unverified() {
    for (name, version) in [
        ("quote-v4-noncollateral.bin", 4),
        ("quote-v5-noncollateral.bin", 5),
    ] {
        let c = tdx::inspect(&fixture(name)).unwrap();
        assert_eq!(c.raw["quote_version"], version, "{name}");
        assert!(!c.hardware_backed, "{name}");
        assert_eq!(c.platform.signer, "unverified");
        assert_eq!(c.raw["signature_verified"], false);
        assert!(
            c.raw["verification"]
                .as_str()
                .unwrap()
                .starts_with("NOT VERIFIED")
        );
        assert_eq!(c.measurement.len(), 48);
        assert!(c.measurement.iter().any(|b| *b != 0), "{name}: MRTD is set");
        assert_eq!(c.init_data.len(), 48);
        assert!(c.raw["rtmr0"].is_string());
    }
    let v5 = tdx::inspect(&fixture("quote-v5-noncollateral.bin")).unwrap();
    assert!(v5.raw.get("tdx_version").is_some());
}

#[test]
fn sgx_quote_is_not_a_tdx_quote() {
    let sgx = dcap_common::fixture("sgx", "quote.bin");
    let e = tdx::verify(&sgx, &collateral(), &TcbPolicy::default(), at(INSIDE)).unwrap_err();
    assert_eq!(e.check(), Some("dcap.tee_type"));
    assert!(e.to_string().contains("expected TDX quote"), "{e}");
    let e = tdx::inspect(&sgx).unwrap_err();
    assert_eq!(e.check(), Some("dcap.tee_type"));
}

#[test]
fn sgx_collateral_does_not_fit_a_tdx_quote() {
    let sgx_coll = dcap_common::collateral("sgx");
    let e = tdx::verify(
        &fixture("quote.bin"),
        &sgx_coll,
        &TcbPolicy::default(),
        at(INSIDE),
    )
    .unwrap_err();
    assert_eq!(e.check(), Some("dcap.collateral_kind"));
    assert!(
        e.to_string()
            .contains("expected TCB info id TDX, got TCB info id SGX"),
        "{e}"
    );
}

/// Offsets inside `quote.bin` (v4): the signed header+body, the signature,
/// the attestation key, the QE report, its signature, the QE auth data and
/// the PCK chain. Each flipped byte must be refused by the check that
/// covers that region.
#[test]
fn flipped_bytes_fail_naming_the_check() {
    let quote = fixture("quote.bin");
    let coll = collateral();
    let now = at(INSIDE);
    let q = veil_attest::dcap::Quote::parse(&quote).unwrap();
    let sig_start = q.signed_len + 4; // after the signature data length
    let key_start = sig_start + 64;
    let qe_report_start = key_start + 64 + 6; // after cert data type + size
    let qe_sig_start = qe_report_start + 384;
    let auth_start = qe_sig_start + 64 + 2;
    let chain_start = auth_start + q.qe_auth_data.len() + 6;
    let cases: &[(&str, usize, &str)] = &[
        ("header qe_svn", 8, "dcap.quote_signature"),
        ("header user data", 40, "dcap.quote_signature"),
        ("TD tee_tcb_svn", 48, "dcap.quote_signature"),
        ("MRTD", 48 + 136 + 5, "dcap.quote_signature"),
        ("TD attributes", 48 + 120, "dcap.quote_signature"),
        ("MRCONFIGID", 48 + 184, "dcap.quote_signature"),
        ("RTMR3", 48 + 472 + 47, "dcap.quote_signature"),
        ("report data", 48 + 583, "dcap.quote_signature"),
        ("quote signature r", sig_start + 3, "dcap.quote_signature"),
        ("quote signature s", sig_start + 63, "dcap.quote_signature"),
        ("attestation key", key_start + 10, "dcap.attestation_key"),
        (
            "QE report",
            qe_report_start + 100,
            "dcap.qe_report_signature",
        ),
        (
            "QE report data",
            qe_report_start + 330,
            "dcap.qe_report_signature",
        ),
        (
            "QE report signature",
            qe_sig_start + 20,
            "dcap.qe_report_signature",
        ),
        ("QE auth data", auth_start + 1, "dcap.attestation_key"),
        ("PCK chain PEM", chain_start + 200, "dcap.pck_chain"),
        ("PCK chain PEM late", chain_start + 1500, "dcap.pck_chain"),
    ];
    for (what, off, check) in cases {
        let mut t = quote.clone();
        t[*off] ^= 0x01;
        let e = tdx::verify(&t, &coll, &TcbPolicy::default(), now).unwrap_err();
        assert!(!e.is_malformed(), "{what} at {off:#x}: {e}");
        assert_eq!(e.check(), Some(*check), "{what} at {off:#x}: {e}");
    }
}

#[test]
fn tampered_collateral_fails_naming_the_check() {
    let base: serde_json::Value = serde_json::from_slice(&fixture("collateral.json")).unwrap();

    // TCB info body altered (a status flipped): its signature no longer verifies.
    let mut j = base.clone();
    let ti = j["tcb_info"]
        .as_str()
        .unwrap()
        .replacen("UpToDate", "OutOfDate", 1);
    j["tcb_info"] = ti.into();
    let e = refused_with_collateral(&j);
    assert_eq!(e.check(), Some("dcap.tcb_info_signature"), "{e}");

    // QE identity signature altered.
    let mut j = base.clone();
    let mut sig = j["qe_identity_signature"].as_str().unwrap().to_string();
    sig.replace_range(0..2, if &sig[0..2] == "00" { "01" } else { "00" });
    j["qe_identity_signature"] = sig.into();
    let e = refused_with_collateral(&j);
    assert_eq!(e.check(), Some("dcap.qe_identity_signature"), "{e}");

    // Root CA CRL altered: it is no longer signed by the pinned root.
    let mut j = base.clone();
    let mut crl = hex::decode(j["root_ca_crl"].as_str().unwrap()).unwrap();
    let n = crl.len();
    crl[n - 5] ^= 1;
    j["root_ca_crl"] = hex::encode(crl).into();
    let e = refused_with_collateral(&j);
    assert_eq!(e.check(), Some("dcap.root_ca_crl"), "{e}");
}

#[test]
fn debug_policy_and_expectations_compose() {
    // The fixture TD is not a debug TD; Expectations on top of verified
    // claims still apply (wrong report data is refused with both values).
    let c = verify_fixture_at(INSIDE).unwrap();
    let exp = veil_attest::Expectations {
        report_data: Some(vec![0xAB; 48]),
        ..Default::default()
    };
    let e = exp.check(&c).unwrap_err();
    assert_eq!(e.check(), Some("report_data"));
    let exp = veil_attest::Expectations {
        init_data_digest: Some(c.init_data.clone()),
        report_data: Some(c.report_data.clone()),
        ..Default::default()
    };
    exp.check(&c).unwrap();
}

#[test]
fn pcs_directory_form_verifies_like_json() {
    // Lay the JSON collateral out as the PCS serves it: signed JSON bodies,
    // issuer chains as PEM files, CRLs as DER.
    let j: serde_json::Value = serde_json::from_slice(&fixture("collateral.json")).unwrap();
    let s = |k: &str| j[k].as_str().unwrap().to_string();
    let tcb = format!(
        r#"{{"tcbInfo":{},"signature":"{}"}}"#,
        s("tcb_info"),
        s("tcb_info_signature")
    );
    let qe = format!(
        r#"{{"enclaveIdentity":{},"signature":"{}"}}"#,
        s("qe_identity"),
        s("qe_identity_signature")
    );
    let pck_crl = hex::decode(s("pck_crl")).unwrap();
    let root_crl = hex::decode(s("root_ca_crl")).unwrap();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("tcb_info.json", tcb.into_bytes()),
        (
            "tcb_info_issuer_chain.pem",
            s("tcb_info_issuer_chain").into_bytes(),
        ),
        ("qe_identity.json", qe.into_bytes()),
        (
            "qe_identity_issuer_chain.pem",
            s("qe_identity_issuer_chain").into_bytes(),
        ),
        ("pck_crl.der", pck_crl),
        (
            "pck_crl_issuer_chain.pem",
            s("pck_crl_issuer_chain").into_bytes(),
        ),
        ("root_ca_crl.der", root_crl),
    ];
    let c = Collateral::from_pcs_files(files.iter().map(|(n, d)| (*n, d.as_slice()))).unwrap();
    let claims = tdx::verify(&fixture("quote.bin"), &c, &TcbPolicy::default(), at(INSIDE)).unwrap();
    assert_eq!(claims.raw["tcb_status"], "UpToDate");

    // A missing file and an unknown file are refused by name.
    let e =
        Collateral::from_pcs_files(files[1..].iter().map(|(n, d)| (*n, d.as_slice()))).unwrap_err();
    assert!(e.to_string().contains("missing tcb_info.json"), "{e}");
    let mut more = files.clone();
    more.push(("notes.txt", b"x".to_vec()));
    let e = Collateral::from_pcs_files(more.iter().map(|(n, d)| (*n, d.as_slice()))).unwrap_err();
    assert!(
        e.to_string().contains("unexpected file \"notes.txt\""),
        "{e}"
    );
}
