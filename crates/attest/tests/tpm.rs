//! Plain TPM 2.0 quotes (`tpm` evidence, kbs-protocol §14.7): a real vTPM
//! quote from the Azure fixtures re-packaged as `tpm` evidence, and quotes
//! signed here by RSA (PKCS#1 v1.5 and PSS) and ECDSA (P-256, P-384)
//! attestation keys, each alteration refused by its own check.

use std::sync::OnceLock;

use rand_core::OsRng;
use rsa::RsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::signature::{RandomizedSigner, SignatureEncoding, Signer};
use sha2::{Digest, Sha256, Sha384};
use veil_attest::azure::{self, HclReport, Kind};
use veil_attest::tpm::evidence::TpmEvidence;
use veil_attest::tpm::{
    self, AkPublic, Attest, PcrSelection, PcrValues, Signature, alg, expected_pcr8, object_attr, st,
};
use veil_attest::{Claims, Context, Error, Expectations, Tee};

fn fixture(dir: &str, name: &str) -> Vec<u8> {
    let p = format!(
        "{}/../../../shared/fixtures/{dir}/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

/// The quote of `azure-snp-vtpm/evidence-v1.json` as `tpm` evidence, with
/// the AK taken from its HCL runtime data.
fn azure_as_tpm() -> (TpmEvidence, AkPublic) {
    let ev =
        azure::evidence::parse(Kind::Snp, &fixture("azure-snp-vtpm", "evidence-v1.json")).unwrap();
    let ak = HclReport::parse(&ev.hcl_report)
        .unwrap()
        .runtime_data()
        .unwrap()
        .ak;
    (
        TpmEvidence {
            ak: ak.clone(),
            message: ev.message,
            signature: ev.signature,
            pcrs: ev.pcrs,
        },
        ak,
    )
}

fn refused(r: Result<Claims, Error>) -> String {
    match r {
        Ok(_) => panic!("verified"),
        Err(e) => e
            .check()
            .map(str::to_string)
            .unwrap_or_else(|| format!("malformed: {e}")),
    }
}

#[test]
fn a_real_vtpm_quote_verifies_as_tpm_evidence() {
    let (ev, ak) = azure_as_tpm();
    let json = ev.to_json();
    let c = tpm::verify(json.as_bytes(), std::slice::from_ref(&ak)).unwrap();
    assert_eq!(c.tee, Tee::Tpm);
    assert!(
        !c.hardware_backed,
        "a plain TPM quote proves nothing about TEE hardware"
    );
    assert_eq!(&c.report_data[..9], b"challenge");
    assert!(c.report_data[9..].iter().all(|&b| b == 0));
    assert_eq!(c.init_data, ev.pcrs.0[8].to_vec());
    assert_eq!(c.platform.chip_id, ak.fingerprint());
    assert_eq!(c.raw["pcrs"][0], hex::encode(ev.pcrs.0[0]));
    assert_eq!(c.raw["tpm_quote"]["pcr_selection"][0]["hash"], "SHA256");

    // Through the dispatcher, with the nonce expected.
    let ctx = Context {
        tpm_aks: vec![ak.clone()],
        expectations: Expectations {
            report_data: Some(b"challenge".to_vec()),
            ..Default::default()
        },
        ..Default::default()
    };
    veil_attest::verify(Tee::Tpm, json.as_bytes(), &ctx).unwrap();
    let ctx = Context {
        tpm_aks: vec![ak],
        expectations: Expectations {
            report_data: Some(b"replayed".to_vec()),
            ..Default::default()
        },
        ..Default::default()
    };
    let e = veil_attest::verify(Tee::Tpm, json.as_bytes(), &ctx).unwrap_err();
    assert_eq!(e.check(), Some("report_data"));
}

#[test]
fn the_ak_must_be_trusted() {
    let (ev, _) = azure_as_tpm();
    let json = ev.to_json();
    assert_eq!(refused(tpm::verify(json.as_bytes(), &[])), "tpm.ak_trust");
    let other = rsa_ak().1;
    let e = tpm::verify(json.as_bytes(), &[other]).unwrap_err();
    assert_eq!(e.check(), Some("tpm.ak_trust"));
    assert!(e.to_string().contains(&ev.ak.fingerprint()), "{e}");
}

#[test]
fn altered_real_quote_is_refused() {
    let (base, ak) = azure_as_tpm();
    let run = |ev: &TpmEvidence| {
        refused(tpm::verify(
            ev.to_json().as_bytes(),
            std::slice::from_ref(&ak),
        ))
    };
    let mut ev = base.clone();
    ev.pcrs.0[8][31] ^= 1;
    assert_eq!(run(&ev), "tpm.pcr_digest");
    for i in 0..base.message.len() {
        let mut ev = base.clone();
        ev.message[i] ^= 0x10;
        let got = run(&ev);
        assert!(
            got == "tpm.signature" || got.contains("TPMS_ATTEST"),
            "byte {i}: {got}"
        );
    }
}

// ---- quotes signed here -------------------------------------------------

fn rsa_key() -> &'static RsaPrivateKey {
    static K: OnceLock<RsaPrivateKey> = OnceLock::new();
    K.get_or_init(|| RsaPrivateKey::new(&mut OsRng, 2048).unwrap())
}

fn rsa_ak() -> (&'static RsaPrivateKey, AkPublic) {
    let k = rsa_key();
    let spki = k.to_public_key().to_public_key_der().unwrap();
    (k, AkPublic::from_spki_der(spki.as_bytes()).unwrap())
}

fn pcrs_with_init_data(digest: &[u8; 32]) -> PcrValues {
    let mut v: Vec<Vec<u8>> = (0..24u8).map(|i| vec![i; 32]).collect();
    v[8] = expected_pcr8(digest).to_vec();
    PcrValues::new(v).unwrap()
}

fn digest_of(pcrs: &PcrValues, sel: &PcrSelection, hash: u16) -> Vec<u8> {
    let cat: Vec<u8> = sel.indices().iter().flat_map(|&i| pcrs.0[i]).collect();
    match hash {
        alg::SHA384 => Sha384::digest(&cat).to_vec(),
        _ => Sha256::digest(&cat).to_vec(),
    }
}

/// A quote over all 24 SHA-256 PCRs with `nonce`, altered by `edit` before signing.
fn attest(pcrs: &PcrValues, nonce: &[u8], hash: u16, edit: impl FnOnce(&mut Attest)) -> Vec<u8> {
    let sel = PcrSelection::new(alg::SHA256, 3, 0..24);
    let d = digest_of(pcrs, &sel, hash);
    let mut a = Attest::new_quote(nonce, vec![sel], d);
    edit(&mut a);
    a.to_bytes()
}

fn sign_rsassa(msg: &[u8]) -> Signature {
    let s = rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa_key().clone()).sign(msg);
    Signature::RsaSsa {
        hash: alg::SHA256,
        sig: s.to_vec(),
    }
}

