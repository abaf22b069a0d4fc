//! Key files for JWE recipients: RSA and EC (P-256/P-384/P-521) keys in PEM
//! or DER, in the encodings `openssl` and skopeo use (SPKI, PKCS#8, PKCS#1,
//! SEC1).

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
use zeroize::Zeroizing;

use super::CryptError;

/// Largest key file accepted.
pub const MAX_KEY_FILE: usize = 64 * 1024;

/// A private key that can unwrap JWE recipients.
#[derive(Clone)]
pub enum PrivateKey {
    /// RSA (RSA-OAEP).
    Rsa(Box<rsa::RsaPrivateKey>),
    /// P-256 (ECDH-ES+A256KW).
    P256(p256::SecretKey),
    /// P-384.
    P384(p384::SecretKey),
    /// P-521.
    P521(p521::SecretKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            PrivateKey::Rsa(_) => "PrivateKey::Rsa(..)",
            PrivateKey::P256(_) => "PrivateKey::P256(..)",
            PrivateKey::P384(_) => "PrivateKey::P384(..)",
            PrivateKey::P521(_) => "PrivateKey::P521(..)",
        })
    }
}

/// A public key that JWE can wrap layer keys to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKey {
    /// RSA (RSA-OAEP).
    Rsa(rsa::RsaPublicKey),
    /// P-256 (ECDH-ES+A256KW).
    P256(p256::PublicKey),
    /// P-384.
    P384(p384::PublicKey),
    /// P-521.
    P521(p521::PublicKey),
}

fn bad(reason: impl Into<String>) -> CryptError {
    CryptError::Key(reason.into())
}

/// A PEM block: label and DER contents.
type PemBlock = (String, Zeroizing<Vec<u8>>);

/// The PEM blocks in `text`.
fn pem_blocks(text: &str) -> Result<Vec<PemBlock>, CryptError> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let label_end = after
            .find("-----")
            .ok_or_else(|| bad("unterminated PEM header"))?;
        let label = &after[..label_end];
        let end_marker = format!("-----END {label}-----");
        let end = rest[start..]
            .find(&end_marker)
            .ok_or_else(|| bad(format!("PEM block {label:?} has no END line")))?;
        let block = &rest[start..start + end + end_marker.len()];
        let (l, der) = pem_rfc7468::decode_vec(block.as_bytes())
            .map_err(|e| bad(format!("PEM block {label:?}: {e}")))?;
        out.push((l.to_string(), Zeroizing::new(der)));
        rest = &rest[start + end + end_marker.len()..];
    }
    Ok(out)
}

/// The DER of a key file: the first PEM block whose label `wanted` accepts
/// (it may refuse the file instead), or the file itself when it is not PEM.
/// `kind` names the key in the error when no block is accepted.
fn key_der(
    bytes: &[u8],
    kind: &str,
    wanted: impl Fn(&str) -> Result<bool, CryptError>,
) -> Result<Zeroizing<Vec<u8>>, CryptError> {
    if bytes.len() > MAX_KEY_FILE {
        return Err(bad(format!(
            "key file of {} bytes (at most {MAX_KEY_FILE})",
            bytes.len()
        )));
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if text.contains("-----BEGIN ") {
            for (label, der) in pem_blocks(text)? {
                if wanted(&label)? {
                    return Ok(der);
                }
            }
            return Err(bad(format!("no {kind} key block in the PEM file")));
        }
    }
    Ok(Zeroizing::new(bytes.to_vec()))
}

/// Parse a private key file (PEM or DER; PKCS#8, PKCS#1 RSA, SEC1 EC).
pub fn parse_private_key(bytes: &[u8]) -> Result<PrivateKey, CryptError> {
    let der = key_der(bytes, "private", |label| match label {
        "PRIVATE KEY" | "RSA PRIVATE KEY" | "EC PRIVATE KEY" => Ok(true),
        "ENCRYPTED PRIVATE KEY" => Err(bad(
            "the private key is password-protected; decrypt it first (openssl pkey)",
        )),
        _ => Ok(false), // e.g. "EC PARAMETERS" before the key
    })?;
    private_from_der(&der)
}

fn private_from_der(der: &[u8]) -> Result<PrivateKey, CryptError> {
    if let Ok(k) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
        return Ok(PrivateKey::Rsa(Box::new(k)));
    }
    if let Ok(k) = rsa::RsaPrivateKey::from_pkcs1_der(der) {
        return Ok(PrivateKey::Rsa(Box::new(k)));
    }
    if let Ok(k) =
        p256::SecretKey::from_pkcs8_der(der).or_else(|_| p256::SecretKey::from_sec1_der(der))
    {
        return Ok(PrivateKey::P256(k));
    }
    if let Ok(k) =
        p384::SecretKey::from_pkcs8_der(der).or_else(|_| p384::SecretKey::from_sec1_der(der))
    {
        return Ok(PrivateKey::P384(k));
    }
    if let Ok(k) =
        p521::SecretKey::from_pkcs8_der(der).or_else(|_| p521::SecretKey::from_sec1_der(der))
    {
        return Ok(PrivateKey::P521(k));
    }
    Err(bad(
        "not an RSA or P-256/P-384/P-521 private key (PKCS#8, PKCS#1 or SEC1)",
    ))
}

/// Parse a public key file (PEM or DER; SPKI or PKCS#1 RSA).
pub fn parse_public_key(bytes: &[u8]) -> Result<PublicKey, CryptError> {
    let der = key_der(bytes, "public", |label| {
        Ok(matches!(label, "PUBLIC KEY" | "RSA PUBLIC KEY"))
    })?;
    public_from_der(&der)
}

fn public_from_der(der: &[u8]) -> Result<PublicKey, CryptError> {
    if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
        return Ok(PublicKey::Rsa(k));
    }
    if let Ok(k) = rsa::RsaPublicKey::from_pkcs1_der(der) {
        return Ok(PublicKey::Rsa(k));
    }
    if let Ok(k) = p256::PublicKey::from_public_key_der(der) {
        return Ok(PublicKey::P256(k));
    }
    if let Ok(k) = p384::PublicKey::from_public_key_der(der) {
        return Ok(PublicKey::P384(k));
    }
    if let Ok(k) = p521::PublicKey::from_public_key_der(der) {
        return Ok(PublicKey::P521(k));
    }
    Err(bad("not an RSA or P-256/P-384/P-521 public key (SPKI)"))
}
