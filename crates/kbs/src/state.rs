//! The server's shared state and configuration.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::metrics::Metrics;
use crate::policy::RegoPolicy;
use crate::secrets::Kek;
use crate::session::Sessions;
use crate::store::Store;
use crate::text::escape_controls;
use crate::token::TokenSigner;

/// Where the server's TLS certificate and key are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// Server configuration.
pub struct ServerConfig {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory (SQLite database, the lock that `rotate-kek` takes).
    pub data_dir: PathBuf,
    /// A shared store for replicas (`postgres://…`); `None` = SQLite in
    /// the data directory.
    pub store_url: Option<String>,
    /// CA certificate(s) (PEM) that verify the PostgreSQL server's
    /// certificate: TLS to the store, required and verified.
    pub store_ca: Option<PathBuf>,
    /// TLS files; `None` = plain HTTP, allowed on loopback only.
    pub tls: Option<TlsFiles>,
    /// The key-encryption key for secrets at rest.
    pub kek: Kek,
    /// Ed25519 admin public keys.
    pub admin_keys: Vec<ed25519_dalek::VerifyingKey>,
    /// The `aud` admin tokens must carry (default `veil-kbs`): a token
    /// minted for another KBS is refused here.
    pub admin_audience: String,
    /// Longest admin token lifetime (`exp - iat`) accepted; default 10 min.
    pub admin_max_token_lifetime: Duration,
    /// Accept admin tokens without `jti` (reusable until they expire);
    /// off by default: every token is single-use.
    pub admin_allow_reusable_tokens: bool,
    /// Trusted sim root; sim evidence is refused without it.
    pub sim_root: Option<veil_attest::sim::SimRootKey>,
    /// Development mode: resource release to sim tokens.
    pub dev: bool,
    /// Accept CoCo `sample` evidence (no cryptography).
    pub insecure_allow_sample: bool,
    /// Dev mode only: do not compare GPU reports' nonces with the session's
    /// (recorded GPU evidence has a fixed nonce); the GPU evidence is then
    /// bound only through the CPU evidence's report data, and its token
    /// submodule says `nonce_bound: false`.
    pub dev_gpu_nonce_via_cpu_evidence: bool,
    /// An operator-filled cache of NVIDIA RIMs: each GPU's measurements are
    /// appraised against the driver and VBIOS RIMs selected from it
    /// (docs/gpu.md); read at each attestation.
    pub gpu_rim_dir: Option<PathBuf>,
    /// OCSP responses (DER files) about the GPU device chains and RIM
    /// signers, fetched by the operator; read at each attestation.
    pub gpu_ocsp_dir: Option<PathBuf>,
    /// VMPLs an SNP report may be requested from (default `[0]`, as the
    /// CLI's `veil attest verify`); `[0, 1, 2, 3]` accepts any.
    pub snp_allowed_vmpls: Vec<u32>,
    /// Session (cookie) lifetime.
    pub session_timeout: Duration,
    /// Token lifetime.
    pub token_ttl: Duration,
    /// Request body limit.
    pub max_body_bytes: usize,
    /// Maximum attested sessions (each cost an accepted attestation).
    pub max_sessions: usize,
    /// Time an un-attested session (after `/auth`) has to `/attest`.
    pub unattested_timeout: Duration,
    /// Un-attested sessions held at most; past it the oldest is evicted.
    pub max_unattested_sessions: usize,
    /// Un-attested sessions one source address (IPv4 address, IPv6 /64)
    /// holds at most; past it that source's oldest is evicted.
    pub unattested_sessions_per_source: usize,
    /// Audit rows older than this are deleted (hourly); zero keeps them.
    pub audit_retention: Duration,
    /// Refusals stored row by row per source and kind in each
    /// `audit_window`; the rest are counted into one summary row.
    pub audit_refusal_rows: u32,
    /// The refusal rate-limit window.
    pub audit_window: Duration,
    /// Maximum concurrent connections (all sources together).
    pub max_connections: usize,
    /// Maximum concurrent connections of one source address.
    pub max_connections_per_source: usize,
}

