//! JWE key wrapping as ocicrypt does it (`org.opencontainers.image.enc.keys.jwe`).
//!
//! Content encryption A256GCM; recipients `RSA-OAEP` (SHA-1, go-jose's
//! `RSA_OAEP`), `RSA-OAEP-256`, or `ECDH-ES+A256KW` on P-256/P-384/P-521
//! (Concat KDF with SHA-256, RFC 7518 §4.6). Both the flattened and the
//! general JSON serializations are read; output matches go-jose's
//! `FullSerialize` (flattened for one recipient, all headers protected).

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use rand_core::{OsRng, RngCore};
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

use super::keys::{PrivateKey, PublicKey};
use super::{CryptError, KeyUnwrapper, KeyWrapper};

/// Annotation holding JWE-wrapped layer keys.
pub const ANNOTATION_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// Largest JWE document accepted.
pub const MAX_JWE_BYTES: usize = 256 * 1024;
/// Most recipients per JWE.
pub const MAX_RECIPIENTS: usize = 256;

/// Wraps layer keys to one or more public keys, as one JWE.
#[derive(Debug, Clone)]
pub struct JweWrapper {
    recipients: Vec<PublicKey>,
}

impl JweWrapper {
    /// A wrapper for `recipients` (at least one).
    pub fn new(recipients: Vec<PublicKey>) -> Self {
        JweWrapper { recipients }
    }
}

impl KeyWrapper for JweWrapper {
    fn annotation_key(&self) -> String {
        ANNOTATION_JWE.into()
    }

    fn wrap(&self, private_opts: &[u8]) -> Result<Vec<u8>, CryptError> {
        if self.recipients.is_empty() {
            return Err(CryptError::Key(
                "JWE wrapping needs at least one public key".into(),
            ));
        }
        let mut cek = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(&mut cek[..]);
        let mut recipients = Vec::new();
        for pk in &self.recipients {
            recipients.push(wrap_cek(pk, &cek)?);
        }
        let single = recipients.len() == 1;
        let mut protected = Map::new();
        protected.insert("enc".into(), json!("A256GCM"));
        if single {
            // go-jose moves the only recipient's header into the protected one.
            for (k, v) in &recipients[0].0 {
                protected.insert(k.clone(), v.clone());
            }
        }
        let protected_b64 = B64URL.encode(serde_json::to_vec(&protected).map_err(json_err)?);
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let cipher = Aes256Gcm::new_from_slice(&cek[..])
            .map_err(|_| CryptError::Internal("AES key length"))?;
        let sealed = cipher
            .encrypt(
                &Nonce::from(iv),
                Payload {
                    msg: private_opts,
                    aad: protected_b64.as_bytes(),
                },
            )
            .map_err(|_| CryptError::Internal("AES-GCM encryption failed"))?;
        let (ct, tag) = sealed.split_at(sealed.len() - 16);
        let mut doc = Map::new();
        doc.insert("protected".into(), json!(protected_b64));
        if single {
            doc.insert(
                "encrypted_key".into(),
                json!(B64URL.encode(&recipients[0].1)),
            );
        } else {
            let list: Vec<Value> = recipients
                .iter()
                .map(|(h, ek)| json!({"header": h, "encrypted_key": B64URL.encode(ek)}))
                .collect();
            doc.insert("recipients".into(), Value::Array(list));
        }
        doc.insert("iv".into(), json!(B64URL.encode(iv)));
        doc.insert("ciphertext".into(), json!(B64URL.encode(ct)));
        doc.insert("tag".into(), json!(B64URL.encode(tag)));
        serde_json::to_vec(&doc).map_err(json_err)
    }
}

fn json_err(e: serde_json::Error) -> CryptError {
    CryptError::Malformed {
        what: "JWE".into(),
        reason: e.to_string(),
    }
}

/// Wrap the CEK for one recipient: (per-recipient header, encrypted_key).
fn wrap_cek(pk: &PublicKey, cek: &[u8; 32]) -> Result<(Map<String, Value>, Vec<u8>), CryptError> {
    let mut header = Map::new();
    match pk {
        PublicKey::Rsa(k) => {
            header.insert("alg".into(), json!("RSA-OAEP"));
            let ek = k
                .encrypt(&mut OsRng, rsa::Oaep::new::<sha1::Sha1>(), cek)
                .map_err(|e| CryptError::Key(format!("RSA-OAEP wrapping: {e}")))?;
            Ok((header, ek))
        }
        PublicKey::P256(k) => ecdh_wrap::<p256::NistP256>(k, cek, header),
        PublicKey::P384(k) => ecdh_wrap::<p384::NistP384>(k, cek, header),
        PublicKey::P521(k) => ecdh_wrap::<p521::NistP521>(k, cek, header),
    }
}

