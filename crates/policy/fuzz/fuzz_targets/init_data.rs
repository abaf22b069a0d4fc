//! Init-data from the host: parse, hash, and (if it parses) load its policy.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_policy::initdata::{ParsedInitData, decode_annotation};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ParsedInitData::parse(data) {
        let _ = p.digest().host_data();
        let _ = p.is_canonical();
        if let Ok(policy) = p.init_data.policy() {
            let _ = veil_policy::rego::extract_policy_data(policy);
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = decode_annotation(s);
    }
});
