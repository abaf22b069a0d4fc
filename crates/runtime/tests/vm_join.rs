//! The host half of a VM sandbox joined to a network namespace someone
//! else made (`veil_runtime::net::tap`), without booting a VM: what it
//! reads from the namespace, the tap and the tc mirroring it makes, that
//! teardown (by the owner, or from the state file after the owner was
//! killed) removes exactly that and leaves the namespace's own interface as
//! it was, and what it refuses. Needs root (namespaces), as in CI. Each
//! test has its own namespace (`vmjt-…`), removed on drop.

use std::path::PathBuf;
use std::process::Command;

use veil_runtime::net::{NetSettings, PodNetwork, tap};

/// `ip netns add` with a veth whose end inside is `eth0` (as CNI leaves a
/// pod's namespace), the other end in the root namespace under a unique
/// name; removed (with the veth) on drop.
struct Netns {
    name: String,
}

impl Netns {
    fn new(tag: &str) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return None;
        }
        let pid = std::process::id();
        let n = Netns {
            name: format!("vmjt-{tag}-{pid}"),
        };
        n.ip(&["netns", "add", &n.name]);
        let peer = format!("vmjt{tag}{}", pid % 10_000);
        n.ip(&[
            "-n", &n.name, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
            &n.name,
        ]);
        n.ip(&["-n", &n.name, "link", "set", "eth0", "up"]);
        n.ip(&["-n", &n.name, "link", "set", &peer, "up"]);
        Some(n)
    }
    fn ip(&self, args: &[&str]) -> String {
        let o = Command::new("ip").args(args).output().unwrap();
        assert!(
            o.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    /// `ip -n NAME ARGS` (ARGS split at spaces).
    fn inside(&self, args: &str) -> String {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend(args.split(' '));
        self.ip(&a)
    }
    fn tc(&self, args: &[&str]) -> String {
        let o = Command::new("ip")
            .args(["netns", "exec", &self.name, "tc"])
            .args(args)
            .output()
            .unwrap();
        assert!(o.status.success(), "tc {args:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
    fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }
    /// eth0's MAC, MTU and addresses, every link's name and every qdisc
    /// and filter.
    fn snapshot(&self) -> String {
        let mut s = self.ip(&["-n", &self.name, "-o", "link", "show"]);
        s.push_str(&self.ip(&["-n", &self.name, "-o", "addr", "show", "dev", "eth0"]));
        s.push_str(&self.tc(&["qdisc", "show"]));
        s.push_str(&self.tc(&["filter", "show", "dev", "eth0", "ingress"]));
        // Packet counters change; the rest does not.
        s.lines()
            .map(|l| l.split(" qlen").next().unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// Join `ns` for sandbox `id`, with the state file in a new temp dir.
fn join(
    ns: &Netns,
    id: &str,
) -> (
    tempfile::TempDir,
    PathBuf,
    Result<(PodNetwork, tap::JoinedTap), veil_runtime::net::NetError>,
) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("net.json");
    let r = PodNetwork::join_vm(&NetSettings::from_env(dir.path()), id, &ns.path(), &state);
    (dir, state, r)
}

#[test]
fn join_mirrors_both_ways_and_teardown_leaves_the_namespace_as_it_was() {
    let Some(ns) = Netns::new("a") else { return };
    ns.inside("addr add 10.214.0.7/24 dev eth0");
    ns.inside("link set eth0 mtu 1400");
    ns.inside("route add 10.99.0.0/16 via 10.214.0.1");
    ns.inside("route add default via 10.214.0.1");
    let before = ns.snapshot();
    let (_dir, state, r) = join(&ns, "vmjt1");
    let (mut net, joined) = r.unwrap();

    // What the guest's NIC gets: eth0's MAC, MTU, address and routes (not
    // the kernel's own prefix route).
    let mac = ns
        .ip(&["-n", &ns.name, "-o", "link", "show", "eth0"])
        .split("link/ether ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(joined.nic.mac, mac);
    assert_eq!(joined.nic.mtu, 1400);
    assert_eq!(joined.nic.addresses, ["10.214.0.7/24"]);
    let routes: Vec<(String, Option<String>)> = joined
        .nic
        .routes
        .iter()
        .map(|r| (r.dst.clone(), r.gateway.clone()))
        .collect();
    assert_eq!(
        routes,
        [
            ("0.0.0.0/0".to_string(), Some("10.214.0.1".to_string())),
            ("10.99.0.0/16".to_string(), Some("10.214.0.1".to_string())),
        ]
    );
    joined.nic.check().unwrap();
    assert_eq!(net.state().address, "10.214.0.7/24");

    // The tap is there (with eth0's MTU), and each ingress redirects to
    // the other's egress.
    let tap = ns.ip(&["-n", &ns.name, "-o", "link", "show", tap::TAP_NAME]);
    assert!(tap.contains("mtu 1400") && tap.contains("UP"), "{tap}");
    let f = ns.tc(&["filter", "show", "dev", "eth0", "ingress"]);
    assert!(
        f.contains("mirred (Egress Redirect to device tap0_veil)"),
        "{f}"
    );
    let f = ns.tc(&["filter", "show", "dev", tap::TAP_NAME, "ingress"]);
    assert!(f.contains("mirred (Egress Redirect to device eth0)"), "{f}");
    let recorded = std::fs::read_to_string(&state).unwrap();
    assert!(recorded.contains("\"vm_tap\""), "{recorded}");

    // QEMU's end closes (here: veil's only descriptor), then teardown.
    drop(joined);
    net.teardown().unwrap();
    assert_eq!(ns.snapshot(), before);
    assert!(!state.exists(), "the state file goes with the network");
}

#[test]
fn a_killed_owners_mirroring_is_removed_from_its_state_file() {
    let Some(ns) = Netns::new("b") else { return };
    ns.inside("addr add 10.214.1.7/24 dev eth0");
    let before = ns.snapshot();
    let (_dir, state, r) = join(&ns, "vmjt2");
    let (net, joined) = r.unwrap();
    // The owner dies without tearing down (SIGKILL): its descriptor closes,
    // its guard never runs.
    std::mem::forget(net);
    drop(joined);
    assert!(
        veil_runtime::net::teardown_state_file(&state, &[]).unwrap(),
        "there was a network to remove"
    );
    assert_eq!(ns.snapshot(), before);
}

#[test]
fn what_cannot_be_joined_is_refused_and_nothing_is_made() {
    let Some(ns) = Netns::new("c") else { return };
    let refusal = || join(&ns, "vmjt3").2.map(|_| ()).unwrap_err().to_string();
    // No address yet: CNI has not run.
    let e = refusal();
    assert!(e.contains("eth0 has no IPv4 address"), "{e}");

    // A gateway that is not on-link (the kernel takes it with `onlink`;
    // the guest must not).
    ns.inside("addr add 10.214.2.7/24 dev eth0");
    ns.inside("route add default via 192.0.2.1 dev eth0 onlink");
    let e = refusal();
    assert!(
        e.contains("routes[0].gateway: 192.0.2.1 is not on-link"),
        "{e}"
    );
    ns.inside("route del default");

    // Someone else's traffic control on eth0: not shared, not touched.
    ns.tc(&["qdisc", "add", "dev", "eth0", "ingress"]);
    let before = ns.snapshot();
    let e = refusal();
    assert!(e.contains("eth0 already has a ingress qdisc"), "{e}");
    assert_eq!(ns.snapshot(), before, "nothing made, nothing removed");
    assert!(!before.contains(tap::TAP_NAME));
}
