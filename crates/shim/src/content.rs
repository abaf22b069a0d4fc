//! Images from containerd's content store, handed to the sandbox as an OCI
//! layout.
//!
//! The rootfs containerd unpacked for a container is not used: the host is
//! not trusted, so the sandbox pulls the image itself from an OCI layout and
//! checks every blob against the digest its policy pins. This module only
//! gathers the blobs of the manifests the policy names from containerd's
//! content store (`<root>/io.containerd.content.v1.content/blobs/sha256/`,
//! where `ctr image pull/import` and the CRI put them) into a layout,
//! hard-linked when possible. Nothing here is trusted by the guest.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Largest manifest or index read.
pub const MAX_MANIFEST_BYTES: u64 = 4 * 1024 * 1024;

/// Content-store errors: each names the digest and how to get the image.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    #[error("image digest {0:?} is not sha256:<64 lowercase hex>")]
    BadDigest(String),
    #[error(
        "the image {reference} ({digest}) that the policy pins is not in containerd's content store {store}: pull or import it first (ctr image pull / ctr image import, or let the kubelet pull it)"
    )]
    Missing {
        reference: String,
        digest: String,
        store: PathBuf,
    },
    #[error("{what} {digest} in containerd's content store: {reason}")]
    Invalid {
        what: &'static str,
        digest: String,
        reason: String,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ContentError {
    let context = context.into();
    move |source| ContentError::Io { context, source }
}

/// The hex of a `sha256:<hex>` digest, checked (it becomes a file name).
pub fn digest_hex(digest: &str) -> Result<&str, ContentError> {
    match digest.strip_prefix("sha256:") {
        Some(h) if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            Ok(h)
        }
        _ => Err(ContentError::BadDigest(digest.into())),
    }
}

/// containerd's content store under its root.
pub fn store_dir(containerd_root: &Path) -> PathBuf {
    containerd_root.join("io.containerd.content.v1.content/blobs/sha256")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Desc {
    digest: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Manifest {
    #[serde(default)]
    media_type: String,
    config: Option<Desc>,
    #[serde(default)]
    layers: Vec<Desc>,
    #[serde(default)]
    manifests: Vec<Desc>,
}

/// One image the layout must hold: the policy's reference and manifest digest.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct WantedImage {
    pub reference: String,
    pub digest: String,
}

/// Write an OCI layout at `dir` (created, must not exist) holding `images`
/// from the content store of `containerd_root`.
pub fn layout_from_store(
    containerd_root: &Path,
    images: &[WantedImage],
    dir: &Path,
) -> Result<(), ContentError> {
    let store = store_dir(containerd_root);
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(format!("creating {}", blobs.display())))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io(format!("writing {}/oci-layout", dir.display())))?;
    let mut linked = BTreeSet::new();
    let mut entries = Vec::new();
    for img in images {
        let hex = digest_hex(&img.digest)?;
        let src = store.join(hex);
        if !src.is_file() {
            return Err(ContentError::Missing {
                reference: img.reference.clone(),
                digest: img.digest.clone(),
                store: store.clone(),
            });
        }
        let bytes = read_bounded(&src, &img.digest)?;
        let m: Manifest = serde_json::from_slice(&bytes).map_err(|e| ContentError::Invalid {
            what: "manifest",
            digest: img.digest.clone(),
            reason: e.to_string(),
        })?;
        let mut need: Vec<&Desc> = m.config.iter().chain(m.layers.iter()).collect();
        // An index pinned by digest: take its manifests' blobs too.
        let mut children = Vec::new();
        for d in &m.manifests {
            let cb = read_bounded(&store.join(digest_hex(&d.digest)?), &d.digest)?;
            children.push(serde_json::from_slice::<Manifest>(&cb).map_err(|e| {
                ContentError::Invalid {
                    what: "manifest",
                    digest: d.digest.clone(),
                    reason: e.to_string(),
                }
            })?);
        }
        need.extend(m.manifests.iter());
        for c in &children {
            need.extend(c.config.iter().chain(c.layers.iter()));
        }
        link(&store, &blobs, &img.digest, &mut linked)?;
        for d in need {
            link(&store, &blobs, &d.digest, &mut linked)?;
        }
        let media_type = if m.media_type.is_empty() {
            "application/vnd.oci.image.manifest.v1+json".to_string()
        } else {
            m.media_type.clone()
        };
        entries.push(serde_json::json!({
            "mediaType": media_type,
            "digest": img.digest,
            "size": bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": img.reference},
        }));
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": entries});
    std::fs::write(dir.join("index.json"), index.to_string())
        .map_err(io(format!("writing {}/index.json", dir.display())))?;
    Ok(())
}

fn read_bounded(path: &Path, digest: &str) -> Result<Vec<u8>, ContentError> {
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(io(format!("opening {}", path.display())))?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io(format!("reading {}", path.display())))?;
    if buf.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(ContentError::Invalid {
            what: "manifest",
            digest: digest.into(),
            reason: format!("larger than {MAX_MANIFEST_BYTES} bytes"),
        });
    }
    Ok(buf)
}

fn link(
    store: &Path,
    blobs: &Path,
    digest: &str,
    done: &mut BTreeSet<String>,
) -> Result<(), ContentError> {
    if !done.insert(digest.to_string()) {
        return Ok(());
    }
    let hex = digest_hex(digest)?;
    let src = store.join(hex);
    let dst = blobs.join(hex);
    // Blobs the store does not hold (a non-distributable layer, a lazily
    // pulled one) are left out: the guest then refuses, naming the blob.
    if !src.is_file() {
        return Ok(());
    }
    if std::fs::hard_link(&src, &dst).is_err() {
        std::fs::copy(&src, &dst).map_err(io(format!(
            "copying {} to {}",
            src.display(),
            dst.display()
        )))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest as _;

    fn put(store: &Path, bytes: &[u8]) -> String {
        let hex = hex::encode(sha2::Sha256::digest(bytes));
        std::fs::write(store.join(&hex), bytes).unwrap();
        format!("sha256:{hex}")
    }

    #[test]
    fn builds_a_layout_with_the_pinned_manifest() {
        let root = tempfile::tempdir().unwrap();
        let store = store_dir(root.path());
        std::fs::create_dir_all(&store).unwrap();
        let cfg = put(&store, b"{}");
        let layer = put(&store, b"layer");
        let m = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{layer}","size":5}}]}}"#
        );
        let md = put(&store, m.as_bytes());
        let out = root.path().join("layout");
        let want = [WantedImage {
            reference: "app:1".into(),
            digest: md.clone(),
        }];
        layout_from_store(root.path(), &want, &out).unwrap();
        for d in [&cfg, &layer, &md] {
            assert!(
                out.join("blobs/sha256")
                    .join(digest_hex(d).unwrap())
                    .is_file()
            );
        }
        let idx = std::fs::read_to_string(out.join("index.json")).unwrap();
        assert!(idx.contains(&md) && idx.contains("app:1"));

        let missing = [WantedImage {
            reference: "other:2".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
        }];
        let e = layout_from_store(root.path(), &missing, &root.path().join("l2"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("other:2") && e.contains("ctr image import"),
            "{e}"
        );
        let bad = [WantedImage {
            reference: "x".into(),
            digest: "sha256:../../etc/passwd".into(),
        }];
        assert!(matches!(
            layout_from_store(root.path(), &bad, &root.path().join("l3")),
            Err(ContentError::BadDigest(_))
        ));
    }
}
