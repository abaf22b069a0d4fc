//! TPM 2.0 quotes: the wire structures (`TPMS_ATTEST`, `TPMS_QUOTE_INFO`,
//! `TPML_PCR_SELECTION`, `TPMT_SIGNATURE`, `TPMT_PUBLIC`), verification of a
//! quote against a given attestation-key (AK) public key, and the `tpm`
//! evidence kind (Trustee's generic TPM attester, kbs-protocol §14.7).
//!
//! A quote is verified by, in order: the AK's attributes when known
//! (`tpm.ak_attributes`), the signature over the `TPMS_ATTEST`
//! (`tpm.signature`, `tpm.signature_scheme`), its magic (`tpm.magic`) and
//! type (`tpm.attest_type`), the PCR selection (`tpm.pcr_selection`) and the
//! PCR digest over the given PCR values (`tpm.pcr_digest`). The quote's
//! `extraData` (the verifier's nonce, or the KBS binding digest) becomes
//! `Claims::report_data`, zero-padded to 64 bytes; PCR 8 becomes
//! `Claims::init_data` (see [`expected_pcr8`]).
//!
//! The TPM alone says nothing about the hardware: trust in a plain `tpm`
//! quote rests entirely on the AK the caller trusts, so its claims have
//! `hardware_backed = false`. Azure confidential VMs bind their vTPM's AK to
//! an SEV-SNP or TDX report; see [`crate::azure`].
//!
//! This is written from the TPM 2.0 Library specification, Part 2
//! ("Structures"); no TSS library is used.

pub mod attest;
pub mod evidence;
pub mod public;
pub mod signature;
mod wire;

use std::collections::BTreeSet;

use serde_json::json;
use sha2::{Digest, Sha256};

pub use self::attest::{Attest, ClockInfo, PcrSelection, QuoteInfo};
pub use self::public::AkPublic;
pub use self::signature::Signature;
use crate::claims::{Claims, Platform, Tee};
use crate::error::{Error, Result};

/// `TPM_GENERATED_VALUE`: the first four bytes of every structure the TPM signs.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;
/// Number of PCRs in a bank (PC Client platform).
pub const PCR_COUNT: usize = 24;
/// Size of a SHA-256 PCR value.
pub const PCR_LEN: usize = 32;
/// The PCR that init-data is extended into on vTPM TEEs.
pub const INIT_DATA_PCR: usize = 8;
/// Size of `Claims::report_data` (the quote's extraData, zero-padded).
pub const REPORT_DATA_LEN: usize = 64;

/// `TPM_ALG_ID` values (Part 2, §6.3).
pub mod alg {
    /// RSA key.
    pub const RSA: u16 = 0x0001;
    /// SHA-1 (not accepted for signatures).
    pub const SHA1: u16 = 0x0004;
    /// HMAC.
    pub const HMAC: u16 = 0x0005;
    /// SHA-256.
    pub const SHA256: u16 = 0x000B;
    /// SHA-384.
    pub const SHA384: u16 = 0x000C;
    /// SHA-512.
    pub const SHA512: u16 = 0x000D;
    /// No algorithm.
    pub const NULL: u16 = 0x0010;
    /// SM3-256.
    pub const SM3_256: u16 = 0x0012;
    /// RSASSA-PKCS1-v1_5 signatures.
    pub const RSASSA: u16 = 0x0014;
    /// RSAES-PKCS1-v1_5 encryption.
    pub const RSAES: u16 = 0x0015;
    /// RSASSA-PSS signatures.
    pub const RSAPSS: u16 = 0x0016;
    /// RSAES-OAEP encryption.
    pub const OAEP: u16 = 0x0017;
    /// ECDSA signatures.
    pub const ECDSA: u16 = 0x0018;
    /// ECDH key exchange.
    pub const ECDH: u16 = 0x0019;
    /// ECDAA signatures.
    pub const ECDAA: u16 = 0x001A;
    /// SM2 signatures.
    pub const SM2: u16 = 0x001B;
    /// EC-Schnorr signatures.
    pub const ECSCHNORR: u16 = 0x001C;
    /// ECC key.
    pub const ECC: u16 = 0x0023;

    /// The spec's name of an algorithm, for messages.
    pub fn name(id: u16) -> &'static str {
        match id {
            RSA => "RSA",
            SHA1 => "SHA1",
            HMAC => "HMAC",
            SHA256 => "SHA256",
            SHA384 => "SHA384",
            SHA512 => "SHA512",
            NULL => "NULL",
            SM3_256 => "SM3_256",
            RSASSA => "RSASSA",
            RSAES => "RSAES",
            RSAPSS => "RSAPSS",
            OAEP => "OAEP",
            ECDSA => "ECDSA",
            ECDH => "ECDH",
            ECDAA => "ECDAA",
            SM2 => "SM2",
            ECSCHNORR => "ECSCHNORR",
            ECC => "ECC",
            _ => "unknown",
        }
    }
}

