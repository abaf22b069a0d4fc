#![no_main]
//! TPM 2.0 structures: TPMS_ATTEST (with TPMS_QUOTE_INFO), TPMT_SIGNATURE,
//! TPMT_PUBLIC / SubjectPublicKeyInfo, and the `tpm` evidence document.

use libfuzzer_sys::fuzz_target;
use veil_attest::tpm::{self, AkPublic, Attest, Signature};

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Attest::parse(data) {
        let _ = a.to_bytes();
        if let Some(q) = &a.quote {
            for s in &q.pcr_select {
                let _ = s.indices();
            }
        }
    }
    if let Ok(s) = Signature::parse(data) {
        let _ = s.to_bytes();
    }
    if let Ok(k) = AkPublic::from_bytes(data) {
        let _ = k.to_json();
    }
    let _ = tpm::verify(data, &[]);
});
