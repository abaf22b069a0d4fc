//! OCSP revocation checks (`nvidia::ocsp`) with a test PKI built here (root
//! → intermediate → leaf, P-384 like NVIDIA's) and responses signed by it:
//! NVIDIA's responders cannot be reached offline and no real response is in
//! the fixtures. The wiring into the real device chain and RIMs is checked
//! on the fixtures (a response set that does not cover them is refused).

use std::str::FromStr;
use std::time::Duration;

use der::Encode;
use der::asn1::GeneralizedTime;
use p384::ecdsa::{DerSignature, SigningKey};
use proptest::prelude::*;
use x509_cert::Certificate;
use x509_cert::builder::{Builder, CertificateBuilder, Profile};
use x509_cert::ext::pkix::ExtendedKeyUsage;
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::spki::SubjectPublicKeyInfoOwned;
use x509_cert::time::Validity;
use x509_ocsp::builder::OcspResponseBuilder;
use x509_ocsp::ext::Nonce;
use x509_ocsp::{CertId, CertStatus, OcspGeneralizedTime, RevokedInfo, SingleResponse};

use veil_attest::nvidia::DeviceChain;
use veil_attest::nvidia::ocsp::{self, Freshness, Response};
use veil_attest::nvidia::rim::Rim;

/// 2025-01-01T00:00:00Z.
const NOW: u64 = 1_735_689_600;
const DAY: u64 = 86_400;

fn key(n: u8) -> SigningKey {
    SigningKey::from_slice(&[n; 48]).unwrap()
}

fn gtime(unix: u64) -> OcspGeneralizedTime {
    OcspGeneralizedTime(GeneralizedTime::from_unix_duration(Duration::from_secs(unix)).unwrap())
}

fn cert(
    profile: Profile,
    serial: u8,
    subject: &str,
    subject_key: &SigningKey,
    issuer_key: &SigningKey,
    eku_ocsp: bool,
) -> Certificate {
    let spki = SubjectPublicKeyInfoOwned::from_key(*subject_key.verifying_key()).unwrap();
    let mut b = CertificateBuilder::new(
        profile,
        SerialNumber::new(&[serial]).unwrap(),
        // 2020-01-01 .. 2035-01-01, around NOW.
        Validity {
            not_before: x509_cert::time::Time::GeneralTime(
                GeneralizedTime::from_unix_duration(Duration::from_secs(1_577_836_800)).unwrap(),
            ),
            not_after: x509_cert::time::Time::GeneralTime(
                GeneralizedTime::from_unix_duration(Duration::from_secs(2_051_222_400)).unwrap(),
            ),
        },
        Name::from_str(subject).unwrap(),
        spki,
        issuer_key,
    )
    .unwrap();
    if eku_ocsp {
        b.add_extension(&ExtendedKeyUsage(vec![
            const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.5.5.7.3.9"),
        ]))
        .unwrap();
    }
    b.build::<DerSignature>().unwrap()
}

struct Pki {
    root: Certificate,
    ica: Certificate,
    leaf: Certificate,
    root_key: SigningKey,
    ica_key: SigningKey,
}

fn pki() -> Pki {
    let (root_key, ica_key, leaf_key) = (key(1), key(2), key(3));
    let root = cert(
        Profile::Root,
        1,
        "CN=Test Root",
        &root_key,
        &root_key,
        false,
    );
    let ica = cert(
        Profile::SubCA {
            issuer: root.tbs_certificate.subject.clone(),
            path_len_constraint: None,
        },
        2,
        "CN=Test ICA",
        &ica_key,
        &root_key,
        false,
    );
    let leaf = cert(
        Profile::Leaf {
            issuer: ica.tbs_certificate.subject.clone(),
            enable_key_agreement: false,
            enable_key_encipherment: false,
        },
        3,
        "CN=Test Leaf",
        &leaf_key,
        &ica_key,
        false,
    );
    Pki {
        root,
        ica,
        leaf,
        root_key,
        ica_key,
    }
}

