//! `veil guest build`: the guest kernel + initrd pair the VM sandbox boots.
//!
//! The kernel is Debian's `linux-image-amd64` as installed on this host
//! (`/boot/vmlinuz-<version>`, modules in `/lib/modules/<version>`). The
//! initrd is an uncompressed newc cpio written by [`super::cpio`]:
//! `veil-agent` as `/init` (stripped of debug info when `strip` exists), the
//! shared libraries `ldd` names for it, the kernel modules the agent loads
//! ([`MODULES`] and their dependencies from `modules.dep`, listed in load
//! order in `/etc/veil/modules`), Debian's `cryptsetup` and `mke2fs` for
//! encrypted volumes ([`TOOLS`], with their shared libraries; see
//! docs/storage.md), `/dev/console` and the empty mount points. Nothing else. Every entry has mtime 0 and uid/gid 0 and entries are
//! sorted, so the same inputs give the same bytes: the initrd's digest is
//! part of the launch measurement.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use super::cpio::{Archive, CpioError, Node};
use crate::measure::file_sha384;

/// Kernel modules the agent needs (dependencies are added).
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_net",
    "virtio_console",
    "virtio_blk",
    "qemu_fw_cfg",
    "overlay",
    "dm_verity",
    "dm_crypt",
    // Encrypted volumes (docs/storage.md): dm-integrity under dm-crypt
    // (LUKS2 authenticated encryption: aes-xts + hmac-sha256 via authenc),
    // ext4 on top; crc32c for ext4's metadata checksums.
    "dm_integrity",
    "ecb",
    "xts",
    "authenc",
    "crc32c_generic",
    "ext4",
];

/// Programs of the host copied into the initrd (with their shared
/// libraries): the agent runs them to open and format encrypted volumes.
/// Guest path = host path. See docs/storage.md for why these two.
pub const TOOLS: &[&str] = &["/usr/sbin/cryptsetup", "/usr/sbin/mke2fs"];

/// Where the initrd lists the modules to load, in order.
pub const MODULE_LIST: &str = "etc/veil/modules";

/// Errors building a guest image.
#[derive(Debug, thiserror::Error)]
pub enum GuestError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("no kernel found: {0}")]
    NoKernel(String),
    #[error("kernel module {module}: {reason}")]
    Module { module: String, reason: String },
    #[error("the agent's shared libraries (ldd {agent}): {reason}")]
    Ldd { agent: String, reason: String },
    #[error("initrd: {0}")]
    Cpio(#[from] CpioError),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> GuestError {
    let context = context.into();
    move |source| GuestError::Io { context, source }
}

/// What to build from.
#[derive(Debug, Clone)]
pub struct GuestBuildConfig {
    /// The `veil-agent` binary.
    pub agent: PathBuf,
    /// The kernel (`vmlinuz-<version>`); default: the newest in `/boot`
    /// that has modules.
    pub kernel: Option<PathBuf>,
    /// The modules dir; default `/lib/modules/<version>`.
    pub modules_dir: Option<PathBuf>,
}

/// A built guest image (also written as `guest.json` next to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub kernel_version: String,
    /// Hex SHA-384 of the kernel file.
    pub kernel_sha384: String,
    /// Hex SHA-384 of the initrd file.
    pub initrd_sha384: String,
    /// Hex SHA-384 of the agent binary it was built from.
    pub agent_sha384: String,
    /// Modules in load order.
    pub modules: Vec<String>,
    /// Programs copied into the initrd ([`TOOLS`]).
    #[serde(default)]
    pub tools: Vec<String>,
    /// The uncompressed kernel extracted from `kernel` for PVH boot
    /// ([`super::pvh`]), which the sim and none VM sandboxes boot.
    #[serde(default)]
    pub pvh_kernel: Option<PathBuf>,
    /// Hex SHA-384 of `pvh_kernel`.
    #[serde(default)]
    pub pvh_kernel_sha384: Option<String>,
    /// Why there is no `pvh_kernel` (the bzImage is booted instead).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvh_unavailable: Option<String>,
}

impl GuestImage {
    /// The kernel a VM sandbox with `tee` boots, and its hex SHA-384: the
    /// PVH `vmlinux` for `sim` and `none` when there is one (seconds faster
    /// under TCG); the bzImage otherwise, and always for SNP and TDX, whose
    /// firmware loads and measures it.
    pub fn boot_kernel(&self, tee: &str) -> (&Path, &str) {
        match (&self.pvh_kernel, &self.pvh_kernel_sha384, tee) {
            (Some(k), Some(h), "sim" | "none") => (k, h),
            _ => (&self.kernel, &self.kernel_sha384),
        }
    }
}

