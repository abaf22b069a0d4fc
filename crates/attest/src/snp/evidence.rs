//! Input forms of SNP evidence: a raw 1184-byte report, the same in hex, or
//! the CoCo `snp` evidence JSON (`{"attestation_report": <sev serde form>,
//! "cert_chain": [...]}`), whose report is re-encoded into its binary layout
//! so that the signature is checked over exactly the signed bytes.

use serde::Deserialize;

use super::report::REPORT_LEN;
use crate::error::{Error, Result};

/// Evidence as given: the raw report and any certificates that came with it.
#[derive(Debug, Clone)]
pub struct SnpEvidence {
    /// The 1184-byte report.
    pub report: Vec<u8>,
    /// DER certificates carried in the evidence (VCEK/VLEK/ASK/ARK).
    pub certs: Vec<Vec<u8>>,
}

#[derive(Deserialize)]
struct CocoEvidence {
    attestation_report: ReportJson,
    #[serde(default)]
    cert_chain: Option<Vec<CertEntry>>,
}

#[derive(Deserialize)]
struct CertEntry {
    #[allow(dead_code)]
    cert_type: serde_json::Value,
    data: Vec<u8>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ReportJson {
    /// hex or base64 of the raw report.
    Encoded(String),
    /// the `sev` crate's serde form.
    Fields(Box<SevReport>),
}

#[derive(Deserialize)]
struct Tcb {
    #[serde(default)]
    fmc: Option<u8>,
    bootloader: u8,
    tee: u8,
    snp: u8,
    microcode: u8,
}

impl Tcb {
    fn encode(&self) -> [u8; 8] {
        match self.fmc {
            Some(fmc) => [
                fmc,
                self.bootloader,
                self.tee,
                self.snp,
                0,
                0,
                0,
                self.microcode,
            ],
            None => [
                self.bootloader,
                self.tee,
                0,
                0,
                0,
                0,
                self.snp,
                self.microcode,
            ],
        }
    }
}

#[derive(Deserialize)]
struct FwVersion {
    major: u8,
    minor: u8,
    build: u8,
}

#[derive(Deserialize)]
struct Sig {
    r: Vec<u8>,
    s: Vec<u8>,
}

#[derive(Deserialize)]
struct SevReport {
    version: u32,
    guest_svn: u32,
    policy: u64,
    family_id: Vec<u8>,
    image_id: Vec<u8>,
    vmpl: u32,
    sig_algo: u32,
    current_tcb: Tcb,
    plat_info: u64,
    #[serde(alias = "flags")]
    key_info: u32,
    report_data: Vec<u8>,
    measurement: Vec<u8>,
    host_data: Vec<u8>,
    id_key_digest: Vec<u8>,
    author_key_digest: Vec<u8>,
    report_id: Vec<u8>,
    report_id_ma: Vec<u8>,
    reported_tcb: Tcb,
    #[serde(default)]
    cpuid_fam_id: Option<u8>,
    #[serde(default)]
    cpuid_mod_id: Option<u8>,
    #[serde(default)]
    cpuid_step: Option<u8>,
    chip_id: Vec<u8>,
    committed_tcb: Tcb,
    current: FwVersion,
    committed: FwVersion,
    launch_tcb: Tcb,
    #[serde(default)]
    launch_mit_vector: Option<u64>,
    #[serde(default)]
    current_mit_vector: Option<u64>,
    signature: Sig,
}

fn put(out: &mut [u8], at: usize, field: &str, bytes: &[u8], len: usize) -> Result<()> {
    if bytes.len() != len {
        return Err(Error::malformed(
            "SNP evidence JSON",
            format!(
                "attestation_report.{field} has {} bytes, expected {len}",
                bytes.len()
            ),
        ));
    }
    out[at..at + len].copy_from_slice(bytes);
    Ok(())
}

impl SevReport {
    fn encode(&self) -> Result<Vec<u8>> {
        let mut b = vec![0u8; REPORT_LEN];
        b[0x00..0x04].copy_from_slice(&self.version.to_le_bytes());
        b[0x04..0x08].copy_from_slice(&self.guest_svn.to_le_bytes());
        b[0x08..0x10].copy_from_slice(&self.policy.to_le_bytes());
        put(&mut b, 0x10, "family_id", &self.family_id, 16)?;
        put(&mut b, 0x20, "image_id", &self.image_id, 16)?;
        b[0x30..0x34].copy_from_slice(&self.vmpl.to_le_bytes());
        b[0x34..0x38].copy_from_slice(&self.sig_algo.to_le_bytes());
        b[0x38..0x40].copy_from_slice(&self.current_tcb.encode());
        b[0x40..0x48].copy_from_slice(&self.plat_info.to_le_bytes());
        b[0x48..0x4C].copy_from_slice(&self.key_info.to_le_bytes());
        put(&mut b, 0x50, "report_data", &self.report_data, 64)?;
        put(&mut b, 0x90, "measurement", &self.measurement, 48)?;
        put(&mut b, 0xC0, "host_data", &self.host_data, 32)?;
        put(&mut b, 0xE0, "id_key_digest", &self.id_key_digest, 48)?;
        put(
            &mut b,
            0x110,
            "author_key_digest",
            &self.author_key_digest,
            48,
        )?;
        put(&mut b, 0x140, "report_id", &self.report_id, 32)?;
        put(&mut b, 0x160, "report_id_ma", &self.report_id_ma, 32)?;
        b[0x180..0x188].copy_from_slice(&self.reported_tcb.encode());
        b[0x188] = self.cpuid_fam_id.unwrap_or(0);
        b[0x189] = self.cpuid_mod_id.unwrap_or(0);
        b[0x18A] = self.cpuid_step.unwrap_or(0);
        put(&mut b, 0x1A0, "chip_id", &self.chip_id, 64)?;
        b[0x1E0..0x1E8].copy_from_slice(&self.committed_tcb.encode());
        b[0x1E8..0x1EB].copy_from_slice(&[
            self.current.build,
            self.current.minor,
            self.current.major,
        ]);
        b[0x1EC..0x1EF].copy_from_slice(&[
            self.committed.build,
            self.committed.minor,
            self.committed.major,
        ]);
        b[0x1F0..0x1F8].copy_from_slice(&self.launch_tcb.encode());
        b[0x1F8..0x200].copy_from_slice(&self.launch_mit_vector.unwrap_or(0).to_le_bytes());
        b[0x200..0x208].copy_from_slice(&self.current_mit_vector.unwrap_or(0).to_le_bytes());
        put(&mut b, 0x2A0, "signature.r", &self.signature.r, 72)?;
        put(&mut b, 0x2E8, "signature.s", &self.signature.s, 72)?;
        Ok(b)
    }
}

fn decode_text(s: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let t = s.trim();
    if let Ok(b) = hex::decode(t) {
        return Some(b);
    }
    base64::engine::general_purpose::STANDARD
        .decode(t)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(t))
        .ok()
}

