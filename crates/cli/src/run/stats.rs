//! `veil stats ID`: each container's resource usage and limits, live from
//! the agent while the sandbox runs, else as last seen (at exit) from the
//! record.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use veil_agent_api::resources::ResourceUsage;
use veil_runtime::pod::record::Record;

/// `veil stats`.
#[derive(Args, Debug)]
pub struct StatsArgs {
    /// Sandbox id (or unique prefix, or name).
    pub id: String,
    /// JSON output (snake_case keys).
    #[arg(long)]
    pub json: bool,
}

/// Usage of each container, by policy name: live when the sandbox runs.
pub(super) fn usage_of(rec: &Record) -> Result<(BTreeMap<String, ResourceUsage>, bool)> {
    if rec.effective_status() != "running" {
        return Ok((rec.resources.clone(), false));
    }
    let (_, _, mut c) = super::connect(&rec.id)?;
    let mut out = BTreeMap::new();
    for (cid, name) in &rec.containers {
        let s = c
            .stats(cid)
            .map_err(|e| anyhow::anyhow!("stats_container {name}: {e}"))?;
        if let Some(u) = s.resources {
            out.insert(name.clone(), u);
        }
    }
    Ok((out, true))
}

fn mib(b: u64) -> String {
    format!("{:.1}MiB", b as f64 / (1024.0 * 1024.0))
}

fn limit(v: Option<u64>, f: impl Fn(u64) -> String) -> String {
    v.map_or("-".into(), f)
}

/// The table `veil stats` prints.
pub(super) fn table(usage: &BTreeMap<String, ResourceUsage>, oom: &[String]) -> String {
    let mut out = format!(
        "{:<20} {:>10} {:>10} {:>10} {:>10} {:>6} {:>6} {:>5}  NOTE\n",
        "CONTAINER", "MEM", "PEAK", "LIMIT", "CPU", "PIDS", "LIMIT", "OOM"
    );
    for (name, u) in usage {
        let mut note = Vec::new();
        if oom.contains(name) || u.oom_killed() {
            note.push("OOMKilled".to_string());
        }
        if !u.enforced {
            note.push("limits not enforced (process sandbox)".to_string());
        }
        out.push_str(&format!(
            "{:<20} {:>10} {:>10} {:>10} {:>9.2}s {:>6} {:>6} {:>5}  {}\n",
            name,
            mib(u.memory_current),
            if u.memory_peak > 0 {
                mib(u.memory_peak)
            } else {
                "-".into()
            },
            limit(u.memory_max, mib),
            u.cpu_usage_usec as f64 / 1e6,
            u.pids_current,
            limit(u.pids_max, |p| p.to_string()),
            u.memory_events.oom_kill,
            note.join("; ")
        ));
    }
    out
}

/// `veil stats ID [--json]`.
pub fn stats(a: StatsArgs) -> Result<ExitCode> {
    let data = super::data_dir()?;
    let rec = Record::find(&data, &a.id)?;
    let (usage, live) = usage_of(&rec)?;
    let text = if a.json {
        serde_json::to_string_pretty(&serde_json::json!({
            "id": rec.id,
            "live": live,
            "oom_killed": rec.oom_killed,
            "containers": usage,
        }))? + "\n"
    } else if usage.is_empty() {
        format!(
            "{}: no resource usage recorded (the containers have not started, or the sandbox \
             stopped before veil read it)\n",
            rec.id
        )
    } else {
        table(&usage, &rec.oom_killed)
    };
    super::println_or_pipe(text.trim_end())?;
    Ok(ExitCode::SUCCESS)
}
