//! AMD SEV-SNP evidence through configfs-tsm (provider `sev_guest`).
//!
//! The outblob is the 1184-byte attestation report; the auxblob, when the
//! host supplied certificates, is the GUID-keyed certificate table of an
//! extended report. The evidence is the CoCo `snp` JSON:
//! `{"attestation_report": "<base64 report>", "cert_chain": [{"cert_type", "data"}] | null}`.

use std::ops::Range;

use base64::Engine as _;

use crate::tsm::TsmReport;
use crate::{Attester, Evidence, REPORT_DATA_LEN, TeeError, TeeKind};

/// configfs-tsm provider name.
pub const PROVIDER: &str = "sev_guest";
/// Size of an SNP attestation report.
pub const REPORT_LEN: usize = 0x4A0;
/// REPORT_DATA (guest-chosen).
pub const REPORT_DATA: Range<usize> = 0x50..0x90;
/// MEASUREMENT (launch digest).
pub const MEASUREMENT: Range<usize> = 0x90..0xC0;
/// HOST_DATA (set by the host at launch: the init-data digest).
pub const HOST_DATA: Range<usize> = 0xC0..0xE0;
/// Largest number of certificate table entries accepted.
pub const MAX_CERT_ENTRIES: usize = 64;

/// Known certificate table GUIDs (canonical text form) and their names.
const CERT_GUIDS: [(&str, &str); 4] = [
    ("63da758d-e664-4564-adc5-f4b93be8accd", "VCEK"),
    ("a8074bc2-a25a-483e-aae6-39c045a0b8a1", "VLEK"),
    ("4ab7b379-bbac-4fe4-a02f-05aef327c782", "ASK"),
    ("c0b406a4-a803-4952-9743-3fb6014cd0ae", "ARK"),
];

fn guid_text(b: &[u8; 16]) -> String {
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The same GUID with its first three fields byte-swapped (the mixed-endian
/// form some producers write).
fn guid_text_le(b: &[u8; 16]) -> String {
    let mut s = *b;
    s[0..4].reverse();
    s[4..6].reverse();
    s[6..8].reverse();
    guid_text(&s)
}

/// One certificate from the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// `VCEK`, `VLEK`, `ASK`, `ARK`, or the GUID for others.
    pub cert_type: String,
    pub data: Vec<u8>,
}

/// Parse an extended-report certificate table (untrusted bytes from the host).
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertEntry>, TeeError> {
    let bad = |reason: String| TeeError::malformed("SNP certificate table", reason);
    let mut out = Vec::new();
    for i in 0..=MAX_CERT_ENTRIES {
        let at = i * 24;
        let entry = table.get(at..at + 24).ok_or_else(|| {
            bad(format!(
                "entry {i} runs past the end ({} bytes)",
                table.len()
            ))
        })?;
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&entry[..16]);
        let offset = u32::from_le_bytes([entry[16], entry[17], entry[18], entry[19]]) as usize;
        let len = u32::from_le_bytes([entry[20], entry[21], entry[22], entry[23]]) as usize;
        if guid == [0u8; 16] {
            return Ok(out);
        }
        if i == MAX_CERT_ENTRIES {
            break;
        }
        let data = offset
            .checked_add(len)
            .and_then(|end| table.get(offset..end))
            .ok_or_else(|| {
                bad(format!(
                    "entry {i}: {len} bytes at offset {offset} run past the end ({} bytes)",
                    table.len()
                ))
            })?;
        let be = guid_text(&guid);
        let le = guid_text_le(&guid);
        let cert_type = CERT_GUIDS
            .iter()
            .find(|(g, _)| *g == be || *g == le)
            .map(|(_, n)| (*n).to_string())
            .unwrap_or(be);
        out.push(CertEntry {
            cert_type,
            data: data.to_vec(),
        });
    }
    Err(bad(format!("more than {MAX_CERT_ENTRIES} entries")))
}

