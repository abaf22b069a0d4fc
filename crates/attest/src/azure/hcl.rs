//! The HCL report: what Azure's paravisor (the "host compatibility layer",
//! OpenHCL) writes into the vTPM NV index `0x01400001`. It wraps the
//! hardware report (SEV-SNP ATTESTATION_REPORT or TDX TDREPORT) whose
//! REPORT_DATA starts with a hash of the "variable data": a JSON document
//! carrying the vTPM attestation key (`HCLAkPub`) as a JWK.
//!
//! Layout (IGVM attestation request, little-endian):
//!
//! ```text
//! 0x000  ATTESTATION_HEADER (32 bytes)
//!          signature     u32   "HCLA" (0x414c4348)
//!          version       u32   1 or 2
//!          report_size   u32   header + hardware report + request data
//!          request_type  u32   2 (AK_CERT_REQUEST)
//!          status        u32   0
//!          reserved      3 × u32, zero
//! 0x020  hardware report (1184 bytes): an SNP report, or a 1024-byte
//!        TDREPORT followed by 160 zero bytes
//! 0x4C0  IGVM_REQUEST_DATA (20 bytes)
//!          data_size              u32   20 + variable_data_size
//!          version                u32   1
//!          report_type            u32   2 (SNP VM) | 4 (TDX VM)
//!          report_data_hash_type  u32   1 SHA-256 | 2 SHA-384 | 3 SHA-512
//!          variable_data_size     u32
//! 0x4D4  variable data (UTF-8 JSON runtime claims)
//!        zero padding up to the end of the NV index
//! ```
//!
//! Every byte is either covered by the hardware signature (the report),
//! bound by hash into it (the variable data) or checked here to have its
//! only valid value (header, sizes, reserved bytes, padding).

use std::ops::Range;

use serde_json::Value;
use sha2::Digest;

use crate::error::{Error, Result};
use crate::fields::u32_at;
use crate::tpm::AkPublic;

/// `"HCLA"` read as a little-endian u32.
pub const HCL_SIGNATURE: u32 = 0x414c_4348;
/// Header versions seen on Azure (1 on SNP, 2 on TDX VMs).
pub const HCL_VERSIONS: [u32; 2] = [1, 2];
/// `IgvmAttestRequestType::AK_CERT_REQUEST`: the report in the vTPM NV index.
pub const REQUEST_TYPE_AK_CERT: u32 = 2;
/// `IGVM_REQUEST_DATA` version.
pub const REQUEST_DATA_VERSION: u32 = 1;

/// Header fields.
pub const SIGNATURE: Range<usize> = 0x00..0x04;
/// Header version.
pub const VERSION: Range<usize> = 0x04..0x08;
/// Size of header + hardware report + request data.
pub const REPORT_SIZE: Range<usize> = 0x08..0x0C;
/// Request type.
pub const REQUEST_TYPE: Range<usize> = 0x0C..0x10;
/// Status (zero on success).
pub const STATUS: Range<usize> = 0x10..0x14;
/// Reserved, zero.
pub const HEADER_RESERVED: Range<usize> = 0x14..0x20;
/// Size of the attestation header.
pub const HEADER_LEN: usize = 0x20;
/// The hardware report area (the larger of the SNP and TDX report sizes).
pub const HW_REPORT: Range<usize> = 0x20..0x4C0;
/// Request data: its total size (fixed part + variable data).
pub const DATA_SIZE: Range<usize> = 0x4C0..0x4C4;
/// Request data version.
pub const DATA_VERSION: Range<usize> = 0x4C4..0x4C8;
/// Kind of hardware report.
pub const REPORT_TYPE: Range<usize> = 0x4C8..0x4CC;
/// Hash algorithm binding the variable data into REPORT_DATA.
pub const HASH_TYPE: Range<usize> = 0x4CC..0x4D0;
/// Size of the variable data.
pub const VAR_DATA_SIZE: Range<usize> = 0x4D0..0x4D4;
/// Start of the variable data.
pub const VAR_DATA_OFFSET: usize = 0x4D4;
/// Size of the fixed part of IGVM_REQUEST_DATA.
pub const REQUEST_DATA_FIXED_LEN: usize = VAR_DATA_OFFSET - DATA_SIZE.start;
/// Largest HCL report accepted (the NV index holds 2600 bytes).
pub const MAX_HCL_LEN: usize = 64 * 1024;

/// Size of a TDX TDREPORT inside the hardware report area.
pub const TD_REPORT_LEN: usize = 1024;
/// Size of an SEV-SNP report.
pub const SNP_REPORT_LEN: usize = 1184;
/// Reserved tail of the SNP report's signature field (after r and s).
pub const SNP_SIGNATURE_RESERVED: Range<usize> = 0x330..0x4A0;
/// Key id of the vTPM attestation key in the runtime data.
pub const AK_KEY_ID: &str = "HCLAkPub";

