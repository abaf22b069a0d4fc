//! Selecting an NVIDIA report's driver and VBIOS RIMs from a directory of
//! candidates (`nvidia::rim_select`), on the real RIMs of
//! `shared/fixtures/nvidia/rims` (none of which is for the fixture report's
//! VBIOS: that refusal is what the report gets).

use veil_attest::nvidia::DeviceChain;
use veil_attest::nvidia::rim_select::{self, RimFile, Wanted};

const FIX: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/nvidia/"
);
/// 2024-06-01: inside the report chain's and every RIM signer's validity.
const RIM_TIME: u64 = 1_717_200_000;
const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";
const DRIVER_TAG: &str = "f0d3a263ab9ef4b93c8fc9727493b61a979814cbf31c07614842a9486b84db8c6cb2c94fb3d5d55992fc482ab495df0d";
const VBIOS_5E01_TAG: &str = "560b6686b372407d02dea1bd3bcedf3865fff39a281705348b27edd21e5f32c6541642eb5db0a494a24884d60b009cfe";

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIX}{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Every fixture RIM, as a `--rim-dir` would read them.
fn fixture_dir() -> Vec<RimFile> {
    let mut names: Vec<String> = std::fs::read_dir(format!("{FIX}rims"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
        .into_iter()
        .map(|name| RimFile {
            bytes: fixture(&format!("rims/{name}")),
            name,
        })
        .collect()
}

fn want(driver: &str, vbios: &str, board: (&str, &str, &str)) -> Wanted {
    Wanted {
        product: "GH100".into(),
        driver_version: driver.into(),
        vbios_version: vbios.into(),
        board: Some((board.0.into(), board.1.into(), board.2.into())),
    }
}

fn refusal(r: Result<rim_select::Selected, veil_attest::Error>) -> String {
    match r {
        Ok(s) => panic!(
            "expected a refusal, selected {} and {}",
            s.driver_file, s.vbios_file
        ),
        Err(e) => {
            assert_eq!(e.check(), Some("nvidia.rim_select"), "{e}");
            e.to_string()
        }
    }
}

#[test]
fn nvidia_rim_dir_selects_driver_and_vbios_rims_by_version_and_board() {
    let files = fixture_dir();
    let w = want("545.00", "96.00.5e.00.01", ("1010", "0200", "882"));
    let s = rim_select::select(&w, &files, "rims/", RIM_TIME).unwrap();
    assert_eq!(s.driver_file, "Driver_RIM_test_no_gpu.swidtag");
    assert_eq!(s.driver.tag_id, DRIVER_TAG);
    // The PROD and test_no_gpu copies are the same RIM (same tagId): no ambiguity.
    assert!(
        s.vbios_file.starts_with("1010_0200_882_96005E0001_"),
        "{}",
        s.vbios_file
    );
    assert_eq!(s.vbios.tag_id, VBIOS_5E01_TAG);
    // Both signature-verified to NVIDIA's RIM root.
    assert_eq!(s.driver.signed_by.as_deref(), Some("HCC RIM L4 Signer"));
    assert_eq!(s.vbios.signed_by.as_deref(), Some("HCC RIM L4 Signer"));
}

#[test]
fn nvidia_rim_dir_without_the_reports_rims_is_refused_naming_both_and_the_inventory() {
    let chain = DeviceChain::verify(&fixture("hopperCertChain.txt"), RIM_TIME).unwrap();
    let report = fixture("hopperAttestationReport.txt");
    let nonce: [u8; 32] = hex::decode(NONCE).unwrap().try_into().unwrap();
    let e = chain
        .verify_report_selecting_rims(
            &report,
            Some(&nonce),
            RIM_TIME,
            &fixture_dir(),
            "rims/",
            None,
        )
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_select"), "{e}");
    let msg = e.to_string();
    for want in [
        "no RIM for VBIOS 96.00.9f.00.01 (project 1010, project SKU 0200, chip SKU 882) in rims/",
        "no RIM for driver 550.90.07 in rims/",
        "have: 545.00, 96.00.5E.00.01, 96.00.5E.00.02",
        "NV_GPU_DRIVER_GH100_550.90.07",
    ] {
        assert!(msg.contains(want), "{want:?} not in {msg}");
    }
    // A forged report is refused for its signature before any RIM is looked at.
    let mut raw = hex::decode(report.trim_ascii()).unwrap();
    raw[0x40] ^= 1; // inside measurement block 1's value
    let e = chain
        .verify_report_selecting_rims(&raw, Some(&nonce), RIM_TIME, &fixture_dir(), "rims/", None)
        .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.signature"), "{e}");
}

#[test]
fn nvidia_rim_dir_rim_for_another_board_is_not_chosen() {
    // 96.00.5E.00.01 exists only for board 1010/0200/882: a 1010/0205/862
    // GPU with that VBIOS has no RIM, and the refusal names the other board's file.
    let msg = refusal(rim_select::select(
        &want("545.00", "96.00.5E.00.01", ("1010", "0205", "862")),
        &fixture_dir(),
        "rims/",
        RIM_TIME,
    ));
    assert!(
        msg.contains(
            "no RIM for VBIOS 96.00.5E.00.01 (project 1010, project SKU 0205, chip SKU 862)"
        ),
        "{msg}"
    );
    assert!(
        msg.contains("another board: 1010_0200_882_96005E0001_PROD.swidtag"),
        "{msg}"
    );
    assert!(!msg.contains("no RIM for driver"), "{msg}");
}

#[test]
fn nvidia_rim_dir_two_different_rims_for_one_version_are_refused_as_ambiguous() {
    let mut files = fixture_dir();
    let xml = String::from_utf8(fixture("rims/Driver_RIM_test_no_gpu.swidtag")).unwrap();
    files.push(RimFile {
        name: "other-driver.swidtag".into(),
        bytes: xml.replacen(DRIVER_TAG, &"ab".repeat(48), 1).into_bytes(),
    });
    let msg = refusal(rim_select::select(
        &want("545.00", "96.00.5E.00.01", ("1010", "0200", "882")),
        &files,
        "rims/",
        RIM_TIME,
    ));
    assert!(msg.contains("2 different RIMs for driver 545.00"), "{msg}");
    assert!(msg.contains("other-driver.swidtag"), "{msg}");
}

#[test]
fn nvidia_rim_dir_selected_rim_with_a_broken_signature_is_refused() {
    let xml = String::from_utf8(fixture("rims/1010_0200_882_96005E0001_PROD.swidtag")).unwrap();
    let tampered = xml.replacen(
        "c3f65ef79a19c029868cd7ce54b10e44f192444edb3506dde29cef2aac4e916c90a4f438e55aa7581a9e384c74d82db6",
        "d3f65ef79a19c029868cd7ce54b10e44f192444edb3506dde29cef2aac4e916c90a4f438e55aa7581a9e384c74d82db6",
        1,
    );
    assert_ne!(tampered, xml);
    let files = vec![
        RimFile {
            name: "driver.swidtag".into(),
            bytes: fixture("rims/Driver_RIM_test_no_gpu.swidtag"),
        },
        RimFile {
            name: "vbios.swidtag".into(),
            bytes: tampered.into_bytes(),
        },
    ];
    let e = rim_select::select(
        &want("545.00", "96.00.5E.00.01", ("1010", "0200", "882")),
        &files,
        "dir",
        RIM_TIME,
    )
    .unwrap_err();
    assert_eq!(e.check(), Some("nvidia.rim_signature"), "{e}");
}

#[test]
fn nvidia_rim_dir_skips_files_that_are_not_rims_for_this_product_and_says_so() {
    let xml = String::from_utf8(fixture("rims/Driver_RIM_test_no_gpu.swidtag")).unwrap();
    let files = vec![
        RimFile {
            name: "notes.txt".into(),
            bytes: b"not a RIM".to_vec(),
        },
        RimFile {
            name: "blackwell.swidtag".into(),
            bytes: xml
                .replacen("name=\"GH100\"", "name=\"GB100\"", 1)
                .into_bytes(),
        },
    ];
    let msg = refusal(rim_select::select(
        &want("545.00", "96.00.5E.00.01", ("1010", "0200", "882")),
        &files,
        "dir",
        RIM_TIME,
    ));
    assert!(
        msg.contains("have: no GH100 RIM; 2 file(s) skipped"),
        "{msg}"
    );
    assert!(msg.contains("blackwell.swidtag (a RIM for GB100)"), "{msg}");
    assert!(msg.contains("notes.txt (malformed NVIDIA RIM"), "{msg}");
}
