//! ECDSA signature verification (P-256/SHA-256, P-384/SHA-384) for
//! evidence, certificates and tokens, on AWS-LC (`aws-lc-rs`).
//!
//! Keys and signatures are still *parsed* by the RustCrypto types the
//! callers already use (strict SEC1/SPKI and DER decoding, the same
//! refusals as before); only the verification, the costly part, runs on
//! AWS-LC, whose P-384 verify is about 6× RustCrypto's and within a few
//! percent of OpenSSL's on this machine (`veil bench attest` prints both).
//! The key is parsed into AWS-LC once per [`EcdsaKey`], so a cached key
//! (an SNP chain cache entry, an NVIDIA device chain, the KBS token key)
//! verifies without re-parsing. Host side only: the in-guest agent does not
//! link this crate.

use aws_lc_rs::signature::{self, ParsedPublicKey};

/// A public key ready to verify fixed-size (r ‖ s) signatures.
#[derive(Clone)]
pub struct EcdsaKey {
    key: ParsedPublicKey,
    /// Bytes of r ‖ s for this curve.
    sig_len: usize,
}

impl std::fmt::Debug for EcdsaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EcdsaKey")
            .field("sig_len", &self.sig_len)
            .finish_non_exhaustive()
    }
}

impl EcdsaKey {
    /// A P-384 key (verifies ECDSA with SHA-384).
    pub fn p384(vk: &p384::ecdsa::VerifyingKey) -> Self {
        let point = vk.to_encoded_point(false);
        Self::new(&signature::ECDSA_P384_SHA384_FIXED, point.as_bytes(), 96)
    }

    /// A P-256 key (verifies ECDSA with SHA-256).
    pub fn p256(vk: &p256::ecdsa::VerifyingKey) -> Self {
        let point = vk.to_encoded_point(false);
        Self::new(&signature::ECDSA_P256_SHA256_FIXED, point.as_bytes(), 64)
    }

    fn new(alg: &'static signature::EcdsaVerificationAlgorithm, point: &[u8], n: usize) -> Self {
        // The point comes from a RustCrypto key, which already checked that
        // it is on the curve and not the identity: AWS-LC accepts any such.
        let key = ParsedPublicKey::new(alg, point)
            .expect("a RustCrypto-validated uncompressed point is a valid AWS-LC key");
        EcdsaKey { key, sig_len: n }
    }

    /// Verify `sig` (r ‖ s, big-endian, each the curve's size) over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> bool {
        sig.len() == self.sig_len && self.key.verify_sig(msg, sig).is_ok()
    }

    /// Verify a P-384 signature already parsed by RustCrypto.
    pub fn verify_p384(&self, msg: &[u8], sig: &p384::ecdsa::Signature) -> bool {
        self.verify(msg, &sig.to_bytes())
    }

    /// Verify a P-256 signature already parsed by RustCrypto.
    pub fn verify_p256(&self, msg: &[u8], sig: &p256::ecdsa::Signature) -> bool {
        self.verify(msg, &sig.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;
    use proptest::prelude::*;

    fn p384_pair(seed: u8) -> (p384::ecdsa::SigningKey, EcdsaKey) {
        let sk = p384::ecdsa::SigningKey::from_slice(&[seed.max(1); 48]).unwrap();
        let k = EcdsaKey::p384(sk.verifying_key());
        (sk, k)
    }

    #[test]
    fn agrees_with_rustcrypto_on_valid_and_altered_signatures() {
        use p384::ecdsa::signature::Verifier as _;
        let (sk, k) = p384_pair(7);
        let msg = b"an SNP report's signed bytes";
        let sig: p384::ecdsa::Signature = sk.sign(msg);
        assert!(k.verify_p384(msg, &sig));
        assert!(sk.verifying_key().verify(msg, &sig).is_ok());
        assert!(!k.verify_p384(b"another message", &sig));
        // Another key, a truncated signature, a P-256-sized one.
        let (_, other) = p384_pair(9);
        assert!(!other.verify_p384(msg, &sig));
        assert!(!k.verify(msg, &sig.to_bytes()[..95]));
        assert!(!k.verify(msg, &[0u8; 64]));

        let sk2 = p256::ecdsa::SigningKey::from_slice(&[3u8; 32]).unwrap();
        let k2 = EcdsaKey::p256(sk2.verifying_key());
        let s2: p256::ecdsa::Signature = sk2.sign(msg);
        assert!(k2.verify_p256(msg, &s2));
        assert!(!k2.verify_p256(b"x", &s2));
        // A P-384 key never accepts a P-256 signature's bytes.
        assert!(!k.verify(msg, &s2.to_bytes()));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any flipped bit of message or signature is refused, exactly as
        /// RustCrypto refuses it.
        #[test]
        fn a_flipped_bit_is_refused_like_rustcrypto(
            msg in proptest::collection::vec(any::<u8>(), 1..256),
            bit in 0usize..(96 * 8),
            in_sig in any::<bool>(),
        ) {
            use p384::ecdsa::signature::Verifier as _;
            let (sk, k) = p384_pair(11);
            let sig: p384::ecdsa::Signature = sk.sign(&msg);
            let mut m = msg.clone();
            let mut s = sig.to_bytes().to_vec();
            if in_sig { s[bit / 8] ^= 1 << (bit % 8); } else { let i = (bit / 8) % m.len(); m[i] ^= 1 << (bit % 8); }
            let rc = p384::ecdsa::Signature::from_slice(&s)
                .is_ok_and(|sg| sk.verifying_key().verify(&m, &sg).is_ok());
            prop_assert_eq!(k.verify(&m, &s), rc);
            prop_assert!(!k.verify(&m, &s));
        }
    }
}
