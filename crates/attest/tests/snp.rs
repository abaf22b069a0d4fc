//! SEV-SNP verification against the real reports and certificates in
//! `shared/fixtures/snp` (see that folder's README for what must hold).

use std::collections::BTreeMap;

use proptest::prelude::*;
use veil_attest::snp::{self, ChainCache, Options, Product, Report, certs};
use veil_attest::{Context, Error, Expectations, Tee};

const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/snp/");
/// 2025-01-01T00:00:00Z: inside every fixture certificate's validity.
const NOW: u64 = 1_735_689_600;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn opts(certs: &[&str]) -> Options<'static> {
    Options {
        certs: certs.iter().map(|c| fixture(c)).collect(),
        vmpl: Some(0),
        ..Default::default()
    }
}

fn verify(report: &[u8], o: Options<'_>, exp: Expectations) -> Result<veil_attest::Claims, Error> {
    let ctx = Context {
        now_unix: NOW,
        expectations: exp,
        snp: o,
        ..Default::default()
    };
    veil_attest::verify(Tee::Snp, report, &ctx)
}

/// The Milan VCEK fixture report, verified with its VCEK.
fn milan_vcek(exp: Expectations) -> Result<veil_attest::Claims, Error> {
    verify(
        &fixture("milan-vcek-report.bin"),
        opts(&["milan-vcek.der"]),
        exp,
    )
}

fn check_of(r: Result<veil_attest::Claims, Error>) -> String {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => {
            let msg = e.to_string();
            format!("{}|{msg}", e.check().unwrap_or("malformed"))
        }
    }
}

