//! Arbitrary bytes into the DCAP quote parser and the TDX/SGX inspectors
//! (raw quote or CoCo JSON). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = veil_attest::dcap::Quote::parse(data);
    let _ = veil_attest::tdx::inspect_evidence(data);
    let _ = veil_attest::sgx::inspect_evidence(data);
});