fn ecdh_wrap<C>(
    pk: &p256::elliptic_curve::PublicKey<C>,
    cek: &[u8; 32],
    mut header: Map<String, Value>,
) -> Result<(Map<String, Value>, Vec<u8>), CryptError>
where
    C: p256::elliptic_curve::CurveArithmetic + p256::elliptic_curve::JwkParameters,
    p256::elliptic_curve::AffinePoint<C>: p256::elliptic_curve::sec1::FromEncodedPoint<C>
        + p256::elliptic_curve::sec1::ToEncodedPoint<C>,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
{
    let eph = p256::elliptic_curve::ecdh::EphemeralSecret::<C>::random(&mut OsRng);
    let z = eph.diffie_hellman(pk);
    let epk = eph.public_key().to_jwk();
    let kek = concat_kdf(z.raw_secret_bytes(), "ECDH-ES+A256KW", &[], &[]);
    let kw = aes_kw::KekAes256::new(&(*kek).into());
    let ek = kw
        .wrap_vec(cek)
        .map_err(|e| CryptError::Key(format!("AES key wrap: {e}")))?;
    header.insert("alg".into(), json!("ECDH-ES+A256KW"));
    header.insert("epk".into(), serde_json::to_value(&epk).map_err(json_err)?);
    Ok((header, ek))
}

/// Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) for a 256-bit key.
fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    for part in [alg.as_bytes(), apu, apv] {
        h.update((part.len() as u32).to_be_bytes());
        h.update(part);
    }
    h.update(256u32.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    out
}

/// Unwraps JWE recipients with private keys.
#[derive(Debug, Clone)]
pub struct JweUnwrapper {
    keys: Vec<PrivateKey>,
}

impl JweUnwrapper {
    /// An unwrapper trying each of `keys`.
    pub fn new(keys: Vec<PrivateKey>) -> Self {
        JweUnwrapper { keys }
    }
}

impl KeyUnwrapper for JweUnwrapper {
    fn annotation_key(&self) -> String {
        ANNOTATION_JWE.into()
    }

    fn unwrap(&self, blob: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, CryptError> {
        let jwe = ParsedJwe::parse(blob)?;
        for key in &self.keys {
            for r in &jwe.recipients {
                if let Some(cek) = unwrap_cek(key, r)? {
                    return jwe.decrypt(&cek).map(Some);
                }
            }
        }
        Ok(None)
    }
}

struct Recipient {
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
}

struct ParsedJwe {
    protected_b64: String,
    aad_b64: Option<String>,
    recipients: Vec<Recipient>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
}

fn malformed(reason: impl Into<String>) -> CryptError {
    CryptError::Malformed {
        what: "JWE".into(),
        reason: reason.into(),
    }
}

fn b64_field(doc: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, CryptError> {
    match doc.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => B64URL
            .decode(s.trim_end_matches('='))
            .map(Some)
            .map_err(|e| malformed(format!("{name}: {e}"))),
        Some(_) => Err(malformed(format!("{name} is not a string"))),
    }
}

fn object(v: Option<&Value>, name: &str) -> Result<Map<String, Value>, CryptError> {
    match v {
        None => Ok(Map::new()),
        Some(Value::Object(m)) => Ok(m.clone()),
        Some(_) => Err(malformed(format!("{name} is not an object"))),
    }
}

impl ParsedJwe {
    fn parse(blob: &[u8]) -> Result<Self, CryptError> {
        if blob.len() > MAX_JWE_BYTES {
            return Err(malformed(format!(
                "{} bytes (at most {MAX_JWE_BYTES})",
                blob.len()
            )));
        }
        let doc: Map<String, Value> =
            serde_json::from_slice(blob).map_err(|e| malformed(e.to_string()))?;
        let protected_b64 = match doc.get("protected") {
            Some(Value::String(s)) => s.clone(),
            None => String::new(),
            Some(_) => return Err(malformed("protected is not a string")),
        };
        let protected: Map<String, Value> = if protected_b64.is_empty() {
            Map::new()
        } else {
            let raw = B64URL
                .decode(&protected_b64)
                .map_err(|e| malformed(format!("protected: {e}")))?;
            serde_json::from_slice(&raw).map_err(|e| malformed(format!("protected header: {e}")))?
        };
        let shared = object(doc.get("unprotected"), "unprotected")?;
        let mut base = protected.clone();
        for (k, v) in shared {
            if base.insert(k.clone(), v).is_some() {
                return Err(malformed(format!(
                    "header {k:?} is both protected and unprotected"
                )));
            }
        }
        if let Some(zip) = base.get("zip") {
            return Err(malformed(format!(
                "compressed JWE (zip {zip}) is not supported"
            )));
        }
        match base.get("enc").and_then(Value::as_str) {
            Some("A256GCM") => {}
            other => {
                return Err(malformed(format!(
                    "content encryption {other:?} (expected \"A256GCM\")"
                )));
            }
        }
        let mut recipients = Vec::new();
        let mk = |h: Map<String, Value>, ek: Option<Vec<u8>>| -> Result<Recipient, CryptError> {
            let mut header = base.clone();
            for (k, v) in h {
                if header.insert(k.clone(), v).is_some() {
                    return Err(malformed(format!("header {k:?} appears twice")));
                }
            }
            Ok(Recipient {
                header,
                encrypted_key: ek.unwrap_or_default(),
            })
        };
        match doc.get("recipients") {
            Some(Value::Array(list)) => {
                if list.is_empty() || list.len() > MAX_RECIPIENTS {
                    return Err(malformed(format!(
                        "{} recipients (expected 1 to {MAX_RECIPIENTS})",
                        list.len()
                    )));
                }
                for r in list {
                    let Value::Object(r) = r else {
                        return Err(malformed("recipient is not an object"));
                    };
                    recipients.push(mk(
                        object(r.get("header"), "header")?,
                        b64_field(r, "encrypted_key")?,
                    )?);
                }
            }
            Some(_) => return Err(malformed("recipients is not an array")),
            None => recipients.push(mk(
                object(doc.get("header"), "header")?,
                b64_field(&doc, "encrypted_key")?,
            )?),
        }
        let aad_b64 = match doc.get("aad") {
            Some(Value::String(s)) => Some(s.clone()),
            None => None,
            Some(_) => return Err(malformed("aad is not a string")),
        };
        let req = |name: &str| -> Result<Vec<u8>, CryptError> {
            b64_field(&doc, name)?.ok_or_else(|| malformed(format!("missing {name}")))
        };
        Ok(ParsedJwe {
            protected_b64,
            aad_b64,
            recipients,
            iv: req("iv")?,
            ciphertext: req("ciphertext")?,
            tag: req("tag")?,
        })
    }

