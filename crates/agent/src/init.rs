//! The container launcher: `veil-agent init SPEC` (a re-exec of the agent
//! binary), in the spirit of runc's init but small enough to read.
//!
//! For a new container it creates mount, UTS, IPC, PID, network and cgroup
//! namespaces, forks (the child is PID 1 of the new PID namespace), builds
//! the root filesystem view (the requested mounts, /dev nodes, the secrets
//! tmpfs and the local API socket), `pivot_root`s into the image's rootfs,
//! optionally remounts it read-only, switches to the image/policy user,
//! sets the capability sets, `no_new_privs` and the default seccomp filter,
//! and `exec`s the workload. For an exec it joins a running container's
//! namespaces instead. The parent stays to relay the exit status.
//!
//! Failures before `exec` are written to the status pipe (fd 3) so the agent
//! can tell "could not start" from "started and exited"; the pipe closes on
//! a successful `exec` (close-on-exec).

use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{ForkResult, Gid, Uid, chdir, fork, pivot_root, sethostname};
use serde::{Deserialize, Serialize};

/// fd on which the launcher reports a failure before exec.
pub const STATUS_FD: i32 = 3;

/// One mount in the container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Absolute path inside the container.
    pub destination: String,
    /// Filesystem type (`proc`, `tmpfs`, `devpts`, `mqueue`, `sysfs`) or `bind`.
    pub fs_type: String,
    /// For `bind`: the agent-side path; otherwise the device name.
    pub source: String,
    /// Mount options (`ro`, `nosuid`, `nodev`, `noexec`, `rbind`, data options).
    pub options: Vec<String>,
}

/// Capability sets by name (`CAP_…`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapSets {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

/// Everything the launcher needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitSpec {
    /// The unpacked root filesystem (new containers).
    pub rootfs: PathBuf,
    /// Join the namespaces of this container's launcher (agent-namespace PID)
    /// instead of creating new ones.
    #[serde(default)]
    pub exec_into: Option<u32>,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
    pub capabilities: CapSets,
    pub no_new_privileges: bool,
    pub read_only_rootfs: bool,
    pub hostname: String,
    pub mounts: Vec<MountSpec>,
    /// Namespaced sysctls set in the container's namespaces (the pod's
    /// `securityContext.sysctls`, as the policy pins them).
    #[serde(default)]
    pub sysctls: std::collections::BTreeMap<String, String>,
    /// Install the default seccomp filter.
    pub seccomp: bool,
    /// Join this network namespace (the pod's, shared by its containers)
    /// instead of creating one.
    #[serde(default)]
    pub netns: Option<PathBuf>,
    /// Run the workload on a terminal made in the container; its master
    /// goes to the agent on [`crate::tty::CONSOLE_FD`].
    #[serde(default)]
    pub terminal: bool,
    /// The terminal's initial (rows, cols).
    #[serde(default)]
    pub console_size: Option<(u16, u16)>,
}

fn fail(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Entry point of `veil-agent init SPEC`. Never returns on success in the
/// child (it execs); the parent exits with the child's status.
pub fn main(spec_path: &Path) -> i32 {
    let spec: InitSpec = match fs::read(spec_path)
        .map_err(|e| fail("reading the launch spec", e))
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| fail("parsing the launch spec", e)))
    {
        Ok(s) => s,
        Err(e) => return report(&e),
    };
    if let Err(e) = enter_namespaces(&spec) {
        return report(&e);
    }
    // SAFETY: single-threaded process (the launcher starts no threads).
    match unsafe { fork() } {
        Err(e) => report(&fail("fork", e)),
        Ok(ForkResult::Child) => {
            let e = child(&spec).unwrap_err();
            report(&e);
            // SAFETY: exiting the forked child without running destructors.
            unsafe { libc::_exit(127) }
        }
        Ok(ForkResult::Parent { child }) => {
            // Our copies of the status pipe (and console socket) must not keep them open.
            // SAFETY: closing fds we own.
            unsafe { libc::close(STATUS_FD) };
            if spec.terminal {
                // SAFETY: as above.
                unsafe { libc::close(crate::tty::CONSOLE_FD) };
            }
            loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => return code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
                    Ok(_) => continue,
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(_) => return 127,
                }
            }
        }
    }
}

