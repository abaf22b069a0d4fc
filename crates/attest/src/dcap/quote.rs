//! The Intel DCAP quote, versions 3 (SGX), 4 (SGX or TDX 1.0) and 5 (TDX 1.0 /
//! 1.5 / SGX with a typed body), as laid out in Intel's "SGX ECDSA Quote
//! Library API" and "TDX DCAP Quoting Library API" specifications.
//! Little-endian throughout.
//!
//! ```text
//! 0x000  header (48 bytes)
//! 0x030  v3/v4: report body (SGX 384 bytes, TD 1.0 584 bytes)
//!        v5:    body type (u16) + body size (u32), then the body
//!  …     signature data length (u32), then the signature data:
//!          ECDSA signature (64) | attestation key (64) | certification data
//! ```
//!
//! The attestation key signs `header ‖ body`; the PCK key signs the QE
//! report; the QE report's REPORT_DATA binds the attestation key. Parsing
//! here is structural only: [`crate::dcap`] checks the signatures.

use std::ops::Range;

use crate::error::{Error, Result};
use crate::fields::{arr, u16_at, u32_at};

/// Largest quote this parser accepts. Real quotes are about 5 KiB; the PCK
/// chain dominates.
pub const MAX_QUOTE_BYTES: usize = 64 * 1024;

const WHAT: &str = "DCAP quote";

// ---- header (48 bytes) ----
/// Length of the quote header.
pub const HEADER_LEN: usize = 48;
const VERSION: Range<usize> = 0..2;
const ATTESTATION_KEY_TYPE: Range<usize> = 2..4;
const TEE_TYPE: Range<usize> = 4..8;
const QE_SVN: Range<usize> = 8..10;
const PCE_SVN: Range<usize> = 10..12;
const QE_VENDOR_ID: Range<usize> = 12..28;
const USER_DATA: Range<usize> = 28..48;

/// v5 only: body descriptor (type u16, size u32) right after the header.
const V5_BODY_TYPE: Range<usize> = 48..50;
const V5_BODY_SIZE: Range<usize> = 50..54;

/// `tee_type` of an SGX quote.
pub const TEE_TYPE_SGX: u32 = 0x0000_0000;
/// `tee_type` of a TDX quote.
pub const TEE_TYPE_TDX: u32 = 0x0000_0081;
/// Attestation key type ECDSA-256 with P-256, the only one Intel's QEs use.
pub const ATTESTATION_KEY_TYPE_ECDSA_P256: u16 = 2;
/// Intel's QE vendor id (`939A7233-F79C-4CA9-940A-0DB3957F0607`).
pub const INTEL_QE_VENDOR_ID: [u8; 16] = [
    0x93, 0x9A, 0x72, 0x33, 0xF7, 0x9C, 0x4C, 0xA9, 0x94, 0x0A, 0x0D, 0xB3, 0x95, 0x7F, 0x06, 0x07,
];

// v5 body types.
const BODY_TYPE_SGX: u16 = 1;
const BODY_TYPE_TD10: u16 = 2;
const BODY_TYPE_TD15: u16 = 3;
const BODY_TYPE_TD15_EX: u16 = 4;

// ---- SGX enclave report (384 bytes; also the QE report) ----
/// Length of an SGX enclave report.
pub const ENCLAVE_REPORT_LEN: usize = 384;
const ER_CPU_SVN: Range<usize> = 0..16;
const ER_MISC_SELECT: Range<usize> = 16..20;
const ER_ISV_EXT_PROD_ID: Range<usize> = 32..48;
const ER_ATTRIBUTES: Range<usize> = 48..64;
const ER_MR_ENCLAVE: Range<usize> = 64..96;
const ER_MR_SIGNER: Range<usize> = 128..160;
const ER_CONFIG_ID: Range<usize> = 192..256;
const ER_ISV_PROD_ID: Range<usize> = 256..258;
const ER_ISV_SVN: Range<usize> = 258..260;
const ER_CONFIG_SVN: Range<usize> = 260..262;
const ER_ISV_FAMILY_ID: Range<usize> = 304..320;
const ER_REPORT_DATA: Range<usize> = 320..384;
/// SGX ATTRIBUTES.FLAGS bit 1: the enclave was launched in debug mode.
pub const SGX_ATTR_DEBUG: u64 = 1 << 1;

