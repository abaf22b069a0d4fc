//! OCI image layout directories (`oci:DIR[:TAG]`), read and written.
//!
//! Reading: `index.json` → the entry tagged `TAG` (or the only entry) →
//! [`resolve`](crate::source::resolve). Every blob is opened by digest from
//! `blobs/<alg>/<hex>`, must be a regular file of exactly the descriptor's
//! size, and is hashed while read.
//!
//! Writing is atomic per file: blobs and `index.json` are written to a
//! temporary file in the same directory and renamed into place, so a failed
//! write never leaves a half-written blob under its digest.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::digest::{Digest, DigestAlgorithm, HashingWriter};
use crate::source::{
    self, BlobSource, MAX_MANIFEST_BYTES, ResolvedImage, SourceError, VerifyingReader,
};
use crate::spec::{ANNOTATION_REF_NAME, Descriptor, Index, Platform};

/// Contents of the `oci-layout` marker file.
const OCI_LAYOUT_MARKER: &str = r#"{"imageLayoutVersion":"1.0.0"}"#;

/// A parsed `oci:DIR[:TAG]` reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OciRef {
    /// The layout directory.
    pub dir: PathBuf,
    /// The tag (`org.opencontainers.image.ref.name`), if given.
    pub tag: Option<String>,
}

impl OciRef {
    /// Parse `oci:DIR[:TAG]`. As in skopeo, the directory ends at the first
    /// `:` after the prefix.
    pub fn parse(reference: &str) -> Result<Self, SourceError> {
        let bad = |reason: &str| SourceError::Reference {
            reference: reference.chars().take(200).collect(),
            reason: reason.into(),
        };
        let rest = reference
            .strip_prefix("oci:")
            .ok_or_else(|| bad("expected the form oci:DIR[:TAG]"))?;
        let (dir, tag) = match rest.split_once(':') {
            Some((d, t)) => (d, Some(t)),
            None => (rest, None),
        };
        if dir.is_empty() {
            return Err(bad("empty directory"));
        }
        if let Some(t) = tag {
            validate_tag(t).map_err(|r| bad(&r))?;
        }
        Ok(OciRef {
            dir: PathBuf::from(dir),
            tag: tag.map(str::to_owned),
        })
    }
}

impl std::fmt::Display for OciRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "oci:{}", self.dir.display())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        Ok(())
    }
}

fn validate_tag(tag: &str) -> Result<(), String> {
    if tag.is_empty() || tag.len() > 255 {
        return Err(format!("tag must be 1 to 255 bytes, got {}", tag.len()));
    }
    if !tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-:/@+".contains(&b))
    {
        return Err("tag may only contain A-Z a-z 0-9 . _ - : / @ +".into());
    }
    Ok(())
}

/// An OCI image layout directory.
#[derive(Debug, Clone)]
pub struct OciLayout {
    root: PathBuf,
}

