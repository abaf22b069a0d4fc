//! The LUKS2 binary header, read-only: enough to tell which volume a disk
//! is (UUID, label) and how it is protected (cipher, integrity, keyslots)
//! before any key is used, both in the guest (is this the volume the policy
//! names?) and on the owner's side (`veil volume inspect`).
//!
//! Layout (cryptsetup's "LUKS2 On-Disk Format Specification"): a 4096-byte
//! binary header (big-endian fields below) followed by the JSON metadata
//! area, `hdr_size` bytes in all, checksummed with `checksum_alg` (SHA-256)
//! over the whole `hdr_size` with the checksum field zeroed. A second copy
//! follows at `hdr_size`. The bytes come from the untrusted host: every
//! length is bounded and nothing here panics (property-tested). The
//! checksum detects corruption, not forgery; what makes a forged header
//! useless is that only the KBS key opens a keyslot, and dm-integrity
//! authenticates every sector.

use std::ops::Range;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// `LUKS\xba\xbe`: the primary header's magic.
pub const MAGIC: &[u8; 6] = b"LUKS\xba\xbe";
/// The binary header's size.
pub const BINARY_HEADER_BYTES: usize = 4096;
/// Largest `hdr_size` the format allows (4 MiB).
pub const MAX_HEADER_BYTES: u64 = 4 << 20;

const MAGIC_RANGE: Range<usize> = 0..6;
const VERSION_RANGE: Range<usize> = 6..8;
const HDR_SIZE_RANGE: Range<usize> = 8..16;
const SEQID_RANGE: Range<usize> = 16..24;
const LABEL_RANGE: Range<usize> = 24..72;
const CSUM_ALG_RANGE: Range<usize> = 72..104;
const UUID_RANGE: Range<usize> = 168..208;
const SUBSYSTEM_RANGE: Range<usize> = 208..256;
const HDR_OFFSET_RANGE: Range<usize> = 256..264;
const CSUM_RANGE: Range<usize> = 448..512;

/// Why bytes are not a LUKS2 header.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Luks2Error {
    #[error("too short: {got} bytes, a LUKS2 header needs {need}")]
    Short { need: usize, got: usize },
    #[error("no LUKS magic (expected 4c554b53babe, got {0})")]
    Magic(String),
    #[error("LUKS version {0}, expected 2")]
    Version(u16),
    #[error("header size {0} is not a power of two from 16 KiB to 4 MiB")]
    HeaderSize(u64),
    #[error("checksum algorithm {0:?}: only sha256 is checked")]
    ChecksumAlg(String),
    #[error(
        "header checksum mismatch (expected {expected}, computed {actual}): corrupted or altered"
    )]
    Checksum { expected: String, actual: String },
    #[error("{field}: not NUL-terminated printable text")]
    Text { field: &'static str },
    #[error("JSON metadata: {0}")]
    Json(String),
}

/// What a LUKS2 header says, without any key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Luks2Header {
    pub hdr_size: u64,
    pub seqid: u64,
    pub label: String,
    pub subsystem: String,
    pub uuid: String,
    /// Data segment cipher (`aes-xts-plain64`).
    pub cipher: String,
    /// Integrity (`hmac(sha256)`), empty when the volume has none.
    pub integrity: String,
    pub sector_size: u64,
    /// Data offset in bytes.
    pub data_offset: u64,
    /// Active keyslots.
    pub keyslots: usize,
    /// KDF of the first keyslot (`pbkdf2`, `argon2id`).
    pub kdf: String,
}

fn be_u64(b: &[u8], r: Range<usize>) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[r]);
    u64::from_be_bytes(a)
}

fn text(b: &[u8], r: Range<usize>, field: &'static str) -> Result<String, Luks2Error> {
    let raw = &b[r];
    let end = raw
        .iter()
        .position(|&c| c == 0)
        .ok_or(Luks2Error::Text { field })?;
    let s = std::str::from_utf8(&raw[..end]).map_err(|_| Luks2Error::Text { field })?;
    if s.chars().any(|c| c.is_control()) {
        return Err(Luks2Error::Text { field });
    }
    Ok(s.to_string())
}