// ---- TD report 1.0 (584 bytes), 1.5 (648), 1.5 with service TDs (885) ----
/// Length of a TDX 1.0 TD report body.
pub const TD_REPORT10_LEN: usize = 584;
/// Length of a TDX 1.5 TD report body.
pub const TD_REPORT15_LEN: usize = 648;
/// Length of a TDX 1.5 report body with the service-TD extension.
pub const TD_REPORT15_EX_LEN: usize = 885;
const TD_TEE_TCB_SVN: Range<usize> = 0..16;
const TD_MR_SEAM: Range<usize> = 16..64;
const TD_MR_SIGNER_SEAM: Range<usize> = 64..112;
const TD_SEAM_ATTRIBUTES: Range<usize> = 112..120;
const TD_TD_ATTRIBUTES: Range<usize> = 120..128;
const TD_XFAM: Range<usize> = 128..136;
const TD_MR_TD: Range<usize> = 136..184;
const TD_MR_CONFIG_ID: Range<usize> = 184..232;
const TD_MR_OWNER: Range<usize> = 232..280;
const TD_MR_OWNER_CONFIG: Range<usize> = 280..328;
const TD_RTMR: [Range<usize>; 4] = [328..376, 376..424, 424..472, 472..520];
const TD_REPORT_DATA: Range<usize> = 520..584;
const TD15_TEE_TCB_SVN2: Range<usize> = 584..600;
const TD15_MR_SERVICE_TD: Range<usize> = 600..648;
/// TD_ATTRIBUTES bit 0 (TUD.DEBUG): the TD is debuggable by the host.
pub const TD_ATTR_DEBUG: u64 = 1;

// ---- signature data ----
const ECDSA_SIGNATURE_LEN: usize = 64;
const ATTESTATION_KEY_LEN: usize = 64;
const QE_REPORT_SIGNATURE_LEN: usize = 64;

/// Certification data type 5: PEM PCK certificate chain (leaf, CA, root).
pub const CERT_TYPE_PCK_CHAIN: u16 = 5;
/// Certification data type 6: QE report certification data (v4/v5 quotes).
pub const CERT_TYPE_QE_REPORT: u16 = 6;

/// The fixed 48-byte quote header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Quote format version (3, 4 or 5).
    pub version: u16,
    /// Attestation key type (2 = ECDSA P-256).
    pub attestation_key_type: u16,
    /// 0 for SGX, 0x81 for TDX.
    pub tee_type: u32,
    /// Security version of the quoting enclave.
    pub qe_svn: u16,
    /// Security version of the provisioning certification enclave.
    pub pce_svn: u16,
    /// Vendor of the quoting enclave.
    pub qe_vendor_id: [u8; 16],
    /// Custom data of the QE (first 16 bytes: platform-identifying QE id).
    pub user_data: [u8; 20],
}

/// An SGX enclave report (`sgx_report_body_t`): the application enclave in an
/// SGX quote, and the quoting enclave in every quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnclaveReport {
    /// CPU security version of the platform when the report was made.
    pub cpu_svn: [u8; 16],
    /// MISCSELECT: extended SSA frame features.
    pub misc_select: u32,
    /// ISV extended product id (KSS).
    pub isv_ext_prod_id: [u8; 16],
    /// ATTRIBUTES (FLAGS u64 ‖ XFRM u64).
    pub attributes: [u8; 16],
    /// MRENCLAVE: the enclave's measurement.
    pub mr_enclave: [u8; 32],
    /// MRSIGNER: hash of the enclave signer's public key.
    pub mr_signer: [u8; 32],
    /// CONFIGID (KSS): 64 bytes chosen by the launcher (carries init-data).
    pub config_id: [u8; 64],
    /// ISV product id.
    pub isv_prod_id: u16,
    /// ISV security version.
    pub isv_svn: u16,
    /// CONFIGSVN (KSS).
    pub config_svn: u16,
    /// ISV family id (KSS).
    pub isv_family_id: [u8; 16],
    /// REPORT_DATA: 64 bytes chosen by the enclave.
    pub report_data: [u8; 64],
}

