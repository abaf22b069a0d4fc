//! Secrets at rest: every resource value and every server secret (the token
//! signing key) is sealed with AES-256-GCM under a key-encryption key (KEK)
//! that never touches the data directory. The KEK comes from a file or the
//! `VEIL_KBS_KEK` environment variable: 32 raw bytes, 64 hex characters or
//! standard base64. The AAD binds each blob to its name, so blobs cannot be
//! swapped between resources.
//!
//! Rotation ([`rotate_kek`]) re-seals everything under a new KEK in one
//! database transaction: all or nothing.

use std::path::Path;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::store::{SealedBlob, Store};

/// Environment variable holding the KEK (hex or base64).
pub const KEK_ENV: &str = "VEIL_KBS_KEK";

/// Why a KEK could not be loaded or a blob opened.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// KEK missing or malformed.
    #[error("key-encryption key: {0}")]
    Kek(String),
    /// A blob could not be opened.
    #[error("sealed {name}: {reason}")]
    Open {
        /// Blob name.
        name: String,
        /// Why.
        reason: String,
    },
}

/// The key-encryption key.
#[derive(Clone)]
pub struct Kek {
    key: Zeroizing<[u8; 32]>,
    id: String,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kek({})", self.id)
    }
}

fn decode_kek(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    decode_key32(bytes)
}

/// Decode a 32-byte key file, deciding by exact length and alphabet so no
/// input has two readings: exactly 32 bytes are the raw key; otherwise,
/// after trimming whitespace, 64 hex characters (what `veil kbs
/// kek-generate` writes) or 43/44 base64 characters. Anything else is
/// refused with what was seen, never guessed.
pub fn decode_key32(bytes: &[u8]) -> Result<Zeroizing<[u8; 32]>, String> {
    use base64::Engine as _;
    const EXPECTED: &str = "a 32-byte key is exactly 32 raw bytes, 64 hex characters (as `veil kbs kek-generate` writes) or 44 base64 characters";
    let mut k = Zeroizing::new([0u8; 32]);
    if bytes.len() == 32 {
        k.copy_from_slice(bytes);
        return Ok(k);
    }
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Err(format!("{} bytes of binary: {EXPECTED}", bytes.len()));
    };
    let text = text.trim();
    let decoded = Zeroizing::new(match text.len() {
        64 if text.bytes().all(|b| b.is_ascii_hexdigit()) => {
            hex::decode(text).map_err(|e| e.to_string())?
        }
        43 | 44 => base64::engine::general_purpose::STANDARD
            .decode(text)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
            .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text))
            .map_err(|_| format!("{} characters that are not base64: {EXPECTED}", text.len()))?,
        n if n > 0 && text.bytes().all(|b| b.is_ascii_hexdigit()) => {
            return Err(format!("{n} hex characters ({} bytes): {EXPECTED}", n / 2));
        }
        n => return Err(format!("{n} characters of text: {EXPECTED}")),
    });
    if decoded.len() != 32 {
        return Err(format!("decodes to {} bytes: {EXPECTED}", decoded.len()));
    }
    k.copy_from_slice(&decoded);
    Ok(k)
}

