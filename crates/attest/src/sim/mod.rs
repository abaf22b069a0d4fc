//! The simulated TEE: a software "platform" that signs reports with the same
//! kinds of fields as SEV-SNP (report data, init-data digest, measurement,
//! TCB, debug) using a real ECDSA P-384 key.
//!
//! Its evidence is real cryptography, but the key lives in a file, not in a
//! secure processor: anyone holding it can forge reports. Verification
//! therefore needs the sim root public key to be given explicitly, and every
//! claim it yields says `hardware_backed: false`.
//!
//! Report layout (little-endian, 0x160 bytes):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0x000 | 8 | magic `VEILSIM\0` |
//! | 0x008 | 4 | format version (1) |
//! | 0x00C | 4 | flags: bit 0 = debug |
//! | 0x010 | 32 | platform id: SHA-256 of the platform public key (SPKI DER) |
//! | 0x030 | 64 | report data |
//! | 0x070 | 48 | measurement |
//! | 0x0A0 | 64 | init-data digest (zero-padded) |
//! | 0x0E0 | 4 | TCB: bootloader, tee, snp, microcode SVNs |
//! | 0x0E4 | 28 | reserved, zero |
//! | 0x100 | 96 | ECDSA P-384/SHA-384 signature over 0x000..0x100, r ‖ s big-endian |

use std::ops::Range;

use base64::Engine;
use p384::ecdsa::signature::Signer;
use p384::ecdsa::{Signature, SigningKey, VerifyingKey};
use p384::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::claims::{Claims, Platform, Tee};
use crate::error::{Error, Result};
use crate::fields::{arr, u32_at};

/// Total size of a sim report.
pub const REPORT_LEN: usize = 0x160;
/// The signature covers bytes `0x000..0x100`.
pub const SIGNED_RANGE: Range<usize> = 0x000..0x100;
const MAGIC: &[u8; 8] = b"VEILSIM\0";
const FORMAT_VERSION: u32 = 1;
const MAGIC_RANGE: Range<usize> = 0x000..0x008;
const VERSION: Range<usize> = 0x008..0x00C;
const FLAGS: Range<usize> = 0x00C..0x010;
const PLATFORM_ID: Range<usize> = 0x010..0x030;
const REPORT_DATA: Range<usize> = 0x030..0x070;
const MEASUREMENT: Range<usize> = 0x070..0x0A0;
const INIT_DATA: Range<usize> = 0x0A0..0x0E0;
const TCB: Range<usize> = 0x0E0..0x0E4;
const RESERVED: Range<usize> = 0x0E4..0x100;
const SIGNATURE: Range<usize> = 0x100..0x160;
const FLAG_DEBUG: u32 = 1;

/// Printed by every command that produces or accepts sim evidence.
pub const WARNING: &str = "simulated TEE: evidence is signed by a software key, not by hardware; it gives NO confidentiality or integrity protection";

/// The sim platform's signing key (the role of the AMD secure processor).
pub struct SimPlatformKey(SigningKey);

/// The sim root public key a verifier must be told to trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimRootKey(VerifyingKey);

/// TCB SVNs the sim platform reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimTcb {
    /// Simulated bootloader SVN.
    pub bootloader: u8,
    /// Simulated TEE OS SVN.
    pub tee: u8,
    /// Simulated firmware SVN.
    pub snp: u8,
    /// Simulated microcode SVN.
    pub microcode: u8,
}

/// What the sim platform puts in a report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReportBody {
    /// Guest-chosen data (the binding digest).
    pub report_data: [u8; 64],
    /// Launch measurement recorded by the platform.
    pub measurement: [u8; 48],
    /// Init-data digest recorded at launch, zero-padded.
    pub init_data: [u8; 64],
    /// TCB SVNs.
    pub tcb: SimTcb,
    /// Launched with debugging enabled.
    pub debug: bool,
}

/// The JSON evidence form (`primary_evidence` for `tee: "sim"`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SimEvidence {
    /// Standard base64 of the raw report.
    pub report: String,
}

fn copy_padded<const N: usize>(src: &[u8]) -> Result<[u8; N]> {
    if src.len() > N {
        return Err(Error::malformed(
            "sim report input",
            format!("{} bytes do not fit a {N}-byte field", src.len()),
        ));
    }
    let mut out = [0u8; N];
    out[..src.len()].copy_from_slice(src);
    Ok(out)
}

