#![no_main]
//! SNP evidence parsing (raw, hex, CoCo JSON) and report decoding.

use libfuzzer_sys::fuzz_target;
use veil_attest::snp::{self, Product, Report};

fuzz_target!(|data: &[u8]| {
    if let Ok(ev) = snp::evidence::parse(data) {
        if let Ok(r) = Report::parse(&ev.report) {
            let _ = r.to_json(Product::Milan);
            let _ = r.signing_key();
        }
    }
    let _ = snp::verify(data, &snp::Options::default(), 0);
});
