//! NVIDIA device evidence as Trustee's `nvidia` verifier receives it (the
//! value of the `nvidia` key in the KBS protocol's `additional_evidence`):
//! `{"device_evidence_list": [{"arch": "HOPPER", "uuid": "…", "evidence":
//! hex or base64 report, "certificate": base64 of the PEM chain}]}`.
//!
//! Every device is verified ([`super::DeviceChain`]); a refusal names the
//! device (`gpu<i>` and its UUID) and the check. The claims per device carry
//! Trustee's names (`arch`, `uuid`, `measurements`, `config` with the
//! opaque fields) beside veil's [`GpuClaims`] fields.

use base64::Engine;
use serde::Deserialize;

use super::{DeviceChain, GpuClaims, report};
use crate::error::{Error, Result};

/// Most devices one evidence lists (an HGX board has 8 GPUs, 4 switches).
pub const MAX_DEVICES: usize = 16;
const WHAT: &str = "NVIDIA device evidence";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Evidence {
    device_evidence_list: Vec<Device>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Device {
    arch: String,
    #[serde(default)]
    uuid: Option<String>,
    evidence: String,
    certificate: String,
}

/// One verified device.
#[derive(Debug, Clone)]
pub struct DeviceClaims {
    /// Position in the list (`gpu<index>`).
    pub index: usize,
    /// The UUID the attester reported (not covered by the signature).
    pub uuid: String,
    /// Verified claims.
    pub claims: GpuClaims,
}

impl DeviceClaims {
    /// The device's name in refusals and token submodules.
    pub fn name(&self) -> String {
        format!("gpu{}", self.index)
    }

    /// Claims as JSON: veil's [`GpuClaims`] plus Trustee's `arch`, `uuid`,
    /// `measurements` and `config`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::to_value(&self.claims).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("uuid".into(), self.uuid.clone().into());
            let r = &self.claims.report;
            o.insert(
                "config".into(),
                serde_json::json!({
                    "DRIVER_VERSION": r.driver_version,
                    "VBIOS_VERSION": r.vbios_version,
                    "FWID": r.fwid,
                    "CHIP_SKU": r.chip_sku,
                    "PROJECT": r.project,
                    "PROJECT_SKU": r.project_sku,
                }),
            );
        }
        v
    }
}

fn device_name(i: usize, uuid: &Option<String>) -> String {
    match uuid {
        Some(u) => format!("gpu{i} (uuid {})", u.chars().take(64).collect::<String>()),
        None => format!("gpu{i}"),
    }
}

/// Prefix a refusal or parse error with the device it is about.
fn about(device: &str, e: Error) -> Error {
    match e {
        Error::Malformed { what, reason } => Error::malformed(what, format!("{device}: {reason}")),
        Error::Refused(mut r) => {
            r.reason = format!("{device}: {}", r.reason);
            Error::Refused(r)
        }
    }
}

/// Verify every device of `evidence` at `now_unix`; with `expected_nonce`,
/// each report's requester nonce must equal it (Trustee: the runtime-data
/// digest zero-padded or truncated to 32 bytes).
pub fn verify(
    evidence: &serde_json::Value,
    expected_nonce: Option<&[u8; report::NONCE_LEN]>,
    now_unix: u64,
) -> Result<Vec<DeviceClaims>> {
    let ev: Evidence = serde_json::from_value(evidence.clone())
        .map_err(|e| Error::malformed(WHAT, e.to_string()))?;
    if ev.device_evidence_list.is_empty() || ev.device_evidence_list.len() > MAX_DEVICES {
        return Err(Error::malformed(
            WHAT,
            format!(
                "{} devices listed, expected 1..={MAX_DEVICES}",
                ev.device_evidence_list.len()
            ),
        ));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = Vec::new();
    for (i, d) in ev.device_evidence_list.into_iter().enumerate() {
        let name = device_name(i, &d.uuid);
        if !d.arch.eq_ignore_ascii_case("hopper") {
            return Err(Error::mismatch(
                "nvidia.arch",
                format!("{name}: only Hopper GPUs are verified"),
                "HOPPER",
                d.arch.chars().take(32).collect::<String>(),
            ));
        }
        if d.evidence.len() > 2 * crate::MAX_EVIDENCE_BYTES
            || d.certificate.len() > 2 * crate::MAX_EVIDENCE_BYTES
        {
            return Err(Error::malformed(
                WHAT,
                format!("{name}: evidence too large"),
            ));
        }
        // Hex (the original encoding) or base64, as Trustee accepts.
        let report = match hex::decode(d.evidence.trim()) {
            Ok(r) => r,
            Err(_) => b64.decode(d.evidence.trim()).map_err(|e| {
                Error::malformed(
                    WHAT,
                    format!("{name}: evidence is neither hex nor base64: {e}"),
                )
            })?,
        };
        let chain = b64.decode(d.certificate.trim()).map_err(|e| {
            Error::malformed(WHAT, format!("{name}: certificate is not base64: {e}"))
        })?;
        let claims = DeviceChain::verify(&chain, now_unix)
            .and_then(|c| c.verify_report(&report, expected_nonce, now_unix))
            .map_err(|e| about(&name, e))?;
        out.push(DeviceClaims {
            index: i,
            uuid: d.uuid.unwrap_or_else(|| "unknown".into()),
            claims,
        });
    }
    Ok(out)
}
