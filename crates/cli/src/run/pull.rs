//! `veil run REF`: images by reference, as docker takes them
//! (`docker://host/repo:tag`, `host:port/repo:tag`, `repo@sha256:…`, bare
//! `name:tag` against a configured default registry).
//!
//! The image is pulled through veil's registry client (every blob checked
//! against its digest) into the data dir's image cache, an OCI layout
//! shared by all runs (`<data>/images`, content-addressed, tags by
//! normalized reference). Each run then gets its own layout holding just its
//! image (blobs hard-linked from the cache, `<run>/layout`), which is what
//! the sandbox is handed, so a VM's layout disk carries one image and not
//! the whole cache. The generated policy pins the pulled manifest's digest,
//! as for any layout; the guest checks every blob against it again, so the
//! cache is not trusted.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use veil_image::registry::{self, Connection, Credentials, Registry};
use veil_image::sign::reference::DockerReference;
use veil_image::spec::{Descriptor, Platform};
use veil_image::{Digest, OciLayout};

/// When `veil run` contacts the registry for an image given by reference.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullPolicy {
    /// Use the cached copy of the tag or digest when there is one (docker's default).
    #[default]
    Missing,
    /// Always ask the registry what the tag points at now.
    Always,
    /// Never contact the registry: only the cache.
    Never,
}

/// How `veil run` pulls images given by reference.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct PullArgs {
    /// When to pull an image given by reference: `missing` (use the cached
    /// copy if there is one), `always` or `never`.
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = PullPolicy::Missing)]
    #[serde(default)]
    pub pull: PullPolicy,
    /// The registry of references that name none (`redis:7`).
    #[arg(
        long,
        value_name = "HOST[:PORT]",
        env = "VEIL_DEFAULT_REGISTRY",
        default_value = "docker.io"
    )]
    #[serde(default)]
    pub default_registry: String,
    /// containers/docker auth.json with registry credentials (the host's
    /// pull, and the host's look-up of the digest to pin).
    #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    #[serde(default)]
    pub authfile: Option<PathBuf>,
    /// Where an image given by reference (or a pod's images, with --pod
    /// and no --oci-layout) is pulled: `guest` (the agent pulls it over
    /// the sandbox's network: the host never holds the image), `host`
    /// (pulled here, handed in on a read-only disk), or `auto` (in the VM
    /// sandbox: guest when the VM has a network and the registry speaks
    /// TLS, else host, saying why; the process sandbox: host).
    #[arg(long, value_enum, value_name = "WHERE", default_value_t = PullIn::Auto)]
    #[serde(default)]
    pub pull_in: PullIn,
    /// CA certificate(s) (PEM) of a private registry: trusted by the host's
    /// look-up and, with a guest pull, put in the generated init-data
    /// (measured) for the guest.
    #[arg(long, value_name = "FILE")]
    #[serde(default)]
    pub registry_ca: Option<PathBuf>,
    /// `kbs:///repo/type/tag` of a docker auth.json in the KBS that the
    /// guest fetches after attestation for its own pull (generated
    /// policies; never read by the host).
    #[arg(long, value_name = "URI")]
    #[serde(default)]
    pub registry_auth: Option<String>,
}

/// Where an image given by reference is pulled.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PullIn {
    /// Guest when it can, else host (and say why).
    #[default]
    Auto,
    /// Inside the sandbox, from the registry.
    Guest,
    /// On the host, into veil's image cache.
    Host,
}

/// Whether the image `reference` of a run is pulled by the guest (`true`)
/// or by the host: `vm` is the VM sandbox, `network` whether its pods have
/// a network. `Err` when the user asked for what cannot be; a fallback
/// of `auto` is said on stderr.
/// With `given_init_data`, its cdh.toml decides the guest's CAs.
pub fn pulls_in_guest(
    a: &PullArgs,
    reference: &str,
    vm: bool,
    network: bool,
    given_init_data: bool,
) -> Result<bool> {
    let r = normalize(reference, &a.default_registry)?;
    let plain_http =
        registry::is_loopback(r.domain()) && a.registry_ca.is_none() && !given_init_data;
    match a.pull_in {
        PullIn::Host => Ok(false),
        PullIn::Guest if vm && !network => bail!(
            "--pull-in guest: the VM has no workload network (--network none), so the guest cannot reach {}; drop --network none, or use --pull-in host",
            r.domain()
        ),
        PullIn::Guest if plain_http => bail!(
            "--pull-in guest: {} is a loopback registry, which the host reaches over plain HTTP, but the guest pulls only over TLS (credentials and layers would cross the host in clear); serve it over TLS and give its CA with --registry-ca, or use --pull-in host",
            r.domain()
        ),
        PullIn::Guest => Ok(true),
        PullIn::Auto if !vm => Ok(false),
        PullIn::Auto if !network => {
            eprintln!(
                "veil: pulling {r} on the host: the VM has no workload network (--network none) to pull it from the guest"
            );
            Ok(false)
        }
        PullIn::Auto if plain_http => {
            eprintln!(
                "veil: pulling {r} on the host: {} is a plain-HTTP loopback registry and the guest pulls only over TLS (give --registry-ca for a TLS one)",
                r.domain()
            );
            Ok(false)
        }
        PullIn::Auto => Ok(true),
    }
}

