//! Enforcement: evaluate agent requests against a policy with `regorus`.
//!
//! The policy is parsed and compiled once ([`PolicyEngine::new`]); each
//! request is one evaluation of `data.agent_policy.<kind>_errors` with
//! `input = {api_version, kind, request, state}`. An empty set allows; any
//! violation denies and names the rule, the field, the expected and the
//! actual value. A kind the policy has no rule for is denied.

use std::collections::BTreeMap;
use std::fmt;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use veil_agent_api::{AgentMessage, AgentRequest, RequestKind};

use crate::initdata::{InitData, InitDataError};
use crate::model::PolicyData;
use crate::rego::{POLICY_DATA_MARKER, RegoTextError, extract_policy_data, extract_policy_json};

/// Longest a single decision may take before it is refused.
pub const EVALUATION_TIME_LIMIT: Duration = Duration::from_secs(2);

/// Where the engine keeps the policy data (`data.veil_policy.policy_data`).
const DATA_ROOT: &str = "veil_policy";

/// Why a policy could not be loaded or a request could not be evaluated.
/// Callers must treat every error as a denial.
#[derive(Debug, thiserror::Error)]
pub enum EnforceError {
    #[error(transparent)]
    PolicyText(#[from] RegoTextError),
    #[error(transparent)]
    InitData(#[from] InitDataError),
    #[error("policy.rego does not compile: {0}")]
    Compile(String),
    #[error("evaluating {kind} failed (denied): {reason}")]
    Evaluation { kind: RequestKind, reason: String },
}

/// One reason a request was denied.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Violation {
    /// The rule (request kind) that refused.
    pub rule: String,
    /// Path of the offending field in the request.
    pub field: String,
    /// What the policy allows.
    pub expected: String,
    /// What the request carried.
    pub actual: String,
    /// One-line explanation.
    pub message: String,
}

/// The outcome of one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub kind: String,
    pub allowed: bool,
    pub violations: Vec<Violation>,
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.allowed {
            return write!(f, "{}: allowed", self.kind);
        }
        for (i, v) in self.violations.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", v.message)?;
        }
        Ok(())
    }
}

/// What the agent has allowed so far (the policy's view of the sandbox).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestState {
    pub sandbox_created: bool,
    pub containers: BTreeMap<String, ContainerState>,
}

/// One created container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    /// The policy container it was created as.
    pub name: String,
    pub started: bool,
    /// Exec ids allowed in this container.
    pub execs: BTreeMap<String, bool>,
    /// The ports it was created with (`6379/tcp`): its own in the pod's
    /// shared network; no other container may be created with them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

impl GuestState {
    /// Record the effect of an allowed request.
    pub fn apply(&mut self, request: &AgentRequest) {
        match request {
            AgentRequest::CreateSandbox(_) => self.sandbox_created = true,
            AgentRequest::CreateContainer(r) => {
                self.containers.insert(
                    r.container_id.clone(),
                    ContainerState {
                        name: r.name.clone(),
                        started: false,
                        execs: BTreeMap::new(),
                        ports: r
                            .ports
                            .iter()
                            .map(|p| format!("{}/{}", p.container_port, p.protocol))
                            .collect(),
                    },
                );
            }
            AgentRequest::StartContainer(r) => {
                if let Some(c) = self.containers.get_mut(&r.container_id) {
                    c.started = true;
                }
            }
            AgentRequest::RemoveContainer(r) => {
                self.containers.remove(&r.container_id);
            }
            AgentRequest::ExecProcess(r) => {
                if let Some(c) = self.containers.get_mut(&r.container_id) {
                    c.execs.insert(r.exec_id.clone(), true);
                }
            }
            _ => {}
        }
    }
}

fn undefined_rule(kind: RequestKind, rule: &str) -> Decision {
    Decision {
        kind: kind.as_str().into(),
        allowed: false,
        violations: vec![Violation {
            rule: kind.as_str().into(),
            field: String::new(),
            expected: format!("a rule {rule}"),
            actual: "no such rule".into(),
            message: format!(
                "{kind}: the policy has no rule for this request kind, so it is denied"
            ),
        }],
    }
}

/// A compiled policy plus the guest state it decides against.
#[derive(Clone)]
pub struct PolicyEngine {
    engine: regorus::Engine,
    data: PolicyData,
    /// Request kinds the policy text has no `<kind>_errors` rule for.
    missing_rules: Vec<RequestKind>,
    state: GuestState,
}

impl fmt::Debug for PolicyEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyEngine")
            .field("containers", &self.data.containers.len())
            .field("state", &self.state)
            .finish()
    }
}

