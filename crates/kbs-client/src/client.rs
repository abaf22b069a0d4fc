//! The RCAR client: `/auth` → `/attest` → token, cached until shortly
//! before it expires; resource GET with the token as a Bearer ("passport"),
//! re-attesting once on a 401; JWE decryption with the ephemeral key.
//!
//! Given several KBS URLs (replicas on one shared store), an operation that
//! fails with a transport error or a 5xx answer is run again from its start
//! on the next URL: a handshake restarts with `/auth` there (a challenge
//! belongs to the replica's session, and restarting is always correct), a
//! resource GET is sent there with the cached token (tokens of replicas
//! verify on each other; a 401 re-attests once). Each URL is tried once per
//! operation.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use zeroize::Zeroizing;

use crate::binding;
use crate::error::{ClientError, Result};
use crate::http::{ClientConfig, Http};
use crate::jwe::TeeKeyPair;
use crate::protocol::{
    AttestResponse, Attestation, AuthRequest, Challenge, CompositeEvidence, FlattenedJwe, InitData,
    PROTOCOL_VERSION, ResourcePath, RuntimeData, SESSION_COOKIE,
};

/// Re-attest when the cached token expires within this many seconds.
pub const TOKEN_REFRESH_MARGIN_SECS: u64 = 30;

/// Produces TEE evidence binding a given REPORT_DATA. Implemented by the
/// guest's TEE layer (hardware or sim).
pub trait EvidenceProvider {
    /// The TEE name sent in `/auth` (`snp`, `tdx`, `sim`, …).
    fn tee(&self) -> &str;
    /// The `primary_evidence` JSON for this report data.
    fn evidence(&self, report_data: &[u8; 64]) -> std::result::Result<serde_json::Value, String>;
    /// The init-data document to send along (its digest is in the evidence).
    fn init_data(&self) -> Option<InitData> {
        None
    }
    /// The `additional_evidence` string (device evidence such as GPUs, a
    /// JSON map `{"nvidia": …}`), produced first, for the device nonce:
    /// the device runtime-data digest `SHA-384(JCS({nonce, tee-pubkey}))`.
    /// Default: none (`""`).
    fn additional_evidence(
        &self,
        _device_runtime_digest: &[u8; binding::DIGEST_LEN],
    ) -> std::result::Result<String, String> {
        Ok(String::new())
    }
}

/// A token and its expiry.
#[derive(Clone)]
pub struct CachedToken {
    /// Compact JWS.
    pub token: String,
    /// `exp`, Unix seconds.
    pub exp: u64,
}

