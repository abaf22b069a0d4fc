//! The resource JWE as the server seals it: the format is
//! [`veil_kbs_client::jwe`]'s (one place for headers, KDF and layout), the
//! primitives are AWS-LC's (ECDH on P-256/P-521, AES key wrap, AES-256-GCM,
//! the OS CSPRNG), several times faster than the pure-Rust ones the guest
//! links. The guest never links this module: it only decrypts, with the
//! pure-Rust code.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use aws_lc_rs::key_wrap::{AES_256, AesKek, KeyWrap};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use veil_kbs_client::jwe::{Curve, JweError, SealCrypto};
use veil_kbs_client::protocol::{FlattenedJwe, TeePubKey};
use zeroize::Zeroizing;

/// AWS-LC's primitives for [`veil_kbs_client::jwe::encrypt_with`].
pub struct AwsLc;

fn failed(what: &str) -> JweError {
    JweError::InvalidKey(format!("{what} failed (AWS-LC)"))
}

impl SealCrypto for AwsLc {
    fn ecdh_ephemeral(
        &self,
        curve: Curve,
        peer: &[u8],
    ) -> Result<(Zeroizing<Vec<u8>>, Vec<u8>), JweError> {
        let alg = match curve {
            Curve::P256 => &agreement::ECDH_P256,
            Curve::P521 => &agreement::ECDH_P521,
        };
        let eph = EphemeralPrivateKey::generate(alg, &SystemRandom::new())
            .map_err(|_| failed("ephemeral key generation"))?;
        let epk = eph
            .compute_public_key()
            .map_err(|_| failed("ephemeral public key"))?
            .as_ref()
            .to_vec();
        // AWS-LC checks that the peer's point is on the curve.
        let z = agreement::agree_ephemeral(
            eph,
            UnparsedPublicKey::new(alg, peer),
            JweError::InvalidKey(format!("{} point is not on the curve", curve.name())),
            |z| Ok(Zeroizing::new(z.to_vec())),
        )?;
        Ok((z, epk))
    }

    fn aes256_kw_wrap(&self, kek: &[u8; 32], cek: &[u8; 32]) -> Result<Vec<u8>, JweError> {
        let kek = AesKek::new(&AES_256, kek).map_err(|_| failed("AES key wrap key"))?;
        let mut out = vec![0u8; cek.len() + 8];
        let n = kek
            .wrap(cek, &mut out)
            .map_err(|_| failed("AES key wrap"))?
            .len();
        out.truncate(n);
        Ok(out)
    }

    fn aes256_gcm_seal(
        &self,
        key: &[u8; 32],
        iv: &[u8; 12],
        aad: &[u8],
        plaintext: &[u8],
    ) -> Result<Vec<u8>, JweError> {
        let key = LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, key).map_err(|_| failed("AES-256-GCM key"))?,
        );
        let mut buf = Vec::with_capacity(plaintext.len() + 16);
        buf.extend_from_slice(plaintext);
        key.seal_in_place_append_tag(Nonce::assume_unique_for_key(*iv), Aad::from(aad), &mut buf)
            .map_err(|_| failed("AES-256-GCM"))?;
        Ok(buf)
    }

    fn fill_random(&self, buf: &mut [u8]) -> Result<(), JweError> {
        SystemRandom::new()
            .fill(buf)
            .map_err(|_| failed("random generation"))
    }
}

/// Encrypt `plaintext` to a TEE public key, as a resource leaves the KBS.
pub fn encrypt(key: &TeePubKey, plaintext: &[u8]) -> Result<FlattenedJwe, JweError> {
    veil_kbs_client::jwe::encrypt_with(&AwsLc, key, plaintext)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_kbs_client::jwe::{KeyType, TeeKeyPair};

    /// What the server seals with AWS-LC, the guest's pure-Rust code opens;
    /// a flipped byte anywhere is refused.
    #[test]
    fn the_guest_opens_what_aws_lc_sealed_and_refuses_any_change() {
        for kind in [KeyType::EcP256, KeyType::EcP521, KeyType::Rsa2048] {
            let kp = TeeKeyPair::generate(kind).unwrap();
            let secret = b"a resource only the TEE may read".to_vec();
            let jwe = encrypt(&kp.public_jwk(), &secret).unwrap();
            assert_eq!(*kp.decrypt(&jwe).unwrap(), secret, "{kind:?}");
            // Each field, changed: the guest refuses, never returns other data.
            for field in 0..5 {
                let mut bad = jwe.clone();
                let s = match field {
                    0 => &mut bad.protected,
                    1 => &mut bad.encrypted_key,
                    2 => &mut bad.iv,
                    3 => &mut bad.ciphertext,
                    _ => &mut bad.tag,
                };
                if s.is_empty() {
                    continue;
                }
                let mid = s.len() / 2;
                let c = s.as_bytes()[mid];
                let r = if c == b'A' { "B" } else { "A" };
                s.replace_range(mid..mid + 1, r);
                assert!(kp.decrypt(&bad).is_err(), "{kind:?}: field {field} changed");
            }
            // Two seals of the same secret differ (fresh ephemeral key, CEK, IV).
            let again = encrypt(&kp.public_jwk(), &secret).unwrap();
            assert_ne!(again.ciphertext, jwe.ciphertext);
            assert_ne!(again.encrypted_key, jwe.encrypted_key);
        }
    }

    /// A point off the curve is refused by name before anything is sealed.
    #[test]
    fn a_point_off_the_curve_is_refused() {
        let kp = TeeKeyPair::generate(KeyType::EcP256).unwrap();
        let TeePubKey::EC { crv, alg, x, .. } = kp.public_jwk() else {
            panic!("EC key expected")
        };
        let bad = TeePubKey::EC {
            crv,
            alg,
            x: x.clone(),
            y: x,
        };
        let e = encrypt(&bad, b"x").unwrap_err().to_string();
        assert!(e.contains("not on the curve"), "{e}");
        // The same refusal as the pure-Rust path.
        let e2 = veil_kbs_client::jwe::encrypt(&bad, b"x")
            .unwrap_err()
            .to_string();
        assert_eq!(e, e2);
    }
}
