#![no_main]
//! sim evidence parsing (raw and JSON).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::sim::SimReport::parse(data);
});
