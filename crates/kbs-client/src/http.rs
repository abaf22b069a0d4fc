//! A small blocking HTTP transport over `ureq` (rustls with ring): the KBS
//! base URL, trusted roots, timeouts and bounded response reads.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{ClientError, Result};
use crate::protocol::{ERROR_TYPE_PREFIX, ErrorInformation, MAX_RESPONSE_BYTES};

/// How to reach the KBS.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `https://kbs.example:8080` (no trailing `/kbs/v0`).
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

/// The transport.
#[derive(Clone)]
pub struct Http {
    agent: ureq::Agent,
    base: String,
}

impl Http {
    /// Build from a configuration.
    pub fn new(cfg: &ClientConfig) -> Result<Self> {
        let base = cfg.url.trim_end_matches('/').to_string();
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
            base,
        })
    }

    /// Base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Send a request; `path` starts with `/`.
    pub fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Result<HttpResponse> {
        let url = format!("{}{}", self.base, path);
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
