//! Apply image layers to a root filesystem directory, safely.
//!
//! **Confinement.** Layers are applied in a private staging directory,
//! opened once as a directory file descriptor; no filesystem call of the
//! unpacker takes a path that the kernel would resolve from the host's
//! root or through a symlink at its last component:
//!
//! - An entry's parent directory is opened with `openat2(root_fd, …,
//!   RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`: symlinks on the way are
//!   followed, but the kernel takes absolute targets relative to the root
//!   and never lets `..` climb above it. So a symlink `dir -> /usr` (from
//!   this or an earlier layer) followed by `dir/x` writes `root/usr/x`.
//!   Missing directories are made one at a time with `mkdirat` under the
//!   descriptor of their parent. Without `openat2` (Linux < 5.6) unpacking
//!   fails; there is no path-based fallback.
//! - The entry itself is a single name under that descriptor, never
//!   followed: files are created with `O_CREAT | O_EXCL | O_NOFOLLOW`,
//!   directories with `mkdirat` and reopened with `O_DIRECTORY |
//!   O_NOFOLLOW`, then `fchown` and `fchmod` act on those descriptors;
//!   symlinks are made with `symlinkat` and owned with `fchownat(…,
//!   AT_SYMLINK_NOFOLLOW)`; nothing ever chmods a symlink.
//! - Hard links: the source is resolved the same confined way and must be
//!   a regular file (a link to a symlink, directory or device is refused);
//!   `linkat` without `AT_SYMLINK_FOLLOW`.
//! - Whatever an entry replaces, whiteouts (`.wh.NAME`) and opaque markers
//!   (`.wh..wh..opq`, which hide the lower layers' contents of a
//!   directory) are removed with `unlinkat` under a directory descriptor,
//!   walking directories iteratively with `O_NOFOLLOW`.
//! - Entry paths with `..` are refused; device nodes and FIFOs are refused
//!   unless allowed (then skipped and counted: veil never creates them).
//!
//! **Integrity.** Each layer's uncompressed stream must hash to the
//! config's `diff_id`, the blob to its descriptor digest and, if encrypted,
//! the ciphertext to its HMAC. Those checks end at the end of the stream,
//! after the entries were applied, so the staging directory only becomes
//! the root filesystem (by rename) once every check has passed; a refused
//! image leaves nothing but a removed staging directory.
//!
//! **Bounds** ([`UnpackLimits`]): entries, total uncompressed bytes, the
//! per-layer decompression ratio (a bomb is refused after at most
//! `ratio_floor_bytes`), the size of one file and path lengths.

mod confined;
mod limits;

use std::collections::HashSet;
use std::fs;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::crypt::{CryptError, DecryptingReader, KeyUnwrapper};
use crate::digest::{Digest, HashingReader};
use crate::source::{BlobSource, ResolvedImage, SourceError};
use crate::spec::{Compression, layer_kind};

pub use confined::MAX_SYMLINK_HOPS;
use confined::{FsError, Root};
use limits::{LimitHit, Meter};
pub use limits::{ParseSizeError, UnpackLimits};

/// Longest entry path accepted.
pub const MAX_PATH_BYTES: usize = 4096;

