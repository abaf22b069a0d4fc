//! Small helpers for consistent human output, bounded file reads and safe
//! file writes.
//!
//! Every file the CLI writes goes through [`stage`] (or [`write_atomic`] /
//! [`write_secret`] for one file), which decides by what is at the path:
//!
//! - nothing, or a regular file: the bytes go to a new file with an
//!   unpredictable name in the same directory, created
//!   `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC` with its final mode (0600 for
//!   [`Access::OwnerOnly`]), synced, renamed over the path, and the
//!   directory synced. At no moment can anyone but the owner read a secret.
//! - `-`, `/dev/stdout`, `/dev/stderr`, `/dev/fd/N`, `/proc/self/fd/N`:
//!   written to that inherited descriptor.
//! - a character or block device or a FIFO: written in place (opened for
//!   writing, never created, truncated, renamed over or unlinked). A secret
//!   goes only to a device or FIFO owned by the caller or by root.
//! - a symbolic link (other than the aliases above): refused. Replacing it
//!   would silently break the link, following it would let whoever planted
//!   it choose where a secret goes; give the path it points to instead.
//! - a socket or a directory: refused.

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use zeroize::Zeroizing;

/// Print an aligned `key  value` line.
pub fn kv(key: &str, value: &str) {
    crate::outln!("  {key:<14}{value}");
}

