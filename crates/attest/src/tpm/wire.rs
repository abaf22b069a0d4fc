//! Reading TPM 2.0 wire structures: big-endian integers and sized buffers
//! (`TPM2B_*`), each read bounds-checked so that truncated or oversized input
//! becomes a precise [`Error::Malformed`] naming the structure and offset.

use crate::error::{Error, Result};

/// A cursor over untrusted bytes.
pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Reader<'a> {
    /// Read `bytes`, naming them `what` in errors (`TPMS_ATTEST`, …).
    pub(crate) fn new(bytes: &'a [u8], what: &'static str) -> Self {
        Reader {
            bytes,
            pos: 0,
            what,
        }
    }

    /// Malformed-input error at the current offset.
    pub(crate) fn err(&self, reason: impl Into<String>) -> Error {
        Error::malformed(
            self.what,
            format!("at offset {}: {}", self.pos, reason.into()),
        )
    }

    /// The next `n` bytes.
    pub(crate) fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                self.err(format!(
                    "{field}: needs {n} bytes, {} left",
                    self.bytes.len() - self.pos
                ))
            })?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    pub(crate) fn u16(&mut self, field: &str) -> Result<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn u32(&mut self, field: &str) -> Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub(crate) fn u64(&mut self, field: &str) -> Result<u64> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// A `TPM2B_*`: a u16 size, then that many bytes, at most `max`.
    pub(crate) fn tpm2b(&mut self, field: &str, max: usize) -> Result<&'a [u8]> {
        let size = usize::from(self.u16(field)?);
        if size > max {
            return Err(self.err(format!("{field}: size {size} exceeds the maximum {max}")));
        }
        self.take(size, field)
    }

    /// Refuse trailing bytes after the structure.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.pos != self.bytes.len() {
            return Err(self.err(format!(
                "{} trailing bytes after the structure",
                self.bytes.len() - self.pos
            )));
        }
        Ok(())
    }
}

/// Big-endian writer, the inverse of [`Reader`] (tests and evidence builders).
#[derive(Default)]
pub(crate) struct Writer(pub(crate) Vec<u8>);

impl Writer {
    pub(crate) fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    pub(crate) fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u32(&mut self, v: u32) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn u64(&mut self, v: u64) -> &mut Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }
    /// A `TPM2B_*`. Callers keep `b` under 64 KiB (TPM buffers are far smaller).
    pub(crate) fn tpm2b(&mut self, b: &[u8]) -> &mut Self {
        let len = u16::try_from(b.len()).unwrap_or(u16::MAX);
        self.u16(len);
        self.0.extend_from_slice(&b[..usize::from(len)]);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncated_reads_name_the_field() {
        let mut r = Reader::new(&[0, 5, 1, 2], "TEST");
        let e = r.tpm2b("buffer", 64).unwrap_err();
        assert!(
            e.to_string().contains("buffer: needs 5 bytes, 2 left"),
            "{e}"
        );
        let mut r = Reader::new(&[0, 70], "TEST");
        let e = r.tpm2b("buffer", 64).unwrap_err();
        assert!(e.to_string().contains("exceeds the maximum 64"), "{e}");
    }
}
