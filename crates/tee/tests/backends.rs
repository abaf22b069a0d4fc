//! The SNP and TDX attesters against a fake configfs-tsm tree, and
//! detection against fake device trees.

use std::os::unix::net::UnixStream;
use std::path::Path;

use veil_tee::tsm::TsmReport;
use veil_tee::tsm::fake::FakeConfigFs;
use veil_tee::{Attester, DetectRoots, TeeKind, detect, snp, tdx};

/// A fake SNP "firmware": a 1184-byte report with REPORT_DATA, MEASUREMENT
/// and HOST_DATA filled in, plus a certificate table with a VCEK.
fn snp_hardware(host_data: [u8; 32]) -> Box<veil_tee::tsm::fake::Hardware> {
    Box::new(move |rd: &[u8]| {
        let mut r = vec![0u8; snp::REPORT_LEN];
        r[0] = 2; // version
        r[snp::REPORT_DATA].copy_from_slice(rd);
        r[snp::MEASUREMENT].copy_from_slice(&[0x4d; 48]);
        r[snp::HOST_DATA].copy_from_slice(&host_data);
        let mut t = Vec::new();
        t.extend_from_slice(&hex::decode("63da758de6644564adc5f4b93be8accd").unwrap());
        t.extend_from_slice(&48u32.to_le_bytes());
        t.extend_from_slice(&4u32.to_le_bytes());
        t.extend_from_slice(&[0u8; 24]);
        t.extend_from_slice(b"VCEK");
        (r, Some(t))
    })
}

/// A fake TDX quoting service: a v4 quote with REPORTDATA, MRTD and MRCONFIGID.
fn tdx_hardware(mrconfigid: [u8; 48]) -> Box<veil_tee::tsm::fake::Hardware> {
    Box::new(move |rd: &[u8]| {
        let mut q = vec![0u8; tdx::HEADER_LEN + tdx::BODY_LEN + 64];
        q[0] = 4;
        q[4] = 0x81;
        let b = tdx::HEADER_LEN;
        q[b + tdx::BODY_MRTD..b + tdx::BODY_MRTD + 48].copy_from_slice(&[0x7d; 48]);
        q[b + tdx::BODY_MRCONFIGID..b + tdx::BODY_MRCONFIGID + 48].copy_from_slice(&mrconfigid);
        q[b + tdx::BODY_REPORT_DATA..b + tdx::BODY_REPORT_DATA + 64].copy_from_slice(rd);
        (q, None)
    })
}

#[test]
fn snp_evidence_and_host_data_through_configfs_tsm() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeConfigFs::new("sev_guest", snp_hardware([0xab; 32]));
    let a =
        snp::SnpAttester::new(TsmReport::new(dir.path(), Box::new(fake), snp::PROVIDER)).unwrap();
    assert_eq!(a.tee(), TeeKind::Snp);
    assert_eq!(a.init_data_binding().unwrap(), vec![0xab; 32]);
    assert_eq!(a.measurement().unwrap(), vec![0x4d; 48]);
    let ev = a.evidence(&[9u8; 64]).unwrap();
    assert_eq!(ev.json["cert_chain"][0]["cert_type"], "VCEK");
    // The evidence is in the form the verifier parses: REPORT_DATA where SNP puts it.
    let parsed = veil_attest::snp::evidence::parse(ev.json.to_string().as_bytes()).unwrap();
    assert_eq!(&parsed.report[snp::REPORT_DATA], &[9u8; 64]);
    assert_eq!(parsed.certs, vec![b"VCEK".to_vec()]);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "report entries left in configfs"
    );
}

#[test]
fn snp_firmware_that_ignores_report_data_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let hw: Box<veil_tee::tsm::fake::Hardware> =
        Box::new(|_rd: &[u8]| (vec![0u8; snp::REPORT_LEN], None));
    let a = snp::SnpAttester::new(TsmReport::new(
        dir.path(),
        Box::new(FakeConfigFs::new("sev_guest", hw)),
        snp::PROVIDER,
    ))
    .unwrap();
    let e = a.evidence(&[1u8; 64]).unwrap_err().to_string();
    assert!(
        e.contains("REPORT_DATA") && e.contains(&hex::encode([1u8; 64])),
        "{e}"
    );
}

