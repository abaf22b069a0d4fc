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
    verified: std::sync::Mutex<VerifiedCache>,
}

/// Tokens this KBS has already verified, by the SHA-256 of the token
/// string: an attested workload presents the same token on every resource
/// request, and re-checking its signature and re-parsing its claims was a
/// sixth of the cost of a resource GET. Only tokens whose signature
/// verified are entered, so a hit needs the very same token string (a
/// SHA-256 collision otherwise); expiry is still checked on every hit. The
/// cache is per signing key (a new key is a new `TokenSigner`), bounded,
/// and dropped with the server.
#[derive(Default)]
struct VerifiedCache {
    map: std::collections::HashMap<[u8; 32], (u64, serde_json::Value)>,
}

/// Verified tokens remembered at most.
const VERIFIED_CACHE_ENTRIES: usize = 16 * 1024;

impl VerifiedCache {
    fn get(&self, digest: &[u8; 32], now: u64) -> Option<serde_json::Value> {
        match self.map.get(digest) {
            Some((exp, claims)) if *exp > now => Some(claims.clone()),
            _ => None,
        }
    }

    fn insert(&mut self, digest: [u8; 32], exp: u64, claims: &serde_json::Value, now: u64) {
        if self.map.len() >= VERIFIED_CACHE_ENTRIES {
            self.map.retain(|_, (e, _)| *e > now);
            if self.map.len() >= VERIFIED_CACHE_ENTRIES {
                // Every entry is live: start over rather than track ages
                // (the cost is one signature check per live token).
                self.map.clear();
            }
        }
        self.map.insert(digest, (exp, claims.clone()));
    }
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
            verified: Default::default(),
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
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.verified_cache().get(&digest, now) {
            return Ok(claims);
        }
        let claims = self.verify_uncached(token, now)?;
        // `verify_uncached` checked exp is a number after now.
        let exp = claims.get("exp").and_then(|v| v.as_u64()).unwrap_or(0);
        self.verified_cache().insert(digest, exp, &claims, now);
        Ok(claims)
    }

    fn verified_cache(&self) -> std::sync::MutexGuard<'_, VerifiedCache> {
        // The cache holds only verified claims; a panic elsewhere while it
        // was locked leaves it consistent.
        self.verified.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn verify_uncached(&self, token: &str, now: u64) -> Result<serde_json::Value, String> {
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

    #[test]
    fn a_verified_token_is_remembered_but_still_expires_and_only_the_same_string_hits() {
        let s = TokenSigner::from_key(SigningKey::random(&mut OsRng)).unwrap();
        let t = s
            .sign(&serde_json::json!({"iss": ISSUER, "exp": 100, "x": 1}))
            .unwrap();
        let first = s.verify(&t, 10).unwrap();
        assert_eq!(s.verified_cache().map.len(), 1);
        assert_eq!(s.verify(&t, 20).unwrap(), first);
        // The same header and claims with another signature: not a hit.
        let (input, sig) = t.rsplit_once('.').unwrap();
        let mut flipped = B64URL.decode(sig).unwrap();
        flipped[3] ^= 1;
        let forged = format!("{input}.{}", B64URL.encode(&flipped));
        assert!(
            s.verify(&forged, 20)
                .unwrap_err()
                .contains("does not verify")
        );
        assert_eq!(
            s.verified_cache().map.len(),
            1,
            "a failed token is not cached"
        );
        // A remembered token still expires.
        assert!(s.verify(&t, 100).unwrap_err().contains("expired"));
        // Full of live tokens, the cache starts over and still answers.
        for i in 0..VERIFIED_CACHE_ENTRIES {
            let mut d = [0u8; 32];
            d[..8].copy_from_slice(&(i as u64).to_le_bytes());
            s.verified_cache()
                .insert(d, 1000, &serde_json::Value::Null, 10);
        }
        assert_eq!(s.verify(&t, 30).unwrap(), first);
        assert!(s.verified_cache().map.len() <= VERIFIED_CACHE_ENTRIES);
    }
}
