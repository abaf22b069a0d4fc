//! Prometheus counters (text exposition format at `/metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Request outcome counters.
#[derive(Default)]
pub struct Metrics {
    /// `/auth` calls that issued a challenge.
    pub auth_ok: AtomicU64,
    /// `/auth` calls refused.
    pub auth_refused: AtomicU64,
    /// Tokens issued.
    pub attest_ok: AtomicU64,
    /// Attestations refused.
    pub attest_refused: AtomicU64,
    /// Resources released.
    pub resource_released: AtomicU64,
    /// Resource requests refused.
    pub resource_refused: AtomicU64,
    /// Admin calls accepted.
    pub admin_ok: AtomicU64,
    /// Admin calls refused.
    pub admin_refused: AtomicU64,
}

impl Metrics {
    /// Increment a counter.
    pub fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Render the exposition text; `sessions` is the current session count.
    pub fn render(&self, sessions: usize) -> String {
        let mut s = String::new();
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut counter = |name: &str, help: &str, rows: &[(&str, u64)]| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in rows {
                let _ = writeln!(s, "{name}{labels} {v}");
            }
        };
        counter(
            "veil_kbs_auth_total",
            "RCAR /auth requests.",
            &[
                ("{result=\"ok\"}", g(&self.auth_ok)),
                ("{result=\"refused\"}", g(&self.auth_refused)),
            ],
        );
        counter(
            "veil_kbs_attest_total",
            "RCAR /attest requests.",
            &[
                ("{result=\"ok\"}", g(&self.attest_ok)),
                ("{result=\"refused\"}", g(&self.attest_refused)),
            ],
        );
        counter(
            "veil_kbs_resource_total",
            "Resource requests.",
            &[
                ("{result=\"released\"}", g(&self.resource_released)),
                ("{result=\"refused\"}", g(&self.resource_refused)),
            ],
        );
        counter(
            "veil_kbs_admin_total",
            "Admin API requests.",
            &[
                ("{result=\"ok\"}", g(&self.admin_ok)),
                ("{result=\"refused\"}", g(&self.admin_refused)),
            ],
        );
        let _ = writeln!(
            s,
            "# HELP veil_kbs_sessions Open RCAR sessions.\n# TYPE veil_kbs_sessions gauge\nveil_kbs_sessions {sessions}"
        );
        s
    }
}