struct Resp<'a> {
    status: CertStatus,
    this_update: u64,
    next_update: Option<u64>,
    nonce: Option<&'a [u8]>,
}

fn good() -> Resp<'static> {
    Resp {
        status: CertStatus::good(),
        this_update: NOW - DAY,
        next_update: Some(NOW + DAY),
        nonce: None,
    }
}

/// A DER OCSP response about `subject` (issued by `issuer`), signed by
/// `signer_key` as `signer` (carried in the response when it is not the issuer).
fn response(
    r: Resp<'_>,
    subject: &Certificate,
    issuer: &Certificate,
    signer: &Certificate,
    signer_key: &SigningKey,
) -> Vec<u8> {
    let id = CertId::from_cert::<sha1::Sha1>(issuer, subject).unwrap();
    let mut single = SingleResponse::new(id, r.status, gtime(r.this_update));
    if let Some(n) = r.next_update {
        single = single.with_next_update(gtime(n));
    }
    let mut b = OcspResponseBuilder::new(signer.tbs_certificate.subject.clone())
        .with_single_response(single);
    if let Some(n) = r.nonce {
        b = b.with_extension(Nonce::new(n.to_vec()).unwrap()).unwrap();
    }
    let certs = (signer != issuer).then(|| vec![signer.clone()]);
    let mut k = signer_key.clone();
    b.sign::<_, DerSignature>(&mut k, certs, gtime(r.this_update))
        .unwrap()
        .to_der()
        .unwrap()
}

fn fresh() -> Freshness {
    Freshness {
        now_unix: NOW,
        max_age_secs: 7 * DAY,
        nonce: None,
    }
}

fn parsed(der: &[u8]) -> Response {
    Response::parse(der, "test.ocsp").unwrap()
}

/// Good responses for the whole test chain (ICA by the root, leaf by the ICA).
fn good_chain(p: &Pki) -> Vec<Response> {
    vec![
        parsed(&response(good(), &p.ica, &p.root, &p.root, &p.root_key)),
        parsed(&response(good(), &p.leaf, &p.ica, &p.ica, &p.ica_key)),
    ]
}

fn refusal(r: veil_attest::error::Result<()>) -> String {
    let e = r.expect_err("expected a refusal");
    assert_eq!(e.check(), Some("nvidia.ocsp"), "{e}");
    e.to_string()
}

fn check_leaf(p: &Pki, resp: &[u8], f: &Freshness) -> veil_attest::error::Result<()> {
    ocsp::check_cert("nvidia.ocsp", &p.leaf, &p.ica, &[parsed(resp)], f)
}

#[test]
fn ocsp_good_responses_for_every_certificate_pass_and_a_missing_one_is_named() {
    let p = pki();
    let chain = [p.leaf.clone(), p.ica.clone()];
    ocsp::check_chain("nvidia.ocsp", &chain, &p.root, &good_chain(&p), &fresh()).unwrap();
    // Only the leaf's response: the ICA is named as unchecked.
    let only_leaf = &good_chain(&p)[1..];
    let msg = refusal(ocsp::check_chain(
        "nvidia.ocsp",
        &chain,
        &p.root,
        only_leaf,
        &fresh(),
    ));
    assert!(
        msg.contains("no OCSP response about certificate \"Test ICA\" (serial 02)"),
        "{msg}"
    );
}

#[test]
fn ocsp_revoked_and_unknown_statuses_are_refused() {
    let p = pki();
    let revoked = Resp {
        status: CertStatus::Revoked(RevokedInfo {
            revocation_time: gtime(NOW - 2 * DAY),
            revocation_reason: None,
        }),
        ..good()
    };
    let msg = refusal(check_leaf(
        &p,
        &response(revoked, &p.leaf, &p.ica, &p.ica, &p.ica_key),
        &fresh(),
    ));
    assert!(
        msg.contains("\"Test Leaf\" (serial 03) is revoked"),
        "{msg}"
    );
    assert!(
        msg.contains("expected good, got revoked at 2024-12-30"),
        "{msg}"
    );
    let unknown = Resp {
        status: CertStatus::Unknown(der::asn1::Null),
        ..good()
    };
    let msg = refusal(check_leaf(
        &p,
        &response(unknown, &p.leaf, &p.ica, &p.ica, &p.ica_key),
        &fresh(),
    ));
    assert!(msg.contains("expected good, got unknown"), "{msg}");
}