/// What unpacking did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UnpackStats {
    /// Layers applied.
    pub layers: usize,
    /// Tar entries processed.
    pub entries: u64,
    /// Uncompressed tar bytes read (also counted when a layer fails).
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
    /// A limit of [`UnpackLimits`] was exceeded.
    #[error(
        "layer {layer}: {what}: {actual} exceeds the unpack limit {field} = {limit}{detail}; \
         raise it with the policy setting `[sandbox.unpack_limits] {field}`{flag}",
        flag = cli_flag(field)
    )]
    Limit {
        /// Layer index.
        layer: usize,
        /// What was counted.
        what: &'static str,
        /// The [`UnpackLimits`] field (`max_bytes`, `max_ratio`…).
        field: &'static str,
        /// Its value.
        limit: u64,
        /// The value reached.
        actual: u64,
        /// More context (empty or starting with a space).
        detail: String,
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

/// The `veil run` / `veil image unpack` flag that sets a limit, as advice.
fn cli_flag(field: &str) -> String {
    let flag = match field {
        "max_bytes" => "--max-image-size",
        "max_entries" => "--max-image-entries",
        "max_ratio" => "--max-image-ratio",
        "max_file_bytes" => "--max-image-file-size",
        _ => return String::new(),
    };
    format!(" or `{flag}` (veil run with a generated policy, veil image unpack)")
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

    fn from_io(layer: usize, context: String, e: io::Error) -> Self {
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
            if let Some(Ok(hit)) = e.into_inner().map(|i| i.downcast::<LimitHit>()) {
                return hit.into_error(layer);
            }
            return UnpackError::Io {
                context,
                source: io::Error::other("limit exceeded"),
            };
        }
        UnpackError::Io { context, source: e }
    }
}

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
    // Dropped (and removed, without following symlinks) on any error.
    let staging = tempfile::Builder::new()
        .prefix(".veil-unpack-")
        .tempdir_in(&parent)
        .map_err(|e| UnpackError::Io {
            context: format!("creating a staging directory in {}", parent.display()),
            source: e,
        })?;
    let root = open_root(staging.path())?;
    confined::fchmod(root.fd(), 0o755).map_err(|e| UnpackError::Io {
        context: "chmod staging directory".into(),
        source: match e {
            FsError::Io { source, .. } => source,
            FsError::Refused(r) => io::Error::other(r),
        },
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
        apply_to_root(
            blob,
            kind.compression,
            diff_id,
            &root,
            i,
            limits,
            &mut stats,
        )?;
        stats.layers += 1;
    }
    drop(root);
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

fn open_root(path: &Path) -> Result<Root, UnpackError> {
    Root::open(path).map_err(|e| UnpackError::Io {
        context: format!("opening {} to unpack into", path.display()),
        source: e,
    })
}

/// Apply one layer stream (compressed as `compression`) to the directory
/// `root`, checking the uncompressed stream against `diff_id` at the end
/// and reading `blob` to its end (so its own checks run). Every write stays
/// inside `root` (see the module documentation).
pub fn apply_layer(
    blob: Box<dyn Read + '_>,
    compression: Compression,
    diff_id: &Digest,
    root: &Path,
    layer: usize,
    limits: &UnpackLimits,
    stats: &mut UnpackStats,
) -> Result<(), UnpackError> {
    let root = open_root(root)?;
    apply_to_root(blob, compression, diff_id, &root, layer, limits, stats)
}

fn apply_to_root(
    mut blob: Box<dyn Read + '_>,
    compression: Compression,
    diff_id: &Digest,
    root: &Root,
    layer: usize,
    limits: &UnpackLimits,
    stats: &mut UnpackStats,
) -> Result<(), UnpackError> {
    let meter = Meter::new(limits, stats.bytes);
    let applied = apply_entries(
        &mut blob,
        compression,
        diff_id,
        root,
        layer,
        limits,
        stats,
        &meter,
    );
    stats.bytes += meter.uncompressed();
    let actual = applied?;
    // Read the blob to its end: runs the digest (and HMAC) checks.
    io::copy(&mut blob, &mut io::sink())
        .map_err(|e| UnpackError::from_io(layer, format!("reading layer {layer}"), e))?;
    if &actual != diff_id {
        return Err(UnpackError::DiffId {
            layer,
            expected: diff_id.clone(),
            actual,
        });
    }
    Ok(())
}

/// Apply the entries of one layer; the digest of its uncompressed stream.
#[allow(clippy::too_many_arguments)]
fn apply_entries(
    blob: &mut dyn Read,
    compression: Compression,
    diff_id: &Digest,
    root: &Root,
    layer: usize,
    limits: &UnpackLimits,
    stats: &mut UnpackStats,
    meter: &Meter<'_>,
) -> Result<Digest, UnpackError> {
    let compressed = meter.compressed(blob);
    let decompressed: Box<dyn Read + '_> = match compression {
        Compression::None => Box::new(compressed),
        // Several gzip members are one stream, as Go's gzip reader reads them.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
        Compression::Zstd => Box::new(crate::zstd::ZstdReader::new(compressed)),
    };
    let mut hashing =
        HashingReader::new(meter.uncompressed_reader(decompressed), diff_id.algorithm());
    // Owners from the tar headers are applied when running as root (the
    // staging directory is ours).
    let as_root = root.owner().map_err(|e| UnpackError::Io {
        context: format!("layer {layer}: fstat root"),
        source: e,
    })? == 0;
    {
        let mut archive = tar::Archive::new(&mut hashing);
        let mut state = LayerState {
            root,
            layer,
            limits,
            chown: as_root,
            written: HashSet::new(),
            opaque: Vec::new(),
        };
        let entries = archive.entries().map_err(|e| tar_err(layer, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| tar_err(layer, e))?;
            stats.entries += 1;
            if stats.entries > limits.max_entries {
                return Err(UnpackError::Limit {
                    layer,
                    what: "tar entries over all layers",
                    field: "max_entries",
                    limit: limits.max_entries,
                    actual: stats.entries,
                    detail: String::new(),
                });
            }
            state.apply(entry, stats)?;
        }
        state.finish_opaque()?;
    }
    // Whatever follows the end-of-archive marker is part of the diff_id.
    io::copy(&mut hashing, &mut io::sink())
        .map_err(|e| UnpackError::from_io(layer, format!("reading layer {layer}"), e))?;
    Ok(hashing.finish().0)
}

