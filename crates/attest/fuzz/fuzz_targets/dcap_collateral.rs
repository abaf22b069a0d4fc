//! Arbitrary bytes into the DCAP collateral parsers (JSON document and raw
//! PCS files). Must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_attest::dcap::Collateral;

fuzz_target!(|data: &[u8]| {
    let _ = Collateral::from_json(data);
    let _ = Collateral::from_pcs_files([("tcb_info.json", data)]);
    let _ = Collateral::from_pcs_files([("root_ca_crl.der", data), ("qe_identity.json", data)]);
});
