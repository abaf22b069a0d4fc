//! The NVIDIA GPU attestation report: an SPDM 1.1 GET_MEASUREMENTS request
//! followed by the signed MEASUREMENTS response (DMTF DSP0274 1.1, §10.11),
//! as the GPU driver returns it. Multi-byte integers are little-endian.
//!
//! ```text
//! request   0x00  SPDMVersion (0x11) | RequestResponseCode (0xE0) | Param1 | Param2
//!           0x04  Nonce (32, chosen by the verifier)
//!           0x24  SlotIDParam
//! response  0x25  SPDMVersion (0x11) | RequestResponseCode (0x60) | Param1 | Param2
//!           0x29  NumberOfBlocks
//!           0x2A  MeasurementRecordLength (3) = L1
//!           0x2D  MeasurementRecord (L1): blocks of
//!                   Index | MeasurementSpecification (1 = DMTF) | MeasurementSize (2)
//!                   DMTFSpecMeasurementValueType | DMTFSpecMeasurementValueSize (2) | value
//!           +L1   Nonce (32, chosen by the GPU)
//!                 OpaqueLength (2) = L2
//!                 OpaqueData (L2): NVIDIA fields, each DataType (2) | DataSize (2) | data
//!                 Signature (96): ECDSA P-384 r ‖ s, big-endian, over SHA-384 of
//!                   every byte before it (request and response)
//! ```
//!
//! The report is untrusted input: every length is checked before it is used,
//! the structure must fill the input exactly, and errors name the field and
//! its offset from the start of the report.

use std::borrow::Cow;
use std::ops::Range;

use crate::error::{Error, Result};

/// What errors call the input.
const WHAT: &str = "NVIDIA attestation report";

/// Size of the GET_MEASUREMENTS request that opens the report.
pub const REQUEST_LEN: usize = 0x25;
/// Size of a requester or responder nonce.
pub const NONCE_LEN: usize = 32;
/// Size of the raw ECDSA P-384 signature (r ‖ s) that closes the report.
pub const SIGNATURE_LEN: usize = 96;
/// Largest raw report accepted (the hex text form may be twice that).
pub const MAX_REPORT_LEN: usize = 64 * 1024;

/// SPDMVersion of every message this module understands (SPDM 1.1).
pub const SPDM_VERSION_1_1: u8 = 0x11;
/// RequestResponseCode of GET_MEASUREMENTS.
pub const GET_MEASUREMENTS: u8 = 0xE0;
/// RequestResponseCode of MEASUREMENTS.
pub const MEASUREMENTS: u8 = 0x60;
/// MeasurementSpecification bit 0: the block holds a DMTF measurement.
pub const MEASUREMENT_SPEC_DMTF: u8 = 0x01;

// Request fields, offsets from the start of the report.
const REQ_VERSION: usize = 0x00;
const REQ_CODE: usize = 0x01;
const REQ_PARAM1: usize = 0x02;
const REQ_PARAM2: usize = 0x03;
const REQ_NONCE: Range<usize> = 0x04..0x24;
const REQ_SLOT_ID: usize = 0x24;

// Response header fields, offsets from the start of the report.
const RESP_VERSION: usize = REQUEST_LEN;
const RESP_CODE: usize = 0x26;
const RESP_PARAM1: usize = 0x27;
const RESP_PARAM2: usize = 0x28;
const RESP_NUM_BLOCKS: usize = 0x29;
const RESP_RECORD_LEN: Range<usize> = 0x2A..0x2D;
/// The measurement record starts here; everything after it is at an offset
/// that depends on the record's and the opaque data's lengths.
const RESP_RECORD: usize = 0x2D;

/// Measurement block header: index, specification, 2-byte size.
const BLOCK_HEADER_LEN: usize = 4;
/// DMTF measurement header: value type, 2-byte value size.
const DMTF_HEADER_LEN: usize = 3;
/// Opaque field header: 2-byte type, 2-byte size.
const OPAQUE_HEADER_LEN: usize = 4;

