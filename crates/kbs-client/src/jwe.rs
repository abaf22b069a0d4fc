//! The resource JWE (RFC 7516, flattened JSON): `ECDH-ES+A256KW` on P-256 or
//! P-521 and `RSA-OAEP-256`, content encrypted with `A256GCM`.
//!
//! [`encrypt`] is what the key broker does to a resource before it leaves;
//! [`TeeKeyPair::decrypt`] is what the guest does with its ephemeral key.
//! The protected header is emitted byte for byte as Trustee does (and as
//! `kbs-types` clients re-serialize it): `alg`, `enc`, then the other members
//! with nested keys sorted. The AAD is the received `protected` string.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand_core::{OsRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use crate::protocol::{FlattenedJwe, TeePubKey};

/// Key management algorithm for EC keys.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// Key management algorithm for RSA keys.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// Content encryption algorithm.
pub const ENC_A256GCM: &str = "A256GCM";
/// Smallest RSA modulus accepted for a TEE key.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA modulus accepted (bounds the server's work).
pub const MAX_RSA_BITS: usize = 8192;
/// Largest JWE ciphertext a client decrypts.
pub const MAX_CIPHERTEXT: usize = 2 << 20;

/// Why a JWE could not be produced or opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JweError {
    /// The TEE public key is not one this implementation encrypts to.
    #[error("unsupported tee-pubkey: {0}")]
    UnsupportedKey(String),
    /// The TEE public key is malformed (bad base64, not on the curve, …).
    #[error("invalid tee-pubkey: {0}")]
    InvalidKey(String),
    /// The JWE is malformed or uses other algorithms than expected.
    #[error("malformed JWE: {0}")]
    Malformed(String),
    /// Decryption failed: wrong key, or the JWE was modified.
    #[error("JWE decryption failed: {0}")]
    Decrypt(String),
}

type Result<T> = std::result::Result<T, JweError>;

/// Kinds of ephemeral TEE key a client can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// EC P-256 with ECDH-ES+A256KW (the guest-components default).
    EcP256,
    /// EC P-521 with ECDH-ES+A256KW.
    EcP521,
    /// RSA 2048 with RSA-OAEP-256.
    Rsa2048,
    /// RSA 3072 with RSA-OAEP-256.
    Rsa3072,
}

impl std::str::FromStr for KeyType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ec-p256" | "p256" | "P-256" => Ok(KeyType::EcP256),
            "ec-p521" | "p521" | "P-521" => Ok(KeyType::EcP521),
            "rsa" | "rsa2048" | "rsa-2048" => Ok(KeyType::Rsa2048),
            "rsa3072" | "rsa-3072" => Ok(KeyType::Rsa3072),
            other => Err(format!(
                "unknown key type {other:?}; known: ec-p256, ec-p521, rsa2048, rsa3072"
            )),
        }
    }
}

/// An ephemeral key pair born inside the TEE; secrets are encrypted to it.
pub enum TeeKeyPair {
    /// P-256.
    P256(p256::SecretKey),
    /// P-521.
    P521(p521::SecretKey),
    /// RSA.
    Rsa(Box<RsaPrivateKey>),
}

fn b64(bytes: &[u8]) -> String {
    B64URL.encode(bytes)
}

fn unb64(what: &str, s: &str, max: usize) -> Result<Vec<u8>> {
    if s.len() > max.saturating_mul(4) / 3 + 4 {
        return Err(JweError::Malformed(format!(
            "{what} is longer than {max} bytes"
        )));
    }
    B64URL
        .decode(s)
        .map_err(|e| JweError::Malformed(format!("{what} is not base64url (no padding): {e}")))
}

/// The JWA Concat KDF (RFC 7518 §4.6.2) for ECDH-ES+A256KW, one SHA-256
/// round, empty PartyUInfo/PartyVInfo.
fn concat_kdf(z: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update((ALG_ECDH_ES_A256KW.len() as u32).to_be_bytes());
    h.update(ALG_ECDH_ES_A256KW.as_bytes());
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    Zeroizing::new(h.finalize().into())
}

