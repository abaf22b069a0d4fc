//! Launch digests published by sev-snp-measure's own test-suite for the
//! firmware suffixes in `shared/fixtures/snp-measure` (the same files), and
//! MRTD checks on synthetic TDVF images against an independent, literal
//! transcription of the TDX module's MEM.PAGE.ADD / MR.EXTEND records.

use sha2::{Digest, Sha256, Sha384};
use veil_measure::snp::{self, SevHashes, SnpLaunch, VcpuType, VmmType};
use veil_measure::tdx::{self, PageAddOrder};
use veil_measure::{Error, Firmware};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/fixtures/snp-measure"
);

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap()
}

fn ld(fw: &str, vcpus: u32, features: u64, vmm: VmmType, hashes: Option<SevHashes>) -> String {
    let data = fixture(fw);
    let fw = Firmware::parse(&data).unwrap();
    let launch = SnpLaunch {
        vcpus,
        vcpu_sig: VcpuType::from_name("EPYC-v4").unwrap().signature(),
        guest_features: features,
        vmm,
        kernel_hashes: hashes,
    };
    hex::encode(snp::launch_digest(&fw, &launch).unwrap().launch_digest)
}

fn empty_kernel(append: &str) -> Option<SevHashes> {
    let empty: [u8; 32] = Sha256::digest([]).into();
    Some(SevHashes::new(empty, Some(empty), append))
}

const AMD: &str = "ovmf_AmdSev_suffix.bin";
const X64: &str = "ovmf_OvmfX64_suffix.bin";

#[test]
fn amdsev_with_kernel_hashes() {
    assert_eq!(
        ld(
            AMD,
            1,
            0x21,
            VmmType::Qemu,
            empty_kernel("console=ttyS0 loglevel=7")
        ),
        "803f691094946e42068aaa3a8f9e26a5c89f36f7b73ecfb28c653360fe4b3aba7e534442e7e1e17895dfe778d0228977"
    );
    assert_eq!(
        ld(
            AMD,
            1,
            0x1,
            VmmType::Qemu,
            empty_kernel("console=ttyS0 loglevel=7")
        ),
        "6d287813eb5222d770f75005c664e34c204f385ce832cc2ce7d0d6f354454362f390ef83a92046c042e706363b4b08fa"
    );
    assert_eq!(
        ld(AMD, 4, 0x21, VmmType::Qemu, empty_kernel("")),
        "4953b1fb416fa874980e8442b3706d345926d5f38879134e00813c5d7abcbe78eafe7b422907be0b4698e2414a631942"
    );
    assert_eq!(
        ld(AMD, 4, 0x1, VmmType::Qemu, empty_kernel("")),
        "5061fffb019493a903613d56d54b94912a1a2f9e4502385f5c194616753720a92441310ba6c4933de877c36e23046ad5"
    );
}

#[test]
fn amdsev_without_kernel() {
    assert_eq!(
        ld(AMD, 1, 0x21, VmmType::Qemu, None),
        "e1e1ca029dd7973ab9513295be68198472dcd4fc834bd9af9b63f6e8a1674dbf281a9278a4a2ebe0eed9f22adbcd0e2b"
    );
    assert_eq!(
        ld(AMD, 1, 0x1, VmmType::Qemu, None),
        "19358ba9a7615534a9a1e2f0dfc29384dcd4dcb7062ff9c6013b26869a5fc6ecabe033c48dd6f6db5d6d76e7c5df632d"
    );
}

#[test]
fn ovmfx64_without_kernel_and_refused_with_one() {
    assert_eq!(
        ld(X64, 1, 0x21, VmmType::Qemu, None),
        "28797ae0afaba4005a81e629acebfb59e6687949d6be44007cd5506823b0dd66f146aaae26ff291eed7b493d8a64c385"
    );
    assert_eq!(
        ld(X64, 1, 0x1, VmmType::Qemu, None),
        "da0296de8193586a5512078dcd719eccecbd87e2b825ad4148c44f665dc87df21e5b49e21523a9ad993afdb6a30b4005"
    );
    let data = fixture(X64);
    let fw = Firmware::parse(&data).unwrap();
    let launch = SnpLaunch {
        vcpus: 1,
        vcpu_sig: 0,
        guest_features: 1,
        vmm: VmmType::Qemu,
        kernel_hashes: empty_kernel(""),
    };
    assert!(matches!(
        snp::launch_digest(&fw, &launch),
        Err(Error::NoKernelHashesSection)
    ));
}