impl EnclaveReport {
    fn parse(b: &[u8]) -> Result<Self> {
        if b.len() != ENCLAVE_REPORT_LEN {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "SGX enclave report must be {ENCLAVE_REPORT_LEN} bytes, got {}",
                    b.len()
                ),
            ));
        }
        Ok(EnclaveReport {
            cpu_svn: arr(b, ER_CPU_SVN),
            misc_select: u32_at(b, ER_MISC_SELECT),
            isv_ext_prod_id: arr(b, ER_ISV_EXT_PROD_ID),
            attributes: arr(b, ER_ATTRIBUTES),
            mr_enclave: arr(b, ER_MR_ENCLAVE),
            mr_signer: arr(b, ER_MR_SIGNER),
            config_id: arr(b, ER_CONFIG_ID),
            isv_prod_id: u16_at(b, ER_ISV_PROD_ID),
            isv_svn: u16_at(b, ER_ISV_SVN),
            config_svn: u16_at(b, ER_CONFIG_SVN),
            isv_family_id: arr(b, ER_ISV_FAMILY_ID),
            report_data: arr(b, ER_REPORT_DATA),
        })
    }

    /// ATTRIBUTES.FLAGS as a number.
    pub fn attribute_flags(&self) -> u64 {
        let mut f = [0u8; 8];
        f.copy_from_slice(&self.attributes[..8]);
        u64::from_le_bytes(f)
    }

    /// True when the enclave runs in debug mode (its memory is readable).
    pub fn debug(&self) -> bool {
        self.attribute_flags() & SGX_ATTR_DEBUG != 0
    }
}

/// A TD report body (TDX 1.0, or 1.5 with the second TCB SVN and service TD).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TdReport {
    /// TEE_TCB_SVN: security versions of the TDX module and its loader.
    pub tee_tcb_svn: [u8; 16],
    /// MRSEAM: measurement of the TDX module.
    pub mr_seam: [u8; 48],
    /// MRSIGNERSEAM: signer of the TDX module (zero for Intel's).
    pub mr_signer_seam: [u8; 48],
    /// SEAMATTRIBUTES.
    pub seam_attributes: [u8; 8],
    /// TDATTRIBUTES (bit 0: debug).
    pub td_attributes: [u8; 8],
    /// XFAM: extended features available to the TD.
    pub xfam: [u8; 8],
    /// MRTD: measurement of the initial TD contents (firmware).
    pub mr_td: [u8; 48],
    /// MRCONFIGID: 48 bytes set by the host at launch (init-data digest).
    pub mr_config_id: [u8; 48],
    /// MROWNER.
    pub mr_owner: [u8; 48],
    /// MROWNERCONFIG.
    pub mr_owner_config: [u8; 48],
    /// RTMR0..3: runtime-extendable measurement registers.
    pub rtmr: [[u8; 48]; 4],
    /// REPORTDATA: 64 bytes chosen by the TD.
    pub report_data: [u8; 64],
    /// TDX 1.5: TEE_TCB_SVN2 (current TCB after a TD-preserving update).
    pub tee_tcb_svn2: Option<[u8; 16]>,
    /// TDX 1.5: MRSERVICETD.
    pub mr_service_td: Option<[u8; 48]>,
    /// TDX 1.5 with service TDs: the extension bytes after MRSERVICETD.
    pub extension: Option<Vec<u8>>,
}