/// Write the error to the status pipe (and stderr) and return 127.
fn report(msg: &str) -> i32 {
    // SAFETY: STATUS_FD was handed to us by the agent; we only write to it.
    let mut f = unsafe { fs::File::from_raw_fd(STATUS_FD) };
    let _ = f.write_all(msg.as_bytes());
    std::mem::forget(f);
    let _ = writeln!(std::io::stderr(), "veil-agent init: {msg}");
    127
}

fn enter_namespaces(spec: &InitSpec) -> Result<(), String> {
    match spec.exec_into {
        None => {
            let flags = CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWCGROUP;
            match &spec.netns {
                Some(p) => {
                    let ns = fs::File::open(p)
                        .map_err(|e| fail(&format!("opening the pod netns {}", p.display()), e))?;
                    setns(&ns, CloneFlags::CLONE_NEWNET)
                        .map_err(|e| fail("joining the pod's network namespace", e))?;
                    unshare(flags).map_err(|e| fail("creating namespaces", e))
                }
                None => unshare(flags | CloneFlags::CLONE_NEWNET)
                    .map_err(|e| fail("creating namespaces", e)),
            }
        }
        Some(pid) => {
            // Open every namespace first: after joining the mount namespace
            // /proc may look different.
            let mut fds: Vec<(OwnedFd, CloneFlags)> = Vec::new();
            for (name, flag) in [
                ("ipc", CloneFlags::CLONE_NEWIPC),
                ("uts", CloneFlags::CLONE_NEWUTS),
                ("net", CloneFlags::CLONE_NEWNET),
                ("cgroup", CloneFlags::CLONE_NEWCGROUP),
                // The launcher itself stays outside the PID namespace it created.
                ("pid_for_children", CloneFlags::CLONE_NEWPID),
                ("mnt", CloneFlags::CLONE_NEWNS),
            ] {
                let p = format!("/proc/{pid}/ns/{name}");
                let f = fs::File::open(&p).map_err(|e| fail(&format!("opening {p}"), e))?;
                fds.push((f.into(), flag));
            }
            for (fd, flag) in fds {
                setns(&fd, flag)
                    .map_err(|e| fail(&format!("joining the container's {flag:?} namespace"), e))?;
            }
            Ok(())
        }
    }
}

fn child(spec: &InitSpec) -> Result<(), String> {
    // SAFETY: plain prctl; die with the launcher.
    unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    // The status pipe closes on exec.
    // SAFETY: fcntl on our own fd.
    unsafe { libc::fcntl(STATUS_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    if spec.exec_into.is_none() {
        apply_sysctls(&spec.sysctls)?;
        setup_rootfs(spec)?;
        if !spec.hostname.is_empty() {
            sethostname(&spec.hostname).map_err(|e| fail("sethostname", e))?;
        }
    } else {
        chdir("/").map_err(|e| fail("chdir /", e))?;
    }
    if spec.terminal {
        // In the container's root, while still privileged (fchown).
        crate::tty::attach_new_terminal(spec.uid, spec.gid, spec.console_size)?;
    }
    // Resolve the program before dropping privileges (the PATH search reads the rootfs).
    let program = resolve_program(&spec.args[0], &spec.env, &spec.cwd)?;
    if spec.seccomp && !spec.no_new_privileges {
        // Without no_new_privs the filter must go in while we still hold CAP_SYS_ADMIN.
        crate::seccomp::install().map_err(|e| fail("installing the seccomp filter", e))?;
    }
    switch_user(spec)?;
    if spec.no_new_privileges {
        // SAFETY: plain prctl.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(fail("no_new_privs", std::io::Error::last_os_error()));
        }
        if spec.seccomp {
            crate::seccomp::install().map_err(|e| fail("installing the seccomp filter", e))?;
        }
    }
    chdir(spec.cwd.as_str()).map_err(|e| fail(&format!("chdir {}", spec.cwd), e))?;
    let argv: Vec<CString> = spec
        .args
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| "NUL in argv".to_string()))
        .collect::<Result<_, _>>()?;
    let envp: Vec<CString> = spec
        .env
        .iter()
        .map(|a| CString::new(a.as_bytes()).map_err(|_| "NUL in env".to_string()))
        .collect::<Result<_, _>>()?;
    reset_signals()?;
    // Last step before exec: no descriptor but stdio reaches the workload
    // (the status pipe closes on exec, and so does anything inherited).
    veil_fds::cloexec_all_but(None).map_err(|e| fail("marking descriptors close-on-exec", e))?;
    let e = nix::unistd::execve(&program, &argv, &envp).unwrap_err();
    Err(fail(&format!("exec {}", program.to_string_lossy()), e))
}

