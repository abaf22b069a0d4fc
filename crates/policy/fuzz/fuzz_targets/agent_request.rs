//! Agent requests from the host, decoded and decided against a fixed policy
//! (and a joined VM NIC's configuration checked as the agent does).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use veil_agent_api::AgentMessage;
use veil_policy::enforce::PolicyEngine;

const POLICY: &str = include_str!("../../tests/data/golden/pod-multi.web.toml");

fn engine() -> PolicyEngine {
    static ENGINE: OnceLock<PolicyEngine> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let p = veil_policy::initdata::ParsedInitData::parse(POLICY.as_bytes()).unwrap();
            PolicyEngine::from_init_data(&p.init_data).unwrap()
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = AgentMessage::from_json(data) {
        // What the agent runs on a joined VM NIC's configuration.
        if let veil_agent_api::AgentRequest::CreateSandbox(r) = &msg.request
            && let Some(n) = &r.workload_nic
        {
            let _ = n.check();
        }
        let mut e = engine();
        let _ = e.enforce(&msg);
    }
});
