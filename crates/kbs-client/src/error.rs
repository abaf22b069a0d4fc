//! Client errors: transport, server refusals (with the server's RFC 7807
//! detail), malformed responses, evidence and decryption failures.

use crate::jwe::JweError;
use crate::protocol::InvalidResourcePath;

/// Why a KBS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client was configured wrongly (bad URL, bad CA file, …).
    #[error("client configuration: {0}")]
    Config(String),
    /// The request did not complete (connection, TLS, timeout).
    #[error("cannot reach the KBS at {url}: {reason}")]
    Transport {
        /// Full request URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The KBS refused the request.
    #[error("KBS refused {what} with HTTP {status} ({error_type}): {detail}")]
    Refused {
        /// Which call (`auth`, `attest`, `resource default/key/1`, …).
        what: String,
        /// HTTP status.
        status: u16,
        /// Last segment of the RFC 7807 `type` (`AttestationError`, `PolicyDeny`, …).
        error_type: String,
        /// The server's explanation.
        detail: String,
    },
    /// The KBS answered something this client cannot use.
    #[error("unexpected KBS response to {what}: {reason}")]
    Protocol {
        /// Which call.
        what: String,
        /// What is wrong with the response.
        reason: String,
    },
    /// The evidence provider failed.
    #[error("producing evidence: {0}")]
    Evidence(String),
    /// The resource JWE could not be opened.
    #[error(transparent)]
    Jwe(#[from] JweError),
    /// A resource path was invalid.
    #[error(transparent)]
    Path(#[from] InvalidResourcePath),
}

impl ClientError {
    /// True when another replica may succeed where this one failed: the
    /// KBS could not be reached or answered 5xx (such as 503 while its
    /// store is unavailable). Refusals (4xx) are answers and are not.
    pub fn is_failover(&self) -> bool {
        matches!(self, ClientError::Transport { .. }) || self.status().is_some_and(|s| s >= 500)
    }

    /// HTTP status of a refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Refused { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Shorthand result.
pub type Result<T> = std::result::Result<T, ClientError>;
