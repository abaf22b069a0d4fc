//! Start-up (data dir, store, KEK check, signing key, policies) and the
//! connection loop: rustls (ring) TLS by default, plain HTTP only on
//! loopback; HTTP/1.1 with header-read timeouts, bounded header buffers and
//! a cap on concurrent connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::connections::{ConnectionLimits, Connections};
use crate::session::Sessions;
use crate::source::SourceKey;
use crate::state::{AppState, AttestationPolicy, ServerConfig};
use crate::store::Store;
use crate::store::postgres::PgStore;
use crate::store::sqlite::SqliteStore;
use crate::token::TokenSigner;

/// Time allowed for a client to send its request headers (and the TLS handshake).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Listen backlog (the kernel caps it at `net.core.somaxconn`).
pub const ACCEPT_BACKLOG: u32 = 4096;
/// Largest request head accepted (cookies + Bearer token).
pub const MAX_HEAD_BYTES: usize = 128 * 1024;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct StartError(pub String);

/// Open the data dir and build the shared state.
pub fn build_state(cfg: ServerConfig) -> Result<Arc<AppState>, StartError> {
    std::fs::create_dir_all(&cfg.data_dir)
        .map_err(|e| StartError(format!("creating data dir {}: {e}", cfg.data_dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&cfg.data_dir, std::fs::Permissions::from_mode(0o700));
    }
    let lock = crate::datadir::DataDirLock::for_server(&cfg.data_dir)
        .map_err(|e| StartError(e.to_string()))?;
    let (store, replica_lock) = open_store(&cfg)?;
    let ids = store.kek_ids().map_err(|e| StartError(e.to_string()))?;
    if let Some(other) = ids.iter().find(|id| *id != cfg.kek.id()) {
        return Err(StartError(format!(
            "the data dir holds secrets sealed under KEK id {other}, but the given KEK has id {}: pass the right KEK, or rotate with `veil kbs rotate-kek`",
            cfg.kek.id()
        )));
    }
    let signer = TokenSigner::load_or_create(store.as_ref(), &cfg.kek).map_err(StartError)?;
    let default_policy =
        crate::appraisal::compile(crate::appraisal::DEFAULT_POLICY).map_err(StartError)?;
    let connections = Connections::new(ConnectionLimits {
        max: cfg.max_connections,
        per_source: cfg.max_connections_per_source,
    });
    let audit_log = crate::audit::AuditLog::start(store.clone(), cfg.audit_limits());
    let admin_jtis = crate::admin_auth::ReplayCache::for_store(&store);
    let state = AppState {
        sessions: Sessions::for_store(cfg.session_limits(), &store, cfg.kek.clone()),
        cfg,
        store,
        signer,
        attestation_policy: RwLock::new(Arc::new(AttestationPolicy {
            id: "default".into(),
            policy: default_policy,
        })),
        resource_policies: RwLock::new(Arc::new(BTreeMap::new())),
        reference_values: RwLock::new(Arc::new(serde_json::Map::new())),
        metrics: Default::default(),
        connections,
        audit_log,
        release_pin: RwLock::new(None),
        admin_jtis,
        _data_dir_lock: lock,
        _replica_lock: replica_lock,
    };
    state.reload().map_err(StartError)?;
    Ok(Arc::new(state))
}

/// The store `cfg` names: PostgreSQL for `store_url` (with this replica's
/// share of the KEK lock), else SQLite in the data dir.
fn open_store(
    cfg: &ServerConfig,
) -> Result<(Arc<dyn Store>, Option<crate::store::postgres::ReplicaLock>), StartError> {
    Ok(match &cfg.store_url {
        Some(url) => {
            let tls = crate::store::postgres::PgTls::from_ca_file(cfg.store_ca.as_deref())
                .map_err(|e| StartError(e.to_string()))?;
            let pg = PgStore::open_with(url, &tls)
                .map_err(|e| StartError(format!("opening the store given by --store: {e}")))?;
            let lock = pg
                .hold_replica_lock()
                .map_err(|e| StartError(e.to_string()))?;
            (Arc::new(pg), Some(lock))
        }
        None if cfg.store_ca.is_some() => {
            return Err(StartError(
                "--store-ca is for a PostgreSQL store (--store postgres://…); the SQLite store is local".into(),
            ));
        }
        None => (
            Arc::new(SqliteStore::open(&cfg.data_dir).map_err(|e| StartError(e.to_string()))?),
            None,
        ),
    })
}

/// How often a replica on a shared store checks whether another replica
/// changed a policy or reference value.
pub const RELOAD_EVERY: Duration = Duration::from_secs(1);

/// One pass of the maintenance loop: drop expired sessions; on a shared
/// store, reload policies and reference values when their generation
/// moved past `seen`.
fn maintain(st: &AppState, seen: &mut Option<i64>, purge: bool) {
    if purge {
        if let Err(e) = st.sessions.purge(crate::state::now()) {
            tracing::warn!(error = %crate::text::escape_controls(&e.to_string()), "purging expired sessions");
        }
    }
    if !st.sessions.is_shared() {
        return;
    }
    match st.store.config_generation() {
        Ok(g) if *seen == Some(g) => {}
        Ok(g) => match st.reload() {
            Ok(()) => *seen = Some(g),
            Err(e) => {
                tracing::warn!(error = %crate::text::escape_controls(&e), "reloading policies")
            }
        },
        Err(e) => {
            tracing::debug!(error = %crate::text::escape_controls(&e.to_string()), "reading the configuration generation")
        }
    }
}

fn tls_acceptor(cfg: &ServerConfig) -> Result<Option<tokio_rustls::TlsAcceptor>, StartError> {
    let Some(files) = &cfg.tls else {
        if !cfg.listen.ip().is_loopback() {
            return Err(StartError(format!(
                "refusing plain HTTP on {}: cookies and tokens would travel in clear; give --tls-cert/--tls-key, or bind a loopback address for development",
                cfg.listen
            )));
        }
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .map_err(|e| StartError(format!("TLS certificate {}: {e}", files.cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| StartError(format!("TLS certificate {}: {e}", files.cert.display())))?;
    if certs.is_empty() {
        return Err(StartError(format!(
            "TLS certificate {} holds no certificate",
            files.cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| StartError(format!("TLS key {}: {e}", files.key.display())))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StartError(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| StartError(format!("TLS certificate/key: {e}")))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Serve on an already-bound listener until `shutdown` fires.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    mut shutdown: oneshot::Receiver<()>,
) {
    let router = crate::api::router(state.clone());
    let purge_state = state.clone();
    let purger = tokio::spawn(async move {
        let mut tick = tokio::time::interval(RELOAD_EVERY);
        // Read on the first pass (store I/O stays off the async workers).
        let mut seen = None;
        let mut n: u64 = 0;
        loop {
            tick.tick().await;
            let st = purge_state.clone();
            let mut s = seen;
            let purge = n % 60 == 0;
            n += 1;
            // Store I/O: off the async workers.
            if let Ok(s2) = tokio::task::spawn_blocking(move || {
                maintain(&st, &mut s, purge);
                s
            })
            .await
            {
                seen = s2;
            }
        }
    });
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let mut admitted = match state.connections.admit(SourceKey::of(peer.ip())) {
            Ok(a) => a,
            Err(why) => {
                // Counted in /metrics; a log line per refusal would be a
                // flood of its own.
                tracing::debug!(%peer, "connection refused: {why}");
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        // The peer address rides in each request's extensions (as axum's
        // `ConnectInfo`): per-source limits count by it.
        let conn_router = router.clone();
        let svc = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let mut r = conn_router.clone();
            tower_service::Service::call(&mut r, req)
        });
        let tls = tls.clone();
        tokio::spawn(async move {
            let shed = std::mem::replace(&mut admitted.shed, oneshot::channel().1);
            let conn = async move {
                let builder = {
                    let mut b = hyper::server::conn::http1::Builder::new();
                    b.timer(TokioTimer::new())
                        .header_read_timeout(HEADER_TIMEOUT)
                        .max_buf_size(MAX_HEAD_BYTES);
                    b
                };
                let result = match tls {
                    Some(acceptor) => {
                        match tokio::time::timeout(HEADER_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(stream)) => {
                                builder.serve_connection(TokioIo::new(stream), svc).await
                            }
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                    None => builder.serve_connection(TokioIo::new(tcp), svc).await,
                };
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %crate::text::escape_controls(&e.to_string()), "connection ended with an error");
                }
            };
            tokio::select! {
                () = conn => {}
                _ = shed => tracing::debug!(%peer, "connection shed to make room for other sources"),
            }
            drop(admitted);
        });
    }
    purger.abort();
}

/// A server running on its own runtime thread.
pub struct RunningServer {
    /// The bound address.
    pub addr: SocketAddr,
    /// Shared state (tests inspect it).
    pub state: Arc<AppState>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Base URL (`http://` or `https://`).
    pub fn url(&self) -> String {
        let scheme = if self.state.cfg.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr)
    }

    /// Stop and wait for the runtime to finish.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    /// Block until the server stops (it stops on `stop` from another
    /// handle, or never: the CLI waits here until killed).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Start a server with `workers` runtime threads; returns once it listens.
pub fn spawn(cfg: ServerConfig, workers: usize) -> Result<RunningServer, StartError> {
    let tls = tls_acceptor(&cfg)?;
    let listen = cfg.listen;
    let state = build_state(cfg)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers.max(1))
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("tokio runtime: {e}")))?;
    // A deep accept queue: during a connection flood the accept loop, not
    // the kernel, decides who gets in (per-source caps, fair shedding).
    let listener = {
        let _rt = rt.enter();
        let socket = if listen.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .map_err(|e| StartError(format!("listener: {e}")))?;
        socket
            .set_reuseaddr(true)
            .map_err(|e| StartError(format!("listener: {e}")))?;
        socket
            .bind(listen)
            .map_err(|e| StartError(format!("binding {listen}: {e}")))?;
        socket
            .listen(ACCEPT_BACKLOG)
            .map_err(|e| StartError(format!("listening on {listen}: {e}")))?
    };
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(format!("listener: {e}")))?;
    let (tx, rx) = oneshot::channel();
    let st = state.clone();
    let thread = std::thread::Builder::new()
        .name("veil-kbs".into())
        .spawn(move || {
            rt.block_on(run(listener, st, tls, rx));
        })
        .map_err(|e| StartError(format!("server thread: {e}")))?;
    Ok(RunningServer {
        addr,
        state,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}
