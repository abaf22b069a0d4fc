//! cosign / sigstore key-based signatures: ECDSA P-256 over SHA-256 of the
//! simple-signing payload, stored as "attachments" next to the image (the
//! tag `sha256-<hex>.sig`, one layer per signature with media type
//! `application/vnd.dev.cosign.simplesigning.v1+json` and the base64 DER
//! signature in the `dev.cosignproject.cosign/signature` annotation).
//!
//! Keys: public keys as PEM SPKI; private keys as PEM PKCS#8 / SEC1, or in
//! cosign's encrypted format (`ENCRYPTED SIGSTORE PRIVATE KEY` /
//! `ENCRYPTED COSIGN PRIVATE KEY`: scrypt + NaCl secretbox around PKCS#8),
//! which is also what `skopeo --sign-by-sigstore-private-key` reads.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use crypto_secretbox::XSalsa20Poly1305;
use crypto_secretbox::aead::{Aead, KeyInit};
use p256::ecdsa::signature::{Signer as _, Verifier as _};
use p256::ecdsa::{DerSignature, Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::digest::Digest;
use crate::layout::OciLayout;
use crate::source::{BlobSource, MAX_MANIFEST_BYTES, SourceError};
use crate::spec::{Descriptor, Manifest, media_type};

use super::SignError;
use super::payload::MAX_PAYLOAD_BYTES;

/// Stores a blob (bytes, media type) and returns its descriptor.
type PutBlob<'a> = dyn FnMut(&[u8], &str) -> Result<Descriptor, SourceError> + 'a;

/// Media type of a cosign signature layer (the payload).
pub const SIMPLESIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// Annotation carrying the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Most signatures read from one attachment.
pub const MAX_SIGNATURES: usize = 256;
/// Largest key file accepted.
pub const MAX_KEY_BYTES: usize = 64 << 10;

const ENCRYPTED_LABELS: [&str; 2] = [
    "ENCRYPTED SIGSTORE PRIVATE KEY",
    "ENCRYPTED COSIGN PRIVATE KEY",
];
/// scrypt cost cosign uses (N = 2^15, r = 8, p = 1).
const SCRYPT_LOG_N: u8 = 15;
/// Highest scrypt cost accepted from a key file (bounds memory and time).
const MAX_SCRYPT_LOG_N: u8 = 20;
/// Most memory scrypt may use for a key file (128·r·N bytes).
const MAX_SCRYPT_MEMORY: u64 = 256 << 20;

/// The attachment tag holding the signatures of `digest`.
pub fn attachment_tag(digest: &Digest) -> String {
    format!("{}-{}.sig", digest.algorithm().name(), digest.hex())
}

/// A sigstore verification key (ECDSA P-256).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` (SPKI).
    pub fn from_pem(bytes: &[u8]) -> Result<Self, SignError> {
        let bad = |r: String| SignError::Key(format!("sigstore public key: {r}"));
        if bytes.len() > MAX_KEY_BYTES {
            return Err(bad(format!("larger than {MAX_KEY_BYTES} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not PEM text".into()))?;
        VerifyingKey::from_public_key_pem(text.trim())
            .map(PublicKey)
            .map_err(|e| bad(format!("expected a PEM ECDSA P-256 public key: {e}")))
    }

    /// PEM SPKI encoding.
    pub fn to_pem(&self) -> Result<String, SignError> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| SignError::Key(format!("encoding public key: {e}")))
    }

    /// Verify a base64 ASN.1 DER ECDSA signature over `payload`.
    pub fn verify(&self, payload: &[u8], signature_b64: &str) -> Result<(), SignError> {
        let refused = |reason: String| SignError::Refused {
            check: "sigstore signature",
            reason,
        };
        let der = B64
            .decode(signature_b64.trim())
            .map_err(|e| refused(format!("signature is not base64: {e}")))?;
        let sig = Signature::from_der(&der)
            .map_err(|_| refused("signature is not an ASN.1 DER ECDSA signature".into()))?;
        // Go signers do not normalize S; accept both forms.
        let sig = sig.normalize_s().unwrap_or(sig);
        self.0
            .verify(payload, &sig)
            .map_err(|_| refused("ECDSA P-256 verification with the policy's key failed".into()))
    }
}

/// A sigstore signing key (ECDSA P-256); zeroized on drop.
pub struct PrivateKey(SigningKey);

