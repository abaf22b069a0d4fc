//! Pod volumes in the guest, as the measured policy declares them.
//!
//! The policy (`sandbox.volumes`) names every volume of the pod and its
//! kind, so the agent never guesses from what the host sends:
//!
//! - **content** (configMap, secret, downwardAPI, projected): the host hands
//!   the files in with `create_sandbox`; every file must be one the policy
//!   lists, with the SHA-256 the policy pins, and every listed file must be
//!   there. Only then are they written (mode from the policy, through
//!   `openat` with `O_NOFOLLOW|O_EXCL` under a directory the agent just
//!   made) and later mounted read-only. The host cannot write there
//!   afterwards: `copy_file` refuses pod volume paths.
//! - **emptyDir**: an empty directory shared by the pod's containers, on
//!   the VM's encrypted scratch disk ([`crate::scratch`]) when there is
//!   one; a tmpfs of `sizeLimit` bytes when `medium: Memory`.
//! - **hostPath**: only when the policy admits it (the owner allowed it
//!   when generating); bound from the guest's own filesystem.
//!
//! With the pod's `fsGroup` (`fs_group` of a content or emptyDir volume)
//! the volume is group-owned as the kubelet makes it: files and
//! directories get that group, files are group-readable and directories
//! setgid, so files made later in an emptyDir inherit the group.
//! - **encrypted** (a veil volume, VM sandbox only): opened by
//!   [`crate::storage`] before the agent serves, then bound from there.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod, mkdirat};
use sha2::{Digest, Sha256};
use veil_agent_api::VolumeContent;
use veil_policy::model::{VolumeKind, VolumePolicy};

/// The sandbox-relative directory of pod volumes.
pub const VOLUMES_DIR: &str = "volumes";

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Check the host's volume content against the policy: every content
/// volume's files exactly as pinned. Nothing is written when anything
/// differs; the refusal names the volume, the file and both digests.
pub fn check_content(policy: &[VolumePolicy], given: &[VolumeContent]) -> Result<(), String> {
    for (i, g) in given.iter().enumerate() {
        if given[..i].iter().any(|o| o.name == g.name) {
            return Err(format!(
                "volume {}: handed in twice; the host must send each volume's content once",
                g.name
            ));
        }
        match policy.iter().find(|p| p.name == g.name) {
            Some(p) if p.kind == VolumeKind::Content => {}
            Some(p) => {
                return Err(format!(
                    "volume {}: the host handed in content, but the policy declares it a {} volume, which starts empty (expected no content, got {} files)",
                    g.name,
                    p.source,
                    g.files.len()
                ));
            }
            None => {
                return Err(format!(
                    "volume {}: the host handed in content for a volume the policy does not declare (policy volumes: {})",
                    g.name,
                    names(policy)
                ));
            }
        }
    }
    for p in policy.iter().filter(|p| p.kind == VolumeKind::Content) {
        let files = given
            .iter()
            .find(|g| g.name == p.name)
            .map(|g| g.files.as_slice())
            .unwrap_or(&[]);
        for (i, f) in files.iter().enumerate() {
            if files[..i].iter().any(|o| o.path == f.path) {
                return Err(format!(
                    "volume {} ({}): file {} handed in twice",
                    p.name, p.source, f.path
                ));
            }
            let actual = digest_of(&f.data.0);
            match p.files.iter().find(|pf| pf.path == f.path) {
                None => {
                    return Err(format!(
                        "volume {} ({}): file {} is not in the policy (actual digest {actual}; the policy pins: {}); the host's ConfigMap/Secret differs from the one the policy was generated from: use that one, or generate the policy again",
                        p.name,
                        p.source,
                        f.path,
                        paths(p)
                    ));
                }
                Some(pf) if pf.digest != actual => {
                    return Err(format!(
                        "volume {} ({}): file {} has digest {actual}, the policy pins {}; the host's ConfigMap/Secret differs from the one the policy was generated from: use that one, or generate the policy again",
                        p.name, p.source, f.path, pf.digest
                    ));
                }
                Some(_) => {}
            }
        }
        if let Some(missing) = p
            .files
            .iter()
            .find(|pf| !files.iter().any(|f| f.path == pf.path))
        {
            return Err(format!(
                "volume {} ({}): file {} (expected digest {}) was not handed in (actual: absent); give veil run the ConfigMap/Secret the policy was generated from (--config FILE)",
                p.name, p.source, missing.path, missing.digest
            ));
        }
    }
    Ok(())
}

