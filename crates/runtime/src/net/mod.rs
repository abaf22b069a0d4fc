//! Pod networking on the host: one network namespace per sandbox, shared by
//! all its containers, set up with Debian's CNI plugins the way containerd
//! and nerdctl do (see `docs/network.md`).
//!
//! - [`NetworkMode::Bridge`] (default): a veth into a veil-owned bridge,
//!   an address from `host-local` IPAM, outbound NAT (`bridge` with
//!   `ipMasq`), published ports through `portmap`.
//! - [`NetworkMode::None`]: loopback only (`loopback` plugin).
//! - [`NetworkMode::Join`]: a namespace someone else made (the containerd
//!   shim contract); veil configures nothing in it and removes nothing,
//!   except for a VM ([`PodNetwork::join_vm`], [`tap`]): a tap of its own
//!   mirrored to the namespace's interface with `tc`, removed at teardown.
//!
//! Every step is written to a state file *before* it is made, so a
//! teardown after a crash (or `SIGKILL` of `veil run`) undoes exactly what
//! exists: [`PodNetwork`] tears down on drop, [`teardown_state_file`] from
//! another process.

pub mod cni;
pub mod ports;
pub mod tap;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub use cni::CniError;
pub use ports::{PortMapping, Protocol};

/// How a sandbox is networked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetworkMode {
    /// An address on veil's host bridge, outbound NAT, published ports.
    Bridge,
    /// Loopback only.
    None,
    /// Join this existing network namespace (a file such as
    /// `/run/netns/NAME` or `/proc/PID/ns/net`).
    Join(PathBuf),
}

impl fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetworkMode::Bridge => f.write_str("bridge"),
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Join(p) => write!(f, "ns:{}", p.display()),
        }
    }
}

impl FromStr for NetworkMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bridge" | "default" => Ok(NetworkMode::Bridge),
            "none" => Ok(NetworkMode::None),
            _ => match s.strip_prefix("ns:") {
                Some(p) if p.starts_with('/') => Ok(NetworkMode::Join(PathBuf::from(p))),
                Some(_) => Err(format!(
                    "--network {s:?}: ns: needs an absolute path to a network namespace file \
                     (ns:/run/netns/NAME)"
                )),
                None => Err(format!(
                    "--network {s:?}: expected bridge, none or ns:/path/to/netns"
                )),
            },
        }
    }
}

/// Where veil's bridge network lives; every field can be changed with an
/// environment variable so that parallel users (and tests) do not collide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSettings {
    /// The CNI network name (`VEIL_NET_NAME`, default `veil`).
    pub name: String,
    /// The host bridge (`VEIL_NET_BRIDGE`, default `veil0`).
    pub bridge: String,
    /// The pod subnet (`VEIL_NET_SUBNET`, default `10.209.0.0/16`: not
    /// CNI's and podman's `10.88.0.0/16`, nor docker's `172.17.0.0/16`).
    pub subnet: String,
    /// Where the CNI plugin binaries are (`VEIL_CNI_PATH`, default Debian's
    /// `/usr/lib/cni`, then `/opt/cni/bin`).
    pub cni_path: Vec<PathBuf>,
    /// host-local IPAM state (`VEIL_NET_IPAM_DIR`, default
    /// `<data>/net/ipam`).
    pub ipam_dir: PathBuf,
}

impl NetSettings {
    /// The settings for veil's data dir `data`, from the environment.
    pub fn from_env(data: &Path) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        NetSettings {
            name: var("VEIL_NET_NAME").unwrap_or_else(|| "veil".into()),
            bridge: var("VEIL_NET_BRIDGE").unwrap_or_else(|| "veil0".into()),
            subnet: var("VEIL_NET_SUBNET").unwrap_or_else(|| "10.209.0.0/16".into()),
            cni_path: var("VEIL_CNI_PATH")
                .map(|p| std::env::split_paths(&p).collect())
                .unwrap_or_else(|| vec!["/usr/lib/cni".into(), "/opt/cni/bin".into()]),
            ipam_dir: var("VEIL_NET_IPAM_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| data.join("net").join("ipam")),
        }
    }
}

/// Why pod networking failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// A CNI plugin failed.
    #[error(transparent)]
    Cni(#[from] CniError),
    /// Something else, said in full.
    #[error("{0}")]
    Other(String),
}