impl ServerConfig {
    /// Defaults for a data dir and KEK: 127.0.0.1:8080, TLS required (set
    /// `tls`), 5-minute sessions and tokens, 2 MiB bodies.
    pub fn new(data_dir: PathBuf, kek: Kek) -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir,
            store_url: None,
            store_ca: None,
            tls: None,
            kek,
            admin_keys: Vec::new(),
            admin_audience: veil_kbs_client::admin::DEFAULT_ADMIN_AUDIENCE.to_string(),
            admin_max_token_lifetime: Duration::from_secs(
                crate::admin_auth::DEFAULT_MAX_LIFETIME_SECS,
            ),
            admin_allow_reusable_tokens: false,
            sim_root: None,
            dev: false,
            insecure_allow_sample: false,
            dev_gpu_nonce_via_cpu_evidence: false,
            gpu_rim_dir: None,
            gpu_ocsp_dir: None,
            snp_allowed_vmpls: vec![0],
            session_timeout: Duration::from_secs(300),
            token_ttl: Duration::from_secs(300),
            max_body_bytes: 2 << 20,
            max_sessions: 100_000,
            unattested_timeout: Duration::from_secs(60),
            max_unattested_sessions: 100_000,
            unattested_sessions_per_source: 256,
            audit_retention: Duration::from_secs(90 * 24 * 3600),
            audit_refusal_rows: 10,
            audit_window: Duration::from_secs(60),
            max_connections: 1024,
            max_connections_per_source: 128,
        }
    }
}

impl ServerConfig {
    /// The audit log's limits.
    pub fn audit_limits(&self) -> crate::audit::AuditLimits {
        crate::audit::AuditLimits {
            refusal_rows: self.audit_refusal_rows,
            window: self.audit_window,
            retention: self.audit_retention,
            ..Default::default()
        }
    }

    /// The session table's limits.
    pub fn session_limits(&self) -> crate::session::SessionLimits {
        crate::session::SessionLimits {
            max_attested: self.max_sessions,
            max_unattested: self.max_unattested_sessions,
            unattested_per_source: self.unattested_sessions_per_source,
            unattested_timeout: self.unattested_timeout,
        }
    }
}

/// The attestation policy in force.
pub struct AttestationPolicy {
    /// `default` or `custom`.
    pub id: String,
    /// Compiled.
    pub policy: RegoPolicy,
}

/// Shared state of a running server.
pub struct AppState {
    /// Configuration.
    pub cfg: ServerConfig,
    /// Storage.
    pub store: Arc<dyn Store>,
    /// Token signer.
    pub signer: TokenSigner,
    /// Sessions.
    pub sessions: Sessions,
    /// Attestation policy.
    pub attestation_policy: RwLock<Arc<AttestationPolicy>>,
    /// Resource policies by scope.
    pub resource_policies: RwLock<Arc<BTreeMap<String, RegoPolicy>>>,
    /// Reference values (unexpired), by name.
    pub reference_values: RwLock<Arc<serde_json::Map<String, serde_json::Value>>>,
    /// Counters.
    pub metrics: Metrics,
    /// The audit log's writer and refusal rate limiter.
    pub audit_log: crate::audit::AuditLog,
    /// Open connections, per source.
    pub connections: Arc<crate::connections::Connections>,
    /// `jti`s of admin tokens already used.
    pub admin_jtis: crate::admin_auth::ReplayCache,
    /// Set by an embedded KBS that serves one workload only.
    pub release_pin: RwLock<Option<Arc<crate::pin::ReleasePin>>>,
    /// Held shared while the server lives: `rotate-kek` waits for no one.
    pub(crate) _data_dir_lock: crate::datadir::DataDirLock,
    /// On PostgreSQL: this replica's share of the KEK lock.
    pub(crate) _replica_lock: Option<crate::store::postgres::ReplicaLock>,
}

/// Unix seconds now.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn write<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