/// `TPM_ST` structure tags of attestation structures (Part 2, §6.9).
pub mod st {
    /// `TPM_ST_ATTEST_NV`.
    pub const ATTEST_NV: u16 = 0x8014;
    /// `TPM_ST_ATTEST_COMMAND_AUDIT`.
    pub const ATTEST_COMMAND_AUDIT: u16 = 0x8015;
    /// `TPM_ST_ATTEST_SESSION_AUDIT`.
    pub const ATTEST_SESSION_AUDIT: u16 = 0x8016;
    /// `TPM_ST_ATTEST_CERTIFY`.
    pub const ATTEST_CERTIFY: u16 = 0x8017;
    /// `TPM_ST_ATTEST_QUOTE`: the only type a PCR quote has.
    pub const ATTEST_QUOTE: u16 = 0x8018;
    /// `TPM_ST_ATTEST_TIME`.
    pub const ATTEST_TIME: u16 = 0x8019;
    /// `TPM_ST_ATTEST_CREATION`.
    pub const ATTEST_CREATION: u16 = 0x801A;
}

/// `TPM_ECC_CURVE` values (Part 2, §6.4).
pub mod ecc_curve {
    /// NIST P-256.
    pub const NIST_P256: u16 = 0x0003;
    /// NIST P-384.
    pub const NIST_P384: u16 = 0x0004;
}

/// `TPMA_OBJECT` bits (Part 2, §8.3).
pub mod object_attr {
    /// The object's hierarchy cannot change (it never leaves this TPM).
    pub const FIXED_TPM: u32 = 1 << 1;
    /// Saved contexts are lost on TPM Reset.
    pub const ST_CLEAR: u32 = 1 << 2;
    /// The parent cannot change.
    pub const FIXED_PARENT: u32 = 1 << 4;
    /// The TPM generated the sensitive part.
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    /// USER role authorization with auth value or HMAC.
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    /// ADMIN role authorization only with a policy.
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    /// Not subject to dictionary-attack protection.
    pub const NO_DA: u32 = 1 << 10;
    /// Duplication requires an inner wrapper.
    pub const ENCRYPTED_DUPLICATION: u32 = 1 << 11;
    /// The key signs only TPM-generated structures (with `sign`).
    pub const RESTRICTED: u32 = 1 << 16;
    /// Decryption key.
    pub const DECRYPT: u32 = 1 << 17;
    /// Signing key.
    pub const SIGN: u32 = 1 << 18;
}

/// PCR 8 as a vTPM TEE reports it after binding `init_data_digest`: one
/// SHA-256 extend of a zeroed PCR, `SHA-256(32 zero bytes ‖ digest)`.
/// The guest extends exactly the 32-byte SHA-256 init-data digest (Trustee
/// attesters refuse other sizes), so only such digests can ever match.
pub fn expected_pcr8(init_data_digest: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0u8; PCR_LEN]);
    h.update(init_data_digest);
    h.finalize().into()
}

/// The value `Claims::init_data` must have on vTPM TEEs for an expected
/// init-data digest: [`expected_pcr8`], refusing digests a vTPM cannot bind.
pub fn expected_init_data_field(init_data_digest: &[u8]) -> Result<Vec<u8>> {
    if init_data_digest.len() != PCR_LEN {
        return Err(Error::mismatch(
            "init_data",
            "vTPM TEEs bind only a SHA-256 init-data digest into PCR 8 (use algorithm = \"sha256\" in the init-data)",
            "a 32-byte digest",
            format!("{} bytes", init_data_digest.len()),
        ));
    }
    Ok(expected_pcr8(init_data_digest).to_vec())
}

/// The 24 SHA-256 PCR values that come with a quote, indexed by PCR number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrValues(pub Vec<[u8; PCR_LEN]>);

impl PcrValues {
    /// Exactly [`PCR_COUNT`] values of [`PCR_LEN`] bytes each.
    pub fn new(values: Vec<Vec<u8>>) -> Result<Self> {
        if values.len() != PCR_COUNT {
            return Err(Error::malformed(
                "PCR values",
                format!(
                    "expected {PCR_COUNT} SHA-256 PCR values (PCR 0..23), got {}",
                    values.len()
                ),
            ));
        }
        let mut out = Vec::with_capacity(PCR_COUNT);
        for (i, v) in values.into_iter().enumerate() {
            let a: [u8; PCR_LEN] = v.as_slice().try_into().map_err(|_| {
                Error::malformed(
                    "PCR values",
                    format!(
                        "PCR {i} has {} bytes; SHA-256 PCR values have {PCR_LEN}",
                        v.len()
                    ),
                )
            })?;
            out.push(a);
        }
        Ok(PcrValues(out))
    }
}