fn evidence(ak: &AkPublic, message: Vec<u8>, signature: Signature, pcrs: PcrValues) -> String {
    TpmEvidence {
        ak: ak.clone(),
        message,
        signature,
        pcrs,
    }
    .to_json()
}

const DIGEST: [u8; 32] = [0x5a; 32];

#[test]
fn rsa_pkcs1_pss_and_ecdsa_quotes_verify() {
    let pcrs = pcrs_with_init_data(&DIGEST);
    let (_, ak) = rsa_ak();

    let m = attest(&pcrs, b"nonce", alg::SHA256, |_| {});
    let ev = evidence(&ak, m.clone(), sign_rsassa(&m), pcrs.clone());
    tpm::verify(ev.as_bytes(), std::slice::from_ref(&ak)).unwrap();

    // RSA-PSS with a digest-sized salt and with the largest salt.
    for salt in [32, 256 - 32 - 2] {
        let key = rsa::pss::SigningKey::<Sha256>::new_with_salt_len(rsa_key().clone(), salt);
        let sig = key.sign_with_rng(&mut OsRng, &m).to_vec();
        let ev = evidence(
            &ak,
            m.clone(),
            Signature::RsaPss {
                hash: alg::SHA256,
                sig,
            },
            pcrs.clone(),
        );
        tpm::verify(ev.as_bytes(), std::slice::from_ref(&ak))
            .unwrap_or_else(|e| panic!("salt {salt}: {e}"));
    }

    // ECDSA P-256 / SHA-256 and P-384 / SHA-384 (the PCR digest then uses SHA-384).
    use p256::ecdsa::signature::hazmat::PrehashSigner;
    let k256 = p256::ecdsa::SigningKey::random(&mut OsRng);
    let ak256 = AkPublic::from_spki_der(
        p256::PublicKey::from(k256.verifying_key())
            .to_public_key_der()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let m = attest(&pcrs, b"nonce", alg::SHA256, |_| {});
    let s: p256::ecdsa::Signature = k256.sign_prehash(&Sha256::digest(&m)).unwrap();
    let (r, sv) = s.split_bytes();
    let sig = Signature::Ecdsa {
        hash: alg::SHA256,
        r: r.to_vec(),
        s: sv.to_vec(),
    };
    let c = tpm::verify(
        evidence(&ak256, m, sig, pcrs.clone()).as_bytes(),
        std::slice::from_ref(&ak256),
    )
    .unwrap();
    assert_eq!(c.raw["tpm_quote"]["signature"]["scheme"], "ECDSA");

    let k384 = p384::ecdsa::SigningKey::random(&mut OsRng);
    let ak384 = AkPublic::from_spki_der(
        p384::PublicKey::from(k384.verifying_key())
            .to_public_key_der()
            .unwrap()
            .as_bytes(),
    )
    .unwrap();
    let m = attest(&pcrs, b"nonce", alg::SHA384, |_| {});
    let s: p384::ecdsa::Signature = k384.sign_prehash(&Sha384::digest(&m)).unwrap();
    let (r, sv) = s.split_bytes();
    let sig = Signature::Ecdsa {
        hash: alg::SHA384,
        r: r.to_vec(),
        s: sv.to_vec(),
    };
    tpm::verify(evidence(&ak384, m, sig, pcrs).as_bytes(), &[ak384]).unwrap();
}

#[test]
fn init_data_is_checked_through_pcr8() {
    let pcrs = pcrs_with_init_data(&DIGEST);
    let (_, ak) = rsa_ak();
    let m = attest(&pcrs, b"nonce", alg::SHA256, |_| {});
    let ev = evidence(&ak, m.clone(), sign_rsassa(&m), pcrs);
    let ctx = |d: &[u8]| Context {
        tpm_aks: vec![ak.clone()],
        expectations: Expectations {
            init_data_digest: Some(d.to_vec()),
            ..Default::default()
        },
        ..Default::default()
    };
    let c = veil_attest::verify(Tee::Tpm, ev.as_bytes(), &ctx(&DIGEST)).unwrap();
    assert_eq!(c.init_data, expected_pcr8(&DIGEST).to_vec());
    let e = veil_attest::verify(Tee::Tpm, ev.as_bytes(), &ctx(&[0x5b; 32])).unwrap_err();
    assert_eq!(e.check(), Some("init_data"));
    assert!(e.to_string().contains("PCR 8 mismatch"), "{e}");
}

#[test]
fn each_forgery_is_refused_by_its_check() {
    let pcrs = pcrs_with_init_data(&DIGEST);
    let (_, ak) = rsa_ak();
    let run = |m: Vec<u8>, sig: Signature, pcrs: PcrValues| {
        refused(tpm::verify(
            evidence(&ak, m, sig, pcrs).as_bytes(),
            std::slice::from_ref(&ak),
        ))
    };
    let signed = |edit: fn(&mut Attest)| {
        let m = attest(&pcrs, b"nonce", alg::SHA256, edit);
        let s = sign_rsassa(&m);
        (m, s)
    };

    let (m, s) = signed(|a| a.magic = 0x1234_5678);
    assert_eq!(run(m, s, pcrs.clone()), "tpm.magic");

    let (m, s) = signed(|a| {
        a.attest_type = st::ATTEST_CERTIFY;
        a.quote = None;
    });
    assert_eq!(run(m, s, pcrs.clone()), "tpm.attest_type");

    let (m, s) = signed(|a| a.quote.as_mut().unwrap().pcr_select[0].hash = alg::SHA1);
    assert_eq!(run(m, s, pcrs.clone()), "tpm.pcr_selection");

    // A quote without PCR 8 cannot carry the init-data binding.
    let sel = PcrSelection::new(alg::SHA256, 3, (0..24).filter(|&i| i != 8));
    let d = digest_of(&pcrs, &sel, alg::SHA256);
    let m = Attest::new_quote(b"nonce", vec![sel], d).to_bytes();
    let s = sign_rsassa(&m);
    assert_eq!(run(m, s, pcrs.clone()), "tpm.pcr_selection");

    let (m, s) = signed(|a| a.quote.as_mut().unwrap().pcr_digest[0] ^= 1);
    assert_eq!(run(m, s, pcrs.clone()), "tpm.pcr_digest");

    let (m, _) = signed(|_| {});
    let sha1 = Signature::RsaSsa {
        hash: alg::SHA1,
        sig: vec![0; 256],
    };
    assert_eq!(run(m.clone(), sha1, pcrs.clone()), "tpm.signature_scheme");
    let ecdsa = Signature::Ecdsa {
        hash: alg::SHA256,
        r: vec![1; 32],
        s: vec![1; 32],
    };
    assert_eq!(run(m.clone(), ecdsa, pcrs.clone()), "tpm.signature_scheme");

    // Signed by another key.
    let other = RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
    let s = rsa::pkcs1v15::SigningKey::<Sha256>::new(other)
        .sign(&m)
        .to_vec();
    assert_eq!(
        run(
            m.clone(),
            Signature::RsaSsa {
                hash: alg::SHA256,
                sig: s
            },
            pcrs.clone()
        ),
        "tpm.signature"
    );
}

#[test]
fn ak_given_as_tpmt_public_is_held_to_its_attributes_and_scheme() {
    let pcrs = pcrs_with_init_data(&DIGEST);
    let (_, ak) = rsa_ak();
    let m = attest(&pcrs, b"nonce", alg::SHA256, |_| {});
    let ev = evidence(&ak, m.clone(), sign_rsassa(&m), pcrs.clone());

    let tpmt = ak.to_tpmt_public(alg::RSASSA, alg::SHA256);
    let pinned = AkPublic::from_bytes(&tpmt).unwrap();
    assert_eq!(pinned.spki_der(), ak.spki_der());
    let c = tpm::verify(ev.as_bytes(), std::slice::from_ref(&pinned)).unwrap();
    assert!(
        c.raw["tpm_quote"]["ak"]["name"]
            .as_str()
            .unwrap()
            .starts_with("000b")
    );

    // An unrestricted signing key could have signed a forged TPMS_ATTEST.
    let mut unrestricted = tpmt.clone();
    let attrs =
        u32::from_be_bytes(unrestricted[4..8].try_into().unwrap()) & !object_attr::RESTRICTED;
    unrestricted[4..8].copy_from_slice(&attrs.to_be_bytes());
    let k = AkPublic::from_bytes(&unrestricted).unwrap();
    assert_eq!(
        refused(tpm::verify(ev.as_bytes(), &[k])),
        "tpm.ak_attributes"
    );

    // An AK bound to RSASSA does not accept a PSS signature.
    let sig = rsa::pss::SigningKey::<Sha256>::new(rsa_key().clone())
        .sign_with_rng(&mut OsRng, &m)
        .to_vec();
    let ev = evidence(
        &ak,
        m,
        Signature::RsaPss {
            hash: alg::SHA256,
            sig,
        },
        pcrs,
    );
    assert_eq!(
        refused(tpm::verify(ev.as_bytes(), &[pinned])),
        "tpm.signature_scheme"
    );
}

#[test]
fn malformed_tpm_evidence_says_what_is_wrong() {
    let (ev, ak) = azure_as_tpm();
    let mut v: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
    v["extra"] = true.into();
    let e = tpm::verify(v.to_string().as_bytes(), std::slice::from_ref(&ak)).unwrap_err();
    assert!(e.is_malformed() && e.to_string().contains("extra"), "{e}");
    let mut v: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
    v["tpm_quote"]["message"] = "not base64!".into();
    let e = tpm::verify(v.to_string().as_bytes(), std::slice::from_ref(&ak)).unwrap_err();
    assert!(
        e.to_string()
            .contains("tpm_quote.message is not standard base64"),
        "{e}"
    );
    let mut v: serde_json::Value = serde_json::from_str(&ev.to_json()).unwrap();
    v["tpm_quote"]["pcrs"].as_array_mut().unwrap().truncate(8);
    let e = tpm::verify(v.to_string().as_bytes(), std::slice::from_ref(&ak)).unwrap_err();
    assert!(
        e.to_string().contains("expected 24 SHA-256 PCR values"),
        "{e}"
    );
}
