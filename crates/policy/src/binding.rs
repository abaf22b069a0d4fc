//! Init-data digests and the launch-time fields they are bound to.
//!
//! The digest of the init-data TOML (over its exact bytes, with the hash the
//! TOML names) is placed in a hardware field at launch: SNP `HOST_DATA`
//! (32 bytes), TDX `MRCONFIGID` (48 bytes), or the sim platform's 64-byte
//! field. A digest longer than the field is truncated; a shorter one is
//! zero-padded (the CoCo rule). The KBS and the agent both call
//! [`InitDataDigest::verify`] to compare, in constant time.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq;

/// Hash algorithm named by init-data's `algorithm` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum HashAlgorithm {
    Sha256,
    #[default]
    Sha384,
    Sha512,
}

impl HashAlgorithm {
    /// The name used in init-data (`sha256`, `sha384`, `sha512`).
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sha384 => "sha384",
            HashAlgorithm::Sha512 => "sha512",
        }
    }

    /// Parse an init-data algorithm name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "sha256" => Some(HashAlgorithm::Sha256),
            "sha384" => Some(HashAlgorithm::Sha384),
            "sha512" => Some(HashAlgorithm::Sha512),
            _ => None,
        }
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            HashAlgorithm::Sha256 => 32,
            HashAlgorithm::Sha384 => 48,
            HashAlgorithm::Sha512 => 64,
        }
    }

    /// Hash `data`.
    pub fn digest(self, data: &[u8]) -> InitDataDigest {
        let bytes = match self {
            HashAlgorithm::Sha256 => Sha256::digest(data).to_vec(),
            HashAlgorithm::Sha384 => Sha384::digest(data).to_vec(),
            HashAlgorithm::Sha512 => Sha512::digest(data).to_vec(),
        };
        InitDataDigest {
            algorithm: self,
            bytes,
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The hardware field an init-data digest is bound to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BindingField {
    /// AMD SEV-SNP `HOST_DATA`, 32 bytes.
    SnpHostData,
    /// Intel TDX `MRCONFIGID`, 48 bytes.
    TdxMrConfigId,
    /// The sim platform's launch binding, 64 bytes.
    Sim,
}

impl BindingField {
    /// Size of the field in bytes.
    pub fn len(self) -> usize {
        match self {
            BindingField::SnpHostData => 32,
            BindingField::TdxMrConfigId => 48,
            BindingField::Sim => 64,
        }
    }

    /// Always false: every field has a fixed, non-zero size.
    pub fn is_empty(self) -> bool {
        false
    }

    /// Human name of the field.
    pub fn name(self) -> &'static str {
        match self {
            BindingField::SnpHostData => "SNP HOST_DATA",
            BindingField::TdxMrConfigId => "TDX MRCONFIGID",
            BindingField::Sim => "sim launch binding",
        }
    }
}

/// A binding check failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindingError {
    #[error("{field}: reported value is {actual} bytes, expected {expected}")]
    Length {
        field: &'static str,
        expected: usize,
        actual: usize,
    },
    #[error("{field} does not match the init-data digest: expected {expected}, reported {actual}")]
    Mismatch {
        field: &'static str,
        expected: String,
        actual: String,
    },
}

/// The digest of an init-data document.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct InitDataDigest {
    algorithm: HashAlgorithm,
    bytes: Vec<u8>,
}

impl fmt::Debug for InitDataDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InitDataDigest({}:{})", self.algorithm, self.hex())
    }
}

impl fmt::Display for InitDataDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm, self.hex())
    }
}

fn fit<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    let n = bytes.len().min(N);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

impl InitDataDigest {
    /// Hash `bytes` with `algorithm`.
    pub fn compute(algorithm: HashAlgorithm, bytes: &[u8]) -> Self {
        algorithm.digest(bytes)
    }

