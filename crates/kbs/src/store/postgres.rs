//! The PostgreSQL store, for several KBS replicas on one database
//! (`veil kbs serve --store postgres://…`).
//!
//! Everything a replica needs to serve any step of any client lives in the
//! database: resources (sealed under the KEK as in SQLite), policies,
//! reference values, the audit log, and the RCAR sessions with their
//! challenges ([`SharedSessions`]). A challenge is consumed with one
//! `DELETE … RETURNING`, so exactly one replica can answer it. Every write
//! is committed (PostgreSQL's `synchronous_commit`, on by default) before
//! the call returns and the HTTP answer leaves.
//!
//! The driver is `postgres` (the synchronous face of `tokio-postgres`, pure
//! Rust) with an `r2d2` pool: the [`Store`] trait is synchronous and runs off
//! the async workers. A pooled connection is checked before use and replaced
//! when broken, so the store recovers by itself when the database comes
//! back; while it cannot be reached every call fails with
//! [`StoreError::Unavailable`] within [`CONNECT_TIMEOUT`] (the HTTP layer
//! answers 503).
//!
//! Schema migrations are numbered and applied at start in one transaction
//! under an advisory lock, so replicas starting together migrate once; the
//! version is in `veil_schema`. A database with a newer schema is refused.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use postgres::NoTls;
use postgres::config::{Host, SslMode};
use postgres::types::ToSql;
use r2d2_postgres::PostgresConnectionManager;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::{
    AuditRecord, Found, ResourceMeta, Result, SealedBlob, SharedSessions, Store, StoreError,
    StoredSession,
};

/// Migrations, in order: index `i` takes the schema from version `i` to
/// `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the tables of the SQLite store, plus the shared session table and
    // the configuration generation that tells replicas to reload.
    "
CREATE TABLE resources (
    path TEXT PRIMARY KEY,
    size BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    kek_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL
);
CREATE TABLE sealed_meta (
    key TEXT PRIMARY KEY,
    kek_id TEXT NOT NULL,
    nonce BYTEA NOT NULL,
    ciphertext BYTEA NOT NULL
);
CREATE TABLE policies (
    kind TEXT NOT NULL,
    scope TEXT NOT NULL,
    text TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (kind, scope)
);
CREATE TABLE reference_values (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    ts BIGINT NOT NULL,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    decision TEXT NOT NULL,
    reason TEXT NOT NULL,
    details TEXT NOT NULL
);
CREATE INDEX audit_kind ON audit (kind, id);
CREATE INDEX audit_ts ON audit (ts);
CREATE TABLE config_generation (
    one BOOLEAN PRIMARY KEY DEFAULT true CHECK (one),
    generation BIGINT NOT NULL
);
INSERT INTO config_generation (one, generation) VALUES (true, 0);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL NOT NULL,
    tee TEXT NOT NULL,
    nonce TEXT NOT NULL,
    token TEXT,
    source TEXT NOT NULL,
    attest_by BIGINT NOT NULL,
    expires BIGINT NOT NULL
);
CREATE INDEX sessions_pending ON sessions (seq) WHERE token IS NULL;
CREATE INDEX sessions_pending_source ON sessions (source, seq) WHERE token IS NULL;
CREATE INDEX sessions_attested ON sessions (expires) WHERE token IS NOT NULL;
CREATE INDEX sessions_deadline ON sessions (LEAST(attest_by, expires));
",
    // 2: single-use keys shared by the replicas (admin token `jti`s).
    "
CREATE TABLE used_once (
    key TEXT PRIMARY KEY,
    until BIGINT NOT NULL
);
CREATE INDEX used_once_until ON used_once (until);
",
];

/// Advisory lock key held while migrating ("veilkbs" in ASCII).
const MIGRATION_LOCK: i64 = 0x0076_6569_6c6b_6273;

/// How long a call waits for a connection before it reports the store
/// unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pooled connections per replica.
pub const POOL_SIZE: u32 = 16;

/// Advisory lock key every running replica holds shared and `rotate-kek`
/// takes exclusively ("veilkek" in ASCII).
const KEK_LOCK: i64 = 0x0076_6569_6c6b_656b;

/// How often a replica checks the connection that holds its share of the
/// KEK lock (and takes it again after the database restarted).
const REPLICA_LOCK_CHECK: Duration = Duration::from_secs(1);

