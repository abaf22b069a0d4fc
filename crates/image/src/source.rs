//! Where images come from, and how a reference becomes a verified image.
//!
//! A [`BlobSource`] hands out blobs by descriptor (an OCI layout directory, a
//! registry). [`resolve`] walks index → (manifest list → platform) →
//! manifest → config, checking every blob against its descriptor's digest
//! and size and bounding every document before it is parsed.

use std::io::{self, Read};

use crate::digest::{Digest, Hasher};
use crate::spec::{self, Descriptor, ImageConfig, Index, Manifest, Platform, media_type};

/// Largest index / manifest document accepted (the registry limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image configuration accepted.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most layers an image may have.
pub const MAX_LAYERS: usize = 1024;
/// Most entries an index may have.
pub const MAX_INDEX_ENTRIES: usize = 4096;
/// Deepest nesting of indexes followed.
pub const MAX_INDEX_DEPTH: usize = 4;

/// Why an image or blob could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading or writing local files failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// A document or blob is larger than veil accepts.
    #[error("{what} is too large: limit {limit} bytes, got {actual} bytes")]
    TooLarge {
        /// What was being read.
        what: String,
        /// The limit.
        limit: u64,
        /// The declared or observed size.
        actual: u64,
    },
    /// A blob's size differs from its descriptor.
    #[error("size check failed for {what} {digest}: expected {expected} bytes, got {actual}")]
    SizeMismatch {
        /// What was being read.
        what: String,
        /// The blob's descriptor digest.
        digest: Digest,
        /// Size in the descriptor.
        expected: u64,
        /// Size observed (a lower bound when the blob is longer).
        actual: u64,
    },
    /// A blob's content does not hash to its descriptor's digest.
    #[error("digest check failed for {what}: expected {expected}, got {actual}")]
    DigestMismatch {
        /// What was being read.
        what: String,
        /// Digest in the descriptor.
        expected: Digest,
        /// Digest of the content.
        actual: Digest,
    },
    /// A document is not what the spec says it should be.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was being parsed.
        what: String,
        /// Why it is refused.
        reason: String,
    },
    /// A media type veil does not handle in this position.
    #[error("unsupported media type for {what}: {media_type:?}")]
    UnsupportedMediaType {
        /// What was being resolved.
        what: String,
        /// The media type found.
        media_type: String,
    },
    /// A tag, blob or manifest does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// No index entry is for the wanted platform.
    #[error("no manifest for platform {wanted}; the index offers: {available}")]
    NoMatchingPlatform {
        /// The platform asked for.
        wanted: String,
        /// The platforms offered.
        available: String,
    },
    /// The image's configuration is for another platform.
    #[error("platform check failed: expected {expected}, the image config says {actual}")]
    PlatformMismatch {
        /// The platform asked for.
        expected: String,
        /// The platform in the config.
        actual: String,
    },
    /// An image reference could not be parsed.
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference {
        /// The reference given.
        reference: String,
        /// Why it is invalid.
        reason: String,
    },
    /// A registry request failed.
    #[error("registry: {0}")]
    Registry(String),
}

impl SourceError {
    /// Whether this is a failed integrity check (as opposed to bad or
    /// missing input): the CLI exits 1 for these.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            SourceError::SizeMismatch { .. }
                | SourceError::DigestMismatch { .. }
                | SourceError::PlatformMismatch { .. }
        )
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        SourceError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn malformed(what: impl Into<String>, reason: impl std::fmt::Display) -> Self {
        SourceError::Malformed {
            what: what.into(),
            reason: reason.to_string(),
        }
    }

    /// Recover a `SourceError` carried inside an `io::Error` (as produced by
    /// [`VerifyingReader`]), or wrap the I/O error.
    pub fn from_io(context: impl Into<String>, e: io::Error) -> Self {
        if e.get_ref().is_some_and(|inner| inner.is::<SourceError>()) {
            if let Some(inner) = e.into_inner() {
                if let Ok(se) = inner.downcast::<SourceError>() {
                    return *se;
                }
            }
            // Unreachable in practice: is::<SourceError>() held above.
            return SourceError::Malformed {
                what: "blob".into(),
                reason: "verification failed".into(),
            };
        }
        SourceError::io(context, e)
    }
}

/// Read all of `r` (a file or a response body, named `from` in an I/O
/// error), refusing it as too large past `limit` bytes.
pub(crate) fn read_limited(
    r: impl Read,
    limit: u64,
    what: &str,
    from: &dyn std::fmt::Display,
) -> Result<Vec<u8>, SourceError> {
    let mut buf = Vec::new();
    r.take(limit.saturating_add(1))
        .read_to_end(&mut buf)
        .map_err(|e| SourceError::io(format!("reading {from}"), e))?;
    if buf.len() as u64 > limit {
        return Err(SourceError::TooLarge {
            what: what.into(),
            limit,
            actual: buf.len() as u64,
        });
    }
    Ok(buf)
}

