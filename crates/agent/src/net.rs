//! The pod's network namespace, inside the sandbox: one namespace that every
//! container of the pod joins (as in Kubernetes), instead of one each.
//!
//! The process sandbox's host hands the agent a namespace it configured
//! with CNI (`--pod-netns`). Otherwise (a VM, or a process sandbox without
//! root, where the host cannot make one) the agent makes its own: a thread
//! unshares `CLONE_NEWNET`, brings `lo` up and stays parked, so the
//! namespace lives as long as the agent and is reachable at
//! `/proc/<agent>/task/<thread>/ns/net`. The agent itself stays where it
//! was: its channel to the host and the KBS is not the workload's network.

use std::path::PathBuf;

/// Where the pod's network namespace is.
#[derive(Debug, Clone)]
pub struct PodNetns {
    /// The namespace file containers join.
    pub path: PathBuf,
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
        Ok(PodNetns { path })
    }

    /// A new namespace with loopback only, held by a parked thread.
    pub fn create() -> Result<Self, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("pod-netns".into())
            .spawn(move || {
                let r: Result<PathBuf, String> = (|| {
                    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(|e| format!("unshare(CLONE_NEWNET): {e}"))?;
                    loopback_up()?;
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
        Ok(PodNetns { path })
    }
}

/// Bring `lo` up in the calling thread's network namespace.
fn loopback_up() -> Result<(), String> {
    // SAFETY: plain socket/ioctl calls on a zeroed ifreq we own.
    unsafe {
        let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if s < 0 {
            return Err(format!("socket: {}", std::io::Error::last_os_error()));
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, s) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        let r = if libc::ioctl(s, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            Err(format!(
                "SIOCGIFFLAGS lo: {}",
                std::io::Error::last_os_error()
            ))
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            if libc::ioctl(s, libc::SIOCSIFFLAGS, &ifr) < 0 {
                Err(format!(
                    "SIOCSIFFLAGS lo up: {}",
                    std::io::Error::last_os_error()
                ))
            } else {
                Ok(())
            }
        };
        libc::close(s);
        r
    }
}