fn tar_err(layer: usize, e: io::Error) -> UnpackError {
    let inner_is_ours = e
        .get_ref()
        .is_some_and(|i| i.is::<SourceError>() || i.is::<CryptError>() || i.is::<LimitHit>());
    if inner_is_ours {
        return UnpackError::from_io(layer, format!("reading layer {layer}"), e);
    }
    UnpackError::Tar {
        layer,
        reason: e.to_string(),
    }
}

fn lossy(path: &[u8]) -> String {
    String::from_utf8_lossy(path).chars().take(256).collect()
}

fn fs_error(layer: usize, path: &[u8], what: &str, e: FsError) -> UnpackError {
    match e {
        FsError::Refused(reason) => UnpackError::Entry {
            layer,
            path: lossy(path),
            reason,
        },
        FsError::Io { op, source } => UnpackError::Io {
            context: format!("layer {layer}: {what} {:?} ({op})", lossy(path)),
            source,
        },
    }
}

struct LayerState<'a> {
    root: &'a Root,
    layer: usize,
    limits: &'a UnpackLimits,
    /// Apply owners from the tar headers (when running as root).
    chown: bool,
    /// Paths (components) written by this layer, for opaque directories.
    written: HashSet<Vec<Vec<u8>>>,
    /// Opaque directories seen in this layer.
    opaque: Vec<Vec<Vec<u8>>>,
}

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

fn slices(comps: &[Vec<u8>]) -> Vec<&[u8]> {
    comps.iter().map(Vec::as_slice).collect()
}

