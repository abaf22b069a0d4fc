//! `veil bench kbs --url`: a load generator for any Trustee-protocol KBS
//! (veil's or Trustee's), so the two can be compared with the same client.
//!
//! Two workloads, each at several client counts for a fixed time:
//! - **handshake**: a fresh TEE key and session per operation: `/auth`,
//!   `/attest` with CoCo `sample` evidence, one resource GET and its JWE
//!   decryption;
//! - **get**: each client attests once, then GETs (and decrypts) the
//!   resource over and over with its token, the steady state of an attested
//!   workload.
//!
//! Each row reports operations per second, latency percentiles, and, when
//! the server's PID is given, the server's CPU time per operation (from
//! `/proc/PID/stat`), which is comparable across servers whatever the
//! client costs.

use std::fmt;
use std::time::{Duration, Instant};

use veil_kbs_client::{ClientConfig, KbsClient, KeyType, ResourcePath, TeeKeyPair};

use crate::simguest::SampleGuest;

/// What each operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// auth + attest + GET + decrypt with a fresh key and session.
    Handshake,
    /// GET + decrypt on an attested session (token reused).
    Get,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Workload::Handshake => "handshake",
            Workload::Get => "get",
        })
    }
}

/// Load parameters.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Client configuration (URL, CA, plain HTTP allowed).
    pub client: ClientConfig,
    /// The resource every operation fetches.
    pub resource: ResourcePath,
    /// Client counts, one row per count and workload.
    pub clients: Vec<usize>,
    /// Duration of each row.
    pub duration: Duration,
    /// TEE key type of the clients.
    pub key_type: KeyType,
    /// The server's PID, for its CPU time per operation.
    pub server_pid: Option<u32>,
    /// Workloads to run.
    pub workloads: Vec<Workload>,
}

/// One workload at one client count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadRow {
    /// `handshake` or `get`.
    pub workload: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Operations completed.
    pub ops: usize,
    /// Operations that failed (each counted, none retried).
    pub errors: usize,
    /// Operations per second.
    pub ops_per_s: f64,
    /// Latency percentiles in ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// Server CPU time per operation, ms (with a server PID).
    pub server_cpu_ms_per_op: Option<f64>,
    /// The first error seen, if any.
    pub first_error: Option<String>,
}

/// Server CPU time (user + system) of `pid`.
fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command (which may hold spaces) start after ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = if hz > 0 { hz as u64 } else { 100 };
    Some(Duration::from_nanos(ticks * 1_000_000_000 / hz))
}

fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e3
}

fn handshake(o: &LoadOptions) -> Result<(), String> {
    let key = TeeKeyPair::generate(o.key_type).map_err(|e| e.to_string())?;
    let mut c = KbsClient::new(&o.client, SampleGuest { init_data: None }, key)
        .map_err(|e| e.to_string())?;
    c.attest().map_err(|e| e.to_string())?;
    c.get_resource(&o.resource).map_err(|e| e.to_string())?;
    Ok(())
}