/// The pool, plain or TLS: the driver's TLS connector is a type parameter,
/// and a TLS connector cannot be used for Unix sockets at all (it is asked
/// for a server name before the SSL mode is looked at).
enum Pool {
    Plain(r2d2::Pool<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::Pool<PostgresConnectionManager<MakeRustlsConnect>>),
}

/// A pooled connection of either kind: a `postgres::Client`.
enum Conn {
    Plain(r2d2::PooledConnection<PostgresConnectionManager<NoTls>>),
    Tls(r2d2::PooledConnection<PostgresConnectionManager<MakeRustlsConnect>>),
}

impl std::ops::Deref for Conn {
    type Target = postgres::Client;
    fn deref(&self) -> &postgres::Client {
        match self {
            Conn::Plain(c) => c,
            Conn::Tls(c) => c,
        }
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut postgres::Client {
        match self {
            Conn::Plain(c) => c,
            Conn::Tls(c) => c,
        }
    }
}

/// How the KBS talks to PostgreSQL.
#[derive(Clone, Debug, Default)]
pub enum PgTls {
    /// No TLS: the database is reached over a Unix socket or a private
    /// network. A connection string with `sslmode=require` is refused (it
    /// would need a CA to verify the server against).
    #[default]
    Off,
    /// TLS required, the server's certificate verified (chain and host
    /// name, as libpq's `verify-full`) against these CA certificates (PEM).
    Verify(Vec<u8>),
}

/// Largest `--store-ca` file read.
const MAX_CA_FILE: u64 = 1 << 20;

impl PgTls {
    /// `Verify` with the CA certificates of `path`, `Off` without one.
    pub fn from_ca_file(path: Option<&std::path::Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(PgTls::Off);
        };
        use std::io::Read;
        let mut pem = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CA_FILE + 1).read_to_end(&mut pem))
            .map_err(|e| StoreError::Failed(format!("--store-ca {}: {e}", path.display())))?;
        if pem.len() as u64 > MAX_CA_FILE {
            return Err(StoreError::Failed(format!(
                "--store-ca {}: larger than {MAX_CA_FILE} bytes; expected PEM CA certificate(s)",
                path.display()
            )));
        }
        Ok(PgTls::Verify(pem))
    }
}

/// PostgreSQL-backed [`Store`] and [`SharedSessions`].
pub struct PgStore {
    pool: Pool,
    desc: String,
    cfg: postgres::Config,
    /// `None`: no TLS.
    tls: Option<MakeRustlsConnect>,
}

/// A running replica's share of the KEK lock: while any replica holds it,
/// `veil kbs rotate-kek` refuses (it would re-seal the secrets under a KEK
/// the running replicas do not have). Held on a connection of its own,
/// checked every second and taken again when the database restarted.
/// Released on drop (and by PostgreSQL when the process dies).
pub struct ReplicaLock {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ReplicaLock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Connect once and hang up (the reason of a failure, with its sources).
fn lock_free_probe(
    cfg: &postgres::Config,
    tls: &Option<MakeRustlsConnect>,
) -> std::result::Result<(), String> {
    match tls {
        Some(t) => cfg.connect(t.clone()),
        None => cfg.connect(NoTls),
    }
    .map(drop)
    .map_err(|e| format!("cannot connect: {}", chain(&e)))
}

/// A connection holding a shared KEK lock.
fn lock_shared(
    cfg: &postgres::Config,
    tls: &Option<MakeRustlsConnect>,
) -> std::result::Result<postgres::Client, String> {
    let mut c = match tls {
        Some(t) => cfg.connect(t.clone()),
        None => cfg.connect(NoTls),
    }
    .map_err(|e| format!("cannot connect: {}", chain(&e)))?;
    let got: bool = c
        .query_one("SELECT pg_try_advisory_lock_shared($1)", &[&KEK_LOCK])
        .map_err(|e| chain(&e))?
        .get(0);
    if got {
        Ok(c)
    } else {
        Err("refused: a KEK rotation (`veil kbs rotate-kek --store …`) is running on this database; start the replica with the new KEK once it has finished".into())
    }
}

/// The rustls connector for `tls` (ring, the KBS's provider); `None` for
/// no TLS.
fn connector(tls: &PgTls) -> Result<Option<MakeRustlsConnect>> {
    let mut roots = rustls::RootCertStore::empty();
    let PgTls::Verify(pem) = tls else {
        return Ok(None);
    };
    {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| {
                StoreError::Failed(format!("--store-ca: not a PEM certificate ({e})"))
            })?;
            roots.add(cert).map_err(|e| {
                StoreError::Failed(format!("--store-ca: certificate not usable as a CA ({e})"))
            })?;
        }
        if roots.is_empty() {
            return Err(StoreError::Failed(
                "--store-ca: no certificate in the file (expected the PEM CA certificate that signed PostgreSQL's server certificate)".into(),
            ));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::Failed(format!("TLS to PostgreSQL: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// `host[:port]/dbname` of a connection string, never its password.
fn describe(cfg: &postgres::Config) -> String {
    let hosts: Vec<String> = cfg
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(h) => h.clone(),
            postgres::config::Host::Unix(p) => p.display().to_string(),
        })
        .collect();
    let port = cfg
        .get_ports()
        .first()
        .map_or(String::new(), |p| format!(":{p}"));
    let tls = if cfg.get_ssl_mode() == SslMode::Require {
        " (TLS, verified)"
    } else {
        ""
    };
    format!(
        "PostgreSQL {}{port}/{}{tls}",
        hosts.join(","),
        cfg.get_dbname().unwrap_or("(user's database)")
    )
}

/// An error with its sources (rustls' verdict is in the source of the
/// driver's error).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        let t = x.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = x.source();
    }
    s
}

