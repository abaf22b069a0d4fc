//! Bounds on what an image may unpack to, and the reader that enforces the
//! byte bounds while a layer is decompressed.

use std::cell::Cell;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

use super::UnpackError;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;
const TIB: u64 = 1 << 40;

/// Bounds on what an image may unpack to. A policy carries it as
/// `unpack_limits`; missing fields take the defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UnpackLimits {
    /// Most uncompressed tar bytes over all layers. Default 8 GiB: more
    /// than distribution, language-runtime and CUDA runtime images need,
    /// and what a host disk or a guest's memory-backed root can be expected
    /// to hold; larger images must say so.
    pub max_bytes: u64,
    /// Most tar entries over all layers. Default 1,000,000.
    pub max_entries: u64,
    /// Per layer, the uncompressed stream may not exceed `max_ratio` times
    /// the compressed bytes read so far (once past `ratio_floor_bytes`).
    /// Default 100: gzip/zstd layers of real images stay under 10, while a
    /// decompression bomb is refused after at most `ratio_floor_bytes`.
    pub max_ratio: u64,
    /// Uncompressed bytes each layer may reach whatever its ratio. Default
    /// 64 MiB (small layers of zeros or text compress very well).
    pub ratio_floor_bytes: u64,
    /// Largest single file, refused from its tar header before anything is
    /// written. Default 4 GiB.
    pub max_file_bytes: u64,
    /// Skip (instead of refusing) device nodes and FIFOs. Default false.
    pub allow_devices: bool,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_bytes: 8 * GIB,
            max_entries: 1_000_000,
            max_ratio: 100,
            ratio_floor_bytes: 64 * MIB,
            max_file_bytes: 4 * GIB,
            allow_devices: false,
        }
    }
}

/// A size that [`UnpackLimits::parse_size`] does not accept.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid size {0:?}: expected a number of bytes with an optional binary suffix K, M, G or T (e.g. 512M, 8G, 1048576)"
)]
pub struct ParseSizeError(pub String);

impl UnpackLimits {
    /// Parse a byte count for the command line: `1048576`, `512K`, `512M`,
    /// `8G`, `1T` (binary multiples; `KiB`… and lower case accepted).
    pub fn parse_size(s: &str) -> Result<u64, ParseSizeError> {
        let err = || ParseSizeError(s.chars().take(64).collect());
        let t = s.trim();
        let digits = t.bytes().take_while(u8::is_ascii_digit).count();
        let (num, suffix) = t.split_at(digits);
        if num.is_empty() {
            return Err(err());
        }
        let n: u64 = num.parse().map_err(|_| err())?;
        let unit = match suffix.to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => KIB,
            "m" | "mib" => MIB,
            "g" | "gib" => GIB,
            "t" | "tib" => TIB,
            _ => return Err(err()),
        };
        n.checked_mul(unit).ok_or_else(err)
    }
}

/// A limit reached inside a reader, carried through `io::Error` to
/// [`UnpackError::Limit`].
#[derive(Debug)]
pub(super) struct LimitHit {
    pub what: &'static str,
    pub field: &'static str,
    pub limit: u64,
    pub actual: u64,
    pub detail: String,
}

impl LimitHit {
    pub fn into_error(self, layer: usize) -> UnpackError {
        UnpackError::Limit {
            layer,
            what: self.what,
            field: self.field,
            limit: self.limit,
            actual: self.actual,
            detail: self.detail,
        }
    }
}

impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} exceeds {} = {}",
            self.what, self.actual, self.field, self.limit
        )
    }
}
impl std::error::Error for LimitHit {}

/// Bytes in and out of one layer's decompressor.
pub(super) struct Meter<'a> {
    limits: &'a UnpackLimits,
    /// Uncompressed bytes of the layers before this one.
    before: u64,
    compressed: Cell<u64>,
    uncompressed: Cell<u64>,
}

impl<'a> Meter<'a> {
    pub fn new(limits: &'a UnpackLimits, before: u64) -> Self {
        Meter {
            limits,
            before,
            compressed: Cell::new(0),
            uncompressed: Cell::new(0),
        }
    }

    /// Uncompressed bytes of this layer so far.
    pub fn uncompressed(&self) -> u64 {
        self.uncompressed.get()
    }

    /// Count what `inner` (the compressed blob) yields.
    pub fn compressed<R: Read>(&'a self, inner: R) -> Metered<'a, R> {
        Metered {
            inner,
            meter: self,
            out: false,
        }
    }

    /// Count what `inner` (the decompressor) yields, and refuse as soon as a
    /// byte limit is exceeded.
    pub fn uncompressed_reader<R: Read>(&'a self, inner: R) -> Metered<'a, R> {
        Metered {
            inner,
            meter: self,
            out: true,
        }
    }

    fn check(&self) -> Result<(), LimitHit> {
        let l = self.limits;
        let out = self.uncompressed.get();
        let total = self.before.saturating_add(out);
        if total > l.max_bytes {
            return Err(LimitHit {
                what: "uncompressed bytes over all layers",
                field: "max_bytes",
                limit: l.max_bytes,
                actual: total,
                detail: String::new(),
            });
        }
        let input = self.compressed.get();
        if out > l.ratio_floor_bytes.max(l.max_ratio.saturating_mul(input)) {
            return Err(LimitHit {
                what: "uncompressed/compressed ratio",
                field: "max_ratio",
                limit: l.max_ratio,
                actual: out / input.max(1),
                detail: format!(
                    " ({out} bytes from {input} compressed bytes; past ratio_floor_bytes = {})",
                    l.ratio_floor_bytes
                ),
            });
        }
        Ok(())
    }
}

/// A reader counted by a [`Meter`].
pub(super) struct Metered<'a, R> {
    inner: R,
    meter: &'a Meter<'a>,
    out: bool,
}

impl<R: Read> Read for Metered<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let c = if self.out {
            &self.meter.uncompressed
        } else {
            &self.meter.compressed
        };
        c.set(c.get().saturating_add(n as u64));
        if self.out {
            self.meter
                .check()
                .map_err(|hit| io::Error::new(io::ErrorKind::InvalidData, hit))?;
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_suffixes_and_garbage_is_refused() {
        for (s, n) in [
            ("1048576", 1 << 20),
            ("512K", 512 << 10),
            ("512M", 512 << 20),
            ("8G", 8 << 30),
            ("8g", 8 << 30),
            ("8GiB", 8 << 30),
            ("2T", 2 << 40),
            ("0", 0),
        ] {
            assert_eq!(UnpackLimits::parse_size(s), Ok(n), "{s}");
        }
        for bad in [
            "",
            "G",
            "8 G",
            "8X",
            "-1",
            "1.5G",
            "8GB",
            "99999999999999T",
            "0x10",
        ] {
            let err = UnpackLimits::parse_size(bad).unwrap_err();
            assert!(err.to_string().contains("512M"), "{err}");
        }
    }

    #[test]
    fn policy_json_takes_defaults_and_refuses_unknown_fields() {
        let l: UnpackLimits = serde_json::from_str(r#"{"max_ratio": 500}"#).unwrap();
        assert_eq!(
            l,
            UnpackLimits {
                max_ratio: 500,
                ..UnpackLimits::default()
            }
        );
        let round: UnpackLimits =
            serde_json::from_str(&serde_json::to_string(&l).unwrap()).unwrap();
        assert_eq!(round, l);
        assert!(serde_json::from_str::<UnpackLimits>(r#"{"max_bytez": 1}"#).is_err());
    }
}
