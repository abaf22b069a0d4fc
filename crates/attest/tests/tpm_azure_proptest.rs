//! Property tests for the TPM and Azure vTPM parsers: arbitrary bytes never
//! panic, mutated real structures never panic, and a mutated real HCL report
//! or TPM quote never verifies.

use std::sync::OnceLock;

use proptest::prelude::*;
use veil_attest::azure::{self, AzureEvidence, HclReport, Kind};
use veil_attest::tpm::evidence::TpmEvidence;
use veil_attest::tpm::{self, AkPublic, Attest, PcrSelection, Signature};

fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let p = format!(
        "{}/../../../shared/fixtures/{dir}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn snp_v2() -> &'static AzureEvidence {
    static E: OnceLock<AzureEvidence> = OnceLock::new();
    E.get_or_init(|| {
        azure::evidence::parse(Kind::Snp, &fixture("azure-snp-vtpm", "evidence-v2.json")).unwrap()
    })
}

fn tdx_v1() -> &'static AzureEvidence {
    static E: OnceLock<AzureEvidence> = OnceLock::new();
    E.get_or_init(|| {
        azure::evidence::parse(Kind::Tdx, &fixture("azure-tdx-vtpm", "evidence-v1.json")).unwrap()
    })
}

/// 2025-06-01, inside the fixture VCEK's validity.
const NOW: u64 = 1_748_736_000;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn tpm_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        if let Ok(a) = Attest::parse(&data) {
            // Quotes round-trip exactly.
            if a.quote.is_some() {
                prop_assert_eq!(a.to_bytes(), data.clone());
            }
        }
        if let Ok(s) = Signature::parse(&data) {
            prop_assert_eq!(s.to_bytes(), data.clone());
        }
        let _ = AkPublic::from_bytes(&data);
        let _ = TpmEvidence::parse(&data);
        let _ = tpm::verify(&data, &[]);
    }

    #[test]
    fn azure_parsers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..3000)) {
        if let Ok(r) = HclReport::parse(&data) {
            let _ = r.var_data_hash();
            let _ = r.runtime_data();
        }
        for kind in [Kind::Snp, Kind::Tdx] {
            let _ = azure::evidence::parse(kind, &data);
        }
        let _ = azure::verify_snp_vtpm(&data, &veil_attest::snp::Options::default(), NOW);
        let _ = azure::inspect_tdx_vtpm(&data);
    }

    #[test]
    fn json_shaped_input_never_panics(
        version in prop_oneof![Just(None), (0u64..4).prop_map(Some)],
        hcl in proptest::collection::vec(any::<u8>(), 0..64),
        msg in proptest::collection::vec(any::<u8>(), 0..64),
        npcrs in 0usize..30,
    ) {
        let pcrs: Vec<String> = (0..npcrs).map(|i| hex::encode([i as u8; 32])).collect();
        let mut v = serde_json::json!({
            "tpm_quote": {"signature": hex::encode(&msg), "message": hex::encode(&msg), "pcrs": pcrs},
            "hcl_report": base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE, &hcl),
            "vcek": "AAAA",
        });
        if let Some(n) = version {
            v["version"] = n.into();
        }
        let s = v.to_string();
        let _ = azure::verify_snp_vtpm(s.as_bytes(), &veil_attest::snp::Options::default(), NOW);
        let _ = azure::inspect_tdx_vtpm(s.as_bytes());
    }

    #[test]
    fn a_mutated_hcl_report_never_verifies(
        edits in proptest::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
    ) {
        let mut ev = snp_v2().clone();
        // One edit per byte: two non-zero XORs of the same byte can cancel
        // out (x ^ x = 0) and leave the report as it was.
        let mut touched = std::collections::BTreeSet::new();
        for (at, x) in &edits {
            let i = at.index(ev.hcl_report.len());
            if touched.insert(i) {
                ev.hcl_report[i] ^= x;
            }
        }
        prop_assert_ne!(&ev.hcl_report, &snp_v2().hcl_report);
        let r = azure::verify_snp_vtpm(
            ev.to_json(Kind::Snp).as_bytes(),
            &veil_attest::snp::Options::default(),
            NOW,
        );
        prop_assert!(r.is_err());
    }

    #[test]
    fn a_mutated_vtpm_quote_never_verifies(
        at in any::<prop::sample::Index>(),
        x in 1u8..=255,
        truncate in any::<bool>(),
    ) {
        let mut ev = tdx_v1().clone();
        let i = at.index(ev.message.len());
        if truncate {
            ev.message.truncate(i);
        } else {
            ev.message[i] ^= x;
        }
        prop_assert!(azure::inspect_tdx_vtpm(ev.to_json(Kind::Tdx).as_bytes()).is_err());
    }

    #[test]
    fn quote_structures_round_trip(
        nonce in proptest::collection::vec(any::<u8>(), 0..=64),
        pcrs in proptest::collection::btree_set(0usize..24, 0..24),
        digest in proptest::collection::vec(any::<u8>(), 0..=64),
    ) {
        let a = Attest::new_quote(&nonce, vec![PcrSelection::new(tpm::alg::SHA256, 3, pcrs.clone())], digest);
        let parsed = Attest::parse(&a.to_bytes()).unwrap();
        prop_assert_eq!(&parsed, &a);
        let got = parsed.quote.unwrap().pcr_select[0].indices();
        prop_assert_eq!(got, pcrs.into_iter().collect::<Vec<_>>());
    }
}
