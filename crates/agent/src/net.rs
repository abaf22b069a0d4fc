//! The pod's network namespace, inside the sandbox: one namespace that every
//! container of the pod joins (as in Kubernetes), instead of one each.
//!
//! The process sandbox's host hands the agent a namespace it configured
//! with CNI (`--pod-netns`). Otherwise (a VM, or a process sandbox without
//! root, where the host cannot make one) the agent makes its own: a thread
//! unshares `CLONE_NEWNET`, brings `lo` up and stays parked, so the
//! namespace lives as long as the agent and is reachable at
//! `/proc/<agent>/task/<thread>/ns/net`. In a VM with a workload NIC (see
//! [`veil_agent_api::workload_net`]) that thread also moves the NIC into the
//! namespace (one `RTM_NEWLINK` over netlink), names it `eth0`, gives it
//! its address and a default route (ioctls). A NIC joined to a namespace
//! the host was handed (`JOIN_MAC`) is only moved and named there; its
//! MAC, MTU, addresses and routes come with `create_sandbox`, checked
//! ([`veil_agent_api::nic`]), and [`configure_joined_nic`] applies them. The agent itself stays where
//! it was: its channel to the host and the KBS is not the workload's
//! network, and the workload's NIC is not in the agent's namespace.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;

use veil_agent_api::workload_net;

/// Where the pod's network namespace is.
#[derive(Debug, Clone)]
pub struct PodNetns {
    /// The namespace file containers join.
    pub path: PathBuf,
    /// Its `eth0` is a VM NIC joined to a namespace the host was handed
    /// ([`workload_net::JOIN_MAC`]): moved in and named, but down until
    /// `create_sandbox` brings its configuration ([`configure_joined_nic`]).
    pub awaiting_config: bool,
}

impl PodNetns {
    /// The namespace the host made (process sandbox).
    pub fn given(path: PathBuf) -> Result<Self, String> {
        let meta =
            std::fs::metadata(&path).map_err(|e| format!("--pod-netns {}: {e}", path.display()))?;
        if meta.is_dir() {
            return Err(format!(
                "--pod-netns {}: a directory, not a network namespace",
                path.display()
            ));
        }
        Ok(PodNetns {
            path,
            awaiting_config: false,
        })
    }

