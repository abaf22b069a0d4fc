//! The simulated TEE, guest side.
//!
//! The host-side sim platform (in `veil-runtime`) plays the AMD secure
//! processor: it recorded the launch measurement and the init-data digest
//! when it started the sandbox, and signs reports with the sim platform key.
//! The guest reaches it over a byte channel handed over at launch (an
//! inherited unix socket in the process sandbox, a virtio-serial port in a
//! VM), speaking [`PlatformRequest`] / [`PlatformResponse`] as JSON frames
//! ([`crate::channel`]).
//!
//! Sim evidence is real cryptography with a software key: it gives no
//! protection, and every verifier must be told to trust the sim root.

use std::io::{Read, Write};
use std::ops::Range;
use std::sync::Mutex;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};

use crate::channel::{recv_json, send_json};
use crate::{Attester, Evidence, REPORT_DATA_LEN, TeeError, TeeKind};

/// Largest platform message accepted, in bytes.
pub const MAX_PLATFORM_MESSAGE: usize = 64 * 1024;
/// Sim report size (`veil_attest::sim::REPORT_LEN`).
pub const REPORT_LEN: usize = 0x160;
/// Magic at the start of a sim report.
pub const MAGIC: &[u8; 8] = b"VEILSIM\0";
/// Report data field.
pub const REPORT_DATA: Range<usize> = 0x030..0x070;
/// Launch measurement field.
pub const MEASUREMENT: Range<usize> = 0x070..0x0A0;
/// Init-data digest field (zero-padded to 64 bytes).
pub const INIT_DATA: Range<usize> = 0x0A0..0x0E0;

/// A request from the guest to the sim platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum PlatformRequest {
    /// Sign a report binding `report_data` (standard base64 of 64 bytes).
    Report { report_data: String },
}

/// The sim platform's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case", deny_unknown_fields)]
pub enum PlatformResponse {
    /// The evidence JSON (`{"report": "<base64>"}`, as `veil-attest` reads it).
    Report { evidence: serde_json::Value },
    /// The platform refused; the message says why.
    Error { message: String },
}

/// The fields of a sim report the guest reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimReportFields {
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub init_data: [u8; 64],
}

/// Read the fields of a raw sim report (not its signature: that is the verifier's job).
pub fn parse_report(raw: &[u8]) -> Result<SimReportFields, TeeError> {
    if raw.len() != REPORT_LEN {
        return Err(TeeError::Check {
            check: "sim report length",
            expected: REPORT_LEN.to_string(),
            actual: raw.len().to_string(),
        });
    }
    if &raw[..8] != MAGIC {
        return Err(TeeError::Check {
            check: "sim report magic",
            expected: hex::encode(MAGIC),
            actual: hex::encode(&raw[..8]),
        });
    }
    let mut f = SimReportFields {
        report_data: [0; 64],
        measurement: [0; 48],
        init_data: [0; 64],
    };
    f.report_data.copy_from_slice(&raw[REPORT_DATA]);
    f.measurement.copy_from_slice(&raw[MEASUREMENT]);
    f.init_data.copy_from_slice(&raw[INIT_DATA]);
    Ok(f)
}

/// The raw report inside sim evidence JSON.
pub fn report_of(evidence: &serde_json::Value) -> Result<Vec<u8>, TeeError> {
    let s = evidence
        .get("report")
        .and_then(|v| v.as_str())
        .ok_or_else(|| TeeError::malformed("sim evidence", "no \"report\" string"))?;
    if s.len() > 4 * REPORT_LEN {
        return Err(TeeError::malformed("sim evidence", "report too long"));
    }
    B64.decode(s.trim())
        .map_err(|e| TeeError::malformed("sim evidence", format!("report is not base64: {e}")))
}

/// The guest's view of the sim platform over a byte channel.
pub struct SimAttester<S> {
    channel: Mutex<S>,
}

impl<S> std::fmt::Debug for SimAttester<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SimAttester")
    }
}

impl<S: Read + Write + Send> SimAttester<S> {
    /// An attester talking to the sim platform over `channel`.
    pub fn new(channel: S) -> Self {
        SimAttester {
            channel: Mutex::new(channel),
        }
    }

    /// Ask the platform for a report; returns the evidence JSON and its parsed fields.
    pub fn report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<(serde_json::Value, SimReportFields), TeeError> {
        let mut ch = self
            .channel
            .lock()
            .map_err(|_| TeeError::Platform("channel lock poisoned".into()))?;
        send_json(
            &mut *ch,
            &PlatformRequest::Report {
                report_data: B64.encode(report_data),
            },
        )?;
        let resp: PlatformResponse = recv_json(&mut *ch, MAX_PLATFORM_MESSAGE)?
            .ok_or_else(|| TeeError::Platform("the platform closed the channel".into()))?;
        let evidence = match resp {
            PlatformResponse::Report { evidence } => evidence,
            PlatformResponse::Error { message } => return Err(TeeError::Platform(message)),
        };
        let fields = parse_report(&report_of(&evidence)?)?;
        if &fields.report_data != report_data {
            return Err(TeeError::Check {
                check: "sim REPORT_DATA echoed by the platform",
                expected: hex::encode(report_data),
                actual: hex::encode(fields.report_data),
            });
        }
        Ok((evidence, fields))
    }
}

impl<S: Read + Write + Send> Attester for SimAttester<S> {
    fn tee(&self) -> TeeKind {
        TeeKind::Sim
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, TeeError> {
        let (json, _) = self.report(report_data)?;
        Ok(Evidence {
            tee: TeeKind::Sim,
            json,
        })
    }

    fn init_data_binding(&self) -> Result<Vec<u8>, TeeError> {
        Ok(self.report(&[0u8; REPORT_DATA_LEN])?.1.init_data.to_vec())
    }

    fn measurement(&self) -> Result<Vec<u8>, TeeError> {
        Ok(self.report(&[0u8; REPORT_DATA_LEN])?.1.measurement.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use veil_attest::sim::{SimPlatformKey, SimReportBody};

    /// Our field offsets agree with the verifier's report layout.
    #[test]
    fn layout_matches_veil_attest() {
        let key = SimPlatformKey::generate();
        let body = SimReportBody::new(&[1u8; 64], &[2u8; 48], &[3u8; 48]).unwrap();
        let raw = key.sign(&body);
        let f = parse_report(&raw).unwrap();
        assert_eq!(f.report_data, [1u8; 64]);
        assert_eq!(f.measurement, [2u8; 48]);
        assert_eq!(&f.init_data[..48], &[3u8; 48]);
        assert_eq!(&f.init_data[48..], &[0u8; 16]);
        let ev: serde_json::Value = serde_json::from_str(&key.evidence_json(&body)).unwrap();
        assert_eq!(report_of(&ev).unwrap(), raw);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_report(&bytes);
        }
    }
}
