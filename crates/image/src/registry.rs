//! Registries through the OCI distribution API (`/v2/…`): pull manifests
//! and blobs with every byte checked against its digest, push images from
//! a layout, and keep pulled blobs in a content-addressed local cache.
//!
//! A small blocking client (`ureq`): Basic credentials (a containers
//! `auth.json`) and Bearer token challenges, retries with exponential
//! backoff on connection errors, 429 and 5xx, bounded manifest and token
//! sizes. Plain HTTP is used only for loopback registries (`localhost`,
//! `127.0.0.0/8`, `[::1]`); everything else is HTTPS.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use zeroize::Zeroizing;

use crate::digest::Digest;
use crate::layout::OciLayout;
use crate::progress::{NoProgress, Progress, ProgressReader};
use crate::sign::reference::DockerReference;
use crate::source::{self, BlobSource, MAX_MANIFEST_BYTES, ResolvedImage, SourceError};
use crate::spec::{self, Descriptor, Platform, media_type};

/// Attempts per request (the first try plus retries).
const ATTEMPTS: u32 = 4;
/// First backoff delay; doubled after each failed attempt.
const BACKOFF: Duration = Duration::from_millis(200);
/// Largest token response accepted.
const MAX_TOKEN_BYTES: u64 = 64 << 10;
/// Largest error body read for a message.
const MAX_ERROR_BYTES: u64 = 4 << 10;

/// Largest `auth.json` read.
pub const MAX_AUTH_FILE_BYTES: usize = 1 << 20;

/// `docker://` references.
pub const TRANSPORT_PREFIX: &str = "docker://";