impl Kek {
    /// From key bytes in any accepted encoding.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretsError> {
        let key = decode_kek(bytes).map_err(SecretsError::Kek)?;
        if key.iter().all(|&b| b == 0) {
            return Err(SecretsError::Kek("all-zero key refused".into()));
        }
        let mut h = Sha256::new();
        h.update(b"veil-kbs kek id\0");
        h.update(key.as_ref());
        let id = hex::encode(&h.finalize()[..8]);
        Ok(Kek { key, id })
    }

    /// From a file.
    pub fn from_file(path: &Path) -> Result<Self, SecretsError> {
        let bytes = Zeroizing::new(
            std::fs::read(path)
                .map_err(|e| SecretsError::Kek(format!("reading {}: {e}", path.display())))?,
        );
        Self::from_bytes(&bytes).map_err(|e| SecretsError::Kek(format!("{}: {e}", path.display())))
    }

    /// From [`KEK_ENV`].
    pub fn from_env() -> Result<Self, SecretsError> {
        let v = Zeroizing::new(
            std::env::var(KEK_ENV)
                .map_err(|_| SecretsError::Kek(format!("{KEK_ENV} is not set")))?,
        );
        Self::from_bytes(v.as_bytes()).map_err(|e| SecretsError::Kek(format!("{KEK_ENV}: {e}")))
    }

    /// A fresh random KEK, hex-encoded (what `veil kbs kek-generate` writes).
    pub fn generate_hex() -> Zeroizing<String> {
        let mut k = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(k.as_mut());
        Zeroizing::new(hex::encode(k.as_ref()))
    }

    /// Public identifier (not secret: a truncated keyed hash).
    pub fn id(&self) -> &str {
        &self.id
    }

    fn aad(name: &str) -> Vec<u8> {
        let mut a = b"veil-kbs sealed v1\0".to_vec();
        a.extend_from_slice(name.as_bytes());
        a
    }

    /// Seal `plaintext` under this KEK for blob `name`.
    pub fn seal(&self, name: &str, plaintext: &[u8]) -> SealedBlob {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let cipher = Aes256Gcm::new(self.key.as_ref().into());
        // Encryption with a valid key and a nonce of the right size cannot fail.
        let ciphertext = cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: &Self::aad(name),
                },
            )
            .unwrap_or_default();
        SealedBlob {
            kek_id: self.id.clone(),
            nonce: nonce.to_vec(),
            ciphertext,
        }
    }

    /// Open blob `name`.
    pub fn open(&self, name: &str, blob: &SealedBlob) -> Result<Zeroizing<Vec<u8>>, SecretsError> {
        let fail = |reason: String| SecretsError::Open {
            name: name.to_string(),
            reason,
        };
        if blob.kek_id != self.id {
            return Err(fail(format!(
                "sealed under KEK id {}, the server has KEK id {} (rotate with `veil kbs rotate-kek`)",
                blob.kek_id, self.id
            )));
        }
        if blob.nonce.len() != 12 {
            return Err(fail(format!(
                "nonce is {} bytes, expected 12",
                blob.nonce.len()
            )));
        }
        let nonce: [u8; 12] = blob
            .nonce
            .as_slice()
            .try_into()
            .map_err(|_| fail("nonce is not 12 bytes".into()))?;
        let cipher = Aes256Gcm::new(self.key.as_ref().into());
        cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &blob.ciphertext,
                    aad: &Self::aad(name),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| fail("AES-GCM authentication failed (tampered or wrong KEK)".into()))
    }
}

/// Re-seal every blob in `store` from `old` to `new`, atomically. Returns the
/// number of blobs re-sealed.
pub fn rotate_kek(store: &dyn Store, old: &Kek, new: &Kek) -> Result<usize, String> {
    store
        .reseal_all(&mut |name, blob| {
            if blob.kek_id == new.id {
                return Ok(blob.clone());
            }
            let plain = old.open(name, blob).map_err(|e| e.to_string())?;
            Ok(new.seal(name, &plain))
        })
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kek_encodings_and_seal() {
        let hexk = "11".repeat(32);
        let a = Kek::from_bytes(hexk.as_bytes()).unwrap();
        let b = Kek::from_bytes(&[0x11; 32]).unwrap();
        assert_eq!(a.id(), b.id());
        assert!(Kek::from_bytes(b"short").is_err());
        assert!(Kek::from_bytes(&[0; 32]).is_err());
        let blob = a.seal("resource:x/y/z", b"secret");
        assert_eq!(
            a.open("resource:x/y/z", &blob).unwrap().as_slice(),
            b"secret"
        );
        assert!(
            a.open("resource:x/y/other", &blob).is_err(),
            "AAD binds the name"
        );
        let c = Kek::from_bytes(&[0x22; 32]).unwrap();
        let e = c.open("resource:x/y/z", &blob).unwrap_err().to_string();
        assert!(e.contains("KEK id"), "{e}");
    }
}
