//! The attestation key (AK): its public part as `TPMT_PUBLIC` / `TPM2B_PUBLIC`
//! (TPM 2.0 Library, Part 2, §12.2.4), as an X.509 SubjectPublicKeyInfo (DER
//! or PEM), or as an RSA JWK (Azure's HCL runtime data); and verification of
//! TPM signatures with it.
//!
//! ```text
//! TPMT_PUBLIC
//!   type              u16   TPM_ALG_RSA | TPM_ALG_ECC
//!   nameAlg           u16
//!   objectAttributes  u32   TPMA_OBJECT (an AK is sign + restricted)
//!   authPolicy        TPM2B_DIGEST
//!   parameters        RSA: TPMS_RSA_PARMS { symmetric, scheme, keyBits u16, exponent u32 }
//!                     ECC: TPMS_ECC_PARMS { symmetric, scheme, curveID u16, kdf }
//!   unique            RSA: TPM2B_PUBLIC_KEY_RSA (modulus)
//!                     ECC: TPMS_ECC_POINT { x TPM2B, y TPM2B }
//! ```

use base64::Engine;
use p256::ecdsa::signature::hazmat::PrehashVerifier;
use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, RsaPublicKey};
use sha2::{Digest, Sha256};

use super::signature::Signature;
use super::wire::{Reader, Writer};
use super::{alg, ecc_curve, object_attr};
use crate::error::{Error, Result};

/// Smallest RSA AK accepted.
pub const MIN_RSA_BITS: usize = 2048;
/// Largest RSA AK accepted.
pub const MAX_RSA_BITS: usize = 4096;
/// Largest public-key input (PEM of a 4096-bit key is under 1 KiB).
pub const MAX_AK_INPUT_LEN: usize = 16 * 1024;

/// The TPM-specific facts of an AK given as `TPMT_PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpmPublicInfo {
    /// `nameAlg`.
    pub name_alg: u16,
    /// `objectAttributes` (`TPMA_OBJECT`).
    pub object_attributes: u32,
    /// The key's signing scheme (`TPM_ALG_NULL` when any is allowed).
    pub scheme: u16,
    /// The scheme's hash (`TPM_ALG_NULL` with a NULL scheme).
    pub scheme_hash: u16,
    /// The key's name: `nameAlg ‖ H_nameAlg(TPMT_PUBLIC)`, when nameAlg is SHA-256/384/512.
    pub name: Option<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Rsa(RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// An attestation key's public part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AkPublic {
    key: Key,
    spki_der: Vec<u8>,
    tpm: Option<TpmPublicInfo>,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::malformed("attestation key", reason)
}

/// Digest `data` with a TPM hash algorithm. SHA-1 is not accepted.
pub(crate) fn digest(hash: u16, data: &[u8]) -> Result<Vec<u8>> {
    match hash {
        alg::SHA256 => Ok(Sha256::digest(data).to_vec()),
        alg::SHA384 => Ok(sha2::Sha384::digest(data).to_vec()),
        alg::SHA512 => Ok(sha2::Sha512::digest(data).to_vec()),
        other => Err(Error::mismatch(
            "tpm.signature_scheme",
            "unsupported hash algorithm in the TPM signature",
            "SHA256, SHA384 or SHA512",
            format!("{} ({other:#06x})", alg::name(other)),
        )),
    }
}

impl AkPublic {
    fn from_key(key: Key, tpm: Option<TpmPublicInfo>) -> Result<Self> {
        let spki = match &key {
            Key::Rsa(k) => k.to_public_key_der(),
            Key::P256(k) => p256::PublicKey::from(k).to_public_key_der(),
            Key::P384(k) => p384::PublicKey::from(k).to_public_key_der(),
        }
        .map_err(|e| {
            malformed(format!(
                "cannot encode the key as SubjectPublicKeyInfo: {e}"
            ))
        })?;
        Ok(AkPublic {
            key,
            spki_der: spki.as_bytes().to_vec(),
            tpm,
        })
    }

