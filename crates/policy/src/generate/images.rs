//! Resolving image references to a manifest digest and config: from an
//! OCI image layout ([`LayoutResolver`]) or from registries through the OCI
//! distribution API ([`RegistryResolver`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use veil_image::registry::{self, Connection, Credentials, Registry};
use veil_image::{OciLayout, Platform, ResolvedImage, SourceError};

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
        Ok(image_info(&img))
    }
}

fn image_info(img: &ResolvedImage) -> ImageInfo {
    let c = &img.config;
    ImageInfo {
        digest: img.manifest_digest().to_string(),
        entrypoint: c.entrypoint().to_vec(),
        cmd: c.cmd().to_vec(),
        env: c.env().to_vec(),
        working_dir: c.working_dir().to_string(),
        user: c.user().to_string(),
        stop_signal: c.config.stop_signal.clone(),
    }
}

/// Resolves images through registries (OCI distribution API), for linux/amd64.
///
/// Each reference is normalized as containers/image does (`busybox` →
/// `docker.io/library/busybox:latest`) and resolved at its own registry, or
/// at the `mirror` registry when one is given (same repository path, e.g.
/// `registry.example/shop/api:1` → `MIRROR/shop/api:1`). Every document is
/// checked against its digest; an index selects linux/amd64 and the
/// pinned digest is that platform's manifest. A digest in the reference
/// (`…@sha256:…`, of the manifest or of its index) must be what the
/// registry serves. Plain HTTP is used only for loopback registries.
pub struct RegistryResolver {
    mirror: Option<String>,
    auth_file: Option<PathBuf>,
    connection: Connection,
    platform: Platform,
    /// Results per reference, so an image used by several containers is
    /// fetched once.
    resolved: Mutex<BTreeMap<String, Result<ImageInfo, String>>>,
}

impl std::fmt::Debug for RegistryResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryResolver")
            .field("mirror", &self.mirror)
            .field("auth_file", &self.auth_file)
            .finish()
    }
}

impl RegistryResolver {
    /// A resolver for linux/amd64. `mirror` (`HOST[:PORT]`) replaces the
    /// registry of every reference; `auth_file` is a containers/docker
    /// `auth.json` whose entry for the registry contacted is used.
    pub fn new(mirror: Option<&str>, auth_file: Option<&Path>) -> Result<Self, String> {
        let mirror = match mirror {
            None => None,
            Some(m) => Some(validate_mirror(m)?),
        };
        Ok(RegistryResolver {
            mirror,
            auth_file: auth_file.map(Path::to_path_buf),
            connection: Connection::default(),
            platform: Platform::linux_amd64(),
            resolved: Mutex::new(BTreeMap::new()),
        })
    }

    /// Trust only the CA certificates in `pem` for registries' TLS (and use
    /// TLS even for a loopback registry).
    pub fn with_ca(mut self, pem: Vec<u8>) -> Self {
        self.connection.ca_pem = Some(pem);
        self
    }

    /// Where `reference` is fetched from: its own registry or the mirror.
    fn target(
        &self,
        reference: &str,
    ) -> Result<veil_image::sign::reference::DockerReference, String> {
        let r = registry::parse_reference(reference).map_err(|e| e.to_string())?;
        let Some(mirror) = &self.mirror else {
            return Ok(r);
        };
        let mut s = format!("{mirror}/{}", r.path());
        if let Some(t) = r.tag() {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = r.digest() {
            s.push('@');
            s.push_str(&d.to_string());
        }
        registry::parse_reference(&s).map_err(|e| format!("at the mirror {mirror}: {e}"))
    }

    fn fetch(&self, reference: &str) -> Result<ImageInfo, String> {
        let target = self.target(reference)?;
        let at = format!("{}{target}", registry::TRANSPORT_PREFIX);
        let creds = match &self.auth_file {
            Some(p) => Credentials::from_auth_file(p, target.domain())
                .map_err(|e| format!("{}: {e}", p.display()))?,
            None => None,
        };
        let img = Registry::connect(&target, creds, &self.connection)
            .and_then(|r| r.resolve(&self.platform))
            .map_err(|e| format!("{at}: {e}"))?;
        // The client fetched the pinned digest and checked the bytes against
        // it; check again that the pin is this image or the index it came from.
        if let Some(want) = target.digest() {
            let got = img.manifest_digest();
            if want != got && img.index_digest.as_ref() != Some(want) {
                return Err(format!(
                    "{at}: the reference pins {want} but the registry served {got}{}",
                    img.index_digest
                        .as_ref()
                        .map(|i| format!(" (from index {i})"))
                        .unwrap_or_default()
                ));
            }
        }
        Ok(image_info(&img))
    }
}

/// Check a mirror is `HOST[:PORT]` (no scheme, no path).
fn validate_mirror(m: &str) -> Result<String, String> {
    let bad = |why: &str| {
        Err(format!(
            "registry {:?} is not HOST[:PORT] ({why})",
            m.chars().take(200).collect::<String>()
        ))
    };
    if m.contains("://") {
        return bad("no scheme: plain HTTP is used for loopback registries only, HTTPS otherwise");
    }
    if m.contains('/') || m.contains('@') {
        return bad("no path or digest");
    }
    match registry::parse_reference(&format!("{m}/probe")) {
        Ok(r) if r.domain() == m => Ok(m.to_string()),
        Ok(_) => bad("a registry host has a '.' or ':' or is localhost"),
        Err(e) => bad(&e.to_string()),
    }
}

impl ImageResolver for RegistryResolver {
    fn resolve(&self, reference: &str) -> Result<ImageInfo, String> {
        if let Ok(done) = self.resolved.lock() {
            if let Some(r) = done.get(reference) {
                return r.clone();
            }
        }
        let r = self.fetch(reference);
        if let Ok(mut done) = self.resolved.lock() {
            done.insert(reference.to_string(), r.clone());
        }
        r
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

    #[test]
    fn mirrors_are_host_and_port_only() {
        for ok in ["127.0.0.1:5000", "localhost", "registry.example"] {
            assert_eq!(validate_mirror(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in [
            "http://127.0.0.1:5000",
            "127.0.0.1:5000/ns",
            "pod.yaml/x",
            "",
            "app",
        ] {
            let e = validate_mirror(bad).unwrap_err();
            assert!(e.contains("is not HOST[:PORT]"), "{bad}: {e}");
        }
    }

    #[test]
    fn mirror_keeps_the_repository_path_tag_and_digest() {
        let r = RegistryResolver::new(Some("127.0.0.1:5000"), None).unwrap();
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            r.target("registry.example/shop/api:1.4.2")
                .unwrap()
                .to_string(),
            "127.0.0.1:5000/shop/api:1.4.2"
        );
        assert_eq!(
            r.target(&format!("busybox@{d}")).unwrap().to_string(),
            format!("127.0.0.1:5000/library/busybox@{d}")
        );
        let direct = RegistryResolver::new(None, None).unwrap();
        assert_eq!(
            direct.target("busybox").unwrap().to_string(),
            "docker.io/library/busybox"
        );
        assert!(direct.target("Not A Reference").is_err());
    }
}