/// NVIDIA's opaque data field types, with the names NVIDIA's verifier
/// (`nv-local-gpu-verifier`, `OPAQUE_FIELD_ID_*`) and Trustee's `nvidia`
/// verifier give them.
pub mod opaque {
    /// Issuer name of the certificate that signed the report.
    pub const CERT_ISSUER_NAME: u16 = 1;
    /// Authority key identifier of that certificate.
    pub const CERT_AUTHORITY_KEY_IDENTIFIER: u16 = 2;
    /// Driver version, NUL-terminated text (`550.90.07`).
    pub const DRIVER_VERSION: u16 = 3;
    /// GPU information word.
    pub const GPU_INFO: u16 = 4;
    /// SKU.
    pub const SKU: u16 = 5;
    /// VBIOS version, 8 bytes (see [`super::vbios_version`]).
    pub const VBIOS_VERSION: u16 = 6;
    /// Manufacturer ID.
    pub const MANUFACTURER_ID: u16 = 7;
    /// Tamper detection.
    pub const TAMPER_DETECTION: u16 = 8;
    /// SMC.
    pub const SMC: u16 = 9;
    /// Video protected region.
    pub const VPR: u16 = 10;
    /// NVDEC0 status, one character.
    pub const NVDEC0_STATUS: u16 = 11;
    /// Measurement counts: one little-endian u32 per measurement index.
    pub const MSRSCNT: u16 = 12;
    /// CPR information.
    pub const CPRINFO: u16 = 13;
    /// Board ID.
    pub const BOARD_ID: u16 = 14;
    /// Chip SKU, text.
    pub const CHIP_SKU: u16 = 15;
    /// Chip SKU modifier, text.
    pub const CHIP_SKU_MOD: u16 = 16;
    /// Project, text.
    pub const PROJECT: u16 = 17;
    /// Project SKU, text.
    pub const PROJECT_SKU: u16 = 18;
    /// Project SKU modifier.
    pub const PROJECT_SKU_MOD: u16 = 19;
    /// Firmware ID: SHA-384 of the firmware, also in the leaf certificate.
    pub const FWID: u16 = 20;
    /// Protected PCIe status, one character.
    pub const PROTECTED_PCIE_STATUS: u16 = 21;
    /// NVSwitch PDIs (8 bytes each).
    pub const SWITCH_PDI: u16 = 22;
    /// NVSwitch floorswept ports.
    pub const FLOORSWEPT_PORTS: u16 = 23;
    /// Position ID.
    pub const POSITION_ID: u16 = 24;
    /// NVSwitch lock status.
    pub const LOCK_SWITCH_STATUS: u16 = 25;
    /// GPU link connections.
    pub const GPU_LINK_CONN: u16 = 32;
    /// System enable status.
    pub const SYS_ENABLE_STATUS: u16 = 33;
    /// Version of the opaque data layout (little-endian integer).
    pub const OPAQUE_DATA_VERSION: u16 = 34;
    /// Chip information, text.
    pub const CHIP_INFO: u16 = 35;
    /// Feature flag: 0 SPT, 1 MPT, 2 PPCIE (little-endian integer).
    pub const FEATURE_FLAG: u16 = 36;

    /// The claim name of a field type (Trustee's `config` keys), if known.
    pub fn name(id: u16) -> Option<&'static str> {
        Some(match id {
            CERT_ISSUER_NAME => "cert_issuer_name",
            CERT_AUTHORITY_KEY_IDENTIFIER => "cert_authority_key_identifier",
            DRIVER_VERSION => "driver_version",
            GPU_INFO => "gpu_info",
            SKU => "id_sku",
            VBIOS_VERSION => "vbios_version",
            MANUFACTURER_ID => "manufacturer_id",
            TAMPER_DETECTION => "tamper_detection",
            SMC => "smc",
            VPR => "vpr",
            NVDEC0_STATUS => "nvdec0_status",
            MSRSCNT => "measurement_count",
            CPRINFO => "cpr_info",
            BOARD_ID => "board_id",
            CHIP_SKU => "chip_sku",
            CHIP_SKU_MOD => "chip_sku_mod",
            PROJECT => "project",
            PROJECT_SKU => "project_sku",
            PROJECT_SKU_MOD => "project_sku_mod",
            FWID => "fwid",
            PROTECTED_PCIE_STATUS => "protected_pcie_status",
            SWITCH_PDI => "switch_pdi",
            FLOORSWEPT_PORTS => "floorswept_ports",
            POSITION_ID => "position_id",
            LOCK_SWITCH_STATUS => "lock_switch_status",
            GPU_LINK_CONN => "gpu_link_conn",
            SYS_ENABLE_STATUS => "sys_enable_status",
            OPAQUE_DATA_VERSION => "opaque_data_version",
            CHIP_INFO => "chip_info",
            FEATURE_FLAG => "feature_flag",
            _ => return None,
        })
    }
}

