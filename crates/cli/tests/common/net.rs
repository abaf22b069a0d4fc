//! A bridge network private to one test (`vtn…` bridge, `10.211.N.0/24`,
//! its own IPAM dir), and what a sandbox could leave behind on it.

use std::process::Command;

use super::{Env, text};

/// A bridge network private to one test.
pub struct TestNet {
    pub bridge: String,
    pub subnet_prefix: String,
    pub ipam: std::path::PathBuf,
}

impl TestNet {
    pub fn new(env: &Env) -> Option<TestNet> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: pod networking needs root");
            return None;
        }
        if !std::path::Path::new("/usr/lib/cni/bridge").exists() {
            panic!("Debian's containernetworking-plugins are missing: run scripts/install-deps.sh");
        }
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let tag = (std::process::id().wrapping_mul(7) + n) % 250 + 1;
        Some(TestNet {
            bridge: format!("vtn{:x}{n}", std::process::id() % 0xfffff),
            subnet_prefix: format!("10.211.{tag}"),
            ipam: env.dir.path().join("ipam"),
        })
    }

    /// `veil` with this network as the bridge mode's settings.
    pub fn veil(&self, env: &Env) -> Command {
        let mut c = env.veil();
        c.env("VEIL_NETWORK", "bridge")
            .env("VEIL_NET_BRIDGE", &self.bridge)
            .env("VEIL_NET_SUBNET", format!("{}.0/24", self.subnet_prefix))
            .env("VEIL_NET_NAME", &self.bridge)
            .env("VEIL_NET_IPAM_DIR", &self.ipam);
        c
    }

    pub fn gateway(&self) -> String {
        format!("{}.1", self.subnet_prefix)
    }

    /// What a sandbox could leave behind: its netns, the bridge's ports, NAT
    /// rules naming it or this network, IPAM leases.
    pub fn leftovers(&self, id: &str) -> Vec<String> {
        let mut out = Vec::new();
        let sh = |cmd: &str| {
            text(
                &Command::new("sh")
                    .args(["-c", cmd])
                    .output()
                    .unwrap()
                    .stdout,
            )
        };
        for l in sh("ip netns list").lines() {
            if l.contains(&format!("veil-{id}")) {
                out.push(format!("netns {l}"));
            }
        }
        for l in sh(&format!(
            "ip -o link show master {} 2>/dev/null",
            self.bridge
        ))
        .lines()
        {
            out.push(format!("bridge port {l}"));
        }
        for l in sh("iptables-save 2>/dev/null").lines() {
            if l.contains(&format!("veil-{id}")) || l.contains(&self.subnet_prefix) {
                out.push(format!("iptables {l}"));
            }
        }
        if let Ok(rd) = std::fs::read_dir(self.ipam.join(&self.bridge)) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&self.subnet_prefix) {
                    out.push(format!("ipam lease {n}"));
                }
            }
        }
        out
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "delete", &self.bridge])
            .output();
    }
}
