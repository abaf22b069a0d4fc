//! Filesystem operations confined to one directory tree.
//!
//! Nothing here takes a path that the kernel would resolve from the host's
//! root or through a symlink at its last component:
//!
//! - directories are found with `openat2(root_fd, path, RESOLVE_IN_ROOT |
//!   RESOLVE_NO_MAGICLINKS)`: the kernel treats absolute symlinks as
//!   relative to the tree and never lets `..` climb above it;
//! - everything else is a single name under a directory file descriptor,
//!   used with a call that does not follow a symlink there (`O_NOFOLLOW`,
//!   `O_EXCL`, `AT_SYMLINK_NOFOLLOW`, `linkat` without
//!   `AT_SYMLINK_FOLLOW`, `unlinkat`, `mkdirat`, `symlinkat`), or an
//!   operation on a file descriptor (`fchmod`, `fchown`).
//!
//! Without `openat2` (Linux before 5.6, or a seccomp filter) opening the
//! tree fails: there is deliberately no path-based fallback.

use std::ffi::CStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, CWD, Dir, FileType, Gid, Mode, OFlags, ResolveFlags, Uid};
use rustix::io::Errno;

/// Most symlinks followed while creating the directories of one path; the
/// kernel applies the same bound (40) to each lookup.
pub const MAX_SYMLINK_HOPS: usize = 40;

const RESOLVE: ResolveFlags = ResolveFlags::IN_ROOT.union(ResolveFlags::NO_MAGICLINKS);
const DIR_PATH: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::CLOEXEC);
const DIR_READ: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Why a confined operation failed.
#[derive(Debug)]
pub enum FsError {
    /// The operation would leave the tree, follow a link or clash with what
    /// is there; the text says why.
    Refused(String),
    /// The system call `op` failed.
    Io {
        /// The call (`mkdirat`, `openat2`…).
        op: &'static str,
        /// Its error.
        source: io::Error,
    },
}

fn os(op: &'static str) -> impl Fn(Errno) -> FsError {
    move |e| FsError::Io {
        op,
        source: e.into(),
    }
}

/// The root of a confined tree, held open as a directory.
#[derive(Debug)]
pub struct Root {
    fd: OwnedFd,
}

