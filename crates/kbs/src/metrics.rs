//! Prometheus counters (text exposition format at `/metrics`).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A value sampled at render time.
pub struct Gauge {
    /// Metric name.
    pub name: &'static str,
    /// `# HELP` text.
    pub help: &'static str,
    /// `gauge` or `counter`.
    pub kind: &'static str,
    /// The value.
    pub value: u64,
}

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

    /// Render the exposition text: these counters, then `gauges` (name,
    /// help, type, value) sampled by the caller.
    pub fn render(&self, gauges: &[Gauge]) -> String {
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
        for g in gauges {
            let _ = writeln!(
                s,
                "# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}",
                g.name, g.help, g.kind, g.value
            );
        }
        s
    }
}
