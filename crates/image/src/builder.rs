//! Build OCI images into a layout from directories or tar streams.
//!
//! Used by tests and benchmarks to make images locally (for example from
//! Debian's `busybox-static`) instead of pulling them. Layers are
//! deterministic: entries sorted by name, owner 0:0, a fixed mtime and
//! normalized modes (0755 / 0644), so the same
//! directory always yields the same digests.

use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use flate2::Compression as GzLevel;
use flate2::write::GzEncoder;

use crate::digest::{Digest, DigestAlgorithm, HashingWriter};
use crate::layout::{BlobWriter, OciLayout};
use crate::rootfs::{RootfsError, RootfsStats, RootfsTarOptions, write_rootfs_tar};
use crate::source::SourceError;

/// Why building a layer from a rootfs failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Reading the tree.
    #[error(transparent)]
    Rootfs(#[from] RootfsError),
    /// Writing the layout.
    #[error(transparent)]
    Layout(#[from] SourceError),
}
use crate::spec::{
    Compression, ContainerConfig, Descriptor, ImageConfig, Manifest, Platform, RootFs, media_type,
};

/// Assembles one image: layers, then config and manifest.
#[derive(Debug)]
pub struct ImageBuilder {
    layout: OciLayout,
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    config: ContainerConfig,
    platform: Platform,
}

impl ImageBuilder {
    /// Start an image for linux/amd64 in `layout`.
    pub fn new(layout: &OciLayout) -> Self {
        ImageBuilder {
            layout: layout.clone(),
            layers: Vec::new(),
            diff_ids: Vec::new(),
            config: ContainerConfig::default(),
            platform: Platform::linux_amd64(),
        }
    }

    /// Set the container configuration (Entrypoint, Cmd, Env…).
    pub fn config(&mut self, config: ContainerConfig) -> &mut Self {
        self.config = config;
        self
    }

    /// Set the platform written into the config.
    pub fn platform(&mut self, platform: Platform) -> &mut Self {
        self.platform = platform;
        self
    }

    /// Add a layer from an uncompressed tar stream.
    pub fn add_layer_tar(
        &mut self,
        tar: &mut dyn Read,
        compression: Compression,
    ) -> Result<&Descriptor, SourceError> {
        let mut w = LayerWriter::new(&self.layout, compression)?;
        io::copy(tar, &mut w).map_err(|e| SourceError::io("writing layer", e))?;
        self.push(w)
    }

    /// Add a layer holding the tree under `dir` (deterministic tar).
    pub fn add_layer_dir(
        &mut self,
        dir: &Path,
        compression: Compression,
    ) -> Result<&Descriptor, SourceError> {
        let mut w = LayerWriter::new(&self.layout, compression)?;
        write_dir_tar(dir, &mut w)
            .map_err(|e| SourceError::io(format!("archiving {}", dir.display()), e))?;
        self.push(w)
    }

    /// Add a layer holding the root filesystem under `dir`, as
    /// `veil image import` does: modes kept, owners 0:0, mtimes clamped,
    /// links stored as links (see [`crate::rootfs`]).
    pub fn add_layer_rootfs(
        &mut self,
        dir: &Path,
        compression: Compression,
        opts: RootfsTarOptions,
    ) -> Result<(Descriptor, RootfsStats), BuildError> {
        let mut w = LayerWriter::new(&self.layout, compression)?;
        let stats = write_rootfs_tar(dir, opts, &mut w)?;
        Ok((self.push(w)?.clone(), stats))
    }

    fn push(&mut self, w: LayerWriter) -> Result<&Descriptor, SourceError> {
        let (desc, diff_id) = w.finish()?;
        self.layers.push(desc);
        self.diff_ids.push(diff_id);
        Ok(&self.layers[self.layers.len() - 1])
    }

    /// Write config and manifest, tag the manifest as `tag`, and return the
    /// manifest's descriptor.
    pub fn finish(self, tag: &str) -> Result<Descriptor, SourceError> {
        let config = ImageConfig {
            architecture: self.platform.architecture.clone(),
            os: self.platform.os.clone(),
            variant: self.platform.variant.clone(),
            created: Some("1970-01-01T00:00:00Z".into()),
            author: None,
            config: self.config,
            rootfs: RootFs {
                kind: "layers".into(),
                diff_ids: self.diff_ids,
            },
            history: Vec::new(),
            extra: Default::default(),
        };
        let config_bytes =
            serde_json::to_vec(&config).map_err(|e| SourceError::malformed("image config", e))?;
        let config_desc = self
            .layout
            .write_blob(&config_bytes, media_type::OCI_CONFIG)?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.into()),
            config: config_desc,
            layers: self.layers,
            annotations: Default::default(),
            extra: Default::default(),
        };
        let manifest_bytes = serde_json::to_vec(&manifest)
            .map_err(|e| SourceError::malformed("image manifest", e))?;
        let desc = self
            .layout
            .write_blob(&manifest_bytes, media_type::OCI_MANIFEST)?;
        self.layout.set_tag(tag, desc.clone())?;
        Ok(desc)
    }
}