impl TdReport {
    fn parse(b: &[u8]) -> Result<Self> {
        if !matches!(
            b.len(),
            TD_REPORT10_LEN | TD_REPORT15_LEN | TD_REPORT15_EX_LEN
        ) {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "TD report must be {TD_REPORT10_LEN}, {TD_REPORT15_LEN} or {TD_REPORT15_EX_LEN} bytes, got {}",
                    b.len()
                ),
            ));
        }
        let td15 = b.len() >= TD_REPORT15_LEN;
        Ok(TdReport {
            tee_tcb_svn: arr(b, TD_TEE_TCB_SVN),
            mr_seam: arr(b, TD_MR_SEAM),
            mr_signer_seam: arr(b, TD_MR_SIGNER_SEAM),
            seam_attributes: arr(b, TD_SEAM_ATTRIBUTES),
            td_attributes: arr(b, TD_TD_ATTRIBUTES),
            xfam: arr(b, TD_XFAM),
            mr_td: arr(b, TD_MR_TD),
            mr_config_id: arr(b, TD_MR_CONFIG_ID),
            mr_owner: arr(b, TD_MR_OWNER),
            mr_owner_config: arr(b, TD_MR_OWNER_CONFIG),
            rtmr: TD_RTMR.map(|r| arr(b, r)),
            report_data: arr(b, TD_REPORT_DATA),
            tee_tcb_svn2: td15.then(|| arr(b, TD15_TEE_TCB_SVN2)),
            mr_service_td: td15.then(|| arr(b, TD15_MR_SERVICE_TD)),
            extension: (b.len() > TD_REPORT15_LEN).then(|| b[TD_REPORT15_LEN..].to_vec()),
        })
    }

    /// TDATTRIBUTES as a number.
    pub fn td_attributes_u64(&self) -> u64 {
        u64::from_le_bytes(self.td_attributes)
    }

    /// True when the TD is debuggable (the host can read its memory).
    pub fn debug(&self) -> bool {
        self.td_attributes_u64() & TD_ATTR_DEBUG != 0
    }

    /// TDX report version: "1.0" or "1.5".
    pub fn tdx_version(&self) -> &'static str {
        if self.tee_tcb_svn2.is_some() {
            "1.5"
        } else {
            "1.0"
        }
    }
}

/// The attested body of a quote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// An SGX enclave report.
    Sgx(Box<EnclaveReport>),
    /// A TD report.
    Td(Box<TdReport>),
}

/// A parsed DCAP quote. Nothing here is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quote {
    /// The header.
    pub header: Header,
    /// The attested report body.
    pub body: Body,
    /// Bytes `0..signed_len` (header and body) are signed by the attestation key.
    pub signed_len: usize,
    /// ECDSA P-256 signature (r ‖ s) over `header ‖ body`.
    pub signature: [u8; 64],
    /// The attestation key (uncompressed P-256 point without the 0x04 prefix).
    pub attestation_key: [u8; 64],
    /// The quoting enclave's report, as signed by the PCK key.
    pub qe_report_raw: Vec<u8>,
    /// The quoting enclave's report, parsed.
    pub qe_report: EnclaveReport,
    /// PCK signature (r ‖ s) over the QE report.
    pub qe_report_signature: [u8; 64],
    /// QE authentication data, hashed with the attestation key into the QE
    /// report's REPORT_DATA.
    pub qe_auth_data: Vec<u8>,
    /// Type of the innermost certification data (5 = PCK certificate chain).
    pub cert_data_type: u16,
    /// The innermost certification data (for type 5: the PEM chain).
    pub cert_data: Vec<u8>,
}

/// A bounds-checked little-endian reader that names what it was reading.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(Error::malformed(
                WHAT,
                format!(
                    "{field} at offset {:#x} needs {n} bytes, only {} left",
                    self.pos,
                    self.buf.len().saturating_sub(self.pos)
                ),
            )),
        }
    }
    fn u16(&mut self, field: &str) -> Result<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, field: &str) -> Result<u32> {
        let b = self.take(4, field)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn array<const N: usize>(&mut self, field: &str) -> Result<[u8; N]> {
        let b = self.take(N, field)?;
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        Ok(a)
    }
}

