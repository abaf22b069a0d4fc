//! Persistent state of the KBS behind one interface, so that a shared
//! database (PostgreSQL, for several replicas) can replace the embedded
//! SQLite default without touching the protocol code.
//!
//! Every write returns only once it is durable: the HTTP layer acknowledges
//! after the call returns. Resource values are stored sealed (see
//! [`crate::secrets`]); the store never sees a plaintext secret.

pub mod sqlite;

use serde::{Deserialize, Serialize};

/// A storage failure (I/O, corruption, constraint).
#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

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
}
