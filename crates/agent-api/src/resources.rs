//! Container resources on the wire: the limits the host asks for in
//! `create_container` ([`Resources`], checked here for range and by the
//! policy for bounds) and what `stats_container` reports
//! ([`ResourceUsage`], checked here by the host before it uses it).
//!
//! In the VM sandbox the agent applies the limits to the container's own
//! cgroup v2 (`memory.max`, `cpu.max`, `cpu.weight`, `pids.max`) and reads
//! the usage from it; the process sandbox cannot (the host owns the
//! cgroups), so it reports usage from `/proc` and says the limits are not
//! enforced ([`ResourceUsage::enforced`]).

use serde::{Deserialize, Serialize};

/// Smallest memory limit the agent applies (the kernel rounds to pages; a
/// limit below this kills any workload before it starts).
pub const MIN_MEMORY_BYTES: u64 = 1 << 20;
/// Largest memory limit (1 PiB; larger means no limit, say so with `None`).
pub const MAX_MEMORY_BYTES: u64 = 1 << 50;
/// `cpu.max` period bounds, in microseconds (the kernel's).
pub const CPU_PERIOD_RANGE: std::ops::RangeInclusive<u64> = 1_000..=1_000_000;
/// Smallest `cpu.max` quota, in microseconds (the kernel's).
pub const MIN_CPU_QUOTA: u64 = 1_000;
/// Largest `cpu.max` quota: 1024 CPUs' worth of the longest period.
pub const MAX_CPU_QUOTA: u64 = 1024 * 1_000_000;
/// `cpu.weight` bounds (the kernel's).
pub const CPU_WEIGHT_RANGE: std::ops::RangeInclusive<u64> = 1..=10_000;
/// Largest `pids.max` (the kernel's `PID_MAX_LIMIT`).
pub const MAX_PIDS: u64 = 4 * 1024 * 1024;
/// The period used when a limit is given in CPUs (Kubernetes' and runc's default).
pub const DEFAULT_CPU_PERIOD: u64 = 100_000;

/// The limits the host asks the agent to apply to one container (the OCI
/// spec's `linux.resources`, as containerd and `veil run --pod` derive them
/// from the pod's `resources`). `None`: no limit of that kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// `memory.max`, bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// `cpu.max` quota, microseconds per `cpu_period` (needs `cpu_period`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_quota: Option<u64>,
    /// `cpu.max` period, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_period: Option<u64>,
    /// `cpu.weight` (1..=10000; containerd's CPU shares converted as runc does).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u64>,
    /// `pids.max`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids_max: Option<u64>,
}

fn out_of(field: &str, v: u64, range: impl std::fmt::Display) -> Result<(), String> {
    Err(format!("resources.{field}: {v} is not in {range}"))
}

impl Resources {
    /// Whether nothing is limited.
    pub fn is_empty(&self) -> bool {
        self == &Resources::default()
    }

    /// Range checks (the policy checks the bounds): a refusal names the
    /// field, the value and the range.
    pub fn check(&self) -> Result<(), String> {
        if let Some(m) = self.memory_max {
            if !(MIN_MEMORY_BYTES..=MAX_MEMORY_BYTES).contains(&m) {
                return out_of(
                    "memory_max",
                    m,
                    format!("{MIN_MEMORY_BYTES}..={MAX_MEMORY_BYTES} bytes"),
                );
            }
        }
        match (self.cpu_quota, self.cpu_period) {
            (Some(q), Some(p)) => {
                if !CPU_PERIOD_RANGE.contains(&p) {
                    return out_of("cpu_period", p, "1000..=1000000 µs");
                }
                if !(MIN_CPU_QUOTA..=MAX_CPU_QUOTA).contains(&q) {
                    return out_of(
                        "cpu_quota",
                        q,
                        format!("{MIN_CPU_QUOTA}..={MAX_CPU_QUOTA} µs"),
                    );
                }
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err("resources.cpu_quota is given without cpu_period".into());
            }
            (None, Some(_)) => {
                return Err("resources.cpu_period is given without cpu_quota".into());
            }
        }
        if let Some(w) = self.cpu_weight {
            if !CPU_WEIGHT_RANGE.contains(&w) {
                return out_of("cpu_weight", w, "1..=10000");
            }
        }
        if let Some(p) = self.pids_max {
            if !(1..=MAX_PIDS).contains(&p) {
                return out_of("pids_max", p, format!("1..={MAX_PIDS}"));
            }
        }
        Ok(())
    }

