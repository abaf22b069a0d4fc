//! NVIDIA GPU evidence in the guest (feature `nvidia-gpu`, off by default):
//! collect each confidential-computing GPU's attestation report and device
//! certificate chain for a nonce, in the shape Trustee's `nvidia` verifier
//! and veil's KBS take as additional evidence, and keep GPUs away from
//! containers until the KBS accepted them ([`GpuGate`]).
//!
//! The driver's documented interface is NVML:
//! `nvmlDeviceGetConfComputeGpuAttestationReport` (the caller's 32-byte
//! nonce in, the SPDM GET_MEASUREMENTS request ‖ response out) and
//! `nvmlDeviceGetConfComputeGpuCertificate` (the device chain, PEM), after
//! `nvmlSystemGetConfComputeState` says CC mode is on. NVML is a C library
//! (`libnvidia-ml.so.1`, shipped with the driver); this module talks to the
//! GPU through the [`GpuTransport`] trait and stays pure Rust. The `nvml`
//! feature adds `crate::nvml::Nvml`, which dlopens the driver's library;
//! without it the default agent neither links nor loads NVML. What this
//! module guarantees is what it checks on whatever a transport returns.
//!
//! Every transport answer is untrusted (the host controls the device
//! model): sizes are bounded, the report must be the SPDM request/response
//! pair for *this* nonce, the chain must be PEM certificates, and the GPU
//! count is bounded.

use base64::Engine;

use crate::TeeError;

/// Most GPUs collected (an HGX board has 8).
pub const MAX_GPUS: u32 = 16;
/// Most bytes of one attestation report (NVML's buffer is 8 KiB).
pub const MAX_REPORT_BYTES: usize = 64 * 1024;
/// Most bytes of one certificate chain (NVML's buffer is 5 KiB).
pub const MAX_CHAIN_BYTES: usize = 64 * 1024;
/// The SPDM GET_MEASUREMENTS request the report starts with: version, code,
/// params, nonce (32), slot.
const REQUEST_LEN: usize = 37;
const SPDM_GET_MEASUREMENTS: u8 = 0xE0;
const SPDM_MEASUREMENTS: u8 = 0x60;

/// The GPU side of NVML (or the driver) this module needs.
pub trait GpuTransport {
    /// Whether the system's GPUs run in confidential-computing mode
    /// (`nvmlSystemGetConfComputeState`).
    fn cc_enabled(&self) -> Result<bool, TeeError>;
    /// How many GPUs there are (`nvmlDeviceGetCount`).
    fn device_count(&self) -> Result<u32, TeeError>;
    /// The GPU's UUID (`nvmlDeviceGetUUID`), as the verifier lists it.
    fn uuid(&self, index: u32) -> Result<String, TeeError>;
    /// The attestation report for `nonce`
    /// (`nvmlDeviceGetConfComputeGpuAttestationReport`).
    fn attestation_report(&self, index: u32, nonce: &[u8; 32]) -> Result<Vec<u8>, TeeError>;
    /// The device certificate chain, PEM, leaf first
    /// (`nvmlDeviceGetConfComputeGpuCertificate`).
    fn certificate_chain(&self, index: u32) -> Result<Vec<u8>, TeeError>;
}

/// One GPU's evidence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuEvidence {
    /// The GPU's UUID.
    pub uuid: String,
    /// The raw attestation report.
    pub report: Vec<u8>,
    /// The PEM certificate chain.
    pub chain: Vec<u8>,
}

/// Check a report's structure as far as the guest needs: the SPDM request
/// for this nonce followed by a MEASUREMENTS response (the verifier checks
/// the rest, signature included).
fn check_report(index: u32, report: &[u8], nonce: &[u8; 32]) -> Result<(), TeeError> {
    let what = || format!("GPU {index} attestation report");
    if report.len() > MAX_REPORT_BYTES || report.len() < REQUEST_LEN + 4 {
        return Err(TeeError::malformed(
            what(),
            format!(
                "{} bytes, expected {}..={MAX_REPORT_BYTES}",
                report.len(),
                REQUEST_LEN + 4
            ),
        ));
    }
    if report[1] != SPDM_GET_MEASUREMENTS || report[REQUEST_LEN + 1] != SPDM_MEASUREMENTS {
        return Err(TeeError::malformed(
            what(),
            format!(
                "not an SPDM GET_MEASUREMENTS request and MEASUREMENTS response (codes {:#04x}, {:#04x})",
                report[1],
                report[REQUEST_LEN + 1]
            ),
        ));
    }
    if report[4..36] != nonce[..] {
        return Err(TeeError::Check {
            check: "nvidia.nonce",
            expected: hex::encode(nonce),
            actual: hex::encode(&report[4..36]),
        });
    }
    Ok(())
}