impl Root {
    /// Open the directory `path` (not a symlink) as a confined tree.
    pub fn open(path: &Path) -> io::Result<Root> {
        let fd = rfs::openat(CWD, path, DIR_READ, Mode::empty())?;
        // Fail closed up front when openat2 is missing.
        match rfs::openat2(&fd, ".", DIR_PATH, Mode::empty(), RESOLVE) {
            Ok(_) => Ok(Root { fd }),
            Err(Errno::NOSYS) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "openat2(2) is not available (Linux 5.6 or later is needed): \
                 layers are only unpacked with kernel-confined path resolution",
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// The root directory's file descriptor.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The root directory's owner.
    pub fn owner(&self) -> io::Result<u32> {
        Ok(rfs::fstat(&self.fd)?.st_uid)
    }

    /// Open the directory at `comps` (names, possibly `..` from symlink
    /// targets) resolved inside the tree, following symlinks on the way.
    /// With `create`, missing directories, including those a dangling
    /// symlink points at, are made one at a time with `mkdirat`; without,
    /// a missing directory is `Ok(None)`. The result is an `O_PATH`
    /// descriptor: use it as the directory of `*at` calls.
    pub fn dir(&self, comps: &[&[u8]], create: bool) -> Result<Option<OwnedFd>, FsError> {
        let mut hops = 0;
        self.dir_hops(comps, create, &mut hops)
    }

    fn dir_hops(
        &self,
        comps: &[&[u8]],
        create: bool,
        hops: &mut usize,
    ) -> Result<Option<OwnedFd>, FsError> {
        match self.resolve(comps) {
            Ok(fd) => return Ok(Some(fd)),
            Err(Errno::NOENT) if !create => return Ok(None),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(resolve_error(comps, e)),
        }
        // Walk down to the first missing component and make it. Every
        // prefix is resolved by the kernel again, from the root.
        let mut parent = self.resolve(&[]).map_err(|e| resolve_error(&[], e))?;
        for i in 0..comps.len() {
            match self.resolve(&comps[..=i]) {
                Ok(fd) => {
                    parent = fd;
                    continue;
                }
                Err(Errno::NOENT) => {}
                Err(e) => return Err(resolve_error(&comps[..=i], e)),
            }
            // `.` and `..` exist once their parent resolved: comps[i] is a name.
            let name = comps[i];
            match stat(parent.as_fd(), name)? {
                None => mkdir(parent.as_fd(), name, 0o755)?,
                Some(st) if is(&st, FileType::Symlink) => {
                    *hops += 1;
                    if *hops > MAX_SYMLINK_HOPS {
                        return Err(FsError::Refused("too many levels of symbolic links".into()));
                    }
                    // A dangling symlink: make what it points at, resolved
                    // as the kernel would (from its directory, or from the
                    // root if absolute), then go through the link.
                    let target =
                        rfs::readlinkat(&parent, name, Vec::new()).map_err(os("readlinkat"))?;
                    let target = target.as_bytes();
                    let mut via: Vec<&[u8]> = if target.starts_with(b"/") {
                        Vec::new()
                    } else {
                        comps[..i].to_vec()
                    };
                    via.extend(target.split(|b| *b == b'/').filter(|c| !c.is_empty()));
                    self.dir_hops(&via, true, hops)?;
                }
                Some(_) => {
                    return Err(FsError::Refused(format!(
                        "{} is not a directory",
                        display(&comps[..=i])
                    )));
                }
            }
            parent = self
                .resolve(&comps[..=i])
                .map_err(|e| resolve_error(&comps[..=i], e))?;
        }
        Ok(Some(parent))
    }

    fn resolve(&self, comps: &[&[u8]]) -> Result<OwnedFd, Errno> {
        let path = if comps.is_empty() {
            b".".to_vec()
        } else {
            comps.join(&b'/')
        };
        let mut tries = 0;
        loop {
            match rfs::openat2(&self.fd, &path[..], DIR_PATH, Mode::empty(), RESOLVE) {
                // The kernel asks for a retry when a rename raced with `..`.
                Err(Errno::AGAIN) if tries < 8 => tries += 1,
                r => return r,
            }
        }
    }
}

fn resolve_error(comps: &[&[u8]], e: Errno) -> FsError {
    match e {
        Errno::LOOP => FsError::Refused("too many levels of symbolic links".into()),
        Errno::NOTDIR => FsError::Refused(format!(
            "a component of {} is not a directory",
            display(comps)
        )),
        Errno::NAMETOOLONG => {
            FsError::Refused("path too long once symbolic links are followed".into())
        }
        e => os("openat2")(e),
    }
}

fn display(comps: &[&[u8]]) -> String {
    String::from_utf8_lossy(&comps.join(&b'/')).into_owned()
}

fn is(st: &rfs::Stat, kind: FileType) -> bool {
    FileType::from_raw_mode(st.st_mode) == kind
}

/// Whether `st` is a directory.
pub fn is_dir(st: &rfs::Stat) -> bool {
    is(st, FileType::Directory)
}

/// What `name` in `dir` is, without following it; `None` if absent.
pub fn stat(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<rfs::Stat>, FsError> {
    match rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(os("fstatat")(e)),
    }
}

/// What kind of thing `st` is, for messages.
pub fn kind_name(st: &rfs::Stat) -> &'static str {
    match FileType::from_raw_mode(st.st_mode) {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        _ => "a special file",
    }
}

/// Whether two stats are of the same inode.
pub fn same_file(a: &rfs::Stat, b: &rfs::Stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdir(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> Result<(), FsError> {
    rfs::mkdirat(dir, name, Mode::from_raw_mode(mode)).map_err(os("mkdirat"))
}

/// Open the directory `name` in `dir` for reading and `fchmod`/`fchown`,
/// refusing a symlink.
pub fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, FsError> {
    rfs::openat(dir, name, DIR_READ, Mode::empty()).map_err(os("openat"))
}

/// Create the regular file `name` in `dir` (it must not exist), mode 0600
/// until its owner and mode are set.
pub fn create_file(dir: BorrowedFd<'_>, name: &[u8]) -> Result<File, FsError> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, Mode::from_raw_mode(0o600)).map_err(os("openat"))?;
    Ok(File::from(fd))
}

/// Open the existing regular file `name` in `dir` to change its mode
/// (never a symlink, FIFO or device).
pub fn open_regular(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, FsError> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    let fd = rfs::openat(dir, name, flags, Mode::empty()).map_err(os("openat"))?;
    let st = rfs::fstat(&fd).map_err(os("fstat"))?;
    if !is(&st, FileType::RegularFile) {
        return Err(FsError::Refused(format!(
            "{} is not a regular file",
            String::from_utf8_lossy(name)
        )));
    }
    Ok(fd)
}

/// `symlinkat(target, dir, name)`: the target is stored verbatim.
pub fn symlink(dir: BorrowedFd<'_>, name: &[u8], target: &[u8]) -> Result<(), FsError> {
    rfs::symlinkat(target, dir, name).map_err(os("symlinkat"))
}

/// Hard-link `src_name` in `src_dir` as `name` in `dir`, not following a
/// symlink at `src_name`.
pub fn hard_link(
    src_dir: BorrowedFd<'_>,
    src_name: &[u8],
    dir: BorrowedFd<'_>,
    name: &[u8],
) -> Result<(), FsError> {
    rfs::linkat(src_dir, src_name, dir, name, AtFlags::empty()).map_err(os("linkat"))
}

/// Change the owner of `name` in `dir` itself (a symlink, not its target).
pub fn chown(dir: BorrowedFd<'_>, name: &[u8], uid: u32, gid: u32) -> Result<(), FsError> {
    rfs::chownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(os("fchownat"))
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: BorrowedFd<'_>, uid: u32, gid: u32) -> Result<(), FsError> {
    rfs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid))).map_err(os("fchown"))
}

