//! Apply image layers to a root filesystem directory, safely.
//!
//! - Every path is resolved inside the root, one component at a time:
//!   `..` never climbs above the root, absolute paths and absolute symlink
//!   targets are taken relative to the root, and symlinks met on the way are
//!   followed only within the root (at most [`MAX_SYMLINK_HOPS`]). A
//!   symlink-then-file-through-it pair therefore lands inside the root.
//! - Hard links may only point at regular files or symlinks inside the root.
//! - Device nodes and FIFOs are refused unless allowed (then skipped and
//!   counted: veil never creates device nodes).
//! - Whiteouts (`.wh.NAME`) delete, opaque markers (`.wh..wh..opq`) hide the
//!   lower layers' contents of a directory.
//! - Entry count, path length and total bytes are bounded.
//! - Each layer's uncompressed stream must hash to the config's `diff_id`,
//!   the blob to its descriptor digest and, if encrypted, the ciphertext to
//!   its HMAC. Layers are applied in a private staging directory that only
//!   becomes the root filesystem (by rename) once every check has passed.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::crypt::{CryptError, DecryptingReader, KeyUnwrapper};
use crate::digest::{Digest, HashingReader};
use crate::source::{BlobSource, ResolvedImage, SourceError};
use crate::spec::{Compression, layer_kind};

/// Most symlinks followed while resolving one path.
pub const MAX_SYMLINK_HOPS: usize = 40;
/// Longest entry path accepted.
pub const MAX_PATH_BYTES: usize = 4096;

/// Bounds on what an image may unpack to.
#[derive(Debug, Clone)]
pub struct UnpackLimits {
    /// Most tar entries over all layers.
    pub max_entries: u64,
    /// Most uncompressed tar bytes over all layers.
    pub max_bytes: u64,
    /// Skip (instead of refusing) device nodes and FIFOs.
    pub allow_devices: bool,
}

impl Default for UnpackLimits {
    fn default() -> Self {
        UnpackLimits {
            max_entries: 1_000_000,
            max_bytes: 64 << 30,
            allow_devices: false,
        }
    }
}

/// What unpacking did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Layers applied.
    pub layers: usize,
    /// Tar entries processed.
    pub entries: u64,
    /// Uncompressed tar bytes read.
    pub bytes: u64,
    /// Whiteouts applied.
    pub whiteouts: u64,
    /// Device nodes / FIFOs skipped (only with `allow_devices`).
    pub skipped_devices: u64,
}

/// Why unpacking failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// Getting or checking a blob failed.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Decrypting a layer failed.
    #[error(transparent)]
    Crypt(#[from] CryptError),
    /// An entry is refused.
    #[error("layer {layer}: entry {path:?} refused: {reason}")]
    Entry {
        /// Layer index.
        layer: usize,
        /// The entry's path as found in the tar.
        path: String,
        /// Why.
        reason: String,
    },
    /// The tar stream is malformed.
    #[error("layer {layer}: malformed tar: {reason}")]
    Tar {
        /// Layer index.
        layer: usize,
        /// Parser message.
        reason: String,
    },
    /// A limit was exceeded.
    #[error("limit exceeded: {what}: at most {limit}")]
    Limit {
        /// Which limit.
        what: &'static str,
        /// The limit.
        limit: u64,
    },
    /// The uncompressed layer does not match its `diff_id`.
    #[error("diff_id check failed for layer {layer}: expected {expected}, got {actual}")]
    DiffId {
        /// Layer index.
        layer: usize,
        /// From the image config.
        expected: Digest,
        /// Of the uncompressed stream.
        actual: Digest,
    },
    /// A filesystem operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
}

impl UnpackError {
    /// Whether this is a failed integrity or safety check (exit 1): a
    /// digest, HMAC or diff_id mismatch, an unsafe entry, a limit.
    pub fn is_refusal(&self) -> bool {
        match self {
            UnpackError::Source(e) => e.is_refusal(),
            UnpackError::Crypt(e) => e.is_refusal(),
            UnpackError::DiffId { .. } | UnpackError::Entry { .. } | UnpackError::Limit { .. } => {
                true
            }
            _ => false,
        }
    }

