//! Client side of the Trustee KBS protocol v0.4.0 (RCAR), as used by the
//! in-guest agent: attest with TEE evidence bound to a fresh nonce and an
//! ephemeral key, cache the EAR token, fetch resources and decrypt their JWE.
//! With the `admin` feature, also the owner's admin client.
//!
//! This crate is in the guest's trusted computing base: it has no async
//! runtime, no server code and a blocking rustls HTTP client (`ureq`).
//! Not for: producing evidence (the caller passes an [`EvidenceProvider`]),
//! verifying evidence or tokens (that is the key broker's job).

#[cfg(feature = "admin")]
pub mod admin;
pub mod binding;
pub mod client;
pub mod error;
pub mod http;
pub mod jwe;
pub mod protocol;

pub use client::{CachedToken, EvidenceProvider, KbsClient, token_claims};
pub use error::{ClientError, Result};
pub use http::ClientConfig;
pub use jwe::{KeyType, TeeKeyPair};
pub use protocol::ResourcePath;
