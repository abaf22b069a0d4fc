//! Differential test against NVIDIA's own verifier: `nv-local-gpu-verifier`
//! (PyPI, pinned, installed by scripts/install-deps.sh into its venv) driven
//! by scripts/nvidia-verifier-oracle.py, which calls the package's own
//! chain, FWID, report-signature and nonce checks offline. veil and NVIDIA
//! must agree on the fixture and on mutated copies of it.

use der::EncodePem;
use p384::pkcs8::EncodePublicKey;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use veil_attest::nvidia::DeviceChain;
use x509_cert::Certificate;

const FIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/nvidia/"
);
const ORACLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/nvidia-verifier-oracle.py"
);
/// 2025-01-01T00:00:00Z, inside the fixture chain's validity.
const NOW: u64 = 1_735_689_600;
/// 2022-01-01: before the Provisioner ICA's notBefore (2022-03-01).
const BEFORE: u64 = 1_640_995_200;
const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

/// The venv's python (scripts/install-deps.sh), or `$VEIL_NV_VERIFIER_PYTHON`.
fn python() -> PathBuf {
    let p = match std::env::var_os("VEIL_NV_VERIFIER_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache"));
            cache.join("veil/nv-local-gpu-verifier-2.7.3/bin/python")
        }
    };
    assert!(
        p.exists(),
        "NVIDIA's verifier venv not found at {}: run scripts/install-deps.sh \
         (or set VEIL_NV_VERIFIER_PYTHON to a python with nv-local-gpu-verifier==2.7.3)",
        p.display()
    );
    p
}

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}{name}")).unwrap()
}

fn report_raw() -> Vec<u8> {
    hex::decode(fixture("hopperAttestationReport.txt").trim_ascii()).unwrap()
}

fn to_pem(certs: &[Certificate]) -> Vec<u8> {
    certs
        .iter()
        .map(|c| c.to_pem(der::pem::LineEnding::LF).unwrap())
        .collect::<String>()
        .into_bytes()
}

struct Case {
    name: String,
    report: Vec<u8>,
    chain: Vec<u8>,
    nonce: String,
    at: u64,
}

/// veil's verdicts, in the oracle's terms.
#[derive(Debug, PartialEq)]
struct Verdict {
    chain: bool,
    /// Report signed by the leaf and its FWID the leaf's (null when the
    /// chain is refused: veil does not look at the report then).
    report: Option<bool>,
    /// Everything, with the expected nonce.
    accepted: bool,
}

fn veil(c: &Case) -> Verdict {
    let nonce: [u8; 32] = hex::decode(&c.nonce).unwrap().try_into().unwrap();
    let Ok(chain) = DeviceChain::verify(&c.chain, c.at) else {
        return Verdict {
            chain: false,
            report: None,
            accepted: false,
        };
    };
    Verdict {
        chain: true,
        report: Some(chain.verify_report(&c.report, None, c.at).is_ok()),
        accepted: chain.verify_report(&c.report, Some(&nonce), c.at).is_ok(),
    }
}

fn nvidia(v: &Value) -> Verdict {
    let b = |k: &str| {
        v[k].as_bool()
            .unwrap_or_else(|| panic!("NVIDIA's verifier gave no {k} verdict: {v}"))
    };
    let report = b("parsed") && b("signature") && b("fwid");
    Verdict {
        chain: b("chain"),
        report: b("chain").then_some(report),
        accepted: b("chain") && report && b("nonce"),
    }
}

