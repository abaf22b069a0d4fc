//! Azure confidential VM evidence from `shared/fixtures/azure-snp-vtpm` and
//! `shared/fixtures/azure-tdx-vtpm` (real Azure VMs, published by Trustee):
//! every evidence version verifies, and every alteration is refused by the
//! check that guards it.
//!
//! Checks named in the tests: `azure.report_type`, `azure.var_data_hash`,
//! `azure.td_report`, `azure.user_data`, `tpm.signature`, `tpm.pcr_digest`,
//! `snp.*` (the embedded report and its VCEK), `dcap.*` (the TD quote),
//! `report_data` / `init_data` (the caller's expectations).

use serde_json::Value;
use veil_attest::azure::{self, AzureEvidence, Kind, hcl};
use veil_attest::dcap::{Collateral, TcbPolicy, parse_rfc3339};
use veil_attest::snp::{self, ChainCache};
use veil_attest::{Claims, Context, Error, Tee};

fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let p = format!(
        "{}/../../../shared/fixtures/{dir}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn snp_ev(v: u32) -> Vec<u8> {
    fixture("azure-snp-vtpm", &format!("evidence-v{v}.json"))
}

fn tdx_ev(v: u32) -> Vec<u8> {
    fixture("azure-tdx-vtpm", &format!("evidence-v{v}.json"))
}

/// Inside every fixture VCEK's validity (2025-01-28 .. 2030-05-02).
fn now() -> u64 {
    parse_rfc3339("2025-06-01T00:00:00Z").unwrap()
}

fn opts(cache: &ChainCache) -> snp::Options<'_> {
    snp::Options {
        vmpl: Some(0),
        chain_cache: Some(cache),
        ..Default::default()
    }
}

fn verify_snp(ev: &[u8]) -> Result<Claims, Error> {
    azure::verify_snp_vtpm(ev, &snp::Options::default(), now())
}

fn check_of(r: Result<Claims, Error>) -> String {
    match r {
        Ok(_) => panic!("altered evidence verified"),
        Err(Error::Refused(r)) => r.check.to_string(),
        Err(e @ Error::Malformed { .. }) => format!("malformed: {e}"),
    }
}

fn padded(b: &[u8]) -> Vec<u8> {
    let mut v = b.to_vec();
    v.resize(64, 0);
    v
}

const CHALLENGE: &[u8] = b"challenge";
const V2_NONCE: &str = "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef";