fn wrap_cek(kek: &[u8; 32], cek: &[u8; 32]) -> Result<Vec<u8>> {
    aes_kw::KekAes256::from(*kek)
        .wrap_vec(cek)
        .map_err(|e| JweError::InvalidKey(format!("AES key wrap: {e}")))
}

fn unwrap_cek(kek: &[u8; 32], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
    aes_kw::KekAes256::from(*kek)
        .unwrap_vec(wrapped)
        .map(Zeroizing::new)
        .map_err(|_| {
            JweError::Decrypt(
                "AES key unwrap failed (integrity check): wrong key or modified JWE".into(),
            )
        })
}

/// The exact protected header for an EC recipient.
fn ec_header(crv: &str, x: &str, y: &str) -> String {
    format!(
        r#"{{"alg":"{ALG_ECDH_ES_A256KW}","enc":"{ENC_A256GCM}","epk":{{"crv":"{crv}","kty":"EC","x":"{x}","y":"{y}"}}}}"#
    )
}

fn rsa_header() -> String {
    format!(r#"{{"alg":"{ALG_RSA_OAEP_256}","enc":"{ENC_A256GCM}"}}"#)
}

fn seal(
    crypto: &dyn SealCrypto,
    header: &str,
    encrypted_key: Vec<u8>,
    cek: &[u8; 32],
    plaintext: &[u8],
) -> Result<FlattenedJwe> {
    let protected = b64(header.as_bytes());
    let mut iv = [0u8; 12];
    crypto.fill_random(&mut iv)?;
    let mut ct = crypto.aes256_gcm_seal(cek, &iv, protected.as_bytes(), plaintext)?;
    if ct.len() != plaintext.len() + 16 {
        return Err(JweError::InvalidKey(format!(
            "A256GCM produced {} bytes for {} bytes of plaintext (expected ciphertext and a 16-byte tag)",
            ct.len(),
            plaintext.len()
        )));
    }
    let tag = ct.split_off(ct.len() - 16);
    Ok(FlattenedJwe {
        protected,
        encrypted_key: b64(&encrypted_key),
        iv: b64(&iv),
        ciphertext: b64(&ct),
        tag: b64(&tag),
    })
}

/// The curve of an EC TEE key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Curve {
    /// NIST P-256.
    P256,
    /// NIST P-521.
    P521,
}

impl Curve {
    /// The JWK `crv` name.
    pub fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P521 => "P-521",
        }
    }

    /// Bytes per coordinate.
    pub fn coord_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P521 => 66,
        }
    }
}