impl Quote {
    /// Parse a quote of version 3, 4 or 5. Zero padding after the signature
    /// data is ignored; any other trailing byte is refused (it would be
    /// unauthenticated).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_QUOTE_BYTES {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "{} bytes is more than the {MAX_QUOTE_BYTES}-byte limit",
                    bytes.len()
                ),
            ));
        }
        if bytes.len() < HEADER_LEN {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "{} bytes is shorter than the {HEADER_LEN}-byte header",
                    bytes.len()
                ),
            ));
        }
        let header = Header {
            version: u16_at(bytes, VERSION),
            attestation_key_type: u16_at(bytes, ATTESTATION_KEY_TYPE),
            tee_type: u32_at(bytes, TEE_TYPE),
            qe_svn: u16_at(bytes, QE_SVN),
            pce_svn: u16_at(bytes, PCE_SVN),
            qe_vendor_id: arr(bytes, QE_VENDOR_ID),
            user_data: arr(bytes, USER_DATA),
        };
        if header.tee_type != TEE_TYPE_SGX && header.tee_type != TEE_TYPE_TDX {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "tee_type at offset 0x4 is {:#x}; known: 0x0 (SGX), 0x81 (TDX)",
                    header.tee_type
                ),
            ));
        }
        if header.attestation_key_type != ATTESTATION_KEY_TYPE_ECDSA_P256 {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "attestation key type at offset 0x2 is {}; only 2 (ECDSA P-256) is supported",
                    header.attestation_key_type
                ),
            ));
        }

        let mut r = Reader {
            buf: bytes,
            pos: HEADER_LEN,
        };
        let body = match header.version {
            3 | 4 => {
                if header.version == 3 && header.tee_type != TEE_TYPE_SGX {
                    return Err(Error::malformed(
                        WHAT,
                        "a version 3 quote must be an SGX quote (tee_type 0)",
                    ));
                }
                if header.tee_type == TEE_TYPE_SGX {
                    Body::Sgx(Box::new(EnclaveReport::parse(
                        r.take(ENCLAVE_REPORT_LEN, "SGX report body")?,
                    )?))
                } else {
                    Body::Td(Box::new(TdReport::parse(
                        r.take(TD_REPORT10_LEN, "TD report body")?,
                    )?))
                }
            }
            5 => {
                debug_assert_eq!(r.pos, V5_BODY_TYPE.start);
                let body_type = r.u16("v5 body type")?;
                let body_size = r.u32("v5 body size")? as usize;
                debug_assert_eq!(r.pos, V5_BODY_SIZE.end);
                let (want, is_td) = match body_type {
                    BODY_TYPE_SGX => (ENCLAVE_REPORT_LEN, false),
                    BODY_TYPE_TD10 => (TD_REPORT10_LEN, true),
                    BODY_TYPE_TD15 => (TD_REPORT15_LEN, true),
                    BODY_TYPE_TD15_EX => (TD_REPORT15_EX_LEN, true),
                    other => {
                        return Err(Error::malformed(
                            WHAT,
                            format!(
                                "v5 body type at offset 0x30 is {other}; known: 1 (SGX), 2 (TD 1.0), 3 (TD 1.5), 4 (TD 1.5 with service TDs)"
                            ),
                        ));
                    }
                };
                if body_size != want {
                    return Err(Error::malformed(
                        WHAT,
                        format!(
                            "v5 body size at offset 0x32 is {body_size}, body type {body_type} needs {want}"
                        ),
                    ));
                }
                if is_td != (header.tee_type == TEE_TYPE_TDX) {
                    return Err(Error::malformed(
                        WHAT,
                        format!(
                            "v5 body type {body_type} does not match tee_type {:#x}",
                            header.tee_type
                        ),
                    ));
                }
                let b = r.take(body_size, "v5 report body")?;
                if is_td {
                    Body::Td(Box::new(TdReport::parse(b)?))
                } else {
                    Body::Sgx(Box::new(EnclaveReport::parse(b)?))
                }
            }
            v => {
                return Err(Error::malformed(
                    WHAT,
                    format!("version at offset 0x0 is {v}; supported: 3, 4, 5"),
                ));
            }
        };
        let signed_len = r.pos;

        let sig_len = r.u32("signature data length")? as usize;
        let sig_start = r.pos;
        let sig_data = r.take(sig_len, "signature data")?;
        // Quote buffers are often fixed-size and zero-padded; anything else
        // after the signature data would be unauthenticated, so refuse it.
        if let Some(i) = bytes[r.pos..].iter().position(|b| *b != 0) {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "non-zero byte at offset {:#x}, after the signature data (which ends at offset {:#x})",
                    r.pos + i,
                    r.pos
                ),
            ));
        }

        // Signature data, with offsets reported relative to the whole quote.
        let mut s = Reader {
            buf: &bytes[..sig_start + sig_data.len()],
            pos: sig_start,
        };
        let signature = s.array::<ECDSA_SIGNATURE_LEN>("quote signature")?;
        let attestation_key = s.array::<ATTESTATION_KEY_LEN>("attestation key")?;

        let qe_block_end;
        let mut q = if header.version == 3 {
            qe_block_end = s.buf.len();
            Reader {
                buf: s.buf,
                pos: s.pos,
            }
        } else {
            let outer_type = s.u16("certification data type")?;
            if outer_type != CERT_TYPE_QE_REPORT {
                return Err(Error::malformed(
                    WHAT,
                    format!(
                        "certification data type at offset {:#x} is {outer_type}; a v{} quote needs {CERT_TYPE_QE_REPORT} (QE report certification data)",
                        s.pos - 2,
                        header.version
                    ),
                ));
            }
            let outer_len = s.u32("certification data size")? as usize;
            let start = s.pos;
            s.take(outer_len, "QE report certification data")?;
            if s.pos != s.buf.len() {
                return Err(Error::malformed(
                    WHAT,
                    format!(
                        "{} unexpected bytes after the certification data in the signature data",
                        s.buf.len() - s.pos
                    ),
                ));
            }
            qe_block_end = s.pos;
            Reader {
                buf: &s.buf[..qe_block_end],
                pos: start,
            }
        };
        let qe_report_raw = q.take(ENCLAVE_REPORT_LEN, "QE report")?.to_vec();
        let qe_report = EnclaveReport::parse(&qe_report_raw)?;
        let qe_report_signature = q.array::<QE_REPORT_SIGNATURE_LEN>("QE report signature")?;
        let auth_len = q.u16("QE authentication data size")? as usize;
        let qe_auth_data = q.take(auth_len, "QE authentication data")?.to_vec();
        let cert_data_type = q.u16("PCK certification data type")?;
        let cert_len = q.u32("PCK certification data size")? as usize;
        let cert_data = q.take(cert_len, "PCK certification data")?.to_vec();
        if q.pos != qe_block_end {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "{} unexpected bytes after the PCK certification data",
                    qe_block_end - q.pos
                ),
            ));
        }

        Ok(Quote {
            header,
            body,
            signed_len,
            signature,
            attestation_key,
            qe_report_raw,
            qe_report,
            qe_report_signature,
            qe_auth_data,
            cert_data_type,
            cert_data,
        })
    }

    /// The TD report, if this is a TDX quote.
    pub fn td(&self) -> Option<&TdReport> {
        match &self.body {
            Body::Td(td) => Some(td),
            Body::Sgx(_) => None,
        }
    }

    /// The enclave report, if this is an SGX quote.
    pub fn sgx(&self) -> Option<&EnclaveReport> {
        match &self.body {
            Body::Sgx(r) => Some(r),
            Body::Td(_) => None,
        }
    }

    /// "TDX" or "SGX".
    pub fn tee_name(&self) -> &'static str {
        tee_type_name(self.header.tee_type)
    }
}

/// Human name of a `tee_type` value.
pub fn tee_type_name(tee_type: u32) -> &'static str {
    match tee_type {
        TEE_TYPE_TDX => "TDX",
        TEE_TYPE_SGX => "SGX",
        _ => "unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_consistent() {
        assert_eq!(USER_DATA.end, HEADER_LEN);
        assert_eq!(ER_REPORT_DATA.end, ENCLAVE_REPORT_LEN);
        assert_eq!(TD_REPORT_DATA.end, TD_REPORT10_LEN);
        assert_eq!(TD15_MR_SERVICE_TD.end, TD_REPORT15_LEN);
        assert_eq!(V5_BODY_SIZE.end, HEADER_LEN + 6);
        assert_eq!(TD_RTMR[3].end, TD_REPORT_DATA.start);
    }

    #[test]
    fn short_input_names_the_field() {
        let mut q = vec![0u8; 60];
        q[0] = 4;
        q[2] = 2;
        q[4] = 0x81;
        let e = Quote::parse(&q).unwrap_err();
        assert!(
            e.to_string().contains("TD report body at offset 0x30"),
            "{e}"
        );
    }
}
