//! The simulated TEE: real signatures, explicit trust, loud labelling.

use proptest::prelude::*;
use veil_attest::sim::{self, SimPlatformKey, SimReportBody};
use veil_attest::{Context, Expectations, Tee};

fn body() -> SimReportBody {
    SimReportBody::new(&[0x42; 48], &[0x07; 48], &[0x33; 32]).unwrap()
}

#[test]
fn report_verifies_with_its_root_and_is_labelled() {
    let key = SimPlatformKey::generate();
    let ev = key.evidence_json(&body());
    let c = sim::verify(ev.as_bytes(), Some(&key.root())).expect("verifies");
    assert_eq!(c.tee, Tee::Sim);
    assert!(!c.hardware_backed);
    assert_eq!(c.platform.signer, "sim");
    assert_eq!(c.report_data[..48], [0x42; 48]);
    assert_eq!(c.report_data[48..], [0; 16]);
    assert_eq!(c.init_data.len(), 64);
    assert!(
        c.raw["warning"]
            .as_str()
            .unwrap()
            .contains("NO confidentiality")
    );
}

#[test]
fn raw_and_json_forms_agree() {
    let key = SimPlatformKey::generate();
    let raw = key.sign(&body());
    let a = sim::verify(&raw, Some(&key.root())).unwrap();
    let b = sim::verify(key.evidence_json(&body()).as_bytes(), Some(&key.root())).unwrap();
    assert_eq!(a.report_data, b.report_data);
    assert_eq!(a.measurement, b.measurement);
}

#[test]
fn refused_without_root_or_with_another_root() {
    let key = SimPlatformKey::generate();
    let other = SimPlatformKey::generate();
    let ev = key.sign(&body());
    let e = sim::verify(&ev, None).unwrap_err();
    assert_eq!(e.check(), Some("sim.root"));
    let e = sim::verify(&ev, Some(&other.root())).unwrap_err();
    assert_eq!(e.check(), Some("sim.platform_id"));
    // Same platform id claimed, but signed by another key.
    let mut forged = other.sign(&body());
    forged[0x10..0x30].copy_from_slice(&key.root().platform_id());
    let e = sim::verify(&forged, Some(&key.root())).unwrap_err();
    assert_eq!(e.check(), Some("sim.signature"));
}

#[test]
fn keys_round_trip_through_pem() {
    let key = SimPlatformKey::generate();
    let pem = key.to_pem().unwrap();
    let again = SimPlatformKey::from_pem(&pem).unwrap();
    assert_eq!(again.root(), key.root());
    let root = sim::SimRootKey::from_pem(&key.root().to_pem().unwrap()).unwrap();
    assert_eq!(root, key.root());
}

#[test]
fn expectations_apply_to_sim_claims() {
    let key = SimPlatformKey::generate();
    let mut b = body();
    b.debug = true;
    let ev = key.sign(&b);
    let ctx = |exp| Context {
        sim_root: Some(key.root()),
        expectations: exp,
        ..Default::default()
    };
    let e = veil_attest::verify(Tee::Sim, &ev, &ctx(Expectations::default())).unwrap_err();
    assert_eq!(e.check(), Some("debug"));
    let e = veil_attest::verify(
        Tee::Sim,
        &ev,
        &ctx(Expectations {
            allow_debug: true,
            init_data_digest: Some(vec![0x34; 32]),
            ..Default::default()
        }),
    )
    .unwrap_err();
    assert_eq!(e.check(), Some("init_data"));
    veil_attest::verify(
        Tee::Sim,
        &ev,
        &ctx(Expectations {
            allow_debug: true,
            init_data_digest: Some(vec![0x33; 32]),
            report_data: Some(vec![0x42; 48]),
            ..Default::default()
        }),
    )
    .expect("matching expectations");
}

proptest! {
    /// Altering any byte of a sim report makes verification fail.
    #[test]
    fn any_altered_byte_fails(pos in 0usize..sim::REPORT_LEN, xor in 1u8..=255) {
        static KEY: std::sync::OnceLock<SimPlatformKey> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(SimPlatformKey::generate);
        let mut r = key.sign(&body());
        r[pos] ^= xor;
        prop_assert!(sim::verify(&r, Some(&key.root())).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..800)) {
        let key = SimPlatformKey::generate();
        let _ = sim::verify(&bytes, Some(&key.root()));
    }
}
