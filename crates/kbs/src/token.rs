//! The EAR attestation token: an ES256 JWS signed with the KBS's persistent
//! P-256 key (kept sealed under the KEK in the store), its verification on
//! every resource request, and the JWKS that publishes the public key.
//!
//! The key is stored and parsed as PKCS#8 with RustCrypto; signing and
//! verification run on AWS-LC (both happen on every handshake and every
//! resource request; see docs/attestation.md "Cryptography and speed").

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rand_core::OsRng;
use sha2::{Digest, Sha256};
use veil_attest::ecdsa::EcdsaKey;

use crate::secrets::Kek;
use crate::store::Store;

/// Name of the sealed signing key in the store.
pub const SIGNING_KEY_META: &str = "token-signing-key";
/// Issuer name in tokens.
pub const ISSUER: &str = "veil-kbs";
/// Largest token accepted on a resource request.
pub const MAX_TOKEN_BYTES: usize = 64 * 1024;

/// Signs and verifies EAR tokens.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    rng: SystemRandom,
    verifying: VerifyingKey,
    verifier: EcdsaKey,
    kid: String,
    jwk: serde_json::Value,
}

fn b64(b: &[u8]) -> String {
    B64URL.encode(b)
}

impl TokenSigner {
    /// Load the persistent key from the store, creating it on first start.
    pub fn load_or_create(store: &dyn Store, kek: &Kek) -> Result<Self, String> {
        let name = format!("meta:{SIGNING_KEY_META}");
        let key: SigningKey = match store
            .get_sealed_meta(SIGNING_KEY_META)
            .map_err(|e| e.to_string())?
        {
            Some(blob) => {
                let der = kek.open(&name, &blob).map_err(|e| e.to_string())?;
                SigningKey::from_pkcs8_der(&der).map_err(|e| format!("token signing key: {e}"))?
            }
            None => {
                let key = SigningKey::random(&mut OsRng);
                let der = key
                    .to_pkcs8_der()
                    .map_err(|e| format!("token signing key: {e}"))?;
                // Replicas starting together on one shared store keep the
                // first key written.
                let stored = store
                    .put_sealed_meta_if_absent(SIGNING_KEY_META, &kek.seal(&name, der.as_bytes()))
                    .map_err(|e| e.to_string())?;
                let der = kek.open(&name, &stored).map_err(|e| e.to_string())?;
                SigningKey::from_pkcs8_der(&der).map_err(|e| format!("token signing key: {e}"))?
            }
        };
        Self::from_key(key)
    }