    fn from_io(context: String, e: io::Error) -> Self {
        if e.get_ref().is_some_and(|i| i.is::<SourceError>()) {
            return UnpackError::Source(SourceError::from_io(context, e));
        }
        if e.get_ref().is_some_and(|i| i.is::<CryptError>()) {
            if let Some(Ok(c)) = e.into_inner().map(|i| i.downcast::<CryptError>()) {
                return UnpackError::Crypt(*c);
            }
            return UnpackError::Io {
                context,
                source: io::Error::other("decryption failed"),
            };
        }
        if e.get_ref().is_some_and(|i| i.is::<LimitHit>()) {
            let limit = match e.into_inner().map(|i| i.downcast::<LimitHit>()) {
                Some(Ok(l)) => l.0,
                _ => 0,
            };
            return UnpackError::Limit {
                what: "uncompressed bytes",
                limit,
            };
        }
        UnpackError::Io { context, source: e }
    }
}

#[derive(Debug)]
struct LimitHit(u64);
impl std::fmt::Display for LimitHit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "more than {} uncompressed bytes", self.0)
    }
}
impl std::error::Error for LimitHit {}

/// Unpack `image` (pulled from `source`) into `rootfs`, which must not
/// exist yet. Encrypted layers are decrypted with `unwrappers`.
pub fn unpack_image(
    source: &dyn BlobSource,
    image: &ResolvedImage,
    rootfs: &Path,
    unwrappers: &[&dyn KeyUnwrapper],
    limits: &UnpackLimits,
) -> Result<UnpackStats, UnpackError> {
    if fs::symlink_metadata(rootfs).is_ok() {
        return Err(UnpackError::Io {
            context: format!("unpacking into {}", rootfs.display()),
            source: io::Error::new(io::ErrorKind::AlreadyExists, "the target already exists"),
        });
    }
    let parent = match rootfs.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = tempfile::Builder::new()
        .prefix(".veil-unpack-")
        .tempdir_in(&parent)
        .map_err(|e| UnpackError::Io {
            context: format!("creating a staging directory in {}", parent.display()),
            source: e,
        })?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o755)).map_err(|e| {
        UnpackError::Io {
            context: "chmod staging directory".into(),
            source: e,
        }
    })?;
    let mut stats = UnpackStats::default();
    for (i, (layer, diff_id)) in image.layers().iter().zip(image.diff_ids()).enumerate() {
        let kind =
            layer_kind(&layer.media_type).ok_or_else(|| SourceError::UnsupportedMediaType {
                what: format!("layer {i}"),
                media_type: layer.media_type.clone(),
            })?;
        let blob: Box<dyn Read + '_> = if kind.encrypted {
            let mut r = DecryptingReader::open(source, layer, unwrappers)?;
            if kind.compression != Compression::None {
                // apply_layer checks the uncompressed stream against diff_id.
                r.uncompressed_digest_checked_by_caller(diff_id);
            }
            Box::new(r)
        } else {
            source.open_blob(layer)?
        };
        apply_layer(
            blob,
            kind.compression,
            diff_id,
            staging.path(),
            i,
            limits,
            &mut stats,
        )?;
        stats.layers += 1;
    }
    let kept = staging.keep();
    fs::rename(&kept, rootfs).map_err(|e| {
        let _ = fs::remove_dir_all(&kept);
        UnpackError::Io {
            context: format!("moving the unpacked image to {}", rootfs.display()),
            source: e,
        }
    })?;
    Ok(stats)
}

struct Limited<R> {
    inner: R,
    left: u64,
    limit: u64,
}