impl PgStore {
    /// Connect to `url` (a `postgres://` URL or a `key=value` connection
    /// string) without TLS and apply the schema migrations.
    pub fn open(url: &str) -> Result<Self> {
        Self::open_with(url, &PgTls::Off)
    }

    /// Connect to `url` with `tls` and apply the schema migrations.
    pub fn open_with(url: &str, tls: &PgTls) -> Result<Self> {
        let mut cfg = postgres::Config::from_str(url).map_err(|e| {
            StoreError::Failed(format!(
                "the PostgreSQL connection string is not valid ({e}); expected postgres://USER@HOST[:PORT]/DB or postgres:///DB?host=/SOCKET/DIR"
            ))
        })?;
        match (tls, cfg.get_ssl_mode()) {
            (PgTls::Off, SslMode::Require) => {
                return Err(StoreError::Failed(
                    "sslmode=require: TLS to PostgreSQL needs the CA certificate that signed the server's certificate, to verify it: pass --store-ca FILE ($VEIL_KBS_STORE_CA), or reach the database over a Unix socket or a private network without sslmode=require (see docs/kbs.md, PostgreSQL)".into(),
                ));
            }
            // Never offer TLS that could not verify anything.
            (PgTls::Off, _) => {
                cfg.ssl_mode(SslMode::Disable);
            }
            (PgTls::Verify(_), SslMode::Disable) => {
                return Err(StoreError::Failed(
                    "--store-ca asks for TLS, but the connection string says sslmode=disable: drop one of them".into(),
                ));
            }
            (PgTls::Verify(_), _) => {
                if let Some(Host::Unix(p)) =
                    cfg.get_hosts().iter().find(|h| matches!(h, Host::Unix(_)))
                {
                    return Err(StoreError::Failed(format!(
                        "--store-ca: TLS is for TCP hosts, and the connection string names the Unix socket directory {} (local, no TLS needed): drop --store-ca, or name the server's TCP host",
                        p.display()
                    )));
                }
                // `require` = TLS or nothing; the connector verifies the
                // chain and the host name (libpq's verify-full).
                cfg.ssl_mode(SslMode::Require);
            }
        }
        let connector = connector(tls)?;
        let desc = describe(&cfg);
        cfg.connect_timeout(CONNECT_TIMEOUT);
        if cfg.get_application_name().is_none() {
            cfg.application_name("veil-kbs");
        }
        // One direct connection first: the pool reports only the last
        // error's text, and a TLS refusal's reason is in its sources.
        lock_free_probe(&cfg, &connector)
            .map_err(|e| StoreError::Unavailable(format!("{desc}: {e}")))?;
        fn builder<M: r2d2::ManageConnection>() -> r2d2::Builder<M> {
            r2d2::Pool::builder()
                .max_size(POOL_SIZE)
                .min_idle(Some(1))
                .connection_timeout(CONNECT_TIMEOUT)
                .test_on_check_out(true)
                .error_handler(Box::new(r2d2::NopErrorHandler))
        }
        let failed = |e: r2d2::Error| {
            StoreError::Unavailable(format!("{desc}: cannot connect: {}", chain(&e)))
        };
        let pool = match &connector {
            Some(t) => Pool::Tls(
                builder()
                    .build(PostgresConnectionManager::new(cfg.clone(), t.clone()))
                    .map_err(failed)?,
            ),
            None => Pool::Plain(
                builder()
                    .build(PostgresConnectionManager::new(cfg.clone(), NoTls))
                    .map_err(failed)?,
            ),
        };
        let store = PgStore {
            pool,
            desc,
            cfg,
            tls: connector,
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let target = MIGRATIONS.len() as i32;
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(|e| self.err(e))?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .map_err(|e| self.err(e))?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS veil_schema (version INTEGER NOT NULL)")
            .map_err(|e| self.err(e))?;
        let version: i32 = match tx
            .query_opt("SELECT version FROM veil_schema", &[])
            .map_err(|e| self.err(e))?
        {
            Some(r) => r.get(0),
            None => {
                tx.execute("INSERT INTO veil_schema (version) VALUES (0)", &[])
                    .map_err(|e| self.err(e))?;
                0
            }
        };
        if version > target {
            return Err(StoreError::Failed(format!(
                "{} has veil schema version {version}; this veil supports up to {target}: upgrade veil",
                self.desc
            )));
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version.max(0) as usize) {
            tx.batch_execute(m).map_err(|e| {
                StoreError::Failed(format!(
                    "{}: migrating schema {i} to {}: {e}",
                    self.desc,
                    i + 1
                ))
            })?;
        }
        tx.execute("UPDATE veil_schema SET version = $1", &[&target])
            .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))
    }

    /// The schema version in force.
    pub fn schema_version(&self) -> Result<i32> {
        let mut c = self.conn()?;
        let r = c
            .query_one("SELECT version FROM veil_schema", &[])
            .map_err(|e| self.err(e))?;
        Ok(r.get(0))
    }

    /// Whether this store's connections are encrypted (PostgreSQL's own
    /// view, `pg_stat_ssl`).
    pub fn tls_in_use(&self) -> Result<bool> {
        let mut c = self.conn()?;
        let r = c
            .query_one(
                "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
                &[],
            )
            .map_err(|e| self.err(e))?;
        Ok(r.get(0))
    }

    /// Take this replica's share of the KEK lock (see [`ReplicaLock`]);
    /// refused while a KEK rotation runs.
    pub fn hold_replica_lock(&self) -> Result<ReplicaLock> {
        let first = self.take_replica_lock()?;
        let stop = Arc::new(AtomicBool::new(false));
        let (cfg, tls, desc, flag) = (
            self.cfg.clone(),
            self.tls.clone(),
            self.desc.clone(),
            stop.clone(),
        );
        let thread = std::thread::Builder::new()
            .name("kek-lock".into())
            .spawn(move || {
                let mut client = Some(first);
                'run: while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                    let alive = client.as_mut().is_some_and(|c| {
                        c.is_valid(CONNECT_TIMEOUT).is_ok()
                    });
                    if alive {
                        // A full check every REPLICA_LOCK_CHECK is enough.
                        for _ in 0..(REPLICA_LOCK_CHECK.as_millis() / 100) {
                            if flag.load(Ordering::Relaxed) {
                                break 'run;
                            }
                            std::thread::sleep(Duration::from_millis(100));
                        }
                        continue;
                    }
                    client = None;
                    match lock_shared(&cfg, &tls) {
                        Ok(c) => {
                            tracing::info!(store = %desc, "took the replica's share of the KEK lock again");
                            client = Some(c);
                        }
                        Err(e) => {
                            tracing::warn!(store = %desc, error = %crate::text::escape_controls(&e), "cannot take the replica's share of the KEK lock (retrying)");
                        }
                    }
                }
                // Release the share before hanging up: the server frees a
                // session's locks only when its backend exits, a moment
                // after the client has gone, and a rotation started just
                // after this replica stopped must not count it.
                if let Some(mut c) = client {
                    let _ = c.execute("SELECT pg_advisory_unlock_shared($1)", &[&KEK_LOCK]);
                }
            })
            .map_err(|e| StoreError::Failed(format!("starting the KEK lock thread: {e}")))?;
        Ok(ReplicaLock {
            stop,
            thread: Some(thread),
        })
    }

    fn take_replica_lock(&self) -> Result<postgres::Client> {
        lock_shared(&self.cfg, &self.tls).map_err(|e| {
            if e.starts_with("refused") {
                StoreError::Failed(format!("{}: {e}", self.desc))
            } else {
                StoreError::Unavailable(format!("{}: {e}", self.desc))
            }
        })
    }

    fn conn(&self) -> Result<Conn> {
        match &self.pool {
            Pool::Plain(p) => p.get().map(Conn::Plain),
            Pool::Tls(p) => p.get().map(Conn::Tls),
        }
        .map_err(|e| {
            StoreError::Unavailable(format!(
                "{} cannot be reached ({e}); the KBS retries by itself and serves again once the database answers",
                self.desc
            ))
        })
    }

    /// Map a driver error: connection-level failures (closed connection,
    /// I/O, SQLSTATE class 08, the server shutting down or starting) are
    /// [`StoreError::Unavailable`].
    fn err(&self, e: postgres::Error) -> StoreError {
        let code = e.code().map(|c| c.code().to_string());
        let unavailable = e.is_closed()
            || match code.as_deref() {
                None => true,
                Some(c) => c.starts_with("08") || c.starts_with("57P"),
            };
        // The driver's Display is terse; the source has the server's text.
        let detail = match e.as_db_error() {
            Some(db) => format!("{}: {}", db.code().code(), db.message()),
            None => e.to_string(),
        };
        let msg = format!("{}: {detail}", self.desc);
        if unavailable {
            StoreError::Unavailable(msg)
        } else {
            StoreError::Failed(msg)
        }
    }

    fn exec(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64> {
        self.conn()?.execute(sql, params).map_err(|e| self.err(e))
    }

    fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<postgres::Row>> {
        self.conn()?.query(sql, params).map_err(|e| self.err(e))
    }

    /// Run `f` in a transaction and commit.
    fn tx<T>(
        &self,
        f: impl FnOnce(&mut postgres::Transaction<'_>) -> std::result::Result<T, postgres::Error>,
    ) -> Result<T> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(|e| self.err(e))?;
        let v = f(&mut tx).map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(v)
    }
}

