//! `veil logs [-f] [--tail N] [-c CONTAINER] [--timestamps]`.
//!
//! Besides the raw `output.log`, a run writes `output.jsonl`: one object per
//! output line, `{"time", "container", "stream", "line"}`, appended in the
//! order the lines reached veil (one file, one lock: stdout and stderr keep
//! their relative order as received). `veil logs` reads it back, filters,
//! prefixes lines with their container when the sandbox has several, and
//! with `-f` follows it until the sandbox stops.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use veil_agent_api::Stream;

/// The per-line log file in a sandbox's dir.
pub const LINES_FILE: &str = "output.jsonl";

/// Longest line kept whole in `output.jsonl`; longer output is split.
const MAX_LINE_BYTES: usize = 64 * 1024;

/// `veil logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Sandbox id (or unique prefix, or name).
    pub id: String,
    /// Keep printing new output until the sandbox stops.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long, value_name = "N")]
    pub tail: Option<usize>,
    /// Only this container's output (policy name).
    #[arg(short, long, value_name = "CONTAINER")]
    pub container: Option<String>,
    /// Start each line with the time veil received it (RFC 3339, UTC).
    #[arg(short, long)]
    pub timestamps: bool,
}

/// One line of output as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub time: String,
    pub container: String,
    pub stream: String,
    pub line: String,
}

/// Unterminated output per (container, is stdout).
type Partial = BTreeMap<(String, bool), Vec<u8>>;

/// Splits output chunks into lines per (container, stream) and appends them
/// to `output.jsonl`.
pub struct LineLog {
    inner: Mutex<(std::fs::File, Partial)>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl LineLog {
    /// Append to `dir/output.jsonl`.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(LINES_FILE))?;
        Ok(LineLog {
            inner: Mutex::new((f, BTreeMap::new())),
        })
    }

    fn emit(f: &mut std::fs::File, container: &str, stream: Stream, bytes: &[u8]) {
        let l = Line {
            time: now_rfc3339(),
            container: container.into(),
            stream: match stream {
                Stream::Stdout => "stdout",
                Stream::Stderr => "stderr",
            }
            .into(),
            line: String::from_utf8_lossy(bytes).into_owned(),
        };
        if let Ok(mut j) = serde_json::to_vec(&l) {
            j.push(b'\n');
            let _ = f.write_all(&j);
        }
    }

    /// Record a chunk of a container's stream (complete lines now, the rest
    /// when its line ends or at [`LineLog::flush`]).
    pub fn write(&self, container: &str, stream: Stream, bytes: &[u8]) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let (f, partial) = &mut *g;
        let buf = partial
            .entry((container.to_string(), stream == Stream::Stdout))
            .or_default();
        buf.extend_from_slice(bytes);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            Self::emit(f, container, stream, &line[..line.len() - 1]);
        }
        if buf.len() > MAX_LINE_BYTES {
            let line: Vec<u8> = std::mem::take(buf);
            Self::emit(f, container, stream, &line);
        }
    }

    /// Record what is left of unterminated lines.
    pub fn flush(&self) {
        let Ok(mut g) = self.inner.lock() else {
            return;
        };
        let (f, partial) = &mut *g;
        for ((c, out), buf) in std::mem::take(partial) {
            if !buf.is_empty() {
                let s = if out { Stream::Stdout } else { Stream::Stderr };
                Self::emit(f, &c, s, &buf);
            }
        }
    }
}

/// Lines as `veil logs` prints them: container prefix when `prefix`,
/// timestamps when asked; the workload's bytes as it wrote them (as
/// `docker logs` and the unfiltered `veil logs` do).
pub fn format_line(l: &Line, prefix: bool, timestamps: bool) -> String {
    let mut s = String::new();
    if timestamps {
        s.push_str(&l.time);
        s.push(' ');
    }
    if prefix {
        s.push_str(&format!("[{}] ", l.container));
    }
    s.push_str(&l.line);
    s.push('\n');
    s
}

/// Print the recorded lines of `dir` that pass the filters; with `follow`,
/// keep printing new ones while `running()` says so. `several`: the
/// sandbox has more than one container (lines get their prefix).
pub fn print(
    dir: &Path,
    a: &LogsArgs,
    several: bool,
    running: impl Fn() -> bool,
) -> anyhow::Result<()> {
    let path = dir.join(LINES_FILE);
    let mut f = std::fs::File::open(&path)?;
    let prefix = several && a.container.is_none();
    let keep = |l: &Line| a.container.as_ref().is_none_or(|c| *c == l.container);
    let mut text = String::new();
    f.read_to_string(&mut text)?;
    let mut pending = String::new();
    let (complete, rest) = match text.rfind('\n') {
        Some(i) => text.split_at(i + 1),
        None => ("", text.as_str()),
    };
    pending.push_str(rest);
    let mut lines: Vec<Line> = complete
        .lines()
        .filter_map(|l| serde_json::from_str::<Line>(l).ok())
        .filter(|l| keep(l))
        .collect();
    if let Some(n) = a.tail {
        let skip = lines.len().saturating_sub(n);
        lines.drain(..skip);
    }
    let show = |ls: &[Line]| -> anyhow::Result<()> {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for l in ls {
            let s = format_line(l, prefix, a.timestamps);
            let r = if l.stream == "stderr" {
                err.write_all(s.as_bytes())
            } else {
                out.write_all(s.as_bytes()).and_then(|_| out.flush())
            };
            if let Err(e) = r {
                if e.kind() == std::io::ErrorKind::BrokenPipe {
                    return Ok(());
                }
                return Err(e.into());
            }
        }
        Ok(())
    };
    show(&lines)?;
    if !a.follow {
        return Ok(());
    }
    let mut pos = f.stream_position()?;
    loop {
        let alive = running();
        let mut more = String::new();
        f.seek(SeekFrom::Start(pos))?;
        f.read_to_string(&mut more)?;
        pos += more.len() as u64;
        pending.push_str(&more);
        if let Some(i) = pending.rfind('\n') {
            let complete: String = pending.drain(..=i).collect();
            let new: Vec<Line> = complete
                .lines()
                .filter_map(|l| serde_json::from_str::<Line>(l).ok())
                .filter(|l| keep(l))
                .collect();
            show(&new)?;
        }
        if !alive {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_become_ordered_lines_per_container_and_stream() {
        let d = tempfile::tempdir().unwrap();
        let log = LineLog::open(d.path()).unwrap();
        log.write("web", Stream::Stdout, b"one\ntw");
        log.write("db", Stream::Stderr, b"oops\n");
        log.write("web", Stream::Stdout, b"o\nthree");
        log.flush();
        let text = std::fs::read_to_string(d.path().join(LINES_FILE)).unwrap();
        let lines: Vec<Line> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let got: Vec<(&str, &str, &str)> = lines
            .iter()
            .map(|l| (l.container.as_str(), l.stream.as_str(), l.line.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("web", "stdout", "one"),
                ("db", "stderr", "oops"),
                ("web", "stdout", "two"),
                ("web", "stdout", "three"),
            ]
        );
        assert!(lines[0].time.ends_with('Z'), "{}", lines[0].time);
        let s = format_line(&lines[1], true, false);
        assert_eq!(s, "[db] oops\n");
        let s = format_line(&lines[0], false, true);
        assert_eq!(s, format!("{} one\n", lines[0].time));
    }
}
