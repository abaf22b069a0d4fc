//! PID 1 in a VM sandbox: the agent is `/init` of the guest's initrd.
//!
//! Stage 1 (on the kernel's rootfs): copy the initrd's files to a tmpfs,
//! move it over `/` and re-exec, because `pivot_root` (which the container
//! launcher uses) refuses to move away from rootfs. Stage 2: mount `/proc`,
//! `/sys`, `/dev`, cgroup2, configfs and tmpfs; load the kernel modules
//! listed in `/etc/veil/modules` (in order, with `finit_module`); configure
//! the NIC of QEMU's user network (static address, ioctls); read init-data
//! from fw_cfg; open the sim platform's virtio-serial port; unpack the
//! read-only OCI layout disk; and hand everything to the agent's `serve`.
//!
//! Everything the host hands over here is untrusted: init-data is checked
//! against the platform's binding by `boot`, images against the policy's
//! digests by `pull`.

use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{MsFlags, mount};
use veil_agent_api::workload_net;

/// The argument PID 1 re-executes itself with after the root switch.
pub const STAGE2_ARG: &str = "vm-stage2";
/// The TCP port the agent listens on inside the guest.
pub const AGENT_PORT: u16 = 1024;
/// The guest's address on QEMU's user-mode network.
pub const GUEST_IP: [u8; 4] = [10, 0, 2, 15];
/// The sim platform's virtio-serial port name.
pub const SIM_PORT_NAME: &str = "veil.sim";
/// The fw_cfg item with init-data.
pub const INIT_DATA_FW_CFG: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/veil/init-data/raw";
/// The fw_cfg item with the scratch disk's size ([`veil_agent_api::SCRATCH_FW_CFG`]).
pub const SCRATCH_FW_CFG_PATH: &str =
    "/sys/firmware/qemu_fw_cfg/by_name/opt/veil/scratch-bytes/raw";
/// The read-only disk with the OCI layout archive.
pub const OCI_DISK: &str = "/dev/vda";
/// Largest OCI layout archive unpacked from the disk.
pub const MAX_OCI_BYTES: u64 = 4 << 30;

/// What PID 1 set up for the agent.
#[derive(Debug)]
pub struct VmSetup {
    /// `sim`, `snp`, `tdx` or `none` (from the measured kernel command line).
    pub tee: String,
    pub init_data: PathBuf,
    pub platform: Option<fs::File>,
    pub oci_layout: Option<PathBuf>,
    /// The workload NIC, moved into the pod's network namespace later.
    pub workload_nic: Option<String>,
}

fn console(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "veil-agent: {msg}");
}

/// Power the VM off (QEMU exits): PID 1 must never return.
pub fn power_off(reason: &str) -> ! {
    console(&format!("fatal: {reason}; powering off"));
    // SAFETY: plain syscalls.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn mnt(
    src: &str,
    target: &str,
    fstype: &str,
    flags: MsFlags,
    data: Option<&str>,
) -> Result<(), String> {
    let _ = fs::create_dir_all(target);
    mount(Some(src), target, Some(fstype), flags, data)
        .map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

fn copy_tree(src: &Path, dst: &Path, skip: &[&str]) -> Result<(), String> {
    for e in fs::read_dir(src).map_err(|e| format!("reading {}: {e}", src.display()))? {
        let e = e.map_err(|e| e.to_string())?;
        let name = e.file_name();
        if src == Path::new("/") && skip.iter().any(|s| name == *s) {
            continue;
        }
        let (s, d) = (e.path(), dst.join(&name));
        let ft = e.file_type().map_err(|e| e.to_string())?;
        if ft.is_dir() {
            fs::create_dir_all(&d).map_err(|e| format!("{}: {e}", d.display()))?;
            copy_tree(&s, &d, skip)?;
        } else if ft.is_symlink() {
            let t = fs::read_link(&s).map_err(|e| e.to_string())?;
            std::os::unix::fs::symlink(t, &d).map_err(|e| format!("{}: {e}", d.display()))?;
        } else if ft.is_file() {
            fs::copy(&s, &d).map_err(|e| format!("copying {}: {e}", s.display()))?;
            // Free the rootfs copy as we go.
            let _ = fs::remove_file(&s);
        }
    }
    Ok(())
}

/// Stage 1: move the initrd's files onto a tmpfs root and re-exec `/init`.
pub fn switch_root() -> Result<std::convert::Infallible, String> {
    let new = "/newroot";
    mnt("tmpfs", new, "tmpfs", MsFlags::empty(), Some("mode=0755"))?;
    copy_tree(
        Path::new("/"),
        Path::new(new),
        &["newroot", "dev", "proc", "sys"],
    )?;
    for d in ["dev", "proc", "sys"] {
        let _ = fs::create_dir_all(Path::new(new).join(d));
    }
    std::env::set_current_dir(new).map_err(|e| format!("chdir {new}: {e}"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| format!("moving the tmpfs root over /: {e}"))?;
    nix::unistd::chroot(".").map_err(|e| format!("chroot: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("chdir /: {e}"))?;
    let init = CString::new("/init").map_err(|e| e.to_string())?;
    let arg = CString::new(STAGE2_ARG).map_err(|e| e.to_string())?;
    nix::unistd::execv(&init, &[init.clone(), arg]).map_err(|e| format!("re-executing /init: {e}"))
}

fn finit_module(path: &Path) -> Result<(), String> {
    let f = fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    // SAFETY: finit_module on an fd we own with an empty parameter string.
    let r = unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), c"".as_ptr(), 0) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(format!("loading {}: {e}", path.display()));
        }
    }
    Ok(())
}