/// The GET_MEASUREMENTS request the verifier (or the guest on its behalf)
/// sent to the GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Param1: bit 0 asks for a signed response.
    pub param1: u8,
    /// Param2: the measurement index requested (0xFF = all).
    pub param2: u8,
    /// The requester's nonce: the freshness value a verifier chooses.
    pub nonce: [u8; NONCE_LEN],
    /// SlotIDParam: the certificate slot of the signing key.
    pub slot_id: u8,
}

/// One measurement block of the MEASUREMENTS response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MeasurementBlock {
    /// Measurement index (1-based; NVIDIA reports 1..=64).
    pub index: u8,
    /// DMTFSpecMeasurementValueType (bit 7: raw bit stream instead of a digest).
    pub value_type: u8,
    /// The measurement value (a SHA-384 digest on Hopper).
    pub value: Vec<u8>,
}

/// One NVIDIA opaque data field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueField {
    /// Field type (see [`opaque`]).
    pub id: u16,
    /// Raw value.
    pub value: Vec<u8>,
}

/// A parsed NVIDIA attestation report. The raw bytes are kept for the
/// signature check.
#[derive(Debug, Clone)]
pub struct Report {
    raw: Vec<u8>,
    /// The GET_MEASUREMENTS request.
    pub request: Request,
    /// MEASUREMENTS Param1 (number of measurement indices when asked for it).
    pub response_param1: u8,
    /// MEASUREMENTS Param2 (slot ID of the signing certificate).
    pub response_param2: u8,
    /// Measurement blocks, in report order.
    pub measurements: Vec<MeasurementBlock>,
    /// The GPU's own nonce.
    pub responder_nonce: [u8; NONCE_LEN],
    /// NVIDIA opaque data fields, in report order; types are unique.
    pub opaque: Vec<OpaqueField>,
    /// ECDSA P-384 signature, r ‖ s big-endian.
    pub signature: [u8; SIGNATURE_LEN],
}

/// A bounds-checked reader over the report that names what it reads.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8]> {
        let left = self.bytes.len() - self.pos;
        if n > left {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "{field} at offset {:#x} needs {n} bytes, {left} left (report is {} bytes)",
                    self.pos,
                    self.bytes.len()
                ),
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, field: &str) -> Result<u8> {
        Ok(self.take(1, field)?[0])
    }

    fn expect(&mut self, want: u8, field: &str) -> Result<()> {
        let at = self.pos;
        let v = self.u8(field)?;
        if v != want {
            return Err(Error::malformed(
                WHAT,
                format!("{field} at offset {at:#x} is {v:#04x}, expected {want:#04x}"),
            ));
        }
        Ok(())
    }

    fn u16(&mut self, field: &str) -> Result<u16> {
        let b = self.take(2, field)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u24(&mut self, field: &str) -> Result<usize> {
        let b = self.take(3, field)?;
        Ok(usize::from(b[0]) | usize::from(b[1]) << 8 | usize::from(b[2]) << 16)
    }
}

/// The raw report from either raw bytes or hex text (as NVIDIA's tools and
/// Trustee store it; ASCII whitespace is ignored). A raw report starts with
/// SPDMVersion 0x11, which is not a hex digit, so the two cannot be confused.
pub fn decode_input(input: &[u8]) -> Result<Cow<'_, [u8]>> {
    let trimmed = input.trim_ascii();
    let is_text = !trimmed.is_empty()
        && trimmed
            .iter()
            .all(|b| b.is_ascii_hexdigit() || b.is_ascii_whitespace());
    if !is_text {
        return Ok(Cow::Borrowed(input));
    }
    if trimmed.len() > 3 * MAX_REPORT_LEN {
        return Err(Error::malformed(
            WHAT,
            format!(
                "hex text is {} bytes, more than the {} a {MAX_REPORT_LEN}-byte report needs",
                trimmed.len(),
                3 * MAX_REPORT_LEN
            ),
        ));
    }
    let digits: Vec<u8> = trimmed
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    hex::decode(&digits)
        .map(Cow::Owned)
        .map_err(|e| Error::malformed(WHAT, format!("hex text: {e}")))
}

impl Report {
    /// Parse a report given as raw bytes or hex text.
    pub fn parse(input: &[u8]) -> Result<Self> {
        let bytes = decode_input(input)?;
        Self::parse_raw(&bytes)
    }