    fn rsa(n: &[u8], e: &[u8]) -> Result<Key> {
        let n = BigUint::from_bytes_be(n);
        let bits = n.bits();
        if bits < MIN_RSA_BITS {
            return Err(Error::mismatch(
                "tpm.ak_key",
                "RSA attestation key is too small",
                format!(">= {MIN_RSA_BITS} bits"),
                format!("{bits} bits"),
            ));
        }
        if bits > MAX_RSA_BITS {
            return Err(malformed(format!(
                "RSA modulus of {bits} bits exceeds {MAX_RSA_BITS}"
            )));
        }
        RsaPublicKey::new(n, BigUint::from_bytes_be(e))
            .map(Key::Rsa)
            .map_err(|err| malformed(format!("invalid RSA public key: {err}")))
    }

    /// An RSA AK from its big-endian modulus and exponent.
    pub fn from_rsa_components(n: &[u8], e: &[u8]) -> Result<Self> {
        Self::from_key(Self::rsa(n, e)?, None)
    }

    /// An RSA AK from JWK members `n` and `e` (base64url, no padding).
    pub fn from_rsa_jwk(n_b64url: &str, e_b64url: &str) -> Result<Self> {
        let dec = |what: &str, s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s.trim_end_matches('='))
                .map_err(|e| malformed(format!("JWK {what} is not base64url: {e}")))
        };
        Self::from_rsa_components(&dec("n", n_b64url)?, &dec("e", e_b64url)?)
    }

    /// An AK from a DER SubjectPublicKeyInfo (RSA, P-256 or P-384).
    pub fn from_spki_der(der: &[u8]) -> Result<Self> {
        if let Ok(k) = RsaPublicKey::from_public_key_der(der) {
            let n = k.n().to_bytes_be();
            let e = k.e().to_bytes_be();
            return Self::from_key(Self::rsa(&n, &e)?, None);
        }
        if let Ok(k) = p256::PublicKey::from_public_key_der(der) {
            return Self::from_key(Key::P256(k.into()), None);
        }
        if let Ok(k) = p384::PublicKey::from_public_key_der(der) {
            return Self::from_key(Key::P384(k.into()), None);
        }
        Err(malformed(
            "not a DER SubjectPublicKeyInfo of an RSA, P-256 or P-384 key",
        ))
    }

    /// An AK in any accepted form: PEM or DER SubjectPublicKeyInfo, or a
    /// marshalled `TPM2B_PUBLIC` / `TPMT_PUBLIC` (`tpm2_readpublic -f tss`).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_AK_INPUT_LEN {
            return Err(malformed(format!(
                "{} bytes exceeds the {MAX_AK_INPUT_LEN} byte limit",
                bytes.len()
            )));
        }
        let text = bytes.trim_ascii();
        if text.starts_with(b"-----BEGIN") {
            let s = std::str::from_utf8(text).map_err(|_| malformed("PEM is not UTF-8"))?;
            let (label, der) = der::pem::decode_vec(s.as_bytes())
                .map_err(|e| malformed(format!("bad PEM: {e}")))?;
            if label != "PUBLIC KEY" {
                return Err(malformed(format!(
                    "PEM label {label:?}; expected \"PUBLIC KEY\" (SubjectPublicKeyInfo)"
                )));
            }
            return Self::from_spki_der(&der);
        }
        if bytes.first() == Some(&0x30) {
            return Self::from_spki_der(bytes);
        }
        if bytes.len() >= 2
            && usize::from(u16::from_be_bytes([bytes[0], bytes[1]])) == bytes.len() - 2
        {
            return Self::from_tpmt_public(&bytes[2..]);
        }
        Self::from_tpmt_public(bytes)
    }

    /// An AK from a marshalled `TPMT_PUBLIC`.
    pub fn from_tpmt_public(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "TPMT_PUBLIC");
        let key_type = r.u16("type")?;
        let name_alg = r.u16("nameAlg")?;
        let object_attributes = r.u32("objectAttributes")?;
        r.tpm2b("authPolicy", 64)?;
        // TPMT_SYM_DEF_OBJECT: an AK has none, but parse what a key may carry.
        let sym = r.u16("parameters.symmetric.algorithm")?;
        if sym != alg::NULL {
            r.u16("parameters.symmetric.keyBits")?;
            r.u16("parameters.symmetric.mode")?;
        }
        let scheme = r.u16("parameters.scheme.scheme")?;
        let scheme_hash = match scheme {
            alg::NULL | alg::RSAES => alg::NULL,
            alg::ECDAA => {
                let h = r.u16("parameters.scheme.hashAlg")?;
                r.u16("parameters.scheme.count")?;
                h
            }
            _ => r.u16("parameters.scheme.hashAlg")?,
        };
        let key = match key_type {
            alg::RSA => {
                let bits = r.u16("parameters.keyBits")?;
                let exponent = match r.u32("parameters.exponent")? {
                    0 => 65537,
                    e => e,
                };
                let n = r.tpm2b("unique.rsa", MAX_RSA_BITS / 8)?;
                if n.len() * 8 != usize::from(bits) {
                    return Err(r.err(format!(
                        "keyBits {bits} but the modulus has {} bytes",
                        n.len()
                    )));
                }
                Self::rsa(n, &exponent.to_be_bytes())?
            }
            alg::ECC => {
                let curve = r.u16("parameters.curveID")?;
                let kdf = r.u16("parameters.kdf.scheme")?;
                if kdf != alg::NULL {
                    r.u16("parameters.kdf.hashAlg")?;
                }
                let x = r.tpm2b("unique.ecc.x", 66)?.to_vec();
                let y = r.tpm2b("unique.ecc.y", 66)?.to_vec();
                let (len, name) = match curve {
                    ecc_curve::NIST_P256 => (32, "P-256"),
                    ecc_curve::NIST_P384 => (48, "P-384"),
                    other => {
                        return Err(r.err(format!(
                            "unsupported ECC curve {other:#06x}; supported: NIST P-256, NIST P-384"
                        )));
                    }
                };
                if x.len() != len || y.len() != len {
                    return Err(r.err(format!("{name} point coordinates must be {len} bytes")));
                }
                let mut sec1 = vec![0x04];
                sec1.extend_from_slice(&x);
                sec1.extend_from_slice(&y);
                let bad = |_| malformed(format!("the {name} point is not on the curve"));
                if len == 32 {
                    Key::P256(p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(bad)?)
                } else {
                    Key::P384(p384::ecdsa::VerifyingKey::from_sec1_bytes(&sec1).map_err(bad)?)
                }
            }
            other => {
                return Err(r.err(format!(
                    "unsupported key type {} ({other:#06x}); an AK is RSA or ECC",
                    alg::name(other)
                )));
            }
        };
        r.finish()?;
        let name = digest(name_alg, bytes).ok().map(|d| {
            let mut n = name_alg.to_be_bytes().to_vec();
            n.extend_from_slice(&d);
            n
        });
        Self::from_key(
            key,
            Some(TpmPublicInfo {
                name_alg,
                object_attributes,
                scheme,
                scheme_hash,
                name,
            }),
        )
    }

    /// Marshal as a `TPMT_PUBLIC` for a restricted signing key with `scheme`
    /// and `hash` (the shape `tpm2_createak` produces).
    pub fn to_tpmt_public(&self, scheme: u16, hash: u16) -> Vec<u8> {
        let mut w = Writer::default();
        let attrs = object_attr::FIXED_TPM
            | object_attr::FIXED_PARENT
            | object_attr::SENSITIVE_DATA_ORIGIN
            | object_attr::USER_WITH_AUTH
            | object_attr::RESTRICTED
            | object_attr::SIGN;
        let key_type = match &self.key {
            Key::Rsa(_) => alg::RSA,
            Key::P256(_) | Key::P384(_) => alg::ECC,
        };
        // type, nameAlg, objectAttributes, authPolicy, no symmetric
        // algorithm, the signing scheme: the same for every key type.
        w.u16(key_type)
            .u16(alg::SHA256)
            .u32(attrs)
            .tpm2b(&[])
            .u16(alg::NULL)
            .u16(scheme)
            .u16(hash);
        let (curve, point) = match &self.key {
            Key::Rsa(k) => {
                let n = k.n().to_bytes_be();
                let e = k
                    .e()
                    .to_bytes_be()
                    .iter()
                    .try_fold(0u32, |acc, &b| {
                        acc.checked_mul(256).map(|a| a | u32::from(b))
                    })
                    .unwrap_or(65537);
                w.u16(u16::try_from(n.len() * 8).unwrap_or(0))
                    .u32(if e == 65537 { 0 } else { e })
                    .tpm2b(&n);
                return w.0;
            }
            Key::P256(k) => (ecc_curve::NIST_P256, k.to_encoded_point(false).to_bytes()),
            Key::P384(k) => (ecc_curve::NIST_P384, k.to_encoded_point(false).to_bytes()),
        };
        // An uncompressed SEC1 point: 0x04, then x and y of equal length.
        let (x, y) = point[1..].split_at((point.len() - 1) / 2);
        w.u16(curve).u16(alg::NULL).tpm2b(x).tpm2b(y);
        w.0
    }

    /// The key as a DER SubjectPublicKeyInfo (the AK's identity here).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// SHA-256 of [`AkPublic::spki_der`], hex.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.spki_der))
    }

    /// The TPM facts, when the key was given as `TPMT_PUBLIC`.
    pub fn tpm_info(&self) -> Option<&TpmPublicInfo> {
        self.tpm.as_ref()
    }

    /// `RSA-2048`, `ECC P-256`, …
    pub fn describe(&self) -> String {
        match &self.key {
            Key::Rsa(k) => format!("RSA-{}", k.n().bits()),
            Key::P256(_) => "ECC P-256".into(),
            Key::P384(_) => "ECC P-384".into(),
        }
    }

    /// Facts for `raw.tpm_quote.ak`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "key": self.describe(),
            "spki_sha256": self.fingerprint(),
        });
        if let (Some(t), Some(obj)) = (&self.tpm, v.as_object_mut()) {
            obj.insert("name_alg".into(), alg::name(t.name_alg).into());
            obj.insert(
                "object_attributes".into(),
                format!("{:#010x}", t.object_attributes).into(),
            );
            if let Some(n) = &t.name {
                obj.insert("name".into(), hex::encode(n).into());
            }
        }
        v
    }

    /// Check that a key given as `TPMT_PUBLIC` is a restricted signing key:
    /// an unrestricted one signs any digest, including one of a forged
    /// `TPMS_ATTEST`, so its quotes prove nothing.
    pub fn check_attributes(&self) -> Result<()> {
        let Some(t) = &self.tpm else { return Ok(()) };
        let need = object_attr::SIGN | object_attr::RESTRICTED | object_attr::FIXED_TPM;
        if t.object_attributes & need != need {
            return Err(Error::mismatch(
                "tpm.ak_attributes",
                "attestation key is not a restricted, fixedTPM signing key (an unrestricted key can sign forged quotes)",
                format!("objectAttributes with sign|restricted|fixedTPM ({need:#010x})"),
                format!("{:#010x}", t.object_attributes),
            ));
        }
        Ok(())
    }

    /// Verify `sig` over `message` (a marshalled `TPMS_ATTEST`).
    pub fn verify(&self, message: &[u8], sig: &Signature) -> Result<()> {
        if let Some(t) = &self.tpm {
            if t.scheme != alg::NULL && (t.scheme, t.scheme_hash) != (sig.scheme(), sig.hash()) {
                return Err(Error::mismatch(
                    "tpm.signature_scheme",
                    "signature scheme differs from the one the AK is bound to",
                    format!("{} with {}", alg::name(t.scheme), alg::name(t.scheme_hash)),
                    format!("{} with {}", alg::name(sig.scheme()), alg::name(sig.hash())),
                ));
            }
        }
        let hashed = digest(sig.hash(), message)?;
        let scheme_mismatch = || {
            Error::mismatch(
                "tpm.signature_scheme",
                "signature algorithm does not fit the attestation key",
                format!("a signature for {}", self.describe()),
                alg::name(sig.scheme()).to_string(),
            )
        };
        let bad = || {
            Error::refused(
                "tpm.signature",
                format!(
                    "TPM quote signature ({} with {}) does not verify with the attestation key ({}, SPKI SHA-256 {})",
                    alg::name(sig.scheme()),
                    alg::name(sig.hash()),
                    self.describe(),
                    self.fingerprint()
                ),
            )
        };
        let ok = match (&self.key, sig) {
            (Key::Rsa(k), Signature::RsaSsa { hash, sig }) => {
                let scheme = match *hash {
                    alg::SHA256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
                    alg::SHA384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                    _ => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
                };
                k.verify(scheme, &hashed, sig).is_ok()
            }
            (Key::Rsa(k), Signature::RsaPss { hash, sig }) => {
                // TPMs use a salt as long as the digest (FIPS 186-4); some
                // older ones use the largest salt the key allows.
                let h_len = hashed.len();
                let em_len = (k.n().bits() - 1).div_ceil(8);
                let max_salt = em_len.saturating_sub(h_len + 2);
                [h_len, max_salt].into_iter().any(|salt| {
                    let scheme = match *hash {
                        alg::SHA256 => rsa::Pss::new_with_salt::<Sha256>(salt),
                        alg::SHA384 => rsa::Pss::new_with_salt::<sha2::Sha384>(salt),
                        _ => rsa::Pss::new_with_salt::<sha2::Sha512>(salt),
                    };
                    k.verify(scheme, &hashed, sig).is_ok()
                })
            }
            (Key::P256(k), Signature::Ecdsa { r, s, .. }) => {
                let (Some(r), Some(s)) = (fixed::<32>(r), fixed::<32>(s)) else {
                    return Err(bad());
                };
                p256::ecdsa::Signature::from_scalars(r, s)
                    .map(|sig| k.verify_prehash(&hashed, &sig).is_ok())
                    .unwrap_or(false)
            }
            (Key::P384(k), Signature::Ecdsa { r, s, .. }) => {
                let (Some(r), Some(s)) = (fixed::<48>(r), fixed::<48>(s)) else {
                    return Err(bad());
                };
                p384::ecdsa::Signature::from_scalars(r, s)
                    .map(|sig| k.verify_prehash(&hashed, &sig).is_ok())
                    .unwrap_or(false)
            }
            _ => return Err(scheme_mismatch()),
        };
        if ok { Ok(()) } else { Err(bad()) }
    }
}

