//! Property tests for the DCAP parsers of untrusted bytes: quotes, CoCo
//! evidence JSON, collateral JSON and PCS files never panic, and a real
//! quote with any byte changed in its signed part never verifies.

use proptest::prelude::*;
use veil_attest::dcap::{Collateral, DcapEvidence, Quote, TcbPolicy, TcbStatus};
use veil_attest::{sgx, tdx};

fn fixture(path: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../../shared/fixtures/{path}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

const INSIDE: u64 = 1_751_328_000; // 2025-07-01T00:00:00Z

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn quote_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..6000)) {
        let _ = Quote::parse(&bytes);
        let _ = tdx::inspect(&bytes);
        let _ = sgx::inspect(&bytes);
        let _ = DcapEvidence::parse(&bytes);
    }

    #[test]
    fn quote_parser_survives_headers_that_look_real(
        version in 3u16..6, tee in prop_oneof![Just(0u32), Just(0x81u32)],
        tail in proptest::collection::vec(any::<u8>(), 0..3000),
    ) {
        let mut b = Vec::new();
        b.extend_from_slice(&version.to_le_bytes());
        b.extend_from_slice(&2u16.to_le_bytes());
        b.extend_from_slice(&tee.to_le_bytes());
        b.extend_from_slice(&[0u8; 40]);
        b.extend_from_slice(&tail);
        let _ = Quote::parse(&b);
    }

    #[test]
    fn collateral_parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4000)) {
        let _ = Collateral::from_json(&bytes);
        let _ = Collateral::from_pcs_files([("tcb_info.json", bytes.as_slice())]);
        let _ = Collateral::from_pcs_files([("pck_crl.der", bytes.as_slice()), ("qe_identity.json", bytes.as_slice())]);
    }

    #[test]
    fn evidence_json_never_panics(s in "\\{\"quote\":\"[A-Za-z0-9+/=]{0,200}\"(,\"cc_eventlog\":(null|\"[A-Za-z0-9+/=]{0,40}\"))?\\}") {
        let _ = tdx::inspect_evidence(s.as_bytes());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any single changed byte in the real TDX quote, anywhere before the zero
    /// padding, is refused (or rejected as malformed) — never accepted, never a panic.
    #[test]
    fn tdx_quote_with_any_byte_changed_is_refused(pos in 0usize..0x1348, x in 1u8..=255) {
        let quote = fixture("tdx/quote.bin");
        let coll = Collateral::from_json(&fixture("tdx/collateral.json")).unwrap();
        let mut t = quote.clone();
        t[pos] ^= x;
        prop_assert!(tdx::verify(&t, &coll, &TcbPolicy::default(), INSIDE).is_err());
    }

    #[test]
    fn sgx_quote_with_any_byte_changed_is_refused(pos in 0usize..4600, x in 1u8..=255) {
        let quote = fixture("sgx/quote.bin");
        let coll = Collateral::from_json(&fixture("sgx/collateral.json")).unwrap();
        let policy = TcbPolicy::default().accept(TcbStatus::ConfigurationAndSWHardeningNeeded).unwrap();
        let mut t = quote.clone();
        t[pos] ^= x;
        prop_assert!(sgx::verify(&t, &coll, &policy, INSIDE).is_err());
    }

    /// Mutated real collateral JSON parses or fails cleanly; if it parses,
    /// verification fails cleanly or still gives the right status.
    #[test]
    fn mutated_collateral_never_panics(pos in 0usize..16072, x in 1u8..=255) {
        let mut j = fixture("tdx/collateral.json");
        let p = pos % j.len();
        j[p] ^= x;
        if let Ok(c) = Collateral::from_json(&j) {
            if let Ok(claims) = tdx::verify(&fixture("tdx/quote.bin"), &c, &TcbPolicy::default(), INSIDE) {
                prop_assert_eq!(&claims.raw["tcb_status"], "UpToDate");
            }
        }
    }
}

/// Flip the low bit of every byte of both real quotes up to the PCK chain,
/// and of every 4th byte of the PEM chain (before the zero padding; a full
/// pass over every byte also passes but takes a minute). Each must be
/// refused; none may verify or panic.
#[test]
fn every_single_bit_flip_is_refused() {
    let policy = TcbPolicy::default()
        .accept(TcbStatus::ConfigurationAndSWHardeningNeeded)
        .unwrap();
    for (quote, coll, tee) in [
        ("tdx/quote.bin", "tdx/collateral.json", "tdx"),
        ("sgx/quote.bin", "sgx/collateral.json", "sgx"),
    ] {
        let quote = fixture(quote);
        let coll = Collateral::from_json(&fixture(coll)).unwrap();
        let end = quote.iter().rposition(|b| *b != 0).unwrap() + 1;
        let chain_start = quote.windows(10).position(|w| w == b"-----BEGIN").unwrap();
        for pos in (0..end).filter(|p| *p < chain_start || p % 4 == 0) {
            let mut t = quote.clone();
            t[pos] ^= 1;
            let r = if tee == "tdx" {
                tdx::verify(&t, &coll, &policy, INSIDE)
            } else {
                sgx::verify(&t, &coll, &policy, INSIDE)
            };
            assert!(
                r.is_err(),
                "{tee} quote with byte {pos:#x} flipped verified"
            );
        }
    }
}