impl OciLayout {
    /// Open an existing layout (its `oci-layout` marker must exist).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, SourceError> {
        let root = dir.as_ref().to_path_buf();
        let marker = root.join("oci-layout");
        let bytes = read_limited(&marker, 4096, "oci-layout marker")?;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Marker {
            image_layout_version: String,
        }
        let m: Marker = serde_json::from_slice(&bytes)
            .map_err(|e| SourceError::malformed("oci-layout marker", e))?;
        if m.image_layout_version != "1.0.0" {
            return Err(SourceError::malformed(
                "oci-layout marker",
                format!(
                    "imageLayoutVersion {:?} (expected \"1.0.0\")",
                    m.image_layout_version
                ),
            ));
        }
        Ok(OciLayout { root })
    }

    /// Open the layout at `dir`, creating an empty one if `dir` does not
    /// hold one yet.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, SourceError> {
        let root = dir.as_ref().to_path_buf();
        if root.join("oci-layout").exists() {
            return Self::open(root);
        }
        let ctx = |what: &str| format!("creating layout {}: {what}", root.display());
        fs::create_dir_all(root.join("blobs").join("sha256"))
            .map_err(|e| SourceError::io(ctx("blobs/sha256"), e))?;
        let layout = OciLayout { root };
        if !layout.root.join("index.json").exists() {
            layout.write_index(&Index::default())?;
        }
        atomic_write(&layout.root, "oci-layout", OCI_LAYOUT_MARKER.as_bytes())?;
        Ok(layout)
    }

    /// The layout's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Path of the blob with `digest` (it may not exist).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Whether a blob with `digest` is present (not verified).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Parse `index.json`.
    pub fn index(&self) -> Result<Index, SourceError> {
        let bytes = read_limited(
            &self.root.join("index.json"),
            MAX_MANIFEST_BYTES,
            "index.json",
        )?;
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| SourceError::malformed("index.json", e))?;
        if index.schema_version != 2 {
            return Err(SourceError::malformed(
                "index.json",
                format!("schemaVersion {} (expected 2)", index.schema_version),
            ));
        }
        Ok(index)
    }

    /// The `index.json` entry for `tag`; without a tag, the only entry.
    pub fn find(&self, tag: Option<&str>) -> Result<Descriptor, SourceError> {
        let index = self.index()?;
        match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) == Some(t))
                .cloned()
                .ok_or_else(|| {
                    SourceError::NotFound(format!(
                        "tag {t:?} in {} (tags present: {})",
                        self.root.display(),
                        tags(&index).join(", ")
                    ))
                }),
            None => match index.manifests.as_slice() {
                [only] => Ok(only.clone()),
                [] => Err(SourceError::NotFound(format!(
                    "any image in {}: index.json is empty",
                    self.root.display()
                ))),
                many => Err(SourceError::Reference {
                    reference: format!("oci:{}", self.root.display()),
                    reason: format!(
                        "the layout holds {} images; name one with oci:DIR:TAG (tags: {})",
                        many.len(),
                        tags(&index).join(", ")
                    ),
                }),
            },
        }
    }

    /// Resolve `tag` (or the only image) to a verified image for `platform`.
    pub fn resolve(
        &self,
        tag: Option<&str>,
        platform: &Platform,
    ) -> Result<ResolvedImage, SourceError> {
        let root = self.find(tag)?;
        source::resolve(self, &root, platform)
    }

    /// Store `bytes` as a blob; returns its descriptor.
    pub fn write_blob(&self, bytes: &[u8], media_type: &str) -> Result<Descriptor, SourceError> {
        self.write_blob_from(&mut &bytes[..], media_type)
    }

    /// Stream `reader` into a blob; returns its descriptor. Nothing appears
    /// under `blobs/` unless the whole stream was read.
    pub fn write_blob_from(
        &self,
        reader: &mut dyn Read,
        media_type: &str,
    ) -> Result<Descriptor, SourceError> {
        let mut w = self.blob_writer()?;
        io::copy(reader, &mut w).map_err(|e| SourceError::from_io("writing blob", e))?;
        w.commit(media_type)
    }

    /// A writer that becomes a blob when [`BlobWriter::commit`] is called
    /// (and is discarded if dropped before).
    pub fn blob_writer(&self) -> Result<BlobWriter, SourceError> {
        let dir = self.root.join("blobs").join("sha256");
        fs::create_dir_all(&dir)
            .map_err(|e| SourceError::io(format!("creating {}", dir.display()), e))?;
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-blob-")
            .tempfile_in(&dir)
            .map_err(|e| {
                SourceError::io(format!("creating a temporary file in {}", dir.display()), e)
            })?;
        Ok(BlobWriter {
            layout: self.clone(),
            inner: HashingWriter::new(io::BufWriter::new(tmp), DigestAlgorithm::Sha256),
        })
    }

    /// Point `tag` at `desc` in `index.json` (replacing an older entry with
    /// the same tag).
    pub fn set_tag(&self, tag: &str, mut desc: Descriptor) -> Result<(), SourceError> {
        validate_tag(tag).map_err(|reason| SourceError::Reference {
            reference: tag.into(),
            reason,
        })?;
        let mut index = self.index()?;
        index
            .manifests
            .retain(|d| d.annotations.get(ANNOTATION_REF_NAME).map(String::as_str) != Some(tag));
        desc.annotations
            .insert(ANNOTATION_REF_NAME.into(), tag.into());
        index.manifests.push(desc);
        self.write_index(&index)
    }

    fn write_index(&self, index: &Index) -> Result<(), SourceError> {
        let bytes =
            serde_json::to_vec(index).map_err(|e| SourceError::malformed("index.json", e))?;
        atomic_write(&self.root, "index.json", &bytes)
    }
}

fn tags(index: &Index) -> Vec<String> {
    index
        .manifests
        .iter()
        .filter_map(|d| d.annotations.get(ANNOTATION_REF_NAME).cloned())
        .collect()
}

