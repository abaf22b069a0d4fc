//! Attestation to the KBS named in init-data, and the secrets it releases.
//!
//! The KBS comes from init-data's `aa.toml` (`[token_configs.kbs] url, cert`);
//! the secrets to place on the tmpfs from `cdh.toml`
//! (`[[credentials]] path = "/run/veil/secrets/NAME", resource_uri = "kbs:///repo/type/tag"`).
//! Both are part of the measured init-data, so the host cannot change which
//! secrets the workload gets. The handshake is retried a bounded number of
//! times with exponential backoff; a resource fetch re-attests when the KBS
//! no longer knows the token (e.g. it restarted).

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use serde::Deserialize;
use veil_image::crypt::CryptError;
use veil_image::crypt::kbs::{KekSource, ResourceUri};
use veil_kbs_client::protocol::InitData as WireInitData;
use veil_kbs_client::{
    ClientConfig, ClientError, EvidenceProvider, KbsClient, KeyType, ResourcePath, TeeKeyPair,
};
use veil_policy::ParsedInitData;
use veil_policy::initdata::{AA_KEY, CDH_KEY};
use veil_tee::Attester;
use zeroize::Zeroizing;

/// Handshake attempts before giving up.
pub const ATTEST_ATTEMPTS: u32 = 5;
/// First backoff delay; doubled after each failed attempt.
pub const FIRST_BACKOFF: Duration = Duration::from_millis(200);
/// Largest secret placed on the tmpfs.
pub const MAX_SECRET_BYTES: usize = 1 << 20;

/// Where the KBS is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KbsTarget {
    pub url: String,
    /// PEM certificate(s) to trust for its TLS.
    pub cert: Option<String>,
}

/// A secret init-data asks for.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Guest path, under `/run/veil/secrets/`.
    pub path: String,
    /// `kbs:///repo/type/tag`.
    pub resource_uri: String,
}

#[derive(Deserialize)]
struct AaToml {
    #[serde(default)]
    token_configs: TokenConfigs,
}

#[derive(Deserialize, Default)]
struct TokenConfigs {
    kbs: Option<KbsToken>,
}

#[derive(Deserialize)]
struct KbsToken {
    url: String,
    #[serde(default)]
    cert: Option<String>,
}

#[derive(Deserialize, Default)]
struct CdhToml {
    #[serde(default)]
    credentials: Vec<Credential>,
}

/// Read the KBS and the credentials from init-data. `None` when it names no KBS.
pub fn target_of(
    init_data: &ParsedInitData,
) -> Result<Option<(KbsTarget, Vec<Credential>)>, String> {
    let data = &init_data.init_data.data;
    let Some(aa) = data.get(AA_KEY) else {
        return Ok(None);
    };
    let aa: AaToml = toml::from_str(aa).map_err(|e| format!("init-data aa.toml: {e}"))?;
    let Some(kbs) = aa.token_configs.kbs else {
        return Ok(None);
    };
    let cdh: CdhToml = match data.get(CDH_KEY) {
        Some(t) => {
            let v: toml::Table =
                toml::from_str(t).map_err(|e| format!("init-data cdh.toml: {e}"))?;
            match v.get("credentials") {
                Some(c) => CdhToml {
                    credentials: c
                        .clone()
                        .try_into()
                        .map_err(|e| format!("init-data cdh.toml credentials: {e}"))?,
                },
                None => CdhToml::default(),
            }
        }
        None => CdhToml::default(),
    };
    for c in &cdh.credentials {
        secret_name(&c.path)?;
        ResourcePath::parse(&c.resource_uri)
            .map_err(|e| format!("init-data cdh.toml credential {}: {e}", c.path))?;
    }
    Ok(Some((
        KbsTarget {
            url: kbs.url,
            cert: kbs.cert.filter(|c| !c.is_empty()),
        },
        cdh.credentials,
    )))
}

/// Where the image signature trust policy (containers-policy.json) comes
/// from: init-data `cdh.toml` `[image]`, as CoCo's image-rs reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageTrust {
    /// `image_security_policy = "<JSON>"`: inline, measured with init-data.
    Inline(String),
    /// `image_security_policy_uri = "kbs:///repo/type/tag"`: fetched from
    /// the KBS after attestation.
    Kbs(ResourcePath),
}