/// The primitives the sending side of a resource JWE needs. [`RustCrypto`]
/// is the pure-Rust set the guest links; the KBS server plugs in a faster
/// backend through [`encrypt_with`] without the guest linking it. The JWE
/// format (headers, KDF, layout) stays here, in one place.
pub trait SealCrypto {
    /// Ephemeral-static ECDH with `peer` (an uncompressed SEC1 point on
    /// `curve`, checked to be on the curve): the shared secret Z and the
    /// ephemeral public key as an uncompressed SEC1 point.
    fn ecdh_ephemeral(&self, curve: Curve, peer: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)>;
    /// AES-256 key wrap (RFC 3394) of a 32-byte content key.
    fn aes256_kw_wrap(&self, kek: &[u8; 32], cek: &[u8; 32]) -> Result<Vec<u8>>;
    /// AES-256-GCM: ciphertext followed by the 16-byte tag.
    fn aes256_gcm_seal(
        &self,
        key: &[u8; 32],
        iv: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>>;
    /// Fill `buf` from the operating system's CSPRNG.
    fn fill_random(&self, buf: &mut [u8]) -> Result<()>;
}

/// The pure-Rust (RustCrypto) primitives.
pub struct RustCrypto;

impl SealCrypto for RustCrypto {
    fn ecdh_ephemeral(&self, curve: Curve, peer: &[u8]) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>)> {
        let not_on_curve =
            || JweError::InvalidKey(format!("{} point is not on the curve", curve.name()));
        match curve {
            Curve::P256 => {
                let peer = p256::PublicKey::from_sec1_bytes(peer).map_err(|_| not_on_curve())?;
                let eph = p256::ecdh::EphemeralSecret::random(&mut OsRng);
                let shared = eph.diffie_hellman(&peer);
                let ep = p256::EncodedPoint::from(eph.public_key());
                Ok((
                    Zeroizing::new(shared.raw_secret_bytes().to_vec()),
                    ep.as_bytes().to_vec(),
                ))
            }
            Curve::P521 => {
                let peer = p521::PublicKey::from_sec1_bytes(peer).map_err(|_| not_on_curve())?;
                let eph = p521::ecdh::EphemeralSecret::random(&mut OsRng);
                let shared = eph.diffie_hellman(&peer);
                let ep = p521::EncodedPoint::from(eph.public_key());
                Ok((
                    Zeroizing::new(shared.raw_secret_bytes().to_vec()),
                    ep.as_bytes().to_vec(),
                ))
            }
        }
    }

    fn aes256_kw_wrap(&self, kek: &[u8; 32], cek: &[u8; 32]) -> Result<Vec<u8>> {
        wrap_cek(kek, cek)
    }

    fn aes256_gcm_seal(
        &self,
        key: &[u8; 32],
        iv: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>> {
        let cipher =
            Aes256Gcm::new_from_slice(key).map_err(|e| JweError::InvalidKey(e.to_string()))?;
        cipher
            .encrypt(
                &Nonce::from(*iv),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| JweError::InvalidKey("AES-GCM encryption failed".into()))
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<()> {
        OsRng.fill_bytes(buf);
        Ok(())
    }
}

fn ec_point(crv: &str, x: &str, y: &str, coord_len: usize) -> Result<(Vec<u8>, Vec<u8>)> {
    let xb = unb64("tee-pubkey x", x, coord_len)?;
    let yb = unb64("tee-pubkey y", y, coord_len)?;
    if xb.len() != coord_len || yb.len() != coord_len {
        return Err(JweError::InvalidKey(format!(
            "{crv} coordinates must be {coord_len} bytes, got x={} y={}",
            xb.len(),
            yb.len()
        )));
    }
    Ok((xb, yb))
}

fn uncompressed(x: &[u8], y: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + x.len() + y.len());
    v.push(4);
    v.extend_from_slice(x);
    v.extend_from_slice(y);
    v
}

/// Check that a TEE public key is one [`encrypt`] accepts (done at attest
/// time, so that a bad key is refused before a token is issued).
pub fn validate_tee_pubkey(key: &TeePubKey) -> Result<()> {
    match key {
        TeePubKey::EC { crv, alg, x, y } => {
            if alg != ALG_ECDH_ES_A256KW {
                return Err(JweError::UnsupportedKey(format!(
                    "EC key alg is {alg:?}, supported: {ALG_ECDH_ES_A256KW}"
                )));
            }
            match crv.as_str() {
                "P-256" => {
                    let (xb, yb) = ec_point(crv, x, y, 32)?;
                    p256::PublicKey::from_sec1_bytes(&uncompressed(&xb, &yb)).map_err(|_| {
                        JweError::InvalidKey("P-256 point is not on the curve".into())
                    })?;
                }
                "P-521" => {
                    let (xb, yb) = ec_point(crv, x, y, 66)?;
                    p521::PublicKey::from_sec1_bytes(&uncompressed(&xb, &yb)).map_err(|_| {
                        JweError::InvalidKey("P-521 point is not on the curve".into())
                    })?;
                }
                other => {
                    return Err(JweError::UnsupportedKey(format!(
                        "EC curve {other:?}, supported: P-256, P-521"
                    )));
                }
            }
            Ok(())
        }
        TeePubKey::RSA { .. } => rsa_public(key).map(|_| ()),
        TeePubKey::AKP { alg, .. } => Err(JweError::UnsupportedKey(format!(
            "AKP ({alg}) keys are experimental and not supported"
        ))),
    }
}

fn rsa_public(key: &TeePubKey) -> Result<RsaPublicKey> {
    let TeePubKey::RSA { alg, k_mod, k_exp } = key else {
        return Err(JweError::UnsupportedKey("not an RSA key".into()));
    };
    if alg != ALG_RSA_OAEP_256 {
        return Err(JweError::UnsupportedKey(format!(
            "RSA key alg is {alg:?}, supported: {ALG_RSA_OAEP_256} (RSA1_5 is refused: padding-oracle prone)"
        )));
    }
    let n = unb64("tee-pubkey n", k_mod, MAX_RSA_BITS / 8 + 1)?;
    let e = unb64("tee-pubkey e", k_exp, 8)?;
    let pk = RsaPublicKey::new_with_max_size(
        BigUint::from_bytes_be(&n),
        BigUint::from_bytes_be(&e),
        MAX_RSA_BITS,
    )
    .map_err(|e| JweError::InvalidKey(format!("RSA public key: {e}")))?;
    let bits = pk.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(JweError::InvalidKey(format!(
            "RSA modulus is {bits} bits, at least {MIN_RSA_BITS} required"
        )));
    }
    Ok(pk)
}