/// `println!` that ends the process quietly, status 0, when stdout is a
/// pipe whose reader went away (`veil kbs audit | head`): there is no one
/// left to tell. Any other write error ends it with status 2 and a message.
#[macro_export]
macro_rules! outln {
    () => {
        $crate::output::stdout_fmt(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::stdout_fmt(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` with the broken-pipe handling of [`outln!`].
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::stdout_fmt(format_args!($($arg)*))
    };
}

/// What [`outln!`] and [`out!`] call.
pub fn stdout_fmt(args: std::fmt::Arguments<'_>) {
    let r = std::io::stdout().lock().write_fmt(args);
    if let Err(e) = quiet_on_broken_pipe(r) {
        eprintln!("veil: error: writing to stdout: {e}");
        std::process::exit(2);
    }
}

/// Write raw bytes to stdout (and flush), with the broken-pipe handling of
/// [`outln!`].
pub fn stdout_bytes(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    quiet_on_broken_pipe(out.write_all(bytes).and_then(|()| out.flush()))
}

/// Exit quietly with status 0 on `EPIPE`; pass any other result through.
fn quiet_on_broken_pipe(r: std::io::Result<()>) -> std::io::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        r => r,
    }
}

/// For `println!`s outside [`outln!`]: a panic from printing to a closed
/// pipe unwinds as before (destructors run) but prints no panic message.
pub fn hide_broken_pipe_panics() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if msg.starts_with("failed printing to stdout") && msg.contains("Broken pipe") {
            return;
        }
        default(info);
    }));
}

/// A digest given as `ALG:HEX` (`sha256:`, `sha384:`, `sha512:`, the length
/// checked against the algorithm; how veil prints init-data digests) or as
/// bare hex (`0x` allowed). Empty input is empty.
pub fn parse_digest(flag: &str, s: &str) -> Result<Vec<u8>> {
    let t = s.trim();
    if let Some((alg, hex_part)) = t.split_once(':') {
        let len = match alg.to_ascii_lowercase().as_str() {
            "sha256" => 32,
            "sha384" => 48,
            "sha512" => 64,
            other => bail!(
                "--{flag} {s:?}: unknown digest algorithm {other:?}; give sha256:HEX, sha384:HEX, sha512:HEX or bare hex"
            ),
        };
        let bytes = hex::decode(hex_part)
            .map_err(|e| anyhow::anyhow!("--{flag} {s:?}: not hex after {alg}: ({e})"))?;
        if bytes.len() != len {
            bail!(
                "--{flag} {s:?}: a {alg} digest is {len} bytes ({} hex characters), got {}",
                len * 2,
                bytes.len()
            );
        }
        return Ok(bytes);
    }
    let h = t.strip_prefix("0x").unwrap_or(t);
    hex::decode(h).map_err(|e| {
        anyhow::anyhow!("--{flag} {s:?}: expected hex or sha256:/sha384:/sha512:HEX ({e})")
    })
}

/// Bytes (report data, nonces) given as hex (`0x` allowed) or base64
/// (standard or URL-safe, padded or not). Input made only of hex digits is
/// hex; prefix `hex:` or `base64:` to say which. Empty input is empty.
pub fn parse_bytes(flag: &str, s: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let t = s.trim();
    let b64 = |v: &str| {
        STANDARD
            .decode(v)
            .or_else(|_| STANDARD_NO_PAD.decode(v))
            .or_else(|_| URL_SAFE.decode(v))
            .or_else(|_| URL_SAFE_NO_PAD.decode(v))
            .map_err(|e| anyhow::anyhow!("--{flag} {s:?}: not base64 ({e})"))
    };
    if let Some(v) = t.strip_prefix("base64:") {
        return b64(v);
    }
    let h = t.strip_prefix("hex:").or_else(|| t.strip_prefix("0x"));
    let forced_hex = h.is_some();
    let h = h.unwrap_or(t);
    if forced_hex || h.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex::decode(h).map_err(|e| anyhow::anyhow!("--{flag} {s:?}: not hex ({e})"));
    }
    b64(t)
}

/// Who may read a file the CLI writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Mode 0666 less the umask: measurements, policies, public keys.
    Public,
    /// Mode 0600 from the moment the file exists: private keys, KEKs,
    /// secrets fetched from a KBS.
    OwnerOnly,
}

/// What to do when the path already names a regular file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Existing {
    /// Replace it atomically.
    Replace,
    /// Fail, suggesting `--force` (checked again, atomically, when the file
    /// is put in place).
    Keep,
}

/// Write a non-secret output to `path`; see the module documentation.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    stage(path, bytes, Access::Public, Existing::Replace)?.commit()
}

/// Write a secret (key, KEK, resource) to `path`: only its owner can ever
/// read it (mode 0600 from creation, no symlinks followed).
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<()> {
    stage(path, bytes, Access::OwnerOnly, Existing::Replace)?.commit()
}

/// Prepare the write of `bytes` to `path`; nothing is visible at `path`
/// until [`Staged::commit`]. Dropping the result uncommitted leaves nothing
/// behind. Several outputs are staged first and committed together so that
/// a failure of one writes none.
pub fn stage(path: &Path, bytes: &[u8], access: Access, existing: Existing) -> Result<Staged> {
    let target = path.to_path_buf();
    if let Some(fd) = stdio_alias(path) {
        return Ok(Staged {
            target,
            how: How::Fd(fd, Zeroizing::new(bytes.to_vec())),
        });
    }
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("inspecting {}", path.display())),
    };
    if let Some(m) = &meta {
        let t = m.file_type();
        if t.is_symlink() {
            let to = fs::read_link(path)
                .map(|p| format!(" (to {})", p.display()))
                .unwrap_or_default();
            bail!(
                "{} is a symbolic link{to}: refusing to replace or follow it; give the path it points to",
                path.display()
            );
        }
        if t.is_char_device() || t.is_block_device() || t.is_fifo() {
            if access == Access::OwnerOnly {
                check_owner(path, m)?;
            }
            return Ok(Staged {
                target,
                how: How::InPlace(Zeroizing::new(bytes.to_vec())),
            });
        }
        if !t.is_file() {
            bail!(
                "{} exists and is a {}: refusing to write there",
                path.display(),
                kind(&t)
            );
        }
        if existing == Existing::Keep {
            bail!("{} exists (use --force to overwrite)", path.display());
        }
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} has no file name", path.display()))?;
    let (tmp, mut f) = create_temp(dir, name, access)?;
    let staged = Staged {
        target,
        how: How::Rename {
            tmp,
            dir: dir.to_path_buf(),
            existing,
        },
    };
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", staged.target.display()))?;
    Ok(staged)
}

/// An output prepared by [`stage`] (the bytes it still holds are zeroized
/// when it is dropped).
#[must_use = "nothing is written until commit"]
pub struct Staged {
    target: PathBuf,
    how: How,
}

enum How {
    /// A complete temporary file, renamed (or linked) over the target.
    Rename {
        tmp: PathBuf,
        dir: PathBuf,
        existing: Existing,
    },
    /// Written into the existing device or FIFO.
    InPlace(Zeroizing<Vec<u8>>),
    /// Written to an inherited file descriptor.
    Fd(i32, Zeroizing<Vec<u8>>),
    /// Committed (or failed): nothing to clean up.
    Done,
}

impl Staged {
    /// Put the output in place.
    pub fn commit(mut self) -> Result<()> {
        let target = self.target.clone();
        match std::mem::replace(&mut self.how, How::Done) {
            How::Rename { tmp, dir, existing } => {
                let r = match existing {
                    Existing::Replace => fs::rename(&tmp, &target),
                    // link(2) fails if anything, even a dangling symlink, is there.
                    Existing::Keep => fs::hard_link(&tmp, &target),
                };
                if r.is_err() || existing == Existing::Keep {
                    let _ = fs::remove_file(&tmp);
                }
                r.with_context(|| match existing {
                    Existing::Replace => format!("writing {}", target.display()),
                    Existing::Keep => {
                        format!("creating {} (use --force to overwrite)", target.display())
                    }
                })?;
                fs::File::open(&dir)
                    .and_then(|d| d.sync_all())
                    .with_context(|| format!("syncing directory {}", dir.display()))
            }
            How::InPlace(bytes) => write_in_place(&target, &bytes),
            How::Fd(fd, bytes) => {
                write_fd(fd, &bytes).with_context(|| format!("writing {}", target.display()))
            }
            How::Done => Ok(()),
        }
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if let How::Rename { tmp, .. } = &self.how {
            let _ = fs::remove_file(tmp);
        }
    }
}

/// `-` and the paths naming an inherited descriptor, as the descriptor.
fn stdio_alias(path: &Path) -> Option<i32> {
    let s = path.to_str()?;
    match s {
        "-" | "/dev/stdout" => return Some(1),
        "/dev/stderr" => return Some(2),
        _ => {}
    }
    let n = s
        .strip_prefix("/dev/fd/")
        .or_else(|| s.strip_prefix("/proc/self/fd/"))?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// A new file `.NAME.veil-RANDOM` in `dir`, created exclusively with the
/// output's final mode (a predictable name could be pre-created or linked).
fn create_temp(dir: &Path, name: &OsStr, access: Access) -> Result<(PathBuf, fs::File)> {
    let mode = match access {
        Access::Public => 0o666,
        Access::OwnerOnly => 0o600,
    };
    for _ in 0..16 {
        let mut r = [0u8; 8];
        rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut r)
            .map_err(|e| anyhow::anyhow!("random temporary file name: {e}"))?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".veil-{}", hex::encode(r)));
        let tmp = dir.join(tmp_name);
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((tmp, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(e).with_context(|| format!("creating a file in {}", dir.display()));
            }
        }
    }
    bail!(
        "no free temporary file name in {} after 16 tries",
        dir.display()
    )
}

/// A secret goes only into a device or FIFO of the caller's or root's: one
/// planted by another user would hand them the bytes.
fn check_owner(path: &Path, m: &fs::Metadata) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if m.uid() != me && m.uid() != 0 {
        bail!(
            "{} is a {} owned by uid {}: refusing to write a secret there",
            path.display(),
            kind(&m.file_type()),
            m.uid()
        );
    }
    Ok(())
}

/// Write into an existing device or FIFO without creating, truncating or
/// replacing it.
fn write_in_place(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NOCTTY)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    // It could have been swapped for something else since it was inspected.
    let t = f.metadata()?.file_type();
    if !(t.is_char_device() || t.is_block_device() || t.is_fifo()) {
        bail!(
            "{} changed into a {} while being written",
            path.display(),
            kind(&t)
        );
    }
    f.write_all(bytes)
        .and_then(|()| f.flush())
        .with_context(|| format!("writing {}", path.display()))
}

fn write_fd(fd: i32, bytes: &[u8]) -> std::io::Result<()> {
    match fd {
        1 => stdout_bytes(bytes),
        2 => std::io::stderr().lock().write_all(bytes),
        _ => {
            // SAFETY: the descriptor is only borrowed to duplicate it; if it
            // is not open, the duplication fails with EBADF.
            let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
            let mut f = fs::File::from(borrowed.try_clone_to_owned()?);
            f.write_all(bytes)?;
            f.flush()
        }
    }
}

fn kind(t: &fs::FileType) -> &'static str {
    if t.is_dir() {
        "directory"
    } else if t.is_socket() {
        "socket"
    } else if t.is_symlink() {
        "symbolic link"
    } else if t.is_fifo() {
        "FIFO"
    } else if t.is_char_device() {
        "character device"
    } else if t.is_block_device() {
        "block device"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Read `what` from `path`, refusing more than `limit` bytes (read no
/// further than that, whatever the file's size).
pub fn read_limited(path: &Path, what: &str, limit: usize) -> Result<Vec<u8>> {
    let file =
        fs::File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if bytes.len() > limit {
        let size = fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        bail!(
            "{what} {} is {size} bytes; the limit is {limit}",
            path.display()
        );
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn secret_is_0600_and_replaces_a_regular_file_without_leftovers() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("k");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&p, b"new").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"new");
        assert_eq!(fs::metadata(&p).unwrap().mode() & 0o777, 0o600);
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_are_refused_and_left_alone() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("real");
        fs::write(&real, "keep").unwrap();
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        for access in [Access::Public, Access::OwnerOnly] {
            let e = stage(&link, b"x", access, Existing::Replace).err().unwrap();
            assert!(format!("{e:#}").contains("symbolic link"), "{e:#}");
        }
        assert!(
            fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(fs::read(&real).unwrap(), b"keep");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 2);
    }

    #[test]
    fn keep_refuses_an_existing_file_and_uncommitted_stages_vanish() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let s = stage(&p, b"1", Access::OwnerOnly, Existing::Keep).unwrap();
        fs::write(&p, "raced").unwrap();
        assert!(s.commit().is_err());
        assert_eq!(fs::read(&p).unwrap(), b"raced");
        assert!(stage(&p, b"2", Access::Public, Existing::Keep).is_err());
        drop(stage(&d.path().join("g"), b"3", Access::Public, Existing::Replace).unwrap());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn stdio_aliases() {
        assert_eq!(stdio_alias(Path::new("-")), Some(1));
        assert_eq!(stdio_alias(Path::new("/dev/stdout")), Some(1));
        assert_eq!(stdio_alias(Path::new("/dev/stderr")), Some(2));
        assert_eq!(stdio_alias(Path::new("/proc/self/fd/7")), Some(7));
        assert_eq!(stdio_alias(Path::new("/dev/fd/63")), Some(63));
        assert_eq!(stdio_alias(Path::new("/dev/fd/")), None);
        assert_eq!(stdio_alias(Path::new("/dev/fd/1/x")), None);
        assert_eq!(stdio_alias(Path::new("./-x")), None);
    }

    #[test]
    fn sockets_and_directories_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let s = d.path().join("sock");
        let _l = std::os::unix::net::UnixListener::bind(&s).unwrap();
        assert!(write_atomic(&s, b"x").is_err());
        assert!(fs::symlink_metadata(&s).unwrap().file_type().is_socket());
        assert!(write_atomic(d.path(), b"x").is_err());
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn digests_with_or_without_their_algorithm() {
        let h = "ab".repeat(48);
        assert_eq!(parse_digest("d", &h).unwrap(), vec![0xab; 48]);
        assert_eq!(
            parse_digest("d", &format!("sha384:{h}")).unwrap(),
            vec![0xab; 48]
        );
        assert_eq!(
            parse_digest("d", &format!("0x{h}")).unwrap(),
            vec![0xab; 48]
        );
        assert!(parse_digest("d", "").unwrap().is_empty());
        let e = parse_digest("d", &format!("sha256:{h}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("a sha256 digest is 32 bytes"), "{e}");
        assert!(parse_digest("d", "md5:00").is_err());
    }

    #[test]
    fn bytes_as_hex_or_base64() {
        assert_eq!(parse_bytes("r", "00ff").unwrap(), vec![0, 0xff]);
        assert_eq!(parse_bytes("r", "AP8=").unwrap(), vec![0, 0xff]);
        assert_eq!(parse_bytes("r", "AP8").unwrap(), vec![0, 0xff]);
        assert_eq!(
            parse_bytes("r", "base64:0000").unwrap(),
            vec![0xd3, 0x4d, 0x34]
        );
        assert_eq!(parse_bytes("r", "hex:0000").unwrap(), vec![0, 0]);
        assert!(parse_bytes("r", "not base64!").is_err());
    }
}