fn blob(r: &postgres::Row, at: usize) -> SealedBlob {
    SealedBlob {
        kek_id: r.get(at),
        nonce: r.get(at + 1),
        ciphertext: r.get(at + 2),
    }
}

const BUMP_GENERATION: &str = "UPDATE config_generation SET generation = generation + 1";

impl Store for PgStore {
    fn put_resource(&self, path: &str, size: u64, b: &SealedBlob, now: u64) -> Result<()> {
        self.exec(
            "INSERT INTO resources (path, size, updated_at, kek_id, nonce, ciphertext) VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (path) DO UPDATE SET size = $2, updated_at = $3, kek_id = $4, nonce = $5, ciphertext = $6",
            &[&path, &to_i64(size), &to_i64(now), &b.kek_id, &b.nonce, &b.ciphertext],
        )
        .map(|_| ())
    }

    fn get_resource(&self, path: &str) -> Result<Option<(ResourceMeta, SealedBlob)>> {
        let rows = self.query(
            "SELECT size, updated_at, kek_id, nonce, ciphertext FROM resources WHERE path = $1",
            &[&path],
        )?;
        Ok(rows.first().map(|r| {
            let b = blob(r, 2);
            (
                ResourceMeta {
                    path: path.to_string(),
                    size: to_u64(r.get(0)),
                    updated_at: to_u64(r.get(1)),
                    kek_id: b.kek_id.clone(),
                },
                b,
            )
        }))
    }