/// The version part of `vmlinuz-<version>`.
fn version_of(kernel: &Path) -> Option<String> {
    kernel
        .file_name()?
        .to_str()?
        .strip_prefix("vmlinuz-")
        .map(str::to_string)
}

/// The newest `/boot/vmlinuz-*` with a `/lib/modules/<version>` dir.
pub fn default_kernel() -> Result<PathBuf, GuestError> {
    let mut found: Vec<(Vec<u64>, PathBuf)> = Vec::new();
    let rd = std::fs::read_dir("/boot").map_err(|e| {
        GuestError::NoKernel(format!(
            "reading /boot: {e}; install Debian's linux-image-amd64 (scripts/install-deps.sh)"
        ))
    })?;
    for e in rd.flatten() {
        let p = e.path();
        if let Some(v) = version_of(&p) {
            if Path::new("/lib/modules").join(&v).is_dir() {
                let key = v
                    .split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse().ok())
                    .collect();
                found.push((key, p));
            }
        }
    }
    found.sort();
    found.pop().map(|(_, p)| p).ok_or_else(|| {
        GuestError::NoKernel(
            "no /boot/vmlinuz-<version> with /lib/modules/<version>; install Debian's linux-image-amd64 (scripts/install-deps.sh) or pass --kernel"
                .into(),
        )
    })
}

/// Parse `modules.dep` into name → (path, deps by path).
fn parse_modules_dep(text: &str) -> BTreeMap<String, (String, Vec<String>)> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        let Some((path, deps)) = line.split_once(':') else {
            continue;
        };
        let name = module_name(path);
        m.insert(
            name,
            (
                path.trim().to_string(),
                deps.split_whitespace().map(str::to_string).collect(),
            ),
        );
    }
    m
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The modules to load for `wanted`, dependencies first.
pub fn module_order(modules_dep: &str, wanted: &[&str]) -> Result<Vec<String>, GuestError> {
    let dep = parse_modules_dep(modules_dep);
    let by_path: BTreeMap<&str, &Vec<String>> =
        dep.values().map(|(p, d)| (p.as_str(), d)).collect();
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        path: &str,
        by_path: &BTreeMap<&str, &Vec<String>>,
        seen: &mut BTreeSet<String>,
        order: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), GuestError> {
        if depth > 64 {
            return Err(GuestError::Module {
                module: path.into(),
                reason: "dependency chain deeper than 64 (a cycle in modules.dep?)".into(),
            });
        }
        if seen.contains(path) {
            return Ok(());
        }
        let deps = by_path.get(path).ok_or_else(|| GuestError::Module {
            module: path.into(),
            reason: "listed as a dependency but missing from modules.dep".into(),
        })?;
        for d in deps.iter() {
            visit(d, by_path, seen, order, depth + 1)?;
        }
        seen.insert(path.to_string());
        order.push(path.to_string());
        Ok(())
    }
    for w in wanted {
        let (path, _) = dep.get(*w).ok_or_else(|| GuestError::Module {
            module: w.to_string(),
            reason: "not in modules.dep: built into this kernel or not available".into(),
        })?;
        visit(path, &by_path, &mut seen, &mut order, 0)?;
    }
    Ok(order)
}

/// Shared libraries of an ELF binary, from `ldd`.
fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>, GuestError> {
    let err = |reason: String| GuestError::Ldd {
        agent: bin.display().to_string(),
        reason,
    };
    let out = Command::new("ldd")
        .arg(bin)
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| err(format!("running ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        if text.contains("statically linked") || text.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        return Err(err(format!(
            "ldd failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let mut libs = BTreeSet::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("not found") {
            return Err(err(format!("missing library: {line}")));
        }
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim().split(" (").next().unwrap_or("").trim(),
            None => line.split(" (").next().unwrap_or("").trim(),
        };
        if path.starts_with('/') {
            libs.insert(PathBuf::from(path));
        }
    }
    Ok(libs.into_iter().collect())
}

/// The agent binary, without debug info when `strip` is available.
fn agent_bytes(agent: &Path, scratch: &Path) -> Result<Vec<u8>, GuestError> {
    let tmp = scratch.join(format!(".veil-agent.strip.{}", std::process::id()));
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&tmp)
        .arg(agent)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let bytes = if stripped {
        std::fs::read(&tmp)
    } else {
        tracing::warn!(
            "strip not found or failed: the agent goes into the initrd with its debug info"
        );
        std::fs::read(agent)
    };
    let _ = std::fs::remove_file(&tmp);
    bytes.map_err(io(format!("reading the agent {}", agent.display())))
}