/// What exists of a sandbox's network, as written before each step.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NetState {
    /// `bridge`, `none` or `ns:PATH`.
    pub mode: String,
    /// The namespace's file.
    pub netns: PathBuf,
    /// The `ip netns` name veil created (empty for a joined namespace).
    #[serde(default)]
    pub netns_name: String,
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// Networks added (or being added), in order: each with its config and
    /// result, so that DEL gets what ADD returned.
    #[serde(default)]
    pub attachments: Vec<cni::Attachment>,
    /// The pod's address on the bridge (`10.209.0.5/16`), if any.
    #[serde(default)]
    pub address: String,
    /// The gateway (the bridge's address), if any.
    #[serde(default)]
    pub gateway: String,
    /// Published ports.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// A VM joined to the namespace: the tap and `tc` mirroring veil made
    /// there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm_tap: Option<tap::TapMirror>,
}

/// A sandbox's network namespace, configured. Dropping it tears it down.
#[derive(Debug)]
pub struct PodNetwork {
    state: NetState,
    state_file: PathBuf,
    cni_path: Vec<PathBuf>,
    torn_down: bool,
}

impl PodNetwork {
    /// Create and configure the network of sandbox `id` (`[a-z0-9]`),
    /// recording each step in `state_file` first.
    pub fn setup(
        settings: &NetSettings,
        id: &str,
        mode: &NetworkMode,
        ports: &[PortMapping],
        state_file: &Path,
    ) -> Result<Self, NetError> {
        if !id.bytes().all(|b| b.is_ascii_alphanumeric()) || id.is_empty() || id.len() > 32 {
            return Err(NetError::Other(format!(
                "sandbox id {id:?} is not 1-32 letters and digits"
            )));
        }
        if !ports.is_empty() && *mode != NetworkMode::Bridge {
            return Err(NetError::Other(format!(
                "-p publishes ports through the bridge network; --network {mode} has none \
                 (drop -p, or use --network bridge)"
            )));
        }
        let mut net = PodNetwork {
            state: NetState {
                mode: mode.to_string(),
                container_id: format!("veil-{id}"),
                ports: ports.to_vec(),
                ..NetState::default()
            },
            state_file: state_file.to_path_buf(),
            cni_path: settings.cni_path.clone(),
            torn_down: false,
        };
        if let NetworkMode::Join(p) = mode {
            let meta = std::fs::metadata(p).map_err(|e| {
                NetError::Other(format!(
                    "--network ns:{}: cannot use it as a network namespace: {e}",
                    p.display()
                ))
            })?;
            if meta.is_dir() {
                return Err(NetError::Other(format!(
                    "--network ns:{}: is a directory, not a network namespace file",
                    p.display()
                )));
            }
            net.state.netns = p.clone();
            net.save()?;
            return Ok(net);
        }
        let name = format!("veil-{id}");
        net.state.netns_name = name.clone();
        net.state.netns = PathBuf::from("/run/netns").join(&name);
        net.save()?;
        ip(&["netns", "add", &name])?;
        // The loopback plugin, as containerd adds it to every pod.
        let lo = cni::Attachment::new(
            "lo",
            serde_json::json!({
                "cniVersion": cni::VERSION,
                "name": "veil-loopback",
                "plugins": [{"type": "loopback"}],
            }),
            serde_json::Value::Null,
        );
        net.add(lo)?;
        if *mode == NetworkMode::Bridge {
            let conflist = bridge_conflist(settings);
            let runtime = serde_json::json!({
                "portMappings": ports.iter().map(PortMapping::to_cni).collect::<Vec<_>>(),
            });
            net.add(cni::Attachment::new("eth0", conflist, runtime))?;
            if let Some(r) = net.state.attachments.last().and_then(|a| a.result.as_ref()) {
                if let Some((addr, gw)) = cni::first_ipv4(r) {
                    net.state.address = addr;
                    net.state.gateway = gw;
                }
            }
            net.save()?;
        }
        Ok(net)
    }

    /// Join the namespace `netns` someone else made for VM sandbox `id`:
    /// a tap there mirrored to its interface ([`tap::setup`]), each step
    /// recorded in `state_file` first. The tap's descriptor (for QEMU) and
    /// the interface's configuration (for the agent) come back with the
    /// guard that undoes it.
    pub fn join_vm(
        settings: &NetSettings,
        id: &str,
        netns: &Path,
        state_file: &Path,
    ) -> Result<(Self, tap::JoinedTap), NetError> {
        let mut net = PodNetwork {
            state: NetState {
                mode: NetworkMode::Join(netns.to_path_buf()).to_string(),
                netns: netns.to_path_buf(),
                container_id: format!("veil-{id}"),
                ..NetState::default()
            },
            state_file: state_file.to_path_buf(),
            cni_path: settings.cni_path.clone(),
            torn_down: false,
        };
        let mut state = net.state.clone();
        let (joined, mirror) = tap::setup(netns, &mut |m| {
            state.vm_tap = Some(m.clone());
            save_state(state_file, &state)
        })
        .inspect_err(|_| {
            // setup undid what it made.
            let _ = std::fs::remove_file(state_file);
        })?;
        net.state = state;
        net.state.vm_tap = Some(mirror);
        net.state.address = joined.nic.addresses.first().cloned().unwrap_or_default();
        net.state.gateway = joined
            .nic
            .routes
            .iter()
            .find(|r| r.dst == "0.0.0.0/0")
            .and_then(|r| r.gateway.clone())
            .unwrap_or_default();
        net.save()?;
        Ok((net, joined))
    }

