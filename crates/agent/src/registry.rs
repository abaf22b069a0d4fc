//! Pulling images from the registry itself, inside the sandbox (the
//! guest-pull model CoCo uses): the host hands the guest no image at all,
//! only the policy that pins each image's manifest digest.
//!
//! The manifest is fetched by that digest (a tag is never trusted) and
//! checked against it before anything else; config and layers are streamed
//! through the same verification, decryption and unpacking as the
//! layout-disk pull ([`crate::pull`]). What comes from init-data's
//! `cdh.toml` `[image]` (CoCo's keys, measured):
//!
//! - `authenticated_registry_credentials_uri = "kbs:///repo/type/tag"`: a
//!   docker `auth.json` fetched from the KBS after attestation, whose entry
//!   for the image's registry (and only that one) is used; never from the
//!   host, never logged, zeroized.
//! - `extra_root_certificates = ["-----BEGIN CERTIFICATE-----…"]`: the
//!   CAs a private registry's certificate must chain to. With them, only
//!   them are trusted; without, Mozilla's roots. The guest always uses
//!   TLS: plain HTTP would show the credentials to the host.
//!
//! In a VM the registry is reached over the workload NIC, which lives in
//! the pod's network namespace: each connection is made by the pulling
//! thread after entering that namespace, and the thread goes back before
//! anything else (the KBS is reached from the agent's own namespace). A
//! loopback registry (`127.0.0.1:5000/…`, `localhost:5000/…`) means the
//! host's loopback, which QEMU's user network shows the guest as its
//! gateway ([`workload_net::GATEWAY`]).

use std::fs::File;
use std::io::Read;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use veil_agent_api::{ImageRef, workload_net};
use veil_image::registry::{Connection, Credentials, Registry, is_loopback};
use veil_image::sign::reference::DockerReference;
use veil_image::source::{BlobSource, SourceError};
use veil_image::spec::Descriptor;
use veil_image::{Digest, Platform, ResolvedImage};
use veil_kbs_client::ResourcePath;
use veil_policy::ParsedInitData;
use veil_policy::initdata::CDH_KEY;

use crate::kbs::Kbs;

/// The cdh.toml key naming the registry credentials resource.
pub const AUTH_KEY: &str = "authenticated_registry_credentials_uri";
/// The cdh.toml key with extra root certificates (PEM strings).
pub const ROOTS_KEY: &str = "extra_root_certificates";
/// Most bytes of extra root certificates.
pub const MAX_ROOTS_BYTES: usize = 256 << 10;

/// What init-data says about registries (`cdh.toml` `[image]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryTrust {
    /// The docker `auth.json` resource in the KBS.
    pub auth: Option<ResourcePath>,
    /// CA certificates (PEM, concatenated) for the registries' TLS.
    pub roots_pem: Option<String>,
}

/// Read `[image] authenticated_registry_credentials_uri` and
/// `extra_root_certificates` from init-data's cdh.toml.
pub fn registry_trust_of(init_data: &ParsedInitData) -> Result<RegistryTrust, String> {
    let Some(cdh) = init_data.init_data.data.get(CDH_KEY) else {
        return Ok(RegistryTrust::default());
    };
    let v: toml::Table = toml::from_str(cdh).map_err(|e| format!("init-data cdh.toml: {e}"))?;
    let Some(image) = v.get("image") else {
        return Ok(RegistryTrust::default());
    };
    let image = image
        .as_table()
        .ok_or("init-data cdh.toml: [image] must be a table")?;
    let auth = match image.get(AUTH_KEY) {
        None => None,
        Some(v) => {
            let uri = v
                .as_str()
                .ok_or_else(|| format!("init-data cdh.toml: [image] {AUTH_KEY} must be a string"))?
                .trim();
            if uri.is_empty() {
                None
            } else {
                let path = uri.strip_prefix("kbs:///").ok_or_else(|| {
                    format!(
                        "init-data cdh.toml: [image] {AUTH_KEY} {uri:?} must be kbs:///repo/type/tag (registry credentials come from the KBS, never from the host)"
                    )
                })?;
                Some(
                    ResourcePath::parse(path).map_err(|e| {
                        format!("init-data cdh.toml: [image] {AUTH_KEY} {uri:?}: {e}")
                    })?,
                )
            }
        }
    };
    let roots_pem = match image.get(ROOTS_KEY) {
        None => None,
        Some(v) => {
            let list = v.as_array().ok_or_else(|| {
                format!("init-data cdh.toml: [image] {ROOTS_KEY} must be a list of PEM strings")
            })?;
            let mut pem = String::new();
            for (i, c) in list.iter().enumerate() {
                let c = c.as_str().ok_or_else(|| {
                    format!("init-data cdh.toml: [image] {ROOTS_KEY}[{i}] must be a PEM string")
                })?;
                if !c.contains("-----BEGIN CERTIFICATE-----") {
                    return Err(format!(
                        "init-data cdh.toml: [image] {ROOTS_KEY}[{i}] holds no PEM certificate"
                    ));
                }
                pem.push_str(c.trim());
                pem.push('\n');
                if pem.len() > MAX_ROOTS_BYTES {
                    return Err(format!(
                        "init-data cdh.toml: [image] {ROOTS_KEY} is larger than {MAX_ROOTS_BYTES} bytes"
                    ));
                }
            }
            (!pem.is_empty()).then_some(pem)
        }
    };
    Ok(RegistryTrust { auth, roots_pem })
}