fn check_chain(index: u32, chain: &[u8]) -> Result<(), TeeError> {
    let what = || format!("GPU {index} certificate chain");
    if chain.is_empty() || chain.len() > MAX_CHAIN_BYTES {
        return Err(TeeError::malformed(
            what(),
            format!("{} bytes, expected 1..={MAX_CHAIN_BYTES}", chain.len()),
        ));
    }
    let text =
        std::str::from_utf8(chain).map_err(|_| TeeError::malformed(what(), "not PEM text"))?;
    let begins = text.matches("-----BEGIN CERTIFICATE-----").count();
    if begins == 0 || begins != text.matches("-----END CERTIFICATE-----").count() {
        return Err(TeeError::malformed(
            what(),
            "not a sequence of PEM certificates",
        ));
    }
    Ok(())
}

/// Collect every GPU's evidence for `nonce` (Trustee's device runtime-data
/// digest truncated to 32 bytes, which veil-kbs-client's
/// `EvidenceProvider::additional_evidence` receives). Refuses when CC mode
/// is off or no GPU is present: a guest asked for GPU evidence must not
/// send none.
pub fn collect(t: &dyn GpuTransport, nonce: &[u8; 32]) -> Result<Vec<GpuEvidence>, TeeError> {
    if !t.cc_enabled()? {
        return Err(TeeError::Check {
            check: "nvidia.cc_mode",
            expected:
                "confidential-computing mode on (nvidia-smi conf-compute -scc on, then reboot)"
                    .into(),
            actual: "off".into(),
        });
    }
    let n = t.device_count()?;
    if n == 0 || n > MAX_GPUS {
        return Err(TeeError::Check {
            check: "nvidia.device_count",
            expected: format!("1..={MAX_GPUS} GPUs"),
            actual: n.to_string(),
        });
    }
    let mut out = Vec::new();
    for i in 0..n {
        let uuid = t.uuid(i)?;
        if uuid.len() > 128 || uuid.chars().any(char::is_control) {
            return Err(TeeError::malformed(
                format!("GPU {i} UUID"),
                "longer than 128 bytes or with control characters",
            ));
        }
        let report = t.attestation_report(i, nonce)?;
        check_report(i, &report, nonce)?;
        let chain = t.certificate_chain(i)?;
        check_chain(i, &chain)?;
        out.push(GpuEvidence {
            uuid,
            report,
            chain,
        });
    }
    Ok(out)
}

/// The `nvidia` value of the KBS protocol's `additional_evidence`:
/// `{"device_evidence_list": [{"arch": "HOPPER", "uuid", "evidence": hex,
/// "certificate": base64 PEM}]}`.
pub fn additional_evidence(gpus: &[GpuEvidence]) -> serde_json::Value {
    let b64 = base64::engine::general_purpose::STANDARD;
    let list: Vec<_> = gpus
        .iter()
        .map(|g| {
            serde_json::json!({
                "arch": "HOPPER",
                "uuid": g.uuid,
                "evidence": hex::encode(&g.report),
                "certificate": b64.encode(&g.chain),
            })
        })
        .collect();
    serde_json::json!({ "device_evidence_list": list })
}

/// The GPU "ready state": which GPUs containers may be given. Starts
/// closed; opens for exactly the GPUs a KBS token accepted
/// ([`GpuGate::accept_token_claims`]); closes again on
/// [`GpuGate::revoke`] (a new attestation that failed, a token refused).
#[derive(Debug, Default)]
pub struct GpuGate {
    collected: Vec<String>,
    ready: Vec<String>,
}

impl GpuGate {
    /// A gate for the GPUs whose evidence was sent (by UUID, in order).
    pub fn new(gpus: &[GpuEvidence]) -> Self {
        GpuGate {
            collected: gpus.iter().map(|g| g.uuid.clone()).collect(),
            ready: Vec::new(),
        }
    }

