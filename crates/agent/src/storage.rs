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

/// What every veil disk the guest formats is, for messages.
pub const ENCRYPTION: &str =
    "LUKS2, dm-crypt aes-xts-plain64 + dm-integrity hmac-sha256, 4096-byte sectors";

/// `luksFormat` a persistent volume (or the benchmark's encrypted disk,
/// which measures exactly this): [`luks_format_args`] with the integrity
/// wipe (every tag written now, so any sector reads back), plus `extra`.
pub(crate) fn format_volume(dev: &str, key: &[u8], extra: &[&str]) -> Result<(), String> {
    cryptsetup(&luks_format_args(extra, dev), key).map_err(|(_, m)| m)
}

/// `cryptsetup open` a LUKS2 disk as `/dev/mapper/<mapper>`, the key on
/// stdin, plus `extra` options (none for a volume: dm-integrity keeps its
/// journal). The error carries cryptsetup's exit code (2: no keyslot
/// opened with this key).
pub(crate) fn open_luks(
    dev: &str,
    mapper: &str,
    key: &[u8],
    extra: &[&str],
) -> Result<PathBuf, (i32, String)> {
    let mut args = vec!["open", "--type", "luks2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--key-file", "-", dev, mapper]);
    cryptsetup(&args, key)?;
    Ok(Path::new("/dev/mapper").join(mapper))
}

/// Open a persistent volume (or the benchmark's encrypted disk).
pub(crate) fn open_volume(dev: &str, mapper: &str, key: &[u8]) -> Result<PathBuf, (i32, String)> {
    open_luks(dev, mapper, key, &[])
}

/// `cryptsetup close` the mapping `mapper`.
pub(crate) fn close_luks(mapper: &str) -> Result<(), String> {
    cryptsetup(&["close", mapper], b"").map_err(|(_, m)| format!("closing {mapper}: {m}"))
}

/// `n` bytes from the kernel's CSPRNG (a key born in the guest).
pub(crate) fn random_key(n: usize) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut key = Zeroizing::new(vec![0u8; n]);
    let mut filled = 0;
    while filled < n {
        // SAFETY: writes at most `n - filled` bytes into the buffer we own.
        let r = unsafe {
            libc::getrandom(
                key[filled..].as_mut_ptr() as *mut libc::c_void,
                n - filled,
                0,
            )
        };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("getrandom: {e}"));
        }
        filled += r as usize;
    }
    Ok(key)
}

/// A blank disk the host set up for the guest to format with a key of
/// its own (the scratch disk, the benchmark's disks): found by its
/// virtio-blk serial, used only when an fw_cfg item announces its size.
#[derive(Debug, Clone, Copy)]
pub struct AnnouncedDisk {
    /// Who uses it, first word of every message (`scratch`, `bench_volume`).
    pub what: &'static str,
    pub serial: &'static str,
    /// The fw_cfg item's name (`opt/veil/...`).
    pub fw_cfg: &'static str,
    /// Bounds of the announced size.
    pub min_bytes: u64,
    pub max_bytes: u64,
}

/// Bytes of a disk's start that must be zero for it to count as blank.
pub const BLANK_HEAD_BYTES: usize = 64 << 10;

impl AnnouncedDisk {
    /// Parse the fw_cfg item (the host's bytes): the disk's size in bytes,
    /// decimal ASCII, a multiple of 4096 within the bounds.
    pub fn parse_size(&self, raw: &[u8]) -> Result<u64, String> {
        let (what, item) = (self.what, self.fw_cfg);
        let text = std::str::from_utf8(raw)
            .ok()
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 20 && t.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                format!(
                    "{what}: fw_cfg {item} must be a size in bytes (decimal digits), got {:?}",
                    String::from_utf8_lossy(&raw[..raw.len().min(40)])
                )
            })?;
        let n: u64 = text
            .parse()
            .map_err(|_| format!("{what}: fw_cfg {item}: {text} is out of range"))?;
        if !(self.min_bytes..=self.max_bytes).contains(&n) || n % 4096 != 0 {
            return Err(format!(
                "{what}: fw_cfg {item}: expected a multiple of 4096 between {} and {} bytes, got {n}",
                self.min_bytes, self.max_bytes
            ));
        }
        Ok(n)
    }

    /// Read and parse the fw_cfg item at `path`; `Ok(None)`: not announced.
    pub fn announced(&self, path: &Path) -> Result<Option<u64>, String> {
        let mut raw = Vec::new();
        match fs::File::open(path) {
            // The host's bytes: at most what a size can take (parse_size refuses more).
            Ok(f) => f
                .take(64)
                .read_to_end(&mut raw)
                .map_err(|e| format!("{}: reading fw_cfg {}: {e}", self.what, self.fw_cfg))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(format!(
                    "{}: reading fw_cfg {}: {e}",
                    self.what, self.fw_cfg
                ));
            }
        };
        self.parse_size(&raw).map(Some)
    }

    /// Check that the disk `dev` is the one the set-up announced: exactly
    /// `expected` bytes, and blank (a fresh sparse file reads as zeros;
    /// anything else is a disk with content the host attached under the
    /// serial, which the guest will not format over).
    pub fn check(&self, dev: &str, expected: u64, actual: u64, head: &[u8]) -> Result<(), String> {
        let (what, serial, item) = (self.what, self.serial, self.fw_cfg);
        if actual != expected {
            return Err(format!(
                "{what}: check size of disk {dev} (serial {serial}): expected {expected} bytes (the sandbox set-up, fw_cfg {item}), got {actual}: not the disk veil attached; refusing to use it"
            ));
        }
        if let Some(at) = head.iter().position(|&b| b != 0) {
            return Err(format!(
                "{what}: check disk {dev} (serial {serial}) is blank: expected zeros (a new sparse file), got a non-zero byte at offset {at}: a disk with content; refusing to format over it"
            ));
        }
        Ok(())
    }

    /// Find the disk, and check it against the announced size.
    pub fn find_checked(&self, expected: u64) -> Result<PathBuf, String> {
        let dev = find_disk(self.serial).map_err(|e| {
            format!(
                "{}: {e} (the set-up announced a {expected}-byte disk)",
                self.what
            )
        })?;
        let head = read_head(&dev, BLANK_HEAD_BYTES)?;
        self.check(
            &dev.display().to_string(),
            expected,
            disk_bytes(&dev).map_err(|e| format!("{}: {e}", self.what))?,
            &head,
        )?;
        Ok(dev)
    }
}

/// A disk's size in bytes, from sysfs.
pub(crate) fn disk_bytes(dev: &Path) -> Result<u64, String> {
    let name = dev
        .file_name()
        .ok_or_else(|| format!("{}: no device name", dev.display()))?;
    let sectors = fs::read_to_string(Path::new("/sys/block").join(name).join("size"))
        .map_err(|e| format!("size of {}: {e}", dev.display()))?;
    sectors
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|s| s.checked_mul(512))
        .ok_or_else(|| format!("size of {}: {sectors:?}", dev.display()))
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
            format_volume(&dev_s, &key, &["--uuid", &e.uuid, "--label", &label]).map_err(|m| {
                format!("volume {name}: formatting the blank disk {dev_s} ({ENCRYPTION}): {m}")
            })?;
            // What was written must now read back as the pinned volume.
            identify(name, &dev_s, e, |n| read_head(&dev, n))?;
        }
        let mapped = open_volume(&dev_s, &mapper, &key).map_err(|(code, m)| {
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