/// How this sandbox reaches registries.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    pub trust: RegistryTrust,
    /// Make connections from this network namespace (a VM's pod namespace,
    /// where the workload NIC is); `None`: the agent's own.
    pub netns: Option<PathBuf>,
    /// The guest is a VM on QEMU's user network: a loopback registry is
    /// the host's, at the gateway.
    pub loopback_is_gateway: bool,
    /// Why the registry cannot be reached from here at all (a VM without a
    /// workload NIC), said when a pull needs it.
    pub unreachable: Option<String>,
}

/// A registry client for one pull, with the namespace its connections
/// are made from.
pub struct GuestRegistry {
    registry: Registry,
    reference: DockerReference,
    digest: Digest,
    netns: Option<(File, File)>,
    /// Set when this thread could not leave the pod's namespace.
    stranded: AtomicBool,
    /// `host:port` the guest connects to.
    pub endpoint: String,
}

fn refuse(want: &ImageRef, check: &str, e: impl std::fmt::Display) -> String {
    format!(
        "{check} for {:?} ({}): {e}; refusing before reading any layer",
        want.reference, want.digest
    )
}

impl GuestRegistry {
    /// A client for the image `want` (by its pinned digest), with the
    /// credentials from the KBS when init-data names them.
    pub fn open(
        access: &RegistryAccess,
        want: &ImageRef,
        kbs: Option<&Arc<Kbs>>,
    ) -> Result<Self, String> {
        if let Some(why) = &access.unreachable {
            return Err(refuse(want, "registry pull", why));
        }
        let named = DockerReference::parse(&want.reference)
            .map_err(|e| refuse(want, "image reference check", e))?;
        let digest: Digest = want
            .digest
            .parse()
            .map_err(|e| refuse(want, "image digest check", e))?;
        // By digest: whatever a tag points at now is irrelevant.
        let reference = named.with_digest(&digest);
        let domain = reference.domain().to_string();
        let creds = match &access.trust.auth {
            None => None,
            Some(path) => {
                let check = "registry credentials check";
                let uri = format!("kbs:///{path} (cdh.toml [image] {AUTH_KEY})");
                let kbs = kbs.ok_or_else(|| {
                    refuse(want, check, format!("{uri} but init-data names no KBS"))
                })?;
                let bytes = kbs
                    .get_resource(path)
                    .map_err(|e| refuse(want, check, format!("fetching {uri}: {e}")))?;
                let c = Credentials::from_auth_json(&bytes, &domain)
                    .map_err(|e| refuse(want, check, format!("{uri}: {e}")))?;
                if c.is_none() {
                    tracing::warn!(registry = %domain, resource = %path, "the registry credentials have no entry for this registry; pulling anonymously");
                }
                c
            }
        };
        let endpoint = match (access.loopback_is_gateway, is_loopback(&domain)) {
            (true, true) => {
                let [a, b, c, d] = workload_net::GATEWAY;
                let port = domain
                    .rsplit_once(':')
                    .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
                    .map(|(_, p)| format!(":{p}"))
                    .unwrap_or_default();
                Some(format!("{a}.{b}.{c}.{d}{port}"))
            }
            _ => None,
        };
        let conn = Connection {
            ca_pem: access
                .trust
                .roots_pem
                .as_ref()
                .map(|p| p.as_bytes().to_vec()),
            https_only: true,
            endpoint: endpoint.clone(),
        };
        let registry = Registry::connect(&reference, creds, &conn).map_err(|e| {
            refuse(
                want,
                "registry TLS roots (cdh.toml [image] extra_root_certificates)",
                e,
            )
        })?;
        let netns = match &access.netns {
            None => None,
            Some(p) => {
                let pod = File::open(p).map_err(|e| {
                    format!("opening the pod's network namespace {}: {e}", p.display())
                })?;
                let home = File::open("/proc/thread-self/ns/net")
                    .map_err(|e| format!("opening the agent's network namespace: {e}"))?;
                Some((pod, home))
            }
        };
        Ok(GuestRegistry {
            registry,
            reference,
            digest,
            netns,
            stranded: AtomicBool::new(false),
            endpoint: endpoint.unwrap_or(domain),
        })
    }