    /// A new namespace held by a parked thread: loopback, and `nic` (the
    /// VM's workload NIC, by its name in the agent's namespace) moved in
    /// and configured when given.
    pub fn create(nic: Option<String>) -> Result<Self, String> {
        // A joined NIC is configured later, from create_sandbox.
        let awaiting_config = nic.as_deref().is_some_and(|n| {
            std::fs::read_to_string(format!("/sys/class/net/{n}/address"))
                .is_ok_and(|m| m.trim().eq_ignore_ascii_case(workload_net::JOIN_MAC))
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pod-netns".into())
            .spawn(move || {
                let r: Result<PathBuf, String> = (|| {
                    // Opened before unsharing: this socket stays in the
                    // agent's namespace, where the NIC is.
                    let moving = match &nic {
                        Some(name) => Some((ifindex(name)?, netlink_socket()?)),
                        None => None,
                    };
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
                    if_up("lo", None)?;
                    if let (Some(name), Some((index, nl))) = (&nic, moving) {
                        let ns = std::fs::File::open("/proc/thread-self/ns/net")
                            .map_err(|e| format!("opening the pod's netns: {e}"))?;
                        move_link(&nl, index, ns.as_raw_fd())
                            .map_err(|e| format!("moving {name} into the pod's netns: {e}"))?;
                        if awaiting_config {
                            rename(name, workload_net::POD_IFNAME)?;
                        } else {
                            configure_workload_nic(name)?;
                        }
                    }
                    // SAFETY: gettid has no preconditions.
                    let tid = unsafe { libc::syscall(libc::SYS_gettid) };
                    Ok(PathBuf::from(format!(
                        "/proc/{}/task/{tid}/ns/net",
                        std::process::id()
                    )))
                })();
                let ok = r.is_ok();
                let _ = tx.send(r);
                if ok {
                    loop {
                        std::thread::park();
                    }
                }
            })
            .map_err(|e| format!("starting the pod netns thread: {e}"))?;
        let path = rx
            .recv()
            .map_err(|_| "the pod netns thread died".to_string())??;
        Ok(PodNetns {
            path,
            awaiting_config,
        })
    }
}

/// Give the pod's joined NIC (`eth0` in the namespace at `netns`, down) the
/// checked configuration the host read from the namespace it was handed:
/// MAC and MTU, then the addresses (the first primary, the others aliases
/// `eth0:N`), up, then the routes in order. Runs on a thread of its own that
/// enters the namespace; the agent's threads stay where they are.
pub fn configure_joined_nic(
    netns: &std::path::Path,
    c: &veil_agent_api::nic::NicConfig,
) -> Result<(), String> {
    let ns = std::fs::File::open(netns)
        .map_err(|e| format!("opening the pod's netns {}: {e}", netns.display()))?;
    let c = c.clone();
    std::thread::Builder::new()
        .name("pod-nic".into())
        .spawn(move || -> Result<(), String> {
            nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("entering the pod's netns: {e}"))?;
            let pod = workload_net::POD_IFNAME;
            // Not /sys/class/net: sysfs shows the namespace it was mounted in.
            let mac = get_hwaddr(pod)?;
            if !mac.eq_ignore_ascii_case(workload_net::JOIN_MAC) {
                return Err(format!(
                    "the pod's {pod} has MAC {mac}, expected {} (the joined NIC, not yet \
                     configured): it was configured already",
                    workload_net::JOIN_MAC
                ));
            }
            set_hwaddr(pod, c.mac)?;
            set_mtu(pod, c.mtu)?;
            for (i, a) in c.addresses.iter().enumerate() {
                let name = if i == 0 {
                    pod.to_string()
                } else {
                    format!("{pod}:{i}")
                };
                if_up(&name, Some((a.addr.octets(), a.netmask().octets())))?;
            }
            for r in &c.routes {
                add_route(pod, r)?;
            }
            Ok(())
        })
        .map_err(|e| format!("starting the pod NIC thread: {e}"))?
        .join()
        .map_err(|_| "the pod NIC thread panicked".to_string())?
}

/// `name`'s MAC, as `aa:bb:cc:dd:ee:ff`.
fn get_hwaddr(name: &str) -> Result<String, String> {
    let mut r = ifreq(name)?;
    with_inet_socket(|fd| {
        // SAFETY: ioctl on our socket with an initialized ifreq.
        check(
            unsafe { libc::ioctl(fd, libc::SIOCGIFHWADDR, &mut r) },
            &format!("SIOCGIFHWADDR {name}"),
        )
    })?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let d = unsafe { r.ifr_ifru.ifru_hwaddr.sa_data };
    Ok(d[..6]
        .iter()
        .map(|b| format!("{:02x}", *b as u8))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Set `name`'s MAC (the interface is down).
fn set_hwaddr(name: &str, mac: [u8; 6]) -> Result<(), String> {
    let mut r = ifreq(name)?;
    // SAFETY: writing plain data into the ifreq union's sockaddr.
    unsafe {
        r.ifr_ifru.ifru_hwaddr.sa_family = libc::ARPHRD_ETHER;
        for (d, s) in r.ifr_ifru.ifru_hwaddr.sa_data.iter_mut().zip(mac) {
            *d = s as libc::c_char;
        }
    }
    with_inet_socket(|fd| {
        // SAFETY: ioctl on our socket with an initialized ifreq.
        check(
            unsafe { libc::ioctl(fd, libc::SIOCSIFHWADDR, &r) },
            &format!("SIOCSIFHWADDR {name}"),
        )
    })
}

fn set_mtu(name: &str, mtu: u32) -> Result<(), String> {
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_mtu = i32::try_from(mtu).map_err(|_| format!("MTU {mtu} out of range"))?;
    with_inet_socket(|fd| {
        // SAFETY: ioctl on our socket with an initialized ifreq.
        check(
            unsafe { libc::ioctl(fd, libc::SIOCSIFMTU, &r) },
            &format!("SIOCSIFMTU {name} {mtu}"),
        )
    })
}

/// Add a checked route through `dev` (on-link when it has no gateway).
fn add_route(dev: &str, r: &veil_agent_api::nic::Route) -> Result<(), String> {
    let dev_c = std::ffi::CString::new(dev).map_err(|e| format!("interface {dev:?}: {e}"))?;
    // SAFETY: rtentry is plain old data; all-zero is valid.
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr(r.dst.addr.octets());
    rt.rt_genmask = sockaddr(r.dst.netmask().octets());
    rt.rt_flags = libc::RTF_UP;
    if r.dst.prefix == 32 {
        rt.rt_flags |= libc::RTF_HOST;
    }
    if let Some(g) = r.gateway {
        rt.rt_gateway = sockaddr(g.octets());
        rt.rt_flags |= libc::RTF_GATEWAY;
    }
    // The kernel copies the name during the ioctl; `dev_c` outlives it.
    rt.rt_dev = dev_c.as_ptr() as *mut libc::c_char;
    let what = match r.gateway {
        Some(g) => format!("SIOCADDRT {} via {g} dev {dev}", r.dst),
        None => format!("SIOCADDRT {} dev {dev}", r.dst),
    };
    with_inet_socket(|fd| {
        // SAFETY: ioctl on our socket with an initialized rtentry whose
        // device name pointer is valid for the call.
        check(unsafe { libc::ioctl(fd, libc::SIOCADDRT, &rt) }, &what)
    })
}

/// In the pod's namespace: `name` becomes `eth0` with the workload
/// network's address, up, with the default route through QEMU's gateway.
fn configure_workload_nic(name: &str) -> Result<(), String> {
    let pod = workload_net::POD_IFNAME;
    if name != pod {
        rename(name, pod)?;
    }
    if_up(pod, Some((workload_net::GUEST_IP, workload_net::NETMASK)))?;
    default_route(workload_net::GATEWAY)
}

fn ifindex(name: &str) -> Result<i32, String> {
    let c = std::ffi::CString::new(name).map_err(|e| format!("interface {name:?}: {e}"))?;
    // SAFETY: a NUL-terminated string we own.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(format!(
            "interface {name}: {}",
            std::io::Error::last_os_error()
        ));
    }
    i32::try_from(i).map_err(|_| format!("interface {name}: index {i} out of range"))
}