    /// Wrap an existing digest; `None` if the length does not fit the algorithm.
    pub fn from_bytes(algorithm: HashAlgorithm, bytes: &[u8]) -> Option<Self> {
        (bytes.len() == algorithm.output_len()).then(|| InitDataDigest {
            algorithm,
            bytes: bytes.to_vec(),
        })
    }

    /// The algorithm.
    pub fn algorithm(&self) -> HashAlgorithm {
        self.algorithm
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Lowercase hex of the raw digest.
    pub fn hex(&self) -> String {
        hex::encode(&self.bytes)
    }

    /// SNP `HOST_DATA`: the digest truncated / zero-padded to 32 bytes.
    pub fn host_data(&self) -> [u8; 32] {
        fit(&self.bytes)
    }

    /// TDX `MRCONFIGID`: the digest truncated / zero-padded to 48 bytes.
    pub fn mr_config_id(&self) -> [u8; 48] {
        fit(&self.bytes)
    }

    /// The sim platform's binding: the digest zero-padded to 64 bytes.
    pub fn sim_binding(&self) -> [u8; 64] {
        fit(&self.bytes)
    }

    /// The expected value of `field`.
    pub fn binding(&self, field: BindingField) -> Vec<u8> {
        match field {
            BindingField::SnpHostData => self.host_data().to_vec(),
            BindingField::TdxMrConfigId => self.mr_config_id().to_vec(),
            BindingField::Sim => self.sim_binding().to_vec(),
        }
    }

    /// Check, in constant time, that the hardware-reported `field` value binds this digest.
    pub fn verify(&self, field: BindingField, reported: &[u8]) -> Result<(), BindingError> {
        if reported.len() != field.len() {
            return Err(BindingError::Length {
                field: field.name(),
                expected: field.len(),
                actual: reported.len(),
            });
        }
        let expected = self.binding(field);
        if bool::from(expected.as_slice().ct_eq(reported)) {
            Ok(())
        } else {
            Err(BindingError::Mismatch {
                field: field.name(),
                expected: hex::encode(&expected),
                actual: hex::encode(reported),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_sizes_and_padding() {
        let d256 = HashAlgorithm::Sha256.digest(b"x");
        assert_eq!(&d256.host_data()[..], d256.as_bytes());
        assert_eq!(&d256.mr_config_id()[..32], d256.as_bytes());
        assert_eq!(&d256.mr_config_id()[32..], &[0u8; 16]);
        let d384 = HashAlgorithm::Sha384.digest(b"x");
        assert_eq!(&d384.host_data()[..], &d384.as_bytes()[..32]);
        assert_eq!(&d384.mr_config_id()[..], d384.as_bytes());
        assert_eq!(&d384.sim_binding()[48..], &[0u8; 16]);
        let d512 = HashAlgorithm::Sha512.digest(b"x");
        assert_eq!(&d512.mr_config_id()[..], &d512.as_bytes()[..48]);
        assert_eq!(&d512.sim_binding()[..], d512.as_bytes());
    }

    #[test]
    fn known_vector() {
        // sha256("abc")
        let d = HashAlgorithm::Sha256.digest(b"abc");
        assert_eq!(
            d.hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn verify_names_field_expected_and_actual() {
        let d = HashAlgorithm::Sha384.digest(b"policy");
        d.verify(BindingField::TdxMrConfigId, &d.mr_config_id())
            .unwrap();
        d.verify(BindingField::SnpHostData, &d.host_data()).unwrap();
        let mut bad = d.host_data();
        bad[0] ^= 1;
        let e = d
            .verify(BindingField::SnpHostData, &bad)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("SNP HOST_DATA") && e.contains(&hex::encode(bad)),
            "{e}"
        );
        let e = d.verify(BindingField::Sim, &[0u8; 32]).unwrap_err();
        assert_eq!(
            e,
            BindingError::Length {
                field: "sim launch binding",
                expected: 64,
                actual: 32
            }
        );
    }
}