#[test]
fn milan_vcek_report_verifies_to_pinned_ark() {
    let c = milan_vcek(Expectations::default()).expect("real Milan VCEK report verifies");
    assert_eq!(c.tee, Tee::Snp);
    assert!(c.hardware_backed);
    assert_eq!(c.platform.product, "Milan");
    assert_eq!(c.platform.signer, "vcek");
    assert_eq!(c.measurement.len(), 48);
    assert_eq!(c.init_data.len(), 32);
    assert_eq!(c.raw["version"], 2);
    assert_eq!(c.raw["chip_id_checked"], true);
    assert!(!c.debug);
    let expected: BTreeMap<String, u64> = [
        ("bootloader", 3),
        ("tee", 0),
        ("snp", 8),
        ("microcode", 115),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(c.tcb, expected);
}

#[test]
fn milan_vlek_report_verifies_through_asvk() {
    let mut o = opts(&["milan-vlek.der"]);
    o.vmpl = Some(1);
    let c = verify(
        &fixture("milan-vlek-report.bin"),
        o,
        Expectations::default(),
    )
    .expect("VLEK report verifies");
    assert_eq!(c.platform.signer, "vlek");
    assert_eq!(c.raw["version"], 3);
    assert_eq!(c.raw["vmpl"], 1);
}

#[test]
fn vlek_report_at_vmpl1_refused_when_vmpl0_required() {
    let r = verify(
        &fixture("milan-vlek-report.bin"),
        opts(&["milan-vlek.der"]),
        Expectations::default(),
    );
    let m = check_of(r);
    assert!(m.starts_with("snp.vmpl|"), "{m}");
    assert!(m.contains("expected 0, got 1"), "{m}");
}

#[test]
fn vlek_report_without_vlek_chain_refused() {
    let mut o = opts(&["milan-vcek.der"]);
    o.vmpl = Some(1);
    let m = check_of(verify(
        &fixture("milan-vlek-report.bin"),
        o,
        Expectations::default(),
    ));
    assert!(m.starts_with("snp.endorsement_key|"), "{m}");
    assert!(m.contains("VLEK") && m.contains("ASVK"), "{m}");
}

#[test]
fn milan_report_2_hex_with_chain_file_verifies() {
    let c = verify(
        &fixture("milan-report-2.hex"),
        opts(&["milan-report-2-vcek.der", "milan-cert-chain.pem"]),
        Expectations::default(),
    )
    .expect("hex report with its VCEK and chain verifies");
    assert_eq!(c.platform.product, "Milan");
}

#[test]
fn invalid_vceks_are_refused() {
    for bad in ["invalid-vcek-legacy.der", "invalid-vcek-new.der"] {
        let r = verify(
            &fixture("milan-vcek-report.bin"),
            opts(&[bad]),
            Expectations::default(),
        );
        assert!(r.is_err(), "{bad} must not verify the Milan report");
    }
}

#[test]
fn pinned_roots_chain_for_every_product() {
    for p in Product::ALL {
        let r = certs::pinned(p);
        certs::verify_issued_by(&r.ark, &r.ark, NOW).expect("ARK self-signed");
        certs::verify_issued_by(&r.ask, &r.ark, NOW).expect("ASK signed by ARK");
        certs::verify_issued_by(&r.asvk, &r.ark, NOW).expect("ASVK signed by ARK");
        assert_eq!(certs::subject_cn(&r.ark), format!("ARK-{}", p.name()));
    }
    // Another product's ARK does not sign Milan's ASK.
    let m = certs::pinned(Product::Milan);
    let g = certs::pinned(Product::Genoa);
    assert!(certs::verify_issued_by(&m.ask, &g.ark, NOW).is_err());
}

#[test]
fn turin_vcek_chains_to_pinned_turin_roots() {
    let vcek = certs::parse_certs(&fixture("turin-vcek.der"))
        .unwrap()
        .remove(0);
    let roots = certs::pinned(Product::Turin);
    certs::verify_issued_by(&vcek, &roots.ask, NOW).expect("Turin VCEK signed by pinned ASK");
    assert_eq!(certs::product_of(&vcek), Some(Product::Turin));
    let info = certs::endorsement_key_info(&vcek).unwrap();
    assert!(info.tcb.fmc.is_some(), "Turin VCEKs carry an FMC SPL");
    assert_eq!(info.hwid.map(|h| h.len()), Some(8));
    let chain = certs::parse_certs(&fixture("turin-cert-chain.pem")).unwrap();
    assert!(chain.iter().any(|c| certs::same_key(c, &roots.ask)));
    assert!(chain.iter().any(|c| certs::same_key(c, &roots.ark)));
}

#[test]
fn wrong_report_data_refused() {
    let exp = Expectations {
        report_data: Some(vec![0xAB; 48]),
        ..Default::default()
    };
    let m = check_of(milan_vcek(exp));
    assert!(
        m.starts_with("report_data|report_data mismatch: expected abab"),
        "{m}"
    );
}

#[test]
fn wrong_init_data_digest_refused() {
    let exp = Expectations {
        init_data_digest: Some(vec![0x11; 32]),
        ..Default::default()
    };
    let m = check_of(milan_vcek(exp));
    assert!(m.starts_with("init_data|host_data mismatch"), "{m}");
    assert!(m.contains("expected 1111"), "{m}");
}

#[test]
fn matching_expectations_accepted() {
    let report = Report::parse(&fixture("milan-vcek-report.bin")).unwrap();
    let exp = Expectations {
        report_data: Some(report.report_data.to_vec()),
        init_data_digest: Some(report.host_data.to_vec()),
        min_tcb: [("microcode".to_string(), 115), ("snp".to_string(), 8)].into(),
        ..Default::default()
    };
    verify(report.as_bytes(), opts(&["milan-vcek.der"]), exp).expect("all expectations hold");
}

#[test]
fn tcb_below_minimum_refused() {
    let exp = Expectations {
        min_tcb: [("microcode".to_string(), 200)].into(),
        ..Default::default()
    };
    let m = check_of(milan_vcek(exp));
    assert!(
        m.starts_with("tcb|TCB component microcode below minimum: expected >= 200, got 115"),
        "{m}"
    );
}

#[test]
fn debug_claim_refused_unless_allowed() {
    // Real reports have debug off; the debug check is the shared
    // expectation applied to the verified claims.
    let mut c = milan_vcek(Expectations::default()).unwrap();
    c.debug = true;
    let e = Expectations::default().check(&c).unwrap_err();
    assert_eq!(e.check(), Some("debug"));
    assert!(e.to_string().contains("expected debug off, got debug on"));
    Expectations {
        allow_debug: true,
        ..Default::default()
    }
    .check(&c)
    .unwrap();
}

#[test]
fn missing_vcek_is_named() {
    let m = check_of(verify(
        &fixture("milan-vcek-report.bin"),
        opts(&[]),
        Expectations::default(),
    ));
    assert!(m.starts_with("snp.endorsement_key|"), "{m}");
}

#[test]
fn vcek_found_in_offline_cache() {
    struct Dir(std::path::PathBuf);
    impl snp::CertSource for Dir {
        fn vcek(&self, p: Product, chip: &[u8; 64], tcb: &snp::TcbVersion) -> Option<Vec<u8>> {
            std::fs::read(self.0.join(certs::cache_path(p, chip, tcb))).ok()
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let report = Report::parse(&fixture("milan-vcek-report.bin")).unwrap();
    let rel = certs::cache_path(
        Product::Milan,
        &report.chip_id,
        &report.reported_tcb_for(Product::Milan),
    );
    assert!(
        rel.starts_with("vcek/Milan/") && rel.ends_with("/bl3_tee0_snp8_ucode115.der"),
        "{rel}"
    );
    let path = dir.path().join(&rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, fixture("milan-vcek.der")).unwrap();
    let src = Dir(dir.path().to_path_buf());
    let o = Options {
        cert_source: Some(&src),
        vmpl: Some(0),
        ..Default::default()
    };
    verify(report.as_bytes(), o, Expectations::default()).expect("VCEK from cache");
}

/// Re-express a raw report in the `sev` crate's serde form (CoCo evidence).
fn coco_json(raw: &[u8], with_vcek: bool) -> Vec<u8> {
    let b = |r: std::ops::Range<usize>| raw[r].to_vec();
    let u32_at = |o: usize| u32::from_le_bytes(raw[o..o + 4].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(raw[o..o + 8].try_into().unwrap());
    let tcb = |o: usize| serde_json::json!({"fmc": null, "bootloader": raw[o], "tee": raw[o+1], "snp": raw[o+6], "microcode": raw[o+7]});
    let v = u32_at(0);
    let cpuid = |o: usize| {
        if v >= 3 {
            serde_json::json!(raw[o])
        } else {
            serde_json::Value::Null
        }
    };
    let mut j = serde_json::json!({
        "attestation_report": {
            "version": v, "guest_svn": u32_at(4), "policy": u64_at(8),
            "family_id": b(0x10..0x20), "image_id": b(0x20..0x30), "vmpl": u32_at(0x30),
            "sig_algo": u32_at(0x34), "current_tcb": tcb(0x38), "plat_info": u64_at(0x40),
            "key_info": u32_at(0x48), "report_data": b(0x50..0x90), "measurement": b(0x90..0xC0),
            "host_data": b(0xC0..0xE0), "id_key_digest": b(0xE0..0x110),
            "author_key_digest": b(0x110..0x140), "report_id": b(0x140..0x160),
            "report_id_ma": b(0x160..0x180), "reported_tcb": tcb(0x180),
            "cpuid_fam_id": cpuid(0x188), "cpuid_mod_id": cpuid(0x189), "cpuid_step": cpuid(0x18A),
            "chip_id": b(0x1A0..0x1E0), "committed_tcb": tcb(0x1E0),
            "current": {"build": raw[0x1E8], "minor": raw[0x1E9], "major": raw[0x1EA]},
            "committed": {"build": raw[0x1EC], "minor": raw[0x1ED], "major": raw[0x1EE]},
            "launch_tcb": tcb(0x1F0),
            "signature": {"r": b(0x2A0..0x2E8), "s": b(0x2E8..0x330)}
        },
        "cert_chain": null
    });
    if with_vcek {
        j["cert_chain"] =
            serde_json::json!([{"cert_type": "VCEK", "data": fixture("milan-vcek.der")}]);
    }
    serde_json::to_vec(&j).unwrap()
}

#[test]
fn coco_json_evidence_with_vcek_in_cert_chain_verifies() {
    let json = coco_json(&fixture("milan-vcek-report.bin"), true);
    let c =
        verify(&json, opts(&[]), Expectations::default()).expect("CoCo snp evidence JSON verifies");
    assert_eq!(c.platform.signer, "vcek");
}

#[test]
fn coco_json_with_altered_field_refused() {
    let mut v: serde_json::Value =
        serde_json::from_slice(&coco_json(&fixture("milan-vcek-report.bin"), true)).unwrap();
    v["attestation_report"]["guest_svn"] = 5.into();
    let m = check_of(verify(
        &serde_json::to_vec(&v).unwrap(),
        opts(&[]),
        Expectations::default(),
    ));
    assert!(
        m.starts_with("snp.signature|report signature does not verify with VCEK"),
        "{m}"
    );
}

#[test]
fn unrelated_product_certificates_are_ignored() {
    // A Genoa ASK passed off as Milan's: names differ so it is ignored, but a
    // certificate named SEV-Milan carrying another key must be refused.
    let genoa = certs::pinned(Product::Genoa);
    let milan_ask_cn = certs::subject_cn(&certs::pinned(Product::Milan).ask);
    assert_ne!(certs::subject_cn(&genoa.ask), milan_ask_cn);
    let r = verify(
        &fixture("milan-vcek-report.bin"),
        opts(&["milan-vcek.der", "genoa-ask-ark-asvk.pem"]),
        Expectations::default(),
    );
    assert!(
        r.is_ok(),
        "unrelated product certificates are ignored: {r:?}"
    );
}

fn shared_cache() -> &'static ChainCache {
    static C: std::sync::OnceLock<ChainCache> = std::sync::OnceLock::new();
    C.get_or_init(ChainCache::default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    /// Any single-byte change in the signed part or the signature fails.
    #[test]
    fn any_flipped_byte_fails(pos in 0usize..0x330, xor in 1u8..=255) {
        let mut r = fixture("milan-vcek-report.bin");
        r[pos] ^= xor;
        let o = Options { certs: vec![fixture("milan-vcek.der")], vmpl: None, allow_migration_agent: true, chain_cache: Some(shared_cache()), ..Default::default() };
        let res = snp::verify(&r, &o, NOW);
        prop_assert!(res.is_err(), "flip at {pos:#x} accepted");
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let o = Options { certs: vec![fixture("milan-vcek.der")], ..Default::default() };
        let _ = snp::verify(&bytes, &o, NOW);
    }

    /// Random reports of the right length exercise every field decoder.
    #[test]
    fn arbitrary_reports_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0x4A0..=0x4A0), v in 2u32..=5) {
        let mut b = bytes;
        b[0..4].copy_from_slice(&v.to_le_bytes());
        if let Ok(r) = Report::parse(&b) {
            let _ = r.to_json(Product::Turin);
            let _ = r.signing_key();
        }
    }

    /// Arbitrary JSON-ish input never panics.
    #[test]
    fn arbitrary_json_never_panics(s in "\\{\"attestation_report\":.{0,200}\\}") {
        let _ = snp::evidence::parse(s.as_bytes());
    }
}