/// The image trust policy init-data asks for, if any. Only inline policies
/// and `kbs:///` URIs are accepted: anything else (e.g. `file://`) would
/// let the untrusted host choose the policy.
pub fn image_trust_of(init_data: &ParsedInitData) -> Result<Option<ImageTrust>, String> {
    let Some(cdh) = init_data.init_data.data.get(CDH_KEY) else {
        return Ok(None);
    };
    let v: toml::Table = toml::from_str(cdh).map_err(|e| format!("init-data cdh.toml: {e}"))?;
    let Some(image) = v.get("image") else {
        return Ok(None);
    };
    let image = image
        .as_table()
        .ok_or("init-data cdh.toml: [image] must be a table")?;
    let text = |k: &str| -> Result<Option<&str>, String> {
        match image.get(k) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(|s| Some(s.trim()).filter(|s| !s.is_empty()))
                .ok_or_else(|| format!("init-data cdh.toml: [image] {k} must be a string")),
        }
    };
    match (
        text("image_security_policy")?,
        text("image_security_policy_uri")?,
    ) {
        (Some(_), Some(_)) => Err(
            "init-data cdh.toml: [image] has both image_security_policy and image_security_policy_uri; give one"
                .into(),
        ),
        (Some(inline), None) => Ok(Some(ImageTrust::Inline(inline.to_string()))),
        (None, Some(uri)) => {
            let path = uri.strip_prefix("kbs:///").ok_or_else(|| {
                format!(
                    "init-data cdh.toml: image_security_policy_uri {uri:?} must be kbs:///repo/type/tag (a policy from anywhere else would be chosen by the host)"
                )
            })?;
            ResourcePath::parse(path)
                .map(|p| Some(ImageTrust::Kbs(p)))
                .map_err(|e| format!("init-data cdh.toml: image_security_policy_uri {uri:?}: {e}"))
        }
        (None, None) => Ok(None),
    }
}

/// The file name of a credential path `/run/veil/secrets/NAME`.
pub fn secret_name(path: &str) -> Result<&str, String> {
    let name = path
        .strip_prefix("/run/veil/secrets/")
        .ok_or_else(|| format!("credential path {path:?} must be /run/veil/secrets/NAME"))?;
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err(format!(
            "credential name {name:?} must be [A-Za-z0-9._-]+ and not start with ."
        ));
    }
    Ok(name)
}

/// Evidence for the KBS client from the guest's attester.
pub struct TeeEvidence {
    attester: Arc<dyn Attester>,
    init_data: String,
    /// Set when init-data asks for GPUs: their evidence goes along.
    gpus: Arc<OnceLock<Arc<crate::gpu::Gpus>>>,
}

impl EvidenceProvider for TeeEvidence {
    fn tee(&self) -> &str {
        self.attester.tee().as_str()
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, String> {
        self.attester
            .evidence(report_data)
            .map(|e| e.json)
            .map_err(|e| e.to_string())
    }

    fn init_data(&self) -> Option<WireInitData> {
        Some(WireInitData {
            format: "toml".into(),
            body: self.init_data.clone(),
        })
    }

    fn additional_evidence(&self, device_digest: &[u8; 48]) -> Result<String, String> {
        match self.gpus.get() {
            Some(g) => Ok(g.additional_evidence(device_digest)),
            None => Ok(String::new()),
        }
    }
}

/// The agent's KBS session (one ephemeral key for the agent's lifetime).
pub struct Kbs {
    target: KbsTarget,
    client: Mutex<KbsClient<TeeEvidence>>,
    gpus: Arc<OnceLock<Arc<crate::gpu::Gpus>>>,
}

impl std::fmt::Debug for Kbs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kbs")
            .field("url", &self.target.url)
            .finish()
    }
}

/// The result of attesting.
#[derive(Debug, Clone, Default)]
pub struct TokenInfo {
    pub exp: u64,
    pub ear_status: String,
}

fn retryable(e: &ClientError) -> bool {
    // Refusals are answers: retrying cannot change them. Transport
    // failures (KBS down, restarting) can pass.
    matches!(e, ClientError::Transport { .. }) || e.status().is_some_and(|s| s >= 500)
}