impl BlobSource for OciLayout {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, SourceError> {
        let path = self.blob_path(&desc.digest);
        let file = open_regular(&path, &format!("blob {}", desc.digest))?;
        let len = file
            .metadata()
            .map_err(|e| SourceError::io(format!("stat {}", path.display()), e))?
            .len();
        if len != desc.size {
            return Err(SourceError::SizeMismatch {
                what: "blob".into(),
                digest: desc.digest.clone(),
                expected: desc.size,
                actual: len,
            });
        }
        Ok(Box::new(VerifyingReader::new(
            io::BufReader::with_capacity(1 << 20, file),
            desc,
            format!("blob {}", desc.digest),
        )))
    }
}

/// A blob being written; see [`OciLayout::blob_writer`].
pub struct BlobWriter {
    layout: OciLayout,
    inner: HashingWriter<io::BufWriter<tempfile::NamedTempFile>>,
}

impl BlobWriter {
    /// Finish the blob: flush, sync and rename it to its digest.
    pub fn commit(self, media_type: &str) -> Result<Descriptor, SourceError> {
        self.finish(media_type)
    }

    /// Like [`BlobWriter::commit`], but only if `accept` approves the
    /// finished content (given its digest and the file, positioned at its
    /// start); otherwise the blob is discarded and `accept`'s error returned.
    pub fn commit_if<E: From<SourceError>>(
        self,
        media_type: &str,
        accept: impl FnOnce(&Digest, &mut File) -> Result<(), E>,
    ) -> Result<Descriptor, E> {
        let (digest, size, buf) = self.inner.finish();
        let mut tmp = buf
            .into_inner()
            .map_err(|e| SourceError::io("flushing blob", e.into_error()))?;
        {
            use std::io::Seek as _;
            let f = tmp.as_file_mut();
            f.rewind()
                .map_err(|e| SourceError::io("rewinding blob", e))?;
            accept(&digest, f)?;
        }
        Ok(persist(&self.layout, tmp, media_type, digest, size)?)
    }

    fn finish(self, media_type: &str) -> Result<Descriptor, SourceError> {
        let (digest, size, buf) = self.inner.finish();
        let tmp = buf
            .into_inner()
            .map_err(|e| SourceError::io("flushing blob", e.into_error()))?;
        persist(&self.layout, tmp, media_type, digest, size)
    }
}

/// Sync a finished temporary blob and rename it to its digest.
fn persist(
    layout: &OciLayout,
    tmp: tempfile::NamedTempFile,
    media_type: &str,
    digest: Digest,
    size: u64,
) -> Result<Descriptor, SourceError> {
    tmp.as_file()
        .sync_all()
        .map_err(|e| SourceError::io("syncing blob", e))?;
    let path = layout.blob_path(&digest);
    tmp.persist(&path)
        .map_err(|e| SourceError::io(format!("renaming blob to {}", path.display()), e.error))?;
    Ok(Descriptor::new(media_type, digest, size))
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Open `path` only if it is a regular file (no FIFOs or devices that could
/// block or feed endless data).
fn open_regular(path: &Path, what: &str) -> Result<File, SourceError> {
    let meta = fs::symlink_metadata(path).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            SourceError::NotFound(format!("{what} at {}", path.display()))
        } else {
            SourceError::io(format!("stat {}", path.display()), e)
        }
    })?;
    if !meta.file_type().is_file() {
        return Err(SourceError::malformed(
            what,
            format!("{} is not a regular file", path.display()),
        ));
    }
    File::open(path).map_err(|e| SourceError::io(format!("opening {}", path.display()), e))
}

fn read_limited(path: &Path, limit: u64, what: &str) -> Result<Vec<u8>, SourceError> {
    source::read_limited(open_regular(path, what)?, limit, what, &path.display())
}

/// Write `dir/name` atomically (temporary file + rename).
pub(crate) fn atomic_write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SourceError> {
    let ctx = || format!("writing {}", dir.join(name).display());
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(|e| SourceError::io(ctx(), e))?;
    tmp.write_all(bytes)
        .map_err(|e| SourceError::io(ctx(), e))?;
    tmp.as_file()
        .sync_all()
        .map_err(|e| SourceError::io(ctx(), e))?;
    tmp.persist(dir.join(name))
        .map_err(|e| SourceError::io(ctx(), e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references() {
        let r = OciRef::parse("oci:/tmp/x:latest").unwrap();
        assert_eq!(r.dir, PathBuf::from("/tmp/x"));
        assert_eq!(r.tag.as_deref(), Some("latest"));
        let r = OciRef::parse("oci:rel/dir").unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.to_string(), "oci:rel/dir");
        for bad in ["docker://x", "oci:", "oci::tag", "oci:/x:", "oci:/x:a b"] {
            assert!(OciRef::parse(bad).is_err(), "{bad} accepted");
        }
    }
}
