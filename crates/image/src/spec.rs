//! OCI image-spec documents: descriptors, manifests, indexes and the image
//! configuration, plus the media types veil understands.
//!
//! Unknown JSON fields are kept (`extra`) so that a document veil rewrites
//! (for example when encrypting layers) loses nothing; the OCI spec requires
//! consumers to ignore fields they do not know.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::digest::Digest;

/// Media types used in OCI and Docker v2 images.
pub mod media_type {
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// OCI layer, uncompressed tar.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI layer, gzip-compressed tar.
    pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI layer, zstd-compressed tar.
    pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// Docker v2 manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// Docker v2 schema 2 manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker container config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker foreign (non-distributable) gzip layer.
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// Suffix added to a layer media type when ocicrypt encrypts it.
    pub const ENCRYPTED_SUFFIX: &str = "+encrypted";
}

/// Annotation naming a tag in an OCI layout's `index.json`.
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Compression of a layer blob's tar stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// What a layer media type says about the blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerKind {
    /// Compression of the (decrypted) tar stream.
    pub compression: Compression,
    /// Whether the blob is ocicrypt-encrypted (`+encrypted`).
    pub encrypted: bool,
}

/// Classify a layer media type; `None` for anything that is not a known
/// tar layer type (veil refuses to unpack those).
pub fn layer_kind(media_type: &str) -> Option<LayerKind> {
    use media_type::*;
    let (base, encrypted) = match media_type.strip_suffix(ENCRYPTED_SUFFIX) {
        Some(b) => (b, true),
        None => (media_type, false),
    };
    let compression = match base {
        OCI_LAYER_TAR | "application/vnd.oci.image.layer.nondistributable.v1.tar" => {
            Compression::None
        }
        OCI_LAYER_TAR_GZIP
        | DOCKER_LAYER_GZIP
        | DOCKER_FOREIGN_LAYER_GZIP
        | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip" => Compression::Gzip,
        OCI_LAYER_TAR_ZSTD | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => {
            Compression::Zstd
        }
        _ => return None,
    };
    Some(LayerKind {
        compression,
        encrypted,
    })
}

/// Whether `media_type` names an image index / manifest list.
pub fn is_index(media_type: &str) -> bool {
    media_type == media_type::OCI_INDEX || media_type == media_type::DOCKER_MANIFEST_LIST
}

/// Whether `media_type` names a single-platform image manifest.
pub fn is_manifest(media_type: &str) -> bool {
    media_type == media_type::OCI_MANIFEST || media_type == media_type::DOCKER_MANIFEST
}

/// A content descriptor: what a blob is, its digest and its exact size.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// Media type of the referenced content.
    pub media_type: String,
    /// Digest of the referenced content.
    pub digest: Digest,
    /// Exact size in bytes.
    pub size: u64,
    /// Platform, in index entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations (ocicrypt keys live here for encrypted layers).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this type does not model (`urls`, `artifactType`, `data`…).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Descriptor {
    /// A descriptor with no platform or annotations.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            platform: None,
            annotations: BTreeMap::new(),
            extra: Map::new(),
        }
    }
}

/// A platform (`os`/`architecture`[/`variant`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture (`amd64`, `arm64`…).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// Architecture variant (`v8`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// OS version (Windows).
    #[serde(
        default,
        rename = "os.version",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_version: Option<String>,
    /// OS features.
    #[serde(
        default,
        rename = "os.features",
        skip_serializing_if = "Option::is_none"
    )]
    pub os_features: Option<Vec<String>>,
}

impl Platform {
    /// `linux/amd64`, the only platform veil runs today.
    pub fn linux_amd64() -> Self {
        Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
            os_version: None,
            os_features: None,
        }
    }

    /// Whether `other` (from an index entry) satisfies this wanted platform.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index (OCI) or manifest list (Docker); also `index.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Entries.
    pub manifests: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this type does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Default for Index {
    fn default() -> Self {
        Index {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.into()),
            manifests: Vec::new(),
            annotations: BTreeMap::new(),
            extra: Map::new(),
        }
    }
}