fn limits() -> regorus::PolicyLengthConfig {
    regorus::PolicyLengthConfig {
        max_col: NonZeroU32::new(64 * 1024).unwrap_or(NonZeroU32::MIN),
        max_file_bytes: NonZeroUsize::new(crate::initdata::MAX_INIT_DATA_BYTES)
            .unwrap_or(NonZeroUsize::MIN),
        max_lines: NonZeroUsize::new(200_000).unwrap_or(NonZeroUsize::MIN),
    }
}

impl PolicyEngine {
    /// Parse and compile a `policy.rego` (rules + `policy_data`).
    pub fn new(policy_rego: &str) -> Result<Self, EnforceError> {
        let data = extract_policy_data(policy_rego)?;
        let mut engine = regorus::Engine::new();
        engine.set_policy_length_config(limits());
        engine.set_execution_timer_config(regorus::utils::limits::ExecutionTimerConfig {
            limit: EVALUATION_TIME_LIMIT,
            check_interval: NonZeroU32::new(64).unwrap_or(NonZeroU32::MIN),
        });
        engine.set_strict_builtin_errors(false);
        // The `policy_data := {...}` literal is the same JSON as `data`
        // (extract_policy_data parsed exactly that text, to its end); bind it
        // as engine data so it is built once, not on every evaluation.
        let start = policy_rego
            .rfind(POLICY_DATA_MARKER)
            .ok_or(RegoTextError::NoPolicyData)?;
        let rules = format!(
            "{}{POLICY_DATA_MARKER}data.{DATA_ROOT}.policy_data\n",
            &policy_rego[..start]
        );
        let json = extract_policy_json(policy_rego)?;
        let root = regorus::Value::from(serde_json::json!({ DATA_ROOT: { "policy_data": json } }));
        engine
            .add_data(root)
            .map_err(|e| EnforceError::Compile(e.to_string()))?;
        engine
            .add_policy("policy.rego".into(), rules)
            .map_err(|e| EnforceError::Compile(e.to_string()))?;
        // Compile now (the first evaluation prepares the engine), so that a
        // broken policy fails at load time, not on the first request.
        engine.set_input(regorus::Value::new_object());
        engine
            .eval_rule("data.agent_policy.policy_data".into())
            .map_err(|e| EnforceError::Compile(e.to_string()))?;
        let mut missing_rules = Vec::new();
        for kind in RequestKind::ALL {
            let rule = format!("{}_errors", kind.as_str());
            let declared = engine
                .has_declared_rule_rooted_at("policy.rego", &rule)
                .map_err(|e| EnforceError::Compile(e.to_string()))?;
            if !declared {
                missing_rules.push(kind);
            }
        }
        Ok(PolicyEngine {
            engine,
            data,
            missing_rules,
            state: GuestState::default(),
        })
    }

    /// Load the policy held in init-data.
    pub fn from_init_data(init_data: &InitData) -> Result<Self, EnforceError> {
        Self::new(init_data.policy()?)
    }

    /// The policy data.
    pub fn data(&self) -> &PolicyData {
        &self.data
    }

    /// The current guest state.
    pub fn state(&self) -> &GuestState {
        &self.state
    }

    /// Replace the guest state (e.g. to check one request in a given situation).
    pub fn set_state(&mut self, state: GuestState) {
        self.state = state;
    }

    /// Decide on a request without changing the state.
    pub fn evaluate(&mut self, msg: &AgentMessage) -> Result<Decision, EnforceError> {
        let kind = msg.request.kind();
        let rule = format!("data.agent_policy.{}_errors", kind.as_str());
        if self.missing_rules.contains(&kind) {
            return Ok(undefined_rule(kind, &rule));
        }
        let mut input = msg.policy_view();
        if let Some(obj) = input.as_object_mut() {
            obj.insert(
                "state".into(),
                serde_json::to_value(&self.state).unwrap_or_default(),
            );
        }
        self.engine.set_input(regorus::Value::from(input));
        let result = self
            .engine
            .eval_rule(rule.clone())
            .map_err(|e| EnforceError::Evaluation {
                kind,
                reason: e.to_string(),
            })?;
        if result == regorus::Value::Undefined {
            return Ok(undefined_rule(kind, &rule));
        }
        let json = result.to_json_str().map_err(|e| EnforceError::Evaluation {
            kind,
            reason: e.to_string(),
        })?;
        let mut violations: Vec<Violation> =
            serde_json::from_str(&json).map_err(|e| EnforceError::Evaluation {
                kind,
                reason: format!("{rule} is not a set of violations: {e}"),
            })?;
        violations.sort();
        Ok(Decision {
            kind: kind.as_str().into(),
            allowed: violations.is_empty(),
            violations,
        })
    }

    /// Decide on a request and, if it is allowed, record its effect.
    pub fn enforce(&mut self, msg: &AgentMessage) -> Result<Decision, EnforceError> {
        let d = self.evaluate(msg)?;
        if d.allowed {
            self.state.apply(&msg.request);
        }
        Ok(d)
    }
}
