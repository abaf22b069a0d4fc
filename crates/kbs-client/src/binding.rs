//! The runtime-data binding: what the guest puts in REPORT_DATA so that the
//! evidence is tied to the server's nonce and to the guest's ephemeral key.
//!
//! `digest = SHA-384(JCS({"additional-evidence": s, "nonce": n, "tee-pubkey": jwk}))`
//! (RFC 8785 canonical JSON), zero-padded to the 64-byte report-data field.
//! The JWK is the `kbs-types` [`TeePubKey`], so only its known members
//! (`kty`, `crv`, `alg`, `x`, `y` / `n`, `e`) are hashed, exactly as the
//! server sees it after deserialization.

use sha2::{Digest, Sha384};

use crate::protocol::TeePubKey;

/// Size of the binding digest (SHA-384).
pub const DIGEST_LEN: usize = 48;
/// Size of the REPORT_DATA field it is zero-padded into.
pub const REPORT_DATA_LEN: usize = 64;

/// The runtime-data object that is hashed. `additional_evidence` is `None`
/// only for device (additional) evidence, which hashes `{nonce, tee-pubkey}`.
pub fn runtime_data_object(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: Option<&str>,
) -> serde_json::Value {
    let mut m = serde_json::Map::new();
    m.insert("nonce".into(), serde_json::Value::String(nonce.to_string()));
    m.insert(
        "tee-pubkey".into(),
        serde_json::to_value(tee_pubkey).unwrap_or(serde_json::Value::Null),
    );
    if let Some(a) = additional_evidence {
        m.insert(
            "additional-evidence".into(),
            serde_json::Value::String(a.to_string()),
        );
    }
    serde_json::Value::Object(m)
}

/// RFC 8785 canonical JSON bytes of a value.
pub fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    // Canonicalization of a `serde_json::Value` cannot fail: it holds no
    // non-finite numbers and every key is a string.
    serde_json_canonicalizer::to_vec(value).unwrap_or_default()
}

/// SHA-384 of the canonical JSON of `value`.
pub fn digest_of(value: &serde_json::Value) -> [u8; DIGEST_LEN] {
    Sha384::digest(canonical_json(value)).into()
}

/// The binding digest for the primary TEE.
pub fn binding_digest(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> [u8; DIGEST_LEN] {
    digest_of(&runtime_data_object(
        nonce,
        tee_pubkey,
        Some(additional_evidence),
    ))
}

/// The 64-byte REPORT_DATA: the binding digest followed by 16 zero bytes.
pub fn report_data(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> [u8; REPORT_DATA_LEN] {
    let mut out = [0u8; REPORT_DATA_LEN];
    out[..DIGEST_LEN].copy_from_slice(&binding_digest(nonce, tee_pubkey, additional_evidence));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vector A of the wire reference (§6.1).
    #[test]
    fn reference_vector_a() {
        let key = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "XX".into(),
            y: "YY".into(),
        };
        let obj = runtime_data_object("bm9uY2U=", &key, Some(""));
        assert_eq!(
            String::from_utf8(canonical_json(&obj)).unwrap(),
            r#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"XX","y":"YY"}}"#
        );
        assert_eq!(
            hex::encode(binding_digest("bm9uY2U=", &key, "")),
            "9b1786a8d774775bc721e0161c877eb491165165f41f9852805a9e26524fc7f712767589188fc11548da6466ee037d7e"
        );
        assert_eq!(
            hex::encode(report_data("bm9uY2U=", &key, "")),
            "9b1786a8d774775bc721e0161c877eb491165165f41f9852805a9e26524fc7f712767589188fc11548da6466ee037d7e00000000000000000000000000000000"
        );
    }

    /// Vector B of the wire reference (Trustee's attestation-service unit vector).
    #[test]
    fn reference_vector_b() {
        let v: serde_json::Value =
            serde_json::from_str(r#"{"b":1,"a":"test","c":{"d":"e"}}"#).unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"a":"test","b":1,"c":{"d":"e"}}"#
        );
        assert_eq!(
            hex::encode(digest_of(&v)),
            "e71ce8e70d814ba6639c3612ebee0ff1f76f650f8dbb5e47157e0f3f525cd22c4597480a186427c813ca941da78870c3"
        );
    }

    /// Extra JWK members are dropped by deserialization, so they never reach the hash.
    #[test]
    fn unknown_jwk_members_are_not_hashed() {
        let with_kid: TeePubKey = serde_json::from_str(
            r#"{"kty":"EC","crv":"P-256","alg":"ECDH-ES+A256KW","x":"XX","y":"YY","kid":"k1","use":"enc"}"#,
        )
        .unwrap();
        assert_eq!(
            hex::encode(binding_digest("bm9uY2U=", &with_kid, "")),
            "9b1786a8d774775bc721e0161c877eb491165165f41f9852805a9e26524fc7f712767589188fc11548da6466ee037d7e"
        );
    }
}