impl Kbs {
    /// A client for `target` with a fresh ephemeral key.
    pub fn new(
        target: KbsTarget,
        attester: Arc<dyn Attester>,
        init_data: &ParsedInitData,
    ) -> Result<Self, String> {
        let mut cfg = ClientConfig::new(target.url.clone());
        cfg.ca_pem = target.cert.as_ref().map(|c| c.as_bytes().to_vec());
        // A list of replicas: plain HTTP only if every one is on loopback.
        let urls = veil_kbs_client::http::kbs_urls(&target.url);
        cfg.allow_http = !urls.is_empty() && urls.iter().all(|u| is_loopback_http(u));
        cfg.timeout = Duration::from_secs(10);
        let body = String::from_utf8(init_data.raw().to_vec())
            .map_err(|_| "init-data is not UTF-8".to_string())?;
        let key = TeeKeyPair::generate(KeyType::EcP256)
            .map_err(|e| format!("generating the TEE key: {e}"))?;
        let gpus = Arc::new(OnceLock::new());
        let client = KbsClient::new(
            &cfg,
            TeeEvidence {
                attester,
                init_data: body,
                gpus: gpus.clone(),
            },
            key,
        )
        .map_err(|e| e.to_string())?;
        Ok(Kbs {
            target,
            client: Mutex::new(client),
            gpus,
        })
    }

    /// Send these GPUs' evidence with every attestation from now on, and
    /// open or close their gate from each answer (docs/gpu.md).
    pub fn require_gpus(&self, gpus: Arc<crate::gpu::Gpus>) -> Result<(), String> {
        self.gpus
            .set(gpus)
            .map_err(|_| "GPUs are already attached to this KBS session".to_string())
    }

    /// After a KBS call: a token that answers an attestation carrying GPU
    /// evidence opens or closes the GPU gate.
    fn answer_gpus(&self, c: &mut KbsClient<TeeEvidence>) {
        let Some(g) = self.gpus.get() else { return };
        if !g.awaiting_answer() {
            return;
        }
        match c.token() {
            Ok(t) => {
                if let Err(e) = g.accept_token(&t.token) {
                    tracing::warn!(error = %e, "the KBS did not accept this guest's GPUs");
                }
            }
            Err(e) => g.revoke(&format!("no KBS token: {e}")),
        }
    }

    /// The KBS URL.
    pub fn url(&self) -> &str {
        &self.target.url
    }

    fn with_retries<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut KbsClient<TeeEvidence>) -> Result<T, ClientError>,
    ) -> Result<T, String> {
        let mut delay = FIRST_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=ATTEST_ATTEMPTS {
            let r = {
                let mut c = self
                    .client
                    .lock()
                    .map_err(|_| "KBS client lock poisoned".to_string())?;
                let r = f(&mut c);
                if r.is_ok() {
                    self.answer_gpus(&mut c);
                } else if let Some(g) = self.gpus.get() {
                    if g.awaiting_answer() {
                        g.revoke("the attestation carrying the GPU evidence failed");
                    }
                }
                r
            };
            match r {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) && attempt < ATTEST_ATTEMPTS => {
                    tracing::warn!(attempt, error = %e, "{what} failed; retrying in {} ms", delay.as_millis());
                    last = e.to_string();
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => {
                    last = e.to_string();
                    if retryable(&e) {
                        return Err(format!(
                            "{what} failed after {ATTEST_ATTEMPTS} attempts: {last}"
                        ));
                    }
                    return Err(format!("{what}: {last}"));
                }
            }
        }
        Err(format!(
            "{what} failed after {ATTEST_ATTEMPTS} attempts: {last}"
        ))
    }

    /// Attest (RCAR) and cache the token.
    pub fn attest(&self) -> Result<TokenInfo, String> {
        let t = self.with_retries(
            &format!("attestation to the KBS at {}", self.target.url),
            |c| c.attest(),
        )?;
        let ear_status = veil_kbs_client::token_claims(&t.token)
            .ok()
            .and_then(|c| find_status(&c))
            .unwrap_or_default();
        Ok(TokenInfo {
            exp: t.exp,
            ear_status,
        })
    }

    /// The current token (attesting if needed).
    pub fn token(&self) -> Result<String, String> {
        self.with_retries("getting a KBS token", |c| c.token())
            .map(|t| t.token)
    }

    /// Fetch and decrypt a resource (re-attesting if the KBS asks).
    pub fn get_resource(&self, path: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, String> {
        self.with_retries(&format!("fetching kbs:///{path}"), |c| c.get_resource(path))
    }
}

