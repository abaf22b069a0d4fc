//! `containerd-shim-veil-v2`: containerd's shim v2 for veil sandboxes, so
//! that Kubernetes runs pods in veil through a RuntimeClass.
//!
//! This crate is the containerd glue only: the shim process protocol
//! ([`bootstrap`]: `start`, serve, `delete`), the ttrpc Task service
//! ([`service`]) and the events it publishes, and reading what containerd
//! hands over (the bundle's OCI spec, [`spec`]; CRI/CoCo/Kata annotations,
//! [`annotations`]; images in containerd's content store, [`content`]).
//! Sandboxes themselves (policy, attestation, images, containers) are
//! veil-runtime's, behind [`backend`]. Not for: deciding anything the
//! guest must check; the host, this shim included, is not trusted.

pub mod annotations;
pub mod args;
pub mod backend;
pub mod bootstrap;
pub mod config;
pub mod content;
pub mod events;
pub mod metrics;
pub mod runtime;
pub mod service;
pub mod spec;
