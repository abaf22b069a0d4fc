//! Encrypted persistent volumes in the VM sandbox (docs/storage.md).
//!
//! The policy names each volume's LUKS2 UUID and the KBS path of its key.
//! After attestation, and before the agent serves anything, every such
//! volume is opened:
//!
//! 1. its disk is found by the virtio-blk serial the host gave it
//!    ([`veil_agent_api::VOLUME_SERIAL_PREFIX`]`<index>`; untrusted);
//! 2. its LUKS2 header is read ([`veil_agent_api::luks2`]) and its UUID must be the
//!    one the policy pins (a volume of another workload, or a header the
//!    host replaced with one of its own, is refused by name) — a disk
//!    that is blank (zero header) is a new volume and is formatted;
//! 3. the key is fetched from the KBS (released only to this attested
//!    workload), handed to Debian's `cryptsetup` on a pipe, and dropped
//!    (zeroized); a key that opens no keyslot is refused by name;
//! 4. dm-crypt + dm-integrity (aes-xts-plain64 + hmac-sha256: a changed
//!    sector reads as an I/O error, never as other data) carries an ext4
//!    file system, mounted at [`MOUNT_ROOT`]`/<volume>` and later bound
//!    into the containers that mount the pod volume.
//!
//! Any failure stops the agent before a container exists.

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use veil_agent_api::VOLUME_SERIAL_PREFIX;
use veil_policy::model::{EncryptedVolume, VolumeKind, VolumePolicy};
use zeroize::Zeroizing;

use veil_agent_api::luks2::{self, Luks2Header};

/// Where opened volumes are mounted in the guest.
pub const MOUNT_ROOT: &str = "/run/veil-volumes";
/// Debian's cryptsetup, copied into the initrd by `veil guest build`.
pub const CRYPTSETUP: &str = "/usr/sbin/cryptsetup";
/// Debian's mke2fs, likewise.
pub const MKE2FS: &str = "/usr/sbin/mke2fs";
/// Key sizes accepted from the KBS.
pub const KEY_BYTES: std::ops::RangeInclusive<usize> = 32..=1024;
/// How long to wait for a volume's disk to appear.
const DISK_WAIT: Duration = Duration::from_secs(10);

/// Set once a volume is mounted: container exits then flush it to the
/// disk (the host may stop QEMU right after it hears of the exit).
static OPEN: AtomicBool = AtomicBool::new(false);

/// Control characters of a tool's message (or a header the host wrote)
/// escaped, so they cannot forge log lines.
fn escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// The policy's encrypted volumes, in the order the host attaches their
/// disks (the policy's order: sorted by pod volume name).
pub fn encrypted(policy: &[VolumePolicy]) -> Vec<(&VolumePolicy, &EncryptedVolume)> {
    let mut v: Vec<_> = policy
        .iter()
        .filter(|v| v.kind == VolumeKind::Encrypted)
        .filter_map(|v| v.encrypted.as_ref().map(|e| (v, e)))
        .collect();
    v.sort_by(|a, b| a.0.name.cmp(&b.0.name));
    v
}

/// What a volume's disk holds, from its first bytes.
#[derive(Debug, PartialEq, Eq)]
pub enum DiskState {
    /// Zero header: a new volume, to be formatted.
    Blank,
    /// A LUKS2 volume.
    Luks(Luks2Header),
}

