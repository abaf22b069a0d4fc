//! NVIDIA Hopper GPU attestation against the real report, chain and
//! expected claims in `shared/fixtures/nvidia` (from Trustee's test data and
//! NVIDIA's `nv-local-gpu-verifier`).

use der::{DecodePem, EncodePem};
use proptest::prelude::*;
use serde_json::Value;
use veil_attest::Error;
use veil_attest::nvidia::rim::{self, Rim};
use veil_attest::nvidia::{self, DeviceChain, GpuClaims, Report, ReportClaims};
use x509_cert::Certificate;

const FIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/nvidia/"
);
/// 2025-01-01T00:00:00Z: inside every certificate's validity (the latest
/// notBefore is 2022-03-01, every notAfter is 9999-12-31).
const NOW: u64 = 1_735_689_600;
/// The requester nonce of `hopperAttestationReport.txt`.
const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn report_raw() -> Vec<u8> {
    hex::decode(fixture("hopperAttestationReport.txt").trim_ascii()).expect("fixture is hex")
}

fn chain_pem() -> Vec<u8> {
    fixture("hopperCertChain.txt")
}

fn nonce() -> [u8; 32] {
    hex::decode(NONCE).unwrap().try_into().unwrap()
}

/// The fixture chain, verified once for the property tests.
fn shared_chain() -> &'static DeviceChain {
    static CHAIN: std::sync::OnceLock<DeviceChain> = std::sync::OnceLock::new();
    CHAIN.get_or_init(|| DeviceChain::verify(&chain_pem(), NOW).unwrap())
}

fn check_of(r: Result<GpuClaims, Error>) -> String {
    match r {
        Ok(_) => panic!("expected a refusal"),
        Err(e) => format!("{}|{e}", e.check().unwrap_or("malformed")),
    }
}

fn chain_certs() -> Vec<Certificate> {
    Certificate::load_pem_chain(&chain_pem()).unwrap()
}

fn to_pem(certs: &[Certificate]) -> Vec<u8> {
    certs
        .iter()
        .map(|c| c.to_pem(der::pem::LineEnding::LF).unwrap())
        .collect::<String>()
        .into_bytes()
}

#[test]
fn nvidia_fixture_verifies_with_its_nonce() {
    let c = nvidia::verify(&report_raw(), &chain_pem(), Some(&nonce()), NOW)
        .expect("the Hopper fixture verifies");
    assert_eq!(c.arch, "Hopper");
    assert_eq!(c.hwmodel, "GH100 A01 GSP BROM");
    assert_eq!(c.report.nonce, NONCE);
    assert_eq!(c.report.driver_version, "550.90.07");
    assert_eq!(c.report.vbios_version, "96.00.9f.00.01");
    // Nothing claims more than was checked.
    assert!(!c.revocation_checked && !c.measurements_appraised);
    // Hex text is accepted as well as raw bytes, and no nonce means none is checked.
    let t = nvidia::verify(
        &fixture("hopperAttestationReport.txt"),
        &chain_pem(),
        None,
        NOW,
    )
    .unwrap();
    assert_eq!(t, c);
}

#[test]
fn nvidia_chain_without_root_copy_verifies() {
    let mut certs = chain_certs();
    certs.pop();
    nvidia::verify(&report_raw(), &to_pem(&certs), Some(&nonce()), NOW)
        .expect("the pinned root completes a chain that omits it");
}

/// Every value of Trustee's expected claims for this report, field by field.
#[test]
fn nvidia_claims_match_trustee_expected_claims() {
    let expected: Value =
        serde_json::from_slice(&fixture("hopperAttestationReport-claims.txt")).unwrap();
    let c = nvidia::verify(&report_raw(), &chain_pem(), Some(&nonce()), NOW).unwrap();
    let ours = serde_json::to_value(&c).unwrap();

    assert_eq!(ours["arch"], expected["arch"]);
    let config = expected["config"].as_object().unwrap();
    assert!(config.len() >= 14, "all opaque fields are compared");
    for (k, v) in config {
        assert_eq!(&ours[k], v, "config field {k}");
    }
    let measurements = expected["measurements"].as_object().unwrap();
    assert_eq!(measurements.len(), 64);
    assert_eq!(c.report.measurements.len(), 64);
    for (k, v) in measurements {
        assert_eq!(&ours["measurements"][k], v, "measurement {k}");
    }
    // Parsing alone yields the same report claims.
    let parsed = ReportClaims::from_report(&Report::parse(&report_raw()).unwrap()).unwrap();
    assert_eq!(parsed, c.report);
}

