//! The GPU "ready state" in the agent: GPU evidence collected at attestation
//! (sent as the KBS protocol's additional evidence, for the device nonce the
//! KBS client derives), the token's verdict fed to [`GpuGate`], and the
//! device nodes a container that needs GPUs may be given.
//!
//! The GPUs are reached through a [`GpuTransport`]: NVML when the agent is
//! built with feature `nvml` (it dlopens the driver's library, at a name
//! fixed at build time), otherwise none, and a workload that needs GPUs is
//! refused naming that. A container that needs no GPU is never given GPU
//! device nodes, whatever the gate says.

use std::sync::Mutex;

use veil_tee::TeeError;
use veil_tee::nvidia::{GpuGate, GpuTransport, additional_evidence, collect};

/// Opens the transport at each attestation (so a driver restarted in
/// between is seen afresh).
pub type TransportFactory = Box<dyn Fn() -> Result<Box<dyn GpuTransport>, TeeError> + Send + Sync>;

/// The transport this agent build has: NVML with feature `nvml`.
pub fn default_transport() -> Result<Box<dyn GpuTransport>, TeeError> {
    #[cfg(feature = "nvml")]
    {
        let nvml: Box<dyn GpuTransport> = Box::new(veil_tee::nvml::Nvml::open()?);
        Ok(nvml)
    }
    #[cfg(not(feature = "nvml"))]
    {
        Err(TeeError::Check {
            check: "nvidia.transport",
            expected:
                "an agent built with feature nvml (NVML from the guest image's NVIDIA driver)"
                    .into(),
            actual: "this agent has no GPU transport".into(),
        })
    }
}

const AWAITING: &str = "the KBS has not answered the attestation yet";

struct State {
    gate: GpuGate,
    /// Why the gate is closed (the check and what was found), for refusals.
    closed_because: String,
}

/// GPU evidence and readiness for one agent.
pub struct Gpus {
    transport: TransportFactory,
    state: Mutex<State>,
}

