//! Content digests (`sha256:<hex>`, `sha512:<hex>`) and hashing helpers.
//!
//! A [`Digest`] is always well-formed: a supported algorithm and lowercase hex
//! of the right length. Anything else is refused at parse time, so a digest
//! can safely be used as a file name under `blobs/<alg>/`.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use sha2::{Digest as _, Sha256, Sha512};

/// A digest algorithm allowed in OCI descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DigestAlgorithm {
    /// SHA-256 (the default everywhere).
    Sha256,
    /// SHA-512.
    Sha512,
}

impl DigestAlgorithm {
    /// The algorithm's name as written in a digest string.
    pub fn name(self) -> &'static str {
        match self {
            DigestAlgorithm::Sha256 => "sha256",
            DigestAlgorithm::Sha512 => "sha512",
        }
    }

    /// Length of the digest in bytes.
    pub fn output_len(self) -> usize {
        match self {
            DigestAlgorithm::Sha256 => 32,
            DigestAlgorithm::Sha512 => 64,
        }
    }
}

/// Why a string is not a valid digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// No `algorithm:` prefix.
    #[error("digest {0:?} has no `algorithm:` prefix")]
    MissingAlgorithm(String),
    /// Algorithm other than sha256/sha512.
    #[error("digest algorithm {0:?} is not supported (expected sha256 or sha512)")]
    UnsupportedAlgorithm(String),
    /// Encoded part is not lowercase hex of the expected length.
    #[error("digest {digest:?} is malformed: expected {expected} lowercase hex characters")]
    BadEncoding {
        /// The offending digest (truncated).
        digest: String,
        /// Expected number of hex characters.
        expected: usize,
    },
}

/// A verified-format content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    algorithm: DigestAlgorithm,
    hex: String,
}

impl Digest {
    /// Build a digest from an algorithm and raw hash bytes.
    pub fn from_bytes(algorithm: DigestAlgorithm, bytes: &[u8]) -> Option<Self> {
        (bytes.len() == algorithm.output_len()).then(|| Digest {
            algorithm,
            hex: hex::encode(bytes),
        })
    }

    /// SHA-256 digest of `data`.
    pub fn sha256(data: &[u8]) -> Self {
        Digest {
            algorithm: DigestAlgorithm::Sha256,
            hex: hex::encode(Sha256::digest(data)),
        }
    }

    /// Digest of `data` with `algorithm`.
    pub fn compute(algorithm: DigestAlgorithm, data: &[u8]) -> Self {
        let mut h = Hasher::new(algorithm);
        h.update(data);
        h.finish()
    }

    /// The algorithm.
    pub fn algorithm(&self) -> DigestAlgorithm {
        self.algorithm
    }

    /// The lowercase hex encoding (no prefix).
    pub fn hex(&self) -> &str {
        &self.hex
    }

    /// Whether `data` hashes to this digest.
    pub fn matches(&self, data: &[u8]) -> bool {
        Digest::compute(self.algorithm, data) == *self
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({self})")
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let shown = || s.chars().take(80).collect::<String>();
        let (alg, enc) = s
            .split_once(':')
            .ok_or_else(|| DigestError::MissingAlgorithm(shown()))?;
        let algorithm = match alg {
            "sha256" => DigestAlgorithm::Sha256,
            "sha512" => DigestAlgorithm::Sha512,
            other => {
                return Err(DigestError::UnsupportedAlgorithm(
                    other.chars().take(40).collect(),
                ));
            }
        };
        let expected = algorithm.output_len() * 2;
        if enc.len() != expected || !enc.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(DigestError::BadEncoding {
                digest: shown(),
                expected,
            });
        }
        Ok(Digest {
            algorithm,
            hex: enc.to_owned(),
        })
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Incremental hasher producing a [`Digest`].
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 state.
    Sha256(Sha256),
    /// SHA-512 state.
    Sha512(Sha512),
}

impl Hasher {
    /// A fresh hasher for `algorithm`.
    pub fn new(algorithm: DigestAlgorithm) -> Self {
        match algorithm {
            DigestAlgorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            DigestAlgorithm::Sha512 => Hasher::Sha512(Sha512::new()),
        }
    }

    /// Feed bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Sha512(h) => h.update(data),
        }
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Digest {
        match self {
            Hasher::Sha256(h) => Digest {
                algorithm: DigestAlgorithm::Sha256,
                hex: hex::encode(h.finalize()),
            },
            Hasher::Sha512(h) => Digest {
                algorithm: DigestAlgorithm::Sha512,
                hex: hex::encode(h.finalize()),
            },
        }
    }
}

/// A reader that hashes and counts what passes through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
    count: u64,
}

impl<R: Read> HashingReader<R> {
    /// Wrap `inner`.
    pub fn new(inner: R, algorithm: DigestAlgorithm) -> Self {
        HashingReader {
            inner,
            hasher: Hasher::new(algorithm),
            count: 0,
        }
    }

    /// Bytes read so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Digest and byte count of everything read, and the inner reader.
    pub fn finish(self) -> (Digest, u64, R) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    count: u64,
}

impl<W: Write> HashingWriter<W> {
    /// Wrap `inner`.
    pub fn new(inner: W, algorithm: DigestAlgorithm) -> Self {
        HashingWriter {
            inner,
            hasher: Hasher::new(algorithm),
            count: 0,
        }
    }

    /// Digest and byte count of everything written, and the inner writer.
    pub fn finish(self) -> (Digest, u64, W) {
        (self.hasher.finish(), self.count, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_displays() {
        let d = Digest::sha256(b"");
        assert_eq!(
            d.to_string(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert!(d.matches(b""));
        assert!(!d.matches(b"x"));
    }

    #[test]
    fn refuses_malformed() {
        for bad in [
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "md5:d41d8cd98f00b204e9800998ecf8427e",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:../../etc/passwd",
            "sha256:",
            "sha512:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ] {
            assert!(bad.parse::<Digest>().is_err(), "{bad} accepted");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_strings_never_panic(s in ".{0,200}") {
            if let Ok(d) = s.parse::<Digest>() {
                prop_assert_eq!(d.to_string(), s);
            }
        }
    }
}
