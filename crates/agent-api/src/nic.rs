//! The VM sandbox's pod NIC when it is joined to a network namespace the
//! host was handed (the containerd shim's case: CNI made the namespace, its
//! interface, address and routes). The host reads that interface's MAC,
//! MTU, IPv4 addresses and routes, and hands them to the agent in
//! `create_sandbox` ([`crate::CreateSandboxRequest::workload_nic`]); the
//! agent gives its own NIC the same, so that the traffic the host mirrors
//! between the namespace's interface and the VM's tap is addressed to the
//! guest.
//!
//! The host is the adversary: [`WorkloadNic::check`] is what the agent runs
//! before it touches its NIC. It refuses what no CNI plugin hands out and
//! what would make the guest's network stack do something other than "one
//! unicast interface with these addresses and routes": multicast,
//! broadcast, zero, loopback or reserved addresses, prefix lengths out of
//! range, a route destination with host bits set, a gateway that is not
//! on-link, duplicates, and more entries than any pod has. Each refusal
//! names the field, the value and what was expected.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Most IPv4 addresses the pod NIC may be given.
pub const MAX_ADDRESSES: usize = 8;
/// Most routes the pod NIC may be given.
pub const MAX_ROUTES: usize = 64;
/// Smallest MTU (IPv4's minimum, RFC 791).
pub const MIN_MTU: u32 = 68;
/// Largest MTU.
pub const MAX_MTU: u32 = 65535;
/// Longest text of one field (a CIDR or a MAC is much shorter).
const MAX_FIELD_BYTES: usize = 64;

/// The pod NIC's configuration, as the host read it from the namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadNic {
    /// The namespace interface's MAC (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    pub mtu: u32,
    /// IPv4 addresses with prefix length (`10.88.0.5/16`), the first one
    /// primary.
    pub addresses: Vec<String>,
    /// Routes through the NIC, in order (an on-link route a gateway needs
    /// comes before the route through that gateway).
    #[serde(default)]
    pub routes: Vec<WorkloadRoute>,
}

/// One route of the pod NIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadRoute {
    /// Destination with prefix length (`0.0.0.0/0` for the default route).
    pub dst: String,
    /// Next hop; `None`: the destination is on-link.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<String>,
}

/// An IPv4 address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Cidr {
    /// The netmask of the prefix.
    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask(self.prefix))
    }

    /// Whether `ip` is inside this prefix.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.addr) & mask(self.prefix)
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A checked route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    pub dst: Cidr,
    pub gateway: Option<Ipv4Addr>,
}

/// A checked [`WorkloadNic`]: what the agent configures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NicConfig {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<Cidr>,
    pub routes: Vec<Route>,
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    }
}

/// Parse `aa:bb:cc:dd:ee:ff` (hex, either case).
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address (six hex octets separated by ':')");
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for o in &mut out {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *o = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    Ok(out)
}

/// Parse `A.B.C.D/N` (N in 0..=32; no leading zeros, no spaces).
pub fn parse_cidr(s: &str) -> Result<Cidr, String> {
    let (a, p) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?} is not ADDRESS/PREFIX (e.g. 10.88.0.5/16)"))?;
    let addr = parse_ipv4(a)?;
    let prefix: u8 = (!p.is_empty()
        && p.len() <= 2
        && p.bytes().all(|b| b.is_ascii_digit())
        && !(p.len() > 1 && p.starts_with('0')))
    .then(|| p.parse().ok())
    .flatten()
    .filter(|n| *n <= 32)
    .ok_or_else(|| format!("{s:?}: prefix length {p:?} is not a number in 0..=32"))?;
    Ok(Cidr { addr, prefix })
}

/// Parse a dotted-quad IPv4 address.
pub fn parse_ipv4(s: &str) -> Result<Ipv4Addr, String> {
    s.parse::<Ipv4Addr>()
        .map_err(|_| format!("{s:?} is not an IPv4 address (dotted quad)"))
}

/// Why `ip` cannot be a unicast host address, if it cannot.
fn not_unicast(ip: Ipv4Addr) -> Option<&'static str> {
    if ip.is_unspecified() || ip.octets()[0] == 0 {
        Some("in 0.0.0.0/8 (\"this network\")")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address (224.0.0.0/4)")
    } else if ip.is_loopback() {
        Some("a loopback address (127.0.0.0/8)")
    } else if ip.octets()[0] >= 240 {
        Some("a reserved address (240.0.0.0/4)")
    } else {
        None
    }
}