    /// Parse a raw (binary) report.
    pub fn parse_raw(b: &[u8]) -> Result<Self> {
        if b.len() > MAX_REPORT_LEN {
            return Err(Error::malformed(
                WHAT,
                format!("length is {} bytes, the limit is {MAX_REPORT_LEN}", b.len()),
            ));
        }
        let mut r = Reader { bytes: b, pos: 0 };
        debug_assert_eq!(r.pos, REQ_VERSION);
        r.expect(SPDM_VERSION_1_1, "request SPDMVersion")?;
        debug_assert_eq!(r.pos, REQ_CODE);
        r.expect(GET_MEASUREMENTS, "request code")?;
        debug_assert_eq!(r.pos, REQ_PARAM1);
        let param1 = r.u8("request Param1")?;
        debug_assert_eq!(r.pos, REQ_PARAM2);
        let param2 = r.u8("request Param2")?;
        debug_assert_eq!(r.pos, REQ_NONCE.start);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(r.take(NONCE_LEN, "request nonce")?);
        debug_assert_eq!(r.pos, REQ_SLOT_ID);
        let slot_id = r.u8("request SlotIDParam")?;
        let request = Request {
            param1,
            param2,
            nonce,
            slot_id,
        };

        debug_assert_eq!(r.pos, RESP_VERSION);
        r.expect(SPDM_VERSION_1_1, "response SPDMVersion")?;
        debug_assert_eq!(r.pos, RESP_CODE);
        r.expect(MEASUREMENTS, "response code")?;
        debug_assert_eq!(r.pos, RESP_PARAM1);
        let response_param1 = r.u8("response Param1")?;
        debug_assert_eq!(r.pos, RESP_PARAM2);
        let response_param2 = r.u8("response Param2")?;
        debug_assert_eq!(r.pos, RESP_NUM_BLOCKS);
        let num_blocks = r.u8("NumberOfBlocks")?;
        debug_assert_eq!(r.pos, RESP_RECORD_LEN.start);
        let record_len = r.u24("MeasurementRecordLength")?;
        debug_assert_eq!(r.pos, RESP_RECORD);
        let record = r.take(record_len, "MeasurementRecord")?;
        let measurements = parse_record(record, RESP_RECORD, num_blocks)?;

        let mut responder_nonce = [0u8; NONCE_LEN];
        responder_nonce.copy_from_slice(r.take(NONCE_LEN, "response nonce")?);
        let opaque_len = usize::from(r.u16("OpaqueLength")?);
        let opaque_at = r.pos;
        let opaque = parse_opaque(r.take(opaque_len, "OpaqueData")?, opaque_at)?;

        let sig_at = r.pos;
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(r.take(SIGNATURE_LEN, "signature")?);
        if r.pos != b.len() {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "{} bytes follow the signature at offset {sig_at:#x}; the report must end there",
                    b.len() - r.pos
                ),
            ));
        }
        Ok(Report {
            raw: b.to_vec(),
            request,
            response_param1,
            response_param2,
            measurements,
            responder_nonce,
            opaque,
            signature,
        })
    }

    /// The bytes the signature covers: the request and the response up to
    /// the signature.
    pub fn signed_bytes(&self) -> &[u8] {
        &self.raw[..self.raw.len() - SIGNATURE_LEN]
    }

    /// The whole raw report.
    pub fn as_bytes(&self) -> &[u8] {
        &self.raw
    }

    /// The raw value of an opaque field.
    pub fn opaque_field(&self, id: u16) -> Option<&[u8]> {
        self.opaque
            .iter()
            .find(|f| f.id == id)
            .map(|f| f.value.as_slice())
    }

    /// The raw value of an opaque field that must be present.
    pub fn required_field(&self, id: u16) -> Result<&[u8]> {
        self.opaque_field(id).ok_or_else(|| {
            Error::malformed(
                WHAT,
                format!(
                    "opaque data has no {} field (type {id})",
                    opaque::name(id).unwrap_or("unknown")
                ),
            )
        })
    }

    /// The firmware ID (opaque field 20).
    pub fn fwid(&self) -> Result<&[u8]> {
        self.required_field(opaque::FWID)
    }

    /// The driver version (`550.90.07`).
    pub fn driver_version(&self) -> Result<String> {
        Ok(text(self.required_field(opaque::DRIVER_VERSION)?))
    }

    /// The VBIOS version as NVIDIA prints it (`96.00.9f.00.01`).
    pub fn vbios_version(&self) -> Result<String> {
        vbios_version(self.required_field(opaque::VBIOS_VERSION)?)
    }
}