#[test]
fn nvidia_every_flipped_signed_byte_is_refused() {
    let raw = report_raw();
    let chain = DeviceChain::verify(&chain_pem(), NOW).unwrap();
    let signed_len = Report::parse_raw(&raw).unwrap().signed_bytes().len();
    let mut refused_by_signature = 0;
    for pos in 0..raw.len() {
        let mut r = raw.clone();
        r[pos] ^= 0x01;
        match chain.verify_report(&r, Some(&nonce()), NOW) {
            Ok(_) => panic!("flip at {pos:#x} accepted"),
            Err(e) if e.check() == Some("nvidia.signature") => refused_by_signature += 1,
            Err(e) => assert!(e.is_malformed(), "flip at {pos:#x}: {e}"),
        }
    }
    // Most flips parse and reach the signature check: it is what refuses them.
    assert!(
        refused_by_signature > signed_len * 9 / 10,
        "{refused_by_signature} of {signed_len}"
    );
}

#[test]
fn nvidia_wrong_nonce_is_refused() {
    let mut n = nonce();
    n[31] ^= 0xff;
    let msg = check_of(nvidia::verify(&report_raw(), &chain_pem(), Some(&n), NOW));
    assert!(msg.starts_with("nvidia.nonce|"), "{msg}");
    assert!(msg.contains(NONCE), "names the actual nonce: {msg}");
}

#[test]
fn nvidia_time_outside_validity_is_refused() {
    // 2022-01-01: before `NVIDIA GH100 Provisioner ICA 1` (2022-03-01).
    let msg = check_of(nvidia::verify(
        &report_raw(),
        &chain_pem(),
        Some(&nonce()),
        1_640_995_200,
    ));
    assert!(msg.starts_with("nvidia.cert_validity|"), "{msg}");
    assert!(msg.contains("NVIDIA GH100 Provisioner ICA 1"), "{msg}");
    // A chain verified earlier is not reused outside its window.
    let chain = DeviceChain::verify(&chain_pem(), NOW).unwrap();
    let e = chain
        .verify_report(&report_raw(), None, 1_500_000_000)
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.cert_validity"));
}

#[test]
fn nvidia_garbled_leaf_is_refused() {
    let mut certs = chain_certs();
    // Change the leaf's serial number: its issuer's signature no longer covers it.
    let serial = certs[0].tbs_certificate.serial_number.as_bytes().to_vec();
    let mut changed = serial.clone();
    changed[1] ^= 0x01;
    certs[0].tbs_certificate.serial_number =
        x509_cert::serial_number::SerialNumber::new(&changed).unwrap();
    let msg = check_of(nvidia::verify(&report_raw(), &to_pem(&certs), None, NOW));
    assert!(msg.starts_with("nvidia.cert_chain|"), "{msg}");
    assert!(
        msg.contains("GH100 A01 GSP FMC LF"),
        "names the leaf: {msg}"
    );
}

#[test]
fn nvidia_swapped_leaf_is_refused() {
    let mut certs = chain_certs();
    certs.swap(0, 1);
    let msg = check_of(nvidia::verify(&report_raw(), &to_pem(&certs), None, NOW));
    assert!(msg.starts_with("nvidia.cert_chain|"), "{msg}");
    // Without the leaf, the BROM certificate cannot have signed the report.
    let mut certs = chain_certs();
    certs.remove(0);
    let msg = check_of(nvidia::verify(&report_raw(), &to_pem(&certs), None, NOW));
    assert!(
        msg.starts_with("nvidia.fwid|") || msg.starts_with("nvidia.signature|"),
        "{msg}"
    );
}

