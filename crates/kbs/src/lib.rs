//! veil's key broker and attestation service, wire-compatible with the
//! Trustee KBS protocol v0.4.0 (RCAR): sessions and nonces, evidence
//! verification with `veil-attest`, runtime-data and init-data binding,
//! appraisal into an EAR token (ES256), Rego resource policies, resources
//! released as JWE to the TEE's key, secrets sealed at rest under a KEK,
//! an EdDSA-authenticated admin API, audit log and metrics.
//!
//! Not for: the guest side (that is `veil-kbs-client`, which this crate uses
//! for the shared wire formats), producing evidence (`veil-tee`).

pub mod admin;
pub mod admin_auth;
pub mod api;
pub mod appraisal;
pub mod attestation;
pub mod audit;
pub mod bench;
pub mod connections;
pub mod datadir;
pub mod error;
pub mod gpu;
pub mod json;
pub mod jwe;
pub mod loadgen;
pub mod metrics;
pub mod pin;
pub mod policy;
pub mod rcar;
pub mod release;
pub mod secrets;
pub mod serve;
pub mod session;
pub mod simguest;
pub mod source;
pub mod state;
pub mod store;
pub mod text;
pub mod tlsgen;
pub mod token;
pub mod verify;

pub use error::KbsError;
pub use secrets::Kek;
pub use serve::{RunningServer, StartError, spawn};
pub use state::{ServerConfig, TlsFiles};