/// Parse `count` measurement blocks that must fill `record` exactly.
/// `base` is the record's offset in the report, for error messages.
fn parse_record(record: &[u8], base: usize, count: u8) -> Result<Vec<MeasurementBlock>> {
    let mut r = Reader {
        bytes: record,
        pos: 0,
    };
    let at = |pos: usize| base + pos;
    let mut blocks: Vec<MeasurementBlock> = Vec::with_capacity(usize::from(count));
    for n in 0..count {
        let block_at = at(r.pos);
        let header = r
            .take(BLOCK_HEADER_LEN, "measurement block header")
            .map_err(|_| {
                Error::malformed(
                    WHAT,
                    format!(
                        "measurement block {n} of {count} at offset {block_at:#x}: the record ends before its header"
                    ),
                )
            })?;
        let (index, spec) = (header[0], header[1]);
        let size = usize::from(u16::from_le_bytes([header[2], header[3]]));
        if spec != MEASUREMENT_SPEC_DMTF {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "measurement block {index} at offset {block_at:#x}: MeasurementSpecification is {spec:#04x}, only DMTF ({MEASUREMENT_SPEC_DMTF:#04x}) is supported"
                ),
            ));
        }
        if blocks.iter().any(|b| b.index == index) {
            return Err(Error::malformed(
                WHAT,
                format!("measurement block at offset {block_at:#x} repeats index {index}"),
            ));
        }
        let body = r.take(size, "measurement").map_err(|_| {
            Error::malformed(
                WHAT,
                format!(
                    "measurement block {index} at offset {block_at:#x}: MeasurementSize {size} runs past the record's end at offset {:#x}",
                    at(record.len())
                ),
            )
        })?;
        if body.len() < DMTF_HEADER_LEN {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "measurement block {index} at offset {block_at:#x}: MeasurementSize {size} is smaller than the 3-byte DMTF header"
                ),
            ));
        }
        let value_size = usize::from(u16::from_le_bytes([body[1], body[2]]));
        if value_size != body.len() - DMTF_HEADER_LEN {
            return Err(Error::malformed(
                WHAT,
                format!(
                    "measurement block {index} at offset {block_at:#x}: DMTF value size {value_size} does not match MeasurementSize {size} - 3"
                ),
            ));
        }
        blocks.push(MeasurementBlock {
            index,
            value_type: body[0],
            value: body[DMTF_HEADER_LEN..].to_vec(),
        });
    }
    if r.pos != record.len() {
        return Err(Error::malformed(
            WHAT,
            format!(
                "MeasurementRecordLength is {} but its {count} blocks end at offset {:#x}, {} bytes early",
                record.len(),
                at(r.pos),
                record.len() - r.pos
            ),
        ));
    }
    Ok(blocks)
}

/// Parse NVIDIA's opaque fields, which must fill `data` exactly.
fn parse_opaque(data: &[u8], base: usize) -> Result<Vec<OpaqueField>> {
    let mut r = Reader {
        bytes: data,
        pos: 0,
    };
    let mut fields: Vec<OpaqueField> = Vec::new();
    while r.pos < data.len() {
        let field_at = base + r.pos;
        let header = r.take(OPAQUE_HEADER_LEN, "opaque field header").map_err(|_| {
            Error::malformed(
                WHAT,
                format!(
                    "opaque field at offset {field_at:#x}: {} bytes left, a field header is {OPAQUE_HEADER_LEN}",
                    data.len() - r.pos
                ),
            )
        })?;
        let id = u16::from_le_bytes([header[0], header[1]]);
        let size = usize::from(u16::from_le_bytes([header[2], header[3]]));
        let name = opaque::name(id).unwrap_or("unknown");
        let value = r.take(size, "opaque field").map_err(|_| {
            Error::malformed(
                WHAT,
                format!(
                    "opaque field {name} (type {id}) at offset {field_at:#x}: DataSize {size} runs past OpaqueData's end at offset {:#x}",
                    base + data.len()
                ),
            )
        })?;
        if fields.iter().any(|f| f.id == id) {
            return Err(Error::malformed(
                WHAT,
                format!("opaque field {name} (type {id}) at offset {field_at:#x} is repeated"),
            ));
        }
        fields.push(OpaqueField {
            id,
            value: value.to_vec(),
        });
    }
    Ok(fields)
}

