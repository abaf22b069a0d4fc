//! Where things live inside the guest.
//!
//! Guest paths are written as in a VM (`/run/veil/...`); in the process
//! sandbox the agent's tmpfs is mounted at another directory (`--guest-root`)
//! and [`GuestPaths::resolve`] maps `/run/veil/…` onto it. Only paths under
//! `/run/veil` are reachable this way.

use std::path::{Path, PathBuf};

/// The guest prefix of everything the agent owns.
pub const GUEST_PREFIX: &str = "/run/veil";

/// The agent's directories.
#[derive(Debug, Clone)]
pub struct GuestPaths {
    root: PathBuf,
}

impl GuestPaths {
    /// Paths under `root` (the agent's tmpfs).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        GuestPaths { root: root.into() }
    }

    /// The tmpfs root (`/run/veil` in a VM).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Secrets (`/run/veil/secrets`).
    pub fn secrets(&self) -> PathBuf {
        self.root.join("secrets")
    }

    /// The workload API socket.
    pub fn api_socket(&self) -> PathBuf {
        self.root.join("api.sock")
    }

    /// One sandbox's files (hostname, hosts, resolv.conf).
    pub fn sandbox(&self, id: &str) -> PathBuf {
        self.root.join("sandbox").join(id)
    }

    /// The containers' files (on the encrypted scratch disk when the VM has one).
    pub fn containers(&self) -> PathBuf {
        self.root.join("containers")
    }

    /// One container's files (rootfs, launch spec).
    pub fn container(&self, id: &str) -> PathBuf {
        self.containers().join(id)
    }

    /// Map a guest path (`/run/veil/...`) to the agent's view; `None` for
    /// anything else or anything with `.`/`..` components.
    pub fn resolve(&self, guest: &str) -> Option<PathBuf> {
        let rest = guest.strip_prefix(GUEST_PREFIX)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let rest = rest.trim_start_matches('/');
        if rest.split('/').any(|c| c == "." || c == "..") {
            return None;
        }
        Some(if rest.is_empty() {
            self.root.clone()
        } else {
            self.root.join(rest)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_run_veil_paths_resolve() {
        let g = GuestPaths::new("/tmp/x/guest");
        assert_eq!(
            g.resolve("/run/veil/sandbox/s1/hostname").unwrap(),
            PathBuf::from("/tmp/x/guest/sandbox/s1/hostname")
        );
        assert!(g.resolve("/run/veilx/a").is_none());
        assert!(g.resolve("/etc/passwd").is_none());
        assert!(g.resolve("/run/veil/../etc").is_none());
    }
}