    fn add(&mut self, att: cni::Attachment) -> Result<(), NetError> {
        self.state.attachments.push(att);
        self.save()?;
        let i = self.state.attachments.len() - 1;
        let result = cni::add(
            &self.cni_path,
            &self.state.container_id,
            &self.state.netns,
            &self.state.attachments[i],
        )?;
        self.state.attachments[i].result = Some(result);
        self.save()
    }

    fn save(&self) -> Result<(), NetError> {
        save_state(&self.state_file, &self.state)
    }

    /// What exists.
    pub fn state(&self) -> &NetState {
        &self.state
    }

    /// The network namespace file containers join.
    pub fn netns(&self) -> &Path {
        &self.state.netns
    }

    /// Undo everything (idempotent); the state file is removed when all of
    /// it is gone.
    pub fn teardown(&mut self) -> Result<(), NetError> {
        if self.torn_down {
            return Ok(());
        }
        teardown(&self.state, &self.cni_path)?;
        self.torn_down = true;
        let _ = std::fs::remove_file(&self.state_file);
        Ok(())
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if let Err(e) = self.teardown() {
            tracing::warn!(
                "tearing down the pod network: {e}; left for the next veil command (state in {})",
                self.state_file.display()
            );
        }
    }
}

fn save_state(path: &Path, state: &NetState) -> Result<(), NetError> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec_pretty(state).map_err(|e| NetError::Other(e.to_string()))?;
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| NetError::Other(format!("writing {}: {e}", path.display())))
}

/// The bridge network: containerd's default conflist with veil's names.
pub fn bridge_conflist(s: &NetSettings) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": cni::VERSION,
        "name": s.name,
        "plugins": [
            {
                "type": "bridge",
                "bridge": s.bridge,
                "isGateway": true,
                "ipMasq": true,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": s.subnet}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": s.ipam_dir,
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true},
        ],
    })
}

/// Undo what `state` says exists: CNI DEL of every attachment (last first,
/// each plugin of a list in reverse), then the namespace veil created.
/// Every step is tried; the first failure is returned.
pub fn teardown(state: &NetState, cni_path: &[PathBuf]) -> Result<(), NetError> {
    let mut first: Option<NetError> = None;
    if let Some(m) = &state.vm_tap {
        if let Err(e) = tap::teardown(m) {
            first.get_or_insert(e);
        }
    }
    for att in state.attachments.iter().rev() {
        if let Err(e) = cni::del(cni_path, &state.container_id, &state.netns, att) {
            first.get_or_insert(e.into());
        }
    }
    if !state.netns_name.is_empty() && state.netns.exists() {
        if let Err(e) = ip(&["netns", "delete", &state.netns_name]) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

/// Tear down the network a state file describes (another process's: a
/// `veil run` that was killed) and remove the file. Absent file: nothing
/// to do.
pub fn teardown_state_file(path: &Path, cni_path: &[PathBuf]) -> Result<bool, NetError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(NetError::Other(format!("reading {}: {e}", path.display()))),
    };
    let state: NetState = serde_json::from_slice(&bytes)
        .map_err(|e| NetError::Other(format!("{}: {e}", path.display())))?;
    teardown(&state, cni_path)?;
    let _ = std::fs::remove_file(path);
    Ok(true)
}

fn ip(args: &[&str]) -> Result<(), NetError> {
    let out = Command::new("ip").args(args).output().map_err(|e| {
        NetError::Other(format!(
            "running ip {}: {e} (install iproute2)",
            args.join(" ")
        ))
    })?;
    if !out.status.success() {
        return Err(NetError::Other(format!(
            "ip {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        assert_eq!("bridge".parse::<NetworkMode>(), Ok(NetworkMode::Bridge));
        assert_eq!("none".parse::<NetworkMode>(), Ok(NetworkMode::None));
        let j: NetworkMode = "ns:/run/netns/x".parse().unwrap();
        assert_eq!(j.to_string(), "ns:/run/netns/x");
        assert!("ns:relative".parse::<NetworkMode>().is_err());
        assert!(
            "host"
                .parse::<NetworkMode>()
                .unwrap_err()
                .contains("bridge, none")
        );
    }
}