impl Gpus {
    /// GPUs reached through `transport`; closed until a token accepts them.
    pub fn new(transport: TransportFactory) -> Self {
        Gpus {
            transport,
            state: Mutex::new(State {
                gate: GpuGate::default(),
                closed_because: "not attested yet".into(),
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the state is plain data.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `additional_evidence` string for a KBS attestation: every GPU's
    /// evidence for Trustee's device nonce (the device runtime-data digest
    /// truncated to 32 bytes). Closes the gate until the KBS answers. When
    /// no evidence can be collected (no transport, CC mode off, no GPU) the
    /// attestation goes on for the CPU alone (`""`): CPU-only secrets stay
    /// reachable, and containers that need GPUs are refused with the reason.
    pub fn additional_evidence(&self, device_digest: &[u8; 48]) -> String {
        let mut nonce = [0u8; 32];
        nonce.copy_from_slice(&device_digest[..32]);
        let collected = (self.transport)().and_then(|t| collect(t.as_ref(), &nonce));
        let mut st = self.state();
        match collected {
            Ok(gpus) => {
                st.gate = GpuGate::new(&gpus);
                st.closed_because = AWAITING.into();
                serde_json::json!({ "nvidia": additional_evidence(&gpus) }).to_string()
            }
            Err(e) => {
                tracing::warn!(error = %e, "no GPU evidence: attesting the CPU alone");
                st.gate = GpuGate::default();
                st.closed_because = format!("collecting GPU evidence: {e}");
                String::new()
            }
        }
    }

    /// Open the gate from the token the attestation returned (its claims;
    /// the token came from the attested TLS session with the KBS).
    pub fn accept_token(&self, token: &str) -> Result<(), String> {
        let mut st = self.state();
        let claims = veil_kbs_client::token_claims(token).map_err(|e| {
            st.gate.revoke();
            st.closed_because = format!("the KBS token: {e}");
            st.closed_because.clone()
        })?;
        if let Err(e) = st.gate.accept_token_claims(&claims) {
            st.gate.revoke();
            st.closed_because = e.to_string();
            return Err(st.closed_because.clone());
        }
        st.closed_because = if st.gate.device_nodes().is_empty() {
            "no GPU evidence was sent with the attestation".into()
        } else {
            String::new()
        };
        Ok(())
    }

    /// Whether GPU evidence was sent and the KBS's answer not yet read.
    pub fn awaiting_answer(&self) -> bool {
        self.state().closed_because == AWAITING
    }

    /// Close the gate (a later attestation failed, the token was refused).
    pub fn revoke(&self, why: &str) {
        let mut st = self.state();
        st.gate.revoke();
        st.closed_because = why.chars().take(1024).collect();
    }

    /// The device nodes for container `name`, which needs `gpus` GPUs:
    /// none when it needs none; the first `gpus` ready GPUs' nodes and the
    /// control nodes when the gate is open and holds enough of them;
    /// otherwise a refusal naming the check. (GPUs are not split between
    /// containers: two containers needing one GPU each both get the first.)
    pub fn devices_for(&self, name: &str, gpus: u32) -> Result<Vec<String>, String> {
        if gpus == 0 {
            return Ok(Vec::new());
        }
        let st = self.state();
        let nodes = st.gate.device_nodes();
        // The per-GPU nodes, besides /dev/nvidiactl and /dev/nvidia-uvm.
        let ready = nodes.len().saturating_sub(2);
        if ready == 0 {
            return Err(format!(
                "container {name:?}: check nvidia.gpu_ready: expected the KBS to have accepted this guest's GPUs before a container that needs {gpus} GPU(s) starts, got the gate closed ({}); see the KBS's answer in the agent log, and its resource policy's gpu rule",
                st.closed_because
            ));
        }
        if (gpus as usize) > ready {
            return Err(format!(
                "container {name:?}: check nvidia.gpu_count: expected {gpus} ready GPU(s), got {ready}"
            ));
        }
        // The first `gpus` of them, and the control nodes (the last two).
        let mut out: Vec<String> = nodes[..gpus as usize].to_vec();
        out.extend_from_slice(&nodes[ready..]);
        Ok(out)
    }
}

/// The pod's GPUs: the gate and how many GPUs each container needs (the
/// policy's `gpus`, by container name).
#[derive(Debug, Clone)]
pub struct PodGpus {
    pub gate: std::sync::Arc<Gpus>,
    pub per_container: std::collections::BTreeMap<String, u32>,
}

impl PodGpus {
    /// For a policy whose containers need GPUs; `None` when none does.
    pub fn of_policy(
        data: &veil_policy::model::PolicyData,
        transport: TransportFactory,
    ) -> Option<Self> {
        let per_container: std::collections::BTreeMap<String, u32> = data
            .containers
            .iter()
            .filter(|c| c.gpus > 0)
            .map(|c| (c.name.clone(), c.gpus))
            .collect();
        (!per_container.is_empty()).then(|| PodGpus {
            gate: std::sync::Arc::new(Gpus::new(transport)),
            per_container,
        })
    }

    /// The device nodes for the container the policy names `name`.
    pub fn nodes_for(&self, name: &str) -> Result<Vec<String>, String> {
        self.gate
            .devices_for(name, self.per_container.get(name).copied().unwrap_or(0))
    }
}

impl std::fmt::Debug for Gpus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gpus")
            .field("devices", &self.state().gate.device_nodes())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    const FIX: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../../shared/fixtures/nvidia/"
    );
    const NONCE: &str = "931d8dd0add203ac3d8b4fbde75e115278eefcdceac5b87671a748f32364dfcb";

    /// NVML's answers recorded from a Hopper GPU (the fixture files).
    struct Recorded;

    impl GpuTransport for Recorded {
        fn cc_enabled(&self) -> Result<bool, TeeError> {
            Ok(true)
        }
        fn device_count(&self) -> Result<u32, TeeError> {
            Ok(1)
        }
        fn uuid(&self, _: u32) -> Result<String, TeeError> {
            Ok("GPU-recorded-0".into())
        }
        fn attestation_report(&self, _: u32, _: &[u8; 32]) -> Result<Vec<u8>, TeeError> {
            let t = std::fs::read_to_string(format!("{FIX}hopperAttestationReport.txt")).unwrap();
            Ok(hex::decode(t.trim()).unwrap())
        }
        fn certificate_chain(&self, _: u32) -> Result<Vec<u8>, TeeError> {
            Ok(std::fs::read(format!("{FIX}hopperCertChain.txt")).unwrap())
        }
    }

    fn recorded() -> Gpus {
        Gpus::new(Box::new(|| Ok(Box::new(Recorded) as Box<dyn GpuTransport>)))
    }

    /// The fixture's device digest (its nonce, padded as the client's is).
    fn digest() -> [u8; 48] {
        let mut d = [0u8; 48];
        d[..32].copy_from_slice(&hex::decode(NONCE).unwrap());
        d
    }

    /// A token with these claims (the agent reads, the TLS session vouches).
    fn token(claims: serde_json::Value) -> String {
        let b = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        format!("e30.{}.c2ln", b.encode(claims.to_string()))
    }

    fn accepted() -> String {
        token(
            serde_json::json!({"submods": {"gpu0": {"ear.status": "warning",
            "ear.veraison.annotated-evidence": {"nvidia": {"uuid": "GPU-recorded-0"}}}}}),
        )
    }

    #[test]
    fn gpus_reach_a_container_only_after_the_kbs_accepted_them() {
        let g = recorded();
        // No GPU: never any node, gate open or not.
        assert_eq!(g.devices_for("web", 0).unwrap(), Vec::<String>::new());
        let e = g.devices_for("train", 1).unwrap_err();
        assert!(
            e.contains("nvidia.gpu_ready") && e.contains("not attested yet"),
            "{e}"
        );

        let sent = g.additional_evidence(&digest());
        let v: serde_json::Value = serde_json::from_str(&sent).unwrap();
        // What the agent sends is what the KBS's verifier accepts.
        veil_attest::nvidia::evidence::verify(
            &v["nvidia"],
            Some(&digest()[..32].try_into().unwrap()),
            1_735_689_600,
        )
        .unwrap();
        let e = g.devices_for("train", 1).unwrap_err();
        assert!(e.contains("has not answered") && g.awaiting_answer(), "{e}");

        // The KBS appraised the CPU only: closed, naming the GPU.
        let cpu_only = token(serde_json::json!({"submods": {"cpu0": {"ear.status": "affirming"}}}));
        let e = g.accept_token(&cpu_only).unwrap_err();
        assert!(e.contains("nvidia.gpu_accepted"), "{e}");
        let e = g.devices_for("train", 1).unwrap_err();
        assert!(
            e.contains("nvidia.gpu_ready") && e.contains("GPU-recorded-0"),
            "{e}"
        );

        g.accept_token(&accepted()).unwrap();
        assert_eq!(
            g.devices_for("train", 1).unwrap(),
            ["/dev/nvidia0", "/dev/nvidiactl", "/dev/nvidia-uvm"]
        );
        assert_eq!(g.devices_for("web", 0).unwrap(), Vec::<String>::new());
        let e = g.devices_for("big", 2).unwrap_err();
        assert!(
            e.contains("nvidia.gpu_count") && e.contains("expected 2 ready GPU(s), got 1"),
            "{e}"
        );

        // Token revoked / re-attestation refused: closed again, with the reason.
        g.revoke("re-attestation refused by the KBS: nvidia.nonce");
        let e = g.devices_for("train", 1).unwrap_err();
        assert!(e.contains("re-attestation refused"), "{e}");
        // A garbage token closes it too.
        assert!(g.accept_token("not-a-token").is_err());
    }

    #[test]
    fn without_a_transport_a_gpu_workload_is_refused_naming_it() {
        let g = Gpus::new(Box::new(default_transport));
        #[cfg(not(feature = "nvml"))]
        {
            assert_eq!(
                g.additional_evidence(&digest()),
                "",
                "the CPU attests alone"
            );
            let e = g.devices_for("train", 1).unwrap_err();
            assert!(
                e.contains("nvidia.gpu_ready") && e.contains("nvidia.transport"),
                "{e}"
            );
        }
        // Without a gate opened by a token, a forged token for a GPU that
        // was never collected opens nothing.
        assert!(g.accept_token(&accepted()).is_ok());
        let e = g.devices_for("train", 1).unwrap_err();
        assert!(e.contains("no GPU evidence was sent"), "{e}");
    }
}
