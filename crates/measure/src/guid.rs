//! EFI GUIDs as OVMF stores them: the first three fields little-endian, the
//! last two as bytes (the "mixed-endian" layout of `EFI_GUID`).

use std::fmt;

/// An EFI GUID in its on-disk byte order.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Guid(pub [u8; 16]);

const fn hex_val(c: u8) -> u8 {
    match c {
        b'0'..=b'9' => c - b'0',
        b'a'..=b'f' => c - b'a' + 10,
        b'A'..=b'F' => c - b'A' + 10,
        _ => panic!("GUID constant: not a hex digit"),
    }
}

const fn hex_byte(s: &[u8], i: usize) -> u8 {
    (hex_val(s[i]) << 4) | hex_val(s[i + 1])
}

impl Guid {
    /// Parse a canonical `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` GUID constant
    /// at compile time (a malformed constant does not compile).
    pub const fn from_canonical(s: &str) -> Guid {
        let s = s.as_bytes();
        assert!(s.len() == 36, "GUID constant: wrong length");
        assert!(s[8] == b'-' && s[13] == b'-' && s[18] == b'-' && s[23] == b'-');
        // Byte positions of the canonical text, in on-disk order.
        const POS: [usize; 16] = [6, 4, 2, 0, 11, 9, 16, 14, 19, 21, 24, 26, 28, 30, 32, 34];
        let mut out = [0u8; 16];
        let mut i = 0;
        while i < 16 {
            out[i] = hex_byte(s, POS[i]);
            i += 1;
        }
        Guid(out)
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = &self.0;
        write!(
            f,
            "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-",
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9]
        )?;
        for x in &b[10..] {
            write!(f, "{x:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_round_trip_and_byte_order() {
        let g = Guid::from_canonical("96b582de-1fb2-45f7-baea-a366c55a082d");
        assert_eq!(
            g.0,
            [
                0xde, 0x82, 0xb5, 0x96, 0xb2, 0x1f, 0xf7, 0x45, 0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a,
                0x08, 0x2d
            ]
        );
        assert_eq!(g.to_string(), "96b582de-1fb2-45f7-baea-a366c55a082d");
    }
}
