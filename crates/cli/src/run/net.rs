//! `veil run --network MODE -p …`: the pod network of a sandbox (see
//! `veil_runtime::net` and docs/network.md), and reaping the networks of
//! `veil run`s that were killed before they could tear theirs down.

use std::path::Path;

use anyhow::{Result, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use veil_runtime::net::{NetworkMode, PortMapping};
use veil_runtime::pod;
use veil_runtime::vm::qemu::WorkloadNet;

use super::record;

/// Networking flags of `veil run`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct NetArgs {
    /// The pod's network: `bridge` (an address on veil's host bridge,
    /// outbound NAT; the default as root), `none` (loopback only; the
    /// default without root), or `ns:/path/to/netns` (join a network
    /// namespace someone else made).
    #[arg(long = "network", value_name = "MODE", env = "VEIL_NETWORK")]
    #[serde(default)]
    pub network: Option<String>,
    /// Publish a container port: `[HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`
    /// (repeatable).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/PROTO]"
    )]
    #[serde(default)]
    pub publish: Vec<String>,
}

impl NetArgs {
    /// The mode asked for, or the default for this user.
    pub fn mode(&self) -> Result<NetworkMode> {
        match &self.network {
            Some(m) => m.parse().map_err(|e: String| anyhow!(e)),
            None if nix::unistd::geteuid().is_root() => Ok(NetworkMode::Bridge),
            None => Ok(NetworkMode::None),
        }
    }

    /// Refuse what cannot be honoured, before anything starts.
    pub fn check(&self, vm: bool) -> Result<()> {
        if vm {
            return self.vm_network().map(|_| ());
        }
        let mode = self.mode()?;
        let ports = self.ports()?;
        if let Some(p) = ports.first()
            && mode != NetworkMode::Bridge
        {
            bail!(
                "-p {p}: ports are published through the bridge network, and --network {mode} \
                 has none; drop -p, or use --network bridge"
            );
        }
        Ok(())
    }

    /// The VM sandbox's pod network: [`Self::vm_workload`], or
    /// `ns:/path/to/netns` (the guest's NIC joined to a namespace someone
    /// else made, through a tap there; root).
    pub fn vm_network(&self) -> Result<pod::PodNet> {
        if let Some(m) = self.network.as_deref().filter(|m| m.starts_with("ns:")) {
            let NetworkMode::Join(path) = m.parse().map_err(|e: String| anyhow!(e))? else {
                bail!("--network {m}: expected ns:/path/to/netns");
            };
            if let Some(p) = self.ports()?.first() {
                bail!(
                    "-p {p}: with --network {m} the namespace's owner publishes ports (CNI's \
                     portmap, for instance), not veil; drop -p"
                );
            }
            return Ok(pod::PodNet::VmJoin(path));
        }
        self.vm_workload().map(pod::PodNet::Vm)
    }

    /// The VM sandbox's pod NIC: `user` (the default: QEMU user-mode
    /// networking, outbound NAT, `-p` as forwards; no root needed) or
    /// `none` (loopback only, `None`).
    pub fn vm_workload(&self) -> Result<Option<WorkloadNet>> {
        let ports = self.ports()?;
        if let Some(p) = ports
            .iter()
            .find(|p| p.host_ip.is_some_and(|ip| ip.is_ipv6()))
        {
            bail!(
                "-p {p}: the VM sandbox publishes ports on IPv4 host addresses only; use \
                 127.0.0.1 or 0.0.0.0"
            );
        }
        match self.network.as_deref() {
            None | Some("user") => Ok(Some(WorkloadNet {
                ports,
                tap_fd: None,
            })),
            Some("none") => match ports.first() {
                Some(p) => bail!(
                    "-p {p}: --network none gives the pod loopback only, so nothing can be \
                     published; drop -p, or drop --network none"
                ),
                None => Ok(None),
            },
            Some(m) => bail!(
                "--network {m}: the VM sandbox's pods have `user` (the default: their own NIC \
                 on QEMU's user-mode network, outbound NAT, -p published there), `none` \
                 (loopback only) or ns:/path/to/netns (a namespace someone else made); bridge \
                 is for --sandbox process"
            ),
        }
    }