/// The workload starts with default signal handling, as under runc: the
/// agent (a Rust program) ignores SIGPIPE and blocks SIGTERM/SIGINT for its
/// signal thread, and exec keeps ignored signals and the mask. A workload
/// that inherited them would not die writing to a closed pipe (`yes | head`
/// spins forever) nor on `veil stop`'s SIGTERM.
fn reset_signals() -> Result<(), String> {
    use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
    for sig in [Signal::SIGPIPE, Signal::SIGXFSZ] {
        // SAFETY: installing the default disposition (no handler code runs).
        unsafe { nix::sys::signal::signal(sig, SigHandler::SigDfl) }
            .map_err(|e| fail(&format!("resetting {sig}"), e))?;
    }
    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| fail("unblocking signals", e))
}

/// Find `arg0` in the container's PATH (from its env), as execvp would.
fn resolve_program(arg0: &str, env: &[String], cwd: &str) -> Result<CString, String> {
    let to_c = |p: &str| CString::new(p).map_err(|_| "NUL in program path".to_string());
    if arg0.contains('/') {
        let full = if arg0.starts_with('/') {
            arg0.to_string()
        } else {
            format!("{}/{arg0}", cwd.trim_end_matches('/'))
        };
        return to_c(&full);
    }
    let path = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for dir in path.split(':').filter(|d| !d.is_empty()) {
        let cand = format!("{}/{arg0}", dir.trim_end_matches('/'));
        if let Ok(m) = fs::metadata(&cand) {
            use std::os::unix::fs::PermissionsExt;
            if m.is_file() && m.permissions().mode() & 0o111 != 0 {
                return to_c(&cand);
            }
        }
    }
    Err(format!(
        "{arg0:?}: executable not found in the container's PATH ({path})"
    ))
}

fn flags_and_data(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "rprivate" | "private" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data.join(","))
}

/// A path inside `root`, refusing `..` and relative destinations.
fn inside(root: &Path, dest: &str) -> Result<PathBuf, String> {
    if !dest.starts_with('/') || dest.split('/').any(|c| c == "..") {
        return Err(format!(
            "mount destination {dest:?} must be absolute without .."
        ));
    }
    Ok(root.join(dest.trim_start_matches('/')))
}

/// Create a mount point inside the rootfs without following symlinks out of it.
fn make_mountpoint(root: &Path, target: &Path, file: bool) -> Result<(), String> {
    let rel = target
        .strip_prefix(root)
        .map_err(|_| "mount point outside the rootfs".to_string())?;
    let mut cur = root.to_path_buf();
    let comps: Vec<_> = rel.components().collect();
    for (i, c) in comps.iter().enumerate() {
        cur.push(c);
        match fs::symlink_metadata(&cur) {
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "mount point {} is a symlink inside the image; refusing to follow it",
                    cur.display()
                ));
            }
            Ok(_) => {}
            Err(_) if i + 1 == comps.len() && file => {
                fs::write(&cur, b"")
                    .map_err(|e| fail(&format!("creating {}", cur.display()), e))?;
            }
            Err(_) => {
                fs::create_dir(&cur).map_err(|e| fail(&format!("creating {}", cur.display()), e))?
            }
        }
    }
    Ok(())
}

/// Write each sysctl through /proc/sys, after the namespaces are entered
/// (so they apply to the container's network and IPC namespaces only).
fn apply_sysctls(sysctls: &std::collections::BTreeMap<String, String>) -> Result<(), String> {
    for (name, value) in sysctls {
        if !veil_policy::model::namespaced_sysctl(name) {
            return Err(format!(
                "sysctl {name}: not a namespaced sysctl (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*); it would change the whole guest"
            ));
        }
        let path = format!("/proc/sys/{}", name.replace('.', "/"));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| fail(&format!("sysctl {name}: opening {path}"), e))?;
        f.write_all(value.as_bytes())
            .map_err(|e| fail(&format!("sysctl {name}={value}"), e))?;
    }
    Ok(())
}