/// `fchmod(fd, mode)`.
pub fn fchmod(fd: BorrowedFd<'_>, mode: u32) -> Result<(), FsError> {
    rfs::fchmod(fd, Mode::from_raw_mode(mode)).map_err(os("fchmod"))
}

/// The names in directory `dir` (an `O_PATH` descriptor is fine), without
/// `.` and `..`.
pub fn names(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, FsError> {
    let fd = rfs::openat(dir, ".", DIR_READ, Mode::empty()).map_err(os("openat"))?;
    let mut d = Dir::new(fd).map_err(os("readdir"))?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(os("getdents64"))?;
        let n = e.file_name().to_bytes();
        if n != b"." && n != b".." {
            out.push(n.to_vec());
        }
    }
    Ok(out)
}

/// Remove `name` from `dir`, whatever it is, without following symlinks;
/// a directory is removed with everything under it. Absent is fine.
pub fn remove(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), FsError> {
    match stat(dir, name)? {
        None => Ok(()),
        Some(st) if is_dir(&st) => remove_tree(dir, name),
        Some(_) => unlink(dir, name, AtFlags::empty()),
    }
}

fn unlink(dir: BorrowedFd<'_>, name: &[u8], flags: AtFlags) -> Result<(), FsError> {
    match rfs::unlinkat(dir, name, flags) {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(os("unlinkat")(e)),
    }
}

/// Remove the directory `name` in `parent` and its contents. Iterative,
/// holding one directory open at a time and reading each directory once:
/// a layer can nest directories deeper than any stack or file descriptor
/// table, and put a million entries in one.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), FsError> {
    struct Level {
        /// This directory's name in the level above.
        name: Vec<u8>,
        /// Its identity, checked when climbing back to it with `..`.
        id: rfs::Stat,
        /// Its subdirectories still to remove.
        subdirs: Vec<Vec<u8>>,
    }
    let enter = |cur: &OwnedFd, name: Vec<u8>| -> Result<Level, FsError> {
        Ok(Level {
            name,
            id: rfs::fstat(cur).map_err(os("fstat"))?,
            subdirs: unlink_files(cur.as_fd())?,
        })
    };
    let mut cur = open_dir(parent, name)?;
    let mut path = vec![enter(&cur, name.to_vec())?];
    while let Some(level) = path.last_mut() {
        if let Some(sub) = level.subdirs.pop() {
            let next = open_dir(cur.as_fd(), &sub)?;
            path.push(enter(&next, sub)?);
            cur = next;
            continue;
        }
        // `cur` is empty now: climb and remove it.
        let done = path.pop().map(|l| l.name).unwrap_or_default();
        let Some(up_level) = path.last() else {
            break;
        };
        let up = open_dir(cur.as_fd(), b"..")?;
        let st = rfs::fstat(&up).map_err(os("fstat"))?;
        if !same_file(&st, &up_level.id) {
            return Err(FsError::Refused(
                "a directory moved while it was being removed".into(),
            ));
        }
        unlink(up.as_fd(), &done, AtFlags::REMOVEDIR)?;
        cur = up;
    }
    drop(cur);
    unlink(parent, name, AtFlags::REMOVEDIR)
}

