//! The embedded SQLite store: one file `kbs.sqlite` in the data directory,
//! WAL journal with `synchronous = FULL`, so a committed write survives a
//! crash or power loss; schema versioned with `PRAGMA user_version`.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};

use super::{AuditRecord, ResourceMeta, Result, SealedBlob, Store, StoreError};

/// Current schema version.
const SCHEMA_VERSION: i64 = 2;

const SCHEMA_V1: &str = "
CREATE TABLE resources (
    path TEXT PRIMARY KEY NOT NULL,
    size INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    kek_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE TABLE sealed_meta (
    key TEXT PRIMARY KEY NOT NULL,
    kek_id TEXT NOT NULL,
    nonce BLOB NOT NULL,
    ciphertext BLOB NOT NULL
);
CREATE TABLE policies (
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    text TEXT NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (kind, scope)
);
CREATE TABLE reference_values (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts INTEGER NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX audit_kind ON audit(kind, id);
";

/// v1 → v2: audit retention deletes by time.
const SCHEMA_V2: &str = "CREATE INDEX audit_ts ON audit(ts);";

/// Read connections kept open beside the writer (WAL lets them read while
/// a write commits).
const READERS: usize = 4;

/// SQLite-backed [`Store`]: one writer connection and a few reader
/// connections, so that reads (a resource on the release path, policies,
/// the audit query) never wait behind a write's sync.
pub struct SqliteStore {
    path: std::path::PathBuf,
    conn: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
}

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

impl SqliteStore {
    /// Open (creating if needed) `kbs.sqlite` in `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        let path = dir.join("kbs.sqlite");
        let conn = Connection::open(&path)
            .map_err(|e| StoreError::Failed(format!("opening {}: {e}", path.display())))?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(err)?;
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(err)?;
        match version {
            0 => {
                conn.execute_batch(&format!(
                    "BEGIN; {SCHEMA_V1} {SCHEMA_V2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(|e| StoreError::Failed(format!("creating schema: {e}")))?;
            }
            1 => {
                conn.execute_batch(&format!(
                    "BEGIN; {SCHEMA_V2} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
                ))
                .map_err(|e| StoreError::Failed(format!("migrating schema 1 to 2: {e}")))?;
            }
            SCHEMA_VERSION => {}
            other => {
                return Err(StoreError::Failed(format!(
                    "{} has schema version {other}; this veil supports {SCHEMA_VERSION}",
                    path.display()
                )));
            }
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                &path,
                rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY
                    | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(|e| StoreError::Failed(format!("opening {} to read: {e}", path.display())))?;
            r.busy_timeout(std::time::Duration::from_secs(5))
                .map_err(err)?;
            readers.push(Mutex::new(r));
        }
        Ok(SqliteStore {
            path,
            conn: Mutex::new(conn),
            readers,
            next_reader: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Run a read on a free reader connection (the next one in turn if
    /// all are busy).
    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let start = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let n = self.readers.len();
        let guard = (0..n)
            .find_map(|i| self.readers[(start + i) % n].try_lock().ok())
            .map(Ok)
            .unwrap_or_else(|| {
                self.readers[start % n]
                    .lock()
                    .map_err(|_| StoreError::Failed("store lock poisoned".into()))
            })?;
        f(&guard).map_err(err)
    }

    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>) -> Result<T> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| StoreError::Failed("store lock poisoned".into()))?;
        f(&mut c).map_err(err)
    }
}

fn blob_from_row(kek_id: String, nonce: Vec<u8>, ciphertext: Vec<u8>) -> SealedBlob {
    SealedBlob {
        kek_id,
        nonce,
        ciphertext,
    }
}

impl Store for SqliteStore {
    fn put_resource(&self, path: &str, size: u64, blob: &SealedBlob, now: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO resources (path, size, updated_at, kek_id, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT(path) DO UPDATE SET size = ?2, updated_at = ?3, kek_id = ?4, nonce = ?5, ciphertext = ?6",
                params![path, to_i64(size), to_i64(now), blob.kek_id, blob.nonce, blob.ciphertext],
            )
            .map(|_| ())
        })
    }

    fn get_resource(&self, path: &str) -> Result<Option<(ResourceMeta, SealedBlob)>> {
        self.read(|c| {
            // On every resource release: keep the statement compiled.
            c.prepare_cached(
                "SELECT size, updated_at, kek_id, nonce, ciphertext FROM resources WHERE path = ?1",
            )?
            .query_row(params![path], |r| {
                let kek_id: String = r.get(2)?;
                Ok((
                    ResourceMeta {
                        path: path.to_string(),
                        size: to_u64(r.get(0)?),
                        updated_at: to_u64(r.get(1)?),
                        kek_id: kek_id.clone(),
                    },
                    blob_from_row(kek_id, r.get(3)?, r.get(4)?),
                ))
            })
            .optional()
        })
    }

    fn delete_resource(&self, path: &str) -> Result<bool> {
        self.with(|c| {
            c.execute("DELETE FROM resources WHERE path = ?1", params![path])
                .map(|n| n > 0)
        })
    }

    fn list_resources(&self) -> Result<Vec<ResourceMeta>> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT path, size, updated_at, kek_id FROM resources ORDER BY path")?;
            let rows = st.query_map([], |r| {
                Ok(ResourceMeta {
                    path: r.get(0)?,
                    size: to_u64(r.get(1)?),
                    updated_at: to_u64(r.get(2)?),
                    kek_id: r.get(3)?,
                })
            })?;
            rows.collect()
        })
    }

    fn reseal_all(
        &self,
        f: &mut dyn FnMut(&str, &SealedBlob) -> std::result::Result<SealedBlob, String>,
    ) -> Result<usize> {
        let mut c = self
            .conn
            .lock()
            .map_err(|_| StoreError::Failed("store lock poisoned".into()))?;
        let tx = c.transaction().map_err(err)?;
        let mut count = 0;
        for (table, key_col, prefix) in [
            ("resources", "path", "resource:"),
            ("sealed_meta", "key", "meta:"),
        ] {
            let rows: Vec<(String, SealedBlob)> = {
                let mut st = tx
                    .prepare(&format!(
                        "SELECT {key_col}, kek_id, nonce, ciphertext FROM {table}"
                    ))
                    .map_err(err)?;
                let it = st
                    .query_map([], |r| {
                        Ok((r.get(0)?, blob_from_row(r.get(1)?, r.get(2)?, r.get(3)?)))
                    })
                    .map_err(err)?;
                it.collect::<rusqlite::Result<_>>().map_err(err)?
            };
            for (key, blob) in rows {
                let new = f(&format!("{prefix}{key}"), &blob).map_err(StoreError::Failed)?;
                tx.execute(
                    &format!("UPDATE {table} SET kek_id = ?1, nonce = ?2, ciphertext = ?3 WHERE {key_col} = ?4"),
                    params![new.kek_id, new.nonce, new.ciphertext, key],
                )
                .map_err(err)?;
                count += 1;
            }
        }
        tx.commit().map_err(err)?;
        Ok(count)
    }

    fn kek_ids(&self) -> Result<Vec<String>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT kek_id FROM resources UNION SELECT kek_id FROM sealed_meta ORDER BY 1",
            )?;
            let rows = st.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    fn get_sealed_meta(&self, key: &str) -> Result<Option<SealedBlob>> {
        self.read(|c| {
            c.query_row(
                "SELECT kek_id, nonce, ciphertext FROM sealed_meta WHERE key = ?1",
                params![key],
                |r| Ok(blob_from_row(r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })
    }

    fn put_sealed_meta(&self, key: &str, blob: &SealedBlob) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sealed_meta (key, kek_id, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO UPDATE SET kek_id = ?2, nonce = ?3, ciphertext = ?4",
                params![key, blob.kek_id, blob.nonce, blob.ciphertext],
            )
            .map(|_| ())
        })
    }

    fn put_sealed_meta_if_absent(&self, key: &str, blob: &SealedBlob) -> Result<SealedBlob> {
        self.with(|c| {
            c.execute(
                "INSERT INTO sealed_meta (key, kek_id, nonce, ciphertext) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(key) DO NOTHING",
                params![key, blob.kek_id, blob.nonce, blob.ciphertext],
            )?;
            c.query_row(
                "SELECT kek_id, nonce, ciphertext FROM sealed_meta WHERE key = ?1",
                params![key],
                |r| Ok(blob_from_row(r.get(0)?, r.get(1)?, r.get(2)?)),
            )
        })
    }

    fn set_policy(&self, kind: &str, scope: &str, text: &str, now: u64) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO policies (kind, scope, text, updated_at) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT(kind, scope) DO UPDATE SET text = ?3, updated_at = ?4",
                params![kind, scope, text, to_i64(now)],
            )
            .map(|_| ())
        })
    }

    fn list_policies(&self, kind: &str) -> Result<Vec<(String, String)>> {
        self.read(|c| {
            let mut st =
                c.prepare("SELECT scope, text FROM policies WHERE kind = ?1 ORDER BY scope")?;
            let rows = st.query_map(params![kind], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
    }

    fn set_reference_value(
        &self,
        name: &str,
        value: &serde_json::Value,
        expires_at: u64,
    ) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO reference_values (name, value, expires_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT(name) DO UPDATE SET value = ?2, expires_at = ?3",
                params![name, value.to_string(), to_i64(expires_at)],
            )
            .map(|_| ())
        })
    }

    fn list_reference_values(&self) -> Result<Vec<(String, serde_json::Value, u64)>> {
        let rows: Vec<(String, String, i64)> = self.read(|c| {
            let mut st =
                c.prepare("SELECT name, value, expires_at FROM reference_values ORDER BY name")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect()
        })?;
        rows.into_iter()
            .map(|(n, v, e)| {
                let value = serde_json::from_str(&v)
                    .map_err(|e| StoreError::Failed(format!("reference value {n}: {e}")))?;
                Ok((n, value, to_u64(e)))
            })
            .collect()
    }

    fn append_audit(&self, rec: &AuditRecord) -> Result<()> {
        self.with(|c| {
            c.execute(
                "INSERT INTO audit (ts, kind, subject, decision, reason, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![to_i64(rec.ts), rec.kind, rec.subject, rec.decision, rec.reason, rec.details.to_string()],
            )
            .map(|_| ())
        })
    }

    fn append_audit_batch(&self, recs: &[AuditRecord]) -> Result<()> {
        self.with(|c| {
            let tx = c.transaction()?;
            {
                let mut st = tx.prepare_cached(
                    "INSERT INTO audit (ts, kind, subject, decision, reason, details) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?;
                for rec in recs {
                    st.execute(params![
                        to_i64(rec.ts),
                        rec.kind,
                        rec.subject,
                        rec.decision,
                        rec.reason,
                        rec.details.to_string()
                    ])?;
                }
            }
            tx.commit()
        })
    }

    fn prune_audit(&self, before: u64) -> Result<u64> {
        self.with(|c| {
            c.execute("DELETE FROM audit WHERE ts < ?1", params![to_i64(before)])
                .map(|n| n as u64)
        })
    }

    fn query_audit(&self, limit: u32, kind: Option<&str>) -> Result<Vec<AuditRecord>> {
        self.read(|c| {
            let mut st = c.prepare(
                "SELECT id, ts, kind, subject, decision, reason, details FROM audit
                 WHERE (?1 IS NULL OR kind = ?1) ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![kind, limit], |r| {
                let details: String = r.get(6)?;
                Ok(AuditRecord {
                    id: r.get(0)?,
                    ts: to_u64(r.get(1)?),
                    kind: r.get(2)?,
                    subject: r.get(3)?,
                    decision: r.get(4)?,
                    reason: r.get(5)?,
                    details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                })
            })?;
            rows.collect()
        })
    }

    /// Constant: one process owns the file (the data dir lock) and reloads
    /// what it changes itself.
    fn config_generation(&self) -> Result<i64> {
        Ok(0)
    }

    fn describe(&self) -> String {
        format!("SQLite {}", self.path.display())
    }
}