    fn decrypt(&self, cek: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptError> {
        let iv: [u8; 12] = match self.iv.as_slice().try_into() {
            Ok(iv) if self.tag.len() == 16 && cek.len() == 32 => iv,
            _ => {
                return Err(malformed(
                    "A256GCM needs a 12-byte iv, a 16-byte tag and a 32-byte key",
                ));
            }
        };
        let mut aad = self.protected_b64.clone();
        if let Some(a) = &self.aad_b64 {
            aad.push('.');
            aad.push_str(a);
        }
        let mut msg = self.ciphertext.clone();
        msg.extend_from_slice(&self.tag);
        let cipher =
            Aes256Gcm::new_from_slice(cek).map_err(|_| CryptError::Internal("AES key length"))?;
        cipher
            .decrypt(
                &Nonce::from(iv),
                Payload {
                    msg: &msg,
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| CryptError::Refused {
                check: "JWE authentication tag",
                reason: "the wrapped key options do not decrypt under the recipient's key (tampered JWE)".into(),
            })
    }
}

/// Try to unwrap this recipient's CEK with `key`; `None` when the recipient
/// is for another key.
fn unwrap_cek(key: &PrivateKey, r: &Recipient) -> Result<Option<Zeroizing<Vec<u8>>>, CryptError> {
    let alg = r.header.get("alg").and_then(Value::as_str).unwrap_or("");
    match (key, alg) {
        (PrivateKey::Rsa(k), "RSA-OAEP") => Ok(k
            .decrypt(rsa::Oaep::new::<sha1::Sha1>(), &r.encrypted_key)
            .ok()
            .map(Zeroizing::new)),
        (PrivateKey::Rsa(k), "RSA-OAEP-256") => Ok(k
            .decrypt(rsa::Oaep::new::<Sha256>(), &r.encrypted_key)
            .ok()
            .map(Zeroizing::new)),
        (PrivateKey::P256(k), "ECDH-ES+A256KW") => ecdh_unwrap::<p256::NistP256>(k, r),
        (PrivateKey::P384(k), "ECDH-ES+A256KW") => ecdh_unwrap::<p384::NistP384>(k, r),
        (PrivateKey::P521(k), "ECDH-ES+A256KW") => ecdh_unwrap::<p521::NistP521>(k, r),
        _ => Ok(None),
    }
}

fn ecdh_unwrap<C>(
    sk: &p256::elliptic_curve::SecretKey<C>,
    r: &Recipient,
) -> Result<Option<Zeroizing<Vec<u8>>>, CryptError>
where
    C: p256::elliptic_curve::CurveArithmetic + p256::elliptic_curve::JwkParameters,
    p256::elliptic_curve::AffinePoint<C>: p256::elliptic_curve::sec1::FromEncodedPoint<C>
        + p256::elliptic_curve::sec1::ToEncodedPoint<C>,
    p256::elliptic_curve::FieldBytesSize<C>: p256::elliptic_curve::sec1::ModulusSize,
{
    let Some(epk) = r.header.get("epk") else {
        return Err(malformed("ECDH-ES recipient without epk"));
    };
    let jwk: p256::elliptic_curve::JwkEcKey =
        serde_json::from_value(epk.clone()).map_err(|e| malformed(format!("epk: {e}")))?;
    // An epk on another curve is for another key.
    if jwk.crv() != C::CRV {
        return Ok(None);
    }
    let epk = jwk
        .to_public_key::<C>()
        .map_err(|_| malformed("epk is not a valid point on its curve"))?;
    let z = p256::elliptic_curve::ecdh::diffie_hellman(sk.to_nonzero_scalar(), epk.as_affine());
    let field = |name: &str| -> Result<Vec<u8>, CryptError> {
        match r.header.get(name) {
            None => Ok(Vec::new()),
            Some(Value::String(s)) => B64URL
                .decode(s)
                .map_err(|e| malformed(format!("{name}: {e}"))),
            Some(_) => Err(malformed(format!("{name} is not a string"))),
        }
    };
    let kek = concat_kdf(
        z.raw_secret_bytes(),
        "ECDH-ES+A256KW",
        &field("apu")?,
        &field("apv")?,
    );
    let kw = aes_kw::KekAes256::new(&(*kek).into());
    // A failed unwrap means this recipient is not for this key.
    Ok(kw.unwrap_vec(&r.encrypted_key).ok().map(Zeroizing::new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_rsa_and_ec_multi_recipient() {
        let rsa_sk = rsa::RsaPrivateKey::new(&mut OsRng, 2048).unwrap();
        let ec_sk = p256::SecretKey::random(&mut OsRng);
        let p384_sk = p384::SecretKey::random(&mut OsRng);
        let w = JweWrapper::new(vec![
            PublicKey::Rsa(rsa_sk.to_public_key()),
            PublicKey::P256(ec_sk.public_key()),
            PublicKey::P384(p384_sk.public_key()),
        ]);
        let blob = w.wrap(b"secret options").unwrap();
        for key in [
            PrivateKey::Rsa(Box::new(rsa_sk)),
            PrivateKey::P256(ec_sk),
            PrivateKey::P384(p384_sk),
        ] {
            let out = JweUnwrapper::new(vec![key]).unwrap(&blob).unwrap().unwrap();
            assert_eq!(&out[..], b"secret options");
        }
        let other = p256::SecretKey::random(&mut OsRng);
        assert!(
            JweUnwrapper::new(vec![PrivateKey::P256(other)])
                .unwrap(&blob)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn single_recipient_is_flattened_and_tamper_evident() {
        let ec_sk = p256::SecretKey::random(&mut OsRng);
        let blob = JweWrapper::new(vec![PublicKey::P256(ec_sk.public_key())])
            .wrap(b"x")
            .unwrap();
        let doc: Value = serde_json::from_slice(&blob).unwrap();
        assert!(doc.get("recipients").is_none() && doc.get("encrypted_key").is_some());
        let mut doc = doc.as_object().unwrap().clone();
        doc.insert("ciphertext".into(), json!(B64URL.encode(b"y")));
        let tampered = serde_json::to_vec(&doc).unwrap();
        let err = JweUnwrapper::new(vec![PrivateKey::P256(ec_sk)])
            .unwrap(&tampered)
            .unwrap_err();
        assert!(matches!(err, CryptError::Refused { .. }), "{err}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_jwe_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let sk = p256::SecretKey::from_slice(&[1u8; 32]).unwrap();
            let _ = JweUnwrapper::new(vec![PrivateKey::P256(sk)]).unwrap(&bytes);
        }

        #[test]
        fn arbitrary_json_jwe_never_panics(
            protected in "[A-Za-z0-9_-]{0,40}",
            ek in "[A-Za-z0-9_-]{0,60}",
            alg in proptest::sample::select(vec!["RSA-OAEP", "ECDH-ES+A256KW", "dir", ""]),
        ) {
            let doc = json!({"protected": protected, "header": {"alg": alg, "epk": {"kty":"EC","crv":"P-256","x":ek,"y":ek}},
                "encrypted_key": ek, "iv": ek, "ciphertext": ek, "tag": ek, "unprotected": {"enc": "A256GCM"}});
            let sk = p256::SecretKey::from_slice(&[1u8; 32]).unwrap();
            let _ = JweUnwrapper::new(vec![PrivateKey::P256(sk)]).unwrap(&serde_json::to_vec(&doc).unwrap());
        }
    }
}