impl<R: Read> Read for Limited<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                LimitHit(self.limit),
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// Apply one layer stream (compressed as `compression`) to `root`,
/// checking the uncompressed stream against `diff_id` at the end and
/// reading `blob` to its end (so its own checks run).
pub fn apply_layer(
    mut blob: Box<dyn Read + '_>,
    compression: Compression,
    diff_id: &Digest,
    root: &Path,
    layer: usize,
    limits: &UnpackLimits,
    stats: &mut UnpackStats,
) -> Result<(), UnpackError> {
    let ctx = || format!("reading layer {layer}");
    let left = limits.max_bytes.saturating_sub(stats.bytes);
    let actual = {
        let decompressed: Box<dyn Read + '_> = match compression {
            Compression::None => Box::new(&mut blob),
            // Several gzip members are one stream, as Go's gzip reader reads them.
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => Box::new(crate::zstd::ZstdReader::new(&mut blob)),
        };
        let limited = Limited {
            inner: decompressed,
            left,
            limit: limits.max_bytes,
        };
        let mut hashing = HashingReader::new(limited, diff_id.algorithm());
        {
            let mut archive = tar::Archive::new(&mut hashing);
            let mut state = LayerState {
                root,
                layer,
                limits,
                written: HashSet::new(),
                opaque: Vec::new(),
            };
            let entries = archive.entries().map_err(|e| tar_err(layer, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| tar_err(layer, e))?;
                stats.entries += 1;
                if stats.entries > limits.max_entries {
                    return Err(UnpackError::Limit {
                        what: "tar entries",
                        limit: limits.max_entries,
                    });
                }
                state.apply(entry, stats)?;
            }
            state.finish_opaque()?;
        }
        // Whatever follows the end-of-archive marker is part of the diff_id.
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| UnpackError::from_io(ctx(), e))?;
        let (actual, count, _) = hashing.finish();
        stats.bytes += count;
        actual
    };
    // Read the blob to its end: runs the digest (and HMAC) checks.
    io::copy(&mut blob, &mut io::sink()).map_err(|e| UnpackError::from_io(ctx(), e))?;
    if &actual != diff_id {
        return Err(UnpackError::DiffId {
            layer,
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(())
}

fn tar_err(layer: usize, e: io::Error) -> UnpackError {
    let inner_is_ours = e
        .get_ref()
        .is_some_and(|i| i.is::<SourceError>() || i.is::<CryptError>() || i.is::<LimitHit>());
    if inner_is_ours {
        return UnpackError::from_io(format!("reading layer {layer}"), e);
    }
    UnpackError::Tar {
        layer,
        reason: e.to_string(),
    }
}

struct LayerState<'a> {
    root: &'a Path,
    layer: usize,
    limits: &'a UnpackLimits,
    /// Paths (relative) written by this layer, for opaque directories.
    written: HashSet<Vec<OsString>>,
    /// Opaque directories seen in this layer.
    opaque: Vec<Vec<OsString>>,
}

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

impl LayerState<'_> {
    fn refuse(&self, path: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer,
            path: String::from_utf8_lossy(path).chars().take(256).collect(),
            reason: reason.into(),
        }
    }

    fn io(&self, path: &Path, what: &str, e: io::Error) -> UnpackError {
        UnpackError::Io {
            context: format!("layer {}: {what} {}", self.layer, path.display()),
            source: e,
        }
    }

    /// Split an entry path into components; `..` is refused, `.` and empty
    /// components dropped, a leading `/` ignored.
    fn components(&self, raw: &[u8]) -> Result<Vec<OsString>, UnpackError> {
        if raw.len() > MAX_PATH_BYTES {
            return Err(self.refuse(raw, format!("path longer than {MAX_PATH_BYTES} bytes")));
        }
        if raw.contains(&0) {
            return Err(self.refuse(raw, "NUL byte in path"));
        }
        let mut out = Vec::new();
        for c in raw.split(|b| *b == b'/') {
            match c {
                b"" | b"." => continue,
                b".." => return Err(self.refuse(raw, "path contains `..`")),
                c if c.len() > 255 => {
                    return Err(self.refuse(raw, "path component longer than 255 bytes"));
                }
                c => out.push(OsString::from_vec(c.to_vec())),
            }
        }
        Ok(out)
    }

    /// Resolve `parents` inside the root, following symlinks only within
    /// it; missing directories are created. Returns the host path.
    fn resolve_dir(&self, raw: &[u8], parents: &[OsString]) -> Result<PathBuf, UnpackError> {
        let mut queue: std::collections::VecDeque<OsString> = parents.iter().cloned().collect();
        let mut stack: Vec<OsString> = Vec::new();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    stack.pop(); // never above the root
                    continue;
                }
                _ => {}
            }
            let mut here = self.root.to_path_buf();
            here.extend(&stack);
            here.push(&c);
            match fs::symlink_metadata(&here) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_SYMLINK_HOPS {
                        return Err(self.refuse(raw, "too many levels of symbolic links"));
                    }
                    let target = fs::read_link(&here).map_err(|e| self.io(&here, "readlink", e))?;
                    let t = target.as_os_str().as_bytes();
                    if t.starts_with(b"/") {
                        stack.clear();
                    }
                    let mut parts: Vec<OsString> = t
                        .split(|b| *b == b'/')
                        .filter(|p| !p.is_empty())
                        .map(|p| OsString::from_vec(p.to_vec()))
                        .collect();
                    parts.extend(queue.drain(..));
                    queue = parts.into();
                }
                Ok(m) if m.is_dir() => stack.push(c),
                Ok(_) => {
                    return Err(self.refuse(
                        raw,
                        format!("{} is not a directory", PathBuf::from(&c).display()),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&here).map_err(|e| self.io(&here, "mkdir", e))?;
                    stack.push(c);
                }
                Err(e) => return Err(self.io(&here, "stat", e)),
            }
        }
        let mut p = self.root.to_path_buf();
        p.extend(&stack);
        Ok(p)
    }

    /// Remove whatever is at `path` (not following symlinks).
    fn remove(&self, path: &Path) -> Result<(), UnpackError> {
        match fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => fs::remove_dir_all(path).map_err(|e| self.io(path, "remove", e)),
            Ok(_) => fs::remove_file(path).map_err(|e| self.io(path, "remove", e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io(path, "stat", e)),
        }
    }

    fn apply<R: Read>(
        &mut self,
        mut entry: tar::Entry<'_, R>,
        stats: &mut UnpackStats,
    ) -> Result<(), UnpackError> {
        let raw = entry.path_bytes().into_owned();
        let comps = self.components(&raw)?;
        let Some((name, parents)) = comps.split_last() else {
            return Ok(()); // the root itself ("./")
        };
        let name_b = name.as_bytes();
        let dir = self.resolve_dir(&raw, parents)?;
        if name_b == OPAQUE_MARKER.as_bytes() {
            self.opaque.push(parents.to_vec());
            return Ok(());
        }
        if let Some(hidden) = name_b.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." || hidden.contains(&b'/') {
                return Err(self.refuse(&raw, "whiteout of an invalid name"));
            }
            self.remove(&dir.join(PathBuf::from(OsString::from_vec(hidden.to_vec()))))?;
            stats.whiteouts += 1;
            return Ok(());
        }
        let target = dir.join(name);
        let header = entry.header().clone();
        let mode = header.mode().map_err(|e| tar_err(self.layer, e))?;
        let kind = header.entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        self.remove(&target)?;
                        fs::create_dir(&target).map_err(|e| self.io(&target, "mkdir", e))?;
                    }
                    Err(_) => fs::create_dir(&target).map_err(|e| self.io(&target, "mkdir", e))?,
                }
                fs::set_permissions(&target, fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| self.io(&target, "chmod", e))?;
            }
            T::Regular | T::Continuous => {
                self.remove(&target)?;
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&target)
                    .map_err(|e| self.io(&target, "create", e))?;
                io::copy(&mut entry, &mut f).map_err(|e| tar_err(self.layer, e))?;
                f.set_permissions(fs::Permissions::from_mode(mode & 0o7777))
                    .map_err(|e| self.io(&target, "chmod", e))?;
            }
            T::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&raw, "symlink without a target"))?
                    .into_owned();
                if link.is_empty() || link.len() > MAX_PATH_BYTES || link.contains(&0) {
                    return Err(self.refuse(&raw, "invalid symlink target"));
                }
                self.remove(&target)?;
                // The target is stored verbatim: resolution never follows it
                // outside the root.
                std::os::unix::fs::symlink(OsString::from_vec(link), &target)
                    .map_err(|e| self.io(&target, "symlink", e))?;
            }
            T::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&raw, "hard link without a target"))?
                    .into_owned();
                let lcomps = self.components(&link)?;
                let Some((lname, lparents)) = lcomps.split_last() else {
                    return Err(self.refuse(&raw, "hard link to the root"));
                };
                let src = self.resolve_dir(&link, lparents)?.join(lname);
                match fs::symlink_metadata(&src) {
                    Ok(m) if m.is_file() || m.file_type().is_symlink() => {}
                    Ok(_) => {
                        return Err(self.refuse(&raw, "hard link to something not a regular file"));
                    }
                    Err(_) => return Err(self.refuse(&raw, "hard link to a missing file")),
                }
                if src == target {
                    return Ok(());
                }
                self.remove(&target)?;
                fs::hard_link(&src, &target).map_err(|e| self.io(&target, "link", e))?;
            }
            T::Char | T::Block | T::Fifo => {
                if !self.limits.allow_devices {
                    return Err(self.refuse(&raw, "device nodes and FIFOs are not allowed"));
                }
                stats.skipped_devices += 1;
                return Ok(());
            }
            T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => return Ok(()),
            other => {
                return Err(self.refuse(&raw, format!("unsupported entry type {other:?}")));
            }
        }
        self.chown_if_root(&target, &header, kind == T::Symlink)?;
        let rel: Vec<OsString> = comps.clone();
        self.written.insert(rel);
        Ok(())
    }

    fn chown_if_root(
        &self,
        target: &Path,
        h: &tar::Header,
        symlink: bool,
    ) -> Result<(), UnpackError> {
        let root_uid = fs::metadata(self.root).map(|m| m.uid()).unwrap_or(1);
        if root_uid != 0 {
            return Ok(());
        }
        let (Ok(uid), Ok(gid)) = (h.uid(), h.gid()) else {
            return Ok(());
        };
        let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
            return Err(UnpackError::Entry {
                layer: self.layer,
                path: target.display().to_string(),
                reason: "uid/gid out of range".into(),
            });
        };
        let r = if symlink {
            std::os::unix::fs::lchown(target, Some(uid), Some(gid))
        } else {
            std::os::unix::fs::chown(target, Some(uid), Some(gid))
        };
        r.map_err(|e| self.io(target, "chown", e))
    }

    /// Hide what lower layers put in this layer's opaque directories.
    fn finish_opaque(&mut self) -> Result<(), UnpackError> {
        let opaque = std::mem::take(&mut self.opaque);
        for dir in opaque {
            let host = self.resolve_dir(b"(opaque dir)", &dir)?;
            let children = fs::read_dir(&host).map_err(|e| self.io(&host, "readdir", e))?;
            for child in children {
                let child = child.map_err(|e| self.io(&host, "readdir", e))?;
                let mut rel = dir.clone();
                rel.push(child.file_name());
                let keep = self
                    .written
                    .iter()
                    .any(|w| w.len() >= rel.len() && w[..rel.len()] == rel[..]);
                if !keep {
                    self.remove(&child.path())?;
                }
            }
        }
        Ok(())
    }
}