/// A quote whose signature, magic, type and PCR digest verified.
#[derive(Debug, Clone)]
pub struct VerifiedQuote {
    /// The signed `TPMS_ATTEST`.
    pub attest: Attest,
    /// PCRs covered by the signed digest (SHA-256 bank).
    pub selected: BTreeSet<usize>,
    /// All PCR values as given (only `selected` ones are authenticated).
    pub pcrs: PcrValues,
    /// Signature scheme and hash (`TPM_ALG_*`).
    pub scheme: (u16, u16),
    /// The AK's description and fingerprint.
    pub ak: serde_json::Value,
}

/// Verify a quote (`message` = marshalled `TPMS_ATTEST`) signed with `ak`,
/// and its PCR digest over `pcrs`.
pub fn verify_quote(
    message: &[u8],
    sig: &Signature,
    pcrs: &PcrValues,
    ak: &AkPublic,
) -> Result<VerifiedQuote> {
    ak.check_attributes()?;
    let attest = Attest::parse(message)?;
    ak.verify(message, sig)?;
    if attest.magic != TPM_GENERATED_VALUE {
        return Err(Error::mismatch(
            "tpm.magic",
            "TPMS_ATTEST magic is not TPM_GENERATED_VALUE (the TPM did not produce this structure)",
            format!("{TPM_GENERATED_VALUE:#010x}"),
            format!("{:#010x}", attest.magic),
        ));
    }
    let Some(info) = attest
        .quote
        .as_ref()
        .filter(|_| attest.attest_type == st::ATTEST_QUOTE)
    else {
        return Err(Error::mismatch(
            "tpm.attest_type",
            "TPMS_ATTEST is not a PCR quote",
            format!("TPM_ST_ATTEST_QUOTE ({:#06x})", st::ATTEST_QUOTE),
            format!("{:#06x}", attest.attest_type),
        ));
    };
    let mut selected = BTreeSet::new();
    let mut concatenated = Vec::new();
    for sel in &info.pcr_select {
        if sel.hash != alg::SHA256 {
            return Err(Error::mismatch(
                "tpm.pcr_selection",
                "quote selects PCRs of a bank whose values were not given",
                "SHA256 bank",
                format!("{} bank", alg::name(sel.hash)),
            ));
        }
        for i in sel.indices() {
            let Some(v) = pcrs.0.get(i) else {
                return Err(Error::mismatch(
                    "tpm.pcr_selection",
                    "quote selects a PCR beyond the 24 given",
                    format!("PCR 0..{}", PCR_COUNT - 1),
                    format!("PCR {i}"),
                ));
            };
            concatenated.extend_from_slice(v);
            selected.insert(i);
        }
    }
    let computed = public::digest(sig.hash(), &concatenated)?;
    if !crate::expect::ct_eq(&computed, &info.pcr_digest) {
        return Err(Error::mismatch(
            "tpm.pcr_digest",
            format!(
                "PCR values do not match the quote's PCR digest ({} over PCRs {})",
                alg::name(sig.hash()),
                list(&selected)
            ),
            format!("{} (signed in the quote)", hex::encode(&info.pcr_digest)),
            format!("{} (hash of the given PCR values)", hex::encode(&computed)),
        ));
    }
    Ok(VerifiedQuote {
        attest,
        selected,
        pcrs: pcrs.clone(),
        scheme: (sig.scheme(), sig.hash()),
        ak: ak.to_json(),
    })
}

fn list(s: &BTreeSet<usize>) -> String {
    if s.len() == PCR_COUNT {
        return format!("0-{}", PCR_COUNT - 1);
    }
    s.iter().map(usize::to_string).collect::<Vec<_>>().join(",")
}

impl VerifiedQuote {
    /// The quote's extraData zero-padded to 64 bytes (`Claims::report_data`).
    pub fn report_data(&self) -> Vec<u8> {
        crate::expect::regularize(&self.attest.extra_data, REPORT_DATA_LEN)
    }

    /// An authenticated PCR value.
    pub fn pcr(&self, i: usize) -> Option<&[u8; PCR_LEN]> {
        self.selected
            .contains(&i)
            .then(|| self.pcrs.0.get(i))
            .flatten()
    }