#[test]
fn nvidia_foreign_root_is_refused() {
    let mut certs = chain_certs();
    let ark = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/snp/milan-ask-ark-asvk.pem"
    ))
    .unwrap();
    let amd = Certificate::load_pem_chain(&ark).unwrap();
    certs.push(amd[1].clone()); // ARK-Milan, self-signed
    let msg = check_of(nvidia::verify(&report_raw(), &to_pem(&certs), None, NOW));
    assert!(msg.starts_with("nvidia.cert_chain|"), "{msg}");
    assert!(msg.contains("pinned device root"), "{msg}");
}

#[test]
fn nvidia_leaf_fwid_matches_report_and_missing_fwid_is_refused() {
    // The report's FWID is signed and a leaf with another FWID would need
    // NVIDIA's key, so the comparison is checked on the parsed values.
    let chain = DeviceChain::verify(&chain_pem(), NOW).unwrap();
    let report = Report::parse_raw(&report_raw()).unwrap();
    assert_eq!(chain.fwid(), report.fwid().unwrap());
    let leaf = Certificate::from_pem(fixture("hopper_signing_cert.pem")).unwrap();
    assert_eq!(
        nvidia::certs::fwid(&leaf).unwrap(),
        report.fwid().unwrap(),
        "NVIDIA's separately shipped signing certificate is the same leaf"
    );
    // A chain whose leaf has no FWID extension is refused by name.
    let brom = chain_certs()[1].clone();
    assert_eq!(
        nvidia::certs::fwid(&brom).unwrap_err().check(),
        Some("nvidia.fwid")
    );
}

fn rim(name: &str) -> Rim {
    Rim::parse(&fixture(&format!("rims/{name}"))).unwrap_or_else(|e| panic!("RIM {name}: {e}"))
}

const DRIVER_RIM: &str = "Driver_RIM_test_no_gpu.swidtag";
const VBIOS_RIM: &str = "1010_0200_882_96005E0001_test_no_gpu.swidtag";

#[test]
fn nvidia_rim_fixtures_parse() {
    let dir = std::fs::read_dir(format!("{FIX}rims")).unwrap();
    let mut n = 0;
    for entry in dir {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let r = rim(&name);
        assert_eq!(r.name, "GH100", "{name}");
        assert_eq!(r.measurements.len(), 64, "{name}");
        assert!(r.measurements.iter().all(|m| m.size == 48), "{name}");
        n += 1;
    }
    assert_eq!(n, 26);
    let driver = rim(DRIVER_RIM);
    assert_eq!(driver.version, "545.00");
    let m23 = &driver.measurements[23];
    assert_eq!(
        (m23.index, m23.active, m23.alternatives.len()),
        (23, true, 2)
    );
    assert_eq!(rim(VBIOS_RIM).version, "96.00.5E.00.01");
}

/// The fixture RIMs are for driver 545.00 and VBIOS 96.00.5E.00.01, the
/// fixture report for 550.90.07 and 96.00.9f.00.01: both are refused.
#[test]
fn nvidia_rim_for_another_version_is_refused() {
    let report = Report::parse(&report_raw()).unwrap();
    let e = rim(VBIOS_RIM)
        .check_version("VBIOS", &report.vbios_version().unwrap())
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_version"));
    let msg = e.to_string();
    assert!(
        msg.contains("expected 96.00.5E.00.01, got 96.00.9f.00.01"),
        "{msg}"
    );
    let e = rim(DRIVER_RIM)
        .check_version("driver", &report.driver_version().unwrap())
        .unwrap_err();
    assert!(
        e.to_string().contains("expected 545.00, got 550.90.07"),
        "{e}"
    );
    // Versions compare case-insensitively.
    rim(VBIOS_RIM)
        .check_version("VBIOS", "96.00.5e.00.01")
        .unwrap();
}

