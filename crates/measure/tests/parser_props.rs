//! Property tests on the firmware parsers (untrusted bytes): arbitrary input
//! never panics, every refusal is an error value, and well-formed tables
//! built from arbitrary entries parse back exactly.

use proptest::prelude::*;
use veil_measure::guid::Guid;
use veil_measure::ovmf::{Firmware, TABLE_FOOTER_GUID};
use veil_measure::snp::{self, SnpLaunch, VmmType};
use veil_measure::tdx::{self, PageAddOrder};

/// Close `payload` + `entries` the way OVMF does.
fn image(payload: &[u8], entries: &[(Guid, Vec<u8>)]) -> Vec<u8> {
    let mut img = payload.to_vec();
    let mut table_len = 18usize;
    for (g, data) in entries {
        img.extend(data);
        img.extend(((data.len() + 18) as u16).to_le_bytes());
        img.extend(g.0);
        table_len += data.len() + 18;
    }
    img.extend((table_len as u16).to_le_bytes());
    img.extend(TABLE_FOOTER_GUID.0);
    img.extend([0u8; 32]);
    img
}

/// The real AmdSev OVMF suffix, read once (a failure to read it is not a
/// property of the parser, so it is reported as what it is).
fn amd_suffix() -> &'static [u8] {
    static DATA: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DATA.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/fixtures/snp-measure/ovmf_AmdSev_suffix.bin"
        );
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("reading {path}: {e}"));
        assert!(data.len() >= 1024, "{path}: only {} bytes", data.len());
        data
    })
}

fn exercise(data: &[u8]) {
    if let Ok(fw) = Firmware::parse(data) {
        let _ = fw.sev_sections();
        let _ = fw.tdvf_sections();
        let _ = fw.sev_es_reset_eip();
        let _ = fw.sev_hashes_table_gpa();
        let launch = SnpLaunch {
            vcpus: 2,
            vcpu_sig: 0,
            guest_features: 1,
            vmm: VmmType::Qemu,
            kernel_hashes: None,
        };
        let _ = snp::launch_digest(&fw, &launch);
        let _ = tdx::mrtd(&fw, PageAddOrder::SinglePass);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        exercise(&data);
    }

    /// Arbitrary bytes behind a valid footer: the table walk, SEV and TDVF
    /// metadata parsers see hostile sizes and offsets.
    #[test]
    fn arbitrary_tables_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..2048),
        size in any::<u16>(),
    ) {
        let mut img = body;
        img.extend(size.to_le_bytes());
        img.extend(TABLE_FOOTER_GUID.0);
        img.extend([0u8; 32]);
        exercise(&img);
    }

    /// Well-formed tables parse back to the same entries, in order.
    #[test]
    fn well_formed_tables_round_trip(
        payload in proptest::collection::vec(any::<u8>(), 0..256),
        raw in proptest::collection::vec(
            (any::<[u8; 16]>(), proptest::collection::vec(any::<u8>(), 0..64)), 0..8),
    ) {
        let mut entries: Vec<(Guid, Vec<u8>)> = Vec::new();
        for (g, d) in raw {
            let g = Guid(g);
            if g != TABLE_FOOTER_GUID && !entries.iter().any(|(e, _)| *e == g) {
                entries.push((g, d));
            }
        }
        let img = image(&payload, &entries);
        let fw = Firmware::parse(&img).unwrap();
        let got: Vec<Guid> = fw.entry_guids().collect();
        let want: Vec<Guid> = entries.iter().map(|(g, _)| *g).collect();
        prop_assert_eq!(got, want);
        for (g, d) in &entries {
            prop_assert_eq!(fw.entry(*g).unwrap(), d.as_slice());
        }
    }

    /// Any single-byte change to a real image's table region either still
    /// parses or is refused with an error; it never panics.
    #[test]
    fn mutated_real_tables_never_panic(pos in 0usize..1024, val in any::<u8>()) {
        let mut data = amd_suffix().to_vec();
        let at = data.len() - 1 - pos;
        data[at] = val;
        exercise(&data);
    }
}

#[test]
fn duplicate_entries_are_refused() {
    let g = Guid([7; 16]);
    let img = image(&[], &[(g, vec![1, 2, 3, 4]), (g, vec![5, 6, 7, 8])]);
    let e = Firmware::parse(&img).unwrap_err().to_string();
    assert!(e.contains("appears twice"), "{e}");
}
