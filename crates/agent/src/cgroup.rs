//! Container resources: each container's own cgroup v2 in the VM sandbox,
//! usage from `/proc` in the process sandbox.
//!
//! In a VM the agent is PID 1 and owns the guest's cgroup2 hierarchy
//! (mounted by [`crate::vm`]): container `ID` gets `/sys/fs/cgroup/veil/ID`
//! with the limits the policy allowed (`memory.max`, `cpu.max`,
//! `cpu.weight`, `pids.max`, and `memory.oom.group` so that an OOM kill
//! takes the whole container, as Kubernetes does), its launcher joins it
//! before exec (so the workload never runs outside it), and `stats_container`
//! reads it back. The process sandbox runs on the host's cgroups, which the
//! agent neither owns nor touches: it applies no limits, says so once in
//! `create_container`'s warnings, and sums usage over the container's
//! processes from `/proc`.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use veil_agent_api::resources::{MemoryEvents, ResourceUsage, Resources};

/// Largest cgroup or `/proc` file read (they are a few hundred bytes).
const MAX_FILE_BYTES: u64 = 64 * 1024;
/// Most lines of a flat-keyed file considered.
const MAX_LINES: usize = 256;
/// Most `/proc` entries scanned for a process sandbox's usage.
const MAX_PROC_ENTRIES: usize = 65_536;
/// The controllers every container cgroup gets.
const CONTROLLERS: &str = "+cpu +memory +pids";

/// Why a cgroup file could not be read as what it should hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("line {line}: expected \"KEY VALUE\", got {text:?}")]
    Line { line: usize, text: String },
    #[error("{0:?} is not an unsigned number")]
    Number(String),
    #[error("more than {MAX_LINES} lines")]
    TooLong,
}

/// A single unsigned number (`memory.current`, `pids.current`).
pub fn parse_u64(text: &str) -> Result<u64, ParseError> {
    let t = text.trim();
    t.parse()
        .map_err(|_| ParseError::Number(t.chars().take(64).collect()))
}

/// A limit file (`memory.max`, `pids.max`): `max` is no limit.
pub fn parse_max(text: &str) -> Result<Option<u64>, ParseError> {
    match text.trim() {
        "max" => Ok(None),
        t => parse_u64(t).map(Some),
    }
}

/// A flat-keyed file (`memory.events`, `cpu.stat`): `KEY VALUE` lines.
pub fn parse_flat_keyed(text: &str) -> Result<BTreeMap<String, u64>, ParseError> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if i >= MAX_LINES {
            return Err(ParseError::TooLong);
        }
        if line.trim().is_empty() {
            continue;
        }
        let mut parts = line.split_ascii_whitespace();
        let (Some(k), Some(v), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(ParseError::Line {
                line: i + 1,
                text: line.chars().take(64).collect(),
            });
        };
        out.insert(k.to_string(), parse_u64(v)?);
    }
    Ok(out)
}

fn read_bounded(path: &Path) -> Result<String, String> {
    let f = fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut s = String::new();
    f.take(MAX_FILE_BYTES)
        .read_to_string(&mut s)
        .map_err(|e| format!("reading {}: {e}", path.display()))?;
    Ok(s)
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    fs::write(path, value).map_err(|e| format!("writing {value:?} to {}: {e}", path.display()))
}

/// Where containers' cgroups live, when the agent owns a cgroup2 tree.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// The cgroup2 mount (`/sys/fs/cgroup`).
    root: PathBuf,
}

impl Cgroups {
    /// The guest's hierarchy (VM sandbox).
    pub fn guest() -> Self {
        Cgroups {
            root: PathBuf::from("/sys/fs/cgroup"),
        }
    }

    /// The container's cgroup with `res` applied. `id` is a checked
    /// container id (`veil_agent_api` allows no `/` or leading `.`).
    pub fn create(&self, id: &str, res: &Resources) -> Result<ContainerCgroup, String> {
        let ctx = |e: String| format!("setting up the cgroup of container {id}: {e}");
        let parent = self.root.join("veil");
        if !parent.is_dir() {
            write(&self.root.join("cgroup.subtree_control"), CONTROLLERS).map_err(ctx)?;
            match fs::create_dir(&parent) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ctx(format!("creating {}: {e}", parent.display()))),
            }
            write(&parent.join("cgroup.subtree_control"), CONTROLLERS).map_err(ctx)?;
        }
        let dir = parent.join(id);
        fs::create_dir(&dir).map_err(|e| ctx(format!("creating {}: {e}", dir.display())))?;
        let cg = ContainerCgroup { dir };
        if let Err(e) = cg.apply(res) {
            cg.remove();
            return Err(ctx(e));
        }
        Ok(cg)
    }
}

/// One container's cgroup (VM sandbox).
#[derive(Debug, Clone)]
pub struct ContainerCgroup {
    dir: PathBuf,
}

