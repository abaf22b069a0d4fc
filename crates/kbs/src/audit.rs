//! The audit log's write side, off the request path: one writer thread
//! takes records from a bounded queue and commits them in batches (one
//! transaction, one sync, for however many records arrived meanwhile).
//!
//! - Decisions that release or change something (a token issued, a
//!   resource released, an admin change) are written **durably with the
//!   answer**: the request waits until the batch holding its row is
//!   committed, so no answer leaves the KBS without its row on disk, and
//!   concurrent requests share one sync (group commit).
//! - Refusals are what an unauthenticated client can make the KBS produce
//!   at will, so they are rate-limited per source and kind: the first
//!   [`AuditLimits::refusal_rows`] refusals of a source in each
//!   [`AuditLimits::window`] are stored as they are, the others only
//!   counted, and at the end of the window one summary row
//!   (`decision = "deny-summary"`) says how many were not stored, from
//!   which source, between which times, with the last reason. Refusal rows
//!   never wait for the disk; if the queue is full they are counted in
//!   that summary too.
//! - Rows older than [`AuditLimits::retention`] are deleted, hourly.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::source::SourceKey;
use crate::state::now;
use crate::store::{AuditRecord, Store, StoreError};
use crate::text::escape_controls;

/// Audit volume and retention.
#[derive(Clone, Debug)]
pub struct AuditLimits {
    /// Refusals stored row by row per source and kind in each window.
    pub refusal_rows: u32,
    /// The rate-limit window (and how often summary rows are written).
    pub window: Duration,
    /// Rows older than this are deleted; zero keeps them forever.
    pub retention: Duration,
    /// Records queued for the writer at most.
    pub queue: usize,
    /// Sources tracked separately per window; past it, refusals from new
    /// sources are counted together under the source "other".
    pub tracked_sources: usize,
}

impl Default for AuditLimits {
    fn default() -> Self {
        AuditLimits {
            refusal_rows: 10,
            window: Duration::from_secs(60),
            retention: Duration::from_secs(90 * 24 * 3600),
            queue: 8192,
            tracked_sources: 4096,
        }
    }
}

/// How often old rows are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Records committed in one transaction at most.
const BATCH: usize = 512;

type Ack = SyncSender<Result<(), StoreError>>;

enum Job {
    Write(AuditRecord, Option<Ack>),
    /// Write the pending summaries now and acknowledge (tests, shutdown).
    Flush(Ack),
    /// Acknowledge once everything queued before is committed.
    Sync(Ack),
}

#[derive(Default)]
struct Bucket {
    stored: u32,
    suppressed: u64,
    first_ts: u64,
    last_ts: u64,
    last_reason: String,
}

#[derive(Default)]
struct Window {
    buckets: HashMap<(String, &'static str), Bucket>,
}

/// The audit log: queue, rate limiter and writer thread.
pub struct AuditLog {
    tx: Mutex<Option<SyncSender<Job>>>,
    window: Arc<Mutex<Window>>,
    limits: AuditLimits,
    suppressed: AtomicU64,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

fn clip(s: &str, n: usize) -> String {
    escape_controls(&s.chars().take(n).collect::<String>())
}

/// A record with its free text escaped and clipped (see
/// [`crate::text::escape_controls`]).
pub fn record(
    kind: &str,
    subject: &str,
    decision: &str,
    reason: &str,
    details: serde_json::Value,
) -> AuditRecord {
    AuditRecord {
        id: 0,
        ts: now(),
        kind: kind.into(),
        subject: clip(subject, 256),
        decision: decision.into(),
        reason: clip(reason, 2048),
        details: crate::text::escape_json(details),
    }
}

impl AuditLog {
    /// Start the writer thread over `store`.
    pub fn start(store: Arc<dyn Store>, limits: AuditLimits) -> Self {
        let (tx, rx) = sync_channel(limits.queue.max(1));
        let window = Arc::new(Mutex::new(Window::default()));
        let w = window.clone();
        let l = limits.clone();
        let writer = std::thread::Builder::new()
            .name("veil-kbs-audit".into())
            .spawn(move || writer(store, rx, w, l))
            .ok();
        if writer.is_none() {
            tracing::error!(
                "could not start the audit writer thread: audit rows are written inline"
            );
        }
        AuditLog {
            tx: Mutex::new(writer.is_some().then_some(tx)),
            window,
            limits,
            suppressed: AtomicU64::new(0),
            writer: Mutex::new(writer),
        }
    }