    /// PCR 8 (`Claims::init_data`); refused when the quote does not cover it.
    pub fn init_data(&self) -> Result<Vec<u8>> {
        self.pcr(INIT_DATA_PCR).map(|v| v.to_vec()).ok_or_else(|| {
            Error::mismatch(
                "tpm.pcr_selection",
                "the quote does not cover PCR 8, which carries the init-data binding",
                "PCR 8 selected",
                format!("PCRs {}", list(&self.selected)),
            )
        })
    }

    /// `raw.pcrs`: 24 entries, hex of each authenticated PCR, null for PCRs
    /// the quote does not cover.
    pub fn pcrs_json(&self) -> serde_json::Value {
        (0..PCR_COUNT)
            .map(|i| self.pcr(i).map(hex::encode).into())
            .collect::<Vec<serde_json::Value>>()
            .into()
    }

    /// `raw.tpm_quote`: what the quote says besides the PCRs.
    pub fn quote_json(&self) -> serde_json::Value {
        let a = &self.attest;
        let info = a.quote.as_ref();
        json!({
            "signature_verified": true,
            "signature": {"scheme": alg::name(self.scheme.0), "hash": alg::name(self.scheme.1)},
            "ak": self.ak,
            "magic": format!("{:#010x}", a.magic),
            "type": "TPM_ST_ATTEST_QUOTE",
            "qualified_signer": hex::encode(&a.qualified_signer),
            "extra_data": hex::encode(&a.extra_data),
            "clock": a.clock_info.clock,
            "reset_count": a.clock_info.reset_count,
            "restart_count": a.clock_info.restart_count,
            "safe": a.clock_info.safe,
            "firmware_version": format!("{:016x}", a.firmware_version),
            "pcr_selection": info.map(|q| q.pcr_select.iter().map(|s| json!({
                "hash": alg::name(s.hash),
                "pcrs": s.indices(),
            })).collect::<Vec<_>>()),
            "pcr_digest": info.map(|q| hex::encode(&q.pcr_digest)),
        })
    }
}

/// Verify `tpm` evidence (kbs-protocol §14.7) whose AK must be one of
/// `trusted_aks`. Expectations (nonce via report data, init-data via PCR 8)
/// are applied by the caller with [`crate::Expectations::check`].
pub fn verify(evidence: &[u8], trusted_aks: &[AkPublic]) -> Result<Claims> {
    let ev = evidence::TpmEvidence::parse(evidence)?;
    if trusted_aks.is_empty() {
        return Err(Error::refused(
            "tpm.ak_trust",
            "no trusted attestation key configured: a TPM quote proves nothing without one (give the AK public key, e.g. --ak FILE)",
        ));
    }
    let Some(ak) = trusted_aks
        .iter()
        .find(|k| k.spki_der() == ev.ak.spki_der())
    else {
        let fps: Vec<String> = trusted_aks.iter().map(AkPublic::fingerprint).collect();
        return Err(Error::mismatch(
            "tpm.ak_trust",
            "the evidence's attestation key is not a trusted one (SPKI SHA-256)",
            format!("one of {}", fps.join(", ")),
            ev.ak.fingerprint(),
        ));
    };
    let q = verify_quote(&ev.message, &ev.signature, &ev.pcrs, ak)?;
    let digest = q
        .attest
        .quote
        .as_ref()
        .map(|i| i.pcr_digest.clone())
        .unwrap_or_default();
    Ok(Claims {
        tee: Tee::Tpm,
        hardware_backed: false,
        measurement: digest,
        report_data: q.report_data(),
        init_data: q.init_data()?,
        tcb: Default::default(),
        debug: false,
        platform: Platform {
            product: "TPM 2.0".into(),
            chip_id: ak.fingerprint(),
            signer: "ak".into(),
        },
        raw: json!({
            "pcrs": q.pcrs_json(),
            "tpm_quote": q.quote_json(),
            "trust": "the attestation key was given by the verifier; nothing ties it to TEE hardware",
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcr8_is_one_extend_of_a_zeroed_pcr() {
        let d = [0xabu8; 32];
        let mut pre = [0u8; 64];
        pre[32..].copy_from_slice(&d);
        assert_eq!(expected_pcr8(&d).to_vec(), Sha256::digest(pre).to_vec());
        assert_eq!(
            expected_init_data_field(&d).unwrap(),
            expected_pcr8(&d).to_vec()
        );
        let e = expected_init_data_field(&[0u8; 48]).unwrap_err();
        assert_eq!(e.check(), Some("init_data"));
    }
}
