//! Resolving image references to a manifest digest and config.

use std::path::Path;

use veil_image::{OciLayout, Platform, SourceError};

/// What policy generation needs from an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    /// Manifest digest (`sha256:…`).
    pub digest: String,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
    pub stop_signal: Option<String>,
}

/// Resolves an image reference.
pub trait ImageResolver {
    /// Resolve `reference` (as written in the manifest) or say why not.
    fn resolve(&self, reference: &str) -> Result<ImageInfo, String>;
}

/// Resolves images from one OCI image layout, by `org.opencontainers.image.ref.name`.
///
/// A reference `registry.example/app:1.2` (or `…@sha256:…`) is looked up as
/// the full reference, then as its tag; a digest in the reference must equal
/// the resolved manifest digest.
#[derive(Debug, Clone)]
pub struct LayoutResolver {
    layout: OciLayout,
    platform: Platform,
}

impl LayoutResolver {
    /// Open the layout at `dir` for linux/amd64.
    pub fn open(dir: &Path) -> Result<Self, String> {
        let layout = OciLayout::open(dir)
            .map_err(|e| format!("cannot open OCI layout {}: {e}", dir.display()))?;
        Ok(LayoutResolver {
            layout,
            platform: Platform::linux_amd64(),
        })
    }
}

/// Split `name[:tag][@digest]` into (name-with-tag, tag, digest).
fn split_reference(reference: &str) -> (&str, Option<&str>, Option<&str>) {
    let (without_digest, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    let tag = last.split_once(':').map(|(_, t)| t);
    (without_digest, tag, digest)
}

impl ImageResolver for LayoutResolver {
    fn resolve(&self, reference: &str) -> Result<ImageInfo, String> {
        let (name, tag, digest) = split_reference(reference);
        let mut candidates: Vec<&str> = vec![reference, name];
        if let Some(t) = tag {
            candidates.push(t);
        } else if digest.is_none() {
            candidates.push("latest");
        }
        let mut last_err: Option<SourceError> = None;
        let mut resolved = None;
        for c in candidates {
            match self.layout.resolve(Some(c), &self.platform) {
                Ok(r) => {
                    resolved = Some(r);
                    break;
                }
                Err(SourceError::NotFound(_)) | Err(SourceError::Reference { .. }) => continue,
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        let img = match (resolved, last_err) {
            (Some(r), _) => r,
            (None, Some(e)) => return Err(e.to_string()),
            (None, None) => {
                return Err(format!(
                    "not found in the OCI layout {} (looked for the ref names {:?}{})",
                    self.layout.root().display(),
                    name,
                    tag.map(|t| format!(" and {t:?}")).unwrap_or_default()
                ));
            }
        };
        let got = img.manifest_digest().to_string();
        if let Some(want) = digest {
            if want != got {
                return Err(format!(
                    "the reference pins {want} but the layout holds {got}"
                ));
            }
        }
        let c = &img.config;
        Ok(ImageInfo {
            digest: got,
            entrypoint: c.entrypoint().to_vec(),
            cmd: c.cmd().to_vec(),
            env: c.env().to_vec(),
            working_dir: c.working_dir().to_string(),
            user: c.user().to_string(),
            stop_signal: c.config.stop_signal.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_references() {
        assert_eq!(
            split_reference("reg:5000/app:1.2"),
            ("reg:5000/app:1.2", Some("1.2"), None)
        );
        assert_eq!(
            split_reference("reg:5000/app"),
            ("reg:5000/app", None, None)
        );
        assert_eq!(
            split_reference("app@sha256:ab"),
            ("app", None, Some("sha256:ab"))
        );
    }
}
