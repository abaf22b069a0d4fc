//! A container's resource usage as containerd's cgroup v2 `Metrics` (what
//! the Task service's `Stats` returns, and what the CRI turns into the
//! kubelet's container stats).

use containerd_shim_protos as protos;
use protos::cgroups_v2::metrics::{CPUStat, MemoryEvents, MemoryStat, Metrics, PidsStat};
use protos::protobuf::well_known_types::any::Any;
use protos::protobuf::{Message, MessageFull};
use veil_agent_api::resources::ResourceUsage;

/// What containerd reports for "no limit" (`max`), as its cgroup2 manager does.
pub const NO_LIMIT: u64 = u64::MAX;

/// The agent's figures (already checked by veil-runtime) as cgroup v2 `Metrics`.
pub fn cgroup_v2(u: &ResourceUsage) -> Metrics {
    let mut m = Metrics::new();
    let mut pids = PidsStat::new();
    pids.current = u.pids_current;
    pids.limit = u.pids_max.unwrap_or(NO_LIMIT);
    m.pids = Some(pids).into();
    let mut cpu = CPUStat::new();
    cpu.usage_usec = u.cpu_usage_usec;
    cpu.user_usec = u.cpu_user_usec;
    cpu.system_usec = u.cpu_system_usec;
    cpu.nr_periods = u.cpu_nr_periods;
    cpu.nr_throttled = u.cpu_nr_throttled;
    cpu.throttled_usec = u.cpu_throttled_usec;
    m.cpu = Some(cpu).into();
    let mut mem = MemoryStat::new();
    mem.usage = u.memory_current;
    mem.max_usage = u.memory_peak;
    mem.usage_limit = u.memory_max.unwrap_or(NO_LIMIT);
    m.memory = Some(mem).into();
    let e = &u.memory_events;
    let mut ev = MemoryEvents::new();
    ev.low = e.low;
    ev.high = e.high;
    ev.max = e.max;
    ev.oom = e.oom;
    ev.oom_kill = e.oom_kill;
    ev.oom_group_kill = e.oom_group_kill;
    m.memory_events = Some(ev).into();
    m
}

/// `Metrics` packed as the `Any` of a `StatsResponse`: type URL
/// `io.containerd.cgroups.v2.Metrics`, which containerd's typeurl resolves.
pub fn stats_any(u: &ResourceUsage) -> Result<Any, String> {
    let m = cgroup_v2(u);
    let mut any = Any::new();
    any.type_url = Metrics::descriptor().full_name().to_string();
    any.value = m
        .write_to_bytes()
        .map_err(|e| format!("encoding cgroup v2 metrics: {e}"))?;
    Ok(any)
}