    /// The CPU limit in thousandths of a CPU (Kubernetes' millicores),
    /// rounded up; `None` without a quota.
    pub fn cpu_millis(&self) -> Option<u64> {
        let (q, p) = (self.cpu_quota?, self.cpu_period?);
        if p == 0 {
            return None;
        }
        Some(q.saturating_mul(1000).div_ceil(p))
    }
}

/// containerd's CPU shares (cgroup v1, 2..=262144) as a cgroup v2
/// `cpu.weight`, the conversion runc and crun use.
pub fn weight_of_shares(shares: u64) -> u64 {
    let s = shares.clamp(2, 262_144);
    1 + ((s - 2) * 9_999) / 262_142
}

/// What `stats_container` reports about a container's resources.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceUsage {
    /// `cgroup` (the container's cgroup v2, VM sandbox) or `proc` (summed
    /// over the container's processes from `/proc`, process sandbox).
    pub source: String,
    /// Whether the requested limits are applied (false in the process
    /// sandbox: the host owns the cgroups there).
    pub enforced: bool,
    /// Memory in use, bytes (`memory.current`; RSS in the process sandbox).
    pub memory_current: u64,
    /// Highest memory use seen, bytes (`memory.peak`), when known.
    #[serde(default)]
    pub memory_peak: u64,
    /// `memory.max`; `None`: no limit.
    #[serde(default)]
    pub memory_max: Option<u64>,
    /// `memory.events`.
    #[serde(default)]
    pub memory_events: MemoryEvents,
    /// CPU time, microseconds (`cpu.stat`).
    pub cpu_usage_usec: u64,
    #[serde(default)]
    pub cpu_user_usec: u64,
    #[serde(default)]
    pub cpu_system_usec: u64,
    #[serde(default)]
    pub cpu_nr_periods: u64,
    #[serde(default)]
    pub cpu_nr_throttled: u64,
    #[serde(default)]
    pub cpu_throttled_usec: u64,
    /// Tasks in the container (`pids.current`; processes in the process sandbox).
    pub pids_current: u64,
    /// `pids.max`; `None`: no limit.
    #[serde(default)]
    pub pids_max: Option<u64>,
}

/// The counters of `memory.events`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryEvents {
    #[serde(default)]
    pub low: u64,
    #[serde(default)]
    pub high: u64,
    #[serde(default)]
    pub max: u64,
    #[serde(default)]
    pub oom: u64,
    /// Processes the OOM killer killed in this container.
    #[serde(default)]
    pub oom_kill: u64,
    #[serde(default)]
    pub oom_group_kill: u64,
}

/// The largest figure the host believes (2^62): anything above is a
/// guest that lies or is broken.
pub const MAX_FIGURE: u64 = 1 << 62;

impl ResourceUsage {
    /// The checks the host makes before using an agent's figures (they
    /// reach containerd, the kubelet and the user): a known source, every
    /// figure within [`MAX_FIGURE`], peak not below current usage when both
    /// are known, the limits within the request ranges.
    pub fn check(&self) -> Result<(), String> {
        if self.source != "cgroup" && self.source != "proc" {
            return Err(format!(
                "resources.source: {:?} is neither \"cgroup\" nor \"proc\"",
                self.source
            ));
        }
        let e = &self.memory_events;
        let figures = [
            ("memory_current", self.memory_current),
            ("memory_peak", self.memory_peak),
            ("memory_max", self.memory_max.unwrap_or(0)),
            ("memory_events.low", e.low),
            ("memory_events.high", e.high),
            ("memory_events.max", e.max),
            ("memory_events.oom", e.oom),
            ("memory_events.oom_kill", e.oom_kill),
            ("memory_events.oom_group_kill", e.oom_group_kill),
            ("cpu_usage_usec", self.cpu_usage_usec),
            ("cpu_user_usec", self.cpu_user_usec),
            ("cpu_system_usec", self.cpu_system_usec),
            ("cpu_nr_periods", self.cpu_nr_periods),
            ("cpu_nr_throttled", self.cpu_nr_throttled),
            ("cpu_throttled_usec", self.cpu_throttled_usec),
            ("pids_current", self.pids_current),
            ("pids_max", self.pids_max.unwrap_or(0)),
        ];
        for (name, v) in figures {
            if v > MAX_FIGURE {
                return Err(format!(
                    "resources.{name}: {v} is larger than any real figure ({MAX_FIGURE})"
                ));
            }
        }
        if self.memory_peak != 0 && self.memory_peak < self.memory_current {
            return Err(format!(
                "resources.memory_peak: {} is below memory_current {}",
                self.memory_peak, self.memory_current
            ));
        }
        Ok(())
    }

