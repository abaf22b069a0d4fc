//! Persistent state of the KBS behind one interface, so that a shared
//! database (PostgreSQL, for several replicas) can replace the embedded
//! SQLite default without touching the protocol code.
//!
//! Every write returns only once it is durable: the HTTP layer acknowledges
//! after the call returns. Resource values are stored sealed (see
//! [`crate::secrets`]); the store never sees a plaintext secret.

pub mod postgres;
pub mod sqlite;

use serde::{Deserialize, Serialize};

/// A storage failure.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The operation failed (I/O, corruption, constraint).
    #[error("storage: {0}")]
    Failed(String),
    /// The store cannot be reached right now (a database server down or
    /// restarting): the request may succeed later or on another replica,
    /// so the HTTP layer answers 503.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl StoreError {
    /// True for [`StoreError::Unavailable`].
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

/// Shorthand result.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A resource value encrypted under the key-encryption key.
#[derive(Clone, Debug)]
pub struct SealedBlob {
    /// Identifier of the KEK that sealed it.
    pub kek_id: String,
    /// AES-GCM nonce.
    pub nonce: Vec<u8>,
    /// Ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

/// What the admin API shows about a resource (never its value).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ResourceMeta {
    /// `repo/type/tag`.
    pub path: String,
    /// Plaintext size in bytes.
    pub size: u64,
    /// Last write, Unix seconds.
    pub updated_at: u64,
    /// KEK the value is sealed under.
    pub kek_id: String,
}

/// One audit record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AuditRecord {
    /// Sequence number (assigned by the store).
    #[serde(default)]
    pub id: i64,
    /// Unix seconds.
    pub ts: u64,
    /// `attest`, `resource`, `admin`.
    pub kind: String,
    /// TEE, resource path or admin endpoint.
    pub subject: String,
    /// `allow` / `deny` / `ok` / `error`.
    pub decision: String,
    /// Why.
    pub reason: String,
    /// Key claims and context (no secrets, no tokens).
    pub details: serde_json::Value,
}

/// The storage interface.
pub trait Store: Send + Sync {
    /// Insert or replace a resource; durable on return.
    fn put_resource(&self, path: &str, size: u64, blob: &SealedBlob, now: u64) -> Result<()>;
    /// A sealed resource.
    fn get_resource(&self, path: &str) -> Result<Option<(ResourceMeta, SealedBlob)>>;
    /// Delete; true if it existed.
    fn delete_resource(&self, path: &str) -> Result<bool>;
    /// Metadata of every resource, sorted by path.
    fn list_resources(&self) -> Result<Vec<ResourceMeta>>;
    /// Re-seal every sealed blob (resources and `meta` secrets) in one
    /// transaction: all or nothing.
    fn reseal_all(
        &self,
        f: &mut dyn FnMut(&str, &SealedBlob) -> std::result::Result<SealedBlob, String>,
    ) -> Result<usize>;
    /// Distinct KEK ids in use.
    fn kek_ids(&self) -> Result<Vec<String>>;

    /// A sealed server secret (token signing key, …).
    fn get_sealed_meta(&self, key: &str) -> Result<Option<SealedBlob>>;
    /// Store a sealed server secret.
    fn put_sealed_meta(&self, key: &str, blob: &SealedBlob) -> Result<()>;
    /// Store a sealed server secret unless one is already stored under
    /// `key`; returns the one stored (`blob` or the earlier one). Replicas
    /// starting together all end up with the first one written.
    fn put_sealed_meta_if_absent(&self, key: &str, blob: &SealedBlob) -> Result<SealedBlob>;

    /// Set a policy text of a kind (`resource`, `attestation`) for a scope.
    fn set_policy(&self, kind: &str, scope: &str, text: &str, now: u64) -> Result<()>;
    /// Every policy of a kind, `(scope, text)`, sorted by scope.
    fn list_policies(&self, kind: &str) -> Result<Vec<(String, String)>>;