/// Decide what disk `dev` of volume `name` is, and refuse it unless it is
/// blank or the LUKS2 volume with the pinned UUID. `read(n)` returns the
/// disk's first `n` bytes.
pub fn identify(
    name: &str,
    dev: &str,
    pinned: &EncryptedVolume,
    mut read: impl FnMut(usize) -> Result<Vec<u8>, String>,
) -> Result<DiskState, String> {
    let first = read(luks2::BINARY_HEADER_BYTES)?;
    if first.len() == luks2::BINARY_HEADER_BYTES && first.iter().all(|&b| b == 0) {
        return Ok(DiskState::Blank);
    }
    let header = luks2::header_size(&first)
        .and_then(|size| {
            let all = read(size as usize).map_err(luks2::Luks2Error::Json)?;
            Luks2Header::parse(&all)
        })
        .map_err(|e| {
            format!(
                "volume {name}: check LUKS2 header of disk {dev}: not a LUKS2 volume ({e}); expected the veil volume {} with LUKS2 UUID {}: the host attached another disk or replaced its header",
                pinned.volume, pinned.uuid
            )
        })?;
    if header.uuid != pinned.uuid {
        return Err(format!(
            "volume {name}: check LUKS2 UUID of disk {dev}: expected {} (veil volume {}, pinned by the policy), got {} (label {:?}): a volume of another workload, or a header the host replaced; refusing to use it (attach the volume the policy names, or generate the policy for this volume)",
            pinned.uuid,
            pinned.volume,
            header.uuid,
            escape(&header.label)
        ));
    }
    if header.integrity.is_empty() {
        return Err(format!(
            "volume {name}: check LUKS2 integrity of disk {dev}: the header declares no integrity protection (cipher {}); veil volumes use authenticated encryption, so this header was not written by veil: refusing",
            header.cipher
        ));
    }
    Ok(DiskState::Luks(header))
}