#[test]
fn ocsp_stale_future_and_too_old_responses_are_refused() {
    let p = pki();
    let stale = Resp {
        this_update: NOW - 3 * DAY,
        next_update: Some(NOW - DAY),
        ..good()
    };
    let msg = refusal(check_leaf(
        &p,
        &response(stale, &p.leaf, &p.ica, &p.ica, &p.ica_key),
        &fresh(),
    ));
    assert!(msg.contains("stale (nextUpdate passed)"), "{msg}");
    let future = Resp {
        this_update: NOW + DAY,
        next_update: Some(NOW + 2 * DAY),
        ..good()
    };
    let msg = refusal(check_leaf(
        &p,
        &response(future, &p.leaf, &p.ica, &p.ica, &p.ica_key),
        &fresh(),
    ));
    assert!(msg.contains("from the future"), "{msg}");
    // No nextUpdate: the max-age window decides.
    let old = Resp {
        this_update: NOW - 8 * DAY,
        next_update: None,
        ..good()
    };
    let der = response(old, &p.leaf, &p.ica, &p.ica, &p.ica_key);
    let msg = refusal(check_leaf(&p, &der, &fresh()));
    assert!(
        msg.contains("no nextUpdate and is older than 604800 s"),
        "{msg}"
    );
    let lenient = Freshness {
        max_age_secs: 9 * DAY,
        ..fresh()
    };
    check_leaf(&p, &der, &lenient).unwrap();
}

#[test]
fn ocsp_nonce_must_be_echoed_when_expected() {
    let p = pki();
    let with_nonce = |n: Option<&[u8]>| {
        response(
            Resp { nonce: n, ..good() },
            &p.leaf,
            &p.ica,
            &p.ica,
            &p.ica_key,
        )
    };
    let expect = Freshness {
        nonce: Some(b"0123456789abcdef".to_vec()),
        ..fresh()
    };
    check_leaf(&p, &with_nonce(Some(b"0123456789abcdef")), &expect).unwrap();
    let msg = refusal(check_leaf(
        &p,
        &with_nonce(Some(b"another nonce!!!")),
        &expect,
    ));
    assert!(msg.contains("does not carry the request's nonce"), "{msg}");
    let msg = refusal(check_leaf(&p, &with_nonce(None), &expect));
    assert!(msg.contains("got no nonce"), "{msg}");
}

#[test]
fn ocsp_signature_must_be_the_issuers_or_a_delegated_responders() {
    let p = pki();
    // Names the ICA as responder but signed by another key.
    let forged = response(good(), &p.leaf, &p.ica, &p.ica, &key(9));
    let msg = refusal(check_leaf(&p, &forged, &fresh()));
    assert!(msg.contains("does not verify"), "{msg}");
    // A delegated responder issued by the ICA for OCSP signing: accepted.
    let responder_key = key(4);
    let issue = |eku: bool| {
        cert(
            Profile::Leaf {
                issuer: p.ica.tbs_certificate.subject.clone(),
                enable_key_agreement: false,
                enable_key_encipherment: false,
            },
            4,
            "CN=Test OCSP Responder",
            &responder_key,
            &p.ica_key,
            eku,
        )
    };
    let delegate = issue(true);
    check_leaf(
        &p,
        &response(good(), &p.leaf, &p.ica, &delegate, &responder_key),
        &fresh(),
    )
    .unwrap();
    // Without id-kp-OCSPSigning: refused.
    let plain = issue(false);
    let msg = refusal(check_leaf(
        &p,
        &response(good(), &p.leaf, &p.ica, &plain, &responder_key),
        &fresh(),
    ));
    assert!(
        msg.contains("lacks extended key usage id-kp-OCSPSigning"),
        "{msg}"
    );
    // A responder issued by someone else (self-signed with the EKU): refused.
    let rogue = cert(
        Profile::Root,
        5,
        "CN=Test OCSP Responder",
        &responder_key,
        &responder_key,
        true,
    );
    let msg = refusal(check_leaf(
        &p,
        &response(good(), &p.leaf, &p.ica, &rogue, &responder_key),
        &fresh(),
    ));
    assert!(msg.contains("not issued by the next certificate"), "{msg}");
    // A response about the leaf signed by the root (not its issuer): refused.
    let by_root = response(good(), &p.leaf, &p.ica, &p.root, &p.root_key);
    let msg = refusal(check_leaf(&p, &by_root, &fresh()));
    assert!(
        msg.contains("not issued by the next certificate") || msg.contains("signed by neither"),
        "{msg}"
    );
}