/// A single-platform image manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always 2.
    pub schema_version: u32,
    /// Media type, when present.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image configuration blob.
    pub config: Descriptor,
    /// Layers, base first.
    pub layers: Vec<Descriptor>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Fields this type does not model (`subject`, `artifactType`…).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The image configuration blob (`application/vnd.oci.image.config.v1+json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageConfig {
    /// CPU architecture the binaries are built for.
    pub architecture: String,
    /// Operating system.
    pub os: String,
    /// Architecture variant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Creation time (RFC 3339), informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// Author, informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    /// Execution parameters for a container started from the image.
    #[serde(default, deserialize_with = "null_as_default")]
    pub config: ContainerConfig,
    /// The uncompressed layer digests (`diff_ids`).
    pub rootfs: RootFs,
    /// Build history, informational.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Value>,
    /// Fields this type does not model.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl ImageConfig {
    /// `Entrypoint` (empty when unset).
    pub fn entrypoint(&self) -> &[String] {
        self.config.entrypoint.as_deref().unwrap_or(&[])
    }

    /// `Cmd` (empty when unset).
    pub fn cmd(&self) -> &[String] {
        self.config.cmd.as_deref().unwrap_or(&[])
    }

    /// `Env` as `KEY=value` strings (empty when unset).
    pub fn env(&self) -> &[String] {
        self.config.env.as_deref().unwrap_or(&[])
    }

    /// `WorkingDir` (empty when unset, meaning `/`).
    pub fn working_dir(&self) -> &str {
        self.config.working_dir.as_deref().unwrap_or("")
    }

    /// `User` (empty when unset, meaning root).
    pub fn user(&self) -> &str {
        self.config.user.as_deref().unwrap_or("")
    }

    /// The platform this configuration declares.
    pub fn platform(&self) -> Platform {
        Platform {
            architecture: self.architecture.clone(),
            os: self.os.clone(),
            variant: self.variant.clone(),
            os_version: None,
            os_features: None,
        }
    }
}

/// The `config` object of an image configuration (Docker-style names).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerConfig {
    /// User (`name`, `uid`, `uid:gid`, `name:group`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Environment, `KEY=value`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Vec<String>>,
    /// Entrypoint argv.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entrypoint: Option<Vec<String>>,
    /// Default arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    /// Working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_dir: Option<String>,
    /// Exposed ports (`"80/tcp": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposed_ports: Option<BTreeMap<String, Value>>,
    /// Volumes (`"/data": {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<BTreeMap<String, Value>>,
    /// Labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Stop signal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_signal: Option<String>,
    /// Fields this type does not model (`Healthcheck`, `ArgsEscaped`…).
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `rootfs` of an image configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RootFs {
    /// Always `layers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Digest of each layer's uncompressed tar, base first.
    pub diff_ids: Vec<Digest>,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_with_nulls_parses() {
        let cfg: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":{"Env":null,"Cmd":["sh"],"Entrypoint":null},
                "rootfs":{"type":"layers","diff_ids":[]},"unknown":1}"#,
        )
        .unwrap();
        assert_eq!(cfg.cmd(), ["sh"]);
        assert!(cfg.entrypoint().is_empty());
        assert!(cfg.env().is_empty());
        assert_eq!(cfg.extra["unknown"], 1);
        let cfg: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","config":null,"rootfs":{"type":"layers","diff_ids":[]}}"#,
        )
        .unwrap();
        assert_eq!(cfg.user(), "");
    }

    #[test]
    fn layer_kinds() {
        let k = layer_kind("application/vnd.oci.image.layer.v1.tar+gzip+encrypted").unwrap();
        assert!(k.encrypted);
        assert_eq!(k.compression, Compression::Gzip);
        assert_eq!(
            layer_kind(media_type::OCI_LAYER_TAR_ZSTD)
                .unwrap()
                .compression,
            Compression::Zstd
        );
        assert!(layer_kind("application/octet-stream").is_none());
    }
}