impl SimReportBody {
    /// Build a body from byte strings of at most the field sizes (zero-padded).
    pub fn new(report_data: &[u8], measurement: &[u8], init_data: &[u8]) -> Result<Self> {
        Ok(SimReportBody {
            report_data: copy_padded(report_data)?,
            measurement: copy_padded(measurement)?,
            init_data: copy_padded(init_data)?,
            tcb: SimTcb::default(),
            debug: false,
        })
    }
}

impl SimPlatformKey {
    /// A fresh random platform key.
    pub fn generate() -> Self {
        SimPlatformKey(SigningKey::random(&mut rand_core::OsRng))
    }

    /// Load from PKCS#8 PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        SigningKey::from_pkcs8_pem(pem)
            .map(SimPlatformKey)
            .map_err(|e| Error::malformed("sim platform key (PKCS#8 PEM, P-384)", e.to_string()))
    }

    /// PKCS#8 PEM of the private key (zeroized on drop).
    pub fn to_pem(&self) -> Result<Zeroizing<String>> {
        self.0
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| Error::malformed("sim platform key", e.to_string()))
    }

    /// The public key verifiers must trust.
    pub fn root(&self) -> SimRootKey {
        SimRootKey(*self.0.verifying_key())
    }

    /// Produce a signed raw report.
    pub fn sign(&self, body: &SimReportBody) -> Vec<u8> {
        let mut b = vec![0u8; REPORT_LEN];
        b[MAGIC_RANGE].copy_from_slice(MAGIC);
        b[VERSION].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        let flags = if body.debug { FLAG_DEBUG } else { 0 };
        b[FLAGS].copy_from_slice(&flags.to_le_bytes());
        b[PLATFORM_ID].copy_from_slice(&self.root().platform_id());
        b[REPORT_DATA].copy_from_slice(&body.report_data);
        b[MEASUREMENT].copy_from_slice(&body.measurement);
        b[INIT_DATA].copy_from_slice(&body.init_data);
        b[TCB].copy_from_slice(&[
            body.tcb.bootloader,
            body.tcb.tee,
            body.tcb.snp,
            body.tcb.microcode,
        ]);
        let sig: Signature = self.0.sign(&b[SIGNED_RANGE]);
        b[SIGNATURE].copy_from_slice(&sig.to_bytes());
        b
    }

    /// Produce the JSON evidence document for a body.
    pub fn evidence_json(&self, body: &SimReportBody) -> String {
        let ev = SimEvidence {
            report: base64::engine::general_purpose::STANDARD.encode(self.sign(body)),
        };
        serde_json::to_string(&ev).unwrap_or_default()
    }
}

impl SimRootKey {
    /// Load a public key (SPKI PEM), or derive it from a private key PEM.
    pub fn from_pem(pem: &str) -> Result<Self> {
        if pem.contains("PRIVATE KEY") {
            return SimPlatformKey::from_pem(pem).map(|k| k.root());
        }
        VerifyingKey::from_public_key_pem(pem)
            .map(SimRootKey)
            .map_err(|e| Error::malformed("sim root key (SPKI PEM, P-384)", e.to_string()))
    }

    /// SPKI PEM.
    pub fn to_pem(&self) -> Result<String> {
        self.0
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| Error::malformed("sim root key", e.to_string()))
    }

    /// SHA-256 of the SPKI DER: the sim "chip id".
    pub fn platform_id(&self) -> [u8; 32] {
        let der = self
            .0
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .unwrap_or_default();
        Sha256::digest(der).into()
    }
}

/// A parsed, not yet verified, sim report.
#[derive(Debug, Clone)]
pub struct SimReport {
    raw: Vec<u8>,
    /// Platform id claimed by the report.
    pub platform_id: [u8; 32],
    /// The signed body.
    pub body: SimReportBody,
}