/// Text fields are NUL-padded; invalid UTF-8 is replaced, not refused (the
/// value is signed, and shown to a human or compared with a policy).
pub fn text(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw)
        .trim_end_matches('\0')
        .to_string()
}

/// The VBIOS version as NVIDIA prints it: the first half of the field's
/// bytes reversed, then the byte after them (`00 9f 00 96 01 00 00 00` is
/// `96.00.9f.00.01`).
pub fn vbios_version(raw: &[u8]) -> Result<String> {
    if raw.len() != 8 {
        return Err(Error::malformed(
            WHAT,
            format!(
                "opaque field vbios_version is {} bytes, expected 8",
                raw.len()
            ),
        ));
    }
    let mut parts: Vec<String> = raw[..4].iter().rev().map(|b| format!("{b:02x}")).collect();
    parts.push(format!("{:02x}", raw[4]));
    Ok(parts.join("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/nvidia/hopperAttestationReport.txt"
    );

    fn fixture() -> Vec<u8> {
        std::fs::read(FIXTURE).expect("fixture hopperAttestationReport.txt")
    }

    #[test]
    fn nvidia_parses_fixture_structure() {
        let r = Report::parse(&fixture()).expect("fixture parses");
        assert_eq!(r.as_bytes().len(), 4117);
        assert_eq!(r.request.param1, 0x01);
        assert_eq!(r.request.param2, 0xff);
        assert_eq!(r.request.slot_id, 0);
        assert_eq!(
            hex::encode(r.request.nonce),
            "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb"
        );
        assert_eq!(r.measurements.len(), 64);
        assert!(
            r.measurements
                .iter()
                .all(|m| m.value.len() == 48 && m.value_type == 1)
        );
        assert_eq!(r.opaque.len(), 14);
        assert_eq!(r.signed_bytes().len(), 4117 - SIGNATURE_LEN);
        assert_eq!(r.driver_version().unwrap(), "550.90.07");
        assert_eq!(r.vbios_version().unwrap(), "96.00.9f.00.01");
    }

    #[test]
    fn nvidia_raw_and_hex_inputs_agree() {
        let text = fixture();
        let raw = hex::decode(text.trim_ascii()).unwrap();
        let a = Report::parse(&text).unwrap();
        let b = Report::parse(&raw).unwrap();
        assert_eq!(a.as_bytes(), b.as_bytes());
    }

    #[test]
    fn nvidia_truncation_names_the_field_and_offset() {
        let raw = hex::decode(fixture().trim_ascii()).unwrap();
        let e = Report::parse_raw(&raw[..20]).unwrap_err().to_string();
        assert!(e.contains("request nonce at offset 0x4"), "{e}");
        let e = Report::parse_raw(&raw[..raw.len() - 1])
            .unwrap_err()
            .to_string();
        assert!(e.contains("signature at offset 0xfb5"), "{e}");
        let mut long = raw.clone();
        long.push(0);
        let e = Report::parse_raw(&long).unwrap_err().to_string();
        assert!(e.contains("follow the signature"), "{e}");
    }

    #[test]
    fn nvidia_wrong_codes_are_malformed() {
        let mut raw = hex::decode(fixture().trim_ascii()).unwrap();
        raw[RESP_CODE] = 0x7f;
        let e = Report::parse_raw(&raw).unwrap_err().to_string();
        assert!(
            e.contains("response code at offset 0x26 is 0x7f, expected 0x60"),
            "{e}"
        );
    }

    #[test]
    fn nvidia_record_length_mismatch_is_malformed() {
        let mut raw = hex::decode(fixture().trim_ascii()).unwrap();
        // One block fewer than announced: the record has 55 bytes (4 + 51) left over.
        raw[RESP_NUM_BLOCKS] = 63;
        let e = Report::parse_raw(&raw).unwrap_err().to_string();
        assert!(e.contains("55 bytes early"), "{e}");
    }

    #[test]
    fn nvidia_vbios_version_format() {
        assert_eq!(
            vbios_version(&[0x00, 0x9f, 0x00, 0x96, 0x01, 0, 0, 0]).unwrap(),
            "96.00.9f.00.01"
        );
        assert!(vbios_version(&[1, 2, 3]).is_err());
    }
}