/// Anything that can hand out blobs by descriptor.
pub trait BlobSource {
    /// Open a blob for streaming. The reader fails with an `InvalidData`
    /// error carrying a [`SourceError`] as soon as more bytes than
    /// `desc.size` arrive, and at end of stream if the size or the digest
    /// differ: consumers must not commit anything before reading to EOF.
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, SourceError>;

    /// Read a whole blob of at most `limit` bytes, verified.
    fn read_blob(&self, desc: &Descriptor, limit: u64, what: &str) -> Result<Vec<u8>, SourceError> {
        if desc.size > limit {
            return Err(SourceError::TooLarge {
                what: what.into(),
                limit,
                actual: desc.size,
            });
        }
        let mut r = self.open_blob(desc)?;
        // desc.size <= limit, which is a small constant: safe to preallocate.
        let mut buf = Vec::with_capacity(desc.size as usize);
        r.read_to_end(&mut buf)
            .map_err(|e| SourceError::from_io(format!("reading {what} {}", desc.digest), e))?;
        Ok(buf)
    }
}

/// Streams a blob, failing unless it has exactly the descriptor's size and
/// digest. See [`BlobSource::open_blob`].
pub struct VerifyingReader<R> {
    inner: R,
    what: String,
    expected_digest: Digest,
    expected_size: u64,
    hasher: Option<Hasher>,
    count: u64,
}

impl<R: Read> VerifyingReader<R> {
    /// Verify `inner` against `desc`.
    pub fn new(inner: R, desc: &Descriptor, what: impl Into<String>) -> Self {
        VerifyingReader {
            inner,
            what: what.into(),
            expected_digest: desc.digest.clone(),
            expected_size: desc.size,
            hasher: Some(Hasher::new(desc.digest.algorithm())),
            count: 0,
        }
    }

    fn fail(&self, e: SourceError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let Some(hasher) = self.hasher.as_mut() else {
            return Ok(0); // already verified at EOF
        };
        if buf.is_empty() {
            return Ok(0);
        }
        // Never read more than one byte past the declared size.
        let room = (self.expected_size - self.count).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.count += n as u64;
        if self.count > self.expected_size {
            return Err(self.fail(SourceError::SizeMismatch {
                what: self.what.clone(),
                digest: self.expected_digest.clone(),
                expected: self.expected_size,
                actual: self.count,
            }));
        }
        hasher.update(&buf[..n]);
        if n == 0 {
            if self.count != self.expected_size {
                return Err(self.fail(SourceError::SizeMismatch {
                    what: self.what.clone(),
                    digest: self.expected_digest.clone(),
                    expected: self.expected_size,
                    actual: self.count,
                }));
            }
            let actual = self.hasher.take().map(Hasher::finish);
            if actual.as_ref() != Some(&self.expected_digest) {
                return Err(self.fail(SourceError::DigestMismatch {
                    what: self.what.clone(),
                    expected: self.expected_digest.clone(),
                    actual: actual.unwrap_or_else(|| self.expected_digest.clone()),
                }));
            }
        }
        Ok(n)
    }
}

/// A fully resolved, verified single-platform image.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// Descriptor of the manifest (its digest is the image's identity).
    pub manifest_descriptor: Descriptor,
    /// The manifest.
    pub manifest: Manifest,
    /// The manifest's exact bytes (what the digest covers).
    pub manifest_bytes: Vec<u8>,
    /// The image configuration.
    pub config: ImageConfig,
    /// The configuration's exact bytes.
    pub config_bytes: Vec<u8>,
    /// Digest of the index / manifest list the manifest was selected from.
    pub index_digest: Option<Digest>,
}

impl ResolvedImage {
    /// The manifest digest: what policies and signatures pin.
    pub fn manifest_digest(&self) -> &Digest {
        &self.manifest_descriptor.digest
    }

    /// The config digest (the "image ID").
    pub fn config_digest(&self) -> &Digest {
        &self.manifest.config.digest
    }

    /// Layer descriptors, base first.
    pub fn layers(&self) -> &[Descriptor] {
        &self.manifest.layers
    }

