//! Claims about an NVIDIA GPU, from a verified attestation report.
//!
//! Names and encodings follow Trustee's `nvidia` verifier, which follows
//! NVIDIA's: Trustee nests the opaque-data fields under `config`, here
//! they sit at the top level of [`ReportClaims`] with the same names and
//! values (text fields as text, the VBIOS version dotted, the rest hex).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::report::{self, Report, opaque};
use crate::error::{Error, Result};

/// Everything a verified GPU report says, with where the device chain
/// places the GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuClaims {
    /// GPU architecture, from the device chain (`Hopper`).
    pub arch: String,
    /// Hardware model: the common name of the certificate that issued the
    /// leaf (`GH100 A01 GSP BROM`), as NVIDIA's verifier reports it.
    pub hwmodel: String,
    /// Leaf certificate serial number, hex (NVIDIA's `ueid`).
    pub ueid: String,
    /// Whether the revocation (OCSP) of every certificate involved (the
    /// device chain and, when measurements were appraised, both RIM signer
    /// chains) was checked with supplied responses; a policy can require it.
    pub revocation_checked: bool,
    /// Whether the measurements were compared with signature-verified
    /// reference integrity manifests for the report's versions.
    pub measurements_appraised: bool,
    /// Claims read from the report itself.
    #[serde(flatten)]
    pub report: ReportClaims,
}

/// Claims read from the signed report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportClaims {
    /// The requester's nonce from the GET_MEASUREMENTS request, hex: the
    /// value a verifier chose and `expected_nonce` is compared with.
    pub nonce: String,
    /// Driver version (`550.90.07`).
    pub driver_version: String,
    /// VBIOS version (`96.00.9f.00.01`).
    pub vbios_version: String,
    /// Firmware ID, hex (also in the leaf certificate).
    pub fwid: String,
    /// Board ID, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub board_id: Option<String>,
    /// Chip SKU (`882`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip_sku: Option<String>,
    /// Chip SKU modifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip_sku_mod: Option<String>,
    /// Project (`1010`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Project SKU (`0200`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_sku: Option<String>,
    /// Project SKU modifier, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project_sku_mod: Option<String>,
    /// GPU information word, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_info: Option<String>,
    /// CPR information, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpr_info: Option<String>,
    /// NVDEC0 status character.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nvdec0_status: Option<String>,
    /// Protected PCIe status character.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protected_pcie_status: Option<String>,
    /// Chip information.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chip_info: Option<String>,
    /// Feature flag: `SPT`, `MPT`, `PPCIE` or `unknown`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_flag: Option<String>,
    /// Opaque data layout version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opaque_data_version: Option<u64>,
    /// How many times each measurement index was extended (1-based).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub measurement_count: BTreeMap<u8, u32>,
    /// Measurement index → value, hex.
    pub measurements: BTreeMap<u8, String>,
    /// Any other opaque field, hex, by NVIDIA's name (or `type_<id>`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_opaque: BTreeMap<String, String>,
}

fn malformed(reason: String) -> Error {
    Error::malformed("NVIDIA attestation report", reason)
}

fn le_u64(id: u16, raw: &[u8]) -> Result<u64> {
    if raw.len() > 8 {
        return Err(malformed(format!(
            "opaque field {} is {} bytes, at most 8 expected",
            opaque::name(id).unwrap_or("unknown"),
            raw.len()
        )));
    }
    let mut b = [0u8; 8];
    b[..raw.len()].copy_from_slice(raw);
    Ok(u64::from_le_bytes(b))
}

impl ReportClaims {
    /// Claims from a parsed report. Refuses a report without the driver
    /// version, VBIOS version or firmware ID.
    pub fn from_report(r: &Report) -> Result<Self> {
        let mut c = ReportClaims {
            nonce: hex::encode(r.request.nonce),
            driver_version: r.driver_version()?,
            vbios_version: r.vbios_version()?,
            fwid: hex::encode(r.fwid()?),
            board_id: None,
            chip_sku: None,
            chip_sku_mod: None,
            project: None,
            project_sku: None,
            project_sku_mod: None,
            gpu_info: None,
            cpr_info: None,
            nvdec0_status: None,
            protected_pcie_status: None,
            chip_info: None,
            feature_flag: None,
            opaque_data_version: None,
            measurement_count: BTreeMap::new(),
            measurements: r
                .measurements
                .iter()
                .map(|m| (m.index, hex::encode(&m.value)))
                .collect(),
            other_opaque: BTreeMap::new(),
        };
        for f in &r.opaque {
            let text = || Some(report::text(&f.value));
            let hex = || Some(hex::encode(&f.value));
            match f.id {
                opaque::DRIVER_VERSION | opaque::VBIOS_VERSION | opaque::FWID => {}
                opaque::BOARD_ID => c.board_id = hex(),
                opaque::CHIP_SKU => c.chip_sku = text(),
                opaque::CHIP_SKU_MOD => c.chip_sku_mod = text(),
                opaque::PROJECT => c.project = text(),
                opaque::PROJECT_SKU => c.project_sku = text(),
                opaque::PROJECT_SKU_MOD => c.project_sku_mod = hex(),
                opaque::GPU_INFO => c.gpu_info = hex(),
                opaque::CPRINFO => c.cpr_info = hex(),
                opaque::NVDEC0_STATUS => c.nvdec0_status = text(),
                opaque::PROTECTED_PCIE_STATUS => c.protected_pcie_status = text(),
                opaque::CHIP_INFO => c.chip_info = text(),
                opaque::FEATURE_FLAG => {
                    c.feature_flag = Some(
                        match le_u64(f.id, &f.value)? {
                            0 => "SPT",
                            1 => "MPT",
                            2 => "PPCIE",
                            _ => "unknown",
                        }
                        .to_string(),
                    )
                }
                opaque::OPAQUE_DATA_VERSION => {
                    c.opaque_data_version = Some(le_u64(f.id, &f.value)?)
                }
                opaque::MSRSCNT => {
                    if f.value.len() % 4 != 0 || f.value.len() / 4 > 255 {
                        return Err(malformed(format!(
                            "opaque field measurement_count is {} bytes, expected a multiple of 4 up to 1020",
                            f.value.len()
                        )));
                    }
                    for (i, n) in f.value.chunks_exact(4).enumerate() {
                        // At most 255 chunks (checked above): 1-based indices fit a u8.
                        let index = u8::try_from(i + 1).unwrap_or(u8::MAX);
                        let count = u32::from_le_bytes([n[0], n[1], n[2], n[3]]);
                        c.measurement_count.insert(index, count);
                    }
                }
                other => {
                    let key = opaque::name(other)
                        .map(str::to_string)
                        .unwrap_or_else(|| format!("type_{other}"));
                    c.other_opaque.insert(key, hex::encode(&f.value));
                }
            }
        }
        Ok(c)
    }
}
