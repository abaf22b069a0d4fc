//! `TPMS_ATTEST` (TPM 2.0 Library, Part 2, §10.12.12) with its
//! `TPMS_QUOTE_INFO` body and `TPML_PCR_SELECTION` (§10.9.7).
//!
//! Wire layout (big-endian):
//!
//! ```text
//! TPMS_ATTEST
//!   magic            u32            TPM_GENERATED_VALUE (0xff544347)
//!   type             u16            TPM_ST_ATTEST_QUOTE (0x8018) for a quote
//!   qualifiedSigner  TPM2B_NAME     name of the signing key's hierarchy path
//!   extraData        TPM2B_DATA     the caller's qualifying data (nonce)
//!   clockInfo        TPMS_CLOCK_INFO { clock u64, resetCount u32, restartCount u32, safe u8 }
//!   firmwareVersion  u64
//!   attested         TPMU_ATTEST    for a quote: TPMS_QUOTE_INFO
//! TPMS_QUOTE_INFO
//!   pcrSelect        TPML_PCR_SELECTION { count u32, count × TPMS_PCR_SELECTION }
//!   pcrDigest        TPM2B_DIGEST   hash of the selected PCR values
//! TPMS_PCR_SELECTION
//!   hash             u16            PCR bank (TPM_ALG_SHA256, …)
//!   sizeofSelect     u8
//!   pcrSelect        sizeofSelect bytes, bit (i % 8) of byte (i / 8) selects PCR i
//! ```

use super::wire::{Reader, Writer};
use super::{alg, st};
use crate::error::Result;

/// Largest `TPMS_ATTEST` accepted (a quote is ~150 bytes; the TPM's
/// `TPM2B_ATTEST` buffer is at most a few hundred).
pub const MAX_ATTEST_LEN: usize = 1024;
/// `TPM2B_NAME` holds a `TPMT_HA` (2 + 64 bytes) or a 4-byte handle.
pub const MAX_NAME_LEN: usize = 2 + 64;
/// `TPM2B_DATA` / `TPM2B_DIGEST`: at most the largest digest (SHA-512).
pub const MAX_DIGEST_LEN: usize = 64;
/// Most PCR banks a selection list may name (`HASH_COUNT` is a handful).
pub const MAX_PCR_BANKS: u32 = 16;
/// Largest `sizeofSelect` accepted (64 PCRs; real TPMs have 24).
pub const MAX_SIZEOF_SELECT: u8 = 8;

/// `TPMS_CLOCK_INFO`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since its last clear.
    pub clock: u64,
    /// TPM resets since the last clear.
    pub reset_count: u32,
    /// TPM restarts (resume) since the last reset.
    pub restart_count: u32,
    /// The clock has not gone backwards since it was last saved.
    pub safe: bool,
}

/// One `TPMS_PCR_SELECTION`: a bank and the PCRs selected in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    /// The bank's hash algorithm (`TPM_ALG_*`).
    pub hash: u16,
    /// The raw select bitmap (`sizeofSelect` bytes).
    pub select: Vec<u8>,
}

impl PcrSelection {
    /// Selected PCR indices, ascending (the order their values are hashed).
    pub fn indices(&self) -> Vec<usize> {
        let mut out = Vec::new();
        for (byte_i, byte) in self.select.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    out.push(byte_i * 8 + bit);
                }
            }
        }
        out
    }

    /// Select PCRs `indices` (each < 8 × `size`) in `hash`'s bank.
    pub fn new(hash: u16, size: u8, indices: impl IntoIterator<Item = usize>) -> Self {
        let mut select = vec![0u8; usize::from(size)];
        for i in indices {
            if let Some(b) = select.get_mut(i / 8) {
                *b |= 1 << (i % 8);
            }
        }
        PcrSelection { hash, select }
    }
}

/// `TPMS_QUOTE_INFO`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// `TPML_PCR_SELECTION`: which PCRs of which banks the digest covers.
    pub pcr_select: Vec<PcrSelection>,
    /// Hash (with the signing scheme's algorithm) of the selected values.
    pub pcr_digest: Vec<u8>,
}

/// A parsed `TPMS_ATTEST`. Parsing checks only the layout; `magic` and
/// `attest_type` are checked by [`super::verify_quote`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// Must be `TPM_GENERATED_VALUE`: the TPM never signs external data
    /// that starts with it, so it proves the TPM produced the structure.
    pub magic: u32,
    /// `TPM_ST_ATTEST_*`.
    pub attest_type: u16,
    /// `TPM2B_NAME` of the signing key's qualified name.
    pub qualified_signer: Vec<u8>,
    /// `TPM2B_DATA`: the nonce the verifier asked to be signed.
    pub extra_data: Vec<u8>,
    /// `TPMS_CLOCK_INFO`.
    pub clock_info: ClockInfo,
    /// Vendor-specific firmware version.
    pub firmware_version: u64,
    /// The quote body, when `attest_type` is `TPM_ST_ATTEST_QUOTE`.
    pub quote: Option<QuoteInfo>,
}

