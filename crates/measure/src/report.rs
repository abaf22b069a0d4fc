//! The JSON document `veil measure` prints and `veil kbs reference-value set
//! --from-measure` loads: the measurement, the reference values to store in
//! the KBS (`measurement` is the name the default attestation policy checks),
//! and informational details of what was measured.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Format tag of the document.
pub const REPORT_FORMAT: &str = "veil-measure/v1";
/// Largest document accepted when loading.
pub const MAX_REPORT_BYTES: usize = 1024 * 1024;
/// The reference-value name the KBS's default attestation policy compares
/// with the evidence's launch measurement.
pub const MEASUREMENT_RV: &str = "measurement";

/// A measurement document.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeasurementReport {
    /// [`REPORT_FORMAT`].
    pub format: String,
    /// `snp` or `tdx`.
    pub tee: String,
    /// The launch measurement (SNP MEASUREMENT / TDX MRTD), lowercase hex.
    pub measurement: String,
    /// Reference values for the KBS: name → values.
    pub reference_values: BTreeMap<String, Vec<String>>,
    /// What was measured (informational; not loaded into the KBS).
    pub details: serde_json::Value,
}

impl MeasurementReport {
    /// A document for `tee` with `measurement` as its only reference value.
    pub fn new(tee: &str, measurement: &[u8; 48], details: serde_json::Value) -> Self {
        let m = hex::encode(measurement);
        MeasurementReport {
            format: REPORT_FORMAT.into(),
            tee: tee.into(),
            measurement: m.clone(),
            reference_values: BTreeMap::from([(MEASUREMENT_RV.to_string(), vec![m])]),
            details,
        }
    }

    /// Pretty JSON with a trailing newline.
    pub fn to_json(&self) -> String {
        let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Load and check a document: format, TEE, a 48-byte hex measurement
    /// that is among its own `measurement` reference values, valid names.
    pub fn from_json(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |m: String| Error::Report(m);
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(bad(format!(
                "{} bytes, more than the {MAX_REPORT_BYTES}-byte limit",
                bytes.len()
            )));
        }
        let r: MeasurementReport = serde_json::from_slice(bytes)
            .map_err(|e| bad(format!("not a veil measure document: {e}")))?;
        if r.format != REPORT_FORMAT {
            return Err(bad(format!(
                "format {:?}, expected {REPORT_FORMAT:?}",
                r.format
            )));
        }
        if r.tee != "snp" && r.tee != "tdx" {
            return Err(bad(format!("tee {:?}, expected \"snp\" or \"tdx\"", r.tee)));
        }
        check_hex48("measurement", &r.measurement)?;
        if r.reference_values.is_empty() {
            return Err(bad("reference_values is empty".into()));
        }
        for (name, values) in &r.reference_values {
            if name.is_empty()
                || name.len() > 128
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
            {
                return Err(bad(format!(
                    "reference value name {name:?} must be 1-128 of [A-Za-z0-9_.-]"
                )));
            }
            if values.is_empty() || values.len() > 1024 {
                return Err(bad(format!(
                    "reference value {name:?} has {} values, expected 1..=1024",
                    values.len()
                )));
            }
        }
        let ms = r
            .reference_values
            .get(MEASUREMENT_RV)
            .ok_or_else(|| bad(format!("reference_values has no {MEASUREMENT_RV:?}")))?;
        for m in ms {
            check_hex48("reference value \"measurement\"", m)?;
        }
        if !ms.contains(&r.measurement) {
            return Err(bad(format!(
                "measurement {} is not among reference_values.measurement {ms:?}",
                r.measurement
            )));
        }
        Ok(r)
    }
}

fn check_hex48(what: &str, s: &str) -> Result<(), Error> {
    if s.len() != 96 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(Error::Report(format!(
            "{what} {:?} is not 96 lowercase hex characters (48 bytes)",
            s.chars().take(100).collect::<String>()
        )));
    }
    Ok(())
}

/// Merge the reference values of several documents: name → values in first-seen
/// order, without duplicates.
pub fn merge_reference_values(reports: &[MeasurementReport]) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in reports {
        for (name, values) in &r.reference_values {
            let e = out.entry(name.clone()).or_default();
            for v in values {
                if !e.contains(v) {
                    e.push(v.clone());
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = MeasurementReport::new("snp", &[0xab; 48], serde_json::json!({"vcpus": 1}));
        let back = MeasurementReport::from_json(r.to_json().as_bytes()).unwrap();
        assert_eq!(back.reference_values["measurement"], vec!["ab".repeat(48)]);

        let mut wrong = r.clone();
        wrong
            .reference_values
            .insert("measurement".into(), vec!["cd".repeat(48)]);
        let e = MeasurementReport::from_json(wrong.to_json().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("not among"), "{e}");

        let mut short = r.clone();
        short.measurement = "ab".into();
        let e = MeasurementReport::from_json(short.to_json().as_bytes()).unwrap_err();
        assert!(e.to_string().contains("96 lowercase hex"), "{e}");

        let e = MeasurementReport::from_json(br#"{"format":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("not a veil measure document"), "{e}");

        let merged = merge_reference_values(&[r.clone(), r, back]);
        assert_eq!(merged["measurement"].len(), 1);
    }
}