/// Encrypt `plaintext` to a TEE public key (pure-Rust primitives).
pub fn encrypt(key: &TeePubKey, plaintext: &[u8]) -> Result<FlattenedJwe> {
    encrypt_with(&RustCrypto, key, plaintext)
}

/// Encrypt `plaintext` to a TEE public key with `crypto`'s primitives for
/// ECDH, key wrap and AES-GCM (RSA-OAEP, a public-key operation with a
/// small exponent, stays RustCrypto's).
pub fn encrypt_with(
    crypto: &dyn SealCrypto,
    key: &TeePubKey,
    plaintext: &[u8],
) -> Result<FlattenedJwe> {
    let mut cek = Zeroizing::new([0u8; 32]);
    match key {
        TeePubKey::EC { crv, alg, x, y } => {
            if alg != ALG_ECDH_ES_A256KW {
                return Err(JweError::UnsupportedKey(format!(
                    "EC key alg is {alg:?}, supported: {ALG_ECDH_ES_A256KW}"
                )));
            }
            let curve = match crv.as_str() {
                "P-256" => Curve::P256,
                "P-521" => Curve::P521,
                other => {
                    return Err(JweError::UnsupportedKey(format!(
                        "EC curve {other:?}, supported: P-256, P-521"
                    )));
                }
            };
            let (xb, yb) = ec_point(crv, x, y, curve.coord_len())?;
            let (z, epk) = crypto.ecdh_ephemeral(curve, &uncompressed(&xb, &yb))?;
            let n = curve.coord_len();
            if epk.len() != 1 + 2 * n || epk[0] != 4 {
                return Err(JweError::InvalidKey(format!(
                    "ephemeral {} key is not an uncompressed point ({} bytes)",
                    curve.name(),
                    epk.len()
                )));
            }
            let kek = concat_kdf(&z);
            crypto.fill_random(cek.as_mut())?;
            let wrapped = crypto.aes256_kw_wrap(&kek, &cek)?;
            let header = ec_header(crv, &b64(&epk[1..1 + n]), &b64(&epk[1 + n..]));
            seal(crypto, &header, wrapped, &cek, plaintext)
        }
        TeePubKey::RSA { .. } => {
            let pk = rsa_public(key)?;
            crypto.fill_random(cek.as_mut())?;
            let wrapped = pk
                .encrypt(&mut OsRng, Oaep::new::<Sha256>(), cek.as_ref())
                .map_err(|e| JweError::InvalidKey(format!("RSA-OAEP: {e}")))?;
            seal(crypto, &rsa_header(), wrapped, &cek, plaintext)
        }
        TeePubKey::AKP { alg, .. } => Err(JweError::UnsupportedKey(format!(
            "AKP ({alg}) keys are experimental and not supported"
        ))),
    }
}