fn check_report<'a>(
    report: &'a [u8],
    report_data: Option<&[u8; REPORT_DATA_LEN]>,
) -> Result<&'a [u8], TeeError> {
    if report.len() != REPORT_LEN {
        return Err(TeeError::Check {
            check: "SNP report length",
            expected: REPORT_LEN.to_string(),
            actual: report.len().to_string(),
        });
    }
    if let Some(rd) = report_data {
        if &report[REPORT_DATA] != rd.as_slice() {
            return Err(TeeError::Check {
                check: "SNP REPORT_DATA echoed by the firmware",
                expected: hex::encode(rd),
                actual: hex::encode(&report[REPORT_DATA]),
            });
        }
    }
    Ok(report)
}

/// SEV-SNP attester.
#[derive(Debug)]
pub struct SnpAttester {
    tsm: TsmReport,
}

impl SnpAttester {
    /// An attester over a configfs-tsm generator (provider must be `sev_guest`).
    pub fn new(tsm: TsmReport) -> Result<Self, TeeError> {
        if tsm.provider() != PROVIDER {
            return Err(TeeError::Check {
                check: "SNP configfs-tsm provider",
                expected: PROVIDER.into(),
                actual: tsm.provider().into(),
            });
        }
        Ok(SnpAttester { tsm })
    }

    fn report(
        &self,
        report_data: &[u8; REPORT_DATA_LEN],
    ) -> Result<(Vec<u8>, Option<Vec<u8>>), TeeError> {
        let out = self.tsm.generate(report_data)?;
        check_report(&out.outblob, Some(report_data))?;
        Ok((out.outblob, out.auxblob))
    }
}

impl Attester for SnpAttester {
    fn tee(&self) -> TeeKind {
        TeeKind::Snp
    }

    fn evidence(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<Evidence, TeeError> {
        let (report, aux) = self.report(report_data)?;
        let chain = match aux {
            Some(t) => Some(parse_cert_table(&t)?),
            None => None,
        };
        let chain = chain.map(|c| {
            c.into_iter()
                .map(|e| serde_json::json!({"cert_type": e.cert_type, "data": e.data}))
                .collect::<Vec<_>>()
        });
        Ok(Evidence {
            tee: TeeKind::Snp,
            json: serde_json::json!({
                "attestation_report": base64::engine::general_purpose::STANDARD.encode(&report),
                "cert_chain": chain,
            }),
        })
    }

    fn init_data_binding(&self) -> Result<Vec<u8>, TeeError> {
        let (report, _) = self.report(&[0u8; REPORT_DATA_LEN])?;
        Ok(report[HOST_DATA].to_vec())
    }

    fn measurement(&self) -> Result<Vec<u8>, TeeError> {
        let (report, _) = self.report(&[0u8; REPORT_DATA_LEN])?;
        Ok(report[MEASUREMENT].to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cert_table_round_trip() {
        let vcek_le: [u8; 16] = [
            0x8d, 0x75, 0xda, 0x63, 0x64, 0xe6, 0x64, 0x45, 0xad, 0xc5, 0xf4, 0xb9, 0x3b, 0xe8,
            0xac, 0xcd,
        ];
        let mut t = Vec::new();
        t.extend_from_slice(&vcek_le);
        t.extend_from_slice(&48u32.to_le_bytes());
        t.extend_from_slice(&3u32.to_le_bytes());
        t.extend_from_slice(&[0u8; 24]);
        t.extend_from_slice(b"DER");
        let c = parse_cert_table(&t).unwrap();
        assert_eq!(
            c,
            vec![CertEntry {
                cert_type: "VCEK".into(),
                data: b"DER".to_vec()
            }]
        );
        t[20] = 200;
        assert!(
            parse_cert_table(&t)
                .unwrap_err()
                .to_string()
                .contains("run past the end")
        );
        assert!(parse_cert_table(&t[..10]).is_err());
    }

    proptest! {
        #[test]
        fn cert_table_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse_cert_table(&bytes);
        }
    }
}