impl AppState {
    /// What admin tokens must satisfy, from the configuration.
    pub fn admin_token_rules(&self) -> crate::admin_auth::AdminTokenRules {
        crate::admin_auth::AdminTokenRules {
            audience: self.cfg.admin_audience.clone(),
            max_lifetime_secs: self.cfg.admin_max_token_lifetime.as_secs(),
            allow_reusable: self.cfg.admin_allow_reusable_tokens,
        }
    }

    /// Current attestation policy.
    pub fn attestation_policy(&self) -> Arc<AttestationPolicy> {
        read(&self.attestation_policy)
    }

    /// Current resource policies.
    pub fn resource_policies(&self) -> Arc<BTreeMap<String, RegoPolicy>> {
        read(&self.resource_policies)
    }

    /// The release pin, if this instance serves one workload only.
    pub fn release_pin(&self) -> Option<Arc<crate::pin::ReleasePin>> {
        read(&self.release_pin)
    }

    /// Pin (or unpin) releases to one workload.
    pub fn set_release_pin(&self, pin: Option<crate::pin::ReleasePin>) {
        write(&self.release_pin, pin.map(Arc::new));
    }

    /// Current reference values.
    pub fn reference_values(&self) -> Arc<serde_json::Map<String, serde_json::Value>> {
        read(&self.reference_values)
    }

    /// Reload policies and reference values from the store.
    pub fn reload(&self) -> Result<(), String> {
        let mut att = None;
        for (scope, text) in self
            .store
            .list_policies("attestation")
            .map_err(|e| e.to_string())?
        {
            if scope.is_empty() {
                att = Some(text);
            }
        }
        let ap = match att {
            Some(text) => AttestationPolicy {
                id: "custom".into(),
                policy: crate::appraisal::compile(&text)
                    .map_err(|e| format!("stored attestation policy: {e}"))?,
            },
            None => AttestationPolicy {
                id: "default".into(),
                policy: crate::appraisal::compile(crate::appraisal::DEFAULT_POLICY)?,
            },
        };
        write(&self.attestation_policy, Arc::new(ap));
        let mut rp = BTreeMap::new();
        for (scope, text) in self
            .store
            .list_policies("resource")
            .map_err(|e| e.to_string())?
        {
            let p = crate::policy::compile_resource_policy(&text)
                .map_err(|e| format!("stored resource policy for scope {scope:?}: {e}"))?;
            rp.insert(scope, p);
        }
        write(&self.resource_policies, Arc::new(rp));
        let now = now();
        let mut rv = serde_json::Map::new();
        for (name, value, expires) in self
            .store
            .list_reference_values()
            .map_err(|e| e.to_string())?
        {
            if expires > now {
                rv.insert(name, value);
            }
        }
        write(&self.reference_values, Arc::new(rv));
        Ok(())
    }

    /// Record a decision that released or changed something, durably:
    /// returns once its row is committed (see [`crate::audit`]). Subject,
    /// reason and every string in `details` may carry client text: their
    /// control characters are escaped ([`crate::text::escape_controls`]) so
    /// that no row can forge another line or drive the terminal of `veil
    /// kbs audit`. A failure is logged and returned.
    pub fn audit(
        &self,
        kind: &str,
        subject: &str,
        decision: &str,
        reason: &str,
        details: serde_json::Value,
    ) -> Result<(), crate::store::StoreError> {
        let rec = crate::audit::record(kind, subject, decision, reason, details);
        self.audit_log.durable(rec).inspect_err(|e| {
            tracing::error!(error = %escape_controls(&e.to_string()), kind, "audit write failed");
        })
    }

    /// Record a refusal from `source`, rate-limited per source and kind
    /// (see [`crate::audit`]). Never waits for the disk.
    pub fn audit_refusal(
        &self,
        source: &crate::source::SourceKey,
        kind: &'static str,
        subject: &str,
        reason: &str,
    ) {
        self.audit_log.refusal(source, kind, subject, reason);
    }
}