/// v0, v1 and v2 verify completely: HCL structure, runtime-data hash in the
/// SNP REPORT_DATA, SNP report signature by the VCEK in the evidence, VCEK
/// chain to AMD's pinned Milan roots and its TCB, VMPL 0, AK signature on
/// the TPM quote, quote magic/type, PCR digest, and (v2) user-data.
#[test]
fn every_snp_vtpm_version_verifies() {
    for (v, nonce, pcr0) in [
        (
            0,
            CHALLENGE.to_vec(),
            "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced",
        ),
        (
            1,
            CHALLENGE.to_vec(),
            "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced",
        ),
        (
            2,
            hex::decode(V2_NONCE).unwrap(),
            "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7",
        ),
    ] {
        let c = verify_snp(&snp_ev(v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        assert_eq!(c.tee, Tee::AzSnpVtpm);
        assert!(c.hardware_backed);
        assert_eq!(c.platform.product, "Milan");
        assert_eq!(c.platform.signer, "vcek");
        assert_eq!(
            c.report_data,
            padded(&nonce),
            "v{v}: report_data is the quote's nonce"
        );
        assert_eq!(c.measurement.len(), 48);
        assert_eq!(c.raw["evidence_version"], v);
        assert_eq!(c.raw["pcrs"].as_array().unwrap().len(), 24);
        assert_eq!(c.raw["pcrs"][0], pcr0, "v{v}");
        assert_eq!(
            c.init_data,
            hex::decode(c.raw["pcrs"][8].as_str().unwrap()).unwrap()
        );
        assert_eq!(c.raw["tpm_quote"]["signature"]["scheme"], "RSASSA");
        assert_eq!(c.raw["tpm_quote"]["extra_data"], hex::encode(&nonce));
        assert_eq!(c.raw["hcl"]["report_type"], "snp");
        assert_eq!(c.raw["hcl"]["vm_configuration"]["secure-boot"], true);
        assert_eq!(c.raw["snp"]["vmpl"], 0);
        // The hardware REPORT_DATA starts with the runtime-data hash.
        let hw_rd = c.raw["snp"]["report_data"].as_str().unwrap();
        assert!(hw_rd.starts_with(c.raw["hcl"]["var_data_hash"].as_str().unwrap()));
        assert!(c.tcb.contains_key("microcode"));
    }
}

/// The generic dispatcher applies the caller's expectations: the KBS nonce
/// is compared with the quote's extraData, the init-data digest with PCR 8.
#[test]
fn dispatcher_compares_nonce_and_init_data_through_pcr8() {
    let mut ctx = Context {
        now_unix: now(),
        ..Default::default()
    };
    ctx.expectations.report_data = Some(CHALLENGE.to_vec());
    veil_attest::verify(Tee::AzSnpVtpm, &snp_ev(1), &ctx).unwrap();

    ctx.expectations.report_data = Some(b"another nonce".to_vec());
    let e = veil_attest::verify(Tee::AzSnpVtpm, &snp_ev(1), &ctx).unwrap_err();
    assert_eq!(e.check(), Some("report_data"), "{e}");
    assert!(e.to_string().contains(&hex::encode(CHALLENGE)), "{e}");

    // The fixtures bound no init-data: PCR 8 is zero, so every digest is refused,
    // and the message shows the PCR 8 value the digest must produce.
    ctx.expectations.report_data = None;
    let digest = [0x11u8; 32];
    ctx.expectations.init_data_digest = Some(digest.to_vec());
    let e = veil_attest::verify(Tee::AzSnpVtpm, &snp_ev(2), &ctx).unwrap_err();
    assert_eq!(e.check(), Some("init_data"), "{e}");
    assert!(
        e.to_string()
            .contains(&hex::encode(azure::expected_pcr8(&digest))),
        "{e}"
    );
    // A digest a vTPM cannot extend (sha384 init-data) is refused as such.
    ctx.expectations.init_data_digest = Some(vec![0x11; 48]);
    let e = veil_attest::verify(Tee::AzSnpVtpm, &snp_ev(2), &ctx).unwrap_err();
    assert!(e.to_string().contains("SHA-256 init-data digest"), "{e}");
}

#[test]
fn expected_pcr8_is_one_extend_of_a_zeroed_pcr() {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n");
    let mut input = [0u8; 64];
    input[32..].copy_from_slice(&d);
    assert_eq!(
        azure::expected_pcr8(&d),
        <[u8; 32]>::from(Sha256::digest(input))
    );
}

fn parsed(kind: Kind, ev: &[u8]) -> AzureEvidence {
    azure::evidence::parse(kind, ev).unwrap()
}

#[test]
fn altered_pcr_values_are_refused() {
    for pcr in [0usize, 8, 23] {
        let mut ev = parsed(Kind::Snp, &snp_ev(2));
        ev.pcrs.0[pcr][5] ^= 0x40;
        let e = verify_snp(ev.to_json(Kind::Snp).as_bytes()).unwrap_err();
        assert_eq!(e.check(), Some("tpm.pcr_digest"), "PCR {pcr}: {e}");
        assert!(e.to_string().contains("PCRs 0-23"), "{e}");
    }
}

#[test]
fn every_altered_quote_byte_is_refused() {
    let cache = ChainCache::default();
    let base = parsed(Kind::Snp, &snp_ev(2));
    let nonce_at = {
        // magic(4) type(2) qualifiedSigner(2+34) extraData size(2)
        4 + 2 + 2 + 34 + 2
    };
    for i in 0..base.message.len() {
        let mut ev = base.clone();
        ev.message[i] ^= 0x01;
        let got = check_of(azure::verify_snp_vtpm(
            ev.to_json(Kind::Snp).as_bytes(),
            &opts(&cache),
            now(),
        ));
        assert!(
            got == "tpm.signature" || got.starts_with("malformed: malformed TPMS_ATTEST"),
            "message byte {i}: {got}"
        );
        if i == nonce_at {
            assert_eq!(got, "tpm.signature", "altered nonce");
        }
    }
    let sig_len = match &base.signature {
        veil_attest::tpm::Signature::RsaSsa { sig, .. } => sig.len(),
        _ => unreachable!(),
    };
    for i in (0..sig_len).step_by(17) {
        let mut ev = base.clone();
        if let veil_attest::tpm::Signature::RsaSsa { sig, .. } = &mut ev.signature {
            sig[i] ^= 0x80;
        }
        let e = verify_snp(ev.to_json(Kind::Snp).as_bytes()).unwrap_err();
        assert_eq!(e.check(), Some("tpm.signature"), "signature byte {i}: {e}");
    }
}

/// Flip every byte of the HCL report: each flip is refused, and the check
/// says which part was altered.
#[test]
fn every_altered_hcl_byte_is_refused() {
    let cache = ChainCache::default();
    let base = parsed(Kind::Snp, &snp_ev(2));
    let hw = hcl::HW_REPORT.start;
    let var_end = {
        let r = hcl::HclReport::parse(&base.hcl_report).unwrap();
        hcl::VAR_DATA_OFFSET + r.var_data.len()
    };
    for i in 0..base.hcl_report.len() {
        let mut ev = base.clone();
        ev.hcl_report[i] ^= 0x01;
        let got = check_of(azure::verify_snp_vtpm(
            ev.to_json(Kind::Snp).as_bytes(),
            &opts(&cache),
            now(),
        ));
        let ok = if i < hw {
            got.starts_with("malformed: malformed HCL report")
        } else if (hw + 0x50..hw + 0x70).contains(&i) {
            // REPORT_DATA[0..32]: the runtime-data hash no longer matches.
            got == "azure.var_data_hash"
        } else if i < hw + 0x330 {
            // Signed report fields (or the signature itself).
            got.starts_with("snp.") || got.starts_with("malformed: malformed SNP report")
        } else if i < hcl::VAR_DATA_OFFSET {
            got.starts_with("malformed: malformed HCL report")
        } else if i < var_end {
            got == "azure.var_data_hash"
        } else {
            got.contains("padding byte")
        };
        assert!(ok, "HCL byte {i:#x}: {got}");
    }
}

#[test]
fn user_data_must_carry_the_nonce_from_v2_on() {
    // v1 evidence has no user-data; presented as v2 it is refused.
    let mut ev = parsed(Kind::Snp, &snp_ev(1));
    ev.version = 2;
    let e = verify_snp(ev.to_json(Kind::Snp).as_bytes()).unwrap_err();
    assert_eq!(e.check(), Some("azure.user_data"), "{e}");
}

#[test]
fn hcl_of_another_tee_or_vm_is_refused() {
    // A TDX HCL report in SNP evidence.
    let mut ev = parsed(Kind::Snp, &snp_ev(1));
    ev.hcl_report = parsed(Kind::Tdx, &tdx_ev(1)).hcl_report;
    let e = verify_snp(ev.to_json(Kind::Snp).as_bytes()).unwrap_err();
    assert_eq!(e.check(), Some("azure.report_type"), "{e}");

    // The HCL report of another VM: its AK did not sign this quote.
    let mut ev = parsed(Kind::Snp, &snp_ev(2));
    let other = parsed(Kind::Snp, &snp_ev(1));
    ev.hcl_report = other.hcl_report;
    ev.vcek = other.vcek;
    let e = verify_snp(ev.to_json(Kind::Snp).as_bytes()).unwrap_err();
    assert_eq!(e.check(), Some("tpm.signature"), "{e}");

    // Another chip's VCEK does not verify this report.
    let mut ev = parsed(Kind::Snp, &snp_ev(2));
    ev.vcek = parsed(Kind::Snp, &snp_ev(1)).vcek;
    let e = verify_snp(ev.to_json(Kind::Snp).as_bytes()).unwrap_err();
    assert!(e.check().is_some_and(|c| c.starts_with("snp.")), "{e}");
}

#[test]
fn vcek_validity_is_checked_at_the_given_time() {
    let late = parse_rfc3339("2033-01-01T00:00:00Z").unwrap();
    let e = azure::verify_snp_vtpm(&snp_ev(2), &snp::Options::default(), late).unwrap_err();
    assert!(e.check().is_some_and(|c| c.starts_with("snp.")), "{e}");
}

#[test]
fn malformed_documents_say_what_is_wrong() {
    let e = verify_snp(br#"{"version":7}"#).unwrap_err();
    assert!(
        e.is_malformed() && e.to_string().contains("unsupported evidence version 7"),
        "{e}"
    );
    let mut v: Value = serde_json::from_slice(&snp_ev(1)).unwrap();
    v["surprise"] = Value::Bool(true);
    let e = verify_snp(v.to_string().as_bytes()).unwrap_err();
    assert!(
        e.is_malformed() && e.to_string().contains("surprise"),
        "{e}"
    );
    let mut ev = parsed(Kind::Snp, &snp_ev(1));
    ev.pcrs.0.pop();
    let e = verify_snp(ev.to_json(Kind::Snp).as_bytes()).unwrap_err();
    assert!(
        e.to_string().contains("expected 24 SHA-256 PCR values"),
        "{e}"
    );
}

/// TDX: the fixtures carry no DCAP collateral for their TD quote, so the
/// full path cannot complete offline. `inspect_tdx_vtpm` runs every vTPM and
/// HCL check (structure, runtime-data hash in the TD quote's REPORT_DATA,
/// HCL TDREPORT == signed quote body, AK signature, quote magic/type, PCR
/// digest) and parses the TD quote without verifying its chain.
#[test]
fn every_tdx_vtpm_version_passes_the_vtpm_checks() {
    for v in [0, 1] {
        let c = azure::inspect_tdx_vtpm(&tdx_ev(v)).unwrap_or_else(|e| panic!("v{v}: {e}"));
        assert_eq!(c.tee, Tee::AzTdxVtpm);
        assert!(!c.hardware_backed, "TD quote chain not verified");
        assert_eq!(c.raw["tdx"]["signature_verified"], false);
        assert_eq!(c.report_data, padded(CHALLENGE));
        assert_eq!(c.raw["hcl"]["report_type"], "tdx");
        assert_eq!(c.raw["hcl"]["version"], 2);
        assert_eq!(
            c.measurement,
            hex::decode(c.raw["tdx"]["mr_td"].as_str().unwrap()).unwrap()
        );
        assert_eq!(
            c.raw["pcrs"][0],
            "782b20b10f55cc46e2142cc2145d548698073e5beb82752c8d7f9279f0d8a273"
        );
    }
}

/// The full TDX path runs the DCAP verifier: with collateral of another
/// platform (the `tdx/` fixture's) it is refused by a `dcap.*` check.
#[test]
fn tdx_vtpm_quote_goes_through_dcap() {
    let collateral = Collateral::from_json(&fixture("tdx", "collateral.json")).unwrap();
    let at = parse_rfc3339("2025-07-01T00:00:00Z").unwrap();
    let e = azure::verify_tdx_vtpm(&tdx_ev(1), &collateral, &TcbPolicy::default(), at).unwrap_err();
    assert!(e.check().is_some_and(|c| c.starts_with("dcap.")), "{e}");
}

#[test]
fn altered_tdx_vtpm_evidence_is_refused() {
    let base = parsed(Kind::Tdx, &tdx_ev(1));
    let inspect =
        |ev: &AzureEvidence| check_of(azure::inspect_tdx_vtpm(ev.to_json(Kind::Tdx).as_bytes()));

    let mut ev = base.clone();
    ev.pcrs.0[8][0] ^= 1;
    assert_eq!(inspect(&ev), "tpm.pcr_digest");

    let mut ev = base.clone();
    let last = ev.message.len() - 1;
    ev.message[last] ^= 1;
    assert_eq!(inspect(&ev), "tpm.signature");

    // The HCL's (unsigned) TDREPORT must agree with the signed quote.
    let mut ev = base.clone();
    ev.hcl_report[hcl::HW_REPORT.start + 528] ^= 1; // MRTD
    assert_eq!(inspect(&ev), "azure.td_report");

    // Runtime data (the AK JWK) altered.
    let mut ev = base.clone();
    ev.hcl_report[hcl::VAR_DATA_OFFSET + 100] ^= 1;
    assert_eq!(inspect(&ev), "azure.var_data_hash");

    // The TD quote's REPORT_DATA altered: the binding breaks first.
    let mut ev = base.clone();
    let q = ev.td_quote.as_mut().unwrap();
    q[48 + 520] ^= 1;
    assert_eq!(inspect(&ev), "azure.var_data_hash");

    // SNP evidence is not TDX evidence.
    let mut ev = base.clone();
    ev.hcl_report = parsed(Kind::Snp, &snp_ev(1)).hcl_report;
    assert_eq!(inspect(&ev), "azure.report_type");
}