/// Assemble the initrd archive.
pub fn initrd_archive(
    agent: &[u8],
    tools: &[(PathBuf, Vec<u8>)],
    libs: &[(PathBuf, Vec<u8>)],
    version: &str,
    modules: &[(String, Vec<u8>)],
) -> Result<Archive, GuestError> {
    let mut a = Archive::new();
    a.add(
        "init",
        Node::File {
            mode: 0o755,
            data: agent.to_vec(),
        },
    )?;
    for d in ["dev", "proc", "sys", "run", "tmp", "etc", "mnt"] {
        a.add(d, Node::Dir { mode: 0o755 })?;
    }
    a.add(
        "dev/console",
        Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )?;
    for (path, data) in tools.iter().chain(libs) {
        let rel = path.to_string_lossy();
        a.add(
            rel.trim_start_matches('/'),
            Node::File {
                mode: 0o755,
                data: data.clone(),
            },
        )?;
    }
    let mut list = String::new();
    for (rel, data) in modules {
        let p = format!("lib/modules/{version}/{rel}");
        list.push('/');
        list.push_str(&p);
        list.push('\n');
        a.add(
            &p,
            Node::File {
                mode: 0o644,
                data: data.clone(),
            },
        )?;
    }
    a.add(
        MODULE_LIST,
        Node::File {
            mode: 0o644,
            data: list.into_bytes(),
        },
    )?;
    Ok(a)
}

fn write_atomic(path: &Path, data: &[u8]) -> Result<(), GuestError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, data)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            GuestError::Io {
                context: format!("writing {}", path.display()),
                source: e,
            }
        })
}

/// Build the kernel + initrd into `out` (`vmlinuz`, `vmlinux` when it can be
/// extracted, `initrd.img`, `guest.json`).
pub fn build(cfg: &GuestBuildConfig, out: &Path) -> Result<GuestImage, GuestError> {
    let kernel = match &cfg.kernel {
        Some(k) => k.clone(),
        None => default_kernel()?,
    };
    let version = version_of(&std::fs::canonicalize(&kernel).unwrap_or(kernel.clone()))
        .or_else(|| version_of(&kernel))
        .ok_or_else(|| {
            GuestError::NoKernel(format!(
                "{}: expected a file named vmlinuz-<version>",
                kernel.display()
            ))
        })?;
    let modules_dir = cfg
        .modules_dir
        .clone()
        .unwrap_or_else(|| Path::new("/lib/modules").join(&version));
    let dep_path = modules_dir.join("modules.dep");
    let dep = std::fs::read_to_string(&dep_path).map_err(io(format!(
        "reading {} (kernel modules of {version})",
        dep_path.display()
    )))?;
    let order = module_order(&dep, MODULES)?;
    let mut modules = Vec::new();
    for rel in &order {
        let data = std::fs::read(modules_dir.join(rel)).map_err(io(format!(
            "reading module {}",
            modules_dir.join(rel).display()
        )))?;
        modules.push((rel.clone(), data));
    }
    std::fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let agent = agent_bytes(&cfg.agent, out)?;
    let mut lib_paths: BTreeSet<PathBuf> = shared_libs(&cfg.agent)?.into_iter().collect();
    let mut tools = Vec::new();
    for t in TOOLS {
        let p = Path::new(t);
        let data = std::fs::read(p).map_err(io(format!(
            "reading {t} (for encrypted volumes; install Debian's cryptsetup-bin and e2fsprogs: scripts/install-deps.sh)"
        )))?;
        lib_paths.extend(shared_libs(p)?);
        tools.push((p.to_path_buf(), data));
    }
    let mut libs = Vec::new();
    for l in lib_paths {
        let data = std::fs::read(&l).map_err(io(format!("reading {}", l.display())))?;
        libs.push((l, data));
    }
    let archive = initrd_archive(&agent, &tools, &libs, &version, &modules)?;
    let initrd_path = out.join("initrd.img");
    let kernel_path = out.join("vmlinuz");
    write_atomic(&initrd_path, &archive.write())?;
    let kbytes = std::fs::read(&kernel).map_err(io(format!("reading {}", kernel.display())))?;
    write_atomic(&kernel_path, &kbytes)?;
    let pvh_path = out.join("vmlinux");
    let (pvh_kernel, pvh_unavailable) = match super::pvh::extract(&kbytes) {
        Ok(elf) => {
            write_atomic(&pvh_path, &elf)?;
            (Some(pvh_path), None)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&pvh_path);
            (None, Some(e.to_string()))
        }
    };
    let hex48 = |p: &Path| -> Result<String, GuestError> {
        Ok(hex::encode(
            file_sha384(p).map_err(io(format!("hashing {}", p.display())))?,
        ))
    };
    let pvh_kernel_sha384 = match &pvh_kernel {
        Some(p) => Some(hex48(p)?),
        None => None,
    };
    let img = GuestImage {
        pvh_kernel,
        pvh_kernel_sha384,
        pvh_unavailable,
        kernel_sha384: hex48(&kernel_path)?,
        initrd_sha384: hex48(&initrd_path)?,
        agent_sha384: hex48(&cfg.agent)?,
        kernel: kernel_path,
        initrd: initrd_path,
        kernel_version: version,
        modules: order,
        tools: TOOLS.iter().map(|t| t.to_string()).collect(),
    };
    let json = serde_json::to_vec_pretty(&img).unwrap_or_default();
    write_atomic(&out.join("guest.json"), &json)?;
    Ok(img)
}

