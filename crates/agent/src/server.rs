//! The agent API server: framed JSON over a byte stream, every request
//! decided by the policy before anything happens.
//!
//! For each frame: decode and validate ([`AgentMessage::from_json`], size
//! limits), evaluate with the policy engine (which records the effect of an
//! allowed request in the policy's view of the guest), carry it out, and
//! answer. A denial is answered with the policy's explanation and logged. If
//! an allowed request then fails, its effect is taken back out of the
//! policy state, so the policy never believes in a container that does not
//! exist.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use veil_agent_api::{AgentMessage, AgentRequest, MAX_MESSAGE_BYTES, Stream as WhichStream};
use veil_policy::PolicyEngine;
use veil_tee::Attester;
use veil_tee::channel::{read_frame, send_json};

use crate::container::Manager;
use veil_agent_api::proto::{
    AgentResponse, DEFAULT_READ_CHUNK, DeniedBecause, GetEvidenceResult, Hello, MAX_READ_CHUNK,
    ReadStreamResult,
};

/// How long one `read_stream` waits for output before answering empty.
pub const READ_WAIT: Duration = Duration::from_secs(1);

/// The agent's shared state.
pub struct Agent {
    pub hello: Hello,
    pub engine: Mutex<PolicyEngine>,
    pub manager: Arc<Manager>,
    /// `None`: no TEE (`--tee none`).
    pub attester: Option<Arc<dyn Attester>>,
    /// The agent is PID 1 of a VM guest (not the process sandbox).
    pub in_vm: bool,
}

fn ok<T: serde::Serialize>(v: T) -> AgentResponse {
    AgentResponse::Ok {
        result: serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
    }
}

fn empty() -> AgentResponse {
    AgentResponse::Ok {
        result: serde_json::json!({}),
    }
}