#[test]
fn nvidia_rim_measurement_mismatches_are_named() {
    let report = Report::parse(&report_raw()).unwrap();
    let (driver, vbios) = (rim(DRIVER_RIM), rim(VBIOS_RIM));
    let blocks = |rims: &[&Rim]| -> Vec<u8> {
        rim::compare(&report, rims)
            .unwrap()
            .iter()
            .map(|m| m.block_index)
            .collect()
    };
    // Cross-checked independently against the claims file's measurements.
    assert_eq!(blocks(&[&vbios]), [2, 3, 4, 10, 12]);
    assert_eq!(
        blocks(&[&driver]),
        [8, 22, 23, 26, 27, 28, 30, 31, 32, 33, 35, 37, 38, 40, 41]
    );
    let e = rim::check_measurements(&report, &[&vbios, &driver]).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_measurement"));
    let msg = e.to_string();
    assert!(msg.contains("measurement block 2 (RIM index 1)"), "{msg}");
    assert!(
        msg.contains("expected 0b42836f56a7162e63cb7a9f3ee56b038325a9121442fa2ef34182f462816801448fa8f6798d13144a1b38be97181058, got 8048dfd1"),
        "{msg}"
    );
    // The same RIM twice: every active index is claimed twice.
    let e = rim::compare(&report, &[&vbios, &vbios]).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_measurement"));
}

#[test]
fn nvidia_rim_with_the_reports_values_matches() {
    // The VBIOS RIM with its five mismatching values replaced by the
    // report's: nothing left to refuse for that RIM.
    let report = Report::parse(&report_raw()).unwrap();
    let mut xml = String::from_utf8(fixture(&format!("rims/{VBIOS_RIM}"))).unwrap();
    for m in rim::compare(&report, &[&rim(VBIOS_RIM)]).unwrap() {
        xml = xml.replace(&m.expected[0], &m.actual);
    }
    let edited = Rim::parse(xml.as_bytes()).unwrap();
    rim::check_measurements(&report, &[&edited]).unwrap();
}

/// 2024-06-01: inside every fixture RIM signer chain's validity.
const RIM_TIME: u64 = 1_717_200_000;

#[test]
fn nvidia_rim_signatures_verify_to_pinned_rim_root() {
    let dir = std::fs::read_dir(format!("{FIX}rims")).unwrap();
    for entry in dir {
        let name = entry.unwrap().file_name().into_string().unwrap();
        let xml = fixture(&format!("rims/{name}"));
        let verified = Rim::verify(&xml, RIM_TIME).unwrap_or_else(|e| panic!("RIM {name}: {e:?}"));
        assert_eq!(
            verified.signed_by.as_deref(),
            Some("HCC RIM L4 Signer"),
            "{name}"
        );
        let parsed = Rim::parse(&xml).unwrap();
        assert_eq!(parsed.signed_by, None);
        assert_eq!(parsed.measurements, verified.measurements);
    }
}

#[test]
fn nvidia_rim_tampered_content_or_signature_is_refused() {
    let xml = String::from_utf8(fixture(&format!("rims/{VBIOS_RIM}"))).unwrap();
    // One measurement value changed.
    let edited = xml.replacen(
        "0b42836f56a7162e63cb7a9f3ee56b038325a9121442fa2ef34182f462816801448fa8f6798d13144a1b38be97181058",
        "1b42836f56a7162e63cb7a9f3ee56b038325a9121442fa2ef34182f462816801448fa8f6798d13144a1b38be97181058",
        1,
    );
    assert_ne!(edited, xml);
    let e = Rim::verify(edited.as_bytes(), RIM_TIME).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_signature"), "{e}");
    assert!(e.to_string().contains("does not match the digest"), "{e}");
    // The version changed.
    let edited = xml.replacen("96.00.5E.00.01", "96.00.9F.00.01", 1);
    let e = Rim::verify(edited.as_bytes(), RIM_TIME).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_signature"), "{e}");
    // The signature value changed (first base64 character of SignatureValue).
    let at = xml.find("<ds:SignatureValue>").unwrap() + "<ds:SignatureValue>".len();
    let mut bytes = xml.clone().into_bytes();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    let e = Rim::verify(&bytes, RIM_TIME).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_signature"), "{e}");
    assert!(e.to_string().contains("HCC RIM L4 Signer"), "{e}");
    // Signature removed.
    let start = xml.find("<ds:Signature").unwrap();
    let end = xml.find("</ds:Signature>").unwrap() + "</ds:Signature>".len();
    let unsigned = format!("{}{}", &xml[..start], &xml[end..]);
    let e = Rim::verify(unsigned.as_bytes(), RIM_TIME).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_signature"), "{e}");
}