/// A previously built image in `dir`, if it was built from this agent and
/// its files still have the recorded digests (hashed through the digest
/// cache in `digest_cache`, the sim platform's dir, which the launch's
/// measurement then reuses instead of hashing ~150 MB again).
pub fn cached(dir: &Path, agent: &Path, digest_cache: &Path) -> Option<GuestImage> {
    let img: GuestImage =
        serde_json::from_slice(&std::fs::read(dir.join("guest.json")).ok()?).ok()?;
    let h = |p: &Path| {
        crate::measure::file_sha384_cached(p, digest_cache)
            .ok()
            .map(hex::encode)
    };
    let pvh_ok = match (&img.pvh_kernel, &img.pvh_kernel_sha384) {
        (Some(k), Some(d)) => h(k)? == *d,
        (None, None) => img.pvh_unavailable.is_some(),
        _ => false,
    };
    // An image from before encrypted volumes lacks their tools: rebuild.
    let tools_ok = img
        .tools
        .iter()
        .map(String::as_str)
        .eq(TOOLS.iter().copied());
    (tools_ok
        && h(agent)? == img.agent_sha384
        && h(&img.kernel)? == img.kernel_sha384
        && h(&img.initrd)? == img.initrd_sha384
        && pvh_ok)
        .then_some(img)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "kernel/drivers/net/virtio_net.ko: kernel/drivers/net/net_failover.ko kernel/net/core/failover.ko\n\
kernel/drivers/net/net_failover.ko: kernel/net/core/failover.ko\n\
kernel/net/core/failover.ko:\n\
kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
kernel/drivers/md/dm-bufio.ko:\n\
kernel/drivers/md/dm-mod.ko:\n";

    #[test]
    fn dependencies_load_first_and_once() {
        let o = module_order(DEP, &["virtio_net", "dm_verity"]).unwrap();
        assert_eq!(
            o,
            vec![
                "kernel/net/core/failover.ko",
                "kernel/drivers/net/net_failover.ko",
                "kernel/drivers/net/virtio_net.ko",
                "kernel/drivers/md/dm-bufio.ko",
                "kernel/drivers/md/dm-mod.ko",
                "kernel/drivers/md/dm-verity.ko",
            ]
        );
        let e = module_order(DEP, &["nope"]).unwrap_err().to_string();
        assert!(e.contains("nope") && e.contains("modules.dep"), "{e}");
    }

    #[test]
    fn initrd_is_deterministic_and_minimal() {
        let libs = vec![(PathBuf::from("/lib/x/libc.so.6"), b"libc".to_vec())];
        let mods = vec![("kernel/a.ko".to_string(), b"ko".to_vec())];
        let tools = vec![(PathBuf::from("/usr/sbin/cryptsetup"), b"cs".to_vec())];
        let a = initrd_archive(b"agent", &tools, &libs, "6.1.0-1-amd64", &mods).unwrap();
        let b = initrd_archive(b"agent", &tools, &libs, "6.1.0-1-amd64", &mods).unwrap();
        assert_eq!(a.write(), b.write());
        let paths: Vec<&str> = a.paths().collect();
        assert!(paths.contains(&"init"));
        assert!(paths.contains(&"dev/console"));
        assert!(paths.contains(&"lib/modules/6.1.0-1-amd64/kernel/a.ko"));
        assert!(paths.contains(&"lib/x/libc.so.6"));
        assert!(paths.contains(&"usr/sbin/cryptsetup"));
        let c = initrd_archive(b"agent2", &tools, &libs, "6.1.0-1-amd64", &mods).unwrap();
        assert_ne!(a.write(), c.write());
    }
}