#[test]
fn tdx_evidence_and_mrconfigid_through_configfs_tsm() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeConfigFs::new("tdx_guest", tdx_hardware([0x11; 48]));
    let a =
        tdx::TdxAttester::new(TsmReport::new(dir.path(), Box::new(fake), tdx::PROVIDER)).unwrap();
    assert_eq!(a.init_data_binding().unwrap(), vec![0x11; 48]);
    assert_eq!(a.measurement().unwrap(), vec![0x7d; 48]);
    let ev = a.evidence(&[5u8; 64]).unwrap();
    assert!(ev.json["cc_eventlog"].is_null());
    let q = base64::Engine::decode(
        &base64::engine::general_purpose::STANDARD,
        ev.json["quote"].as_str().unwrap(),
    )
    .unwrap();
    assert_eq!(
        tdx::body_field(&q, tdx::BODY_REPORT_DATA, 64).unwrap(),
        &[5u8; 64]
    );
}

#[test]
fn wrong_provider_for_the_attester_is_refused() {
    let e = snp::SnpAttester::new(TsmReport::new(
        "/x",
        Box::new(veil_tee::tsm::KernelConfigFs),
        tdx::PROVIDER,
    ))
    .unwrap_err();
    assert!(e.to_string().contains("sev_guest"), "{e}");
}

fn roots(dir: &Path) -> DetectRoots {
    DetectRoots {
        dev: dir.join("dev"),
        sys: dir.join("sys"),
        tsm: dir.join("sys/kernel/config/tsm/report"),
    }
}

#[test]
fn detection_never_falls_back_to_sim() {
    let dir = tempfile::tempdir().unwrap();
    let r = roots(dir.path());
    std::fs::create_dir_all(&r.dev).unwrap();
    let (a, _b) = UnixStream::pair().unwrap();
    // Nothing present, a sim channel available, no explicit request: error, not sim.
    let e = detect(None, &r, Some(a)).unwrap_err().to_string();
    assert!(
        e.contains("no TEE guest device") && e.contains("--tee sim"),
        "{e}"
    );
    // Sim requested without a channel.
    let e = detect::<UnixStream>(Some(TeeKind::Sim), &r, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no sim platform channel"), "{e}");
    // Sim requested with a channel.
    let (a, _b) = UnixStream::pair().unwrap();
    assert_eq!(
        detect(Some(TeeKind::Sim), &r, Some(a)).unwrap().tee(),
        TeeKind::Sim
    );
    // SNP requested on a machine without it.
    let e = detect::<UnixStream>(Some(TeeKind::Snp), &r, None)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("snp was requested") && e.contains("sev-guest"),
        "{e}"
    );
}

#[test]
fn detection_finds_hardware_and_requires_configfs_tsm() {
    let dir = tempfile::tempdir().unwrap();
    let r = roots(dir.path());
    std::fs::create_dir_all(r.sys.join("devices/platform/sev-guest")).unwrap();
    assert_eq!(r.probe(), vec![TeeKind::Snp]);
    let e = detect::<UnixStream>(None, &r, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("configfs-tsm"), "{e}");
    std::fs::create_dir_all(&r.tsm).unwrap();
    assert_eq!(
        detect::<UnixStream>(None, &r, None).unwrap().tee(),
        TeeKind::Snp
    );
    std::fs::create_dir_all(&r.dev).unwrap();
    std::fs::write(r.dev.join("tdx_guest"), b"").unwrap();
    assert_eq!(r.probe(), vec![TeeKind::Tdx, TeeKind::Snp]);
    assert_eq!(
        detect::<UnixStream>(None, &r, None).unwrap().tee(),
        TeeKind::Tdx
    );
}
