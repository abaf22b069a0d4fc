//! Who a request comes from, for per-source limits: the peer's IPv4
//! address, or the /64 prefix of its IPv6 address (one IPv6 subscriber
//! usually holds a whole /64, so counting single addresses would let one
//! client be 2^64 sources). IPv4-mapped IPv6 addresses count as IPv4.
//!
//! The address is the TCP peer's: a KBS behind a reverse proxy sees the
//! proxy as one source (give the proxy its own per-client limits).

use std::fmt;
use std::net::IpAddr;

/// The unit per-source limits count in.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SourceKey {
    /// An IPv4 address.
    V4([u8; 4]),
    /// The first 64 bits of an IPv6 address.
    V6Prefix([u8; 8]),
    /// The peer address is not known (a router driven without a socket).
    Unknown,
}

impl SourceKey {
    /// The source of a peer address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => SourceKey::V4(v4.octets()),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => SourceKey::V4(v4.octets()),
                None => {
                    let mut p = [0u8; 8];
                    p.copy_from_slice(&v6.octets()[..8]);
                    SourceKey::V6Prefix(p)
                }
            },
        }
    }
}

impl fmt::Display for SourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SourceKey::V4(o) => write!(f, "{}", std::net::Ipv4Addr::from(*o)),
            SourceKey::V6Prefix(p) => {
                let mut full = [0u8; 16];
                full[..8].copy_from_slice(p);
                write!(f, "{}/64", std::net::Ipv6Addr::from(full))
            }
            SourceKey::Unknown => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_counts_by_prefix_and_mapped_ipv4_as_ipv4() {
        let a = SourceKey::of("2001:db8:1:2::1".parse().unwrap());
        let b = SourceKey::of("2001:db8:1:2:ffff::9".parse().unwrap());
        let c = SourceKey::of("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        let v4 = SourceKey::of("127.0.0.9".parse().unwrap());
        assert_eq!(v4, SourceKey::of("::ffff:127.0.0.9".parse().unwrap()));
        assert_eq!(v4.to_string(), "127.0.0.9");
    }
}