impl Attest {
    /// Parse a `TPMS_ATTEST`. A quote must end exactly after its body; for
    /// other attestation types the body is not parsed.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        if bytes.len() > MAX_ATTEST_LEN {
            return Err(r.err(format!(
                "{} bytes exceeds the {MAX_ATTEST_LEN} byte limit",
                bytes.len()
            )));
        }
        let magic = r.u32("magic")?;
        let attest_type = r.u16("type")?;
        let qualified_signer = r.tpm2b("qualifiedSigner", MAX_NAME_LEN)?.to_vec();
        let extra_data = r.tpm2b("extraData", MAX_DIGEST_LEN)?.to_vec();
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe = match r.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            v => return Err(r.err(format!("clockInfo.safe is a TPMI_YES_NO, got {v}"))),
        };
        let firmware_version = r.u64("firmwareVersion")?;
        let quote = if attest_type == st::ATTEST_QUOTE {
            let count = r.u32("pcrSelect.count")?;
            if count > MAX_PCR_BANKS {
                return Err(r.err(format!(
                    "pcrSelect.count {count} exceeds the maximum {MAX_PCR_BANKS}"
                )));
            }
            let mut pcr_select = Vec::new();
            for _ in 0..count {
                let hash = r.u16("pcrSelections.hash")?;
                let size = r.u8("pcrSelections.sizeofSelect")?;
                if size > MAX_SIZEOF_SELECT {
                    return Err(r.err(format!(
                        "sizeofSelect {size} exceeds the maximum {MAX_SIZEOF_SELECT}"
                    )));
                }
                let select = r
                    .take(usize::from(size), "pcrSelections.pcrSelect")?
                    .to_vec();
                pcr_select.push(PcrSelection { hash, select });
            }
            let pcr_digest = r.tpm2b("pcrDigest", MAX_DIGEST_LEN)?.to_vec();
            r.finish()?;
            Some(QuoteInfo {
                pcr_select,
                pcr_digest,
            })
        } else {
            None
        };
        Ok(Attest {
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            quote,
        })
    }

    /// Marshal back to the wire form (round-trips [`Attest::parse`] for quotes).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.u32(self.magic)
            .u16(self.attest_type)
            .tpm2b(&self.qualified_signer)
            .tpm2b(&self.extra_data)
            .u64(self.clock_info.clock)
            .u32(self.clock_info.reset_count)
            .u32(self.clock_info.restart_count)
            .u8(u8::from(self.clock_info.safe))
            .u64(self.firmware_version);
        if let Some(q) = &self.quote {
            w.u32(u32::try_from(q.pcr_select.len()).unwrap_or(u32::MAX));
            for s in &q.pcr_select {
                w.u16(s.hash)
                    .u8(u8::try_from(s.select.len()).unwrap_or(u8::MAX))
                    .bytes(&s.select);
            }
            w.tpm2b(&q.pcr_digest);
        }
        w.0
    }

    /// A quote over `selection` with `pcr_digest`, as a TPM would produce it
    /// (for building test evidence; the caller signs [`Attest::to_bytes`]).
    pub fn new_quote(extra_data: &[u8], selection: Vec<PcrSelection>, pcr_digest: Vec<u8>) -> Self {
        Attest {
            magic: super::TPM_GENERATED_VALUE,
            attest_type: st::ATTEST_QUOTE,
            qualified_signer: {
                let mut n = alg::SHA256.to_be_bytes().to_vec();
                n.extend_from_slice(&[0u8; 32]);
                n
            },
            extra_data: extra_data.to_vec(),
            clock_info: ClockInfo {
                clock: 0,
                reset_count: 0,
                restart_count: 0,
                safe: true,
            },
            firmware_version: 0,
            quote: Some(QuoteInfo {
                pcr_select: selection,
                pcr_digest,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The TPMS_ATTEST of `azure-snp-vtpm/evidence-v1.json`.
    const AZURE_V1: &str = "ff54434780180022000bbf15d1053b33c81c80e3f9892b1f359474102661abfabf2889dbbca9ab2b445900096368616c6c656e67650000000000359bae000000020000000001202003120012000300000001000b03ffffff0020cfa3a9112493e8c8741c1d895ced6d05a9ea19a24a02a44a8b02eaf22a1b143f";

    #[test]
    fn parses_an_azure_vtpm_quote() {
        let bytes = hex::decode(AZURE_V1).unwrap();
        let a = Attest::parse(&bytes).unwrap();
        assert_eq!(a.magic, super::super::TPM_GENERATED_VALUE);
        assert_eq!(a.attest_type, st::ATTEST_QUOTE);
        assert_eq!(a.extra_data, b"challenge");
        assert_eq!(a.clock_info.reset_count, 2);
        assert!(a.clock_info.safe);
        let q = a.quote.as_ref().unwrap();
        assert_eq!(q.pcr_select.len(), 1);
        assert_eq!(q.pcr_select[0].hash, alg::SHA256);
        assert_eq!(q.pcr_select[0].indices(), (0..24).collect::<Vec<_>>());
        assert_eq!(q.pcr_digest.len(), 32);
        assert_eq!(a.to_bytes(), bytes, "round trip");
    }

    #[test]
    fn trailing_and_truncated_input_is_malformed() {
        let mut bytes = hex::decode(AZURE_V1).unwrap();
        bytes.push(0);
        let e = Attest::parse(&bytes).unwrap_err();
        assert!(
            e.is_malformed() && e.to_string().contains("trailing"),
            "{e}"
        );
        bytes.truncate(40);
        let e = Attest::parse(&bytes).unwrap_err();
        assert!(e.is_malformed(), "{e}");
    }

    #[test]
    fn selection_bitmap_order() {
        let s = PcrSelection::new(alg::SHA256, 3, [8, 0, 23]);
        assert_eq!(s.select, vec![0x01, 0x01, 0x80]);
        assert_eq!(s.indices(), vec![0, 8, 23]);
    }
}