/// Unlink everything in `dir` but its subdirectories; their names.
fn unlink_files(dir: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>, FsError> {
    let fd = rfs::openat(dir, ".", DIR_READ, Mode::empty()).map_err(os("openat"))?;
    let mut d = Dir::new(fd).map_err(os("readdir"))?;
    let mut subdirs = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(os("getdents64"))?;
        let n: &CStr = e.file_name();
        let n = n.to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let is_subdir = match e.file_type() {
            FileType::Directory => true,
            FileType::Unknown => stat(dir, n)?.is_some_and(|st| is_dir(&st)),
            _ => false,
        };
        if is_subdir {
            subdirs.push(n.to_vec());
        } else {
            unlink(dir, n, AtFlags::empty())?;
        }
    }
    Ok(subdirs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, Root) {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::create_dir(tmp.path().join("root")).unwrap();
        std::fs::write(tmp.path().join("host"), "host").unwrap();
        let root = Root::open(&tmp.path().join("root")).unwrap();
        (tmp, root)
    }

    #[test]
    fn dangling_symlinks_are_created_inside_the_root() {
        let (tmp, root) = root();
        let r = tmp.path().join("root");
        std::os::unix::fs::symlink("/usr/lib", r.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../x", r.join("up")).unwrap();
        std::os::unix::fs::symlink("abs/../y", r.join("rel")).unwrap();
        for (comps, lands) in [
            (&[&b"abs"[..], b"a"][..], "usr/lib/a"),
            (&[&b"up"[..], b"b"][..], "x/b"),
            (&[&b"rel"[..]][..], "usr/y"),
        ] {
            let dir = root.dir(comps, true).unwrap().unwrap();
            mkdir(dir.as_fd(), b"probe", 0o755).unwrap();
            assert!(r.join(lands).join("probe").is_dir(), "{lands}");
        }
        assert_eq!(root.dir(&[b"missing"], false).unwrap().map(|_| ()), None);
        std::os::unix::fs::symlink("loop", r.join("loop")).unwrap();
        assert!(matches!(
            root.dir(&[b"loop"], true),
            Err(FsError::Refused(_))
        ));
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("host")).unwrap(),
            "host"
        );
    }

    #[test]
    fn remove_handles_deep_and_wide_trees_and_never_follows() {
        let (tmp, root) = root();
        let r = tmp.path().join("root");
        // 600 levels of 9 bytes: deeper than PATH_MAX.
        let mut cur = open_dir(root.fd(), b".").unwrap();
        mkdir(cur.as_fd(), b"t", 0o755).unwrap();
        cur = open_dir(cur.as_fd(), b"t").unwrap();
        for i in 0..600 {
            create_file(cur.as_fd(), b"f").unwrap();
            symlink(
                cur.as_fd(),
                b"host",
                tmp.path().join("host").as_os_str().as_encoded_bytes(),
            )
            .unwrap();
            if i % 200 == 0 {
                for w in 0..100 {
                    mkdir(cur.as_fd(), format!("w{w}").as_bytes(), 0o755).unwrap();
                }
            }
            mkdir(cur.as_fd(), b"dddddddd", 0o755).unwrap();
            cur = open_dir(cur.as_fd(), b"dddddddd").unwrap();
        }
        remove(root.fd(), b"t").unwrap();
        assert!(!r.join("t").exists());
        // A symlink to a directory outside: only the link goes.
        std::os::unix::fs::symlink(tmp.path(), r.join("out")).unwrap();
        remove(root.fd(), b"out").unwrap();
        assert_eq!(
            std::fs::read_to_string(tmp.path().join("host")).unwrap(),
            "host"
        );
    }
}