#[test]
fn ec2_and_gce() {
    assert_eq!(
        ld(AMD, 1, 0x21, VmmType::Ec2, empty_kernel("")),
        "0ce9ccc06bab55eebe8abc234f3df6514883977a68a591b71052498ab52b2f1aa415db338033946ef93aa8278c0d67fb"
    );
    assert_eq!(
        ld(AMD, 1, 0x1, VmmType::Ec2, empty_kernel("")),
        "0883bd0eeb716e65b7b977a321c278d1e51b33b5c655fab985443bbcc65c086b9c15e8a0bd8811050dec7e24964e5056"
    );
    assert_eq!(
        ld(AMD, 1, 0x1, VmmType::Gce, empty_kernel("")),
        "5da7106cf14cf46b1725ebab123eb9e53bd46a1e9f400cd0c08e7827b04b688ea8b4e403c8404efed4397ea5d5d0722e"
    );
    assert_eq!(
        ld(AMD, 4, 0x1, VmmType::Gce, empty_kernel("")),
        "5c5debf100fc339f90276e761ee1f1658d08922c3b20e2a2e6c7a6c3370b2452a15a00eae11886a93d6fd1e7ab81e29d"
    );
}

#[test]
fn firmware_digest_is_the_published_ovmf_hash() {
    let data = fixture(AMD);
    let fw = Firmware::parse(&data).unwrap();
    let m = snp::launch_digest(
        &fw,
        &SnpLaunch {
            vcpus: 1,
            vcpu_sig: 0,
            guest_features: 1,
            vmm: VmmType::Qemu,
            kernel_hashes: None,
        },
    )
    .unwrap();
    assert_eq!(
        hex::encode(m.firmware_digest),
        "086e2e9149ebf45abdc3445fba5b2da8270bdbb04094d7a2c37faaa4b24af3aa16aff8c374c2a55c467a50da6d466b74"
    );
}

#[test]
fn every_input_changes_the_digest() {
    let base = ld(AMD, 2, 0x1, VmmType::Qemu, empty_kernel("a"));
    assert_ne!(base, ld(AMD, 3, 0x1, VmmType::Qemu, empty_kernel("a")));
    assert_ne!(base, ld(AMD, 2, 0x21, VmmType::Qemu, empty_kernel("a")));
    assert_ne!(base, ld(AMD, 2, 0x1, VmmType::Qemu, empty_kernel("b")));
    assert_ne!(base, ld(AMD, 2, 0x1, VmmType::Qemu, None));
    let mut data = fixture(AMD);
    data[100] ^= 1; // a byte outside the table, inside the measured image
    let fw = Firmware::parse(&data).unwrap();
    let other = snp::launch_digest(
        &fw,
        &SnpLaunch {
            vcpus: 2,
            vcpu_sig: VcpuType::from_name("EPYC-v4").unwrap().signature(),
            guest_features: 1,
            vmm: VmmType::Qemu,
            kernel_hashes: empty_kernel("a"),
        },
    )
    .unwrap();
    assert_ne!(base, hex::encode(other.launch_digest));
}

// ---- TDX ----------------------------------------------------------------

const FOOTER: &str = "96b582de-1fb2-45f7-baea-a366c55a082d";
const TDX_META: &str = "e47a6535-984a-4798-865e-4685a7bf8ec2";

fn guid_bytes(s: &str) -> Vec<u8> {
    let h: Vec<u8> = hex::decode(s.replace('-', "")).unwrap();
    let mut out = Vec::new();
    out.extend(h[0..4].iter().rev());
    out.extend(h[4..6].iter().rev());
    out.extend(h[6..8].iter().rev());
    out.extend(&h[8..16]);
    out
}

/// A synthetic image: `payload` (the section data), a TDVF descriptor with
/// `sections`, the table entry pointing at it, the footer, the reset vector.
fn tdvf_image(payload: &[u8], sections: &[[u64; 6]]) -> Vec<u8> {
    let mut img = payload.to_vec();
    let desc_at = img.len();
    img.extend(b"TDVF");
    img.extend(((16 + 32 * sections.len()) as u32).to_le_bytes());
    img.extend(1u32.to_le_bytes());
    img.extend((sections.len() as u32).to_le_bytes());
    for s in sections {
        img.extend((s[0] as u32).to_le_bytes());
        img.extend((s[1] as u32).to_le_bytes());
        img.extend(s[2].to_le_bytes());
        img.extend(s[3].to_le_bytes());
        img.extend((s[4] as u32).to_le_bytes());
        img.extend((s[5] as u32).to_le_bytes());
    }
    // entry data (u32 offset from end, patched below), entry header, footer
    let off_at = img.len();
    img.extend([0u8; 4]);
    img.extend(22u16.to_le_bytes());
    img.extend(guid_bytes(TDX_META));
    img.extend((22u16 + 18).to_le_bytes());
    img.extend(guid_bytes(FOOTER));
    img.extend([0u8; 32]);
    let from_end = (img.len() - desc_at) as u32;
    img[off_at..off_at + 4].copy_from_slice(&from_end.to_le_bytes());
    img
}

