//! A root filesystem directory as one deterministic image layer
//! (`veil image import`).
//!
//! Unlike [`crate::builder::write_dir_tar`] (test images, modes normalized),
//! this keeps what a real rootfs needs: permission bits including
//! set-user-ID, set-group-ID and sticky, symlinks stored as links (absolute
//! targets included, never followed), hard links as tar links. It leaks
//! nothing of the host: owners are 0:0 with no user or group names, mtimes
//! are clamped to a caller-chosen time (`SOURCE_DATE_EPOCH` style), entries
//! are sorted by name. The tree is walked with `openat(O_NOFOLLOW)` from a
//! descriptor of the root, so a symlink (or a directory swapped for one
//! while the walk runs) is never followed out of it. Device nodes, FIFOs
//! and sockets are refused, naming the path.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags};

/// How a rootfs is archived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RootfsTarOptions {
    /// Modification times later than this (seconds since the epoch) are
    /// stored as this; earlier ones are kept.
    pub mtime_clamp: u64,
}

/// What went into the archive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RootfsStats {
    /// Directories (the root itself not counted).
    pub dirs: u64,
    /// Regular files, each stored once.
    pub files: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Hard links to a file stored earlier.
    pub hardlinks: u64,
    /// Bytes of file content.
    pub bytes: u64,
}

/// Why a rootfs could not be archived.
#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    /// Something in the tree cannot be stored in an image layer.
    #[error("{path}: {reason}")]
    Refused {
        /// Path inside the root.
        path: PathBuf,
        /// Why, and what to do instead.
        reason: String,
    },
    /// A system call failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// The operation.
        op: &'static str,
        /// Path inside the root.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl Fn(io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

fn errno<'a>(op: &'static str, path: &'a Path) -> impl Fn(rustix::io::Errno) -> RootfsError + 'a {
    move |e| RootfsError::Io {
        op,
        path: path.to_path_buf(),
        source: e.into(),
    }
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);
const FILE_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);

/// Write the tree under `root` as a deterministic uncompressed tar to `out`.
/// `root` itself may be reached through a symlink (it is the caller's
/// choice); nothing below it is followed.
pub fn write_rootfs_tar(
    root: &Path,
    opts: RootfsTarOptions,
    out: &mut dyn Write,
) -> Result<RootfsStats, RootfsError> {
    let fd = rfs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("opening the rootfs directory", root))?;
    let mut w = Walker {
        tar: tar::Builder::new(out),
        opts,
        stats: RootfsStats::default(),
        seen: HashMap::new(),
    };
    w.dir(fd.as_fd(), Path::new(""))?;
    w.tar
        .finish()
        .map_err(io_err("finishing the archive", Path::new("")))?;
    Ok(w.stats)
}

struct Walker<'a> {
    tar: tar::Builder<&'a mut dyn Write>,
    opts: RootfsTarOptions,
    stats: RootfsStats,
    /// (dev, ino) of multiply-linked files already stored → their path.
    seen: HashMap<(u64, u64), PathBuf>,
}

