//! Serde helpers: byte strings as lowercase hex in JSON.

use serde::{Deserialize, Deserializer, Serializer};

/// Serialize `Vec<u8>` as lowercase hex.
pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(bytes))
}

/// Deserialize lowercase or uppercase hex into `Vec<u8>`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    let s = String::deserialize(d)?;
    hex::decode(s.trim()).map_err(serde::de::Error::custom)
}

/// Decode a hex argument that a user typed (accepts an optional `0x`).
pub fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let t = s.trim();
    let t = t.strip_prefix("0x").unwrap_or(t);
    hex::decode(t).map_err(|e| format!("not hex ({e}): {s:?}"))
}
