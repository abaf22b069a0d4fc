//! The data directory's lock file, `kbs.lock`. Every running server holds it
//! shared for its whole lifetime (several servers may share one SQLite
//! database); offline maintenance such as KEK rotation takes it exclusively,
//! so it never rewrites a database a live server is reading and writing.
//! The lock is `flock(2)`: the kernel drops it when the holder exits, so a
//! crashed server leaves no stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file inside the data directory.
pub const LOCK_FILE: &str = "kbs.lock";

/// A held lock on a data directory; released on drop (or process exit).
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// A server runs on it (or, for a server, a rotation is under way).
    #[error("the KBS data dir {} is in use by {holder}{}: {advice}", dir.display(), pid_text(*pid))]
    InUse {
        /// The data directory.
        dir: PathBuf,
        /// Who holds it, in words.
        holder: &'static str,
        /// The holder's PID, when the lock file names a live process.
        pid: Option<u32>,
        /// What to do.
        advice: &'static str,
    },
    /// The lock file could not be opened or locked.
    #[error("locking {}: {source}", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn pid_text(pid: Option<u32>) -> String {
    pid.map(|p| format!(" (PID {p})")).unwrap_or_default()
}

impl DataDirLock {
    /// Lock for a server: shared with other servers, refused while a
    /// rotation holds it exclusively. Records this PID in the file.
    pub fn for_server(dir: &Path) -> Result<Self, LockError> {
        let (mut file, path) = open(dir)?;
        match try_flock(&file, libc::LOCK_SH) {
            Ok(true) => {}
            Ok(false) => {
                return Err(LockError::InUse {
                    dir: dir.to_path_buf(),
                    holder: "a KEK rotation (`veil kbs rotate-kek`)",
                    pid: holder_pid(&mut file),
                    advice: "start the server after it finishes",
                });
            }
            Err(source) => return Err(LockError::Io { path, source }),
        }
        // Best effort: only names the PID in a refusal.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(DataDirLock { _file: file })
    }

    /// Lock for offline maintenance: refused while any server holds it.
    pub fn exclusive(dir: &Path) -> Result<Self, LockError> {
        let (mut file, path) = open(dir)?;
        match try_flock(&file, libc::LOCK_EX) {
            Ok(true) => Ok(DataDirLock { _file: file }),
            Ok(false) => Err(LockError::InUse {
                dir: dir.to_path_buf(),
                holder: "a running KBS",
                pid: holder_pid(&mut file),
                advice: "stop the server first (rotating under a live server corrupts its view of the secrets)",
            }),
            Err(source) => Err(LockError::Io { path, source }),
        }
    }
}

/// `flock(op | LOCK_NB)`: Ok(false) when another holder prevents it.
/// (`File::try_lock` is newer than the workspace's MSRV.)
fn try_flock(file: &File, op: libc::c_int) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a descriptor `file` keeps open for the whole call.
    if unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

fn open(dir: &Path) -> Result<(File, PathBuf), LockError> {
    let path = dir.join(LOCK_FILE);
    let mut opts = OpenOptions::new();
    opts.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    match opts.open(&path) {
        Ok(f) => Ok((f, path)),
        Err(source) => Err(LockError::Io { path, source }),
    }
}

/// The PID written in the lock file, if that process still exists.
fn holder_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.take(32).read_to_string(&mut text).ok()?;
    let pid: u32 = text.trim().parse().ok()?;
    Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_share_and_rotation_excludes() {
        let dir = tempfile::tempdir().unwrap();
        let a = DataDirLock::for_server(dir.path()).unwrap();
        let b = DataDirLock::for_server(dir.path()).unwrap();
        let e = DataDirLock::exclusive(dir.path()).unwrap_err().to_string();
        assert!(e.contains("in use by a running KBS"), "{e}");
        assert!(e.contains(&format!("PID {}", std::process::id())), "{e}");
        drop((a, b));
        let x = DataDirLock::exclusive(dir.path()).unwrap();
        let e = DataDirLock::for_server(dir.path()).unwrap_err().to_string();
        assert!(e.contains("KEK rotation"), "{e}");
        drop(x);
        DataDirLock::for_server(dir.path()).unwrap();
    }
}