    /// Open the gate from the claims of the KBS token the attestation
    /// returned: every GPU sent must appear as submodule `gpu<i>` with the
    /// same UUID and an `ear.status` other than `contraindicated`;
    /// otherwise the gate stays closed and the refusal names the GPU.
    pub fn accept_token_claims(&mut self, claims: &serde_json::Value) -> Result<(), TeeError> {
        self.ready.clear();
        for (i, uuid) in self.collected.iter().enumerate() {
            let sub = &claims["submods"][format!("gpu{i}")];
            let got = sub
                .pointer("/ear.veraison.annotated-evidence/nvidia/uuid")
                .and_then(serde_json::Value::as_str);
            if got != Some(uuid.as_str()) {
                return Err(TeeError::Check {
                    check: "nvidia.gpu_accepted",
                    expected: format!("token submodule gpu{i} for GPU {uuid}"),
                    actual: match got {
                        Some(u) => format!("GPU {}", u.chars().take(128).collect::<String>()),
                        None => "none: the KBS did not appraise this GPU".into(),
                    },
                });
            }
            let status = sub["ear.status"].as_str().unwrap_or("");
            if status.is_empty() || status == "contraindicated" {
                return Err(TeeError::Check {
                    check: "nvidia.gpu_accepted",
                    expected: format!("gpu{i} ({uuid}) affirming or warning"),
                    actual: format!("ear.status {status:?}"),
                });
            }
        }
        self.ready = self.collected.clone();
        Ok(())
    }

    /// Close the gate.
    pub fn revoke(&mut self) {
        self.ready.clear();
    }

    /// Whether GPU `uuid` may be given to a container.
    pub fn is_ready(&self, uuid: &str) -> bool {
        self.ready.iter().any(|u| u == uuid)
    }

    /// The device nodes a container may be given: `/dev/nvidia<i>` for
    /// each ready GPU plus the control nodes, or none while closed.
    pub fn device_nodes(&self) -> Vec<String> {
        if self.ready.is_empty() {
            return Vec::new();
        }
        let mut nodes: Vec<String> = self
            .collected
            .iter()
            .enumerate()
            .filter(|(_, u)| self.is_ready(u))
            .map(|(i, _)| format!("/dev/nvidia{i}"))
            .collect();
        nodes.extend(["/dev/nvidiactl".to_string(), "/dev/nvidia-uvm".to_string()]);
        nodes
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::cell::Cell;

    /// The recorded Hopper evidence (`shared/fixtures/nvidia`).
    pub(crate) const FIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/nvidia/"
    );
    /// The nonce the fixture report was made for.
    pub(crate) const NONCE: &str =
        "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

    /// NVML's answers recorded from a Hopper GPU (the fixture files).
    struct Recorded {
        cc: bool,
        count: u32,
        report: Vec<u8>,
        chain: Vec<u8>,
        asked: Cell<Option<[u8; 32]>>,
    }

    impl Recorded {
        fn fixture() -> Self {
            let hex_text =
                std::fs::read_to_string(format!("{FIX}hopperAttestationReport.txt")).unwrap();
            Recorded {
                cc: true,
                count: 1,
                report: hex::decode(hex_text.trim()).unwrap(),
                chain: std::fs::read(format!("{FIX}hopperCertChain.txt")).unwrap(),
                asked: Cell::new(None),
            }
        }
    }

    impl GpuTransport for Recorded {
        fn cc_enabled(&self) -> Result<bool, TeeError> {
            Ok(self.cc)
        }
        fn device_count(&self) -> Result<u32, TeeError> {
            Ok(self.count)
        }
        fn uuid(&self, index: u32) -> Result<String, TeeError> {
            Ok(format!("GPU-recorded-{index}"))
        }
        fn attestation_report(&self, _: u32, nonce: &[u8; 32]) -> Result<Vec<u8>, TeeError> {
            self.asked.set(Some(*nonce));
            Ok(self.report.clone())
        }
        fn certificate_chain(&self, _: u32) -> Result<Vec<u8>, TeeError> {
            Ok(self.chain.clone())
        }
    }

    pub(crate) fn nonce() -> [u8; 32] {
        hex::decode(NONCE).unwrap().try_into().unwrap()
    }