    fn delete_resource(&self, path: &str) -> Result<bool> {
        self.exec("DELETE FROM resources WHERE path = $1", &[&path])
            .map(|n| n > 0)
    }

    fn list_resources(&self) -> Result<Vec<ResourceMeta>> {
        Ok(self
            .query(
                "SELECT path, size, updated_at, kek_id FROM resources ORDER BY path",
                &[],
            )?
            .iter()
            .map(|r| ResourceMeta {
                path: r.get(0),
                size: to_u64(r.get(1)),
                updated_at: to_u64(r.get(2)),
                kek_id: r.get(3),
            })
            .collect())
    }

    fn reseal_all(
        &self,
        f: &mut dyn FnMut(&str, &SealedBlob) -> std::result::Result<SealedBlob, String>,
    ) -> Result<usize> {
        let mut c = self.conn()?;
        let mut tx = c.transaction().map_err(|e| self.err(e))?;
        let got: bool = tx
            .query_one("SELECT pg_try_advisory_xact_lock($1)", &[&KEK_LOCK])
            .map_err(|e| self.err(e))?
            .get(0);
        if !got {
            let holders: i64 = tx
                .query_one(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND mode = 'ShareLock' AND ((classid::bigint << 32) | objid::bigint) = $1",
                    &[&KEK_LOCK],
                )
                .map_err(|e| self.err(e))?
                .get(0);
            return Err(StoreError::Failed(format!(
                "refused: {holders} KBS replica(s) run on {} (each holds the KEK lock): re-sealing now would leave them with a KEK that opens nothing. Stop every replica, rotate, then start them with the new KEK",
                self.desc
            )));
        }
        let mut count = 0;
        for (table, key_col, prefix) in [
            ("resources", "path", "resource:"),
            ("sealed_meta", "key", "meta:"),
        ] {
            let rows = tx
                .query(
                    &format!("SELECT {key_col}, kek_id, nonce, ciphertext FROM {table} FOR UPDATE"),
                    &[],
                )
                .map_err(|e| self.err(e))?;
            for r in rows {
                let key: String = r.get(0);
                let new = f(&format!("{prefix}{key}"), &blob(&r, 1)).map_err(StoreError::Failed)?;
                tx.execute(
                    &format!(
                        "UPDATE {table} SET kek_id = $1, nonce = $2, ciphertext = $3 WHERE {key_col} = $4"
                    ),
                    &[&new.kek_id, &new.nonce, &new.ciphertext, &key],
                )
                .map_err(|e| self.err(e))?;
                count += 1;
            }
        }
        tx.commit().map_err(|e| self.err(e))?;
        Ok(count)
    }

