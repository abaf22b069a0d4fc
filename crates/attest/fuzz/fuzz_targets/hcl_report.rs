#![no_main]
//! Azure HCL report parsing (header, hardware report, variable data, runtime
//! JSON with the vTPM AK) and the whole az-snp-vtpm / az-tdx-vtpm paths.

use libfuzzer_sys::fuzz_target;
use veil_attest::azure::{self, HclReport};

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = HclReport::parse(data) {
        let _ = r.var_data_hash();
        if let Ok(rt) = r.runtime_data() {
            let _ = r.to_json(&rt);
        }
    }
    let _ = azure::verify_snp_vtpm(data, &veil_attest::snp::Options::default(), 0);
    let _ = azure::inspect_tdx_vtpm(data);
});