    #[test]
    fn collects_the_recorded_gpu_in_trustee_shape() {
        let t = Recorded::fixture();
        let gpus = collect(&t, &nonce()).unwrap();
        assert_eq!(t.asked.get(), Some(nonce()), "the nonce reaches NVML");
        let v = additional_evidence(&gpus);
        let d = &v["device_evidence_list"][0];
        assert_eq!(d["arch"], "HOPPER");
        assert_eq!(d["uuid"], "GPU-recorded-0");
        let hex_text =
            std::fs::read_to_string(format!("{FIX}hopperAttestationReport.txt")).unwrap();
        assert_eq!(d["evidence"], hex_text.trim().to_ascii_lowercase());
        let chain = base64::engine::general_purpose::STANDARD
            .decode(d["certificate"].as_str().unwrap())
            .unwrap();
        assert_eq!(chain, t.chain);
        // What the guest collects is what veil's verifier accepts.
        veil_attest::nvidia::evidence::verify(&v, Some(&nonce()), 1_735_689_600).unwrap();
    }

    #[test]
    fn refuses_a_report_for_another_nonce_cc_off_and_no_gpu() {
        let t = Recorded::fixture();
        let mut other = nonce();
        other[0] ^= 1;
        match collect(&t, &other).unwrap_err() {
            TeeError::Check { check, actual, .. } => {
                assert_eq!(check, "nvidia.nonce");
                assert_eq!(actual, NONCE);
            }
            e => panic!("{e}"),
        }
        let off = Recorded {
            cc: false,
            ..Recorded::fixture()
        };
        assert!(
            collect(&off, &nonce())
                .unwrap_err()
                .to_string()
                .starts_with("nvidia.cc_mode")
        );
        let none = Recorded {
            count: 0,
            ..Recorded::fixture()
        };
        assert!(
            collect(&none, &nonce())
                .unwrap_err()
                .to_string()
                .starts_with("nvidia.device_count")
        );
    }

    #[test]
    fn refuses_truncated_reports_and_non_pem_chains() {
        let mut t = Recorded::fixture();
        t.report.truncate(30);
        assert!(matches!(
            collect(&t, &nonce()).unwrap_err(),
            TeeError::Malformed { .. }
        ));
        let mut t = Recorded::fixture();
        t.report[1] = 0x61;
        assert!(
            collect(&t, &nonce())
                .unwrap_err()
                .to_string()
                .contains("not an SPDM")
        );
        let mut t = Recorded::fixture();
        t.chain = b"\x30\x82garbage".to_vec();
        assert!(
            collect(&t, &nonce())
                .unwrap_err()
                .to_string()
                .contains("certificate chain")
        );
        let mut t = Recorded::fixture();
        t.report = vec![0; MAX_REPORT_BYTES + 1];
        assert!(collect(&t, &nonce()).is_err());
    }

    #[test]
    fn gate_opens_only_for_gpus_the_kbs_token_accepted() {
        let gpus = collect(&Recorded::fixture(), &nonce()).unwrap();
        let mut gate = GpuGate::new(&gpus);
        assert!(
            gate.device_nodes().is_empty(),
            "closed before the KBS answers"
        );
        // A token without the GPU (CPU-only appraisal): stays closed.
        let cpu_only = serde_json::json!({"submods": {"cpu0": {"ear.status": "affirming"}}});
        let e = gate.accept_token_claims(&cpu_only).unwrap_err().to_string();
        assert!(
            e.contains("nvidia.gpu_accepted") && e.contains("GPU-recorded-0"),
            "{e}"
        );
        assert!(gate.device_nodes().is_empty());
        // Another GPU's submodule: closed.
        let other = serde_json::json!({"submods": {"gpu0": {"ear.status": "warning",
            "ear.veraison.annotated-evidence": {"nvidia": {"uuid": "GPU-other"}}}}});
        assert!(gate.accept_token_claims(&other).is_err());
        // Contraindicated: closed.
        let bad = serde_json::json!({"submods": {"gpu0": {"ear.status": "contraindicated",
            "ear.veraison.annotated-evidence": {"nvidia": {"uuid": "GPU-recorded-0"}}}}});
        assert!(gate.accept_token_claims(&bad).is_err());
        assert!(!gate.is_ready("GPU-recorded-0"));
        // Accepted: the GPU's nodes, until revoked.
        let ok = serde_json::json!({"submods": {"gpu0": {"ear.status": "warning",
            "ear.veraison.annotated-evidence": {"nvidia": {"uuid": "GPU-recorded-0"}}}}});
        gate.accept_token_claims(&ok).unwrap();
        assert_eq!(
            gate.device_nodes(),
            ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"]
        );
        gate.revoke();
        assert!(gate.device_nodes().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_transport_answers_never_panic(
            report in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
            chain in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..200),
        ) {
            let _ = check_report(0, &report, &nonce());
            let _ = check_chain(0, &chain);
        }
    }
}