const DEV_NODES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];
const MASKED: [&str; 5] = [
    "/proc/kcore",
    "/proc/keys",
    "/proc/timer_list",
    "/proc/sched_debug",
    "/proc/acpi",
];
const READONLY: [&str; 5] = [
    "/proc/sys",
    "/proc/sysrq-trigger",
    "/proc/irq",
    "/proc/bus",
    "/proc/fs",
];

fn setup_rootfs(spec: &InitSpec) -> Result<(), String> {
    let root = spec.rootfs.as_path();
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| fail("making / private", e))?;
    mount(
        Some(root),
        root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| fail("bind-mounting the rootfs", e))?;
    let mut dev_done = false;
    for m in &spec.mounts {
        let target = inside(root, &m.destination)?;
        let (mut flags, data) = flags_and_data(&m.options);
        if m.fs_type == "bind" {
            let src = Path::new(&m.source);
            make_mountpoint(root, &target, !src.is_dir())?;
            let ro = flags.contains(MsFlags::MS_RDONLY);
            flags |= MsFlags::MS_BIND;
            mount(Some(src), &target, None::<&str>, flags, None::<&str>).map_err(|e| {
                fail(
                    &format!("bind-mounting {} on {}", m.source, m.destination),
                    e,
                )
            })?;
            if ro {
                mount(
                    None::<&str>,
                    &target,
                    None::<&str>,
                    MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
                .map_err(|e| fail(&format!("making {} read-only", m.destination), e))?;
            }
        } else {
            make_mountpoint(root, &target, false)?;
            let data = if data.is_empty() {
                None
            } else {
                Some(data.as_str())
            };
            mount(
                Some(m.source.as_str()),
                &target,
                Some(m.fs_type.as_str()),
                flags,
                data,
            )
            .map_err(|e| {
                fail(
                    &format!("mounting {} ({}) on {}", m.source, m.fs_type, m.destination),
                    e,
                )
            })?;
        }
        if m.destination == "/dev" {
            dev_done = true;
            for n in DEV_NODES {
                let t = target.join(n);
                fs::write(&t, b"").map_err(|e| fail(&format!("creating /dev/{n}"), e))?;
                let src = format!("/dev/{n}");
                mount(
                    Some(src.as_str()),
                    &t,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )
                .map_err(|e| fail(&format!("binding {src}"), e))?;
            }
            for (l, t) in [
                ("fd", "/proc/self/fd"),
                ("stdin", "/proc/self/fd/0"),
                ("stdout", "/proc/self/fd/1"),
                ("stderr", "/proc/self/fd/2"),
                ("ptmx", "pts/ptmx"),
            ] {
                let _ = std::os::unix::fs::symlink(t, target.join(l));
            }
        }
    }
    if !dev_done {
        return Err("the container has no /dev mount".into());
    }
    for p in MASKED {
        let t = inside(root, p)?;
        if t.is_dir() {
            let _ = mount(
                Some("tmpfs"),
                &t,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            );
        } else if t.exists() {
            let _ = mount(
                Some("/dev/null"),
                &t,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            );
        }
    }
    for p in READONLY {
        let t = inside(root, p)?;
        if t.exists()
            && mount(
                Some(&t),
                &t,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .is_ok()
        {
            let _ = mount(
                None::<&str>,
                &t,
                None::<&str>,
                MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
                None::<&str>,
            );
        }
    }
    chdir(root).map_err(|e| fail("chdir rootfs", e))?;
    pivot_root(".", ".").map_err(|e| fail("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detaching the old root", e))?;
    chdir("/").map_err(|e| fail("chdir /", e))?;
    if spec.read_only_rootfs {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| fail("remounting the rootfs read-only", e))?;
    }
    Ok(())
}

fn cap_set(names: &[String]) -> Result<caps::CapsHashSet, String> {
    names
        .iter()
        .map(|n| {
            n.parse::<caps::Capability>()
                .map_err(|_| format!("unknown capability {n:?}"))
        })
        .collect()
}