    /// Uncompressed digest (`diff_id`) of each layer, base first.
    pub fn diff_ids(&self) -> &[Digest] {
        &self.config.rootfs.diff_ids
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, SourceError> {
    serde_json::from_slice(bytes).map_err(|e| SourceError::malformed(what, e))
}

/// The `mediaType` field inside a document, if any.
fn inner_media_type(bytes: &[u8], what: &str) -> Result<Option<String>, SourceError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Probe {
        #[serde(default)]
        media_type: Option<String>,
    }
    Ok(parse_json::<Probe>(bytes, what)?.media_type)
}

/// Resolve `root` (an index entry or a manifest descriptor) to a single
/// verified image for `platform`.
pub fn resolve(
    source: &dyn BlobSource,
    root: &Descriptor,
    platform: &Platform,
) -> Result<ResolvedImage, SourceError> {
    let mut desc = root.clone();
    let mut index_digest = None;
    for depth in 0..=MAX_INDEX_DEPTH {
        let what = if spec::is_index(&desc.media_type) {
            "image index"
        } else {
            "image manifest"
        };
        if !spec::is_index(&desc.media_type) && !spec::is_manifest(&desc.media_type) {
            return Err(SourceError::UnsupportedMediaType {
                what: format!("{} (expected an image index or manifest)", desc.digest),
                media_type: desc.media_type.clone(),
            });
        }
        let bytes = source.read_blob(&desc, MAX_MANIFEST_BYTES, what)?;
        // A document whose own mediaType contradicts its descriptor could be
        // read differently by another tool: refuse.
        if let Some(inner) = inner_media_type(&bytes, what)? {
            if inner != desc.media_type {
                return Err(SourceError::malformed(
                    what,
                    format!(
                        "mediaType {inner:?} differs from its descriptor's {:?}",
                        desc.media_type
                    ),
                ));
            }
        }
        if spec::is_index(&desc.media_type) {
            if depth == MAX_INDEX_DEPTH {
                return Err(SourceError::malformed(
                    what,
                    format!("indexes nested deeper than {MAX_INDEX_DEPTH}"),
                ));
            }
            let index: Index = parse_json(&bytes, what)?;
            index_digest = Some(desc.digest.clone());
            desc = select_platform(&index, platform)?.clone();
            continue;
        }
        let manifest: Manifest = parse_json(&bytes, what)?;
        return finish_manifest(source, desc, manifest, bytes, index_digest, platform);
    }
    Err(SourceError::malformed(
        "image index",
        format!("indexes nested deeper than {MAX_INDEX_DEPTH}"),
    ))
}

/// Pick the first entry of `index` for `platform` (the OCI rule).
pub fn select_platform<'a>(
    index: &'a Index,
    platform: &Platform,
) -> Result<&'a Descriptor, SourceError> {
    if index.manifests.len() > MAX_INDEX_ENTRIES {
        return Err(SourceError::TooLarge {
            what: "image index entries".into(),
            limit: MAX_INDEX_ENTRIES as u64,
            actual: index.manifests.len() as u64,
        });
    }
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .ok_or_else(|| SourceError::NoMatchingPlatform {
            wanted: platform.to_string(),
            available: index
                .manifests
                .iter()
                .map(|d| {
                    d.platform
                        .as_ref()
                        .map_or_else(|| "(none)".to_string(), |p| p.to_string())
                })
                .collect::<Vec<_>>()
                .join(", "),
        })
}

fn finish_manifest(
    source: &dyn BlobSource,
    desc: Descriptor,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    index_digest: Option<Digest>,
    platform: &Platform,
) -> Result<ResolvedImage, SourceError> {
    if manifest.schema_version != 2 {
        return Err(SourceError::malformed(
            "image manifest",
            format!("schemaVersion {} (expected 2)", manifest.schema_version),
        ));
    }
    if manifest.layers.len() > MAX_LAYERS {
        return Err(SourceError::TooLarge {
            what: "image manifest layer count".into(),
            limit: MAX_LAYERS as u64,
            actual: manifest.layers.len() as u64,
        });
    }
    let cfg_type = manifest.config.media_type.as_str();
    if cfg_type != media_type::OCI_CONFIG && cfg_type != media_type::DOCKER_CONFIG {
        return Err(SourceError::UnsupportedMediaType {
            what: "image config (expected an OCI or Docker image config)".into(),
            media_type: cfg_type.into(),
        });
    }
    for (i, layer) in manifest.layers.iter().enumerate() {
        if spec::layer_kind(&layer.media_type).is_none() {
            return Err(SourceError::UnsupportedMediaType {
                what: format!("layer {i} ({})", layer.digest),
                media_type: layer.media_type.clone(),
            });
        }
    }
    let config_bytes = source.read_blob(&manifest.config, MAX_CONFIG_BYTES, "image config")?;
    let config: ImageConfig = parse_json(&config_bytes, "image config")?;
    if config.rootfs.kind != "layers" {
        return Err(SourceError::malformed(
            "image config",
            format!("rootfs.type {:?} (expected \"layers\")", config.rootfs.kind),
        ));
    }
    if config.rootfs.diff_ids.len() != manifest.layers.len() {
        return Err(SourceError::malformed(
            "image config",
            format!(
                "{} diff_ids for {} layers in the manifest",
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            ),
        ));
    }
    if !platform.matches(&config.platform()) {
        return Err(SourceError::PlatformMismatch {
            expected: platform.to_string(),
            actual: config.platform().to_string(),
        });
    }
    Ok(ResolvedImage {
        manifest_descriptor: desc,
        manifest,
        manifest_bytes,
        config,
        config_bytes,
        index_digest,
    })
}