    fn sender(&self) -> Option<SyncSender<Job>> {
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Write `rec` and return once it is committed (group commit with
    /// whatever else is queued). Blocks: call it off the async workers.
    pub fn durable(&self, rec: AuditRecord) -> Result<(), StoreError> {
        self.call(|ack| Job::Write(rec, Some(ack)))
    }

    /// Record a refusal from `source`: stored as a row while the source is
    /// within its allowance for this window, otherwise only counted into
    /// the window's summary row. Never blocks.
    pub fn refusal(&self, source: &SourceKey, kind: &'static str, subject: &str, reason: &str) {
        let ts = now();
        let (key, store_row) = {
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let mut key = (source.to_string(), kind);
            if !w.buckets.contains_key(&key) && w.buckets.len() >= self.limits.tracked_sources {
                key.0 = "other".into();
            }
            let b = w.buckets.entry(key.clone()).or_default();
            if b.first_ts == 0 {
                b.first_ts = ts;
            }
            b.last_ts = ts;
            if b.stored < self.limits.refusal_rows {
                b.stored += 1;
                (key, true)
            } else {
                b.suppressed += 1;
                b.last_reason = clip(reason, 512);
                (key, false)
            }
        };
        if !store_row {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let rec = record(
            kind,
            subject,
            "deny",
            reason,
            serde_json::json!({"source": source.to_string()}),
        );
        let sent = self
            .sender()
            .is_some_and(|tx| tx.try_send(Job::Write(rec, None)).is_ok());
        if !sent {
            // Queue full: counted in the summary instead.
            let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
            let b = w.buckets.entry(key).or_default();
            if b.first_ts == 0 {
                b.first_ts = ts;
            }
            b.last_ts = ts;
            b.stored = b.stored.saturating_sub(1);
            b.suppressed += 1;
            b.last_reason = clip(reason, 512);
            self.suppressed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Refusals counted but not stored row by row, since start.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(Ordering::Relaxed)
    }

    /// Write the current window's summary rows now and wait for them.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.call(Job::Flush)
    }

    /// Wait until every record queued so far is committed (a reader of the
    /// log then sees every refusal made before it asked).
    pub fn sync(&self) -> Result<(), StoreError> {
        self.call(Job::Sync)
    }

    fn call(&self, job: impl FnOnce(Ack) -> Job) -> Result<(), StoreError> {
        let Some(tx) = self.sender() else {
            return Err(StoreError::Failed("the audit writer is not running".into()));
        };
        let (ack, done) = sync_channel(1);
        tx.send(job(ack))
            .map_err(|_| StoreError::Failed("the audit writer stopped".into()))?;
        done.recv()
            .map_err(|_| StoreError::Failed("the audit writer stopped".into()))?
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.flush();
        self.tx.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

/// The summary rows of a finished window (and a fresh window).
fn summaries(window: &Mutex<Window>, limits: &AuditLimits) -> Vec<AuditRecord> {
    let buckets = std::mem::take(&mut window.lock().unwrap_or_else(|p| p.into_inner()).buckets);
    let mut out: Vec<AuditRecord> = buckets
        .into_iter()
        .filter(|(_, b)| b.suppressed > 0)
        .map(|((source, kind), b)| AuditRecord {
            id: 0,
            ts: b.last_ts,
            kind: kind.to_string(),
            subject: source.clone(),
            decision: "deny-summary".into(),
            reason: format!(
                "{} more refusals from {source} not stored one by one (the first {} of each {}s window are); last: {}",
                b.suppressed,
                limits.refusal_rows,
                limits.window.as_secs(),
                b.last_reason
            ),
            details: serde_json::json!({
                "source": source, "suppressed": b.suppressed, "stored": b.stored,
                "from": b.first_ts, "to": b.last_ts,
            }),
        })
        .collect();
    out.sort_by(|a, b| (a.ts, &a.subject).cmp(&(b.ts, &b.subject)));
    out
}

fn commit(store: &dyn Store, batch: &[AuditRecord]) -> Result<(), StoreError> {
    if batch.is_empty() {
        return Ok(());
    }
    store.append_audit_batch(batch).inspect_err(|e| {
        tracing::error!(error = %escape_controls(&e.to_string()), rows = batch.len(), "audit write failed");
    })
}

fn prune(store: &dyn Store, limits: &AuditLimits) {
    if limits.retention.is_zero() {
        return;
    }
    let before = now().saturating_sub(limits.retention.as_secs());
    match store.prune_audit(before) {
        Ok(0) => {}
        Ok(n) => tracing::info!(rows = n, before, "audit rows past retention deleted"),
        Err(e) => tracing::error!(error = %escape_controls(&e.to_string()), "audit retention"),
    }
}

fn take(j: Job, batch: &mut Vec<AuditRecord>, acks: &mut Vec<Ack>, flushes: &mut Vec<Ack>) {
    match j {
        Job::Write(rec, ack) => {
            batch.push(rec);
            acks.extend(ack);
        }
        Job::Flush(ack) => flushes.push(ack),
        Job::Sync(ack) => acks.push(ack),
    }
}

fn writer(
    store: Arc<dyn Store>,
    rx: Receiver<Job>,
    window: Arc<Mutex<Window>>,
    limits: AuditLimits,
) {
    let mut next_summary = Instant::now() + limits.window;
    prune(store.as_ref(), &limits);
    let mut next_prune = Instant::now() + PRUNE_EVERY;
    loop {
        let wait = next_summary.saturating_duration_since(Instant::now());
        let first = match rx.recv_timeout(wait) {
            Ok(j) => Some(j),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let mut batch = Vec::new();
        let mut acks: Vec<Ack> = Vec::new();
        let mut flushes: Vec<Ack> = Vec::new();
        if let Some(j) = first {
            take(j, &mut batch, &mut acks, &mut flushes);
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(j) => take(j, &mut batch, &mut acks, &mut flushes),
                    Err(_) => break,
                }
            }
        }
        if !flushes.is_empty() || Instant::now() >= next_summary {
            batch.extend(summaries(&window, &limits));
            next_summary = Instant::now() + limits.window;
        }
        let r = commit(store.as_ref(), &batch);
        for a in acks.into_iter().chain(flushes) {
            let _ = a.send(r.clone());
        }
        if Instant::now() >= next_prune {
            prune(store.as_ref(), &limits);
            next_prune = Instant::now() + PRUNE_EVERY;
        }
    }
    let _ = commit(store.as_ref(), &summaries(&window, &limits));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;

    fn log(dir: &std::path::Path, limits: AuditLimits) -> (Arc<dyn Store>, AuditLog) {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir).unwrap());
        let log = AuditLog::start(store.clone(), limits);
        (store, log)
    }

    #[test]
    fn refusals_past_the_allowance_are_counted_into_one_summary_row() {
        let dir = tempfile::tempdir().unwrap();
        let (store, log) = log(dir.path(), AuditLimits::default());
        let flooder = SourceKey::V4([10, 0, 0, 9]);
        let other = SourceKey::V4([10, 0, 0, 1]);
        for i in 0..5000 {
            log.refusal(&flooder, "resource", "a/b/c", &format!("bad token {i}"));
        }
        log.refusal(&other, "resource", "a/b/c", "bad token");
        log.durable(record(
            "resource",
            "a/b/c",
            "allow",
            "released",
            serde_json::json!({}),
        ))
        .unwrap();
        log.flush().unwrap();
        let rows = store.query_audit(10_000, None).unwrap();
        let verbatim = rows
            .iter()
            .filter(|r| r.decision == "deny" && r.details["source"] == "10.0.0.9")
            .count();
        assert_eq!(verbatim, 10);
        let summary: Vec<_> = rows
            .iter()
            .filter(|r| r.decision == "deny-summary")
            .collect();
        assert_eq!(summary.len(), 1, "{summary:?}");
        assert_eq!(summary[0].subject, "10.0.0.9");
        assert_eq!(summary[0].details["suppressed"], 4990);
        assert!(
            summary[0]
                .reason
                .contains("4990 more refusals from 10.0.0.9")
                && summary[0].reason.contains("bad token 4999")
        );
        // The other source and the release are stored as they are.
        assert!(
            rows.iter()
                .any(|r| r.decision == "deny" && r.details["source"] == "10.0.0.1")
        );
        assert!(rows.iter().any(|r| r.decision == "allow"));
        assert_eq!(rows.len(), 13);
        assert_eq!(log.suppressed(), 4990);
    }

    #[test]
    fn rows_past_retention_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            let mut old = record("admin", "x", "ok", "old", serde_json::json!({}));
            old.ts = now() - 100 * 24 * 3600;
            store.append_audit_batch(&[old.clone(), old]).unwrap();
            store
                .append_audit(&record("admin", "x", "ok", "new", serde_json::json!({})))
                .unwrap();
        }
        // The writer prunes when it starts (and hourly).
        let (store, log) = log(dir.path(), AuditLimits::default());
        log.sync().unwrap();
        let rows = store.query_audit(100, None).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].reason, "new");
        drop(log);
        // Zero retention keeps everything.
        let (store, log) = log_keep(dir.path());
        let mut old = record("admin", "x", "ok", "old", serde_json::json!({}));
        old.ts = 1;
        store.append_audit(&old).unwrap();
        log.sync().unwrap();
        assert_eq!(store.query_audit(100, None).unwrap().len(), 2);
    }

    fn log_keep(dir: &std::path::Path) -> (Arc<dyn Store>, AuditLog) {
        log(
            dir,
            AuditLimits {
                retention: Duration::ZERO,
                ..Default::default()
            },
        )
    }
}