/// Run NVIDIA's checks on every case in one process.
fn oracle(dir: &Path, cases: &[Case]) -> Vec<Value> {
    let input: Vec<Value> = cases
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let report = dir.join(format!("{i}.report.txt"));
            let chain = dir.join(format!("{i}.chain.pem"));
            std::fs::write(&report, hex::encode(&c.report)).unwrap();
            std::fs::write(&chain, &c.chain).unwrap();
            json!({"name": c.name, "report": report, "chain": chain, "nonce": c.nonce, "at": c.at})
        })
        .collect();
    let mut child = std::process::Command::new(python())
        .arg(ORACLE)
        .current_dir(dir)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    serde_json::to_writer(child.stdin.take().unwrap(), &input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "NVIDIA's verifier failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn cases() -> Vec<Case> {
    let report = report_raw();
    let chain = fixture("hopperCertChain.txt");
    let certs = Certificate::load_pem_chain(&chain).unwrap();
    assert_eq!(certs.len(), 5, "NVIDIA's verifier wants leaf … root");
    let case = |name: &str, report: Vec<u8>, chain: Vec<u8>, nonce: &str, at: u64| Case {
        name: name.into(),
        report,
        chain,
        nonce: nonce.into(),
        at,
    };
    let mut out = vec![case("fixture", report.clone(), chain.clone(), NONCE, NOW)];
    // A flipped byte in every region of the signed part (request header,
    // request nonce, slot, response header, measurement record, responder
    // nonce and opaque data, the last signed byte) and in the signature.
    let signed = report.len() - 96;
    for at in [
        0x02,
        0x04,
        0x23,
        0x24,
        0x27,
        0x40,
        0x200,
        signed - 200,
        signed - 40,
        signed - 1,
        signed + 10,
        report.len() - 1,
    ] {
        let mut r = report.clone();
        r[at] ^= 0x01;
        out.push(case(&format!("flip@{at:#x}"), r, chain.clone(), NONCE, NOW));
    }
    // A changed nonce: expected differs; the report's own nonce rewritten.
    let mut other = hex::decode(NONCE).unwrap();
    other[31] ^= 0xff;
    out.push(case(
        "expected nonce differs",
        report.clone(),
        chain.clone(),
        &hex::encode(&other),
        NOW,
    ));
    let mut r = report.clone();
    r[4..36].copy_from_slice(&other);
    out.push(case(
        "report nonce rewritten",
        r,
        chain.clone(),
        &hex::encode(&other),
        NOW,
    ));
    // A swapped leaf: the leaf with another key (its issuer's signature no
    // longer covers it), and a leaf with a changed serial.
    let key = p384::SecretKey::from_slice(&[7u8; 48]).unwrap();
    let spki = key.public_key().to_public_key_der().unwrap();
    let mut swapped = certs.clone();
    swapped[0].tbs_certificate.subject_public_key_info =
        der::Decode::from_der(spki.as_bytes()).unwrap();
    out.push(case(
        "leaf with another key",
        report.clone(),
        to_pem(&swapped),
        NONCE,
        NOW,
    ));
    let mut swapped = certs.clone();
    let mut serial = swapped[0].tbs_certificate.serial_number.as_bytes().to_vec();
    serial[1] ^= 1;
    swapped[0].tbs_certificate.serial_number =
        x509_cert::serial_number::SerialNumber::new(&serial).unwrap();
    out.push(case(
        "leaf serial changed",
        report.clone(),
        to_pem(&swapped),
        NONCE,
        NOW,
    ));
    // A byte of an intermediate's signature flipped.
    let mut ica = certs.clone();
    let mut sig = ica[2].signature.raw_bytes().to_vec();
    let n = sig.len();
    sig[n - 5] ^= 1;
    ica[2].signature = der::asn1::BitString::from_bytes(&sig).unwrap();
    out.push(case(
        "ICA signature flipped",
        report.clone(),
        to_pem(&ica),
        NONCE,
        NOW,
    ));
    // Outside the chain's validity.
    out.push(case(
        "before the ICA's validity",
        report,
        chain,
        NONCE,
        BEFORE,
    ));
    out
}

#[test]
fn nvidia_verifier_agrees_with_veil() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let theirs = oracle(dir.path(), &cases);
    assert_eq!(theirs.len(), cases.len());
    let mut table = String::new();
    let mut disagree = Vec::new();
    for (c, t) in cases.iter().zip(&theirs) {
        assert_eq!(t["name"], c.name.as_str());
        let (v, n) = (veil(c), nvidia(t));
        table += &format!("{:<28} veil {v:?}\n{:<28} nvidia {n:?}\n", c.name, "");
        if v != n {
            disagree.push(c.name.clone());
        }
    }
    eprintln!("{table}");
    assert!(
        disagree.is_empty(),
        "veil and NVIDIA disagree on {disagree:?}:\n{table}"
    );
    // Both accept the fixture, and refuse every mutation.
    let accepted: Vec<_> = cases
        .iter()
        .filter(|c| veil(c).accepted)
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(accepted, ["fixture"]);
    // The chain verdict actually varied (the oracle is not always "yes").
    assert!(theirs.iter().any(|t| t["chain"] == false));
    assert!(theirs.iter().any(|t| t["signature"] == false));
    assert!(theirs.iter().any(|t| t["nonce"] == false));
}