    /// Set the values of a reference value name.
    fn set_reference_value(
        &self,
        name: &str,
        value: &serde_json::Value,
        expires_at: u64,
    ) -> Result<()>;
    /// Every reference value `(name, value, expires_at)`.
    fn list_reference_values(&self) -> Result<Vec<(String, serde_json::Value, u64)>>;

    /// Append an audit record.
    fn append_audit(&self, rec: &AuditRecord) -> Result<()>;
    /// Append several audit records, durable together on return (one
    /// transaction where the store has them).
    fn append_audit_batch(&self, recs: &[AuditRecord]) -> Result<()> {
        recs.iter().try_for_each(|r| self.append_audit(r))
    }
    /// Delete the audit records older than `before` (Unix seconds);
    /// returns how many.
    fn prune_audit(&self, before: u64) -> Result<u64>;
    /// The newest `limit` records, newest first; `kind` filters.
    fn query_audit(&self, limit: u32, kind: Option<&str>) -> Result<Vec<AuditRecord>>;

    /// A number that changes whenever a policy or reference value changes
    /// (other replicas of a shared store reload when it does).
    fn config_generation(&self) -> Result<i64>;
    /// The session table shared by every replica, where the store is
    /// shared; `None` keeps sessions in this process's memory.
    fn shared_sessions(&self) -> Option<&dyn SharedSessions> {
        None
    }
    /// What the store is, for messages (`SQLite <path>`, `PostgreSQL
    /// <host>/<db>`; never a password).
    fn describe(&self) -> String;
}

/// A stored RCAR session (see [`crate::session`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    /// TEE name from `/auth`.
    pub tee: String,
    /// The challenge nonce.
    pub nonce: String,
    /// The latest token, once attested.
    pub token: Option<String>,
    /// Un-attested: Unix seconds after which the challenge is void.
    pub attest_by: u64,
    /// Unix seconds: end of the session.
    pub expires: u64,
}

/// A session lookup in a [`SharedSessions`] table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Found {
    /// No such session.
    Missing,
    /// It expired at (Unix seconds).
    Expired(u64),
    /// Live.
    Live(StoredSession),
}

/// The session table of a store shared by several replicas: a client may
/// `/auth` on one and `/attest` or fetch on another. Every method is one
/// atomic statement or transaction, so that a challenge is consumed by one
/// replica at most.
pub trait SharedSessions: Send + Sync {
    /// Insert an un-attested session for `source`, then evict that
    /// source's oldest un-attested sessions past `per_source`, and
    /// everyone's oldest past `max_unattested`; returns how many were
    /// evicted.
    fn open(
        &self,
        id: &str,
        s: &StoredSession,
        source: &str,
        per_source: usize,
        max_unattested: usize,
    ) -> Result<u64>;
    /// The session `id` at `now`, without consuming it (an expired one is
    /// deleted).
    fn get(&self, id: &str, now: u64) -> Result<Found>;
    /// Consume the un-attested session `id` (delete it and return it), or
    /// return the attested one left in place. Exactly one caller across all
    /// replicas gets a given un-attested session.
    fn take_for_attest(&self, id: &str, now: u64) -> Result<Found>;
    /// Record an attested session; false when `max_attested` live attested
    /// sessions exist already.
    fn attested(&self, id: &str, s: &StoredSession, max_attested: usize, now: u64) -> Result<bool>;
    /// Replace the token of the live attested session `id`; false when
    /// there is none.
    fn reissue(&self, id: &str, token: &str, now: u64) -> Result<bool>;
    /// Record the single-use `key` (an admin token's `jti`) until `until`;
    /// false when it is already recorded and not yet expired.
    fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool>;
    /// Delete the sessions and single-use keys whose time is past.
    fn purge(&self, now: u64) -> Result<u64>;
    /// Sessions held: all, un-attested, un-attested of `source`.
    fn counts(&self, source: &str) -> Result<(u64, u64, u64)>;
}