/// Whether `b` starts with the LUKS magic (any version).
pub fn has_magic(b: &[u8]) -> bool {
    b.get(MAGIC_RANGE) == Some(&MAGIC[..])
}

/// `hdr_size` from the first 4096 bytes, checked, so the caller knows how
/// much to read for [`Luks2Header::parse`].
pub fn header_size(b: &[u8]) -> Result<u64, Luks2Error> {
    if b.len() < BINARY_HEADER_BYTES {
        return Err(Luks2Error::Short {
            need: BINARY_HEADER_BYTES,
            got: b.len(),
        });
    }
    if !has_magic(b) {
        return Err(Luks2Error::Magic(hex::encode(&b[MAGIC_RANGE])));
    }
    let version = u16::from_be_bytes([b[VERSION_RANGE.start], b[VERSION_RANGE.start + 1]]);
    if version != 2 {
        return Err(Luks2Error::Version(version));
    }
    let size = be_u64(b, HDR_SIZE_RANGE);
    if !size.is_power_of_two() || !(16 << 10..=MAX_HEADER_BYTES).contains(&size) {
        return Err(Luks2Error::HeaderSize(size));
    }
    Ok(size)
}

impl Luks2Header {
    /// Parse and checksum the primary header: `b` holds at least `hdr_size` bytes.
    pub fn parse(b: &[u8]) -> Result<Self, Luks2Error> {
        let size = header_size(b)?;
        let size_us = usize::try_from(size).map_err(|_| Luks2Error::HeaderSize(size))?;
        if b.len() < size_us {
            return Err(Luks2Error::Short {
                need: size_us,
                got: b.len(),
            });
        }
        let alg = text(b, CSUM_ALG_RANGE, "checksum_alg")?;
        if alg != "sha256" {
            return Err(Luks2Error::ChecksumAlg(alg));
        }
        let mut h = Sha256::new();
        h.update(&b[..CSUM_RANGE.start]);
        h.update([0u8; 64]);
        h.update(&b[CSUM_RANGE.end..size_us]);
        let actual = h.finalize();
        let expected = &b[CSUM_RANGE.start..CSUM_RANGE.start + 32];
        if expected != &actual[..] {
            return Err(Luks2Error::Checksum {
                expected: hex::encode(expected),
                actual: hex::encode(actual),
            });
        }
        if be_u64(b, HDR_OFFSET_RANGE) != 0 {
            return Err(Luks2Error::Json(
                "the primary header's hdr_offset is not 0".into(),
            ));
        }
        let json_area = &b[BINARY_HEADER_BYTES..size_us];
        let end = json_area
            .iter()
            .position(|&c| c == 0)
            .unwrap_or(json_area.len());
        let meta: Value = serde_json::from_slice(&json_area[..end])
            .map_err(|e| Luks2Error::Json(e.to_string()))?;
        let seg = meta
            .get("segments")
            .and_then(|s| s.get("0"))
            .ok_or_else(|| Luks2Error::Json("no segment 0".into()))?;
        let str_of =
            |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let num_of = |v: &Value, k: &str| -> u64 {
            match v.get(k) {
                Some(Value::String(s)) => s.parse().unwrap_or(0),
                Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
                _ => 0,
            }
        };
        let keyslots = meta.get("keyslots").and_then(Value::as_object);
        let kdf = keyslots
            .and_then(|k| k.values().next())
            .and_then(|k| k.get("kdf"))
            .map(|k| str_of(k, "type"))
            .unwrap_or_default();
        Ok(Luks2Header {
            hdr_size: size,
            seqid: be_u64(b, SEQID_RANGE),
            label: text(b, LABEL_RANGE, "label")?,
            subsystem: text(b, SUBSYSTEM_RANGE, "subsystem")?,
            uuid: text(b, UUID_RANGE, "uuid")?,
            cipher: str_of(seg, "encryption"),
            integrity: seg
                .get("integrity")
                .map(|i| str_of(i, "type"))
                .unwrap_or_default(),
            sector_size: num_of(seg, "sector_size"),
            data_offset: num_of(seg, "offset"),
            keyslots: keyslots.map(|k| k.len()).unwrap_or(0),
            kdf,
        })
    }
}

