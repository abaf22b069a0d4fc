//! `veil kbs get-resource --gpu-evidence`: recorded NVIDIA GPU evidence sent
//! as the KBS protocol's additional evidence beside the CPU evidence, in the
//! shape a guest sends it (`veil_tee::nvidia::additional_evidence`).
//!
//! The CPU evidence's report data covers the additional-evidence string
//! (veil-kbs-client's binding); each GPU report should carry this session's
//! device nonce, which recorded evidence cannot: the command says so, and
//! only a KBS started with `--dev --dev-gpu-nonce-via-cpu-evidence` accepts
//! it (and only for policies that set `allow_unbound_nonce`). In a guest the
//! agent asks the GPU for a report over the session's nonce instead.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use base64::Engine;
use veil_kbs_client::EvidenceProvider;
use veil_kbs_client::protocol::InitData;
use veil_tee::nvidia::{GpuEvidence, MAX_CHAIN_BYTES, MAX_GPUS, MAX_REPORT_BYTES};

/// Names of the report in a directory, besides `*AttestationReport.txt`.
const REPORT_NAMES: [&str; 2] = ["report.txt", "report.bin"];
/// Name of the chain in a directory, besides `*CertChain.txt`.
const CHAIN_NAME: &str = "chain.pem";
/// Longest UUID accepted (NVML's buffer is 96 bytes).
const MAX_UUID: usize = 96;

/// Read one GPU's recorded evidence from a directory or a Trustee JSON file.
pub fn read(path: &Path) -> Result<GpuEvidence> {
    let meta =
        std::fs::metadata(path).with_context(|| format!("--gpu-evidence {}", path.display()))?;
    if meta.is_dir() {
        from_dir(path)
    } else {
        from_json(path)
    }
}