    /// Whether the OOM killer killed a process of this container.
    pub fn oom_killed(&self) -> bool {
        self.memory_events.oom_kill > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn limits_out_of_the_kernels_ranges_are_refused_by_name() {
        let ok = Resources {
            memory_max: Some(64 << 20),
            cpu_quota: Some(50_000),
            cpu_period: Some(100_000),
            cpu_weight: Some(100),
            pids_max: Some(100),
        };
        ok.check().unwrap();
        assert_eq!(ok.cpu_millis(), Some(500));
        let e = Resources {
            memory_max: Some(4096),
            ..ok.clone()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("resources.memory_max: 4096"), "{e}");
        let e = Resources {
            cpu_period: None,
            ..ok.clone()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("cpu_quota is given without cpu_period"), "{e}");
        let e = Resources {
            cpu_weight: Some(0),
            ..ok.clone()
        }
        .check()
        .unwrap_err();
        assert!(e.contains("cpu_weight: 0"), "{e}");
        let e = Resources {
            pids_max: Some(0),
            ..ok
        }
        .check()
        .unwrap_err();
        assert!(e.contains("pids_max: 0"), "{e}");
    }

    #[test]
    fn shares_convert_to_weights_as_runc_does() {
        assert_eq!(weight_of_shares(2), 1);
        assert_eq!(weight_of_shares(1024), 39);
        assert_eq!(weight_of_shares(262_144), 10_000);
        assert_eq!(weight_of_shares(0), 1);
        assert_eq!(weight_of_shares(u64::MAX), 10_000);
    }

    #[test]
    fn usage_the_host_cannot_believe_is_refused() {
        let good = ResourceUsage {
            source: "cgroup".into(),
            enforced: true,
            memory_current: 10,
            memory_peak: 20,
            cpu_usage_usec: 1,
            pids_current: 1,
            ..Default::default()
        };
        good.check().unwrap();
        let e = ResourceUsage {
            source: "x\u{1b}[2J".into(),
            ..good.clone()
        }
        .check()
        .unwrap_err();
        assert!(!e.contains('\u{1b}'), "control characters escaped: {e}");
        let e = ResourceUsage {
            memory_peak: 5,
            ..good.clone()
        }
        .check()
        .unwrap_err();
        assert!(
            e.contains("memory_peak: 5 is below memory_current 10"),
            "{e}"
        );
        let e = ResourceUsage {
            cpu_usage_usec: u64::MAX,
            ..good
        }
        .check()
        .unwrap_err();
        assert!(e.contains("cpu_usage_usec"), "{e}");
    }

    proptest! {
        /// The agent's answer is untrusted input on the host: arbitrary
        /// bytes never panic the decoder or the checks, and what passes
        /// has every figure within bounds.
        #[test]
        fn arbitrary_usage_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(u) = serde_json::from_slice::<ResourceUsage>(&bytes) {
                if u.check().is_ok() {
                    prop_assert!(u.memory_current <= MAX_FIGURE && u.cpu_usage_usec <= MAX_FIGURE);
                }
            }
        }

        #[test]
        fn arbitrary_usage_values_check_without_panicking(
            cur in any::<u64>(), peak in any::<u64>(), max in proptest::option::of(any::<u64>()),
            kills in any::<u64>(), cpu in any::<u64>(), pids in any::<u64>(),
        ) {
            let u = ResourceUsage {
                source: "cgroup".into(),
                enforced: true,
                memory_current: cur,
                memory_peak: peak,
                memory_max: max,
                memory_events: MemoryEvents { oom_kill: kills, ..Default::default() },
                cpu_usage_usec: cpu,
                pids_current: pids,
                ..Default::default()
            };
            let ok = u.check().is_ok();
            let expect = [cur, peak, max.unwrap_or(0), kills, cpu, pids].iter().all(|v| *v <= MAX_FIGURE)
                && (peak == 0 || peak >= cur);
            prop_assert_eq!(ok, expect);
        }

        #[test]
        fn arbitrary_limits_check_without_panicking(
            m in proptest::option::of(any::<u64>()), q in proptest::option::of(any::<u64>()),
            p in proptest::option::of(any::<u64>()), w in proptest::option::of(any::<u64>()),
            n in proptest::option::of(any::<u64>()),
        ) {
            let r = Resources { memory_max: m, cpu_quota: q, cpu_period: p, cpu_weight: w, pids_max: n };
            if r.check().is_ok() {
                prop_assert!(r.cpu_millis().is_none_or(|c| c <= 1024 * 1000 * 1000));
            }
        }
    }
}