#[test]
fn ocsp_every_flipped_byte_is_refused_or_malformed_never_accepted() {
    let p = pki();
    let der = response(good(), &p.leaf, &p.ica, &p.ica, &p.ica_key);
    for i in 0..der.len() {
        let mut bad = der.clone();
        bad[i] ^= 0x01;
        let Ok(resp) = Response::parse(&bad, "flipped") else {
            continue;
        };
        let r = ocsp::check_cert("nvidia.ocsp", &p.leaf, &p.ica, &[resp], &fresh());
        assert!(r.is_err(), "byte {i} flipped was accepted");
    }
}

#[test]
fn ocsp_device_chain_and_rims_are_checked_for_real_and_claims_say_so() {
    let fix = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/nvidia/"
    );
    let chain_pem = std::fs::read(format!("{fix}hopperCertChain.txt")).unwrap();
    let report = std::fs::read(format!("{fix}hopperAttestationReport.txt")).unwrap();
    let mut chain = DeviceChain::verify(&chain_pem, NOW).unwrap();
    assert_eq!(chain.certificates().len(), 4);
    // Responses from another PKI do not cover NVIDIA's certificates.
    let e = chain
        .check_revocation(&good_chain(&pki()), &fresh())
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.ocsp"));
    assert!(e.to_string().contains("\"GH100 A01 GSP FMC LF\""), "{e}");
    let claims = chain.verify_report(&report, None, NOW).unwrap();
    assert!(!claims.revocation_checked);
    // RIM signer chains: a verified RIM has one, a parsed RIM has nothing to check.
    let xml = std::fs::read(format!("{fix}rims/Driver_RIM_test_no_gpu.swidtag")).unwrap();
    let mut rim = Rim::verify(&xml, 1_717_200_000).unwrap();
    assert!(!rim.signer_chain.is_empty());
    let e = rim
        .check_revocation(&good_chain(&pki()), &fresh())
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_ocsp"), "{e}");
    let mut parsed_only = Rim::parse(&xml).unwrap();
    let e = parsed_only.check_revocation(&[], &fresh()).unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_signature"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, .. ProptestConfig::default() })]

    /// Arbitrary bytes never panic the OCSP parser.
    #[test]
    fn ocsp_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..3000)) {
        let _ = Response::parse(&bytes, "fuzz");
    }

    /// Mutated and truncated real-shaped responses never panic the parser
    /// or the check, and are never accepted unless unchanged.
    #[test]
    fn ocsp_mutated_response_never_panics(pos in 0usize..2000, val in any::<u8>(), cut in 0usize..2000) {
        static DER: std::sync::OnceLock<(Vec<u8>, Certificate, Certificate)> = std::sync::OnceLock::new();
        let (der, leaf, ica) = DER.get_or_init(|| {
            let p = pki();
            (response(good(), &p.leaf, &p.ica, &p.ica, &p.ica_key), p.leaf, p.ica)
        });
        let mut m = der.clone();
        let i = pos % m.len();
        m[i] = val;
        m.truncate(cut.max(1).min(m.len()));
        if let Ok(r) = Response::parse(&m, "fuzz") {
            let ok = ocsp::check_cert("nvidia.ocsp", leaf, ica, &[r], &fresh()).is_ok();
            prop_assert!(!ok || m == *der);
        }
    }
}
