//! The agent API client: one connection to the agent socket, the agent's
//! [`Hello`], then request/response in turn.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use veil_agent_api::proto::{AgentResponse, Hello, MAX_RESPONSE_BYTES};
use veil_agent_api::{AgentMessage, AgentRequest};
use veil_tee::channel::{ChannelError, recv_json, send_json};

/// Why a call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The policy refused; the response carries the explanation.
    #[error("{}", .0.explain())]
    Denied(AgentResponse),
    /// The agent could not do it.
    #[error("agent: {0}")]
    Failed(String),
    /// The connection failed.
    #[error("agent connection: {0}")]
    Channel(#[from] ChannelError),
    #[error("agent connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("agent answered with an unexpected result: {0}")]
    Result(String),
}

impl CallError {
    /// Whether the policy refused.
    pub fn is_denied(&self) -> bool {
        matches!(self, CallError::Denied(_))
    }
}

/// A connection to one agent.
#[derive(Debug)]
pub struct AgentClient {
    stream: UnixStream,
    hello: Hello,
}

impl AgentClient {
    /// Connect and read the agent's hello. `timeout` bounds each read.
    pub fn connect(socket: &Path, timeout: Duration) -> Result<Self, CallError> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let hello: Hello = recv_json(&mut stream, MAX_RESPONSE_BYTES)?.ok_or_else(|| {
            CallError::Failed("the agent closed the connection before saying hello".into())
        })?;
        Ok(AgentClient { stream, hello })
    }

    /// What the agent said on connect.
    pub fn hello(&self) -> &Hello {
        &self.hello
    }

    /// Change the per-read timeout (long for image pulls).
    pub fn set_timeout(&self, timeout: Duration) -> Result<(), CallError> {
        self.stream.set_read_timeout(Some(timeout))?;
        Ok(())
    }

    /// Send one request; the result JSON on success.
    pub fn call(&mut self, request: AgentRequest) -> Result<serde_json::Value, CallError> {
        let msg = AgentMessage::new(request);
        send_json(&mut self.stream, &msg.to_json())?;
        let resp: AgentResponse = recv_json(&mut self.stream, MAX_RESPONSE_BYTES)?
            .ok_or_else(|| CallError::Failed("the agent closed the connection".into()))?;
        match resp {
            AgentResponse::Ok { result } => Ok(result),
            AgentResponse::Error { message } => Err(CallError::Failed(message)),
            denied @ AgentResponse::Denied { .. } => Err(CallError::Denied(denied)),
        }
    }

    /// Send one request and decode its typed result.
    pub fn call_typed<T: serde::de::DeserializeOwned>(
        &mut self,
        request: AgentRequest,
    ) -> Result<T, CallError> {
        let v = self.call(request)?;
        serde_json::from_value(v).map_err(|e| CallError::Result(e.to_string()))
    }
}