/// The disk the host attached with virtio-blk serial `serial` (the
/// host's word: callers check what is on it).
pub(crate) fn find_disk(serial: &str) -> Result<PathBuf, String> {
    let start = Instant::now();
    loop {
        if let Ok(rd) = fs::read_dir("/sys/block") {
            for e in rd.flatten() {
                let s = fs::read_to_string(e.path().join("serial")).unwrap_or_default();
                if s.trim() == serial {
                    let dev = Path::new("/dev").join(e.file_name());
                    if dev.exists() {
                        return Ok(dev);
                    }
                }
            }
        }
        if start.elapsed() > DISK_WAIT {
            return Err(format!(
                "no disk with serial {serial} within {} s: the host did not attach it",
                DISK_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub(crate) fn read_head(dev: &Path, n: usize) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(n);
    fs::File::open(dev)
        .and_then(|f| f.take(n as u64).read_to_end(&mut out))
        .map_err(|e| format!("reading {}: {e}", dev.display()))?;
    Ok(out)
}

/// `cryptsetup luksFormat` of `dev` as every veil disk is made: LUKS2,
/// aes-xts-plain64 with hmac-sha256 integrity (dm-integrity) on 4 KiB
/// sectors, the key on stdin, plus `extra`. The key is 64 random bytes
/// (from the KBS, or born in the guest): no stretching needed, so PBKDF2
/// with 1000 iterations.
pub(crate) fn luks_format_args<'a>(extra: &[&'a str], dev: &'a str) -> Vec<&'a str> {
    let mut a = vec![
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--cipher",
        "aes-xts-plain64",
        "--integrity",
        "hmac-sha256",
        "--sector-size",
        "4096",
        "--pbkdf",
        "pbkdf2",
        "--pbkdf-force-iterations",
        "1000",
        "--hash",
        "sha256",
        "--key-file",
        "-",
    ];
    a.extend_from_slice(extra);
    a.push(dev);
    a
}

/// Run cryptsetup with the key on its stdin (never on a disk or argv).
pub(crate) fn cryptsetup(args: &[&str], key: &[u8]) -> Result<(), (i32, String)> {
    let _ = fs::create_dir_all("/run/cryptsetup");
    let mut child = Command::new(CRYPTSETUP)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C")
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        // No udev in the guest: libdevmapper makes the /dev/mapper nodes.
        .env("DM_DISABLE_UDEV", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| (-1, format!("starting {CRYPTSETUP}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(key);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| (-1, format!("waiting for cryptsetup: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let msg = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err((out.status.code().unwrap_or(-1), escape(&msg)))
}

/// Open (formatting a blank disk first) and mount every encrypted volume
/// of the policy. `key_of` fetches a key from the KBS. Returns one line
/// per volume for the log.
pub fn open_all(
    policy: &[VolumePolicy],
    mut key_of: impl FnMut(&str) -> Result<Zeroizing<Vec<u8>>, String>,
) -> Result<Vec<String>, String> {
    let mut lines = Vec::new();
    for (index, (v, e)) in encrypted(policy).into_iter().enumerate() {
        let name = &v.name;
        let dev = find_disk(&format!("{VOLUME_SERIAL_PREFIX}{index}")).map_err(|err| {
            format!("volume {name}: {err} (the host, veil run or the containerd shim, attaches the volume files the policy names)")
        })?;
        let dev_s = dev.display().to_string();
        let state = identify(name, &dev_s, e, |n| read_head(&dev, n))?;
        let key = key_of(&e.key).map_err(|err| {
            format!(
                "volume {name}: fetch its key {} from the KBS: {err} (the KBS releases a volume key only to the workloads its resource policy admits)",
                e.key
            )
        })?;
        if !KEY_BYTES.contains(&key.len()) {
            return Err(format!(
                "volume {name}: key {} is {} bytes, expected {}..={} (store a volume key made by `veil volume create`)",
                e.key,
                key.len(),
                KEY_BYTES.start(),
                KEY_BYTES.end()
            ));
        }
        let mapper = format!("veil-vol-{name}");
        let fresh = state == DiskState::Blank;
        if fresh {
            // LUKS2 labels hold at most 47 bytes (the name is ASCII).
            let label: String = format!("veil:{}", e.volume).chars().take(47).collect();
            cryptsetup(
                &luks_format_args(&["--uuid", &e.uuid, "--label", &label], &dev_s),
                &key,
            )
            .map_err(|(_, m)| format!("volume {name}: formatting the blank disk {dev_s} (LUKS2, aes-xts-plain64 + hmac-sha256): {m}"))?;
            // What was written must now read back as the pinned volume.
            identify(name, &dev_s, e, |n| read_head(&dev, n))?;
        }
        cryptsetup(
            &["open", "--type", "luks2", "--key-file", "-", &dev_s, &mapper],
            &key,
        )
        .map_err(|(code, m)| {
            if code == 2 {
                format!(
                    "volume {name}: check key of disk {dev_s}: the key from the KBS ({}) opens no LUKS2 keyslot: a wrong key, or a header the host replaced (cryptsetup: {m})",
                    e.key
                )
            } else {
                format!("volume {name}: opening {dev_s} with cryptsetup: {m}")
            }
        })?;
        drop(key);
        let mapped = Path::new("/dev/mapper").join(&mapper);
        if fresh {
            mkfs(&mapped, &e.volume, &["-E", "nodiscard"])
                .map_err(|err| format!("volume {name}: {err}"))?;
        }
        let target = Path::new(MOUNT_ROOT).join(name);
        fs::create_dir_all(&target).map_err(|err| format!("{}: {err}", target.display()))?;
        nix::mount::mount(
            Some(&mapped),
            &target,
            Some("ext4"),
            nix::mount::MsFlags::MS_NOSUID | nix::mount::MsFlags::MS_NODEV,
            Some("errors=remount-ro"),
        )
        .map_err(|err| {
            format!(
                "volume {name}: mounting its ext4 file system: {err} (an integrity error reading its metadata shows as EIO/EILSEQ: the host changed the disk)"
            )
        })?;
        if fresh {
            // World-writable as an emptyDir, for containers of any user.
            fs::set_permissions(&target, fs::Permissions::from_mode(0o777))
                .map_err(|err| format!("volume {name}: {err}"))?;
        }
        OPEN.store(true, Ordering::SeqCst);
        lines.push(format!(
            "volume {name}: veil volume {} (LUKS2 UUID {}) {} and mounted (dm-crypt aes-xts-plain64 + dm-integrity hmac-sha256, ext4)",
            e.volume,
            e.uuid,
            if fresh { "formatted on first use" } else { "opened" }
        ));
    }
    Ok(lines)
}

/// Make an ext4 file system labelled `label` (first 16 characters) on
/// `dev` with Debian's mke2fs and the `extra` options.
pub(crate) fn mkfs(dev: &Path, label: &str, extra: &[&str]) -> Result<(), String> {
    let fs_label: String = label.chars().take(16).collect();
    let out = Command::new(MKE2FS)
        .args(["-t", "ext4", "-q", "-F", "-m", "0"])
        .args(extra)
        .arg("-L")
        .arg(&fs_label)
        .arg(dev)
        .env_clear()
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .map_err(|err| format!("starting {MKE2FS}: {err}"))?;
    if !out.status.success() {
        return Err(format!(
            "making its ext4 file system: {}",
            escape(String::from_utf8_lossy(&out.stderr).trim())
        ));
    }
    Ok(())
}

/// Bind opened volume `v` onto the sandbox's volume directory `path`.
pub fn bind(v: &VolumePolicy, path: &Path) -> Result<(), String> {
    let name = &v.name;
    if fs::symlink_metadata(path).is_ok_and(|m| m.is_dir()) {
        return Ok(());
    }
    let src = Path::new(MOUNT_ROOT).join(name);
    if !OPEN.load(Ordering::SeqCst) || !src.is_dir() {
        return Err(format!(
            "volume {name} (encrypted): not opened: encrypted volumes need the VM sandbox (veil run --sandbox vm) and a KBS that releases their key"
        ));
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| format!("creating the volumes dir: {e}"))?;
    }
    fs::create_dir(path).map_err(|e| format!("volume {name}: creating its directory: {e}"))?;
    nix::mount::mount(
        Some(&src),
        path,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("volume {name}: binding the opened volume: {e}"))
}

/// After a container process exits: flush the open volumes to their disks.
pub fn flush() {
    if OPEN.load(Ordering::SeqCst) {
        nix::unistd::sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pinned() -> EncryptedVolume {
        EncryptedVolume {
            volume: "pgdata".into(),
            uuid: "0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c11".into(),
            key: "kbs:///veil-volume/key/pgdata".into(),
        }
    }

    fn disk(bytes: Vec<u8>) -> impl FnMut(usize) -> Result<Vec<u8>, String> {
        move |n| Ok(bytes[..n.min(bytes.len())].to_vec())
    }

    #[test]
    fn blank_pinned_foreign_and_replaced_disks() {
        assert_eq!(
            identify("db", "/dev/vdb", &pinned(), disk(vec![0; 8192])).unwrap(),
            DiskState::Blank
        );
        let json = r#"{"keyslots":{"0":{"kdf":{"type":"pbkdf2"}}},"segments":{"0":{"encryption":"aes-xts-plain64","sector_size":4096,"offset":"0","integrity":{"type":"hmac(sha256)"}}}}"#;
        let ok = veil_agent_api::luks2::tests_support::header(&pinned().uuid, json);
        assert!(matches!(
            identify("db", "/dev/vdb", &pinned(), disk(ok)).unwrap(),
            DiskState::Luks(_)
        ));
        let other = veil_agent_api::luks2::tests_support::header(
            "11111111-2222-4333-8444-555555555555",
            json,
        );
        let e = identify("db", "/dev/vdb", &pinned(), disk(other)).unwrap_err();
        assert!(e.contains("check LUKS2 UUID"), "{e}");
        assert!(
            e.contains("expected 0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c11"),
            "{e}"
        );
        assert!(
            e.contains("got 11111111-2222-4333-8444-555555555555"),
            "{e}"
        );
        let plain = json.replace(r#","integrity":{"type":"hmac(sha256)"}"#, "");
        let e = identify(
            "db",
            "/dev/vdb",
            &pinned(),
            disk(veil_agent_api::luks2::tests_support::header(
                &pinned().uuid,
                &plain,
            )),
        )
        .unwrap_err();
        assert!(e.contains("check LUKS2 integrity"), "{e}");
        let mut garbage = vec![0u8; 8192];
        garbage[100] = 1;
        let e = identify("db", "/dev/vdb", &pinned(), disk(garbage)).unwrap_err();
        assert!(e.contains("not a LUKS2 volume"), "{e}");
    }
}