/// Which hardware report the HCL report wraps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportType {
    /// SEV-SNP ATTESTATION_REPORT (`IgvmAttestReportType::SNP_VM_REPORT` = 2).
    Snp,
    /// TDX TDREPORT (`IgvmAttestReportType::TDX_VM_REPORT` = 4).
    Tdx,
}

impl ReportType {
    /// Wire value.
    pub fn code(self) -> u32 {
        match self {
            ReportType::Snp => 2,
            ReportType::Tdx => 4,
        }
    }
    /// `snp` / `tdx`.
    pub fn name(self) -> &'static str {
        match self {
            ReportType::Snp => "snp",
            ReportType::Tdx => "tdx",
        }
    }
}

/// Hash algorithm of the variable-data binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashType {
    /// SHA-256 (what Azure uses).
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl HashType {
    /// `SHA-256`, …
    pub fn name(self) -> &'static str {
        match self {
            HashType::Sha256 => "SHA-256",
            HashType::Sha384 => "SHA-384",
            HashType::Sha512 => "SHA-512",
        }
    }
    /// Digest `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            HashType::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashType::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashType::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// A parsed HCL report (binary structure only; see [`HclReport::runtime_data`]).
#[derive(Debug, Clone)]
pub struct HclReport {
    /// Header version.
    pub version: u32,
    /// Header request type.
    pub request_type: u32,
    /// Kind of hardware report.
    pub report_type: ReportType,
    /// Variable-data hash algorithm.
    pub hash_type: HashType,
    /// The hardware report: 1184 bytes for SNP, 1024 for TDX.
    pub hw_report: Vec<u8>,
    /// The variable data (runtime claims JSON), exactly as hashed.
    pub var_data: Vec<u8>,
}

/// The runtime claims in the variable data.
#[derive(Debug, Clone)]
pub struct RuntimeData {
    /// The vTPM attestation key (`kid` = `HCLAkPub`).
    pub ak: AkPublic,
    /// `user-data` (hex in the JSON): the binding digest, from evidence v2 on.
    pub user_data: Option<Vec<u8>>,
    /// `vm-configuration`, as given.
    pub vm_configuration: Option<Value>,
    /// `kid` of every key in `keys`.
    pub key_ids: Vec<String>,
}

fn malformed(reason: impl Into<String>) -> Error {
    Error::malformed("HCL report", reason)
}

fn first_nonzero(b: &[u8]) -> Option<(usize, u8)> {
    b.iter().copied().enumerate().find(|&(_, v)| v != 0)
}