/// Test helpers: headers laid out as cryptsetup writes them.
#[doc(hidden)]
pub mod tests_support {
    use super::*;

    /// A header as cryptsetup lays it out, with a valid checksum.
    pub fn header(uuid: &str, json: &str) -> Vec<u8> {
        let mut b = vec![0u8; 16 << 10];
        b[MAGIC_RANGE].copy_from_slice(MAGIC);
        b[VERSION_RANGE].copy_from_slice(&2u16.to_be_bytes());
        b[HDR_SIZE_RANGE].copy_from_slice(&(16u64 << 10).to_be_bytes());
        b[SEQID_RANGE].copy_from_slice(&3u64.to_be_bytes());
        b[LABEL_RANGE][..8].copy_from_slice(b"veil:db\0");
        b[CSUM_ALG_RANGE][..6].copy_from_slice(b"sha256");
        b[UUID_RANGE][..uuid.len()].copy_from_slice(uuid.as_bytes());
        b[BINARY_HEADER_BYTES..BINARY_HEADER_BYTES + json.len()].copy_from_slice(json.as_bytes());
        let sum = Sha256::digest(&b);
        b[CSUM_RANGE][..32].copy_from_slice(&sum);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::header;
    use super::*;
    use proptest::prelude::*;

    const JSON: &str = r#"{"keyslots":{"0":{"type":"luks2","kdf":{"type":"pbkdf2"}}},"segments":{"0":{"type":"crypt","offset":"16777216","encryption":"aes-xts-plain64","sector_size":4096,"integrity":{"type":"hmac(sha256)"}}}}"#;

    #[test]
    fn a_header_reads_as_cryptsetup_wrote_it() {
        let b = header("0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c11", JSON);
        let h = Luks2Header::parse(&b).unwrap();
        assert_eq!(h.uuid, "0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c11");
        assert_eq!(h.label, "veil:db");
        assert_eq!(h.cipher, "aes-xts-plain64");
        assert_eq!(h.integrity, "hmac(sha256)");
        assert_eq!(h.sector_size, 4096);
        assert_eq!(h.data_offset, 16 << 20);
        assert_eq!((h.keyslots, h.kdf.as_str()), (1, "pbkdf2"));
    }

    #[test]
    fn altered_or_foreign_bytes_are_refused_by_name() {
        let mut b = header("0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c11", JSON);
        b[UUID_RANGE.start] ^= 1;
        assert!(matches!(
            Luks2Header::parse(&b),
            Err(Luks2Error::Checksum { .. })
        ));
        assert!(matches!(
            Luks2Header::parse(&[0u8; 4096]),
            Err(Luks2Error::Magic(_))
        ));
        let mut v1 = header("x", JSON);
        v1[VERSION_RANGE].copy_from_slice(&1u16.to_be_bytes());
        assert_eq!(Luks2Header::parse(&v1), Err(Luks2Error::Version(1)));
        assert!(matches!(
            Luks2Header::parse(&v1[..100]),
            Err(Luks2Error::Short { .. })
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..20000), magic in any::<bool>()) {
            if magic && bytes.len() >= 16 {
                bytes[..6].copy_from_slice(MAGIC);
                bytes[6..8].copy_from_slice(&2u16.to_be_bytes());
                bytes[8..16].copy_from_slice(&(16u64 << 10).to_be_bytes());
            }
            let _ = Luks2Header::parse(&bytes);
        }
    }
}