/// Run one workload with `clients` clients for `o.duration`.
pub fn run_row(o: &LoadOptions, workload: Workload, clients: usize) -> Result<LoadRow, String> {
    let clients = clients.max(1);
    // Attested sessions for `get` are made before the clock starts.
    let mut sessions = Vec::new();
    if workload == Workload::Get {
        for _ in 0..clients {
            let key = TeeKeyPair::generate(o.key_type).map_err(|e| e.to_string())?;
            let mut c = KbsClient::new(&o.client, SampleGuest { init_data: None }, key)
                .map_err(|e| e.to_string())?;
            c.attest()
                .map_err(|e| format!("attesting before the get workload: {e}"))?;
            sessions.push(Some(c));
        }
    } else {
        sessions.resize_with(clients, || None);
    }
    let cpu0 = o.server_pid.and_then(cpu_time);
    let start = Instant::now();
    let deadline = start + o.duration;
    let results: Vec<(Vec<Duration>, usize, Option<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = sessions
            .into_iter()
            .map(|mut session| {
                s.spawn(move || {
                    let (mut lat, mut errors, mut first) = (Vec::new(), 0usize, None);
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r = match session.as_mut() {
                            Some(c) => c
                                .get_resource(&o.resource)
                                .map(|_| ())
                                .map_err(|e| e.to_string()),
                            None => handshake(o),
                        };
                        match r {
                            Ok(()) => lat.push(t.elapsed()),
                            Err(e) => {
                                errors += 1;
                                first.get_or_insert(e);
                            }
                        }
                    }
                    (lat, errors, first)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (vec![], 1, Some("client panicked".into())))
            })
            .collect()
    });
    let wall = start.elapsed();
    let cpu1 = o.server_pid.and_then(cpu_time);
    let mut all: Vec<Duration> = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for (lat, e, f) in results {
        all.extend(lat);
        errors += e;
        if first_error.is_none() {
            first_error = f;
        }
    }
    all.sort();
    let ops = all.len();
    Ok(LoadRow {
        workload: workload.to_string(),
        clients,
        ops,
        errors,
        ops_per_s: ops as f64 / wall.as_secs_f64().max(1e-9),
        p50_ms: percentile_ms(&all, 0.50),
        p95_ms: percentile_ms(&all, 0.95),
        p99_ms: percentile_ms(&all, 0.99),
        server_cpu_ms_per_op: match (cpu0, cpu1) {
            (Some(a), Some(b)) if ops > 0 => {
                Some(b.saturating_sub(a).as_secs_f64() * 1e3 / ops as f64)
            }
            _ => None,
        },
        first_error,
    })
}

/// Every workload at every client count, in order.
pub fn run(o: &LoadOptions) -> Result<Vec<LoadRow>, String> {
    // One handshake first: a KBS that refuses sample evidence or the
    // resource says so at once instead of in every row.
    handshake(o).map_err(|e| {
        format!(
            "a first handshake with {} failed: {e} (the KBS must accept `sample` evidence — veil kbs serve --insecure-allow-sample, Trustee's sample verifier — and its resource policy must release {} to it)",
            o.client.url, o.resource
        )
    })?;
    let mut rows = Vec::new();
    for w in &o.workloads {
        for &c in &o.clients {
            rows.push(run_row(o, *w, c)?);
        }
    }
    Ok(rows)
}

/// The rows as a table.
pub fn table(o: &LoadOptions, rows: &[LoadRow]) -> String {
    let mut s = format!(
        "veil bench kbs: {} ({}), sample evidence, {:?} TEE keys, {:.0} s per row\n",
        o.client.url,
        o.resource,
        o.key_type,
        o.duration.as_secs_f64()
    );
    s.push_str(&format!(
        "{:<10} {:>7} {:>8} {:>10} {:>8} {:>8} {:>8} {:>14} {:>7}\n",
        "workload",
        "clients",
        "ops",
        "ops/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "server CPU/op",
        "errors"
    ));
    for r in rows {
        let cpu = r
            .server_cpu_ms_per_op
            .map_or_else(|| "-".to_string(), |c| format!("{c:.3} ms"));
        s.push_str(&format!(
            "{:<10} {:>7} {:>8} {:>10.1} {:>8.2} {:>8.2} {:>8.2} {:>14} {:>7}\n",
            r.workload, r.clients, r.ops, r.ops_per_s, r.p50_ms, r.p95_ms, r.p99_ms, cpu, r.errors
        ));
        if let Some(e) = &r.first_error {
            s.push_str(&format!(
                "  first error: {}\n",
                crate::text::escape_controls(e)
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_cpu_time_is_read_from_proc() {
        let me = std::process::id();
        let a = cpu_time(me).expect("own /proc stat");
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(300) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let b = cpu_time(me).unwrap();
        assert!(b > a, "CPU time did not grow: {a:?} -> {b:?}");
        assert!(cpu_time(u32::MAX).is_none());
    }

    #[test]
    fn percentiles_of_nothing_are_not_numbers() {
        assert!(percentile_ms(&[], 0.5).is_nan());
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&v, 0.99), 99.0);
        assert_eq!(percentile_ms(&v, 0.50), 51.0);
    }
}