    /// Run `f` (which opens connections) from the registry's namespace.
    fn reach<T>(&self, f: impl FnOnce() -> Result<T, SourceError>) -> Result<T, SourceError> {
        let Some((pod, home)) = &self.netns else {
            return f();
        };
        if self.stranded.load(Ordering::SeqCst) {
            return Err(SourceError::Registry(
                "this pull is stranded in the pod's network namespace".into(),
            ));
        }
        let ns = nix::sched::CloneFlags::CLONE_NEWNET;
        nix::sched::setns(pod.as_fd(), ns).map_err(|e| {
            SourceError::Registry(format!("entering the pod's network namespace: {e}"))
        })?;
        let r = f();
        if let Err(e) = nix::sched::setns(home.as_fd(), ns) {
            // This thread must not go on in the wrong namespace (it would
            // reach the KBS through the workload's network): the pull
            // fails here, and the thread (the pull's own) ends with it.
            self.stranded.store(true, Ordering::SeqCst);
            return Err(SourceError::Registry(format!(
                "leaving the pod's network namespace: {e}"
            )));
        }
        r
    }

    /// The image, by its pinned digest: the manifest's bytes are checked
    /// against it before config or layers are read.
    pub fn resolve(&self) -> Result<ResolvedImage, SourceError> {
        let img = self.reach(|| self.registry.resolve(&Platform::linux_amd64()))?;
        if img.manifest_digest() != &self.digest {
            return Err(SourceError::DigestMismatch {
                what: format!("manifest of {}", self.reference),
                expected: self.digest.clone(),
                actual: img.manifest_digest().clone(),
            });
        }
        Ok(img)
    }

    /// The cosign signatures the registry stores for the image.
    pub fn signatures(
        &self,
    ) -> Result<Vec<veil_image::sign::cosign::SigstoreSignature>, veil_image::sign::SignError> {
        match self.reach(|| self.registry.attachment(&self.digest))? {
            Some(d) => veil_image::sign::cosign::read_attachment(self, &d),
            None => Ok(Vec::new()),
        }
    }
}

impl BlobSource for GuestRegistry {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, SourceError> {
        self.reach(|| self.registry.open_blob(desc))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_policy::InitData;

    fn init(cdh: &str) -> ParsedInitData {
        let mut d = InitData::new(veil_policy::HashAlgorithm::Sha384);
        d.data.insert(CDH_KEY.into(), cdh.into());
        ParsedInitData::parse(d.to_toml().unwrap().as_bytes()).unwrap()
    }

    const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----";

    #[test]
    fn registry_trust_comes_from_init_data_only() {
        assert_eq!(
            registry_trust_of(&init("credentials = []\n")).unwrap(),
            RegistryTrust::default()
        );
        let t = registry_trust_of(&init(&format!(
            "[image]\n{AUTH_KEY} = \"kbs:///default/registry/auth\"\n{ROOTS_KEY} = [{PEM:?}]\n"
        )))
        .unwrap();
        assert_eq!(
            t.auth,
            Some(ResourcePath::parse("default/registry/auth").unwrap())
        );
        assert!(t.roots_pem.unwrap().contains("BEGIN CERTIFICATE"));
        for (bad, why) in [
            (
                format!("[image]\n{AUTH_KEY} = \"file:///root/.docker/config.json\"\n"),
                "never from the host",
            ),
            (
                format!("[image]\n{AUTH_KEY} = \"kbs:///a/../b\"\n"),
                AUTH_KEY,
            ),
            (
                format!("[image]\n{ROOTS_KEY} = \"{}\"\n", "x"),
                "list of PEM",
            ),
            (
                format!("[image]\n{ROOTS_KEY} = [\"not pem\"]\n"),
                "no PEM certificate",
            ),
        ] {
            let e = registry_trust_of(&init(&bad)).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn a_loopback_registry_is_the_hosts_through_the_gateway_and_always_tls() {
        let want = ImageRef {
            reference: "127.0.0.1:5000/veil/app:v1".into(),
            digest: format!("sha256:{}", "a".repeat(64)),
        };
        let access = RegistryAccess {
            loopback_is_gateway: true,
            ..Default::default()
        };
        let g = GuestRegistry::open(&access, &want, None).unwrap();
        assert_eq!(g.endpoint, "10.0.3.2:5000");
        assert_eq!(g.registry.base_url(), "https://10.0.3.2:5000");
        // Fetched by digest, whatever the tag.
        assert!(
            g.reference.to_string().ends_with(&want.digest),
            "{}",
            g.reference
        );
        let process = RegistryAccess::default();
        let g = GuestRegistry::open(&process, &want, None).unwrap();
        assert_eq!(g.registry.base_url(), "https://127.0.0.1:5000");
        let e = GuestRegistry::open(
            &RegistryAccess {
                unreachable: Some("the VM has no workload network (--network none)".into()),
                ..Default::default()
            },
            &want,
            None,
        )
        .err()
        .unwrap();
        assert!(
            e.contains("registry pull") && e.contains("--network none"),
            "{e}"
        );
        let e = GuestRegistry::open(
            &RegistryAccess {
                trust: RegistryTrust {
                    auth: Some(ResourcePath::parse("default/registry/auth").unwrap()),
                    roots_pem: None,
                },
                ..Default::default()
            },
            &want,
            None,
        )
        .err()
        .unwrap();
        assert!(
            e.contains("registry credentials check") && e.contains("names no KBS"),
            "{e}"
        );
    }
}