impl PrivateKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        PrivateKey(SigningKey::random(&mut OsRng))
    }

    /// Parse a PEM private key: cosign's encrypted format (needs
    /// `passphrase`), PKCS#8 `PRIVATE KEY` or SEC1 `EC PRIVATE KEY`.
    pub fn from_pem(bytes: &[u8], passphrase: Option<&[u8]>) -> Result<Self, SignError> {
        let bad = |r: String| SignError::Key(format!("sigstore private key: {r}"));
        if bytes.len() > MAX_KEY_BYTES {
            return Err(bad(format!("larger than {MAX_KEY_BYTES} bytes")));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| bad("not PEM text".into()))?;
        let text = text.trim();
        let (label, body) =
            pem_rfc7468::decode_vec(text.as_bytes()).map_err(|e| bad(format!("not PEM: {e}")))?;
        let body = Zeroizing::new(body);
        if ENCRYPTED_LABELS.contains(&label) {
            let pass = passphrase
                .ok_or_else(|| bad(format!("{label} needs a passphrase (--passphrase-file)")))?;
            let der = decrypt_cosign_key(&body, pass)?;
            return SigningKey::from_pkcs8_der(&der)
                .map(PrivateKey)
                .map_err(|e| bad(format!("decrypted key is not a PKCS#8 P-256 key: {e}")));
        }
        match label {
            "PRIVATE KEY" => SigningKey::from_pkcs8_der(&body)
                .map(PrivateKey)
                .map_err(|e| bad(format!("expected a PKCS#8 ECDSA P-256 key: {e}"))),
            "EC PRIVATE KEY" => p256::SecretKey::from_sec1_der(&body)
                .map(|k| PrivateKey(SigningKey::from(k)))
                .map_err(|e| bad(format!("expected a SEC1 P-256 key: {e}"))),
            other => Err(bad(format!(
                "PEM label {other:?}; expected PRIVATE KEY, EC PRIVATE KEY or {}",
                ENCRYPTED_LABELS.join(" / ")
            ))),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(*self.0.verifying_key())
    }

    /// Sign `payload`: base64 of the ASN.1 DER signature.
    pub fn sign(&self, payload: &[u8]) -> String {
        let sig: DerSignature = self.0.sign(payload);
        B64.encode(sig.as_bytes())
    }

    /// Unencrypted PKCS#8 PEM (for tests and tools that want plain keys).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, SignError> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| SignError::Key(format!("encoding private key: {e}")))
    }

    /// cosign's encrypted format (`ENCRYPTED SIGSTORE PRIVATE KEY`), as
    /// `skopeo --sign-by-sigstore-private-key` and cosign read it.
    pub fn to_encrypted_pem(&self, passphrase: &[u8]) -> Result<String, SignError> {
        let der = self
            .0
            .to_pkcs8_der()
            .map_err(|e| SignError::Key(format!("encoding private key: {e}")))?;
        let mut salt = [0u8; 32];
        OsRng.fill_bytes(&mut salt);
        let mut nonce = [0u8; 24];
        OsRng.fill_bytes(&mut nonce);
        let key = derive(passphrase, &salt, SCRYPT_LOG_N, 8, 1)?;
        let cipher = XSalsa20Poly1305::new(key.as_slice().into());
        let ct = cipher
            .encrypt(&nonce.into(), der.as_bytes())
            .map_err(|_| SignError::Key("encrypting private key".into()))?;
        let doc = EncryptedKey {
            kdf: Kdf {
                name: "scrypt".into(),
                params: ScryptParams {
                    n: 1u64 << SCRYPT_LOG_N,
                    r: 8,
                    p: 1,
                },
                salt: B64.encode(salt),
            },
            cipher: Cipher {
                name: "nacl/secretbox".into(),
                nonce: B64.encode(nonce),
            },
            ciphertext: B64.encode(ct),
        };
        let json = serde_json::to_vec(&doc)
            .map_err(|e| SignError::Key(format!("encoding private key: {e}")))?;
        pem_rfc7468::encode_string(ENCRYPTED_LABELS[0], pem_rfc7468::LineEnding::LF, &json)
            .map_err(|e| SignError::Key(format!("encoding private key: {e}")))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptedKey {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScryptParams {
    #[serde(rename = "N")]
    n: u64,
    r: u32,
    p: u32,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Cipher {
    name: String,
    nonce: String,
}

fn derive(
    passphrase: &[u8],
    salt: &[u8],
    log_n: u8,
    r: u32,
    p: u32,
) -> Result<Zeroizing<[u8; 32]>, SignError> {
    let params = scrypt::Params::new(log_n, r, p, 32)
        .map_err(|e| SignError::Key(format!("scrypt parameters: {e}")))?;
    let mut key = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase, salt, &params, &mut key[..])
        .map_err(|e| SignError::Key(format!("scrypt: {e}")))?;
    Ok(key)
}

fn decrypt_cosign_key(body: &[u8], passphrase: &[u8]) -> Result<Zeroizing<Vec<u8>>, SignError> {
    let bad = |r: String| SignError::Key(format!("encrypted sigstore private key: {r}"));
    let doc: EncryptedKey = serde_json::from_slice(body).map_err(|e| bad(e.to_string()))?;
    if doc.kdf.name != "scrypt" || doc.cipher.name != "nacl/secretbox" {
        return Err(bad(format!(
            "kdf {:?} / cipher {:?}; expected scrypt / nacl/secretbox",
            doc.kdf.name, doc.cipher.name
        )));
    }
    let n = doc.kdf.params.n;
    if !n.is_power_of_two() || n < 2 {
        return Err(bad(format!("scrypt N = {n} is not a power of two")));
    }
    let log_n = n.trailing_zeros() as u8;
    let memory = (128 * u64::from(doc.kdf.params.r)).checked_shl(u32::from(log_n));
    if log_n > MAX_SCRYPT_LOG_N
        || doc.kdf.params.r == 0
        || doc.kdf.params.p == 0
        || doc.kdf.params.p > 16
        || memory.is_none_or(|m| m > MAX_SCRYPT_MEMORY)
    {
        return Err(bad(format!(
            "scrypt cost N={n} r={} p={} is outside the accepted range (N ≤ 2^{MAX_SCRYPT_LOG_N}, 128·r·N ≤ {MAX_SCRYPT_MEMORY} bytes, 1 ≤ p ≤ 16)",
            doc.kdf.params.r, doc.kdf.params.p
        )));
    }
    let salt = B64
        .decode(&doc.kdf.salt)
        .map_err(|e| bad(format!("salt: {e}")))?;
    let nonce: [u8; 24] = B64
        .decode(&doc.cipher.nonce)
        .map_err(|e| bad(format!("nonce: {e}")))?
        .try_into()
        .map_err(|_| bad("nonce is not 24 bytes".into()))?;
    let ct = B64
        .decode(&doc.ciphertext)
        .map_err(|e| bad(format!("ciphertext: {e}")))?;
    let key = derive(passphrase, &salt, log_n, doc.kdf.params.r, doc.kdf.params.p)?;
    let cipher = XSalsa20Poly1305::new(key.as_slice().into());
    cipher
        .decrypt(&nonce.into(), ct.as_slice())
        .map(Zeroizing::new)
        .map_err(|_| bad("wrong passphrase (the secretbox does not open)".into()))
}

/// One cosign signature: the payload and its signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigstoreSignature {
    /// The signed payload bytes.
    pub payload: Vec<u8>,
    /// Base64 ASN.1 DER signature.
    pub signature: String,
    /// Other annotations (certificate, bundle…), informational.
    pub annotations: BTreeMap<String, String>,
}

/// The cosign signatures stored next to `digest` in an OCI layout (the tag
/// `sha256-<hex>.sig`); none when there is no such tag.
pub fn layout_attachments(
    layout: &OciLayout,
    digest: &Digest,
) -> Result<Vec<SigstoreSignature>, SignError> {
    match layout.find(Some(&attachment_tag(digest))) {
        Ok(att) => read_attachment(layout, &att),
        Err(SourceError::NotFound(_)) => Ok(Vec::new()),
        Err(e) => Err(e.into()),
    }
}

/// Read the signatures of the attachment manifest `desc` from `source`.
pub fn read_attachment(
    source: &dyn BlobSource,
    desc: &Descriptor,
) -> Result<Vec<SigstoreSignature>, SignError> {
    let bytes = source.read_blob(desc, MAX_MANIFEST_BYTES, "signature attachment manifest")?;
    let manifest: Manifest = serde_json::from_slice(&bytes).map_err(|e| SignError::Malformed {
        what: "signature attachment manifest".into(),
        reason: e.to_string(),
    })?;
    if manifest.layers.len() > MAX_SIGNATURES {
        return Err(SignError::Malformed {
            what: "signature attachment manifest".into(),
            reason: format!(
                "{} signatures, more than {MAX_SIGNATURES}",
                manifest.layers.len()
            ),
        });
    }
    let mut out = Vec::new();
    for layer in &manifest.layers {
        if layer.media_type != SIMPLESIGNING_MEDIA_TYPE {
            continue;
        }
        let Some(sig) = layer.annotations.get(SIGNATURE_ANNOTATION) else {
            continue;
        };
        let payload = source.read_blob(layer, MAX_PAYLOAD_BYTES as u64, "signature payload")?;
        let mut annotations = layer.annotations.clone();
        annotations.remove(SIGNATURE_ANNOTATION);
        out.push(SigstoreSignature {
            payload,
            signature: sig.clone(),
            annotations,
        });
    }
    Ok(out)
}

/// Build the attachment manifest holding `sigs` (written as blobs through
/// `put`); returns the manifest bytes.
pub fn build_attachment(
    sigs: &[SigstoreSignature],
    put: &mut PutBlob<'_>,
) -> Result<Vec<u8>, SignError> {
    let mut layers = Vec::with_capacity(sigs.len());
    for s in sigs {
        let mut d = put(&s.payload, SIMPLESIGNING_MEDIA_TYPE)?;
        d.annotations = s.annotations.clone();
        d.annotations
            .insert(SIGNATURE_ANNOTATION.into(), s.signature.clone());
        layers.push(d);
    }
    // The config cosign writes: an empty image whose diff_ids are the
    // payload digests.
    let config = serde_json::json!({
        "architecture": "", "os": "", "config": {},
        "created": "0001-01-01T00:00:00Z",
        "rootfs": {"type": "layers",
                   "diff_ids": layers.iter().map(|l| l.digest.to_string()).collect::<Vec<_>>()},
    });
    let config_bytes = serde_json::to_vec(&config).map_err(|e| SignError::Malformed {
        what: "attachment config".into(),
        reason: e.to_string(),
    })?;
    let config = put(&config_bytes, media_type::OCI_CONFIG)?;
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type::OCI_MANIFEST.into()),
        config,
        layers,
        annotations: BTreeMap::new(),
        extra: Default::default(),
    };
    serde_json::to_vec(&manifest).map_err(|e| SignError::Malformed {
        what: "attachment manifest".into(),
        reason: e.to_string(),
    })
}

