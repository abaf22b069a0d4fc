//! Arbitrary JWE documents: parsing and unwrapping must never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_image::crypt::KeyUnwrapper;
use veil_image::crypt::jwe::JweUnwrapper;

fuzz_target!(|data: &[u8]| {
    let _ = JweUnwrapper::new(Vec::new()).unwrap(data);
});