/// Parse SNP evidence in any of the accepted forms.
pub fn parse(bytes: &[u8]) -> Result<SnpEvidence> {
    if bytes.len() > crate::MAX_EVIDENCE_BYTES {
        return Err(Error::malformed(
            "SNP evidence",
            format!(
                "{} bytes exceeds the {} byte limit",
                bytes.len(),
                crate::MAX_EVIDENCE_BYTES
            ),
        ));
    }
    if bytes.len() == REPORT_LEN {
        return Ok(SnpEvidence {
            report: bytes.to_vec(),
            certs: vec![],
        });
    }
    let text = bytes.trim_ascii();
    if text.first() == Some(&b'{') {
        let ev: CocoEvidence = serde_json::from_slice(text)
            .map_err(|e| Error::malformed("SNP evidence JSON", e.to_string()))?;
        let report = match ev.attestation_report {
            ReportJson::Encoded(s) => decode_text(&s).ok_or_else(|| {
                Error::malformed(
                    "SNP evidence JSON",
                    "attestation_report is neither hex nor base64",
                )
            })?,
            ReportJson::Fields(r) => r.encode()?,
        };
        let certs = ev
            .cert_chain
            .unwrap_or_default()
            .into_iter()
            .map(|c| c.data)
            .collect();
        return Ok(SnpEvidence { report, certs });
    }
    if !text.is_empty()
        && text
            .iter()
            .all(|c| c.is_ascii_hexdigit() || c.is_ascii_whitespace())
    {
        let compact: String = text
            .iter()
            .filter(|c| !c.is_ascii_whitespace())
            .map(|&c| c as char)
            .collect();
        let report = hex::decode(&compact)
            .map_err(|e| Error::malformed("SNP report (hex)", e.to_string()))?;
        return Ok(SnpEvidence {
            report,
            certs: vec![],
        });
    }
    Err(Error::malformed(
        "SNP evidence",
        format!(
            "{} bytes: neither a raw {REPORT_LEN}-byte report, hex, nor CoCo snp evidence JSON",
            bytes.len()
        ),
    ))
}