fn names(policy: &[VolumePolicy]) -> String {
    if policy.is_empty() {
        return "none".into();
    }
    policy
        .iter()
        .map(|p| p.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

fn paths(p: &VolumePolicy) -> String {
    if p.files.is_empty() {
        return "no files".into();
    }
    p.files
        .iter()
        .map(|f| f.path.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Give `fd` the volume's fsGroup, if it has one (owner unchanged).
fn own_by_fs_group(v: &VolumePolicy, fd: impl AsFd, what: &str) -> Result<(), String> {
    let Some(gid) = v.fs_group else {
        return Ok(());
    };
    nix::unistd::fchown(fd, None, Some(nix::unistd::Gid::from_raw(gid))).map_err(|e| {
        format!(
            "volume {}: giving {what} the pod's fsGroup {gid}: {e} (the agent must be able to own files of that group)",
            v.name
        )
    })
}

/// The mode of a content volume's file: the policy's, group-readable
/// when the pod has an fsGroup (as the kubelet makes it).
fn content_file_mode(v: &VolumePolicy, mode: u32) -> u32 {
    if v.fs_group.is_some() {
        mode | 0o040
    } else {
        mode
    }
}

/// The mode of a directory the agent makes in volume `v`.
fn volume_dir_mode(v: &VolumePolicy, mode: u32) -> u32 {
    if v.fs_group.is_some() {
        mode | 0o2000
    } else {
        mode
    }
}

fn cstr(s: &str) -> Result<CString, String> {
    CString::new(s).map_err(|_| format!("{s:?} contains a NUL byte"))
}

/// Open (creating if needed) directory `name` under `dir`, never through a symlink.
fn subdir(dir: &OwnedFd, name: &str) -> Result<OwnedFd, String> {
    let c = cstr(name)?;
    match mkdirat(dir.as_fd(), c.as_c_str(), Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => {}
        Err(e) => return Err(format!("creating directory {name}: {e}")),
    }
    openat(
        dir.as_fd(),
        c.as_c_str(),
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| format!("opening directory {name} (not following symlinks): {e}"))
}

/// Write the (already checked) content volumes into `volumes_dir`, each in
/// a directory made here: files with the policy's modes, created with
/// `O_EXCL|O_NOFOLLOW`. The bytes stay only in the sandbox's volume dir
/// (guest memory or the guest's encrypted scratch).
pub fn write_content(
    policy: &[VolumePolicy],
    given: &[VolumeContent],
    volumes_dir: &Path,
) -> Result<(), String> {
    if !policy.iter().any(|p| p.kind == VolumeKind::Content) {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(volumes_dir)
        .map_err(|e| format!("creating the volumes dir: {e}"))?;
    let root: OwnedFd = fs::File::open(volumes_dir)
        .map_err(|e| format!("opening the volumes dir: {e}"))?
        .into();
    for p in policy.iter().filter(|p| p.kind == VolumeKind::Content) {
        let vname = cstr(&p.name)?;
        mkdirat(
            root.as_fd(),
            vname.as_c_str(),
            Mode::from_bits_truncate(0o755),
        )
        .map_err(|e| format!("volume {}: creating its directory: {e}", p.name))?;
        let vdir = subdir(&root, &p.name)?;
        own_by_fs_group(p, &vdir, "its directory")?;
        fchmod(&vdir, Mode::from_bits_truncate(volume_dir_mode(p, 0o755)))
            .map_err(|e| format!("volume {}: chmod of its directory: {e}", p.name))?;
        let files = given
            .iter()
            .find(|g| g.name == p.name)
            .map(|g| g.files.as_slice())
            .unwrap_or(&[]);
        for pf in &p.files {
            let Some(f) = files.iter().find(|f| f.path == pf.path) else {
                return Err(format!("volume {}: file {} missing", p.name, pf.path));
            };
            let parts: Vec<&str> = pf.path.split('/').collect();
            let (leaf, dirs) = parts
                .split_last()
                .ok_or_else(|| format!("volume {}: empty file path", p.name))?;
            let mut dir = vdir.try_clone().map_err(|e| format!("dup: {e}"))?;
            for d in dirs {
                dir = subdir(&dir, d).map_err(|e| format!("volume {}: {e}", p.name))?;
                own_by_fs_group(p, &dir, &format!("directory {d}"))?;
                fchmod(&dir, Mode::from_bits_truncate(volume_dir_mode(p, 0o755)))
                    .map_err(|e| format!("volume {}: chmod of directory {d}: {e}", p.name))?;
            }
            let leaf_c = cstr(leaf)?;
            let fd = openat(
                dir.as_fd(),
                leaf_c.as_c_str(),
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(|e| format!("volume {}: creating file {}: {e}", p.name, pf.path))?;
            own_by_fs_group(p, &fd, &format!("file {}", pf.path))?;
            // The umask must not narrow the mode the policy pins.
            fchmod(
                fd.as_fd(),
                Mode::from_bits_truncate(content_file_mode(p, pf.mode)),
            )
            .map_err(|e| format!("volume {}: chmod {}: {e}", p.name, pf.path))?;
            let mut file = fs::File::from(fd);
            file.write_all(&f.data.0)
                .map_err(|e| format!("volume {}: writing {}: {e}", p.name, pf.path))?;
        }
    }
    Ok(())
}

/// What a container's bind mount of pod volume `name` needs: the volume
/// made ready (emptyDir created, tmpfs mounted, hostPath bound) and
/// whether it must be read-only.
pub fn prepare_mount(
    policy: &[VolumePolicy],
    name: &str,
    path: &Path,
    options: &[String],
) -> Result<(), String> {
    let Some(v) = policy.iter().find(|v| v.name == name) else {
        return Err(format!(
            "volume {name}: not declared by the policy (policy volumes: {}); generate the policy from a pod that defines it",
            names(policy)
        ));
    };
    match v.kind {
        VolumeKind::Content => {
            if !options.iter().any(|o| o == "ro") {
                return Err(format!(
                    "volume {name} ({}): must be mounted read-only (expected option ro, got {})",
                    v.source,
                    options.join(",")
                ));
            }
            match fs::symlink_metadata(path) {
                Ok(m) if m.is_dir() => Ok(()),
                _ => Err(format!(
                    "volume {name} ({}): its content was not handed in with create_sandbox (expected a directory of {} files, got none)",
                    v.source,
                    v.files.len()
                )),
            }
        }
        VolumeKind::EmptyDir => ensure_empty_dir(v, path),
        VolumeKind::HostPath => bind_host_path(v, path),
        VolumeKind::Encrypted => crate::storage::bind(v, path),
    }
}

/// An `emptyDir`: created empty on first use, world-writable as Kubernetes
/// makes it, shared by every container that mounts it; a tmpfs with the
/// size limit for `medium: Memory`.
fn ensure_empty_dir(v: &VolumePolicy, path: &Path) -> Result<(), String> {
    let name = &v.name;
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => return Ok(()),
        Ok(_) => {
            return Err(format!(
                "volume {name}: {} is not a directory",
                path.display()
            ));
        }
        Err(_) => {}
    }
    make_volume_dir(name, path, 0o777)?;
    if !v.memory {
        // On the encrypted scratch disk when the VM has one (else the
        // sandbox's tmpfs, in guest RAM).
        let rel = Path::new("emptydir").join(path.strip_prefix("/").unwrap_or(path));
        crate::scratch::bind(&rel, path).map_err(|e| format!("volume {name}: {e}"))?;
    } else {
        let size = v
            .size_limit
            .map(|b| format!(",size={b}"))
            .unwrap_or_default();
        nix::mount::mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some(format!("mode=1777{size}").as_str()),
        )
        .map_err(|e| format!("volume {name}: mounting its tmpfs (medium: Memory{size}): {e}"))?;
    }
    // The umask must not narrow what every container user may write.
    let mode = volume_dir_mode(v, if v.memory { 0o1777 } else { 0o777 });
    let dir = fs::File::open(path).map_err(|e| format!("emptyDir volume {name}: {e}"))?;
    own_by_fs_group(v, &dir, "its directory")?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .map_err(|e| format!("emptyDir volume {name}: {e}"))
}

/// Create the directory of volume `name` (and the volumes dir above it).
fn make_volume_dir(name: &str, path: &Path, mode: u32) -> Result<(), String> {
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(|e| format!("creating the volumes dir: {e}"))?;
    }
    fs::DirBuilder::new()
        .mode(mode)
        .create(path)
        .map_err(|e| format!("volume {name}: creating its directory: {e}"))
}

/// A `hostPath` volume the policy admits: bound (once) onto the volume's
/// directory from the guest's filesystem.
fn bind_host_path(v: &VolumePolicy, path: &Path) -> Result<(), String> {
    let name = &v.name;
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let src = Path::new(&v.host_path);
    if !src.is_dir() {
        return Err(format!(
            "volume {name} (hostPath): {} is not a directory visible to the agent (in a VM sandbox the host's directories are not); create it, or use an emptyDir",
            v.host_path
        ));
    }
    make_volume_dir(name, path, 0o755)?;
    nix::mount::mount(
        Some(src),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("volume {name}: binding hostPath {}: {e}", v.host_path))?;
    tracing::warn!(
        volume = %name,
        host_path = %v.host_path,
        "hostPath volume: the host can read and change it"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_agent_api::{SecretBytes, VolumeFileContent};
    use veil_policy::model::VolumeFile;
    use zeroize::Zeroizing;

    fn file(path: &str, data: &[u8]) -> VolumeFileContent {
        VolumeFileContent {
            path: path.into(),
            data: SecretBytes(Zeroizing::new(data.to_vec())),
        }
    }

    fn config_volume() -> VolumePolicy {
        VolumePolicy {
            name: "site".into(),
            kind: VolumeKind::Content,
            source: "configMap".into(),
            memory: false,
            size_limit: None,
            host_path: String::new(),
            encrypted: None,
            files: vec![
                VolumeFile {
                    path: "conf/app.conf".into(),
                    digest: digest_of(b"listen 80;\n"),
                    mode: 0o640,
                },
                VolumeFile {
                    path: "index.html".into(),
                    digest: digest_of(b"<h1>hi</h1>"),
                    mode: 0o644,
                },
            ],
            fs_group: None,
        }
    }

    fn honest() -> Vec<VolumeContent> {
        vec![VolumeContent {
            name: "site".into(),
            files: vec![
                file("index.html", b"<h1>hi</h1>"),
                file("conf/app.conf", b"listen 80;\n"),
            ],
        }]
    }

    /// A group the test may give files: any as root, else its own.
    fn a_group() -> u32 {
        if nix::unistd::geteuid().is_root() {
            2000
        } else {
            nix::unistd::getegid().as_raw()
        }
    }

    #[test]
    fn fs_group_owns_content_and_empty_dir_volumes() {
        use std::os::unix::fs::MetadataExt;
        let gid = a_group();
        let dir = tempfile::tempdir().unwrap();
        let mut content = config_volume();
        content.fs_group = Some(gid);
        let policy = vec![content];
        write_content(&policy, &honest(), dir.path()).unwrap();
        let conf = fs::metadata(dir.path().join("site/conf/app.conf")).unwrap();
        assert_eq!(conf.gid(), gid);
        assert_eq!(
            conf.mode() & 0o7777,
            0o640,
            "0640 is already group-readable"
        );
        let index = fs::metadata(dir.path().join("site/index.html")).unwrap();
        assert_eq!((index.gid(), index.mode() & 0o7777), (gid, 0o644));
        for d in ["site", "site/conf"] {
            let m = fs::metadata(dir.path().join(d)).unwrap();
            assert_eq!((m.gid(), m.mode() & 0o7777), (gid, 0o2755), "{d}");
        }

        let scratch = VolumePolicy {
            name: "data".into(),
            kind: VolumeKind::EmptyDir,
            source: "emptyDir".into(),
            memory: false,
            size_limit: None,
            host_path: String::new(),
            files: Vec::new(),
            fs_group: Some(gid),
            encrypted: None,
        };
        let path = dir.path().join("data");
        prepare_mount(&[scratch], "data", &path, &["rw".into()]).unwrap();
        let m = fs::metadata(&path).unwrap();
        assert_eq!((m.gid(), m.mode() & 0o7777), (gid, 0o2777));
    }

    #[test]
    fn a_content_file_gets_group_read_with_an_fs_group() {
        let mut v = config_volume();
        assert_eq!(content_file_mode(&v, 0o600), 0o600);
        v.fs_group = Some(7);
        assert_eq!(content_file_mode(&v, 0o600), 0o640);
        assert_eq!(volume_dir_mode(&v, 0o777), 0o2777);
    }

    #[test]
    fn pinned_content_is_written_with_the_policy_modes() {
        let dir = tempfile::tempdir().unwrap();
        let policy = vec![config_volume()];
        check_content(&policy, &honest()).unwrap();
        write_content(&policy, &honest(), dir.path()).unwrap();
        let conf = dir.path().join("site/conf/app.conf");
        assert_eq!(fs::read(&conf).unwrap(), b"listen 80;\n");
        assert_eq!(
            fs::metadata(&conf).unwrap().permissions().mode() & 0o777,
            0o640
        );
        assert_eq!(
            fs::read(dir.path().join("site/index.html")).unwrap(),
            b"<h1>hi</h1>"
        );
        // A second sandbox creation cannot write over it.
        assert!(write_content(&policy, &honest(), dir.path()).is_err());
    }

    #[test]
    fn swapped_missing_and_extra_files_are_refused_by_name_and_digest() {
        let policy = vec![config_volume()];
        let mut swapped = honest();
        swapped[0].files[0] = file("index.html", b"<h1>pwned</h1>");
        let e = check_content(&policy, &swapped).unwrap_err();
        assert!(
            e.contains("volume site (configMap): file index.html"),
            "{e}"
        );
        assert!(e.contains(&digest_of(b"<h1>pwned</h1>")), "{e}");
        assert!(e.contains(&digest_of(b"<h1>hi</h1>")), "{e}");

        let mut missing = honest();
        missing[0].files.pop();
        let e = check_content(&policy, &missing).unwrap_err();
        assert!(e.contains("file conf/app.conf"), "{e}");
        assert!(e.contains("not handed in"), "{e}");

        let mut extra = honest();
        extra[0].files.push(file("evil.sh", b"x"));
        let e = check_content(&policy, &extra).unwrap_err();
        assert!(e.contains("file evil.sh is not in the policy"), "{e}");

        let e = check_content(&policy, &[]).unwrap_err();
        assert!(e.contains("not handed in"), "{e}");
    }

    #[test]
    fn content_for_an_empty_dir_or_an_unknown_volume_is_refused() {
        let mut scratch = config_volume();
        scratch.name = "scratch".into();
        scratch.kind = VolumeKind::EmptyDir;
        scratch.source = "emptyDir".into();
        scratch.files.clear();
        let policy = vec![config_volume(), scratch];
        let mut given = honest();
        given.push(VolumeContent {
            name: "scratch".into(),
            files: vec![file("planted", b"x")],
        });
        let e = check_content(&policy, &given).unwrap_err();
        assert!(e.contains("emptyDir volume, which starts empty"), "{e}");
        given[1].name = "other".into();
        let e = check_content(&policy, &given).unwrap_err();
        assert!(e.contains("does not declare"), "{e}");
    }

    #[test]
    fn a_symlinked_subdirectory_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        // A volume dir that already holds a symlink where a subdirectory goes.
        fs::create_dir_all(dir.path().join("site")).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("site/conf")).unwrap();
        let policy = vec![config_volume()];
        assert!(write_content(&policy, &honest(), dir.path()).is_err());
        // The volume dir existed: refused before anything was written.
        assert!(!outside.path().join("app.conf").exists());
    }

    #[test]
    fn mounts_need_a_declared_volume_and_content_ones_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let policy = vec![config_volume()];
        let p = dir.path().join("site");
        let e = prepare_mount(&policy, "nope", &p, &["ro".into()]).unwrap_err();
        assert!(e.contains("not declared by the policy"), "{e}");
        let e = prepare_mount(&policy, "site", &p, &["rw".into()]).unwrap_err();
        assert!(e.contains("read-only"), "{e}");
        let e = prepare_mount(&policy, "site", &p, &["ro".into()]).unwrap_err();
        assert!(e.contains("was not handed in"), "{e}");
    }
}