    /// A signer for a given key.
    pub fn from_key(key: SigningKey) -> Result<Self, String> {
        let verifying = *key.verifying_key();
        let der = zeroize::Zeroizing::new(
            key.to_pkcs8_der()
                .map_err(|e| format!("token signing key: {e}"))?
                .as_bytes()
                .to_vec(),
        );
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der)
            .map_err(|e| format!("token signing key (AWS-LC): {e}"))?;
        let point = verifying.to_encoded_point(false);
        if pair.public_key().as_ref() != point.as_bytes() {
            return Err("token signing key: AWS-LC derived another public key".into());
        }
        let spki = verifying
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        let kid = hex::encode(&Sha256::digest(&spki)[..8]);
        let jwk = serde_json::json!({
            "kty": "EC", "crv": "P-256",
            "x": b64(point.x().map(|v| &v[..]).unwrap_or_default()),
            "y": b64(point.y().map(|v| &v[..]).unwrap_or_default()),
            "alg": "ES256", "use": "sig", "kid": kid,
        });
        Ok(TokenSigner {
            key: pair,
            rng: SystemRandom::new(),
            verifier: EcdsaKey::p256(&verifying),
            verifying,
            kid,
            jwk,
        })
    }

    /// Key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS document published at `/kbs/v0/jwks`.
    pub fn jwks(&self) -> serde_json::Value {
        serde_json::json!({ "keys": [self.jwk] })
    }

    /// Sign claims into a compact JWS.
    pub fn sign(&self, claims: &serde_json::Value) -> Result<String, String> {
        let mut jwk = self.jwk.clone();
        if let Some(o) = jwk.as_object_mut() {
            o.remove("use");
            o.remove("kid");
        }
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid, "jwk": jwk});
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        // AWS-LC fails to sign only when the system RNG fails: then no token.
        let sig = self
            .key
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| "signing the token failed (the system RNG failed)".to_string())?;
        Ok(format!("{input}.{}", b64(sig.as_ref())))
    }

    /// Verify a token issued by this KBS and return its claims.
    pub fn verify(&self, token: &str, now: u64) -> Result<serde_json::Value, String> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(format!(
                "token is {} bytes, limit {MAX_TOKEN_BYTES}",
                token.len()
            ));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err("not a compact JWS (three dot-separated parts)".into());
        };
        let header: serde_json::Value = B64URL
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("header is not base64url JSON")?;
        if header.get("alg").and_then(|v| v.as_str()) != Some("ES256") {
            return Err(format!(
                "alg must be ES256, got {}",
                header.get("alg").unwrap_or(&serde_json::Value::Null)
            ));
        }
        let kid = header.get("kid").and_then(|v| v.as_str()).unwrap_or("");
        if kid != self.kid {
            return Err(format!(
                "token was signed by key {kid:?}, this KBS signs with {:?} (a token from another or an earlier KBS; attest again)",
                self.kid
            ));
        }
        let sig_bytes = B64URL.decode(s).map_err(|_| "signature is not base64url")?;
        let sig = Signature::from_slice(&sig_bytes).map_err(|_| "signature is not a P-256 r||s")?;
        if !self
            .verifier
            .verify_p256(format!("{h}.{p}").as_bytes(), &sig)
        {
            return Err("signature does not verify with this KBS's token key".into());
        }
        let claims: serde_json::Value = B64URL
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or("payload is not base64url JSON")?;
        let exp = claims
            .get("exp")
            .and_then(|v| v.as_u64())
            .ok_or("token has no exp")?;
        if exp <= now {
            return Err(format!("token expired at {exp}, now is {now}"));
        }
        if claims.get("iss").and_then(|v| v.as_str()) != Some(ISSUER) {
            return Err(format!("issuer must be {ISSUER:?}"));
        }
        Ok(claims)
    }

    /// The token public key (what the JWKS publishes).
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_expiry_and_foreign_keys() {
        let s = TokenSigner::from_key(SigningKey::random(&mut OsRng)).unwrap();
        let t = s
            .sign(&serde_json::json!({"iss": ISSUER, "exp": 100}))
            .unwrap();
        assert!(s.verify(&t, 50).is_ok());
        // Signed on AWS-LC, an ordinary ES256 JWS: RustCrypto (any JOSE
        // library with the JWKS key) verifies it, and not a changed payload.
        {
            use p256::ecdsa::signature::Verifier as _;
            let (input, sig) = t.rsplit_once('.').unwrap();
            let sig = Signature::from_slice(&B64URL.decode(sig).unwrap()).unwrap();
            assert!(s.verifying_key().verify(input.as_bytes(), &sig).is_ok());
            let forged = input.replacen('.', ".e30", 1);
            assert!(s.verifying_key().verify(forged.as_bytes(), &sig).is_err());
            let mut flipped = sig.to_bytes().to_vec();
            flipped[10] ^= 1;
            let t2 = format!("{input}.{}", B64URL.encode(&flipped));
            assert!(s.verify(&t2, 50).unwrap_err().contains("does not verify"));
        }
        assert!(s.verify(&t, 100).unwrap_err().contains("expired"));
        let other = TokenSigner::from_key(SigningKey::random(&mut OsRng)).unwrap();
        assert!(other.verify(&t, 50).unwrap_err().contains("signed by key"));
        let mut bad = t.clone();
        bad.push('A');
        assert!(s.verify(&bad, 50).is_err());
        assert!(s.verify("a.b", 50).is_err());
    }
}
