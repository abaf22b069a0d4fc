//! A VM sandbox joined to a network namespace someone else made (the
//! containerd shim's case: CNI made it, with one interface, its address and
//! routes). As Kata's default `tcfilter` model: veil creates a tap in that
//! namespace, QEMU gets the tap's descriptor, and `tc` redirects each
//! one's ingress to the other's egress (`u32` match-all filter, `mirred
//! egress redirect`, both ways). No bridge and no address changes: the
//! namespace keeps its single interface and address, and the guest's NIC
//! takes that interface's MAC, MTU, addresses and routes (read here, handed
//! to the agent in `create_sandbox`, checked there).
//!
//! What veil makes, and so removes: the tap (non-persistent: it also
//! disappears when QEMU dies, even by SIGKILL), an `ingress` qdisc on the
//! tap and one on the namespace's interface (each with veil's one filter).
//! It refuses an interface that already has an ingress or clsact qdisc
//! (someone else's traffic control) rather than share it, and removes only
//! what its state file records, after checking that the namespace file
//! still is the namespace it joined (device and inode).

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use veil_agent_api::nic::{WorkloadNic, WorkloadRoute};

use super::NetError;

/// The tap's name in the joined namespace (as Kata's `tap0_kata`).
pub const TAP_NAME: &str = "tap0_veil";

/// What exists of a joined VM's tap and mirroring, written before each step.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapMirror {
    /// The namespace file joined.
    pub netns: PathBuf,
    /// Its device and inode when joined: a namespace file that now names
    /// another namespace is left alone.
    pub netns_dev: u64,
    pub netns_ino: u64,
    /// The namespace's interface (CNI's, usually `eth0`); veil only adds
    /// (and removes) an ingress qdisc on it.
    pub iface: String,
    /// The tap veil created, and its index (0 until known).
    pub tap: String,
    #[serde(default)]
    pub tap_index: u32,
    /// Whether veil added the ingress qdisc of `iface` (and so removes it).
    #[serde(default)]
    pub iface_qdisc: bool,
}

/// Why a namespace cannot be joined, or what went wrong in it.
fn other(s: impl Into<String>) -> NetError {
    NetError::Other(s.into())
}