impl Walker<'_> {
    fn header(&self, st: &rfs::Stat, kind: tar::EntryType) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(st.st_mode & 0o7777);
        h.set_uid(0);
        h.set_gid(0);
        let mtime = u64::try_from(st.st_mtime).unwrap_or(0);
        h.set_mtime(mtime.min(self.opts.mtime_clamp));
        h.set_size(0);
        h
    }

    fn dir(&mut self, dir: BorrowedFd<'_>, rel: &Path) -> Result<(), RootfsError> {
        let mut names = list(dir, rel)?;
        names.sort();
        for name in names {
            let path = rel.join(std::ffi::OsStr::from_bytes(&name));
            let st = rfs::statat(dir, name.as_slice(), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(errno("lstat", &path))?;
            match FileType::from_raw_mode(st.st_mode) {
                FileType::Directory => {
                    let mut h = self.header(&st, tar::EntryType::Directory);
                    self.tar
                        .append_data(&mut h, &path, io::empty())
                        .map_err(io_err("archiving", &path))?;
                    self.stats.dirs += 1;
                    let sub = rfs::openat(dir, name.as_slice(), DIR_FLAGS, Mode::empty())
                        .map_err(errno("opening directory", &path))?;
                    self.dir(sub.as_fd(), &path)?;
                }
                FileType::RegularFile => self.file(dir, &name, &path, &st)?,
                FileType::Symlink => {
                    let target = rfs::readlinkat(dir, name.as_slice(), Vec::new())
                        .map_err(errno("readlink", &path))?;
                    let target = PathBuf::from(std::ffi::OsStr::from_bytes(target.as_bytes()));
                    let mut h = self.header(&st, tar::EntryType::Symlink);
                    self.tar
                        .append_link(&mut h, &path, &target)
                        .map_err(io_err("archiving", &path))?;
                    self.stats.symlinks += 1;
                }
                other => {
                    return Err(RootfsError::Refused {
                        path,
                        reason: format!(
                            "is a {} ({other:?}); an image layer built by veil holds only \
                             regular files, directories, symbolic and hard links: remove it \
                             from the rootfs (device nodes are provided by the sandbox)",
                            kind_name(other)
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    fn file(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        path: &Path,
        st: &rfs::Stat,
    ) -> Result<(), RootfsError> {
        let key = (st.st_dev, st.st_ino);
        if st.st_nlink > 1 {
            if let Some(first) = self.seen.get(&key) {
                let mut h = self.header(st, tar::EntryType::Link);
                let first = first.clone();
                self.tar
                    .append_link(&mut h, path, &first)
                    .map_err(io_err("archiving", path))?;
                self.stats.hardlinks += 1;
                return Ok(());
            }
        }
        let fd: OwnedFd =
            rfs::openat(dir, name, FILE_FLAGS, Mode::empty()).map_err(errno("opening", path))?;
        let fst = rfs::fstat(&fd).map_err(errno("fstat", path))?;
        if fst.st_dev != st.st_dev || fst.st_ino != st.st_ino {
            return Err(RootfsError::Refused {
                path: path.to_path_buf(),
                reason: "changed while it was being archived (another inode was opened): \
                         import a tree nothing else is modifying"
                    .into(),
            });
        }
        let size = u64::try_from(fst.st_size).unwrap_or(0);
        let mut h = self.header(&fst, tar::EntryType::Regular);
        h.set_size(size);
        let mut reader = ExactReader {
            inner: File::from(fd).take(size),
            left: size,
        };
        self.tar
            .append_data(&mut h, path, &mut reader)
            .map_err(io_err("archiving", path))?;
        if reader.left != 0 {
            return Err(RootfsError::Refused {
                path: path.to_path_buf(),
                reason: format!(
                    "shrank while it was being archived ({size} bytes expected): import a \
                     tree nothing else is modifying"
                ),
            });
        }
        if st.st_nlink > 1 {
            self.seen.insert(key, path.to_path_buf());
        }
        self.stats.files += 1;
        self.stats.bytes += size;
        Ok(())
    }
}

/// Reads a file's content up to the size its header announced, tracking how
/// much is missing (a file truncated under us must not yield a short entry).
struct ExactReader {
    inner: io::Take<File>,
    left: u64,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left -= n as u64;
        if n == 0 && self.left != 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("file ended {} bytes early", self.left),
            ));
        }
        Ok(n)
    }
}

fn list(dir: BorrowedFd<'_>, rel: &Path) -> Result<Vec<Vec<u8>>, RootfsError> {
    let fd = rfs::openat(dir, ".", DIR_FLAGS, Mode::empty()).map_err(errno("opening", rel))?;
    let mut d = rfs::Dir::new(fd).map_err(errno("readdir", rel))?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(errno("readdir", rel))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

fn kind_name(t: FileType) -> &'static str {
    match t {
        FileType::Fifo => "FIFO",
        FileType::Socket => "socket",
        FileType::CharacterDevice => "character device",
        FileType::BlockDevice => "block device",
        _ => "special file",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _, symlink};

    struct Entry {
        path: String,
        kind: tar::EntryType,
        mode: u32,
        uid: u64,
        mtime: u64,
        link: Option<String>,
        data: Vec<u8>,
    }

    fn archive(dir: &Path, clamp: u64) -> (Vec<u8>, RootfsStats) {
        let mut out = Vec::new();
        let stats = write_rootfs_tar(dir, RootfsTarOptions { mtime_clamp: clamp }, &mut out)
            .expect("archive");
        (out, stats)
    }

    fn entries(tar_bytes: &[u8]) -> Vec<Entry> {
        let mut a = tar::Archive::new(tar_bytes);
        a.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                let h = e.header();
                Entry {
                    path: e.path().unwrap().to_string_lossy().into_owned(),
                    kind: h.entry_type(),
                    mode: h.mode().unwrap(),
                    uid: h.uid().unwrap(),
                    mtime: h.mtime().unwrap(),
                    link: e
                        .link_name()
                        .unwrap()
                        .map(|l| l.to_string_lossy().into_owned()),
                    data,
                }
            })
            .collect()
    }

    fn rootfs() -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir(r.join("tmp")).unwrap();
        std::fs::set_permissions(r.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::fs::create_dir(r.join("root")).unwrap();
        std::fs::set_permissions(r.join("root"), std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(r.join("usr/bin/tool"), b"#!/bin/sh\necho hi\n").unwrap();
        std::fs::set_permissions(
            r.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        std::fs::hard_link(r.join("usr/bin/tool"), r.join("usr/bin/tool2")).unwrap();
        symlink("/etc/passwd", r.join("passwd")).unwrap();
        symlink("/etc", r.join("hostetc")).unwrap();
        symlink("usr/bin", r.join("bin")).unwrap();
        t
    }

    #[test]
    fn keeps_modes_and_links_and_leaks_no_owner_or_host_file() {
        let t = rootfs();
        let r = t.path();
        // Only root can give a file away; the owner must not show either way.
        let _ = std::os::unix::fs::lchown(r.join("usr/bin/tool"), Some(1234), Some(5678));
        // chown clears set-user-ID: set it again.
        std::fs::set_permissions(
            r.join("usr/bin/tool"),
            std::fs::Permissions::from_mode(0o4755),
        )
        .unwrap();
        let (bytes, stats) = archive(r, 0);
        assert_eq!(
            stats,
            RootfsStats {
                dirs: 4,
                files: 1,
                symlinks: 3,
                hardlinks: 1,
                bytes: 18
            }
        );
        let es = entries(&bytes);
        let names: Vec<&str> = es.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            names,
            [
                "bin",
                "hostetc",
                "passwd",
                "root",
                "tmp",
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "usr/bin/tool2"
            ]
        );
        let get = |p: &str| es.iter().find(|e| e.path == p).unwrap();
        assert_eq!(get("tmp").mode, 0o1777);
        assert_eq!(get("root").mode, 0o700);
        let tool = get("usr/bin/tool");
        assert_eq!(tool.mode, 0o4755);
        assert_eq!(tool.data, b"#!/bin/sh\necho hi\n");
        assert!(es.iter().all(|e| e.uid == 0 && e.mtime == 0));
        let tool2 = get("usr/bin/tool2");
        assert_eq!(tool2.kind, tar::EntryType::Link);
        assert_eq!(tool2.link.as_deref(), Some("usr/bin/tool"));
        let passwd = get("passwd");
        assert_eq!(passwd.kind, tar::EntryType::Symlink);
        assert_eq!(passwd.link.as_deref(), Some("/etc/passwd"));
        assert!(passwd.data.is_empty(), "the host's /etc/passwd was read");
        // A symlinked directory is stored as a link, not walked.
        assert!(!names.iter().any(|n| n.starts_with("hostetc/")));
    }

    #[test]
    fn same_tree_same_bytes_and_mtimes_are_clamped() {
        let a = rootfs();
        let b = rootfs();
        let now = std::fs::metadata(a.path().join("usr/bin/tool"))
            .unwrap()
            .mtime() as u64;
        assert_eq!(archive(a.path(), 1000).0, archive(b.path(), 1000).0);
        // Earlier times survive the clamp.
        let old = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec {
                tv_sec: 500,
                tv_nsec: 0,
            },
            last_modification: rustix::fs::Timespec {
                tv_sec: 500,
                tv_nsec: 0,
            },
        };
        rustix::fs::utimensat(
            rustix::fs::CWD,
            a.path().join("usr/bin/tool"),
            &old,
            AtFlags::empty(),
        )
        .unwrap();
        let es = entries(&archive(a.path(), now + 10).0);
        let tool = es.iter().find(|e| e.path == "usr/bin/tool").unwrap();
        assert_eq!(tool.mtime, 500);
        let usr = es.iter().find(|e| e.path == "usr").unwrap();
        assert!(usr.mtime >= now && usr.mtime <= now + 10);
    }

    #[test]
    fn special_files_are_refused_by_path() {
        let t = tempfile::tempdir().unwrap();
        std::fs::create_dir(t.path().join("run")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            t.path().join("run/fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let err = write_rootfs_tar(
            t.path(),
            RootfsTarOptions { mtime_clamp: 0 },
            &mut Vec::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.starts_with("run/fifo: is a FIFO"), "{err}");
    }
}
