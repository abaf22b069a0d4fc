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
//! HTTP API ([`local_api`]). Encrypted volumes are opened in the guest by
//! [`storage`] (LUKS2 headers read by [`veil_agent_api::luks2`]).
//!
//! The wire protocol both sides speak is `veil-agent-api` (requests,
//! [`veil_agent_api::proto`] for the hello and responses); descriptor
//! hygiene before exec is `veil-fds`. The host links those, never this crate.

pub mod bench_volume;
pub mod boot;
pub mod cgroup;
pub mod container;
pub mod gpu;
pub mod guest;
pub mod init;
pub mod kbs;
pub mod local_api;
pub mod net;
pub mod pull;
pub mod registry;
pub mod scratch;
pub mod seccomp;
pub mod server;
pub mod storage;
pub mod streams;
pub mod tty;
pub mod vm;
pub mod volumes;