/// The KBS resources holding the key-encryption keys of the encrypted
/// layers of `reference` at `digest`, from the registry's manifest (a guest
/// pull leaves the host no layout to read them from): what the embedded
/// KBS must be willing to release to the sandbox.
pub fn layer_key_ids(a: &PullArgs, reference: &str, digest: &str) -> Result<Vec<String>> {
    let r = normalize(reference, &a.default_registry)?;
    let d: Digest = digest
        .parse()
        .map_err(|e| anyhow!("the policy's digest {digest:?} for {reference}: {e}"))?;
    let pinned = r.with_digest(&d);
    let creds = match &a.authfile {
        Some(p) => Credentials::from_auth_file(p, r.domain())?,
        None => None,
    };
    let img = Registry::connect(&pinned, creds, &connection(a)?)?
        .resolve(&Platform::linux_amd64())
        .map_err(|e| anyhow!("reading the manifest of {pinned} for its layer keys: {e}"))?;
    Ok(img
        .layers()
        .iter()
        .flat_map(veil_image::crypt::kbs::key_ids_of)
        .map(|k| k.path())
        .collect())
}

/// How the host reaches registries: `--registry-ca` trusted when given.
pub fn connection(a: &PullArgs) -> Result<Connection> {
    let ca_pem = match &a.registry_ca {
        Some(p) => Some(
            std::fs::read(p).with_context(|| format!("reading --registry-ca {}", p.display()))?,
        ),
        None => None,
    };
    Ok(Connection {
        ca_pem,
        ..Default::default()
    })
}

/// The CA certificates of `--registry-ca`, one PEM block each.
pub fn registry_cas(a: &PullArgs) -> Result<Vec<String>> {
    let Some(p) = &a.registry_ca else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(p)
        .with_context(|| format!("reading --registry-ca {}", p.display()))?;
    const END: &str = "-----END CERTIFICATE-----";
    let certs: Vec<String> = text
        .split_inclusive(END)
        .filter_map(|b| {
            b.find("-----BEGIN CERTIFICATE-----")
                .map(|i| b[i..].to_string())
        })
        .filter(|b| b.ends_with(END))
        .collect();
    if certs.is_empty() {
        bail!(
            "--registry-ca {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it",
            p.display()
        );
    }
    Ok(certs)
}

/// Whether `image` names an OCI layout (`oci:DIR[:TAG]`) rather than a
/// registry reference.
pub fn is_layout(image: &str) -> bool {
    image.starts_with("oci:")
}

/// `reference` normalized as docker does: the default registry for a name
/// without one, `:latest` for a name with neither tag nor digest.
pub fn normalize(reference: &str, default_registry: &str) -> Result<DockerReference> {
    let raw = reference
        .strip_prefix(registry::TRANSPORT_PREFIX)
        .unwrap_or(reference);
    let has_domain = raw.split_once('/').is_some_and(|(first, _)| {
        first.contains('.') || first.contains(':') || first == "localhost"
    });
    let default_registry = default_registry.trim_end_matches('/');
    if !has_domain && default_registry.is_empty() {
        bail!(
            "image reference {reference:?} names no registry and no default registry is set; write host/repo:tag or set --default-registry"
        );
    }
    let full = if has_domain {
        raw.to_string()
    } else {
        format!("{default_registry}/{raw}")
    };
    let explain = |e: &dyn std::fmt::Display| {
        anyhow!(
            "invalid image reference {reference:?}: {e} (expected oci:DIR[:TAG], [docker://][HOST[:PORT]/]REPO[:TAG|@sha256:DIGEST])"
        )
    };
    let r = DockerReference::parse(&full).map_err(|e| explain(&e))?;
    if r.is_name_only() {
        return DockerReference::parse(&format!("{full}:latest")).map_err(|e| explain(&e));
    }
    Ok(r)
}

