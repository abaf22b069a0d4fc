//! Published ports: `-p [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use veil_agent_api::ContainerPort;
use veil_policy::model::{ContainerPolicy, PolicyData};

/// `tcp` or `udp` (the agent API's type: the guest is told the same).
pub use veil_agent_api::PortProtocol as Protocol;

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    /// The host address it listens on (all addresses when absent).
    #[serde(default)]
    pub host_ip: Option<IpAddr>,
    /// The host port.
    pub host_port: u16,
    /// The port inside the pod.
    pub container_port: u16,
    /// The protocol.
    pub protocol: Protocol,
}

impl PortMapping {
    /// The CNI `portMappings` entry.
    pub fn to_cni(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "hostPort": self.host_port,
            "containerPort": self.container_port,
            "protocol": self.protocol.to_string(),
        });
        if let Some(ip) = self.host_ip {
            v["hostIP"] = ip.to_string().into();
        }
        v
    }
}

impl fmt::Display for PortMapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host_ip {
            Some(IpAddr::V6(ip)) => write!(f, "[{ip}]:")?,
            Some(ip) => write!(f, "{ip}:")?,
            None => {}
        }
        write!(
            f,
            "{}:{}/{}",
            self.host_port, self.container_port, self.protocol
        )
    }
}

impl FromStr for PortMapping {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| {
            format!("-p {s:?}: {why}; expected [HOSTIP:]HOSTPORT:CONTAINERPORT[/tcp|udp]")
        };
        let (rest, protocol) = match s.rsplit_once('/') {
            Some((r, "tcp")) => (r, Protocol::Tcp),
            Some((r, "udp")) => (r, Protocol::Udp),
            Some((_, p)) => return Err(bad(&format!("protocol {p:?} is not tcp or udp"))),
            None => (s, Protocol::Tcp),
        };
        let (host_ip, ports) = if let Some(r) = rest.strip_prefix('[') {
            let (ip, after) = r.split_once("]:").ok_or_else(|| bad("unclosed [IPv6]"))?;
            (Some(ip), after)
        } else {
            match rest.matches(':').count() {
                1 => (None, rest),
                2 => {
                    let (ip, p) = rest.split_once(':').unwrap_or_default();
                    (Some(ip), p)
                }
                _ => return Err(bad("wrong number of ':'")),
            }
        };
        let host_ip = match host_ip {
            None | Some("") => None,
            Some(ip) => Some(
                ip.parse::<IpAddr>()
                    .map_err(|_| bad(&format!("{ip:?} is not an IP address")))?,
            ),
        };
        let (h, c) = ports.split_once(':').ok_or_else(|| bad("missing ':'"))?;
        let port = |p: &str, what: &str| {
            p.parse::<u16>()
                .ok()
                .filter(|n| *n != 0)
                .ok_or_else(|| bad(&format!("{what} {p:?} is not a port 1-65535")))
        };
        Ok(PortMapping {
            host_ip,
            host_port: port(h, "host port")?,
            container_port: port(c, "container port")?,
            protocol,
        })
    }
}

/// The container of the policy a published port goes to: the one that
/// declares its container port and protocol, else the first app (not
/// init) container, whose agent then refuses it unless its policy allows
/// it (a single-image run has one container).
pub fn owner_of<'a>(policy: &'a PolicyData, m: &PortMapping) -> Option<&'a str> {
    let declares = |c: &&ContainerPolicy| {
        c.ports
            .iter()
            .any(|r| r.container_port == m.container_port && r.protocol == m.protocol.to_string())
    };
    policy
        .containers
        .iter()
        .find(declares)
        .or_else(|| policy.containers.iter().find(|c| !c.init))
        .map(|c| c.name.as_str())
}

/// The `ports` of `c`'s `create_container`: every port its policy declares,
/// with the host port and address of the mapping that publishes it (0
/// when none does), and the mappings [`owner_of`] gives it that its policy
/// does not declare, so that the agent sees, and decides on, everything
/// the host publishes into the pod.
pub fn request_ports(
    policy: &PolicyData,
    c: &ContainerPolicy,
    published: &[PortMapping],
) -> Vec<ContainerPort> {
    let mut out: Vec<ContainerPort> = c
        .ports
        .iter()
        .map(|r| ContainerPort {
            container_port: r.container_port,
            protocol: if r.protocol == "udp" {
                Protocol::Udp
            } else {
                Protocol::Tcp
            },
            host_port: 0,
            host_ip: String::new(),
        })
        .collect();
    for m in published {
        if owner_of(policy, m) != Some(c.name.as_str()) {
            continue;
        }
        let host_ip = m.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
        match out.iter_mut().find(|p| {
            p.container_port == m.container_port && p.protocol == m.protocol && p.host_port == 0
        }) {
            Some(p) => {
                p.host_port = m.host_port;
                p.host_ip = host_ip;
            }
            None => out.push(ContainerPort {
                container_port: m.container_port,
                protocol: m.protocol,
                host_port: m.host_port,
                host_ip,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn docker_forms_parse() {
        let m: PortMapping = "127.0.0.1:16379:6379".parse().unwrap();
        assert_eq!(m.host_ip, Some("127.0.0.1".parse().unwrap()));
        assert_eq!((m.host_port, m.container_port), (16379, 6379));
        assert_eq!(m.protocol, Protocol::Tcp);
        assert_eq!(m.to_string(), "127.0.0.1:16379:6379/tcp");
        let m: PortMapping = "8080:80/udp".parse().unwrap();
        assert_eq!((m.host_ip, m.protocol), (None, Protocol::Udp));
        let m: PortMapping = "[::1]:8080:80".parse().unwrap();
        assert_eq!(m.to_string(), "[::1]:8080:80/tcp");
        assert_eq!(
            m.to_cni(),
            serde_json::json!({"hostPort":8080,"containerPort":80,"protocol":"tcp","hostIP":"::1"})
        );
        for bad in [
            "80",
            "0:80",
            "80:0",
            "a:80",
            "1.2.3:80:80",
            "80:80/sctp",
            "1:2:3:4",
        ] {
            assert!(bad.parse::<PortMapping>().is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn any_text_parses_or_is_refused_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(m) = s.parse::<PortMapping>() {
                prop_assert_eq!(m.to_string().parse::<PortMapping>(), Ok(m));
            }
        }
    }
}