fn load_modules() -> Result<usize, String> {
    let list = fs::read_to_string("/etc/veil/modules").unwrap_or_default();
    let mut n = 0;
    for line in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        finit_module(Path::new(line))?;
        n += 1;
    }
    Ok(n)
}

fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> Option<T>,
) -> Result<T, String> {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return Ok(v);
        }
        if start.elapsed() > timeout {
            return Err(format!(
                "{what} did not appear within {} s",
                timeout.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The MAC address of interface `name`, lowercase.
fn mac_of(name: &str) -> String {
    fs::read_to_string(Path::new("/sys/class/net").join(name).join("address"))
        .map(|s| s.trim().to_ascii_lowercase())
        .unwrap_or_default()
}

/// Configure the agent channel's NIC; return the workload NIC's name (the
/// one with [`workload_net::MAC`], or [`workload_net::JOIN_MAC`] for a tap
/// joined to a namespace the host was handed) when the host gave the VM
/// one, for the pod's network namespace to take over.
fn network() -> Result<Option<String>, String> {
    crate::net::if_up("lo", None)?;
    // Every virtio network device (virtio device id 1) has its interface.
    let virtio_nets = || {
        fs::read_dir("/sys/bus/virtio/devices")
            .map(|rd| {
                rd.flatten()
                    .filter(|e| {
                        fs::read_to_string(e.path().join("device"))
                            .is_ok_and(|d| d.trim() == "0x0001")
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    let all = wait_for(
        "the network interfaces (virtio-net)",
        Duration::from_secs(10),
        || {
            let mut v: Vec<String> = fs::read_dir("/sys/class/net")
                .ok()?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n != "lo")
                .collect();
            v.sort();
            (!v.is_empty() && v.len() >= virtio_nets()).then_some(v)
        },
    )?;
    let workload = all
        .iter()
        .find(|n| {
            let mac = mac_of(n);
            mac == workload_net::MAC || mac == workload_net::JOIN_MAC
        })
        .cloned();
    let agent_nic = all
        .iter()
        .find(|n| Some(*n) != workload.as_ref())
        .ok_or("no network interface for the agent channel")?;
    crate::net::if_up(agent_nic, Some((GUEST_IP, [255, 255, 255, 0])))?;
    Ok(workload)
}

fn sim_port() -> Result<fs::File, String> {
    let dev = wait_for(
        "the sim platform port (virtio-serial)",
        Duration::from_secs(10),
        || {
            fs::read_dir("/sys/class/virtio-ports")
                .ok()?
                .flatten()
                .find_map(|e| {
                    let name = fs::read_to_string(e.path().join("name")).ok()?;
                    (name.trim() == SIM_PORT_NAME).then(|| Path::new("/dev").join(e.file_name()))
                })
        },
    )?;
    let dev = wait_for("the sim port device node", Duration::from_secs(5), || {
        dev.exists().then(|| dev.clone())
    })?;
    fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&dev)
        .map_err(|e| format!("opening {}: {e}", dev.display()))
}

fn read_init_data() -> Result<Vec<u8>, String> {
    let p = Path::new(INIT_DATA_FW_CFG);
    wait_for(
        "init-data (fw_cfg opt/veil/init-data)",
        Duration::from_secs(5),
        || p.exists().then_some(()),
    )?;
    let max = veil_policy::initdata::MAX_INIT_DATA_BYTES;
    let mut out = Vec::new();
    fs::File::open(p)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut out))
        .map_err(|e| format!("reading init-data from fw_cfg: {e}"))?;
    if out.len() > max {
        return Err(format!("init-data from fw_cfg is larger than {max} bytes"));
    }
    Ok(out)
}

/// Unpack the OCI layout archive (tar: directories and regular files only)
/// from `src` into `dst`, refusing anything else and anything outside `dst`.
pub fn unpack_layout(src: impl Read, dst: &Path, max_bytes: u64) -> Result<u64, String> {
    let mut ar = tar::Archive::new(src);
    let mut total = 0u64;
    for e in ar
        .entries()
        .map_err(|e| format!("OCI layout archive: {e}"))?
    {
        let mut e = e.map_err(|e| format!("OCI layout archive: {e}"))?;
        let path = e
            .path()
            .map_err(|e| format!("OCI layout archive: {e}"))?
            .into_owned();
        if path
            .components()
            .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
        {
            return Err(format!(
                "OCI layout archive: entry {} escapes the layout",
                path.display()
            ));
        }
        let out = dst.join(&path);
        match e.header().entry_type() {
            tar::EntryType::Directory => {
                fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?
            }
            tar::EntryType::Regular => {
                total = total.saturating_add(e.size());
                if total > max_bytes {
                    return Err(format!(
                        "OCI layout archive is larger than {max_bytes} bytes"
                    ));
                }
                if let Some(p) = out.parent() {
                    fs::create_dir_all(p).map_err(|e| format!("{}: {e}", p.display()))?;
                }
                let mut f =
                    fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
                std::io::copy(&mut (&mut e).take(max_bytes), &mut f)
                    .map_err(|e| format!("{}: {e}", out.display()))?;
            }
            other => {
                return Err(format!(
                    "OCI layout archive: entry {} has type {other:?}; only directories and regular files are accepted",
                    path.display()
                ));
            }
        }
    }
    Ok(total)
}

/// The guest's view of host services (QEMU `guestfwd`).
pub const HOST_SERVICES_IP: [u8; 4] = [10, 0, 2, 100];

/// The loopback port of the KBS that init-data names, if it names one on
/// loopback (`http://127.0.0.1:PORT`, `localhost`): the host forwards it.
pub fn loopback_kbs_port(init_data: &[u8]) -> Option<u16> {
    let parsed = veil_policy::ParsedInitData::parse(init_data).ok()?;
    let (target, _) = crate::kbs::target_of(&parsed).ok()??;
    let rest = target.url.split_once("://")?.1;
    let hostport = rest.split('/').next()?;
    let (host, port) = hostport.rsplit_once(':')?;
    matches!(host, "127.0.0.1" | "localhost")
        .then(|| port.parse().ok())
        .flatten()
}

/// Serve `127.0.0.1:port` in the guest by relaying each connection to the
/// host's service at `10.0.2.100:port`, so init-data names the KBS exactly
/// as in the process sandbox.
pub fn forward_loopback(port: u16) -> Result<(), String> {
    use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
    let l = TcpListener::bind(("127.0.0.1", port))
        .map_err(|e| format!("binding 127.0.0.1:{port} for the KBS relay: {e}"))?;
    let host = SocketAddr::from((HOST_SERVICES_IP, port));
    std::thread::spawn(move || {
        for c in l.incoming().flatten() {
            std::thread::spawn(move || {
                let Ok(up) = TcpStream::connect_timeout(&host, Duration::from_secs(10)) else {
                    return;
                };
                let (Ok(mut c2), Ok(mut up2)) = (c.try_clone(), up.try_clone()) else {
                    return;
                };
                let t = std::thread::spawn(move || {
                    let _ = std::io::copy(&mut c2, &mut up2);
                    let _ = up2.shutdown(Shutdown::Write);
                });
                let (mut up, mut c) = (up, c);
                let _ = std::io::copy(&mut up, &mut c);
                let _ = c.shutdown(Shutdown::Both);
                let _ = t.join();
            });
        }
    });
    Ok(())
}

/// The value of `key=` on the kernel command line.
pub fn cmdline_value(cmdline: &str, key: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
}

fn veil_agent_guest_root() -> &'static str {
    crate::guest::GUEST_PREFIX
}

/// Stage 2: set the guest up for the agent.
pub fn setup() -> Result<VmSetup, String> {
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mnt("proc", "/proc", "proc", nosuid, None)?;
    mnt("sysfs", "/sys", "sysfs", nosuid, None)?;
    mnt(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    )?;
    mnt(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=620"),
    )?;
    mnt(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    mnt("cgroup2", "/sys/fs/cgroup", "cgroup2", nosuid, None)?;
    let _ = mnt("configfs", "/sys/kernel/config", "configfs", nosuid, None);
    mnt(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )?;
    mnt(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=1777"),
    )?;
    // The kernel's share of the boot time, for the host's phase breakdown.
    let uptime = fs::read_to_string("/proc/uptime").unwrap_or_default();
    let up_ms = uptime
        .split_whitespace()
        .next()
        .and_then(|u| u.parse::<f64>().ok())
        .map(|u| (u * 1000.0) as u64)
        .unwrap_or(0);
    console(&format!("PID 1 started at kernel uptime {up_ms} ms"));
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let tee = cmdline_value(&cmdline, "veil.tee").unwrap_or_default();
    let n = load_modules()?;
    console(&format!("PID 1: {n} kernel modules loaded, tee {tee:?}"));
    let workload_nic = network()?;
    match &workload_nic {
        Some(n) => console(&format!("workload NIC {n}: for the pod's network")),
        None => console("no workload NIC: pods get loopback only"),
    }
    if workload_nic.is_some() {
        // The agent's own pull from a registry by name (see `registry`)
        // resolves it through QEMU's DNS relay on the workload network.
        let [a, b, c, d] = workload_net::DNS;
        if let Err(e) = fs::write("/etc/resolv.conf", format!("nameserver {a}.{b}.{c}.{d}\n")) {
            console(&format!("cannot write /etc/resolv.conf: {e}"));
        }
    }
    let _ = nix::unistd::sethostname("veil-guest");
    fs::create_dir_all(veil_agent_guest_root()).map_err(|e| format!("/run/veil: {e}"))?;
    let boot_dir = Path::new("/run/veil-boot");
    fs::create_dir_all(boot_dir).map_err(|e| format!("{}: {e}", boot_dir.display()))?;
    let init_data = boot_dir.join("init-data.toml");
    let bytes = read_init_data()?;
    match loopback_kbs_port(&bytes) {
        Some(port) => {
            forward_loopback(port)?;
            console(&format!("KBS on loopback port {port}: relayed to the host"));
        }
        None => console("init-data names no KBS on loopback"),
    }
    fs::write(&init_data, bytes).map_err(|e| format!("{}: {e}", init_data.display()))?;
    let platform = if tee == "sim" {
        Some(sim_port()?)
    } else {
        None
    };
    // The encrypted scratch disk, before anything large is unpacked.
    match crate::scratch::open_announced(Path::new(SCRATCH_FW_CFG_PATH))? {
        Some(line) => console(&line),
        None => console("no scratch disk announced: emptyDirs and container layers in guest RAM"),
    }
    // The layout disk has no serial; /dev/vda with one (a volume or the
    // scratch disk, when the host attached no layout) is not it.
    let layout_disk = Path::new(OCI_DISK).exists()
        && !fs::read_to_string("/sys/block/vda/serial")
            .is_ok_and(|s| s.trim().starts_with("veil-"));
    let oci_layout = if layout_disk {
        let dst = crate::scratch::dir(Path::new("oci"))?
            .unwrap_or_else(|| PathBuf::from("/run/veil-oci"));
        let dst = dst.as_path();
        fs::create_dir_all(dst).map_err(|e| format!("{}: {e}", dst.display()))?;
        let disk = fs::File::open(OCI_DISK).map_err(|e| format!("{OCI_DISK}: {e}"))?;
        let n = unpack_layout(std::io::BufReader::new(disk), dst, MAX_OCI_BYTES)?;
        console(&format!("OCI layout: {n} bytes from the read-only disk"));
        Some(dst.to_path_buf())
    } else {
        None
    };
    Ok(VmSetup {
        tee,
        init_data,
        platform,
        oci_layout,
        workload_nic,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cmdline_values() {
        let c = "console=ttyS0 veil.tee=sim quiet";
        assert_eq!(cmdline_value(c, "veil.tee").as_deref(), Some("sim"));
        assert_eq!(cmdline_value(c, "veil.te"), None);
    }

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, t, d) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.as_gnu_mut().unwrap().name[..p.len()].copy_from_slice(p.as_bytes());
            h.set_cksum();
            b.append(&h, *d).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layout_archive_unpacks_files_and_refuses_escapes_and_links() {
        let d = tempfile::tempdir().unwrap();
        let ok = tar_of(&[
            ("blobs/", tar::EntryType::Directory, b""),
            ("blobs/sha256/x", tar::EntryType::Regular, b"hi"),
        ]);
        assert_eq!(unpack_layout(ok.as_slice(), d.path(), 100).unwrap(), 2);
        assert_eq!(fs::read(d.path().join("blobs/sha256/x")).unwrap(), b"hi");
        let esc = tar_of(&[("../x", tar::EntryType::Regular, b"hi")]);
        assert!(
            unpack_layout(esc.as_slice(), d.path(), 100)
                .unwrap_err()
                .contains("escapes")
        );
        let link = tar_of(&[("l", tar::EntryType::Symlink, b"")]);
        assert!(
            unpack_layout(link.as_slice(), d.path(), 100)
                .unwrap_err()
                .contains("only directories")
        );
        let big = tar_of(&[("b", tar::EntryType::Regular, &[0u8; 200])]);
        assert!(
            unpack_layout(big.as_slice(), d.path(), 100)
                .unwrap_err()
                .contains("larger")
        );
    }

    proptest! {
        #[test]
        fn arbitrary_archives_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let d = tempfile::tempdir().unwrap();
            let _ = unpack_layout(bytes.as_slice(), d.path(), 1 << 20);
        }
    }
}