/// Run `program args` inside the network namespace `ns` (entered between
/// fork and exec; the namespace descriptor does not cross exec).
fn run_in(ns: &std::fs::File, program: &str, args: &[&str]) -> Result<String, NetError> {
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(program);
    cmd.args(args);
    // SAFETY: setns(2) only, async-signal-safe, on a descriptor this
    // process holds open for the duration of the call.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let what = format!("{program} {}", args.join(" "));
    let out = cmd.output().map_err(|e| {
        other(format!(
            "running {what} in the pod's netns: {e} (install iproute2)"
        ))
    })?;
    if !out.status.success() {
        return Err(other(format!(
            "{what} in the pod's netns failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json_in(
    ns: &std::fs::File,
    program: &str,
    args: &[&str],
) -> Result<serde_json::Value, NetError> {
    let out = run_in(ns, program, args)?;
    if out.trim().is_empty() {
        return Ok(serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_str(&out).map_err(|e| {
        other(format!(
            "{program} {}: unexpected output: {e}",
            args.join(" ")
        ))
    })
}

fn open_netns(path: &Path) -> Result<std::fs::File, NetError> {
    let f = std::fs::File::open(path).map_err(|e| {
        other(format!(
            "--network ns:{}: cannot open it as a network namespace: {e}",
            path.display()
        ))
    })?;
    if f.metadata().is_ok_and(|m| m.is_dir()) {
        return Err(other(format!(
            "--network ns:{}: is a directory, not a network namespace file",
            path.display()
        )));
    }
    Ok(f)
}

/// The interface of the namespace the VM takes over: `eth0` (CNI's
/// default `CNI_IFNAME`) if there is one, else the only Ethernet interface
/// besides veil's tap; with its configuration and notes on what is not
/// carried over (IPv6 addresses).
pub fn read_iface(
    ns: &std::fs::File,
    shown: &Path,
) -> Result<(String, WorkloadNic, Vec<String>), NetError> {
    let links = json_in(ns, "ip", &["-j", "link", "show"])?;
    let ethers: Vec<(String, serde_json::Value)> = links
        .as_array()
        .into_iter()
        .flatten()
        .filter(|l| l["link_type"] == "ether" && l["ifname"] != TAP_NAME)
        .filter_map(|l| Some((l["ifname"].as_str()?.to_string(), l.clone())))
        .collect();
    let (name, link) = match ethers.iter().find(|(n, _)| n == "eth0") {
        Some(e) => e.clone(),
        None if ethers.len() == 1 => ethers[0].clone(),
        None => {
            let names: Vec<&str> = ethers.iter().map(|(n, _)| n.as_str()).collect();
            return Err(other(format!(
                "--network ns:{}: expected one Ethernet interface (or one named eth0) for the \
                 VM's NIC, found {} ({names:?}); CNI gives a pod one interface, eth0",
                shown.display(),
                names.len(),
            )));
        }
    };
    // It names things in messages and tc commands: printable only.
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(other(format!(
            "--network ns:{}: interface name {name:?} has characters other than printable \
             ASCII; rename it (CNI names it eth0)",
            shown.display()
        )));
    }
    let mac = link["address"].as_str().unwrap_or_default().to_string();
    let mtu = link["mtu"].as_u64().unwrap_or(1500) as u32;
    let addrs = json_in(ns, "ip", &["-j", "addr", "show", "dev", &name])?;
    let mut addresses = Vec::new();
    let mut notes = Vec::new();
    for a in addrs
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|l| l["addr_info"].as_array().into_iter().flatten())
    {
        let (Some(local), Some(prefix)) = (a["local"].as_str(), a["prefixlen"].as_u64()) else {
            continue;
        };
        match (a["family"].as_str(), a["scope"].as_str()) {
            (Some("inet"), Some("global")) => addresses.push(format!("{local}/{prefix}")),
            (Some("inet6"), Some("global")) => notes.push(format!(
                "the IPv6 address {local}/{prefix} of {name} is not carried into the VM (its pod NIC is IPv4 only)"
            )),
            _ => {}
        }
    }
    if addresses.is_empty() {
        return Err(other(format!(
            "--network ns:{}: {name} has no IPv4 address; the VM's pod NIC takes the \
             address CNI gave the namespace's interface (run the CNI ADD first)",
            shown.display()
        )));
    }
    let routes = json_in(
        ns,
        "ip",
        &["-j", "-4", "route", "show", "table", "main", "dev", &name],
    )?;
    let mut out: Vec<WorkloadRoute> = routes
        .as_array()
        .into_iter()
        .flatten()
        // The kernel's own prefix routes: the guest's kernel makes them too.
        .filter(|r| r["protocol"] != "kernel")
        .filter_map(|r| {
            let dst = r["dst"].as_str()?;
            let dst = match dst {
                "default" => "0.0.0.0/0".to_string(),
                d if d.contains('/') => d.to_string(),
                d => format!("{d}/32"),
            };
            Some(WorkloadRoute {
                dst,
                gateway: r["gateway"].as_str().map(str::to_string),
            })
        })
        .collect();
    // On-link routes first: a gateway may need one.
    out.sort_by_key(|r| r.gateway.is_some());
    Ok((
        name,
        WorkloadNic {
            mac,
            mtu,
            addresses,
            routes: out,
        },
        notes,
    ))
}

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_TUN_EXCL: libc::c_short = -0x8000; // 0x8000 as a c_short

/// Open `/dev/net/tun` inside `ns` and create the non-persistent tap
/// `name` there (refused if the name exists): the tap lives as long as a
/// descriptor of it is open.
fn create_tap(ns: &std::fs::File, name: &str) -> Result<OwnedFd, NetError> {
    let ns = ns.try_clone().map_err(|e| other(format!("netns: {e}")))?;
    let name = name.to_string();
    std::thread::spawn(move || -> Result<OwnedFd, NetError> {
        // This thread only: the rest of the process stays where it is.
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(|e| other(format!("entering the pod's netns: {e}")))?;
        let dev = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| other(format!("/dev/net/tun: {e} (load the tun module)")))?;
        // SAFETY: ifreq is plain old data; all-zero is valid.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        r.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL;
        // SAFETY: TUNSETIFF on our descriptor with an initialized ifreq.
        if unsafe { libc::ioctl(dev.as_raw_fd(), TUNSETIFF as _, &r) } < 0 {
            let e = std::io::Error::last_os_error();
            return Err(other(format!(
                "creating the tap {name} in the pod's netns: {e}{}",
                if e.raw_os_error() == Some(libc::EBUSY) || e.raw_os_error() == Some(libc::EEXIST) {
                    " (it exists: another VM sandbox joined this namespace?)"
                } else {
                    ""
                }
            )));
        }
        Ok(OwnedFd::from(dev))
    })
    .join()
    .map_err(|_| other("the tap thread panicked"))?
}

/// The joined namespace's tap, mirrored to its interface; QEMU gets `fd`.
#[derive(Debug)]
pub struct JoinedTap {
    /// The tap's descriptor (close it once QEMU has its own copy).
    pub fd: OwnedFd,
    /// The configuration the guest's NIC takes.
    pub nic: WorkloadNic,
    /// What is not carried over, for the user.
    pub notes: Vec<String>,
}

/// Join `netns` for a VM: read its interface, create the tap, mirror both
/// ways. `record` is called with the state before each step (the caller
/// writes it to the state file), so a crash leaves a state that
/// [`teardown`] undoes. On error, what was made is undone here.
pub fn setup(
    netns: &Path,
    record: &mut dyn FnMut(&TapMirror) -> Result<(), NetError>,
) -> Result<(JoinedTap, TapMirror), NetError> {
    let ns = open_netns(netns)?;
    let meta = ns
        .metadata()
        .map_err(|e| other(format!("{}: {e}", netns.display())))?;
    let (iface, nic, notes) = read_iface(&ns, netns)?;
    // The host refuses what the agent would (same check, earlier, with the
    // namespace named).
    nic.check().map_err(|e| {
        other(format!(
            "--network ns:{}: the configuration of {iface} cannot be given to the VM: {e}",
            netns.display()
        ))
    })?;
    let qdiscs = json_in(&ns, "tc", &["-j", "qdisc", "show", "dev", &iface])?;
    if let Some(k) = qdiscs
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|q| q["kind"].as_str())
        .find(|k| *k == "ingress" || *k == "clsact")
    {
        return Err(other(format!(
            "--network ns:{}: {iface} already has a {k} qdisc (someone else's traffic control); \
             veil mirrors the VM's traffic with an ingress qdisc of its own and does not share \
             one: remove it, or join another namespace",
            netns.display()
        )));
    }
    let mut st = TapMirror {
        netns: netns.to_path_buf(),
        netns_dev: meta.dev(),
        netns_ino: meta.ino(),
        iface: iface.clone(),
        tap: TAP_NAME.into(),
        tap_index: 0,
        iface_qdisc: false,
    };
    record(&st)?;
    let fd = create_tap(&ns, TAP_NAME)?;
    let made = (|| -> Result<(), NetError> {
        let mtu = nic.mtu.to_string();
        run_in(&ns, "ip", &["link", "set", TAP_NAME, "mtu", &mtu, "up"])?;
        let links = json_in(&ns, "ip", &["-j", "link", "show", TAP_NAME])?;
        st.tap_index = links[0]["ifindex"].as_u64().unwrap_or(0) as u32;
        record(&st)?;
        // Recorded once made, so that a qdisc someone else added in the
        // meantime (ours then fails to be added) is never removed.
        run_in(&ns, "tc", &["qdisc", "add", "dev", &iface, "ingress"])?;
        st.iface_qdisc = true;
        record(&st)?;
        redirect(&ns, &iface, TAP_NAME)?;
        // The tap's own qdisc goes with the tap.
        run_in(&ns, "tc", &["qdisc", "add", "dev", TAP_NAME, "ingress"])?;
        redirect(&ns, TAP_NAME, &iface)
    })();
    if let Err(e) = made {
        drop(fd);
        let _ = teardown(&st);
        return Err(e);
    }
    Ok((JoinedTap { fd, nic, notes }, st))
}

/// `from`'s ingress (its ingress qdisc) redirected to `to`'s egress: one
/// match-all `u32` filter, as Kata's tcfilter model.
fn redirect(ns: &std::fs::File, from: &str, to: &str) -> Result<(), NetError> {
    run_in(
        ns,
        "tc",
        &[
            "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
            "u8", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
        ],
    )
    .map(|_| ())
}

/// Undo what `st` records, in the namespace it joined, if that namespace
/// still exists and is the same one: the ingress qdisc veil added to the
/// interface (with its filter), and the tap if it still exists (it goes
/// with QEMU's last descriptor). Every step is tried; the first failure is
/// returned.
pub fn teardown(st: &TapMirror) -> Result<(), NetError> {
    let Ok(ns) = std::fs::File::open(&st.netns) else {
        return Ok(()); // the namespace is gone, and everything in it
    };
    match ns.metadata() {
        Ok(m) if m.dev() == st.netns_dev && m.ino() == st.netns_ino => {}
        _ => return Ok(()), // another namespace now: not ours to touch
    }
    let mut first = None;
    if st.iface_qdisc {
        let has = json_in(&ns, "tc", &["-j", "qdisc", "show", "dev", &st.iface])
            .map(|q| {
                q.as_array()
                    .into_iter()
                    .flatten()
                    .any(|q| q["kind"] == "ingress")
            })
            .unwrap_or(false);
        if has {
            if let Err(e) = run_in(&ns, "tc", &["qdisc", "del", "dev", &st.iface, "ingress"]) {
                first.get_or_insert(e);
            }
        }
    }
    if st.tap_index != 0 {
        let same = json_in(&ns, "ip", &["-j", "link", "show", &st.tap])
            .ok()
            .and_then(|l| l[0]["ifindex"].as_u64())
            == Some(u64::from(st.tap_index));
        if same {
            if let Err(e) = run_in(&ns, "ip", &["link", "del", &st.tap]) {
                first.get_or_insert(e);
            }
        }
    }
    first.map_or(Ok(()), Err)
}