impl HclReport {
    /// Parse and check the binary structure.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_HCL_LEN {
            return Err(malformed(format!(
                "{} bytes exceeds the {MAX_HCL_LEN} byte limit",
                bytes.len()
            )));
        }
        if bytes.len() < VAR_DATA_OFFSET {
            return Err(malformed(format!(
                "{} bytes is shorter than the fixed part ({VAR_DATA_OFFSET} bytes)",
                bytes.len()
            )));
        }
        let sig = u32_at(bytes, SIGNATURE);
        if sig != HCL_SIGNATURE {
            return Err(malformed(format!(
                "signature at offset 0 is {:?} ({sig:#010x}), expected \"HCLA\"",
                String::from_utf8_lossy(&bytes[SIGNATURE])
            )));
        }
        let version = u32_at(bytes, VERSION);
        if !HCL_VERSIONS.contains(&version) {
            return Err(malformed(format!(
                "unsupported header version {version} (known: 1, 2)"
            )));
        }
        let request_type = u32_at(bytes, REQUEST_TYPE);
        if request_type != REQUEST_TYPE_AK_CERT {
            return Err(malformed(format!(
                "request type {request_type}; the vTPM's HCL report is an AK certificate request ({REQUEST_TYPE_AK_CERT})"
            )));
        }
        let status = u32_at(bytes, STATUS);
        if status != 0 {
            return Err(malformed(format!(
                "header status {status:#x} (not success)"
            )));
        }
        if let Some((i, v)) = first_nonzero(&bytes[HEADER_RESERVED]) {
            return Err(malformed(format!(
                "reserved header byte at offset {:#x} is {v:#04x}, must be zero",
                HEADER_RESERVED.start + i
            )));
        }
        let data_version = u32_at(bytes, DATA_VERSION);
        if data_version != REQUEST_DATA_VERSION {
            return Err(malformed(format!(
                "request data version {data_version} (known: {REQUEST_DATA_VERSION})"
            )));
        }
        let report_type = match u32_at(bytes, REPORT_TYPE) {
            2 => ReportType::Snp,
            4 => ReportType::Tdx,
            other => {
                return Err(malformed(format!(
                    "report type {other}; supported: 2 (SEV-SNP), 4 (TDX)"
                )));
            }
        };
        let hash_type = match u32_at(bytes, HASH_TYPE) {
            1 => HashType::Sha256,
            2 => HashType::Sha384,
            3 => HashType::Sha512,
            other => {
                return Err(malformed(format!(
                    "report data hash type {other}; known: 1 (SHA-256), 2 (SHA-384), 3 (SHA-512)"
                )));
            }
        };
        let var_size = u32_at(bytes, VAR_DATA_SIZE) as usize;
        let data_size = u32_at(bytes, DATA_SIZE) as usize;
        if data_size != REQUEST_DATA_FIXED_LEN + var_size {
            return Err(malformed(format!(
                "request data size {data_size} != {REQUEST_DATA_FIXED_LEN} + variable data size {var_size}"
            )));
        }
        let var_end = VAR_DATA_OFFSET
            .checked_add(var_size)
            .filter(|&e| e <= bytes.len())
            .ok_or_else(|| {
                malformed(format!(
                    "variable data of {var_size} bytes at offset {VAR_DATA_OFFSET:#x} runs past the end ({} bytes)",
                    bytes.len()
                ))
            })?;
        let report_size = u32_at(bytes, REPORT_SIZE) as usize;
        if report_size != var_end {
            return Err(malformed(format!(
                "header report size {report_size} != {var_end} (header + hardware report + request data)"
            )));
        }
        if let Some((i, v)) = first_nonzero(&bytes[var_end..]) {
            return Err(malformed(format!(
                "padding byte at offset {:#x} after the report is {v:#04x}; bytes {var_end:#x}..{:#x} must be zero (no signature covers them)",
                var_end + i,
                bytes.len()
            )));
        }
        let hw = &bytes[HW_REPORT];
        let hw_len = match report_type {
            ReportType::Snp => SNP_REPORT_LEN,
            ReportType::Tdx => TD_REPORT_LEN,
        };
        if let Some((i, v)) = first_nonzero(&hw[hw_len..]) {
            return Err(malformed(format!(
                "byte at offset {:#x} after the {}-byte {} report is {v:#04x}, must be zero",
                HW_REPORT.start + hw_len + i,
                hw_len,
                report_type.name().to_uppercase()
            )));
        }
        if report_type == ReportType::Snp {
            // The SNP report's signature field is r ‖ s ‖ reserved; the
            // reserved part is not signed and must be zero.
            let reserved = &hw[SNP_SIGNATURE_RESERVED];
            if let Some((i, v)) = first_nonzero(reserved) {
                return Err(malformed(format!(
                    "reserved byte at offset {:#x} of the SNP report's signature field is {v:#04x}, must be zero",
                    HW_REPORT.start + SNP_SIGNATURE_RESERVED.start + i
                )));
            }
        }
        Ok(HclReport {
            version,
            request_type,
            report_type,
            hash_type,
            hw_report: hw[..hw_len].to_vec(),
            var_data: bytes[VAR_DATA_OFFSET..var_end].to_vec(),
        })
    }

    /// Hash of the variable data with the report's hash type.
    pub fn var_data_hash(&self) -> Vec<u8> {
        self.hash_type.digest(&self.var_data)
    }

    /// Check the variable data is bound into the hardware report's
    /// REPORT_DATA (its first 32/48/64 bytes are the hash).
    pub fn check_var_data_binding(&self, hw_report_data: &[u8]) -> Result<()> {
        let h = self.var_data_hash();
        let got = hw_report_data.get(..h.len()).unwrap_or(hw_report_data);
        if !crate::expect::ct_eq(&h, got) {
            return Err(Error::mismatch(
                "azure.var_data_hash",
                format!(
                    "{} of the HCL runtime data (variable data) is not in the {} report's REPORT_DATA: the runtime data (and its attestation key) is not the one the hardware signed",
                    self.hash_type.name(),
                    self.report_type.name().to_uppercase()
                ),
                hex::encode(&h),
                hex::encode(got),
            ));
        }
        Ok(())
    }

    /// Parse the runtime claims JSON and take the attestation key from it.
    pub fn runtime_data(&self) -> Result<RuntimeData> {
        let bad = |r: String| Error::malformed("HCL runtime data", r);
        let v: Value = serde_json::from_slice(&self.var_data).map_err(|e| bad(e.to_string()))?;
        let keys = v
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"keys\" array".into()))?;
        let key_ids: Vec<String> = keys
            .iter()
            .filter_map(|k| k.get("kid").and_then(Value::as_str).map(str::to_string))
            .collect();
        let mut aks = keys
            .iter()
            .filter(|k| k.get("kid").and_then(Value::as_str) == Some(AK_KEY_ID));
        let ak = aks.next().ok_or_else(|| {
            bad(format!(
                "no key with kid {AK_KEY_ID:?} (keys: {})",
                key_ids.join(", ")
            ))
        })?;
        if aks.next().is_some() {
            return Err(bad(format!("more than one key with kid {AK_KEY_ID:?}")));
        }
        let member = |m: &str| {
            ak.get(m)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("{AK_KEY_ID} has no string member {m:?}")))
        };
        let kty = member("kty")?;
        if kty != "RSA" {
            return Err(bad(format!(
                "{AK_KEY_ID} has kty {kty:?}; the vTPM AK is an RSA key"
            )));
        }
        let ak = AkPublic::from_rsa_jwk(member("n")?, member("e")?)?;
        let user_data = match v.get("user-data") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(hex::decode(s.trim()).map_err(|e| bad(format!("user-data is not hex: {e}")))?)
            }
            Some(_) => return Err(bad("user-data is not a string".into())),
        };
        Ok(RuntimeData {
            ak,
            user_data,
            vm_configuration: v.get("vm-configuration").cloned(),
            key_ids,
        })
    }

    /// `raw.hcl`: the report's facts.
    pub fn to_json(&self, runtime: &RuntimeData) -> Value {
        serde_json::json!({
            "version": self.version,
            "request_type": self.request_type,
            "report_type": self.report_type.name(),
            "var_data_hash_type": self.hash_type.name(),
            "var_data_hash": hex::encode(self.var_data_hash()),
            "var_data_bound": true,
            "keys": runtime.key_ids,
            "ak": runtime.ak.to_json(),
            "user_data": runtime.user_data.as_ref().map(hex::encode),
            "vm_configuration": runtime.vm_configuration,
        })
    }
}