impl SimReport {
    /// Parse a raw report, or the JSON evidence form.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > crate::MAX_EVIDENCE_BYTES {
            return Err(Error::malformed(
                "sim evidence",
                "larger than the evidence limit",
            ));
        }
        let raw = if bytes.trim_ascii_start().first() == Some(&b'{') {
            let ev: SimEvidence = serde_json::from_slice(bytes)
                .map_err(|e| Error::malformed("sim evidence JSON", e.to_string()))?;
            base64::engine::general_purpose::STANDARD
                .decode(ev.report.trim())
                .map_err(|e| Error::malformed("sim evidence JSON", format!("report: {e}")))?
        } else {
            bytes.to_vec()
        };
        if raw.len() != REPORT_LEN {
            return Err(Error::malformed(
                "sim report",
                format!(
                    "length is {} bytes, a sim report is {REPORT_LEN}",
                    raw.len()
                ),
            ));
        }
        if &raw[MAGIC_RANGE] != MAGIC {
            return Err(Error::malformed(
                "sim report",
                "bad magic at offset 0x0 (want VEILSIM)",
            ));
        }
        let version = u32_at(&raw, VERSION);
        if version != FORMAT_VERSION {
            return Err(Error::malformed(
                "sim report",
                format!("format version at offset 0x8 is {version}, supported: {FORMAT_VERSION}"),
            ));
        }
        let flags = u32_at(&raw, FLAGS);
        if flags & !FLAG_DEBUG != 0 {
            return Err(Error::malformed(
                "sim report",
                format!("unknown flags {flags:#x} at offset 0xc"),
            ));
        }
        if raw[RESERVED].iter().any(|&b| b != 0) {
            return Err(Error::malformed(
                "sim report",
                "reserved bytes 0xe4..0x100 are not zero",
            ));
        }
        let t = &raw[TCB];
        let body = SimReportBody {
            report_data: arr(&raw, REPORT_DATA),
            measurement: arr(&raw, MEASUREMENT),
            init_data: arr(&raw, INIT_DATA),
            tcb: SimTcb {
                bootloader: t[0],
                tee: t[1],
                snp: t[2],
                microcode: t[3],
            },
            debug: flags & FLAG_DEBUG != 0,
        };
        Ok(SimReport {
            platform_id: arr(&raw, PLATFORM_ID),
            body,
            raw,
        })
    }
}

/// Verify sim evidence against an explicitly trusted root.
pub fn verify(evidence: &[u8], root: Option<&SimRootKey>) -> Result<Claims> {
    let report = SimReport::parse(evidence)?;
    let Some(root) = root else {
        return Err(Error::refused(
            "sim.root",
            "sim evidence is only accepted with an explicitly trusted sim root key (--sim-root); it is not hardware-backed",
        ));
    };
    let expected_id = root.platform_id();
    if !crate::expect::ct_eq(&expected_id, &report.platform_id) {
        return Err(Error::mismatch(
            "sim.platform_id",
            "sim report comes from another sim platform",
            hex::encode(expected_id),
            hex::encode(report.platform_id),
        ));
    }
    let sig = Signature::from_slice(&report.raw[SIGNATURE]).map_err(|_| {
        Error::refused(
            "sim.signature",
            "sim report signature is not a valid P-384 signature",
        )
    })?;
    if !crate::ecdsa::EcdsaKey::p384(&root.0).verify_p384(&report.raw[SIGNED_RANGE], &sig) {
        return Err(Error::refused(
            "sim.signature",
            format!(
                "sim report signature does not verify with the trusted sim root (platform {}…)",
                &hex::encode(expected_id)[..16]
            ),
        ));
    }
    let b = &report.body;
    let tcb = [
        ("bootloader", b.tcb.bootloader),
        ("tee", b.tcb.tee),
        ("snp", b.tcb.snp),
        ("microcode", b.tcb.microcode),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), u64::from(v)))
    .collect();
    Ok(Claims {
        tee: Tee::Sim,
        hardware_backed: false,
        measurement: b.measurement.to_vec(),
        report_data: b.report_data.to_vec(),
        init_data: b.init_data.to_vec(),
        tcb,
        debug: b.debug,
        platform: Platform {
            product: "sim".into(),
            chip_id: hex::encode(report.platform_id),
            signer: "sim".into(),
        },
        raw: serde_json::json!({
            "warning": WARNING,
            "format_version": FORMAT_VERSION,
            "platform_id": hex::encode(report.platform_id),
            "measurement": hex::encode(b.measurement),
            "report_data": hex::encode(b.report_data),
            "init_data": hex::encode(b.init_data),
            "tcb": b.tcb,
            "debug": b.debug,
        }),
    })
}