fn find_status(claims: &serde_json::Value) -> Option<String> {
    claims
        .get("submods")
        .and_then(|s| s.as_object())
        .and_then(|m| {
            m.values().find_map(|v| {
                v.get("ear.status")
                    .and_then(|s| s.as_str())
                    .map(str::to_string)
            })
        })
        .or_else(|| {
            claims
                .get("ear.status")
                .and_then(|s| s.as_str())
                .map(str::to_string)
        })
}

/// Plain HTTP is allowed only to a loopback KBS (development).
pub fn is_loopback_http(url: &str) -> bool {
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let host = rest.split(['/', '?']).next().unwrap_or("");
    let host = host.rsplit_once(':').map(|(h, _)| h).unwrap_or(host);
    host == "localhost" || host == "[::1]" || host.starts_with("127.")
}

/// Image layer keys from the KBS.
pub struct KbsKeks(pub Arc<Kbs>);

impl KekSource for KbsKeks {
    fn kek(&self, kid: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, CryptError> {
        let path = ResourcePath::parse(&kid.path()).map_err(|e| CryptError::Key(e.to_string()))?;
        self.0.get_resource(&path).map_err(CryptError::NoKey)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_policy::InitData;

    #[test]
    fn image_trust_comes_from_init_data_only() {
        assert_eq!(image_trust_of(&init(None, None)).unwrap(), None);
        assert_eq!(
            image_trust_of(&init(None, Some("credentials = []\n"))).unwrap(),
            None
        );
        assert_eq!(
            image_trust_of(&init(
                None,
                Some(
                    "[image]\nimage_security_policy_uri = \"kbs:///default/security-policy/prod\"\n"
                )
            ))
            .unwrap(),
            Some(ImageTrust::Kbs(
                ResourcePath::parse("default/security-policy/prod").unwrap()
            ))
        );
        assert_eq!(
            image_trust_of(&init(
                None,
                Some("[image]\nimage_security_policy = '{\"default\":[{\"type\":\"reject\"}]}'\n")
            ))
            .unwrap(),
            Some(ImageTrust::Inline(
                "{\"default\":[{\"type\":\"reject\"}]}".into()
            ))
        );
        let e = image_trust_of(&init(
            None,
            Some("[image]\nimage_security_policy_uri = \"file:///etc/policy.json\"\n"),
        ))
        .unwrap_err();
        assert!(e.contains("must be kbs:///"), "{e}");
        let e = image_trust_of(&init(
            None,
            Some("[image]\nimage_security_policy_uri = \"kbs:///a/../b\"\n"),
        ))
        .unwrap_err();
        assert!(e.contains("image_security_policy_uri"), "{e}");
    }

    fn init(aa: Option<&str>, cdh: Option<&str>) -> ParsedInitData {
        let mut d = InitData::new(veil_policy::HashAlgorithm::Sha384);
        if let Some(a) = aa {
            d.data.insert(AA_KEY.into(), a.into());
        }
        if let Some(c) = cdh {
            d.data.insert(CDH_KEY.into(), c.into());
        }
        ParsedInitData::parse(d.to_toml().unwrap().as_bytes()).unwrap()
    }

    #[test]
    fn reads_kbs_and_credentials_from_init_data() {
        assert!(target_of(&init(None, None)).unwrap().is_none());
        let (t, c) = target_of(&init(
            Some("[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n"),
            Some("[[credentials]]\npath = \"/run/veil/secrets/db\"\nresource_uri = \"kbs:///default/secret/db\"\n"),
        ))
        .unwrap()
        .unwrap();
        assert_eq!(t.url, "http://127.0.0.1:8080");
        assert_eq!(c[0].resource_uri, "kbs:///default/secret/db");
        let e = target_of(&init(
            Some("[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n"),
            Some("[[credentials]]\npath = \"/etc/passwd\"\nresource_uri = \"kbs:///default/secret/db\"\n"),
        ))
        .unwrap_err();
        assert!(e.contains("/run/veil/secrets/NAME"), "{e}");
    }

    #[test]
    fn secret_names_and_loopback() {
        assert_eq!(secret_name("/run/veil/secrets/db-pass").unwrap(), "db-pass");
        assert!(secret_name("/run/veil/secrets/../x").is_err());
        assert!(secret_name("/run/veil/secrets/a/b").is_err());
        assert!(is_loopback_http("http://127.0.0.1:9/x"));
        assert!(is_loopback_http("http://localhost:80"));
        assert!(!is_loopback_http("http://10.0.0.1:80"));
        assert!(!is_loopback_http("https://127.0.0.1"));
    }
}