impl ContainerCgroup {
    fn apply(&self, r: &Resources) -> Result<(), String> {
        if let Some(m) = r.memory_max {
            write(&self.dir.join("memory.max"), &m.to_string())?;
            // No swap in the guest, but say so: the limit is the limit.
            let _ = write(&self.dir.join("memory.swap.max"), "0");
        }
        // One process killed out of memory kills the container, as the
        // kubelet asks of runc on cgroup v2.
        write(&self.dir.join("memory.oom.group"), "1")?;
        if let (Some(q), Some(p)) = (r.cpu_quota, r.cpu_period) {
            write(&self.dir.join("cpu.max"), &format!("{q} {p}"))?;
        }
        if let Some(w) = r.cpu_weight {
            write(&self.dir.join("cpu.weight"), &w.to_string())?;
        }
        if let Some(p) = r.pids_max {
            write(&self.dir.join("pids.max"), &p.to_string())?;
        }
        Ok(())
    }

    /// `cgroup.procs`, for a launcher to join before exec (see
    /// [`join_in_pre_exec`]).
    pub fn procs_path(&self) -> Result<CString, String> {
        CString::new(self.dir.join("cgroup.procs").as_os_str().as_bytes())
            .map_err(|_| format!("cgroup path {} has a NUL byte", self.dir.display()))
    }

    /// What the cgroup reports.
    pub fn usage(&self) -> Result<ResourceUsage, String> {
        let read = |name: &str| read_bounded(&self.dir.join(name));
        let bad = |name: &str, e: ParseError| format!("{}/{name}: {e}", self.dir.display());
        let num = |name: &str| -> Result<u64, String> {
            parse_u64(&read(name)?).map_err(|e| bad(name, e))
        };
        let max = |name: &str| -> Result<Option<u64>, String> {
            parse_max(&read(name)?).map_err(|e| bad(name, e))
        };
        let events =
            parse_flat_keyed(&read("memory.events")?).map_err(|e| bad("memory.events", e))?;
        let cpu = parse_flat_keyed(&read("cpu.stat")?).map_err(|e| bad("cpu.stat", e))?;
        let ev = |k: &str| events.get(k).copied().unwrap_or(0);
        let c = |k: &str| cpu.get(k).copied().unwrap_or(0);
        let memory_current = num("memory.current")?;
        Ok(ResourceUsage {
            source: "cgroup".into(),
            enforced: true,
            memory_current,
            // memory.peak: Linux ≥ 5.19.
            memory_peak: num("memory.peak").unwrap_or(0).max(memory_current),
            memory_max: max("memory.max")?,
            memory_events: MemoryEvents {
                low: ev("low"),
                high: ev("high"),
                max: ev("max"),
                oom: ev("oom"),
                oom_kill: ev("oom_kill"),
                oom_group_kill: ev("oom_group_kill"),
            },
            cpu_usage_usec: c("usage_usec"),
            cpu_user_usec: c("user_usec"),
            cpu_system_usec: c("system_usec"),
            cpu_nr_periods: c("nr_periods"),
            cpu_nr_throttled: c("nr_throttled"),
            cpu_throttled_usec: c("throttled_usec"),
            pids_current: num("pids.current")?,
            pids_max: max("pids.max")?,
        })
    }

    /// Remove the cgroup (once its processes are gone; a cgroup with
    /// processes cannot be removed, and is left).
    pub fn remove(&self) {
        // Whatever is left in it (Linux ≥ 5.14), then wait for the kernel
        // to let go of the dying tasks.
        let _ = write(&self.dir.join("cgroup.kill"), "1");
        let mut last = None;
        for _ in 0..100 {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return,
                Err(e) => last = Some(e),
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        if let Some(e) = last {
            tracing::warn!(dir = %self.dir.display(), error = %e, "removing a container cgroup");
        }
    }
}

/// Move the calling process into the cgroup whose `cgroup.procs` is
/// `procs`. Only async-signal-safe calls: for `pre_exec`, between fork and
/// exec of a launcher, so the workload never runs outside its cgroup.
pub fn join_in_pre_exec(procs: &CString) -> std::io::Result<()> {
    // SAFETY: open/write/close on a valid NUL-terminated path and a local buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let r = libc::write(fd, b"0".as_ptr().cast(), 1);
        let err = std::io::Error::last_os_error();
        libc::close(fd);
        if r != 1 {
            return Err(err);
        }
    }
    Ok(())
}

/// The `/proc/PID/stat` fields after the command: (ppid, utime + stime in
/// clock ticks). The command may hold spaces and parentheses: it ends at
/// the last `)`.
pub fn parse_proc_stat(text: &str) -> Option<(u32, u64)> {
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_ascii_whitespace().take(13).collect();
    // After the command: state(0) ppid(1) … utime(11) stime(12).
    let ppid = f.get(1)?.parse().ok()?;
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some((ppid, utime.saturating_add(stime)))
}

/// `VmRSS` of a `/proc/PID/status`, in bytes.
pub fn parse_rss(status: &str) -> Option<u64> {
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kb.saturating_mul(1024))
}

