//! What the SGX and TDX quote tests share: the fixtures under
//! `shared/fixtures/{sgx,tdx}` and the verification time.

#![allow(dead_code)]

use veil_attest::dcap::{Collateral, parse_rfc3339};

/// Inside the validity of both fixtures' collateral.
pub const INSIDE: &str = "2025-07-01T00:00:00Z";

/// The bytes of `shared/fixtures/{tee}/{name}`.
pub fn fixture(tee: &str, name: &str) -> Vec<u8> {
    let p = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/");
    std::fs::read(format!("{p}{tee}/{name}")).unwrap_or_else(|e| panic!("{p}{tee}/{name}: {e}"))
}

/// The JSON collateral of `tee`'s fixture quote.
pub fn collateral(tee: &str) -> Collateral {
    Collateral::from_json(&fixture(tee, "collateral.json")).unwrap()
}

/// RFC 3339 time as Unix seconds.
pub fn at(s: &str) -> u64 {
    parse_rfc3339(s).unwrap()
}