fn field_text(field: &str, s: &str) -> Result<(), String> {
    if s.len() > MAX_FIELD_BYTES {
        return Err(format!(
            "{field}: {} bytes, at most {MAX_FIELD_BYTES} expected",
            s.len()
        ));
    }
    Ok(())
}

impl WorkloadNic {
    /// Check every field (see the module doc); the checked configuration,
    /// or a refusal naming the field, its value and what was expected.
    pub fn check(&self) -> Result<NicConfig, String> {
        field_text("mac", &self.mac)?;
        let mac = parse_mac(&self.mac).map_err(|e| format!("mac: {e}"))?;
        if mac[0] & 1 == 1 {
            return Err(format!(
                "mac: {} is a multicast (group) address; a NIC needs a unicast one (lowest bit \
                 of the first octet clear)",
                self.mac
            ));
        }
        if mac == [0; 6] {
            return Err("mac: 00:00:00:00:00:00 is not an interface address".into());
        }
        if !(MIN_MTU..=MAX_MTU).contains(&self.mtu) {
            return Err(format!("mtu: {} is not in {MIN_MTU}..={MAX_MTU}", self.mtu));
        }
        if self.addresses.is_empty() || self.addresses.len() > MAX_ADDRESSES {
            return Err(format!(
                "addresses: {} given, 1 to {MAX_ADDRESSES} expected (the IPv4 addresses of the \
                 namespace's interface)",
                self.addresses.len()
            ));
        }
        let mut addresses: Vec<Cidr> = Vec::with_capacity(self.addresses.len());
        for (i, a) in self.addresses.iter().enumerate() {
            let field = format!("addresses[{i}]");
            field_text(&field, a)?;
            let c = parse_cidr(a).map_err(|e| format!("{field}: {e}"))?;
            if let Some(why) = not_unicast(c.addr) {
                return Err(format!(
                    "{field}: {a}: {} is {why}; the pod needs a unicast address",
                    c.addr
                ));
            }
            if c.prefix == 0 {
                return Err(format!(
                    "{field}: {a}: prefix length 0 (the whole IPv4 space on one link); \
                     1..=32 expected"
                ));
            }
            if c.prefix <= 30 {
                let host = u32::from(c.addr) & !mask(c.prefix);
                if host == 0 || host == !mask(c.prefix) {
                    return Err(format!(
                        "{field}: {a}: {} is the {} address of its subnet, not a host address",
                        c.addr,
                        if host == 0 { "network" } else { "broadcast" }
                    ));
                }
            }
            if let Some(j) = addresses.iter().position(|o| o.addr == c.addr) {
                return Err(format!("{field}: {a}: the same address as addresses[{j}]"));
            }
            addresses.push(c);
        }
        if self.routes.len() > MAX_ROUTES {
            return Err(format!(
                "routes: {} given, at most {MAX_ROUTES} expected",
                self.routes.len()
            ));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(self.routes.len());
        for (i, r) in self.routes.iter().enumerate() {
            let field = format!("routes[{i}]");
            field_text(&format!("{field}.dst"), &r.dst)?;
            let dst = parse_cidr(&r.dst).map_err(|e| format!("{field}.dst: {e}"))?;
            if u32::from(dst.addr) & !mask(dst.prefix) != 0 {
                return Err(format!(
                    "{field}.dst: {}: host bits are set beyond the /{} prefix (expected {}/{})",
                    r.dst,
                    dst.prefix,
                    Ipv4Addr::from(u32::from(dst.addr) & mask(dst.prefix)),
                    dst.prefix
                ));
            }
            if dst.addr.is_multicast() || dst.addr.is_loopback() || dst.addr.octets()[0] >= 240 {
                return Err(format!(
                    "{field}.dst: {}: a multicast, loopback or reserved destination; the pod \
                     routes unicast destinations only",
                    r.dst
                ));
            }
            let gateway = match &r.gateway {
                None => None,
                Some(g) => {
                    field_text(&format!("{field}.gateway"), g)?;
                    let gw = parse_ipv4(g).map_err(|e| format!("{field}.gateway: {e}"))?;
                    if let Some(why) = not_unicast(gw) {
                        return Err(format!("{field}.gateway: {g} is {why}"));
                    }
                    if let Some(a) = addresses.iter().find(|a| a.addr == gw) {
                        return Err(format!(
                            "{field}.gateway: {g} is the pod's own address ({a})"
                        ));
                    }
                    let on_link = addresses.iter().any(|a| a.contains(gw))
                        || routes
                            .iter()
                            .any(|o| o.gateway.is_none() && o.dst.contains(gw));
                    if !on_link {
                        let subnets: Vec<String> = addresses
                            .iter()
                            .map(|a| {
                                let net = u32::from(a.addr) & mask(a.prefix);
                                format!("{}/{}", Ipv4Addr::from(net), a.prefix)
                            })
                            .collect();
                        return Err(format!(
                            "{field}.gateway: {g} is not on-link: outside the pod's subnets \
                             ({}) and not covered by an earlier route without a gateway",
                            subnets.join(", ")
                        ));
                    }
                    Some(gw)
                }
            };
            if let Some(j) = routes.iter().position(|o| o.dst == dst) {
                return Err(format!(
                    "{field}: a second route to {} (routes[{j}] has it)",
                    r.dst
                ));
            }
            routes.push(Route { dst, gateway });
        }
        Ok(NicConfig {
            mac,
            mtu: self.mtu,
            addresses,
            routes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn nic() -> WorkloadNic {
        WorkloadNic {
            mac: "0a:58:0a:58:00:05".into(),
            mtu: 1500,
            addresses: vec!["10.88.0.5/16".into()],
            routes: vec![WorkloadRoute {
                dst: "0.0.0.0/0".into(),
                gateway: Some("10.88.0.1".into()),
            }],
        }
    }

    fn refused(f: impl FnOnce(&mut WorkloadNic)) -> String {
        let mut n = nic();
        f(&mut n);
        n.check().unwrap_err()
    }

    #[test]
    fn a_cni_bridge_configuration_is_accepted() {
        let c = nic().check().unwrap();
        assert_eq!(c.mac, [0x0a, 0x58, 0x0a, 0x58, 0, 5]);
        assert_eq!(c.addresses[0].to_string(), "10.88.0.5/16");
        assert_eq!(c.addresses[0].netmask(), Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(c.routes[0].gateway, Some(Ipv4Addr::new(10, 88, 0, 1)));
    }

    #[test]
    fn calico_style_link_local_gateway_is_on_link_through_an_earlier_route() {
        let mut n = nic();
        n.addresses = vec!["192.168.7.9/32".into()];
        n.routes = vec![
            WorkloadRoute {
                dst: "169.254.1.1/32".into(),
                gateway: None,
            },
            WorkloadRoute {
                dst: "0.0.0.0/0".into(),
                gateway: Some("169.254.1.1".into()),
            },
        ];
        n.check().unwrap();
        // The same gateway without the on-link route first is refused.
        n.routes.swap(0, 1);
        let e = n.check().unwrap_err();
        assert!(
            e.contains("routes[0].gateway: 169.254.1.1 is not on-link"),
            "{e}"
        );
    }

    #[test]
    fn nonsense_is_refused_naming_field_and_value() {
        type Case = (Box<dyn FnOnce(&mut WorkloadNic)>, &'static str);
        let cases: Vec<Case> = vec![
            (
                Box::new(|n| n.mac = "01:00:5e:00:00:01".into()),
                "mac: 01:00:5e:00:00:01 is a multicast",
            ),
            (
                Box::new(|n| n.mac = "00:00:00:00:00:00".into()),
                "mac: 00:00:00:00:00:00",
            ),
            (
                Box::new(|n| n.mac = "0a:58:0a:58:00".into()),
                "is not a MAC address",
            ),
            (Box::new(|n| n.mtu = 20), "mtu: 20 is not in 68..=65535"),
            (Box::new(|n| n.addresses = vec![]), "addresses: 0 given"),
            (
                Box::new(|n| n.addresses = vec!["224.0.0.5/24".into()]),
                "addresses[0]: 224.0.0.5/24: 224.0.0.5 is a multicast",
            ),
            (
                Box::new(|n| n.addresses = vec!["0.0.0.0/8".into()]),
                "is in 0.0.0.0/8",
            ),
            (
                Box::new(|n| n.addresses = vec!["255.255.255.255/32".into()]),
                "the broadcast address",
            ),
            (
                Box::new(|n| n.addresses = vec!["127.0.0.2/8".into()]),
                "loopback",
            ),
            (
                Box::new(|n| n.addresses = vec!["10.88.0.5/33".into()]),
                "prefix length \"33\" is not a number in 0..=32",
            ),
            (
                Box::new(|n| n.addresses = vec!["10.88.0.5/0".into()]),
                "prefix length 0",
            ),
            (
                Box::new(|n| n.addresses = vec!["10.88.0.0/16".into()]),
                "is the network address",
            ),
            (
                Box::new(|n| n.addresses = vec!["10.88.255.255/16".into()]),
                "is the broadcast address of its subnet",
            ),
            (
                Box::new(|n| n.addresses = vec!["10.88.0.5/16".into(), "10.88.0.5/24".into()]),
                "the same address as addresses[0]",
            ),
            (
                Box::new(|n| n.routes[0].gateway = Some("10.99.0.1".into())),
                "routes[0].gateway: 10.99.0.1 is not on-link: outside the pod's subnets (10.88.0.0/16)",
            ),
            (
                Box::new(|n| n.routes[0].gateway = Some("10.88.0.5".into())),
                "the pod's own address",
            ),
            (
                Box::new(|n| n.routes[0].gateway = Some("224.1.1.1".into())),
                "multicast",
            ),
            (
                Box::new(|n| n.routes[0].dst = "10.1.2.3/8".into()),
                "host bits are set beyond the /8 prefix (expected 10.0.0.0/8)",
            ),
            (
                Box::new(|n| n.routes[0].dst = "224.0.0.0/4".into()),
                "a multicast, loopback or reserved destination",
            ),
            (
                Box::new(|n| n.routes.push(n.routes[0].clone())),
                "routes[1]: a second route to 0.0.0.0/0",
            ),
            (
                Box::new(|n| n.addresses = vec!["10.1.1.1/8".into(); MAX_ADDRESSES + 1]),
                "addresses: 9 given",
            ),
            (Box::new(|n| n.mac = "a".repeat(100)), "mac: 100 bytes"),
        ];
        for (f, want) in cases {
            let e = refused(f);
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
    }

    #[test]
    fn cidr_syntax_is_strict() {
        assert!(parse_cidr("10.0.0.1/08").is_err());
        assert!(parse_cidr("10.0.0.1/").is_err());
        assert!(parse_cidr("10.0.0.1/+8").is_err());
        assert!(parse_cidr(" 10.0.0.1/8").is_err());
        assert!(parse_cidr("10.0.0.01/8").is_err());
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().prefix, 0);
    }

    proptest! {
        /// Arbitrary text never panics the checker, and whatever it
        /// accepts is a unicast configuration with on-link gateways.
        #[test]
        fn any_configuration_is_checked_or_refused(
            mac in "[0-9a-fA-F:]{0,20}",
            mtu in any::<u32>(),
            addresses in proptest::collection::vec("[0-9./]{0,20}", 0..10),
            routes in proptest::collection::vec(("[0-9./]{0,20}", proptest::option::of("[0-9.]{0,16}")), 0..6),
        ) {
            let n = WorkloadNic {
                mac,
                mtu,
                addresses,
                routes: routes.into_iter().map(|(dst, gateway)| WorkloadRoute { dst, gateway }).collect(),
            };
            if let Ok(c) = n.check() {
                prop_assert!(c.mac[0] & 1 == 0);
                prop_assert!((MIN_MTU..=MAX_MTU).contains(&c.mtu));
                for a in &c.addresses {
                    prop_assert!(not_unicast(a.addr).is_none() && (1..=32).contains(&a.prefix));
                }
                for (i, r) in c.routes.iter().enumerate() {
                    if let Some(g) = r.gateway {
                        prop_assert!(c.addresses.iter().any(|a| a.contains(g))
                            || c.routes[..i].iter().any(|o| o.gateway.is_none() && o.dst.contains(g)));
                    }
                }
            }
        }

        /// Every well-formed address prints back as it was parsed.
        #[test]
        fn cidrs_round_trip(a in any::<[u8; 4]>(), p in 0u8..=32) {
            let s = format!("{}/{p}", Ipv4Addr::from(a));
            prop_assert_eq!(parse_cidr(&s).unwrap().to_string(), s);
        }
    }
}