impl LayerState<'_> {
    fn refuse(&self, path: &[u8], reason: impl Into<String>) -> UnpackError {
        UnpackError::Entry {
            layer: self.layer,
            path: lossy(path),
            reason: reason.into(),
        }
    }

    /// `r`, with an error naming this layer and the entry `path`.
    fn fs<T>(&self, path: &[u8], what: &str, r: Result<T, FsError>) -> Result<T, UnpackError> {
        r.map_err(|e| fs_error(self.layer, path, what, e))
    }

    /// Split an entry path into components; `..` is refused, `.` and empty
    /// components dropped, a leading `/` ignored.
    fn components(&self, raw: &[u8]) -> Result<Vec<Vec<u8>>, UnpackError> {
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
                c => out.push(c.to_vec()),
            }
        }
        Ok(out)
    }

    /// The directory `comps` in the root (see [`Root::dir`]).
    fn dir(
        &self,
        raw: &[u8],
        comps: &[Vec<u8>],
        create: bool,
    ) -> Result<Option<OwnedFd>, UnpackError> {
        self.fs(
            raw,
            "resolving the directory of",
            self.root.dir(&slices(comps), create),
        )
    }

    /// The parent directory of an entry, created if missing.
    fn parent(&self, raw: &[u8], comps: &[Vec<u8>]) -> Result<OwnedFd, UnpackError> {
        self.dir(raw, comps, true)?
            .ok_or_else(|| self.refuse(raw, "its directory could not be created"))
    }

    /// The owner to give an entry, if running as root.
    fn owner(&self, raw: &[u8], h: &tar::Header) -> Result<Option<(u32, u32)>, UnpackError> {
        if !self.chown {
            return Ok(None);
        }
        let (Ok(uid), Ok(gid)) = (h.uid(), h.gid()) else {
            return Ok(None);
        };
        match (u32::try_from(uid), u32::try_from(gid)) {
            (Ok(uid), Ok(gid)) => Ok(Some((uid, gid))),
            _ => Err(self.refuse(raw, "uid/gid out of range")),
        }
    }

    /// Owner first, then mode: `chown` clears set-user-ID bits.
    fn set_owner_mode(
        &self,
        raw: &[u8],
        fd: BorrowedFd<'_>,
        owner: Option<(u32, u32)>,
        mode: u32,
    ) -> Result<(), UnpackError> {
        if let Some((uid, gid)) = owner {
            self.fs(raw, "chown", confined::fchown(fd, uid, gid))?;
        }
        self.fs(raw, "chmod", confined::fchmod(fd, mode))
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
        if name == OPAQUE_MARKER {
            self.opaque.push(parents.to_vec());
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            if hidden.is_empty() || hidden == b"." || hidden == b".." {
                return Err(self.refuse(&raw, "whiteout of an invalid name"));
            }
            // Nothing to delete in a directory that does not exist.
            if let Some(dir) = self.dir(&raw, parents, false)? {
                self.fs(&raw, "whiteout", confined::remove(dir.as_fd(), hidden))?;
            }
            stats.whiteouts += 1;
            return Ok(());
        }
        let header = entry.header().clone();
        let kind = header.entry_type();
        use tar::EntryType as T;
        match kind {
            T::Directory | T::Regular | T::Continuous | T::Symlink | T::Link => {}
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
        let mode = header.mode().map_err(|e| tar_err(self.layer, e))? & 0o7777;
        let owner = self.owner(&raw, &header)?;
        let dir = self.parent(&raw, parents)?;
        let dir = dir.as_fd();
        match kind {
            T::Directory => {
                match self.fs(&raw, "stat", confined::stat(dir, name))? {
                    Some(st) if confined::is_dir(&st) => {}
                    existing => {
                        if existing.is_some() {
                            self.fs(&raw, "remove", confined::remove(dir, name))?;
                        }
                        self.fs(&raw, "mkdir", confined::mkdir(dir, name, 0o700))?;
                    }
                }
                let d = self.fs(&raw, "open", confined::open_dir(dir, name))?;
                self.set_owner_mode(&raw, d.as_fd(), owner, mode)?;
            }
            T::Symlink => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&raw, "symlink without a target"))?
                    .into_owned();
                if link.is_empty() || link.len() > MAX_PATH_BYTES || link.contains(&0) {
                    return Err(self.refuse(&raw, "invalid symlink target"));
                }
                self.fs(&raw, "remove", confined::remove(dir, name))?;
                // Stored verbatim: resolution never follows it outside the root.
                self.fs(&raw, "symlink", confined::symlink(dir, name, &link))?;
                if let Some((uid, gid)) = owner {
                    self.fs(&raw, "chown", confined::chown(dir, name, uid, gid))?;
                }
            }
            T::Link => {
                let link = entry
                    .link_name_bytes()
                    .ok_or_else(|| self.refuse(&raw, "hard link without a target"))?
                    .into_owned();
                self.hard_link(&raw, &link, dir, name, owner, mode)?;
            }
            _ => {
                let size = entry.size();
                if size > self.limits.max_file_bytes {
                    return Err(UnpackError::Limit {
                        layer: self.layer,
                        what: "size of one file",
                        field: "max_file_bytes",
                        limit: self.limits.max_file_bytes,
                        actual: size,
                        detail: format!(" ({:?})", lossy(&raw)),
                    });
                }
                self.fs(&raw, "remove", confined::remove(dir, name))?;
                let mut f = self.fs(&raw, "create", confined::create_file(dir, name))?;
                io::copy(&mut entry, &mut f).map_err(|e| tar_err(self.layer, e))?;
                self.set_owner_mode(&raw, f.as_fd(), owner, mode)?;
            }
        }
        self.written.insert(comps);
        Ok(())
    }

    /// Hard-link `link` (resolved in the root; a regular file) as `name` in
    /// `dir`.
    fn hard_link(
        &self,
        raw: &[u8],
        link: &[u8],
        dir: BorrowedFd<'_>,
        name: &[u8],
        owner: Option<(u32, u32)>,
        mode: u32,
    ) -> Result<(), UnpackError> {
        let target = lossy(link);
        let lcomps = self.components(link).map_err(|e| match e {
            UnpackError::Entry { reason, .. } => {
                self.refuse(raw, format!("hard link target {target:?}: {reason}"))
            }
            e => e,
        })?;
        let Some((lname, lparents)) = lcomps.split_last() else {
            return Err(self.refuse(raw, "hard link to the root"));
        };
        let missing = || self.refuse(raw, format!("hard link to a missing file {target:?}"));
        let Some(src_dir) = self.dir(raw, lparents, false)? else {
            return Err(missing());
        };
        let Some(src) = self.fs(raw, "stat", confined::stat(src_dir.as_fd(), lname))? else {
            return Err(missing());
        };
        let kind = confined::kind_name(&src);
        if kind != "a regular file" {
            return Err(self.refuse(
                raw,
                format!("hard link to {kind} {target:?}: only regular files may be hard-linked"),
            ));
        }
        let existing = self.fs(raw, "stat", confined::stat(dir, name))?;
        if !existing.is_some_and(|t| confined::same_file(&t, &src)) {
            self.fs(raw, "remove", confined::remove(dir, name))?;
            let r = confined::hard_link(src_dir.as_fd(), lname, dir, name);
            self.fs(raw, "link", r)?;
        }
        if let Some((uid, gid)) = owner {
            self.fs(raw, "chown", confined::chown(dir, name, uid, gid))?;
        }
        // Set the mode through a descriptor that cannot be a symlink, only
        // if it differs (after chown, which clears set-user-ID bits).
        let now = self.fs(raw, "stat", confined::stat(dir, name))?;
        if now.is_none_or(|st| st.st_mode & 0o7777 != mode) {
            let f = self.fs(raw, "open", confined::open_regular(dir, name))?;
            self.fs(raw, "chmod", confined::fchmod(f.as_fd(), mode))?;
        }
        Ok(())
    }

    /// Hide what lower layers put in this layer's opaque directories.
    fn finish_opaque(&mut self) -> Result<(), UnpackError> {
        let opaque = std::mem::take(&mut self.opaque);
        for dir in opaque {
            let mut raw = dir.join(&b'/');
            raw.extend_from_slice(b"/.wh..wh..opq");
            let Some(fd) = self.dir(&raw, &dir, false)? else {
                continue;
            };
            for child in self.fs(&raw, "readdir", confined::names(fd.as_fd()))? {
                let mut rel = dir.clone();
                rel.push(child);
                let keep = self
                    .written
                    .iter()
                    .any(|w| w.len() >= rel.len() && w[..rel.len()] == rel[..]);
                if !keep {
                    let child = &rel[rel.len() - 1];
                    self.fs(&raw, "remove", confined::remove(fd.as_fd(), child))?;
                }
            }
        }
        Ok(())
    }
}