/// Add `sig` to the signatures of `digest` in the layout (the tag
/// `sha256-<hex>.sig`); an identical signature is not added twice.
/// Returns the attachment manifest's descriptor.
pub fn attach_to_layout(
    layout: &OciLayout,
    digest: &Digest,
    sig: SigstoreSignature,
) -> Result<Descriptor, SignError> {
    let tag = attachment_tag(digest);
    let mut sigs = match layout.find(Some(&tag)) {
        Ok(desc) => read_attachment(layout, &desc)?,
        Err(SourceError::NotFound(_)) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    if !sigs.contains(&sig) {
        sigs.push(sig);
    }
    let bytes = build_attachment(&sigs, &mut |b, mt| layout.write_blob(b, mt))?;
    let desc = layout.write_blob(&bytes, media_type::OCI_MANIFEST)?;
    layout.set_tag(&tag, desc.clone())?;
    Ok(desc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypted_keys_round_trip() {
        let k = PrivateKey::generate();
        let pem = k.to_encrypted_pem(b"pass").unwrap();
        assert!(pem.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----"));
        let back = PrivateKey::from_pem(pem.as_bytes(), Some(b"pass")).unwrap();
        assert_eq!(back.public_key(), k.public_key());
        let err = PrivateKey::from_pem(pem.as_bytes(), Some(b"wrong"))
            .err()
            .unwrap();
        assert!(err.to_string().contains("wrong passphrase"), "{err}");
        assert!(PrivateKey::from_pem(pem.as_bytes(), None).is_err());
        let plain = k.to_pkcs8_pem().unwrap();
        let back = PrivateKey::from_pem(plain.as_bytes(), None).unwrap();
        assert_eq!(back.public_key(), k.public_key());
    }

    #[test]
    fn signatures_verify_and_forgeries_do_not() {
        let k = PrivateKey::generate();
        let sig = k.sign(b"payload");
        k.public_key().verify(b"payload", &sig).unwrap();
        assert!(k.public_key().verify(b"payloaD", &sig).is_err());
        assert!(
            PrivateKey::generate()
                .public_key()
                .verify(b"payload", &sig)
                .is_err()
        );
        assert!(k.public_key().verify(b"payload", "!!").is_err());
        let pem = k.public_key().to_pem().unwrap();
        assert_eq!(PublicKey::from_pem(pem.as_bytes()).unwrap(), k.public_key());
    }
}