#[derive(serde::Deserialize)]
struct Header {
    alg: String,
    enc: String,
    #[serde(default)]
    epk: Option<Epk>,
}

#[derive(serde::Deserialize)]
struct Epk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

impl TeeKeyPair {
    /// Generate a fresh key pair.
    pub fn generate(kind: KeyType) -> Result<Self> {
        Ok(match kind {
            KeyType::EcP256 => TeeKeyPair::P256(p256::SecretKey::random(&mut OsRng)),
            KeyType::EcP521 => TeeKeyPair::P521(p521::SecretKey::random(&mut OsRng)),
            KeyType::Rsa2048 | KeyType::Rsa3072 => {
                let bits = if kind == KeyType::Rsa2048 { 2048 } else { 3072 };
                let k = RsaPrivateKey::new(&mut OsRng, bits)
                    .map_err(|e| JweError::InvalidKey(format!("RSA key generation: {e}")))?;
                TeeKeyPair::Rsa(Box::new(k))
            }
        })
    }

    /// The public half as the JWK sent in `runtime-data.tee-pubkey`.
    pub fn public_jwk(&self) -> TeePubKey {
        match self {
            TeeKeyPair::P256(sk) => {
                let p = p256::EncodedPoint::from(sk.public_key());
                TeePubKey::EC {
                    crv: "P-256".into(),
                    alg: ALG_ECDH_ES_A256KW.into(),
                    x: b64(p.x().map(|v| &v[..]).unwrap_or_default()),
                    y: b64(p.y().map(|v| &v[..]).unwrap_or_default()),
                }
            }
            TeeKeyPair::P521(sk) => {
                let p = p521::EncodedPoint::from(sk.public_key());
                TeePubKey::EC {
                    crv: "P-521".into(),
                    alg: ALG_ECDH_ES_A256KW.into(),
                    x: b64(p.x().map(|v| &v[..]).unwrap_or_default()),
                    y: b64(p.y().map(|v| &v[..]).unwrap_or_default()),
                }
            }
            TeeKeyPair::Rsa(k) => TeePubKey::RSA {
                alg: ALG_RSA_OAEP_256.into(),
                k_mod: b64(&k.n().to_bytes_be()),
                k_exp: b64(&k.e().to_bytes_be()),
            },
        }
    }

    /// The private key as PKCS#8 PEM (for tools that decrypt independently).
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>> {
        use p256::pkcs8::EncodePrivateKey;
        let le = p256::pkcs8::LineEnding::LF;
        match self {
            TeeKeyPair::P256(k) => k.to_pkcs8_pem(le),
            TeeKeyPair::P521(k) => k.to_pkcs8_pem(le),
            TeeKeyPair::Rsa(k) => k.to_pkcs8_pem(le),
        }
        .map_err(|e| JweError::InvalidKey(format!("PKCS#8 encoding: {e}")))
    }