    fn kek_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .query(
                "SELECT kek_id FROM resources UNION SELECT kek_id FROM sealed_meta ORDER BY 1",
                &[],
            )?
            .iter()
            .map(|r| r.get(0))
            .collect())
    }

    fn get_sealed_meta(&self, key: &str) -> Result<Option<SealedBlob>> {
        Ok(self
            .query(
                "SELECT kek_id, nonce, ciphertext FROM sealed_meta WHERE key = $1",
                &[&key],
            )?
            .first()
            .map(|r| blob(r, 0)))
    }

    fn put_sealed_meta(&self, key: &str, b: &SealedBlob) -> Result<()> {
        self.exec(
            "INSERT INTO sealed_meta (key, kek_id, nonce, ciphertext) VALUES ($1, $2, $3, $4)
             ON CONFLICT (key) DO UPDATE SET kek_id = $2, nonce = $3, ciphertext = $4",
            &[&key, &b.kek_id, &b.nonce, &b.ciphertext],
        )
        .map(|_| ())
    }

    fn put_sealed_meta_if_absent(&self, key: &str, b: &SealedBlob) -> Result<SealedBlob> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO sealed_meta (key, kek_id, nonce, ciphertext) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &b.kek_id, &b.nonce, &b.ciphertext],
            )?;
            let r = tx.query_one(
                "SELECT kek_id, nonce, ciphertext FROM sealed_meta WHERE key = $1",
                &[&key],
            )?;
            Ok(blob(&r, 0))
        })
    }

    fn set_policy(&self, kind: &str, scope: &str, text: &str, now: u64) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO policies (kind, scope, text, updated_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (kind, scope) DO UPDATE SET text = $3, updated_at = $4",
                &[&kind, &scope, &text, &to_i64(now)],
            )?;
            tx.execute(BUMP_GENERATION, &[])?;
            Ok(())
        })
    }

    fn list_policies(&self, kind: &str) -> Result<Vec<(String, String)>> {
        Ok(self
            .query(
                "SELECT scope, text FROM policies WHERE kind = $1 ORDER BY scope",
                &[&kind],
            )?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }

    fn set_reference_value(
        &self,
        name: &str,
        value: &serde_json::Value,
        expires_at: u64,
    ) -> Result<()> {
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO reference_values (name, value, expires_at) VALUES ($1, $2, $3)
                 ON CONFLICT (name) DO UPDATE SET value = $2, expires_at = $3",
                &[&name, &value.to_string(), &to_i64(expires_at)],
            )?;
            tx.execute(BUMP_GENERATION, &[])?;
            Ok(())
        })
    }

    fn list_reference_values(&self) -> Result<Vec<(String, serde_json::Value, u64)>> {
        self.query(
            "SELECT name, value, expires_at FROM reference_values ORDER BY name",
            &[],
        )?
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let v: String = r.get(1);
            let value = serde_json::from_str(&v)
                .map_err(|e| StoreError::Failed(format!("reference value {name}: {e}")))?;
            Ok((name, value, to_u64(r.get(2))))
        })
        .collect()
    }

    fn append_audit(&self, rec: &AuditRecord) -> Result<()> {
        self.append_audit_batch(std::slice::from_ref(rec))
    }

    fn append_audit_batch(&self, recs: &[AuditRecord]) -> Result<()> {
        if recs.is_empty() {
            return Ok(());
        }
        self.tx(|tx| {
            let st = tx.prepare(
                "INSERT INTO audit (ts, kind, subject, decision, reason, details) VALUES ($1, $2, $3, $4, $5, $6)",
            )?;
            for rec in recs {
                tx.execute(
                    &st,
                    &[
                        &to_i64(rec.ts),
                        &rec.kind,
                        &rec.subject,
                        &rec.decision,
                        &rec.reason,
                        &rec.details.to_string(),
                    ],
                )?;
            }
            Ok(())
        })
    }

    fn prune_audit(&self, before: u64) -> Result<u64> {
        self.exec("DELETE FROM audit WHERE ts < $1", &[&to_i64(before)])
    }

    fn query_audit(&self, limit: u32, kind: Option<&str>) -> Result<Vec<AuditRecord>> {
        Ok(self
            .query(
                "SELECT id, ts, kind, subject, decision, reason, details FROM audit
                 WHERE ($1::TEXT IS NULL OR kind = $1) ORDER BY id DESC LIMIT $2",
                &[&kind, &i64::from(limit)],
            )?
            .iter()
            .map(|r| {
                let details: String = r.get(6);
                AuditRecord {
                    id: r.get(0),
                    ts: to_u64(r.get(1)),
                    kind: r.get(2),
                    subject: r.get(3),
                    decision: r.get(4),
                    reason: r.get(5),
                    details: serde_json::from_str(&details).unwrap_or(serde_json::Value::Null),
                }
            })
            .collect())
    }

    fn config_generation(&self) -> Result<i64> {
        Ok(self
            .query("SELECT generation FROM config_generation", &[])?
            .first()
            .map_or(0, |r| r.get(0)))
    }

    fn shared_sessions(&self) -> Option<&dyn SharedSessions> {
        Some(self)
    }

    fn describe(&self) -> String {
        self.desc.clone()
    }
}