#[test]
fn nvidia_rim_outside_signer_validity_is_refused() {
    // 2025-07-01: the RIM signer certificate expired on 2025-06-26.
    let e = Rim::verify(&fixture(&format!("rims/{DRIVER_RIM}")), 1_751_328_000).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_cert_validity"), "{e}");
    assert!(e.to_string().contains("HCC RIM L4 Signer"), "{e}");
}

#[test]
fn nvidia_report_with_rims_for_other_versions_is_refused() {
    let chain = DeviceChain::verify(&chain_pem(), RIM_TIME).unwrap();
    let driver = Rim::verify(&fixture(&format!("rims/{DRIVER_RIM}")), RIM_TIME).unwrap();
    let vbios = Rim::verify(&fixture(&format!("rims/{VBIOS_RIM}")), RIM_TIME).unwrap();
    let rims = rim::Rims {
        driver: &driver,
        vbios: &vbios,
    };
    let e = chain
        .verify_report_with_rims(&report_raw(), Some(&nonce()), RIM_TIME, &rims)
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_version"), "{e}");
    assert!(
        e.to_string().contains("expected 545.00, got 550.90.07"),
        "{e}"
    );
    // Merely parsed RIMs are refused before anything is compared.
    let parsed = Rim::parse(&fixture(&format!("rims/{DRIVER_RIM}"))).unwrap();
    let rims = rim::Rims {
        driver: &parsed,
        vbios: &vbios,
    };
    let e = chain
        .verify_report_with_rims(&report_raw(), Some(&nonce()), RIM_TIME, &rims)
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_signature"), "{e}");
    // Without RIMs the claims say the measurements were not appraised.
    let c = chain
        .verify_report(&report_raw(), Some(&nonce()), RIM_TIME)
        .unwrap();
    assert!(!c.measurements_appraised);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    /// Arbitrary bytes never panic the parser.
    #[test]
    fn nvidia_arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let _ = Report::parse(&bytes);
    }

    /// Arbitrary bytes, and a real RIM cut anywhere, never panic the RIM parser.
    #[test]
    fn nvidia_rim_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2000), cut in 0usize..20519) {
        let _ = Rim::parse(&bytes);
        let xml = fixture(&format!("rims/{DRIVER_RIM}"));
        let cut = cut.min(xml.len());
        let _ = Rim::parse(&xml[..cut]);
        // Cutting only the trailing newline leaves the same signed document.
        if xml[cut..].iter().all(u8::is_ascii_whitespace) {
            prop_assert!(Rim::verify(&xml[..cut], RIM_TIME).is_ok());
        } else {
            prop_assert!(Rim::verify(&xml[..cut], RIM_TIME).is_err());
        }
    }

    /// Corrupting a real report (a byte changed, the tail cut) never panics
    /// the parser and the verifier never accepts the result.
    #[test]
    fn nvidia_mutated_fixture_never_panics(pos in 0usize..4117, val in any::<u8>(), cut in 0usize..4117) {
        let mut r = report_raw();
        let changed = r[pos] != val;
        r[pos] = val;
        r.truncate(r.len() - cut % 64);
        let shortened = cut % 64 != 0;
        let _ = Report::parse(&r);
        if changed || shortened {
            prop_assert!(shared_chain().verify_report(&r, None, NOW).is_err());
        }
    }
}