fn switch_user(spec: &InitSpec) -> Result<(), String> {
    use caps::CapSet;
    let c = &spec.capabilities;
    let bounding = cap_set(&c.bounding)?;
    for cap in caps::all() {
        if !bounding.contains(&cap) {
            // Capabilities the kernel does not know are skipped.
            let _ = caps::drop(None, CapSet::Bounding, cap);
        }
    }
    // SAFETY: plain prctl: keep permitted caps across the uid change.
    unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    let groups: Vec<Gid> = spec
        .additional_gids
        .iter()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| fail("setgroups", e))?;
    let gid = Gid::from_raw(spec.gid);
    nix::unistd::setresgid(gid, gid, gid).map_err(|e| fail(&format!("setgid {}", spec.gid), e))?;
    let uid = Uid::from_raw(spec.uid);
    nix::unistd::setresuid(uid, uid, uid).map_err(|e| fail(&format!("setuid {}", spec.uid), e))?;
    let permitted = cap_set(&c.permitted)?;
    let effective = cap_set(&c.effective)?;
    let inheritable = cap_set(&c.inheritable)?;
    // Order matters to the kernel: the effective set must stay a subset of
    // the permitted one at every step (a uid-0 process keeps its full
    // effective set across setresuid), and the inheritable set may only be
    // raised while the capabilities are still permitted.
    caps::set(None, CapSet::Effective, &effective)
        .map_err(|e| fail("setting effective capabilities", e))?;
    caps::set(None, CapSet::Inheritable, &inheritable)
        .map_err(|e| fail("setting inheritable capabilities", e))?;
    caps::set(None, CapSet::Permitted, &permitted)
        .map_err(|e| fail("setting permitted capabilities", e))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| fail("clearing ambient capabilities", e))?;
    let ambient: HashSet<_> = cap_set(&c.ambient)?;
    for cap in ambient {
        caps::raise(None, CapSet::Ambient, cap)
            .map_err(|e| fail(&format!("raising ambient {cap}"), e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workload_gets_default_signal_handling() {
        use nix::sys::signal::{SigHandler, SigSet, SigmaskHow, Signal, sigprocmask};
        // In a child process: the test harness's own dispositions stay.
        // SAFETY: the child only makes syscalls and exits.
        match unsafe { fork() }.unwrap() {
            ForkResult::Child => {
                let ok = (|| {
                    unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigIgn) }
                        .ok()?;
                    let mut set = SigSet::empty();
                    set.add(Signal::SIGTERM);
                    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), None).ok()?;
                    reset_signals().ok()?;
                    let old =
                        unsafe { nix::sys::signal::signal(Signal::SIGPIPE, SigHandler::SigDfl) }
                            .ok()?;
                    let mut now = SigSet::empty();
                    sigprocmask(SigmaskHow::SIG_BLOCK, None, Some(&mut now)).ok()?;
                    (matches!(old, SigHandler::SigDfl) && !now.contains(Signal::SIGTERM))
                        .then_some(())
                })();
                unsafe { libc::_exit(if ok.is_some() { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => {
                assert_eq!(waitpid(child, None).unwrap(), WaitStatus::Exited(child, 0));
            }
        }
    }

    #[test]
    fn mount_options_split_into_flags_and_data() {
        let (f, d) = flags_and_data(&[
            "nosuid".into(),
            "mode=755".into(),
            "ro".into(),
            "size=65536k".into(),
        ]);
        assert!(f.contains(MsFlags::MS_NOSUID | MsFlags::MS_RDONLY));
        assert_eq!(d, "mode=755,size=65536k");
    }

    #[test]
    fn destinations_stay_inside_the_rootfs() {
        assert_eq!(
            inside(Path::new("/r"), "/etc/hosts").unwrap(),
            PathBuf::from("/r/etc/hosts")
        );
        assert!(inside(Path::new("/r"), "/../etc").is_err());
        assert!(inside(Path::new("/r"), "etc").is_err());
    }

    #[test]
    fn mountpoints_refuse_symlinks_in_the_image() {
        let d = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc", d.path().join("evil")).unwrap();
        let e = make_mountpoint(d.path(), &d.path().join("evil/x"), true).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        make_mountpoint(d.path(), &d.path().join("a/b/c"), true).unwrap();
        assert!(d.path().join("a/b/c").is_file());
    }
}