/// Streams an uncompressed tar into a layer blob, computing the diff_id.
struct LayerWriter {
    inner: HashingWriter<Compressor>,
    media_type: &'static str,
}

enum Compressor {
    Plain(BlobWriter),
    Gzip(GzEncoder<BlobWriter>),
}

impl Write for Compressor {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Compressor::Plain(w) => w.write(buf),
            Compressor::Gzip(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Compressor::Plain(w) => w.flush(),
            Compressor::Gzip(w) => w.flush(),
        }
    }
}

impl LayerWriter {
    fn new(layout: &OciLayout, compression: Compression) -> Result<Self, SourceError> {
        let blob = layout.blob_writer()?;
        let (c, media_type) = match compression {
            Compression::None => (Compressor::Plain(blob), media_type::OCI_LAYER_TAR),
            Compression::Gzip => (
                Compressor::Gzip(GzEncoder::new(blob, GzLevel::fast())),
                media_type::OCI_LAYER_TAR_GZIP,
            ),
            Compression::Zstd => {
                return Err(SourceError::UnsupportedMediaType {
                    what: "building a layer (zstd compression is not supported by the builder)"
                        .into(),
                    media_type: media_type::OCI_LAYER_TAR_ZSTD.into(),
                });
            }
        };
        Ok(LayerWriter {
            inner: HashingWriter::new(c, DigestAlgorithm::Sha256),
            media_type,
        })
    }

    fn finish(self) -> Result<(Descriptor, Digest), SourceError> {
        let (diff_id, _, c) = self.inner.finish();
        let blob = match c {
            Compressor::Plain(b) => b,
            Compressor::Gzip(g) => g
                .finish()
                .map_err(|e| SourceError::io("compressing layer", e))?,
        };
        Ok((blob.commit(self.media_type)?, diff_id))
    }
}

impl Write for LayerWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Write a deterministic tar of the tree under `dir` to `out`: entries in
/// sorted order, owner 0:0, fixed mtime, modes 0755/0644; regular files,
/// directories and symlinks only.
pub fn write_dir_tar(dir: &Path, out: &mut dyn Write) -> io::Result<()> {
    let mut builder = tar::Builder::new(out);
    builder.mode(tar::HeaderMode::Deterministic);
    builder.follow_symlinks(false);
    append_tree(&mut builder, dir, Path::new(""))?;
    builder.finish()
}

fn append_tree(
    builder: &mut tar::Builder<&mut dyn Write>,
    base: &Path,
    rel: &Path,
) -> io::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(base.join(rel))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()?;
    entries.sort();
    for name in entries {
        let rel_path = rel.join(&name);
        let full = base.join(&rel_path);
        let meta = fs::symlink_metadata(&full)?;
        let ft = meta.file_type();
        if ft.is_dir() {
            builder.append_path_with_name(&full, &rel_path)?;
            append_tree(builder, base, &rel_path)?;
        } else if ft.is_file() || ft.is_symlink() {
            builder.append_path_with_name(&full, &rel_path)?;
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a file, directory or symlink", full.display()),
            ));
        }
    }
    Ok(())
}