/// The one file of `dir` whose name `matches`; refuses none or several.
fn one_file(dir: &Path, what: &str, matches: impl Fn(&str) -> bool) -> Result<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        if e.file_type()?.is_file() && matches(&name) {
            found.push(e.path());
        }
    }
    found.sort();
    match found.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!(
            "--gpu-evidence {}: no {what} in this directory",
            dir.display()
        ),
        many => bail!(
            "--gpu-evidence {}: {} files could be the {what} ({}); keep one, or give Trustee's device evidence JSON instead",
            dir.display(),
            many.len(),
            many.iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn from_dir(dir: &Path) -> Result<GpuEvidence> {
    let report_path = one_file(
        dir,
        "attestation report (*AttestationReport.txt, report.txt or report.bin)",
        |n| n.ends_with("AttestationReport.txt") || REPORT_NAMES.contains(&n),
    )?;
    let chain_path = one_file(
        dir,
        "certificate chain (*CertChain.txt or chain.pem)",
        |n| n.ends_with("CertChain.txt") || n == CHAIN_NAME,
    )?;
    let raw = crate::output::read_limited(&report_path, "GPU report", 2 * MAX_REPORT_BYTES + 2)?;
    let text = raw.trim_ascii();
    let report = if !text.is_empty() && text.iter().all(u8::is_ascii_hexdigit) {
        hex::decode(text).with_context(|| format!("{}: odd hex", report_path.display()))?
    } else {
        raw
    };
    let chain = crate::output::read_limited(&chain_path, "GPU certificate chain", MAX_CHAIN_BYTES)?;
    let uuid_path = dir.join("uuid");
    let uuid = if uuid_path.is_file() {
        String::from_utf8(crate::output::read_limited(
            &uuid_path, "GPU UUID", MAX_UUID,
        )?)
        .context("GPU UUID: not UTF-8")?
        .trim()
        .to_string()
    } else {
        // NVML names GPUs `GPU-<uuid>`; recorded evidence has none.
        format!(
            "GPU-recorded-{}",
            dir.file_name().unwrap_or_default().to_string_lossy()
        )
    };
    checked(
        GpuEvidence {
            uuid,
            report,
            chain,
        },
        dir,
    )
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrusteeDevice {
    arch: String,
    #[serde(default)]
    uuid: Option<String>,
    evidence: String,
    certificate: String,
}

fn from_json(path: &Path) -> Result<GpuEvidence> {
    let raw = crate::output::read_limited(
        path,
        "GPU device evidence",
        4 * (MAX_REPORT_BYTES + MAX_CHAIN_BYTES),
    )?;
    let d: TrusteeDevice = serde_json::from_slice(&raw).with_context(|| {
        format!(
            "--gpu-evidence {}: not a directory, nor Trustee's device evidence JSON {{\"arch\", \"uuid\", \"evidence\", \"certificate\"}}",
            path.display()
        )
    })?;
    if !d.arch.eq_ignore_ascii_case("hopper") {
        bail!(
            "--gpu-evidence {}: arch {:?}: only Hopper GPUs are supported",
            path.display(),
            veil_kbs::text::escape_controls(&d.arch)
        );
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let report = hex::decode(d.evidence.trim())
        .or_else(|_| b64.decode(d.evidence.trim()))
        .with_context(|| format!("{}: evidence is neither hex nor base64", path.display()))?;
    let chain = b64
        .decode(d.certificate.trim())
        .with_context(|| format!("{}: certificate is not base64", path.display()))?;
    let uuid = d.uuid.unwrap_or_else(|| {
        format!(
            "GPU-recorded-{}",
            path.file_stem().unwrap_or_default().to_string_lossy()
        )
    });
    checked(
        GpuEvidence {
            uuid,
            report,
            chain,
        },
        path,
    )
}

fn checked(g: GpuEvidence, from: &Path) -> Result<GpuEvidence> {
    if g.uuid.is_empty() || g.uuid.len() > MAX_UUID || g.uuid.chars().any(char::is_control) {
        bail!(
            "--gpu-evidence {}: UUID {:?} is empty, longer than {MAX_UUID} bytes or has control characters",
            from.display(),
            veil_kbs::text::escape_controls(&g.uuid)
        );
    }
    if g.report.len() < 36 || g.report.len() > MAX_REPORT_BYTES {
        bail!(
            "--gpu-evidence {}: the report is {} bytes, expected 36..={MAX_REPORT_BYTES} (an SPDM GET_MEASUREMENTS request and response)",
            from.display(),
            g.report.len()
        );
    }
    Ok(g)
}

/// A CPU evidence provider that also sends recorded GPU evidence.
pub struct WithGpus<E> {
    cpu: E,
    gpus: Vec<GpuEvidence>,
}

impl<E> WithGpus<E> {
    /// `cpu` plus `gpus` (at most [`MAX_GPUS`]).
    pub fn new(cpu: E, gpus: Vec<GpuEvidence>) -> Result<Self> {
        if gpus.len() > MAX_GPUS as usize {
            bail!(
                "--gpu-evidence given {} times; at most {MAX_GPUS} GPUs",
                gpus.len()
            );
        }
        Ok(WithGpus { cpu, gpus })
    }
}

impl<E: EvidenceProvider> EvidenceProvider for WithGpus<E> {
    fn tee(&self) -> &str {
        self.cpu.tee()
    }

    fn evidence(&self, report_data: &[u8; 64]) -> std::result::Result<serde_json::Value, String> {
        self.cpu.evidence(report_data)
    }

    fn init_data(&self) -> Option<InitData> {
        self.cpu.init_data()
    }

    fn additional_evidence(&self, device_digest: &[u8; 48]) -> std::result::Result<String, String> {
        // Trustee's device nonce: the runtime-data digest truncated to 32 bytes.
        let nonce = &device_digest[..32];
        for (i, g) in self.gpus.iter().enumerate() {
            let recorded = &g.report[4..36];
            if recorded != nonce {
                eprintln!(
                    "veil: WARNING: gpu{i} (uuid {}): recorded evidence, made for nonce {}, not this session's device nonce {}: a KBS refuses it (nvidia.nonce) unless it runs with --dev --dev-gpu-nonce-via-cpu-evidence and the policy's gpu rule sets allow_unbound_nonce; in a guest the agent asks the GPU for a report over the session's nonce",
                    veil_kbs::text::escape_controls(&g.uuid),
                    hex::encode(recorded),
                    hex::encode(nonce)
                );
            }
        }
        let value =
            serde_json::json!({ "nvidia": veil_tee::nvidia::additional_evidence(&self.gpus) });
        Ok(value.to_string())
    }
}
