//! A deterministic `newc` cpio writer (the format the kernel unpacks as
//! initramfs): entries sorted by path, parents before children, mtime 0,
//! uid/gid 0, inode numbers in order, no compression.

use std::collections::BTreeMap;

/// One entry's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory with mode bits (permissions only).
    Dir { mode: u32 },
    /// A regular file.
    File { mode: u32, data: Vec<u8> },
    /// A symbolic link.
    Symlink { target: String },
    /// A character device.
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// Errors building an archive.
#[derive(Debug, thiserror::Error)]
pub enum CpioError {
    #[error("cpio path {0:?}: must be relative, without `.`/`..` or empty components")]
    BadPath(String),
    #[error("cpio entry {path:?} is {size} bytes, larger than the newc limit of 4 GiB")]
    TooLarge { path: String, size: usize },
}

/// An archive being assembled; [`Archive::write`] produces the bytes.
#[derive(Debug, Default, Clone)]
pub struct Archive {
    entries: BTreeMap<String, Node>,
}

fn check_path(path: &str) -> Result<(), CpioError> {
    if path.is_empty()
        || path.starts_with('/')
        || path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(CpioError::BadPath(path.into()));
    }
    Ok(())
}

impl Archive {
    /// An empty archive.
    pub fn new() -> Self {
        Archive::default()
    }

    /// Add (or replace) an entry; its parent directories are added as 0755.
    pub fn add(&mut self, path: &str, node: Node) -> Result<(), CpioError> {
        check_path(path)?;
        if let Node::File { data, .. } = &node {
            if u32::try_from(data.len()).is_err() {
                return Err(CpioError::TooLarge {
                    path: path.into(),
                    size: data.len(),
                });
            }
        }
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.entries
                .entry(parent.clone())
                .or_insert(Node::Dir { mode: 0o755 });
        }
        self.entries.insert(path.into(), node);
        Ok(())
    }

    /// Paths in the archive, in archive order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// The archive bytes: entries in byte order of their paths (so parents
    /// come first), then the trailer.
    pub fn write(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, (path, node)) in self.entries.iter().enumerate() {
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match node {
                Node::Dir { mode } => (0o040000 | (mode & 0o7777), &[], (0, 0)),
                Node::File { mode, data } => (0o100000 | (mode & 0o7777), data, (0, 0)),
                Node::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
                Node::CharDev { mode, major, minor } => {
                    (0o020000 | (mode & 0o7777), &[], (*major, *minor))
                }
            };
            let nlink = if matches!(node, Node::Dir { .. }) {
                2
            } else {
                1
            };
            header(
                &mut out,
                i as u32 + 1,
                mode,
                nlink,
                data.len() as u32,
                rdev,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
        out
    }
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08X}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_matches_newc() {
        let mut a = Archive::new();
        a.add(
            "bin/x",
            Node::File {
                mode: 0o755,
                data: b"hello".to_vec(),
            },
        )
        .unwrap();
        let b = a.write();
        // First entry: the implied parent "bin".
        assert_eq!(&b[..6], b"070701");
        let name_at = 110;
        assert_eq!(&b[name_at..name_at + 4], b"bin\0");
        // mode of "bin" is a directory 0755.
        assert_eq!(&b[14..22], b"000041ED");
        assert!(b.len() % 4 == 0);
        let s = String::from_utf8_lossy(&b);
        assert!(s.contains("bin/x\0"));
        assert!(s.contains("hello"));
        assert!(s.ends_with("TRAILER!!!\0\0\0\0") || s.contains("TRAILER!!!\0"));
    }

    #[test]
    fn order_is_independent_of_insertion() {
        let mut a = Archive::new();
        let mut b = Archive::new();
        let f = |d: &[u8]| Node::File {
            mode: 0o644,
            data: d.to_vec(),
        };
        a.add("etc/b", f(b"2")).unwrap();
        a.add("etc/a", f(b"1")).unwrap();
        b.add("etc/a", f(b"1")).unwrap();
        b.add("etc/b", f(b"2")).unwrap();
        assert_eq!(a.write(), b.write());
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut a = Archive::new();
        for p in ["", "/abs", "a/../b", "a//b", "./a"] {
            assert!(a.add(p, Node::Dir { mode: 0o755 }).is_err(), "{p}");
        }
    }
}