/// The TDX module's records, written out longhand.
fn expected_mrtd(img: &[u8], sections: &[[u64; 6]], two_pass: bool) -> String {
    let mut stream = Vec::new();
    let add = |stream: &mut Vec<u8>, gpa: u64| {
        let mut r = b"MEM.PAGE.ADD".to_vec();
        r.resize(16, 0);
        r.extend(gpa.to_le_bytes());
        r.resize(128, 0);
        stream.extend(r);
    };
    let ext = |stream: &mut Vec<u8>, s: &[u64; 6], page: u64| {
        for c in 0..16u64 {
            let mut r = b"MR.EXTEND".to_vec();
            r.resize(16, 0);
            r.extend((s[2] + page * 4096 + c * 256).to_le_bytes());
            r.resize(128, 0);
            stream.extend(r);
            let from = (s[0] + page * 4096 + c * 256) as usize;
            let end_raw = (s[0] + s[1]) as usize;
            stream.extend((from..from + 256).map(|i| if i < end_raw { img[i] } else { 0 }));
        }
    };
    for s in sections {
        let pages = s[3] / 4096;
        if two_pass {
            (0..pages).for_each(|p| add(&mut stream, s[2] + p * 4096));
            if s[5] & 1 == 1 {
                (0..pages).for_each(|p| ext(&mut stream, s, p));
            }
        } else {
            for p in 0..pages {
                add(&mut stream, s[2] + p * 4096);
                if s[5] & 1 == 1 {
                    ext(&mut stream, s, p);
                }
            }
        }
    }
    hex::encode(Sha384::digest(&stream))
}

#[test]
fn mrtd_matches_the_module_records() {
    let payload: Vec<u8> = (0..0x3000u32).map(|i| (i * 7 + 3) as u8).collect();
    // [data_offset, raw_size, gpa, mem_size, type, attributes]
    let sections = [
        [0x1000, 0x2000, 0xffff_e000, 0x2000, 0, 1], // BFV, extended
        [0x0, 0x1000, 0xffff_d000, 0x1000, 1, 0],    // CFV, added only
        [0, 0, 0x80_9000, 0x2000, 2, 0],             // TD_HOB
        [0x2000, 0x800, 0x90_0000, 0x2000, 0, 1],    // BFV smaller than its memory
        [0, 0, 0x80_0000, 0x3000, 3, 0],             // TEMP_MEM
    ];
    let img = tdvf_image(&payload, &sections);
    let fw = Firmware::parse(&img).unwrap();
    let single = tdx::mrtd(&fw, PageAddOrder::SinglePass).unwrap();
    let two = tdx::mrtd(&fw, PageAddOrder::TwoPass).unwrap();
    assert_eq!(
        hex::encode(single.mrtd),
        expected_mrtd(&img, &sections, false)
    );
    assert_eq!(hex::encode(two.mrtd), expected_mrtd(&img, &sections, true));
    assert_ne!(single.mrtd, two.mrtd);
    assert_eq!(single.sections.len(), 5);
}

#[test]
fn tdvf_refusals_name_the_section() {
    let payload = vec![0u8; 0x1000];
    // BFV reaching past the image.
    let img = tdvf_image(&payload, &[[0, 0x10_0000, 0xfff0_0000, 0x10_0000, 0, 1]]);
    let e = tdx::mrtd(&Firmware::parse(&img).unwrap(), PageAddOrder::SinglePass).unwrap_err();
    assert!(e.to_string().contains("section 0 (BFV)"), "{e}");
    assert!(e.to_string().contains("outside"), "{e}");
    // Unknown type.
    let img = tdvf_image(&payload, &[[0, 0, 0x1000, 0x1000, 7, 0]]);
    let e = tdx::mrtd(&Firmware::parse(&img).unwrap(), PageAddOrder::SinglePass).unwrap_err();
    assert!(e.to_string().contains("type 7"), "{e}");
    // Unaligned memory.
    let img = tdvf_image(&payload, &[[0, 0, 0x1001, 0x1000, 3, 0]]);
    let e = tdx::mrtd(&Firmware::parse(&img).unwrap(), PageAddOrder::SinglePass).unwrap_err();
    assert!(e.to_string().contains("page-aligned"), "{e}");
    // An SNP-only image has no TDVF metadata.
    let data = fixture(AMD);
    let mut no_tdx = data.clone();
    // Corrupt the TDX metadata entry's GUID in the table.
    let g = guid_bytes(TDX_META);
    let at = data.windows(16).position(|w| w == g.as_slice()).unwrap();
    no_tdx[at] ^= 0xff;
    let e = tdx::mrtd(&Firmware::parse(&no_tdx).unwrap(), PageAddOrder::SinglePass).unwrap_err();
    assert!(matches!(e, Error::NoTdvfMetadata { .. }), "{e}");
}