impl Agent {
    /// Decide and carry out one request frame.
    pub fn handle(&self, frame: &[u8]) -> AgentResponse {
        let msg = match AgentMessage::from_json(frame) {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "invalid agent request refused");
                return AgentResponse::Error {
                    message: format!("invalid request: {e}"),
                };
            }
        };
        let kind = msg.request.kind();
        let decision = {
            let Ok(mut engine) = self.engine.lock() else {
                return AgentResponse::Error {
                    message: "policy engine lock poisoned; refusing".into(),
                };
            };
            engine.enforce(&msg)
        };
        let decision = match decision {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(%kind, error = %e, "policy evaluation failed; request denied");
                return AgentResponse::Denied {
                    kind: kind.to_string(),
                    violations: vec![DeniedBecause {
                        rule: kind.to_string(),
                        field: String::new(),
                        expected: "a policy decision".into(),
                        actual: e.to_string(),
                        message: format!(
                            "{kind}: the policy could not be evaluated ({e}), so the request is denied"
                        ),
                    }],
                };
            }
        };
        if !decision.allowed {
            tracing::warn!(%kind, reason = %decision, "request denied by policy");
            return AgentResponse::Denied {
                kind: decision.kind,
                violations: decision
                    .violations
                    .into_iter()
                    .map(|v| DeniedBecause {
                        rule: v.rule,
                        field: v.field,
                        expected: v.expected,
                        actual: v.actual,
                        message: v.message,
                    })
                    .collect(),
            };
        }
        tracing::debug!(%kind, "request allowed by policy");
        let resp = self.execute(&msg.request);
        if let AgentResponse::Error { message } = &resp {
            tracing::warn!(%kind, error = %message, "allowed request failed");
            self.revert(&msg.request);
        }
        resp
    }

    fn revert(&self, request: &AgentRequest) {
        let Ok(mut engine) = self.engine.lock() else {
            return;
        };
        let mut st = engine.state().clone();
        match request {
            AgentRequest::CreateSandbox(_) => st.sandbox_created = false,
            AgentRequest::CreateContainer(r) => {
                st.containers.remove(&r.container_id);
            }
            AgentRequest::StartContainer(r) => {
                if let Some(c) = st.containers.get_mut(&r.container_id) {
                    c.started = false;
                }
            }
            AgentRequest::ExecProcess(r) => {
                if let Some(c) = st.containers.get_mut(&r.container_id) {
                    c.execs.remove(&r.exec_id);
                }
            }
            _ => return,
        }
        engine.set_state(st);
    }

    fn execute(&self, request: &AgentRequest) -> AgentResponse {
        let m = &self.manager;
        let r = match request {
            AgentRequest::CreateSandbox(r) => m.create_sandbox(r).map(|_| empty()),
            AgentRequest::CreateContainer(r) => m.create_container(r).map(ok),
            AgentRequest::StartContainer(r) => m.start_container(&r.container_id).map(ok),
            AgentRequest::RemoveContainer(r) => m
                .remove(
                    &r.container_id,
                    Duration::from_secs(u64::from(r.timeout_secs)),
                )
                .map(|_| empty()),
            AgentRequest::ExecProcess(r) => m.exec(r).map(|_| empty()),
            AgentRequest::SignalProcess(r) => m
                .signal(&r.container_id, &r.exec_id, r.signal)
                .map(|_| empty()),
            AgentRequest::ReadStream(r) => m.process(&r.container_id, &r.exec_id).map(|p| {
                let s = match r.stream {
                    WhichStream::Stdout => &p.stdout,
                    WhichStream::Stderr => &p.stderr,
                };
                let max = match r.max_bytes as usize {
                    0 => DEFAULT_READ_CHUNK,
                    n => n.min(MAX_READ_CHUNK),
                };
                let c = s.read(max, READ_WAIT);
                ok(ReadStreamResult {
                    data: B64.encode(&c.data),
                    eof: c.eof,
                    exit_code: c.exit_code,
                    dropped: c.dropped,
                })
            }),
            AgentRequest::WriteStdin(r) => m
                .write_stdin(&r.container_id, &r.exec_id, &r.data.0)
                .map(|_| empty()),
            AgentRequest::CopyFile(r) => m.copy_file(r).map(|_| empty()),
            AgentRequest::StatsContainer(r) => m.stats(&r.container_id).map(ok),
            AgentRequest::GetEvidence(r) => match &self.attester {
                None => Err(format!(
                    "get_evidence: there is no evidence to give: {}",
                    crate::boot::NO_TEE_WARNING
                )),
                Some(a) => a
                    .evidence(&crate::local_api::report_data_for(&r.runtime_data.0))
                    .map(|e| {
                        ok(GetEvidenceResult {
                            tee: e.tee.as_str().into(),
                            evidence: e.json,
                        })
                    })
                    .map_err(|e| e.to_string()),
            },
            AgentRequest::UpdateConfig(r) => m.update_config(r).map(|_| empty()),
            AgentRequest::ResizeTerminal(r) => m
                .resize_terminal(&r.container_id, &r.exec_id, r.rows, r.cols)
                .map(|_| empty()),
            AgentRequest::BenchVolume(r) => self.bench_volume(r),
        };
        r.unwrap_or_else(|message| AgentResponse::Error { message })
    }

    /// `bench_volume`, once the Rego rule allowed it: only when the policy
    /// data itself sets `sandbox.bench_volume` (a policy text whose rules
    /// admit it without that is still refused) and in a VM.
    fn bench_volume(
        &self,
        r: &veil_agent_api::bench::BenchVolumeRequest,
    ) -> Result<AgentResponse, String> {
        let admits = self
            .engine
            .lock()
            .map(|e| e.data().sandbox.bench_volume)
            .unwrap_or(false);
        crate::bench_volume::gate(self.in_vm, admits)?;
        crate::bench_volume::run(r, std::path::Path::new(crate::bench_volume::FW_CFG_PATH)).map(ok)
    }

    /// Serve one connection: hello, then request/response until it closes.
    pub fn serve_connection<S: Read + Write>(&self, mut s: S) {
        if send_json(&mut s, &self.hello).is_err() {
            return;
        }
        loop {
            let frame = match read_frame(&mut s, MAX_MESSAGE_BYTES) {
                Ok(Some(f)) => f,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(error = %e, "agent connection ended");
                    let _ = send_json(
                        &mut s,
                        &AgentResponse::Error {
                            message: e.to_string(),
                        },
                    );
                    return;
                }
            };
            let resp = self.handle(&frame);
            if send_json(&mut s, &resp).is_err() {
                return;
            }
        }
    }

    /// Accept connections until the process exits.
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    let agent = self.clone();
                    std::thread::spawn(move || agent.serve_connection(s));
                }
                Err(e) => tracing::warn!(error = %e, "accept on the agent socket failed"),
            }
        }
    }

    /// Accept TCP connections (the VM sandbox: QEMU forwards the host's
    /// loopback port here) until the process exits.
    pub fn serve_tcp(self: Arc<Self>, listener: TcpListener) {
        for conn in listener.incoming() {
            match conn {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    let agent = self.clone();
                    std::thread::spawn(move || agent.serve_connection(s));
                }
                Err(e) => tracing::warn!(error = %e, "accept on the agent port failed"),
            }
        }
    }
}