/// Manifest media types veil asks for.
const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// Registry credentials (Basic).
#[derive(Clone)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or token; zeroized on drop.
    pub password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Credentials for `registry` from a containers / docker `auth.json`
    /// (`{"auths":{"host:port":{"auth":"base64(user:pass)"}}}`).
    pub fn from_auth_file(path: &Path, registry: &str) -> Result<Option<Self>, SourceError> {
        let bytes = crate::sign::policy::read_bounded(path, MAX_AUTH_FILE_BYTES, "auth file")
            .map_err(|e| SourceError::malformed("auth file", e))?;
        Self::from_auth_json(&Zeroizing::new(bytes), registry)
    }

    /// Credentials for `registry` (`host[:port]`) from the bytes of a
    /// containers / docker `auth.json`: the entry whose key is that
    /// registry (with or without a scheme or a repository path), either
    /// `auth` (base64 of `user:password`) or `username` and `password`.
    /// `None` when the file has no entry for it. At most
    /// [`MAX_AUTH_FILE_BYTES`]; errors never quote the file.
    pub fn from_auth_json(bytes: &[u8], registry: &str) -> Result<Option<Self>, SourceError> {
        const WHAT: &str = "auth file";
        if bytes.len() > MAX_AUTH_FILE_BYTES {
            return Err(SourceError::malformed(
                WHAT,
                format!(
                    "{} bytes, larger than the limit of {MAX_AUTH_FILE_BYTES}",
                    bytes.len()
                ),
            ));
        }
        #[derive(serde::Deserialize)]
        struct File {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
        }
        #[derive(serde::Deserialize)]
        struct Entry {
            #[serde(default)]
            auth: Option<SecretString>,
            #[serde(default)]
            username: Option<String>,
            #[serde(default)]
            password: Option<SecretString>,
        }
        // serde_json's messages may quote the input: say where, not what.
        let f: File = serde_json::from_slice(bytes).map_err(|e| {
            SourceError::malformed(
                WHAT,
                format!(
                    "not an auth.json ({:?} error at line {} column {})",
                    e.classify(),
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let Some(entry) = f.auths.iter().find_map(|(k, e)| {
            let k = k
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            (k.split('/').next() == Some(registry)).then_some(e)
        }) else {
            return Ok(None);
        };
        if let Some(auth) = entry
            .auth
            .as_ref()
            .map(|a| &a.0)
            .filter(|a| !a.trim().is_empty())
        {
            let decoded = Zeroizing::new(B64.decode(auth.trim()).map_err(|_| {
                SourceError::malformed(WHAT, format!("the auth of {registry} is not base64"))
            })?);
            let text = std::str::from_utf8(&decoded).map_err(|_| {
                SourceError::malformed(WHAT, format!("the auth of {registry} is not UTF-8"))
            })?;
            let (user, pass) = text.split_once(':').ok_or_else(|| {
                SourceError::malformed(
                    WHAT,
                    format!("the auth of {registry} is not base64 of user:password"),
                )
            })?;
            return Ok(Some(Credentials {
                username: user.to_owned(),
                password: Zeroizing::new(pass.to_owned()),
            }));
        }
        match (&entry.username, &entry.password) {
            (Some(u), Some(p)) => Ok(Some(Credentials {
                username: u.clone(),
                password: p.0.clone(),
            })),
            _ => Err(SourceError::malformed(
                WHAT,
                format!("the entry of {registry} has neither auth nor username and password"),
            )),
        }
    }

    fn basic(&self) -> Zeroizing<String> {
        let raw = Zeroizing::new(format!("{}:{}", self.username, &*self.password));
        Zeroizing::new(format!("Basic {}", B64.encode(raw.as_bytes())))
    }
}

/// A string from a credentials file, zeroized on drop.
struct SecretString(Zeroizing<String>);

impl<'de> serde::Deserialize<'de> for SecretString {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <String as serde::Deserialize>::deserialize(d).map(|s| SecretString(Zeroizing::new(s)))
    }
}

/// A registry repository, with optional credentials and blob cache.
pub struct Registry {
    base: String,
    repo: DockerReference,
    creds: Option<Credentials>,
    agent: ureq::Agent,
    /// `Authorization` header value currently in use.
    auth: Mutex<Option<Zeroizing<String>>>,
    cache: Option<OciLayout>,
}

/// Whether `host[:port]` is a loopback registry (reached over plain HTTP by default).
pub fn is_loopback(host: &str) -> bool {
    let h = host.rsplit_once(':').map_or(host, |(h, p)| {
        if p.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    h == "localhost"
        || h == "[::1]"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parse `docker://REF` (the prefix is optional here).
pub fn parse_reference(s: &str) -> Result<DockerReference, SourceError> {
    let r = s.strip_prefix(TRANSPORT_PREFIX).unwrap_or(s);
    DockerReference::parse(r).map_err(|e| SourceError::Reference {
        reference: s.chars().take(200).collect(),
        reason: e.to_string(),
    })
}

enum Body<'a> {
    None,
    Bytes(&'a [u8], &'a str),
    /// A blob streamed from a layout (re-opened for each attempt).
    Blob(&'a OciLayout, &'a Descriptor),
}

/// How a [`Registry`] client reaches the registry (defaults: the
/// reference's own host, plain HTTP for loopback only, Mozilla's roots).
#[derive(Debug, Clone, Default)]
pub struct Connection {
    /// Trust only these CA certificates (PEM) for the registry's TLS, and
    /// use HTTPS even for a loopback registry.
    pub ca_pem: Option<Vec<u8>>,
    /// Never use plain HTTP, not even for a loopback registry.
    pub https_only: bool,
    /// Connect to this `host[:port]` instead of the reference's registry
    /// (the repository path and the credentials stay the reference's; TLS
    /// checks the certificate against this host).
    pub endpoint: Option<String>,
}

/// The root certificates in `pem`, or why not.
fn root_certs(pem: &[u8]) -> Result<ureq::tls::RootCerts, SourceError> {
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(SourceError::malformed("registry CA certificates", e)),
        }
    }
    if certs.is_empty() {
        return Err(SourceError::malformed(
            "registry CA certificates",
            "no PEM certificate in them",
        ));
    }
    Ok(ureq::tls::RootCerts::Specific(std::sync::Arc::new(certs)))
}

impl Registry {
    /// A client for `reference`'s repository.
    pub fn new(reference: &DockerReference, creds: Option<Credentials>) -> Self {
        Self::build(reference, creds, &Connection::default(), None)
    }

    /// A client for `reference`'s repository, reached as `conn` says.
    pub fn connect(
        reference: &DockerReference,
        creds: Option<Credentials>,
        conn: &Connection,
    ) -> Result<Self, SourceError> {
        let roots = conn.ca_pem.as_deref().map(root_certs).transpose()?;
        Ok(Self::build(reference, creds, conn, roots))
    }

    fn build(
        reference: &DockerReference,
        creds: Option<Credentials>,
        conn: &Connection,
        roots: Option<ureq::tls::RootCerts>,
    ) -> Self {
        // Docker Hub's API lives at registry-1.docker.io (as in containers/image).
        let host = match (conn.endpoint.as_deref(), reference.domain()) {
            (Some(e), _) => e,
            (None, "docker.io") => "registry-1.docker.io",
            (None, d) => d,
        };
        let scheme = if is_loopback(host) && !conn.https_only && roots.is_none() {
            "http"
        } else {
            "https"
        };
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(r) = roots {
            tls = tls.root_certs(r);
        }
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_global(Some(Duration::from_secs(3600)))
            .max_redirects(5)
            .tls_config(tls.build())
            .build()
            .new_agent();
        Registry {
            base: format!("{scheme}://{host}"),
            repo: reference.clone(),
            creds,
            agent,
            auth: Mutex::new(None),
            cache: None,
        }
    }

    /// The base URL requests go to (`https://host:port`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Keep pulled blobs in the content-addressed layout `dir` and reuse
    /// them (re-verified on every read).
    pub fn with_cache(mut self, dir: &Path) -> Result<Self, SourceError> {
        self.cache = Some(OciLayout::create(dir)?);
        Ok(self)
    }

    fn url(&self, tail: &str) -> String {
        format!("{}/v2/{}/{tail}", self.base, self.repo.path())
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> SourceError {
        SourceError::Registry(format!("{what} ({}): {e}", self.repo.repository()))
    }

    /// One request with auth negotiation and retries. `ok` lists the
    /// statuses that are returned to the caller.
    fn request(
        &self,
        method: &str,
        url: &str,
        accept: Option<&str>,
        body: Body<'_>,
        ok: &[u16],
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, SourceError> {
        let mut delay = BACKOFF;
        let mut last = String::new();
        let mut authed_once = false;
        for attempt in 1..=ATTEMPTS {
            let mut req = ureq::http::Request::builder().method(method).uri(url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(a) = self
                .auth
                .lock()
                .map_err(|_| self.err(what, "lock"))?
                .as_ref()
            {
                req = req.header("Authorization", a.as_str());
            }
            let result = match &body {
                Body::None => req
                    .body(())
                    .map_err(|e| self.err(what, e))
                    .and_then(|r| self.agent.run(r).map_err(|e| self.err(what, e))),
                Body::Bytes(b, ct) => req
                    .header("Content-Type", *ct)
                    .body(b.to_vec())
                    .map_err(|e| self.err(what, e))
                    .and_then(|r| self.agent.run(r).map_err(|e| self.err(what, e))),
                Body::Blob(layout, desc) => {
                    let mut reader = layout.open_blob(desc)?;
                    req.header("Content-Type", "application/octet-stream")
                        .header("Content-Length", desc.size.to_string())
                        .body(ureq::SendBody::from_reader(&mut reader))
                        .map_err(|e| self.err(what, e))
                        .and_then(|r| self.agent.run(r).map_err(|e| self.err(what, e)))
                }
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    last = e.to_string();
                    if attempt < ATTEMPTS {
                        std::thread::sleep(delay);
                        delay *= 2;
                    }
                    continue;
                }
            };
            let status = resp.status().as_u16();
            if ok.contains(&status) {
                return Ok(resp);
            }
            if status == 401 && !authed_once {
                authed_once = true;
                let challenge = resp
                    .headers()
                    .get("WWW-Authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned();
                let header = self.authenticate(&challenge, what)?;
                *self.auth.lock().map_err(|_| self.err(what, "lock"))? = Some(header);
                continue;
            }
            let msg = error_body(resp);
            last = format!("HTTP {status}: {msg}");
            let retriable = status == 429 || status >= 500;
            if !retriable {
                return Err(match status {
                    401 | 403 => self.err(what, format!("access denied: {last}")),
                    404 => SourceError::NotFound(format!("{what} in {}", self.repo.repository())),
                    _ => self.err(what, last),
                });
            }
            if attempt < ATTEMPTS {
                std::thread::sleep(delay);
                delay *= 2;
            }
        }
        Err(self.err(what, format!("gave up after {ATTEMPTS} attempts: {last}")))
    }

    /// Answer a `WWW-Authenticate` challenge: Basic credentials, or a Bearer
    /// token fetched from the realm (with the credentials, if any).
    fn authenticate(&self, challenge: &str, what: &str) -> Result<Zeroizing<String>, SourceError> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => self.creds.as_ref().map(Credentials::basic).ok_or_else(|| {
                self.err(
                    what,
                    "the registry wants Basic credentials; give an auth file",
                )
            }),
            "bearer" => {
                let realm = params
                    .get("realm")
                    .ok_or_else(|| self.err(what, "Bearer challenge without a realm"))?;
                // A plain-HTTP realm only for a plain-HTTP (loopback) registry.
                let loopback_http = realm.starts_with("http://")
                    && self.base.starts_with("http://")
                    && is_loopback(
                        realm
                            .trim_start_matches("http://")
                            .split('/')
                            .next()
                            .unwrap_or(""),
                    );
                if !realm.starts_with("https://") && !loopback_http {
                    return Err(self.err(what, format!("token realm {realm:?} is not https")));
                }
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                for key in ["service", "scope"] {
                    if let Some(v) = params.get(key) {
                        url.push(sep);
                        url.push_str(key);
                        url.push('=');
                        url.push_str(&urlencode(v));
                        sep = '&';
                    }
                }
                let mut req = self.agent.get(&url);
                if let Some(c) = &self.creds {
                    req = req.header("Authorization", c.basic().as_str());
                }
                let resp = req.call().map_err(|e| self.err("token request", e))?;
                if resp.status().as_u16() != 200 {
                    return Err(
                        self.err("token request", format!("HTTP {}", resp.status().as_u16()))
                    );
                }
                // Room for the whole limit up front: no reallocation leaves
                // an unzeroized copy of the token behind.
                let mut buf = Zeroizing::new(Vec::with_capacity(MAX_TOKEN_BYTES as usize + 1));
                resp.into_body()
                    .into_reader()
                    .take(MAX_TOKEN_BYTES + 1)
                    .read_to_end(&mut buf)
                    .map_err(|e| self.err("token response", e))?;
                if buf.len() as u64 > MAX_TOKEN_BYTES {
                    return Err(self.err("token response", "too large"));
                }
                #[derive(serde::Deserialize)]
                struct Token {
                    #[serde(default)]
                    token: Option<String>,
                    #[serde(default)]
                    access_token: Option<String>,
                }
                let t: Token =
                    serde_json::from_slice(&buf).map_err(|e| self.err("token response", e))?;
                let token = Zeroizing::new(
                    t.token
                        .or(t.access_token)
                        .ok_or_else(|| self.err("token response", "no token"))?,
                );
                Ok(Zeroizing::new(format!("Bearer {}", &*token)))
            }
            other => Err(self.err(what, format!("unsupported authentication scheme {other:?}"))),
        }
    }

    /// Fetch the manifest (or index) for `reference` (tag or digest): its
    /// bytes and descriptor. A digest reference is verified; a tag's
    /// digest is computed from the bytes.
    pub fn manifest(&self, reference: &str) -> Result<(Descriptor, Vec<u8>), SourceError> {
        let what = format!("manifest {reference}");
        let resp = self.request(
            "GET",
            &self.url(&format!("manifests/{reference}")),
            Some(ACCEPT),
            Body::None,
            &[200],
            &what,
        )?;
        let mt = resp
            .headers()
            .get("Content-Type")
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_owned())
            .unwrap_or_default();
        let bytes = source::read_limited(
            resp.into_body().into_reader(),
            MAX_MANIFEST_BYTES,
            &what,
            &what,
        )?;
        let digest = Digest::sha256(&bytes);
        if let Ok(want) = reference.parse::<Digest>() {
            let actual = Digest::compute(want.algorithm(), &bytes);
            if actual != want {
                return Err(SourceError::DigestMismatch {
                    what,
                    expected: want,
                    actual,
                });
            }
        }
        // The document's own mediaType wins over a missing or generic header.
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Probe {
            #[serde(default)]
            media_type: Option<String>,
        }
        let inner = serde_json::from_slice::<Probe>(&bytes)
            .map_err(|e| SourceError::malformed(&what, e))?
            .media_type;
        let media_type = match inner {
            Some(m) => m,
            None if spec::is_index(&mt) || spec::is_manifest(&mt) => mt,
            None => media_type::OCI_MANIFEST.into(),
        };
        let desc = Descriptor::new(media_type, digest, bytes.len() as u64);
        Ok((desc, bytes))
    }

    /// Resolve the reference to a verified single-platform image.
    pub fn resolve(&self, platform: &Platform) -> Result<ResolvedImage, SourceError> {
        let reference = match (self.repo.digest(), self.repo.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_owned(),
            (None, None) => "latest".to_owned(),
        };
        let (desc, bytes) = self.manifest(&reference)?;
        // Hand the fetched bytes to `resolve` through a one-entry overlay so
        // the document is not fetched twice.
        let overlay = Overlay {
            inner: self,
            digest: desc.digest.clone(),
            bytes,
        };
        source::resolve(&overlay, &desc, platform)
    }

    fn blob_exists(&self, digest: &Digest) -> Result<bool, SourceError> {
        let resp = self.request(
            "HEAD",
            &self.url(&format!("blobs/{digest}")),
            None,
            Body::None,
            &[200, 404],
            &format!("blob {digest}"),
        )?;
        Ok(resp.status().as_u16() == 200)
    }

    fn upload_blob(&self, layout: &OciLayout, desc: &Descriptor) -> Result<(), SourceError> {
        let digest = &desc.digest;
        if self.blob_exists(digest)? {
            return Ok(());
        }
        let what = format!("uploading blob {digest}");
        let resp = self.request(
            "POST",
            &self.url("blobs/uploads/"),
            None,
            Body::Bytes(&[], "application/octet-stream"),
            &[202],
            &what,
        )?;
        let loc = resp
            .headers()
            .get("Location")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.err(&what, "no Location in the upload response"))?
            .to_owned();
        let loc = if loc.starts_with("http://") || loc.starts_with("https://") {
            loc
        } else {
            format!("{}{loc}", self.base)
        };
        let sep = if loc.contains('?') { '&' } else { '?' };
        let put = format!("{loc}{sep}digest={}", urlencode(&digest.to_string()));
        self.request("PUT", &put, None, Body::Blob(layout, desc), &[201], &what)?;
        Ok(())
    }

    /// The sigstore signature attachment of `digest`, if the registry has one.
    pub fn attachment(&self, digest: &Digest) -> Result<Option<Descriptor>, SourceError> {
        match self.manifest(&crate::sign::cosign::attachment_tag(digest)) {
            Ok((desc, _)) => Ok(Some(desc)),
            Err(SourceError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Add `sig` to the signature attachment of `digest` in the registry
    /// (tag `sha256-<hex>.sig`), as cosign does. Returns the attachment's
    /// descriptor.
    pub fn attach_signature(
        &self,
        digest: &Digest,
        sig: crate::sign::cosign::SigstoreSignature,
    ) -> Result<Descriptor, crate::sign::SignError> {
        use crate::sign::cosign;
        let mut sigs = match self.attachment(digest)? {
            Some(d) => cosign::read_attachment(self, &d)?,
            None => Vec::new(),
        };
        if !sigs.contains(&sig) {
            sigs.push(sig);
        }
        // Stage the blobs in a temporary layout, then push them.
        let tmp = tempfile::tempdir()
            .map_err(|e| SourceError::io("creating a temporary directory", e))?;
        let stage = OciLayout::create(tmp.path())?;
        let bytes = cosign::build_attachment(&sigs, &mut |b, mt| {
            let d = stage.write_blob(b, mt)?;
            self.upload_blob(&stage, &d)?;
            Ok(d)
        })?;
        let tag = cosign::attachment_tag(digest);
        self.put_manifest(&tag, &bytes, media_type::OCI_MANIFEST)?;
        Ok(Descriptor::new(
            media_type::OCI_MANIFEST,
            Digest::sha256(&bytes),
            bytes.len() as u64,
        ))
    }

    /// Upload `bytes` as the manifest `reference` (a tag or digest).
    pub fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<(), SourceError> {
        self.request(
            "PUT",
            &self.url(&format!("manifests/{reference}")),
            None,
            Body::Bytes(bytes, media_type),
            &[201],
            &format!("pushing manifest {reference}"),
        )?;
        Ok(())
    }

    /// Push the image `tag` of `layout` (config, layers, manifest; blobs
    /// the registry has are skipped) as this reference's tag. Returns the
    /// manifest digest, which is unchanged.
    pub fn push(&self, layout: &OciLayout, tag: Option<&str>) -> Result<Digest, SourceError> {
        self.push_with_progress(layout, tag, &NoProgress)
    }

    /// [`Registry::push`], reporting each blob to `progress`.
    pub fn push_with_progress(
        &self,
        layout: &OciLayout,
        tag: Option<&str>,
        progress: &dyn Progress,
    ) -> Result<Digest, SourceError> {
        let img = layout.resolve(tag, &Platform::linux_amd64())?;
        let blobs: Vec<&Descriptor> = std::iter::once(&img.manifest.config)
            .chain(img.layers())
            .collect();
        progress.total(blobs.iter().map(|d| d.size).sum());
        for (i, desc) in blobs.iter().enumerate() {
            progress.step(&blob_step(i, blobs.len()));
            // Streamed from the layout; the registry checks the digest too.
            self.upload_blob(layout, desc)?;
            progress.advance(desc.size);
        }
        let target = self
            .repo
            .tag()
            .map(str::to_owned)
            .unwrap_or_else(|| img.manifest_digest().to_string());
        self.put_manifest(
            &target,
            &img.manifest_bytes,
            &img.manifest_descriptor.media_type,
        )?;
        Ok(img.manifest_digest().clone())
    }

    /// Pull the reference into `layout` as `tag`: config and layers are
    /// verified while written, the manifest keeps its exact bytes (so its
    /// digest is unchanged). Returns the manifest's descriptor.
    pub fn pull_into(&self, layout: &OciLayout, tag: &str) -> Result<Descriptor, SourceError> {
        self.pull_into_with_progress(layout, tag, &NoProgress)
    }

    /// [`Registry::pull_into`], reporting the bytes downloaded to `progress`.
    pub fn pull_into_with_progress(
        &self,
        layout: &OciLayout,
        tag: &str,
        progress: &dyn Progress,
    ) -> Result<Descriptor, SourceError> {
        let img = self.resolve(&Platform::linux_amd64())?;
        let blobs: Vec<&Descriptor> = std::iter::once(&img.manifest.config)
            .chain(img.layers())
            .collect();
        progress.total(blobs.iter().map(|d| d.size).sum());
        for (i, desc) in blobs.iter().enumerate() {
            progress.step(&blob_step(i, blobs.len()));
            if layout.has_blob(&desc.digest) {
                progress.advance(desc.size);
                continue;
            }
            let mut r = ProgressReader::new(self.open_blob(desc)?, progress);
            let written = layout.write_blob_from(&mut r, &desc.media_type)?;
            if written.digest != desc.digest {
                return Err(SourceError::DigestMismatch {
                    what: "pulled blob".into(),
                    expected: desc.digest.clone(),
                    actual: written.digest,
                });
            }
        }
        let mut desc =
            layout.write_blob(&img.manifest_bytes, &img.manifest_descriptor.media_type)?;
        desc.platform = None;
        layout.set_tag(tag, desc.clone())?;
        Ok(desc)
    }

    /// Stream the blob `desc` from the registry, verified against it.
    fn get_blob(
        &self,
        desc: &Descriptor,
        what: &str,
    ) -> Result<source::VerifyingReader<ureq::BodyReader<'static>>, SourceError> {
        let resp = self.request(
            "GET",
            &self.url(&format!("blobs/{}", desc.digest)),
            None,
            Body::None,
            &[200],
            what,
        )?;
        Ok(source::VerifyingReader::new(
            resp.into_body().into_reader(),
            desc,
            what,
        ))
    }

    fn fetch_blob_to_cache(&self, cache: &OciLayout, desc: &Descriptor) -> Result<(), SourceError> {
        let what = format!("blob {}", desc.digest);
        let mut last = None;
        for _ in 0..2 {
            let mut reader = self.get_blob(desc, &what)?;
            let mut w = cache.blob_writer()?;
            match io::copy(&mut reader, &mut w) {
                Ok(_) => {
                    w.commit(&desc.media_type)?;
                    return Ok(());
                }
                Err(e) => {
                    let e = SourceError::from_io(&what, e);
                    if e.is_refusal() {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| self.err(&what, "download failed")))
    }
}

/// How a push or pull names its blob `i` of `n` (the config comes first).
fn blob_step(i: usize, n: usize) -> String {
    if i == 0 {
        "config".into()
    } else {
        format!("layer {i}/{}", n - 1)
    }
}

impl BlobSource for Registry {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, SourceError> {
        // Manifests (image, index, signature attachment) come from the
        // manifests endpoint, verified by digest.
        if spec::is_index(&desc.media_type) || spec::is_manifest(&desc.media_type) {
            let (_, bytes) = self.manifest(&desc.digest.to_string())?;
            return Ok(Box::new(source::VerifyingReader::new(
                io::Cursor::new(bytes),
                desc,
                format!("manifest {}", desc.digest),
            )));
        }
        if let Some(cache) = &self.cache {
            if !cache.has_blob(&desc.digest) {
                self.fetch_blob_to_cache(cache, desc)?;
            }
            return cache.open_blob(desc);
        }
        let what = format!("blob {}", desc.digest);
        Ok(Box::new(self.get_blob(desc, &what)?))
    }
}

struct Overlay<'a> {
    inner: &'a Registry,
    digest: Digest,
    bytes: Vec<u8>,
}

impl BlobSource for Overlay<'_> {
    fn open_blob(&self, desc: &Descriptor) -> Result<Box<dyn Read + '_>, SourceError> {
        if desc.digest == self.digest {
            return Ok(Box::new(source::VerifyingReader::new(
                &self.bytes[..],
                desc,
                format!("manifest {}", desc.digest),
            )));
        }
        self.inner.open_blob(desc)
    }
}

fn error_body(resp: ureq::http::Response<ureq::Body>) -> String {
    let mut buf = Vec::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(MAX_ERROR_BYTES)
        .read_to_end(&mut buf);
    String::from_utf8_lossy(&buf)
        .chars()
        .filter(|c| !c.is_control())
        .take(300)
        .collect()
}

/// Parse `Scheme k="v", k2="v2"` (quoted values may hold commas).
fn parse_challenge(h: &str) -> (String, BTreeMap<String, String>) {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    let mut params = BTreeMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            value.push(n);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.insert(key.trim().to_ascii_lowercase(), value);
        if params.len() > 32 {
            break;
        }
    }
    (scheme.to_owned(), params)
}

fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn challenges_parse() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(p["realm"], "https://auth.example/token");
        assert_eq!(p["scope"], "repository:a/b:pull,push");
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(s, "Basic");
        assert_eq!(p["realm"], "Registry Realm");
    }

    #[test]
    fn only_loopback_is_plain_http() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:80",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry.example", "10.0.0.1:5000", "localhost.example"] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn docker_hub_is_reached_at_its_api_host() {
        let r = Registry::new(&parse_reference("busybox:1").unwrap(), None);
        assert_eq!(
            r.url("manifests/1"),
            "https://registry-1.docker.io/v2/library/busybox/manifests/1"
        );
        let r = Registry::new(&parse_reference("127.0.0.1:5000/a/b").unwrap(), None);
        assert_eq!(r.url("tags/list"), "http://127.0.0.1:5000/v2/a/b/tags/list");
    }

    #[test]
    fn auth_json_gives_the_named_registrys_credentials_only() {
        let b64 = B64.encode("alice:s3cr:et");
        let file = format!(
            r#"{{"auths":{{"https://10.0.3.2:5000/v1/":{{"auth":"{b64}"}},"other.example":{{"username":"bob","password":"pw"}}}}}}"#
        );
        let c = Credentials::from_auth_json(file.as_bytes(), "10.0.3.2:5000")
            .unwrap()
            .unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.as_str()),
            ("alice", "s3cr:et")
        );
        assert!(
            !format!("{c:?}").contains("s3cr"),
            "Debug never shows the password"
        );
        let c = Credentials::from_auth_json(file.as_bytes(), "other.example")
            .unwrap()
            .unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("bob", "pw"));
        assert!(
            Credentials::from_auth_json(file.as_bytes(), "10.0.3.2:5001")
                .unwrap()
                .is_none()
        );
        // Malformed entries are refused without quoting the secret.
        for (bad, why) in [
            (
                r#"{"auths":{"r":{"auth":"!!notbase64-TOPSECRET"}}}"#,
                "not base64",
            ),
            (
                r#"{"auths":{"r":{"auth":"VE9QU0VDUkVU"}}}"#,
                "user:password",
            ),
            (r#"{"auths":{"r":{"username":"u"}}}"#, "neither auth nor"),
            (
                r#"{"auths":{"r":{"auth":5, "x":"TOPSECRET"}}}"#,
                "not an auth.json",
            ),
            (r#"{"auths":"TOPSECRET"}"#, "not an auth.json"),
        ] {
            let e = Credentials::from_auth_json(bad.as_bytes(), "r")
                .unwrap_err()
                .to_string();
            assert!(e.contains(why), "{bad}: {e}");
            assert!(!e.contains("TOPSECRET"), "{e}");
        }
        let big = vec![b' '; MAX_AUTH_FILE_BYTES + 1];
        let e = Credentials::from_auth_json(&big, "r")
            .unwrap_err()
            .to_string();
        assert!(e.contains("larger than the limit"), "{e}");
    }

    #[test]
    fn a_ca_or_https_only_means_tls_even_on_loopback() {
        let r = parse_reference("127.0.0.1:5000/a/b").unwrap();
        let https = Connection {
            https_only: true,
            ..Default::default()
        };
        let reg = Registry::connect(&r, None, &https).unwrap();
        assert_eq!(reg.base_url(), "https://127.0.0.1:5000");
        let moved = Connection {
            https_only: true,
            endpoint: Some("10.0.3.2:5000".into()),
            ..Default::default()
        };
        let reg = Registry::connect(&r, None, &moved).unwrap();
        assert_eq!(
            reg.url("tags/list"),
            "https://10.0.3.2:5000/v2/a/b/tags/list"
        );
        let bad_ca = Connection {
            ca_pem: Some(b"not a certificate".to_vec()),
            ..Default::default()
        };
        let e = Registry::connect(&r, None, &bad_ca)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("no PEM certificate"), "{e}");
    }

    proptest! {
        #[test]
        fn arbitrary_challenges_never_panic(s in ".{0,300}") {
            let _ = parse_challenge(&s);
        }

        #[test]
        fn arbitrary_auth_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = Credentials::from_auth_json(&bytes, "r");
        }

        #[test]
        fn any_user_password_round_trips(user in "[^:\\x00]{0,40}", pass in ".{0,80}") {
            let auth = B64.encode(format!("{user}:{pass}"));
            let file = serde_json::json!({"auths": {"reg.example:5000": {"auth": auth}}}).to_string();
            let c = Credentials::from_auth_json(file.as_bytes(), "reg.example:5000").unwrap().unwrap();
            prop_assert_eq!(c.username, user);
            prop_assert_eq!(c.password.as_str(), pass.as_str());
        }
    }
}