/// An image pulled for one run: its own layout and the tag in it.
#[derive(Debug)]
pub struct Pulled {
    /// `oci:DIR:TAG` of the run's layout.
    pub oci_ref: String,
    /// The normalized reference.
    pub name: String,
    /// The manifest's digest.
    pub digest: Digest,
    /// Whether the registry was contacted.
    pub fetched: bool,
}

/// The data dir's image cache.
pub fn cache_dir(data: &Path) -> PathBuf {
    data.join("images")
}

/// An exclusive lock on the cache while a pull updates its index.
struct CacheLock(#[allow(dead_code)] nix::fcntl::Flock<File>);

fn lock_cache(dir: &Path) -> Result<CacheLock> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(".lock"))
        .with_context(|| format!("opening the image cache lock in {}", dir.display()))?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
        .map(CacheLock)
        .map_err(|(_, e)| anyhow!("locking the image cache {}: {e}", dir.display()))
}

/// The descriptor the cache holds for `r`: by tag (its normalized name), or
/// for a digest reference any cached manifest with that digest.
fn cached(cache: &OciLayout, r: &DockerReference) -> Option<Descriptor> {
    let name = r.to_string();
    if let Ok(d) = cache.find(Some(&name)) {
        return Some(d);
    }
    let want = r.digest()?;
    cache
        .index()
        .ok()?
        .manifests
        .into_iter()
        .find(|d| &d.digest == want)
}

/// Pull `reference` (per `a`) into the cache and give the run at `run_dir`
/// a layout of its own holding just that image.
pub fn pull_for_run(reference: &str, a: &PullArgs, data: &Path, run_dir: &Path) -> Result<Pulled> {
    fetch(reference, a, data, &run_dir.join("layout"), false)
}

/// Every container image a pod YAML names (`containers` and
/// `initContainers` of a Pod, or of the pod template of a Deployment, Job
/// and the like), in order and without repeats.
pub fn pod_images(yaml: &str) -> Result<Vec<String>> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if k == "containers" || k == "initContainers" {
                        for c in v.as_array().into_iter().flatten() {
                            if let Some(i) = c.get("image").and_then(|i| i.as_str()) {
                                if !out.iter().any(|o| o == i) {
                                    out.push(i.to_string());
                                }
                            }
                        }
                    } else {
                        walk(v, out);
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let docs = veil_policy::generate::parse_documents(&[yaml]).map_err(|e| anyhow!("{e}"))?;
    let mut out = Vec::new();
    docs.iter().for_each(|d| walk(d, &mut out));
    Ok(out)
}

/// Pull every image of a pod (per `a`) into the cache, and give the run at
/// `run_dir` a layout holding them, each tagged as the YAML writes it (which
/// is how the policy generator looks images up) and by normalized name.
pub fn pull_pod(yaml: &str, a: &PullArgs, data: &Path, run_dir: &Path) -> Result<PathBuf> {
    let images = pod_images(yaml)?;
    if images.is_empty() {
        bail!("the pod YAML names no container image (spec.containers[].image)");
    }
    let dst = run_dir.join("layout");
    for i in &images {
        let p = fetch(i, a, data, &dst, true)?;
        if p.fetched {
            eprintln!("veil: pulled {} ({})", p.name, p.digest);
        }
    }
    Ok(dst)
}

