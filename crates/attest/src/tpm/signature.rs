//! `TPMT_SIGNATURE` (TPM 2.0 Library, Part 2, §11.3.4) for the schemes an
//! attestation key uses: RSASSA-PKCS1-v1_5, RSASSA-PSS and ECDSA.
//!
//! ```text
//! TPMT_SIGNATURE
//!   sigAlg     u16                      TPM_ALG_RSASSA | TPM_ALG_RSAPSS | TPM_ALG_ECDSA
//!   signature  TPMU_SIGNATURE
//!     RSA:   TPMS_SIGNATURE_RSA { hash u16, sig TPM2B_PUBLIC_KEY_RSA }
//!     ECDSA: TPMS_SIGNATURE_ECC { hash u16, signatureR TPM2B_ECC_PARAMETER,
//!                                           signatureS TPM2B_ECC_PARAMETER }
//! ```

use super::alg;
use super::wire::{Reader, Writer};
use crate::error::Result;

/// Largest RSA signature (4096-bit key).
pub const MAX_RSA_SIG_LEN: usize = 512;
/// Largest ECC parameter (P-521).
pub const MAX_ECC_PARAM_LEN: usize = 66;

/// A TPM signature over a `TPMS_ATTEST`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// RSASSA-PKCS1-v1_5 (`TPM_ALG_RSASSA`).
    RsaSsa {
        /// Digest algorithm (`TPM_ALG_SHA256`, …).
        hash: u16,
        /// The signature, as long as the key's modulus.
        sig: Vec<u8>,
    },
    /// RSASSA-PSS (`TPM_ALG_RSAPSS`).
    RsaPss {
        /// Digest algorithm (also the MGF1 hash).
        hash: u16,
        /// The signature.
        sig: Vec<u8>,
    },
    /// ECDSA (`TPM_ALG_ECDSA`).
    Ecdsa {
        /// Digest algorithm.
        hash: u16,
        /// `r`, big-endian.
        r: Vec<u8>,
        /// `s`, big-endian.
        s: Vec<u8>,
    },
}

impl Signature {
    /// Parse a marshalled `TPMT_SIGNATURE`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "TPMT_SIGNATURE");
        let sig_alg = r.u16("sigAlg")?;
        let sig = match sig_alg {
            alg::RSASSA | alg::RSAPSS => {
                let hash = r.u16("signature.hash")?;
                let sig = r.tpm2b("signature.sig", MAX_RSA_SIG_LEN)?.to_vec();
                if sig_alg == alg::RSASSA {
                    Signature::RsaSsa { hash, sig }
                } else {
                    Signature::RsaPss { hash, sig }
                }
            }
            alg::ECDSA => {
                let hash = r.u16("signature.hash")?;
                let sr = r.tpm2b("signature.signatureR", MAX_ECC_PARAM_LEN)?.to_vec();
                let ss = r.tpm2b("signature.signatureS", MAX_ECC_PARAM_LEN)?.to_vec();
                Signature::Ecdsa { hash, r: sr, s: ss }
            }
            other => {
                return Err(r.err(format!(
                    "unsupported sigAlg {} ({other:#06x}); supported: RSASSA, RSAPSS, ECDSA",
                    alg::name(other)
                )));
            }
        };
        r.finish()?;
        Ok(sig)
    }

    /// Marshal to a `TPMT_SIGNATURE`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        match self {
            Signature::RsaSsa { hash, sig } => w.u16(alg::RSASSA).u16(*hash).tpm2b(sig),
            Signature::RsaPss { hash, sig } => w.u16(alg::RSAPSS).u16(*hash).tpm2b(sig),
            Signature::Ecdsa { hash, r, s } => w.u16(alg::ECDSA).u16(*hash).tpm2b(r).tpm2b(s),
        };
        w.0
    }

    /// The scheme (`TPM_ALG_RSASSA`, …).
    pub fn scheme(&self) -> u16 {
        match self {
            Signature::RsaSsa { .. } => alg::RSASSA,
            Signature::RsaPss { .. } => alg::RSAPSS,
            Signature::Ecdsa { .. } => alg::ECDSA,
        }
    }

    /// The digest algorithm (`TPM_ALG_SHA256`, …).
    pub fn hash(&self) -> u16 {
        match self {
            Signature::RsaSsa { hash, .. }
            | Signature::RsaPss { hash, .. }
            | Signature::Ecdsa { hash, .. } => *hash,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_schemes() {
        for s in [
            Signature::RsaSsa {
                hash: alg::SHA256,
                sig: vec![7; 256],
            },
            Signature::RsaPss {
                hash: alg::SHA384,
                sig: vec![1; 384],
            },
            Signature::Ecdsa {
                hash: alg::SHA256,
                r: vec![2; 32],
                s: vec![3; 32],
            },
        ] {
            assert_eq!(Signature::parse(&s.to_bytes()).unwrap(), s);
        }
        let e = Signature::parse(&[0x00, 0x1a, 0, 0x0b]).unwrap_err();
        assert!(e.to_string().contains("unsupported sigAlg ECDAA"), "{e}");
    }
}