    /// Decrypt a resource JWE addressed to this key.
    pub fn decrypt(&self, jwe: &FlattenedJwe) -> Result<Zeroizing<Vec<u8>>> {
        let header_bytes = unb64("protected header", &jwe.protected, 64 * 1024)?;
        let header: Header = serde_json::from_slice(&header_bytes)
            .map_err(|e| JweError::Malformed(format!("protected header JSON: {e}")))?;
        if header.enc != ENC_A256GCM {
            return Err(JweError::Malformed(format!(
                "enc is {:?}, expected {ENC_A256GCM}",
                header.enc
            )));
        }
        let encrypted_key = unb64("encrypted_key", &jwe.encrypted_key, 1024)?;
        let cek: Zeroizing<Vec<u8>> = match (self, header.alg.as_str()) {
            (TeeKeyPair::P256(_) | TeeKeyPair::P521(_), ALG_ECDH_ES_A256KW) => {
                let epk = header
                    .epk
                    .ok_or_else(|| JweError::Malformed("ECDH-ES header without epk".into()))?;
                if epk.kty != "EC" {
                    return Err(JweError::Malformed(format!(
                        "epk kty is {:?}, expected EC",
                        epk.kty
                    )));
                }
                let z = match self {
                    TeeKeyPair::P256(sk) => {
                        if epk.crv != "P-256" {
                            return Err(JweError::Malformed(format!(
                                "epk curve {:?} but our key is P-256",
                                epk.crv
                            )));
                        }
                        let (x, y) = ec_point(&epk.crv, &epk.x, &epk.y, 32)?;
                        let pk = p256::PublicKey::from_sec1_bytes(&uncompressed(&x, &y))
                            .map_err(|_| JweError::Malformed("epk is not a P-256 point".into()))?;
                        let s = p256::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                        Zeroizing::new(s.raw_secret_bytes().to_vec())
                    }
                    TeeKeyPair::P521(sk) => {
                        if epk.crv != "P-521" {
                            return Err(JweError::Malformed(format!(
                                "epk curve {:?} but our key is P-521",
                                epk.crv
                            )));
                        }
                        let (x, y) = ec_point(&epk.crv, &epk.x, &epk.y, 66)?;
                        let pk = p521::PublicKey::from_sec1_bytes(&uncompressed(&x, &y))
                            .map_err(|_| JweError::Malformed("epk is not a P-521 point".into()))?;
                        let s = p521::ecdh::diffie_hellman(sk.to_nonzero_scalar(), pk.as_affine());
                        Zeroizing::new(s.raw_secret_bytes().to_vec())
                    }
                    TeeKeyPair::Rsa(_) => {
                        return Err(JweError::Malformed("unreachable key kind".into()));
                    }
                };
                let kek = concat_kdf(&z);
                unwrap_cek(&kek, &encrypted_key)?
            }
            (TeeKeyPair::Rsa(k), ALG_RSA_OAEP_256) => k
                .decrypt(Oaep::new::<Sha256>(), &encrypted_key)
                .map(Zeroizing::new)
                .map_err(|_| {
                    JweError::Decrypt(
                        "RSA-OAEP-256 unwrap failed: wrong key or modified JWE".into(),
                    )
                })?,
            (_, alg) => {
                return Err(JweError::Malformed(format!(
                    "alg {alg:?} does not match this key (EC keys: {ALG_ECDH_ES_A256KW}, RSA keys: {ALG_RSA_OAEP_256})"
                )));
            }
        };
        if cek.len() != 32 {
            return Err(JweError::Decrypt(format!(
                "content key is {} bytes, A256GCM needs 32",
                cek.len()
            )));
        }
        let iv = unb64("iv", &jwe.iv, 12)?;
        let tag = unb64("tag", &jwe.tag, 16)?;
        if iv.len() != 12 || tag.len() != 16 {
            return Err(JweError::Malformed(format!(
                "iv must be 12 bytes and tag 16, got {} and {}",
                iv.len(),
                tag.len()
            )));
        }
        let iv: [u8; 12] = iv
            .try_into()
            .map_err(|_| JweError::Malformed("iv must be 12 bytes".into()))?;
        let mut ct = unb64("ciphertext", &jwe.ciphertext, MAX_CIPHERTEXT)?;
        ct.extend_from_slice(&tag);
        let cipher =
            Aes256Gcm::new_from_slice(&cek).map_err(|e| JweError::Decrypt(e.to_string()))?;
        let pt = cipher
            .decrypt(
                &Nonce::from(iv),
                Payload {
                    msg: &ct,
                    aad: jwe.protected.as_bytes(),
                },
            )
            .map_err(|_| {
                JweError::Decrypt("A256GCM tag mismatch: wrong key or modified JWE".into())
            })?;
        ct.zeroize();
        Ok(Zeroizing::new(pt))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(kind: KeyType) {
        let kp = TeeKeyPair::generate(kind).unwrap();
        let jwe = encrypt(&kp.public_jwk(), b"top secret").unwrap();
        assert_eq!(kp.decrypt(&jwe).unwrap().as_slice(), b"top secret");
        let header = String::from_utf8(B64URL.decode(&jwe.protected).unwrap()).unwrap();
        match kind {
            KeyType::EcP256 | KeyType::EcP521 => {
                assert!(
                    header
                        .starts_with(r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-"#),
                    "{header}"
                );
                assert_eq!(B64URL.decode(&jwe.encrypted_key).unwrap().len(), 40);
            }
            _ => assert_eq!(header, r#"{"alg":"RSA-OAEP-256","enc":"A256GCM"}"#),
        }
        // Any bit flipped in the ciphertext is detected.
        let mut bad = jwe.clone();
        let mut ct = B64URL.decode(&bad.ciphertext).unwrap();
        ct[0] ^= 1;
        bad.ciphertext = b64(&ct);
        assert!(matches!(kp.decrypt(&bad), Err(JweError::Decrypt(_))));
        // Another key cannot open it.
        let other = TeeKeyPair::generate(kind).unwrap();
        assert!(other.decrypt(&jwe).is_err());
    }

    #[test]
    fn p256_roundtrip() {
        roundtrip(KeyType::EcP256);
    }

    #[test]
    fn p521_roundtrip() {
        roundtrip(KeyType::EcP521);
    }

    #[test]
    fn rsa_roundtrip() {
        roundtrip(KeyType::Rsa2048);
    }

    /// The header matches what `kbs-types` clients re-serialize for the AAD.
    #[test]
    fn header_matches_kbs_types_serialization() {
        let kp = TeeKeyPair::generate(KeyType::EcP256).unwrap();
        let jwe = encrypt(&kp.public_jwk(), b"x").unwrap();
        let parsed: kbs_types::Response =
            serde_json::from_str(&serde_json::to_string(&jwe).unwrap()).unwrap();
        assert_eq!(
            parsed.protected.generate_aad().unwrap(),
            jwe.protected.as_bytes()
        );
    }

    #[test]
    fn refuses_bad_keys() {
        let k = TeePubKey::EC {
            crv: "P-384".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: "AA".into(),
            y: "AA".into(),
        };
        assert!(matches!(
            encrypt(&k, b"x"),
            Err(JweError::UnsupportedKey(_))
        ));
        let k = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: b64(&[1; 32]),
            y: b64(&[2; 32]),
        };
        assert!(matches!(encrypt(&k, b"x"), Err(JweError::InvalidKey(_))));
        let k = TeePubKey::RSA {
            alg: "RSA1_5".into(),
            k_mod: "AQAB".into(),
            k_exp: "AQAB".into(),
        };
        assert!(matches!(
            encrypt(&k, b"x"),
            Err(JweError::UnsupportedKey(_))
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn decrypt_never_panics_on_garbage(p in ".{0,64}", k in "[A-Za-z0-9_-]{0,80}", iv in "[A-Za-z0-9_-]{0,20}", c in "[A-Za-z0-9_-]{0,40}", t in "[A-Za-z0-9_-]{0,30}") {
            let kp = TeeKeyPair::P256(p256::SecretKey::from_slice(&[7u8; 32]).unwrap());
            let jwe = FlattenedJwe { protected: b64(p.as_bytes()), encrypted_key: k, iv, ciphertext: c, tag: t };
            prop_assert!(kp.decrypt(&jwe).is_err());
        }
    }
}
