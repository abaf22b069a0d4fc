//! The veil agent: the part of veil that runs inside the TEE.
//!
//! It starts from the init-data the host hands over, refuses to serve
//! unless that init-data's digest equals what the platform reports
//! ([`boot`]), attests to the KBS named in it and places the secrets it
//! names on a tmpfs ([`kbs`]), then serves the agent API ([`server`]):
//! every request is decided by the policy from init-data before anything
//! happens. Images are pulled inside the agent, checked against the policy
//! digest, decrypted and unpacked ([`pull`]); containers run with their own
//! namespaces, capabilities and seccomp filter ([`container`], [`init`]);
//! workloads reach their secrets and fresh evidence through a small local
//! HTTP API ([`local_api`]).
//!
//! Encrypted volumes are opened in the guest by [`storage`] (LUKS2 headers
//! read by [`luks2`]).
//!
//! Without the `server` feature only [`proto`] (the wire protocol) and
//! [`luks2`] are built, for the host side.

pub mod luks2;
pub mod proto;

#[cfg(feature = "fds")]
pub mod fds;

#[cfg(feature = "server")]
pub mod boot;
#[cfg(feature = "server")]
pub mod container;
#[cfg(feature = "server")]
pub mod guest;
#[cfg(feature = "server")]
pub mod init;
#[cfg(feature = "server")]
pub mod kbs;
#[cfg(feature = "server")]
pub mod local_api;
#[cfg(feature = "server")]
pub mod net;
#[cfg(feature = "server")]
pub mod pull;
#[cfg(feature = "server")]
pub mod seccomp;
#[cfg(feature = "server")]
pub mod server;
#[cfg(feature = "server")]
pub mod storage;
#[cfg(feature = "server")]
pub mod streams;
#[cfg(feature = "server")]
pub mod tty;
#[cfg(feature = "server")]
pub mod vm;
#[cfg(feature = "server")]
pub mod volumes;