fn netlink_socket() -> Result<OwnedFd, String> {
    // SAFETY: socket(2); the fd is owned by the returned OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(format!(
            "netlink socket: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: fd is a fresh descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

const RTM_NEWLINK: u16 = 16;
const NLMSG_ERROR: u16 = 2;
const IFLA_NET_NS_FD: u16 = 28;

/// `RTM_NEWLINK` for interface `index` with `IFLA_NET_NS_FD = netns_fd`:
/// nlmsghdr (16 bytes), ifinfomsg (16), one 8-byte attribute.
pub fn move_link_message(index: i32, netns_fd: u32, seq: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend(40u32.to_ne_bytes());
    m.extend(RTM_NEWLINK.to_ne_bytes());
    m.extend(((libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16).to_ne_bytes());
    m.extend(seq.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend([libc::AF_UNSPEC as u8, 0]);
    m.extend(0u16.to_ne_bytes());
    m.extend(index.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(0u32.to_ne_bytes());
    m.extend(8u16.to_ne_bytes());
    m.extend(IFLA_NET_NS_FD.to_ne_bytes());
    m.extend(netns_fd.to_ne_bytes());
    m
}

/// The kernel's answer to a request with sequence number `seq`: `Ok` for
/// an acknowledgement, the errno otherwise. Anything malformed is an error.
pub fn parse_ack(buf: &[u8], seq: u32) -> Result<(), String> {
    let u32_at =
        |o: usize| -> Option<u32> { Some(u32::from_ne_bytes(buf.get(o..o + 4)?.try_into().ok()?)) };
    let (Some(len), Some(kind), Some(got_seq)) = (
        u32_at(0),
        buf.get(4..6).map(|b| u16::from_ne_bytes([b[0], b[1]])),
        u32_at(8),
    ) else {
        return Err(format!("netlink: short answer ({} bytes)", buf.len()));
    };
    if (len as usize) > buf.len() || len < 20 {
        return Err(format!(
            "netlink: answer length {len} does not fit the {} bytes read",
            buf.len()
        ));
    }
    if kind != NLMSG_ERROR || got_seq != seq {
        return Err(format!(
            "netlink: expected an acknowledgement of request {seq}, got message type {kind} for {got_seq}"
        ));
    }
    match u32_at(16).map(|e| e as i32) {
        Some(0) => Ok(()),
        Some(e) => Err(std::io::Error::from_raw_os_error(-e).to_string()),
        None => Err("netlink: short acknowledgement".into()),
    }
}

fn move_link(nl: &OwnedFd, index: i32, netns_fd: i32) -> Result<(), String> {
    let seq = 1;
    let msg = move_link_message(index, netns_fd as u32, seq);
    // SAFETY: send/recv on our own socket with buffers we own.
    unsafe {
        if libc::send(nl.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) < 0 {
            return Err(format!("netlink send: {}", std::io::Error::last_os_error()));
        }
        let mut buf = [0u8; 1024];
        let n = libc::recv(nl.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return Err(format!("netlink recv: {}", std::io::Error::last_os_error()));
        }
        parse_ack(&buf[..n as usize], seq)
    }
}

fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    // SAFETY: ifreq is plain old data; all-zero is valid.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= r.ifr_name.len() {
        return Err(format!("interface name {name:?} too long"));
    }
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr(ip: [u8; 4]) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size; plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// Run `f` with an AF_INET datagram socket of the calling thread's
/// network namespace (what interface ioctls need).
fn with_inet_socket<T>(f: impl FnOnce(libc::c_int) -> Result<T, String>) -> Result<T, String> {
    // SAFETY: socket(2); closed by the OwnedFd.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fd is fresh and ours.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    f(owned.as_raw_fd())
}

fn check(r: libc::c_int, what: &str) -> Result<(), String> {
    if r < 0 {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    } else {
        Ok(())
    }
}

/// Bring `name` up, with an IPv4 address and netmask when given.
pub fn if_up(name: &str, addr: Option<([u8; 4], [u8; 4])>) -> Result<(), String> {
    with_inet_socket(|fd| {
        // SAFETY: ioctls on our socket with initialized ifreqs.
        unsafe {
            if let Some((ip, mask)) = addr {
                let mut r = ifreq(name)?;
                r.ifr_ifru.ifru_addr = sockaddr(ip);
                check(
                    libc::ioctl(fd, libc::SIOCSIFADDR, &r),
                    &format!("SIOCSIFADDR {name}"),
                )?;
                let mut r = ifreq(name)?;
                r.ifr_ifru.ifru_netmask = sockaddr(mask);
                check(
                    libc::ioctl(fd, libc::SIOCSIFNETMASK, &r),
                    &format!("SIOCSIFNETMASK {name}"),
                )?;
            }
            let mut r = ifreq(name)?;
            check(
                libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut r),
                &format!("SIOCGIFFLAGS {name}"),
            )?;
            r.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            check(
                libc::ioctl(fd, libc::SIOCSIFFLAGS, &r),
                &format!("SIOCSIFFLAGS {name} up"),
            )
        }
    })
}

/// Rename interface `from` (down) to `to`.
fn rename(from: &str, to: &str) -> Result<(), String> {
    let mut r = ifreq(from)?;
    let new = ifreq(to)?;
    r.ifr_ifru.ifru_newname = new.ifr_name;
    with_inet_socket(|fd| {
        // SAFETY: ioctl on our socket with an initialized ifreq.
        check(
            unsafe { libc::ioctl(fd, libc::SIOCSIFNAME, &r) },
            &format!("SIOCSIFNAME {from} -> {to}"),
        )
    })
}

/// The default route through `gateway`.
fn default_route(gateway: [u8; 4]) -> Result<(), String> {
    // SAFETY: rtentry is plain old data; all-zero is valid (no device).
    let mut rt: libc::rtentry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr([0; 4]);
    rt.rt_genmask = sockaddr([0; 4]);
    rt.rt_gateway = sockaddr(gateway);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    with_inet_socket(|fd| {
        // SAFETY: ioctl on our socket with an initialized rtentry.
        check(
            unsafe { libc::ioctl(fd, libc::SIOCADDRT, &rt) },
            &format!(
                "SIOCADDRT default via {}",
                std::net::Ipv4Addr::from(gateway)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn move_link_message_is_rtm_newlink_with_the_netns_fd() {
        let m = move_link_message(3, 7, 1);
        assert_eq!(m.len(), 40);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 40);
        assert_eq!(u16::from_ne_bytes([m[4], m[5]]), RTM_NEWLINK);
        assert_eq!(i32::from_ne_bytes(m[20..24].try_into().unwrap()), 3);
        assert_eq!(u16::from_ne_bytes([m[34], m[35]]), IFLA_NET_NS_FD);
        assert_eq!(u32::from_ne_bytes(m[36..40].try_into().unwrap()), 7);
    }

    fn ack(seq: u32, err: i32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend(36u32.to_ne_bytes());
        b.extend(NLMSG_ERROR.to_ne_bytes());
        b.extend(0u16.to_ne_bytes());
        b.extend(seq.to_ne_bytes());
        b.extend(0u32.to_ne_bytes());
        b.extend(err.to_ne_bytes());
        b.extend([0u8; 16]);
        b
    }

    #[test]
    fn acknowledgements_and_errors_are_told_apart() {
        assert_eq!(parse_ack(&ack(1, 0), 1), Ok(()));
        let e = parse_ack(&ack(1, -libc::ENODEV), 1).unwrap_err();
        assert!(e.contains("No such device"), "{e}");
        assert!(parse_ack(&ack(2, 0), 1).unwrap_err().contains("request 1"));
        assert!(parse_ack(&ack(1, 0)[..10], 1).is_err());
    }

    proptest! {
        #[test]
        fn any_answer_parses_or_is_refused(b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = parse_ack(&b, 1);
        }
    }
}