    /// The published ports.
    pub fn ports(&self) -> Result<Vec<PortMapping>> {
        let ports: Vec<PortMapping> = self
            .publish
            .iter()
            .map(|p| p.parse().map_err(|e: String| anyhow!(e)))
            .collect::<Result<_>>()?;
        for (i, p) in ports.iter().enumerate() {
            if let Some(q) = ports[..i].iter().find(|q| {
                q.host_port == p.host_port && q.protocol == p.protocol && q.host_ip == p.host_ip
            }) {
                bail!("-p {p} and -p {q} publish the same host port");
            }
            if let Some(q) = ports[..i]
                .iter()
                .find(|q| q.container_port == p.container_port && q.protocol == p.protocol)
            {
                bail!(
                    "-p {p} and -p {q} publish the same container port; a policy pins one host \
                     port per container port: keep one of them"
                );
            }
        }
        Ok(ports)
    }
}

impl NetArgs {
    /// The pod YAML lines of the container (under `- name: app`) that make
    /// a generated policy pin the published ports: each `-p` becomes a
    /// `containerPort` with its `protocol` and `hostPort`.
    pub fn pod_yaml(&self) -> Result<String> {
        let ports = self.ports()?;
        if ports.is_empty() {
            return Ok(String::new());
        }
        let mut y = String::from("    ports:\n");
        for p in ports {
            y.push_str(&format!(
                "    - containerPort: {}\n      protocol: {}\n      hostPort: {}\n",
                p.container_port,
                p.protocol.to_string().to_uppercase(),
                p.host_port
            ));
        }
        Ok(y)
    }
}

/// Tear down the networks that killed `veil run`s left behind (their
/// owner is gone, the state file is still there), and remove their VM
/// scratch disks. Run by every command that lists or removes sandboxes,
/// and by `veil run`.
pub fn reap(data: &Path) {
    let dead = |id: &str| {
        record::Record::load(data, id).is_ok_and(|r| r.owner_pid != 0 && !r.owner_alive())
    };
    for id in veil_runtime::vm::reap_scratch(&record::run_root(data), |id| !dead(id)) {
        eprintln!("veil: removed the scratch disk of the VM sandbox {id} (its owner was killed)");
    }
    for (id, r) in pod::reap_networks(data) {
        match r {
            Ok(true) => eprintln!(
                "veil: removed the pod network sandbox {id} left behind (its owner was killed)"
            ),
            Ok(false) => {}
            Err(e) => eprintln!(
                "veil: warning: could not remove the network sandbox {id} left behind: {e} \
                 (state in {})",
                veil_kbs::text::escape_controls(
                    &record::dir_of(data, &id)
                        .join(pod::NET_STATE_FILE)
                        .display()
                        .to_string()
                )
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(network: &str, publish: &[&str]) -> NetArgs {
        NetArgs {
            network: Some(network.into()),
            publish: publish.iter().map(|p| p.to_string()).collect(),
        }
    }

    #[test]
    fn the_vm_sandbox_joins_a_netns_without_publishing_and_refuses_bridge() {
        assert_eq!(
            args("ns:/run/netns/cni-1", &[]).vm_network().unwrap(),
            pod::PodNet::VmJoin("/run/netns/cni-1".into())
        );
        let e = args("ns:/run/netns/cni-1", &["8080:80"])
            .vm_network()
            .unwrap_err()
            .to_string();
        assert!(e.contains("the namespace's owner publishes ports"), "{e}");
        let e = args("ns:relative", &[])
            .vm_network()
            .unwrap_err()
            .to_string();
        assert!(e.contains("absolute path"), "{e}");
        let e = args("bridge", &[]).vm_network().unwrap_err().to_string();
        assert!(e.contains("bridge is for --sandbox process"), "{e}");
        assert_eq!(
            args("none", &[]).vm_network().unwrap(),
            pod::PodNet::Vm(None)
        );
    }
}
