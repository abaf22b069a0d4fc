//! Events back to containerd: the ttrpc `Events.Forward` service at
//! `$TTRPC_ADDRESS` (what containerd ≥ 1.5 gives its shims).

use std::sync::Mutex;
use std::time::SystemTime;

use containerd_shim_protos as protos;
use protos::protobuf::well_known_types::any::Any;
use protos::protobuf::well_known_types::timestamp::Timestamp;
use protos::protobuf::{MessageDyn, MessageFull};
use protos::shim::event::Envelope;
use protos::shim::events::ForwardRequest;
use protos::ttrpc::context::Context;
use protos::{Client, EventsClient};

/// containerd's topics for the task events a shim publishes.
pub mod topic {
    pub const CREATE: &str = "/tasks/create";
    pub const START: &str = "/tasks/start";
    pub const EXIT: &str = "/tasks/exit";
    pub const DELETE: &str = "/tasks/delete";
    pub const EXEC_ADDED: &str = "/tasks/exec-added";
    pub const EXEC_STARTED: &str = "/tasks/exec-started";
    pub const OOM: &str = "/tasks/oom";
}

/// A `Timestamp` for `t`.
pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// Publishes task events to containerd; without an address (tests, or a
/// containerd that gave none) events are only logged.
pub struct Publisher {
    client: Option<Mutex<EventsClient>>,
    namespace: String,
}

impl Publisher {
    /// Connect to `address` (`unix:///path` or a path).
    pub fn connect(address: &str, namespace: &str) -> Result<Self, String> {
        let path = address.strip_prefix("unix://").unwrap_or(address);
        let client = Client::connect(&format!("unix://{path}"))
            .map_err(|e| format!("connecting to containerd's event socket {path}: {e}"))?;
        Ok(Publisher {
            client: Some(Mutex::new(EventsClient::new(client))),
            namespace: namespace.into(),
        })
    }

    /// A publisher that only logs.
    pub fn none(namespace: &str) -> Self {
        Publisher {
            client: None,
            namespace: namespace.into(),
        }
    }

    /// Publish `event` on `topic`; failures are logged (containerd
    /// re-reads task state, so a lost event is not fatal).
    pub fn publish<M: MessageFull>(&self, topic: &str, event: &M) {
        tracing::debug!(topic, event = ?event, "event");
        let Some(client) = &self.client else { return };
        let mut any = Any::new();
        any.type_url = event.descriptor_dyn().full_name().to_string();
        match event.write_to_bytes() {
            Ok(v) => any.value = v,
            Err(e) => {
                tracing::error!(topic, error = %e, "encoding event");
                return;
            }
        }
        let mut env = Envelope::new();
        env.set_topic(topic.into());
        env.set_namespace(self.namespace.clone());
        env.set_timestamp(timestamp(SystemTime::now()));
        env.set_event(any);
        let mut req = ForwardRequest::new();
        req.set_envelope(env);
        let client = client.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = client.forward(Context::default(), &req) {
            tracing::warn!(topic, error = %e, "publishing event to containerd");
        }
    }
}