/// TDREPORT fields (TDX module ABI, `TDREPORT_STRUCT`) that also appear in
/// the signed TD quote body, as (name, range) within the 1024-byte report.
pub const TD_REPORT_FIELDS: [(&str, Range<usize>); 12] = [
    ("report_data", 128..192),
    ("tee_tcb_svn", 264..280),
    ("mr_seam", 280..328),
    ("mr_signer_seam", 328..376),
    ("seam_attributes", 376..384),
    ("td_attributes", 512..520),
    ("xfam", 520..528),
    ("mr_td", 528..576),
    ("mr_config_id", 576..624),
    ("mr_owner", 624..672),
    ("mr_owner_config", 672..720),
    ("rtmr", 720..912),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(var: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; VAR_DATA_OFFSET];
        b[SIGNATURE].copy_from_slice(&HCL_SIGNATURE.to_le_bytes());
        b[VERSION].copy_from_slice(&1u32.to_le_bytes());
        b[REPORT_SIZE].copy_from_slice(&((VAR_DATA_OFFSET + var.len()) as u32).to_le_bytes());
        b[REQUEST_TYPE].copy_from_slice(&2u32.to_le_bytes());
        b[DATA_SIZE].copy_from_slice(&((20 + var.len()) as u32).to_le_bytes());
        b[DATA_VERSION].copy_from_slice(&1u32.to_le_bytes());
        b[REPORT_TYPE].copy_from_slice(&2u32.to_le_bytes());
        b[HASH_TYPE].copy_from_slice(&1u32.to_le_bytes());
        b[VAR_DATA_SIZE].copy_from_slice(&(var.len() as u32).to_le_bytes());
        b.extend_from_slice(var);
        b
    }

    #[test]
    fn layout_constants_agree() {
        assert_eq!(HW_REPORT.len(), SNP_REPORT_LEN);
        assert_eq!(REQUEST_DATA_FIXED_LEN, 20);
        let b = minimal(b"{}");
        let r = HclReport::parse(&b).unwrap();
        assert_eq!(r.var_data, b"{}");
        assert_eq!(r.report_type, ReportType::Snp);
    }

    #[test]
    fn sizes_that_do_not_add_up_are_malformed() {
        let mut b = minimal(b"{}");
        b[VAR_DATA_SIZE].copy_from_slice(&5000u32.to_le_bytes());
        b[DATA_SIZE].copy_from_slice(&5020u32.to_le_bytes());
        let e = HclReport::parse(&b).unwrap_err();
        assert!(e.to_string().contains("runs past the end"), "{e}");
        let mut b = minimal(b"{}");
        b.push(1);
        let e = HclReport::parse(&b).unwrap_err();
        assert!(e.to_string().contains("padding byte"), "{e}");
    }

    #[test]
    fn runtime_data_needs_the_ak() {
        let r = HclReport::parse(&minimal(br#"{"keys":[{"kid":"HCLEkPub"}]}"#)).unwrap();
        let e = r.runtime_data().unwrap_err();
        assert!(
            e.to_string()
                .contains("no key with kid \"HCLAkPub\" (keys: HCLEkPub)"),
            "{e}"
        );
    }
}
