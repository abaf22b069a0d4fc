//! Errors of the KBS and their HTTP form: RFC 7807-style bodies
//! `{"type": ".../errors/<Variant>", "detail": "..."}` as Trustee sends them.
//! 404 only for an invalid path or unknown plugin; 413 for an oversized
//! body; 401 for everything else (clients re-attest on 401).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use veil_kbs_client::protocol::ERROR_TYPE_PREFIX;

/// A refused or failed request. Every variant's text names the check, and
/// where there is one, the expected and the actual value.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The URL path does not name a valid resource (404).
    #[error("{0}")]
    InvalidRequestPath(String),
    /// The first path segment is not a known plugin (404).
    #[error(
        "plugin {0:?} not found; known: resource, attestation-policy, resource-policy, reference-value, audit, jwks"
    )]
    PluginNotFound(String),
    /// RCAR handshake refusal (bad version, TEE, cookie, nonce, evidence, binding…).
    #[error("Attestation error: {0}")]
    AttestationError(String),
    /// Admin call without valid admin credentials.
    #[error("Admin auth error: {0}")]
    AdminAuthAccess(String),
    /// The resource policy denied the release.
    #[error("Policy deny: {0}")]
    PolicyDeny(String),
    /// No token (cookie or Bearer) on a resource request.
    #[error("Token not found: {0}")]
    TokenNotFound(String),
    /// The token did not verify (signature, expiry, issuer).
    #[error("Token verification failed: {0}")]
    TokenVerifierError(String),
    /// The request body is not the JSON it should be.
    #[error("Serde error: {0}")]
    SerdeError(String),
    /// A policy could not be parsed or evaluated.
    #[error("Policy error: {0}")]
    PolicyEngineError(String),
    /// A resource is missing or storage failed (401 like Trustee's PluginInternalError).
    #[error("{0}")]
    PluginInternalError(String),
    /// Reference value provisioning failed.
    #[error("Reference value error: {0}")]
    RvpsError(String),
    /// The request body exceeds the limit (413).
    #[error("request body too large: {0}")]
    PayloadTooLarge(String),
    /// The JWE could not be built for the token's key.
    #[error("JWE error: {0}")]
    JweError(String),
    /// The store (a shared database) cannot be reached right now (503,
    /// with `Retry-After`): retry, or ask another replica.
    #[error("{0}")]
    StoreUnavailable(String),
}

impl KbsError {
    /// A store failure: 503 when the store is unreachable, else an
    /// internal error.
    pub fn store(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Unavailable(m) => {
                KbsError::StoreUnavailable(format!("store unavailable: {m}"))
            }
            other => KbsError::PluginInternalError(other.to_string()),
        }
    }
}

impl KbsError {
    /// The RFC 7807 `type` suffix.
    pub fn variant(&self) -> &'static str {
        match self {
            KbsError::InvalidRequestPath(_) => "InvalidRequestPath",
            KbsError::PluginNotFound(_) => "PluginNotFound",
            KbsError::AttestationError(_) => "AttestationError",
            KbsError::AdminAuthAccess(_) => "AdminAuthAccess",
            KbsError::PolicyDeny(_) => "PolicyDeny",
            KbsError::TokenNotFound(_) => "TokenNotFound",
            KbsError::TokenVerifierError(_) => "TokenVerifierError",
            KbsError::SerdeError(_) => "SerdeError",
            KbsError::PolicyEngineError(_) => "PolicyEngineError",
            KbsError::PluginInternalError(_) => "PluginInternalError",
            KbsError::RvpsError(_) => "RvpsError",
            KbsError::PayloadTooLarge(_) => "PayloadTooLarge",
            KbsError::JweError(_) => "JweError",
            KbsError::StoreUnavailable(_) => "StoreUnavailable",
        }
    }

    /// HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            KbsError::InvalidRequestPath(_) | KbsError::PluginNotFound(_) => StatusCode::NOT_FOUND,
            KbsError::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            KbsError::StoreUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::UNAUTHORIZED,
        }
    }
}

impl IntoResponse for KbsError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "type": format!("{ERROR_TYPE_PREFIX}{}", self.variant()),
            "detail": self.to_string(),
        });
        let mut resp = (self.status(), body.to_string()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if matches!(self, KbsError::StoreUnavailable(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Shorthand result.
pub type Result<T> = std::result::Result<T, KbsError>;