/// Read the unverified `exp` claim of a JWT (the client trusts the KBS it
/// talked to over TLS; the server verifies its tokens on every use).
pub fn token_claims(token: &str) -> std::result::Result<serde_json::Value, String> {
    let mut parts = token.split('.');
    let (Some(_), Some(payload), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("token is not a compact JWS (three dot-separated parts)".into());
    };
    if payload.len() > 256 * 1024 {
        return Err("token payload larger than 256 KiB".into());
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|e| format!("token payload is not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("token payload is not JSON: {e}"))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A KBS client for one TEE identity (one ephemeral key).
pub struct KbsClient<E: EvidenceProvider> {
    http: Http,
    provider: E,
    key: TeeKeyPair,
    token: Option<CachedToken>,
    cookie: Option<String>,
}

fn session_cookie(set_cookies: &[String]) -> Option<String> {
    set_cookies.iter().find_map(|c| {
        let first = c.split(';').next()?.trim();
        let (name, value) = first.split_once('=')?;
        (name.trim() == SESSION_COOKIE).then(|| value.trim().to_string())
    })
}

impl<E: EvidenceProvider> KbsClient<E> {
    /// A client that will attest with `provider` and receive secrets for `key`.
    pub fn new(config: &ClientConfig, provider: E, key: TeeKeyPair) -> Result<Self> {
        Ok(KbsClient {
            http: Http::new(config)?,
            provider,
            key,
            token: None,
            cookie: None,
        })
    }

    /// The ephemeral key resources are encrypted to.
    pub fn key(&self) -> &TeeKeyPair {
        &self.key
    }

    /// The session cookie value of the last handshake.
    pub fn session_cookie(&self) -> Option<&str> {
        self.cookie.as_deref()
    }

    /// The KBS base URL in use.
    pub fn url(&self) -> &str {
        self.http.base()
    }

    /// Run `op`, and again on the next KBS URL after a failure another
    /// replica may not have ([`ClientError::is_failover`]), each URL once.
    fn with_failover<T>(&mut self, mut op: impl FnMut(&mut Self) -> Result<T>) -> Result<T> {
        let n = self.http.bases().len();
        let mut failures = Vec::new();
        loop {
            match op(self) {
                Err(e) if e.is_failover() && n > 1 => {
                    failures.push(format!("{}: {e}", self.http.base()));
                    self.http.fail_over();
                    if failures.len() >= n {
                        return Err(ClientError::Transport {
                            url: self.http.bases().join(", "),
                            reason: format!("every KBS replica failed: {}", failures.join("; ")),
                        });
                    }
                }
                r => return r,
            }
        }
    }

    /// Run the RCAR handshake and cache the token (on the next KBS URL if
    /// one fails, see the module docs).
    pub fn attest(&mut self) -> Result<CachedToken> {
        self.with_failover(Self::attest_once)
    }

    fn attest_once(&mut self) -> Result<CachedToken> {
        let req = AuthRequest {
            version: PROTOCOL_VERSION.into(),
            tee: self.provider.tee().to_string(),
            extra_params: serde_json::json!({"supported-hash-algorithms": ["sha384"]}),
        };
        let body = serde_json::to_vec(&req).map_err(|e| ClientError::Config(e.to_string()))?;
        let resp = self
            .http
            .send(
                "POST",
                "/kbs/v0/auth",
                &[],
                Some(("application/json", &body)),
            )?
            .ok_or_refused("auth")?;
        let cookie = session_cookie(&resp.set_cookies).ok_or_else(|| ClientError::Protocol {
            what: "auth".into(),
            reason: format!("no {SESSION_COOKIE} cookie"),
        })?;
        let challenge: Challenge =
            serde_json::from_slice(&resp.body).map_err(|e| ClientError::Protocol {
                what: "auth".into(),
                reason: format!("challenge JSON: {e}"),
            })?;
        let tee_pubkey = self.key.public_jwk();
        let device_digest = binding::digest_of(&binding::runtime_data_object(
            &challenge.nonce,
            &tee_pubkey,
            None,
        ));
        let additional = self
            .provider
            .additional_evidence(&device_digest)
            .map_err(ClientError::Evidence)?;
        let report_data = binding::report_data(&challenge.nonce, &tee_pubkey, &additional);
        let evidence = self
            .provider
            .evidence(&report_data)
            .map_err(ClientError::Evidence)?;
        let attestation = Attestation {
            init_data: self.provider.init_data(),
            runtime_data: RuntimeData {
                nonce: challenge.nonce,
                tee_pubkey,
            },
            tee_evidence: CompositeEvidence {
                primary_evidence: evidence,
                additional_evidence: additional,
            },
        };
        let body =
            serde_json::to_vec(&attestation).map_err(|e| ClientError::Config(e.to_string()))?;
        let cookie_header = format!("{SESSION_COOKIE}={cookie}");
        let resp = self
            .http
            .send(
                "POST",
                "/kbs/v0/attest",
                &[("cookie", &cookie_header)],
                Some(("application/json", &body)),
            )?
            .ok_or_refused("attest")?;
        let AttestResponse { token } =
            serde_json::from_slice(&resp.body).map_err(|e| ClientError::Protocol {
                what: "attest".into(),
                reason: format!("response JSON: {e}"),
            })?;
        let claims = token_claims(&token).map_err(|reason| ClientError::Protocol {
            what: "attest".into(),
            reason,
        })?;
        let exp =
            claims
                .get("exp")
                .and_then(|v| v.as_u64())
                .ok_or_else(|| ClientError::Protocol {
                    what: "attest".into(),
                    reason: "token has no numeric exp claim".into(),
                })?;
        let cached = CachedToken { token, exp };
        self.token = Some(cached.clone());
        self.cookie = Some(cookie);
        Ok(cached)
    }

    /// A valid token: the cached one unless it is about to expire.
    pub fn token(&mut self) -> Result<CachedToken> {
        self.with_failover(Self::token_once)
    }

    fn token_once(&mut self) -> Result<CachedToken> {
        match &self.token {
            Some(t) if t.exp > now() + TOKEN_REFRESH_MARGIN_SECS => Ok(t.clone()),
            _ => self.attest_once(),
        }
    }

    /// Fetch and decrypt a resource. Re-attests once if the KBS answers 401
    /// (expired or unknown token) and retries; moves on to the next KBS URL
    /// as [`KbsClient::attest`] does.
    pub fn get_resource(&mut self, path: &ResourcePath) -> Result<Zeroizing<Vec<u8>>> {
        self.with_failover(|c| c.get_resource_once(path))
    }

    fn get_resource_once(&mut self, path: &ResourcePath) -> Result<Zeroizing<Vec<u8>>> {
        let what = format!("resource {path}");
        let mut attempt = 0;
        loop {
            attempt += 1;
            let token = self.token_once()?;
            let auth = format!("Bearer {}", token.token);
            let resp = self.http.send(
                "GET",
                &format!("/kbs/v0/resource/{path}"),
                &[("authorization", &auth)],
                None,
            )?;
            if resp.status == 401 && attempt == 1 {
                // Possibly a token the server no longer accepts (restart with
                // a new signing key, expiry): attest afresh once.
                self.token = None;
                continue;
            }
            let resp = resp.ok_or_refused(&what)?;
            let jwe: FlattenedJwe =
                serde_json::from_slice(&resp.body).map_err(|e| ClientError::Protocol {
                    what: what.clone(),
                    reason: format!("JWE JSON: {e}"),
                })?;
            return Ok(self.key.decrypt(&jwe)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookie_parsing() {
        let c = vec![
            "other=1".to_string(),
            "kbs-session-id=0123456789abcdef0123456789abcdef; Expires=Wed, 21 Oct 2015 07:28:00 GMT".to_string(),
        ];
        assert_eq!(
            session_cookie(&c).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(session_cookie(&["x=y".to_string()]), None);
    }

    #[test]
    fn token_claims_refuses_garbage() {
        assert!(token_claims("a.b").is_err());
        assert!(token_claims("a.!!!.c").is_err());
        assert!(token_claims("a.b.c.d").is_err());
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":5}"#);
        assert_eq!(token_claims(&format!("h.{p}.s")).unwrap()["exp"], 5);
    }
}
