//! A small blocking HTTP transport over `ureq` (rustls with ring): the KBS
//! base URL (or several: replicas, see [`kbs_urls`]), trusted roots,
//! timeouts and bounded response reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::error::{ClientError, Result};
use crate::protocol::{ERROR_TYPE_PREFIX, ErrorInformation, MAX_RESPONSE_BYTES};

/// How to reach the KBS.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://kbs.example:8080` (no trailing `/kbs/v0`),
    /// or several separated by commas (replicas of one KBS, tried in turn
    /// when one cannot be reached or answers 5xx).
    pub url: String,
    /// PEM bundle of CA certificates to trust instead of the Web PKI roots
    /// (a self-signed KBS certificate goes here).
    pub ca_pem: Option<Vec<u8>>,
    /// Allow `http://` URLs. Only for loopback development servers.
    pub allow_http: bool,
    /// Whole-request timeout.
    pub timeout: Duration,
}

impl ClientConfig {
    /// Defaults for a URL: Web PKI roots, HTTPS only, 30 s timeout.
    pub fn new(url: impl Into<String>) -> Self {
        ClientConfig {
            url: url.into(),
            ca_pem: None,
            allow_http: false,
            timeout: Duration::from_secs(30),
        }
    }
}

/// A response with the parts the protocol needs.
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// `Set-Cookie` header values.
    pub set_cookies: Vec<String>,
    /// Body bytes (bounded by [`MAX_RESPONSE_BYTES`]).
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// Turn a non-2xx response into [`ClientError::Refused`].
    pub fn ok_or_refused(self, what: &str) -> Result<HttpResponse> {
        if (200..300).contains(&self.status) {
            return Ok(self);
        }
        let (error_type, detail) = match serde_json::from_slice::<ErrorInformation>(&self.body) {
            Ok(e) => (
                e.error_type
                    .strip_prefix(ERROR_TYPE_PREFIX)
                    .unwrap_or(&e.error_type)
                    .to_string(),
                e.detail,
            ),
            Err(_) => (
                "unknown".to_string(),
                String::from_utf8_lossy(&self.body)
                    .chars()
                    .take(500)
                    .collect(),
            ),
        };
        Err(ClientError::Refused {
            what: what.to_string(),
            status: self.status,
            error_type,
            detail,
        })
    }
}

/// Most KBS URLs in one list.
pub const MAX_URLS: usize = 16;

/// The base URLs of a KBS URL list: comma-separated, blanks around each
/// and trailing `/` dropped, empty entries ignored.
pub fn kbs_urls(list: &str) -> Vec<String> {
    list.split(',')
        .map(|u| u.trim().trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .collect()
}

/// The transport: one agent, the KBS base URLs and which one is in use.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    bases: Arc<Vec<String>>,
    current: Arc<AtomicUsize>,
}

impl Http {
    /// Build from a configuration.
    pub fn new(cfg: &ClientConfig) -> Result<Self> {
        let bases = kbs_urls(&cfg.url);
        if bases.is_empty() {
            return Err(ClientError::Config(format!(
                "KBS URL {:?} names no URL; expected https://HOST[:PORT][,https://HOST2[:PORT]…]",
                cfg.url
            )));
        }
        if bases.len() > MAX_URLS {
            return Err(ClientError::Config(format!(
                "{} KBS URLs given; at most {MAX_URLS}",
                bases.len()
            )));
        }
        for base in &bases {
            let lower = base.to_ascii_lowercase();
            if lower.starts_with("http://") {
                if !cfg.allow_http {
                    return Err(ClientError::Config(format!(
                        "{base} is plain HTTP: tokens and cookies would travel in clear; use https:// (or allow plain HTTP for a loopback development server)"
                    )));
                }
            } else if !lower.starts_with("https://") {
                return Err(ClientError::Config(format!(
                    "KBS URL {base:?} must start with https://"
                )));
            }
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(pem) = &cfg.ca_pem {
            let mut certs = Vec::new();
            for item in ureq::tls::parse_pem(pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
                    Ok(_) => {}
                    Err(e) => return Err(ClientError::Config(format!("CA PEM: {e}"))),
                }
            }
            if certs.is_empty() {
                return Err(ClientError::Config("CA PEM holds no certificate".into()));
            }
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(cfg.timeout))
            .tls_config(tls.build())
            .build();
        Ok(Http {
            agent: config.into(),
            bases: Arc::new(bases),
            current: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The base URL in use.
    pub fn base(&self) -> &str {
        &self.bases[self.current.load(Ordering::Relaxed) % self.bases.len()]
    }

    /// Every base URL, in order.
    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// Move on to the next base URL (after the one in use failed).
    pub fn fail_over(&self) {
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Send a request; `path` starts with `/`.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<HttpResponse> {
        let url = format!("{}{}", self.base(), path);
        let transport = |e: ureq::Error| ClientError::Transport {
            url: url.clone(),
            reason: e.to_string(),
        };
        let mut builder = ureq::http::Request::builder().method(method).uri(&url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        if let Some((ct, _)) = body {
            builder = builder.header("content-type", ct);
        }
        let req = builder
            .body(body.map(|(_, b)| b.to_vec()).unwrap_or_default())
            .map_err(|e| ClientError::Config(format!("building request to {url}: {e}")))?;
        let mut resp = self.agent.run(req).map_err(transport)?;
        let status = resp.status().as_u16();
        let set_cookies = resp
            .headers()
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(str::to_string))
            .collect();
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_RESPONSE_BYTES)
            .read_to_vec()
            .map_err(transport)?;
        Ok(HttpResponse {
            status,
            set_cookies,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_list_is_split_trimmed_and_each_url_checked() {
        assert_eq!(
            kbs_urls(" https://a:1/ , https://b:2,,"),
            ["https://a:1", "https://b:2"]
        );
        let h = Http::new(&ClientConfig::new("https://a:1,https://b:2")).unwrap();
        assert_eq!(h.base(), "https://a:1");
        h.fail_over();
        assert_eq!(h.base(), "https://b:2");
        h.fail_over();
        assert_eq!(h.base(), "https://a:1", "wraps around");
        // Every URL of the list must pass the scheme checks.
        let e = Http::new(&ClientConfig::new("https://a:1,http://10.0.0.1:2"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("http://10.0.0.1:2 is plain HTTP"), "{e}");
        let e = Http::new(&ClientConfig::new(" , "))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("names no URL"), "{e}");
        let many = vec!["https://a"; MAX_URLS + 1].join(",");
        assert!(Http::new(&ClientConfig::new(many)).is_err());
    }

    #[test]
    fn failover_only_on_transport_errors_and_5xx() {
        let refused = |status| ClientError::Refused {
            what: "auth".into(),
            status,
            error_type: "x".into(),
            detail: "y".into(),
        };
        assert!(refused(503).is_failover());
        assert!(refused(500).is_failover());
        assert!(!refused(401).is_failover(), "a refusal is an answer");
        assert!(
            ClientError::Transport {
                url: "u".into(),
                reason: "r".into()
            }
            .is_failover()
        );
    }
}