fn session(r: &postgres::Row) -> StoredSession {
    StoredSession {
        tee: r.get(0),
        nonce: r.get(1),
        token: r.get(2),
        attest_by: to_u64(r.get(3)),
        expires: to_u64(r.get(4)),
    }
}

fn found(s: StoredSession, now: u64) -> Found {
    let deadline = s.attest_by.min(s.expires);
    if deadline <= now {
        Found::Expired(deadline)
    } else {
        Found::Live(s)
    }
}

const SESSION_COLS: &str = "tee, nonce, token, attest_by, expires";

impl SharedSessions for PgStore {
    fn open(
        &self,
        id: &str,
        s: &StoredSession,
        source: &str,
        per_source: usize,
        max_unattested: usize,
    ) -> Result<u64> {
        let per_source = i64::try_from(per_source.max(1)).unwrap_or(i64::MAX);
        let max_unattested = i64::try_from(max_unattested.max(1)).unwrap_or(i64::MAX);
        self.tx(|tx| {
            tx.execute(
                "INSERT INTO sessions (id, tee, nonce, token, source, attest_by, expires)
                 VALUES ($1, $2, $3, NULL, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET tee = $2, nonce = $3, token = NULL, source = $4,
                     attest_by = $5, expires = $6, seq = nextval('sessions_seq_seq')",
                &[
                    &id,
                    &s.tee,
                    &s.nonce,
                    &source,
                    &to_i64(s.attest_by),
                    &to_i64(s.expires),
                ],
            )?;
            let own = tx.execute(
                "DELETE FROM sessions WHERE id IN (
                     SELECT id FROM sessions WHERE token IS NULL AND source = $1
                     ORDER BY seq DESC OFFSET $2)",
                &[&source, &per_source],
            )?;
            let all = tx.execute(
                "DELETE FROM sessions WHERE id IN (
                     SELECT id FROM sessions WHERE token IS NULL
                     ORDER BY seq DESC OFFSET $1)",
                &[&max_unattested],
            )?;
            Ok(own + all)
        })
    }

    fn get(&self, id: &str, now: u64) -> Result<Found> {
        let rows = self.query(
            &format!("SELECT {SESSION_COLS} FROM sessions WHERE id = $1"),
            &[&id],
        )?;
        let Some(r) = rows.first() else {
            return Ok(Found::Missing);
        };
        let f = found(session(r), now);
        if matches!(f, Found::Expired(_)) {
            self.exec(
                "DELETE FROM sessions WHERE id = $1 AND LEAST(attest_by, expires) <= $2",
                &[&id, &to_i64(now)],
            )?;
        }
        Ok(f)
    }

    fn take_for_attest(&self, id: &str, now: u64) -> Result<Found> {
        let taken = self.query(
            &format!(
                "DELETE FROM sessions WHERE id = $1 AND token IS NULL RETURNING {SESSION_COLS}"
            ),
            &[&id],
        )?;
        if let Some(r) = taken.first() {
            return Ok(found(session(r), now));
        }
        self.get(id, now)
    }

    fn attested(&self, id: &str, s: &StoredSession, max_attested: usize, now: u64) -> Result<bool> {
        let max = i64::try_from(max_attested).unwrap_or(i64::MAX);
        self.tx(|tx| {
            let live: i64 = tx
                .query_one(
                    "SELECT count(*) FROM sessions WHERE token IS NOT NULL AND expires > $1 AND id <> $2",
                    &[&to_i64(now), &id],
                )?
                .get(0);
            if live >= max {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO sessions (id, tee, nonce, token, source, attest_by, expires)
                 VALUES ($1, $2, $3, $4, '', $5, $5)
                 ON CONFLICT (id) DO UPDATE SET tee = $2, nonce = $3, token = $4, source = '',
                     attest_by = $5, expires = $5",
                &[&id, &s.tee, &s.nonce, &s.token, &to_i64(s.expires)],
            )?;
            Ok(true)
        })
    }

    fn reissue(&self, id: &str, token: &str, now: u64) -> Result<bool> {
        self.exec(
            "UPDATE sessions SET token = $2 WHERE id = $1 AND token IS NOT NULL AND expires > $3",
            &[&id, &token, &to_i64(now)],
        )
        .map(|n| n > 0)
    }

    fn first_use(&self, key: &str, until: u64, now: u64) -> Result<bool> {
        self.exec(
            "INSERT INTO used_once (key, until) VALUES ($1, $2)
             ON CONFLICT (key) DO UPDATE SET until = EXCLUDED.until WHERE used_once.until <= $3",
            &[&key, &to_i64(until), &to_i64(now)],
        )
        .map(|n| n == 1)
    }

    fn purge(&self, now: u64) -> Result<u64> {
        let n = self.exec(
            "DELETE FROM sessions WHERE LEAST(attest_by, expires) <= $1",
            &[&to_i64(now)],
        )?;
        Ok(n + self.exec("DELETE FROM used_once WHERE until <= $1", &[&to_i64(now)])?)
    }

    fn counts(&self, source: &str) -> Result<(u64, u64, u64)> {
        let r = self.query(
            "SELECT count(*), count(*) FILTER (WHERE token IS NULL),
                    count(*) FILTER (WHERE token IS NULL AND source = $1) FROM sessions",
            &[&source],
        )?;
        let get = |i: usize| r.first().map_or(0, |r| to_u64(r.get::<_, i64>(i)));
        Ok((get(0), get(1), get(2)))
    }
}