/// Pull `reference` into the cache and link it into the layout `dst`, tagged
/// by its normalized name (and, with `as_written`, by `reference` itself).
fn fetch(
    reference: &str,
    a: &PullArgs,
    data: &Path,
    dst: &Path,
    as_written: bool,
) -> Result<Pulled> {
    let r = normalize(reference, &a.default_registry)?;
    let name = r.to_string();
    let dir = cache_dir(data);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _lock = lock_cache(&dir)?;
    let cache =
        OciLayout::create(&dir).map_err(|e| anyhow!("image cache {}: {e}", dir.display()))?;
    let hit = cached(&cache, &r);
    let (desc, fetched) = match (a.pull, hit) {
        (PullPolicy::Never, None) => bail!(
            "{name} is not in veil's image cache ({}) and --pull never forbids contacting the registry; run with --pull missing, or pull it first with: veil image pull docker://{name} oci:{}:{name}",
            dir.display(),
            dir.display()
        ),
        (PullPolicy::Missing | PullPolicy::Never, Some(d)) => (d, false),
        (_, _) => {
            let creds = match &a.authfile {
                Some(p) => Credentials::from_auth_file(p, r.domain())?,
                None => None,
            };
            let reg = Registry::connect(&r, creds, &connection(a)?)?;
            let bar = crate::progress::Bar::new("pulling");
            let d = reg
                .pull_into_with_progress(&cache, &name, &bar)
                .map_err(|e| anyhow!("pulling {name}: {e}"))?;
            (d, true)
        }
    };
    if fetched && r.digest().is_none() {
        // Keep the manifest reachable by digest after the tag moves on.
        let pinned = r.with_digest(&desc.digest).to_string();
        cache
            .set_tag(&pinned, desc.clone())
            .map_err(|e| anyhow!("image cache {}: {e}", dir.display()))?;
    }
    if !fetched && cache.find(Some(&name)).is_err() {
        // A digest reference found under another tag: name it too, so the
        // run's layout is made from the name it was asked for.
        cache
            .set_tag(&name, desc.clone())
            .map_err(|e| anyhow!("image cache {}: {e}", dir.display()))?;
    }
    if let Some(want) = r.digest() {
        if &desc.digest != want {
            bail!(
                "pulling {name}: the registry's manifest is {} but the reference pins {want}",
                desc.digest
            );
        }
    }
    let mut tags = vec![name.as_str()];
    let raw = reference
        .strip_prefix(registry::TRANSPORT_PREFIX)
        .unwrap_or(reference);
    if as_written && raw != name {
        tags.push(raw);
    }
    link_image(&cache, &desc, dst, &name, &tags)?;
    Ok(Pulled {
        oci_ref: format!("oci:{}:{name}", dst.display()),
        name,
        digest: desc.digest,
        fetched,
    })
}

/// A layout at `dst` with `desc`'s manifest, config and layers (hard links
/// to the cache's blobs, copies across filesystems; the cache's `tag`),
/// tagged with each of `tags`.
fn link_image(
    cache: &OciLayout,
    desc: &Descriptor,
    dst: &Path,
    tag: &str,
    tags: &[&str],
) -> Result<()> {
    if dst.to_str().is_some_and(|s| s.contains(':')) {
        bail!(
            "the run directory {} contains ':', which an oci:DIR:TAG reference cannot hold; set VEIL_DATA_DIR to a path without ':'",
            dst.display()
        );
    }
    let img = cache
        .resolve(Some(tag), &Platform::linux_amd64())
        .map_err(|e| anyhow!("image cache: {e}"))?;
    let layout = OciLayout::create(dst).map_err(|e| anyhow!("{}: {e}", dst.display()))?;
    let blobs = std::iter::once(&desc.digest)
        .chain(std::iter::once(&img.manifest.config.digest))
        .chain(img.layers().iter().map(|l| &l.digest));
    for d in blobs {
        let (from, to) = (cache.blob_path(d), layout.blob_path(d));
        if to.exists() {
            continue;
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if std::fs::hard_link(&from, &to).is_err() {
            std::fs::copy(&from, &to)
                .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
        }
    }
    for t in tags {
        layout
            .set_tag(t, desc.clone())
            .map_err(|e| anyhow!("{}: {e}", dst.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::normalize;

    fn n(s: &str, def: &str) -> String {
        normalize(s, def).unwrap().to_string()
    }

    #[test]
    fn references_normalize_as_docker_does() {
        assert_eq!(n("redis", "docker.io"), "docker.io/library/redis:latest");
        assert_eq!(n("redis:7", "docker.io"), "docker.io/library/redis:7");
        assert_eq!(
            n("docker://redis:7", "docker.io"),
            "docker.io/library/redis:7"
        );
        assert_eq!(
            n("127.0.0.1:5000/app/web:1", "docker.io"),
            "127.0.0.1:5000/app/web:1"
        );
        assert_eq!(n("app/web:1", "127.0.0.1:5000"), "127.0.0.1:5000/app/web:1");
        assert_eq!(n("localhost/web", "docker.io"), "localhost/web:latest");
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            n(&format!("quay.io/x/y@{d}"), "docker.io"),
            format!("quay.io/x/y@{d}")
        );
    }

    #[test]
    fn bad_references_say_what_is_expected() {
        for bad in ["", "UPPER/Case:1", "a:b:c:d", "x@sha256:zz"] {
            let e = normalize(bad, "docker.io").unwrap_err().to_string();
            assert!(
                e.contains("expected oci:DIR[:TAG]") || e.contains("names no registry"),
                "{bad}: {e}"
            );
        }
        let e = normalize("redis", "").unwrap_err().to_string();
        assert!(e.contains("--default-registry"), "{e}");
    }
}