/// Usage summed over `root` and its descendants from `/proc` (process
/// sandbox: no cgroup of the agent's own; nothing is enforced).
pub fn proc_usage(root: u32) -> ResourceUsage {
    let mut parent: BTreeMap<u32, (u32, u64)> = BTreeMap::new();
    if let Ok(rd) = fs::read_dir("/proc") {
        for e in rd.flatten().take(MAX_PROC_ENTRIES) {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(v) = read_bounded(&e.path().join("stat"))
                .ok()
                .and_then(|s| parse_proc_stat(&s))
            {
                parent.insert(pid, v);
            }
        }
    }
    let mut members = vec![root];
    let mut i = 0;
    while i < members.len() {
        let p = members[i];
        members.extend(
            parent
                .iter()
                .filter(|(_, (pp, _))| *pp == p)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut u = ResourceUsage {
        source: "proc".into(),
        enforced: false,
        ..Default::default()
    };
    for pid in members {
        let Some((_, ticks)) = parent.get(&pid) else {
            continue;
        };
        u.pids_current += 1;
        u.cpu_usage_usec = u
            .cpu_usage_usec
            .saturating_add(ticks.saturating_mul(1_000_000) / hz);
        if let Some(rss) = read_bounded(&PathBuf::from(format!("/proc/{pid}/status")))
            .ok()
            .and_then(|s| parse_rss(&s))
        {
            u.memory_current = u.memory_current.saturating_add(rss);
        }
    }
    u
}

/// The warning the process sandbox gives, once, for a container that asks
/// for limits.
pub fn not_enforced_warning(id: &str, r: &Resources) -> String {
    let mut asked = Vec::new();
    if let Some(m) = r.memory_max {
        asked.push(format!("memory {m} bytes"));
    }
    if let Some(c) = r.cpu_millis() {
        asked.push(format!("cpu {c}m"));
    }
    if let Some(w) = r.cpu_weight {
        asked.push(format!("cpu weight {w}"));
    }
    if let Some(p) = r.pids_max {
        asked.push(format!("pids {p}"));
    }
    format!(
        "resource limits of container {id} ({}) are not enforced: the process sandbox runs on \
         the host's cgroups, which the agent does not own; usage is reported from /proc. Use the \
         VM sandbox (--sandbox vm) for enforced limits",
        asked.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cgroup_files_as_the_kernel_writes_them() {
        let ev = parse_flat_keyed("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 1\n")
            .unwrap();
        assert_eq!(ev["max"], 12);
        assert_eq!(ev["oom_kill"], 1);
        let cpu = parse_flat_keyed(
            "usage_usec 5312\nuser_usec 2000\nsystem_usec 3312\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\n",
        )
        .unwrap();
        assert_eq!(cpu["usage_usec"], 5312);
        assert_eq!(parse_max("max\n"), Ok(None));
        assert_eq!(parse_max("16777216\n"), Ok(Some(16 << 20)));
        assert_eq!(parse_u64("4096\n"), Ok(4096));
        assert!(matches!(
            parse_flat_keyed("oom_kill\n"),
            Err(ParseError::Line { line: 1, .. })
        ));
        assert!(matches!(
            parse_flat_keyed("a 1 2\n"),
            Err(ParseError::Line { .. })
        ));
        assert!(matches!(
            parse_flat_keyed("a -1\n"),
            Err(ParseError::Number(_))
        ));
        assert!(parse_max("-1").is_err());
    }

    #[test]
    fn proc_files_with_awkward_commands() {
        let stat =
            "42 (a) b (c)) S 7 42 42 0 -1 4194560 100 0 0 0 250 150 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_proc_stat(stat), Some((7, 400)));
        assert_eq!(parse_proc_stat("garbage"), None);
        assert_eq!(
            parse_rss("Name:\tsh\nVmRSS:\t    1234 kB\n"),
            Some(1234 * 1024)
        );
        assert_eq!(parse_rss("Name:\tkthread\n"), None);
    }

    #[test]
    fn the_process_sandbox_reports_its_own_processes_and_enforces_nothing() {
        let u = proc_usage(std::process::id());
        assert_eq!(u.source, "proc");
        assert!(!u.enforced);
        assert!(u.pids_current >= 1);
        assert!(u.memory_current > 0, "this test process uses memory");
        u.check().unwrap();
        let w = not_enforced_warning(
            "c1",
            &Resources {
                memory_max: Some(64 << 20),
                ..Default::default()
            },
        );
        assert!(
            w.contains("memory 67108864 bytes") && w.contains("not enforced"),
            "{w}"
        );
    }

    proptest! {
        /// Guest kernel output, but bounded and never trusted to be well
        /// formed: arbitrary text never panics a parser.
        #[test]
        fn arbitrary_cgroup_text_never_panics(s in "\\PC{0,300}") {
            let _ = parse_flat_keyed(&s);
            let _ = parse_max(&s);
            let _ = parse_u64(&s);
            let _ = parse_proc_stat(&s);
            let _ = parse_rss(&s);
        }

        #[test]
        fn flat_keyed_round_trips(m in proptest::collection::btree_map("[a-z_]{1,16}", any::<u64>(), 0..20)) {
            let text: String = m.iter().map(|(k, v)| format!("{k} {v}\n")).collect();
            prop_assert_eq!(parse_flat_keyed(&text).unwrap(), m);
        }
    }
}
