//! Fixed-offset fields of the binary structures this crate parses (SNP and
//! sim reports, DCAP quotes, HCL reports), read little-endian. Parsers check
//! a structure's length before reading its fields, so every range given
//! here is inside the slice; one that is not is a bug in this crate.

use std::ops::Range;

/// The bytes at `r`.
pub(crate) fn arr<const N: usize>(b: &[u8], r: Range<usize>) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[r]);
    out
}

/// The little-endian `u16` at `r`.
pub(crate) fn u16_at(b: &[u8], r: Range<usize>) -> u16 {
    u16::from_le_bytes(arr(b, r))
}

/// The little-endian `u32` at `r`.
pub(crate) fn u32_at(b: &[u8], r: Range<usize>) -> u32 {
    u32::from_le_bytes(arr(b, r))
}

/// The little-endian `u64` at `r`.
pub(crate) fn u64_at(b: &[u8], r: Range<usize>) -> u64 {
    u64::from_le_bytes(arr(b, r))
}