/// Left-pad a big-endian integer (leading zeros stripped) to `N` bytes.
fn fixed<const N: usize>(v: &[u8]) -> Option<[u8; N]> {
    let start = v.iter().position(|&b| b != 0).unwrap_or(v.len());
    let v = &v[start..];
    if v.len() > N {
        return None;
    }
    let mut out = [0u8; N];
    out[N - v.len()..].copy_from_slice(v);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_width_scalars() {
        assert_eq!(fixed::<4>(&[0, 0, 1, 2]), Some([0, 0, 1, 2]));
        assert_eq!(fixed::<4>(&[0, 9, 9, 9, 9]), Some([9, 9, 9, 9]));
        assert_eq!(fixed::<4>(&[1, 9, 9, 9, 9]), None);
    }

    #[test]
    fn ecc_tpmt_public_round_trip() {
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let spki = p256::PublicKey::from(sk.verifying_key())
            .to_public_key_der()
            .unwrap();
        let ak = AkPublic::from_spki_der(spki.as_bytes()).unwrap();
        let tpmt = ak.to_tpmt_public(alg::ECDSA, alg::SHA256);
        let back = AkPublic::from_bytes(&tpmt).unwrap();
        assert_eq!(back.spki_der(), ak.spki_der());
        let t = back.tpm_info().unwrap();
        assert_eq!((t.scheme, t.scheme_hash), (alg::ECDSA, alg::SHA256));
        assert!(back.check_attributes().is_ok());
        // TPM2B_PUBLIC form: size prefix.
        let mut tpm2b = (tpmt.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(&tpmt);
        assert_eq!(
            AkPublic::from_bytes(&tpm2b).unwrap().spki_der(),
            ak.spki_der()
        );
    }

    #[test]
    fn small_rsa_keys_are_refused() {
        let e = AkPublic::from_rsa_components(&[0xff; 128], &[1, 0, 1]).unwrap_err();
        assert_eq!(e.check(), Some("tpm.ak_key"));
    }
}
