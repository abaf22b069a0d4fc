//! The docker habits of `veil run`: `-e/--env`, `--env-file`,
//! `-w/--workdir`, `-u/--user`, `--entrypoint`, `--hostname`, and the exit
//! codes docker uses (125: veil failed; 126: the command cannot be invoked;
//! 127: not found).
//!
//! With a generated policy the flags go into the pod it is generated from
//! ([`DockerArgs::pod_yaml`]), so the policy pins them (exact env values,
//! working directory, uid/gid, argv) and the agent enforces them. With
//! given init-data the same flags are put into the requests
//! ([`DockerArgs::apply`]) and the agent refuses them, with the policy's
//! explanation, unless its policy allows exactly that.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use veil_agent_api::Process;

/// Exit code: veil itself failed (docker's 125).
pub const EXIT_VEIL_FAILED: u8 = 125;
/// Exit code: the command was found but cannot be invoked (docker's 126).
pub const EXIT_CANNOT_INVOKE: u8 = 126;
/// Exit code: the command was not found (docker's 127).
pub const EXIT_NOT_FOUND: u8 = 127;

/// Largest `--env-file` read.
const MAX_ENV_FILE_BYTES: u64 = 1024 * 1024;

/// `-e`, `--env-file`, `-w`, `-u`, `--entrypoint`, `--hostname`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct DockerArgs {
    /// An environment variable, `NAME=VALUE`, or `NAME` to pass veil's own
    /// value (repeatable; pinned in the generated policy).
    #[arg(short = 'e', long = "env", value_name = "NAME[=VALUE]")]
    pub env: Vec<String>,
    /// Environment variables from a file: `NAME=VALUE` lines (`NAME` alone
    /// passes veil's value; `#` comments and blank lines are skipped).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory of the command (absolute).
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as, `UID[:GID]` (numbers; the image's /etc/passwd is not read).
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Replace the image's entrypoint (the command after `--` becomes its arguments).
    #[arg(long, value_name = "CMD")]
    pub entrypoint: Option<String>,
    /// Host name of the sandbox (default: the pod name).
    #[arg(long, value_name = "NAME")]
    pub hostname: Option<String>,
}

/// A JSON string literal, which is also a valid YAML scalar.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.into()).to_string()
}

/// `NAME[=VALUE]` as `(NAME, VALUE)`; a bare `NAME` takes veil's own value
/// (and is dropped, as docker does, when veil has none).
fn env_entry(raw: &str, what: &str) -> Result<Option<(String, String)>> {
    let (name, value) = match raw.split_once('=') {
        Some((n, v)) => (n.to_string(), Some(v.to_string())),
        None => (raw.to_string(), None),
    };
    if name.is_empty()
        || name.bytes().next().is_some_and(|b| b.is_ascii_digit())
        || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    {
        bail!(
            "{what} {raw:?}: {name:?} is not a variable name ([A-Za-z_][A-Za-z0-9_]*); write NAME=VALUE"
        );
    }
    if value.as_deref().is_some_and(|v| v.contains('\0')) {
        bail!("{what} {name}: the value contains a NUL byte");
    }
    Ok(match value {
        Some(v) => Some((name, v)),
        None => std::env::var(&name).ok().map(|v| (name, v)),
    })
}

/// The numbers of `-u UID[:GID]` (GID defaults to UID's number, as the
/// policy generator would otherwise take the image's).
pub fn parse_user(s: &str) -> Result<(u32, Option<u32>)> {
    let (u, g) = match s.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (s, None),
    };
    let num = |x: &str, what: &str| {
        x.parse::<u32>().map_err(|_| {
            anyhow!(
                "-u {s:?}: the {what} {x:?} is not a number; veil does not read the image's /etc/passwd, so give numeric ids (e.g. -u 1000:1000)"
            )
        })
    };
    Ok((num(u, "user")?, g.map(|g| num(g, "group")).transpose()?))
}

impl DockerArgs {
    /// Every variable of `--env-file` then `-e` (later ones win, as in docker).
    pub fn env_pairs(&self) -> Result<Vec<(String, String)>> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut push = |(n, v): (String, String)| {
            out.retain(|(m, _)| *m != n);
            out.push((n, v));
        };
        for f in &self.env_file {
            let meta =
                std::fs::metadata(f).with_context(|| format!("--env-file {}", f.display()))?;
            if meta.len() > MAX_ENV_FILE_BYTES {
                bail!(
                    "--env-file {}: {} bytes, more than the {MAX_ENV_FILE_BYTES} veil reads",
                    f.display(),
                    meta.len()
                );
            }
            let text = std::fs::read_to_string(f)
                .with_context(|| format!("--env-file {}", f.display()))?;
            for (i, line) in text.lines().enumerate() {
                let line = line.trim_start();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let what = format!("--env-file {} line {}:", f.display(), i + 1);
                if let Some(p) = env_entry(line, &what)? {
                    push(p);
                }
            }
        }
        for e in &self.env {
            if let Some(p) = env_entry(e, "-e")? {
                push(p);
            }
        }
        Ok(out)
    }

    /// Check the flags (before anything starts).
    pub fn check(&self) -> Result<()> {
        self.env_pairs()?;
        if let Some(w) = &self.workdir {
            if !w.starts_with('/') {
                bail!("-w {w:?}: the working directory must be an absolute path");
            }
        }
        if let Some(u) = &self.user {
            parse_user(u)?;
        }
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 63
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
                && !h.starts_with('-');
            if !ok {
                bail!(
                    "--hostname {h:?}: use 1 to 63 letters, digits, '-' and '.', not starting with '-'"
                );
            }
        }
        if self.entrypoint.as_deref() == Some("") {
            bail!("--entrypoint: empty command");
        }
        Ok(())
    }

    /// The pod YAML lines of the container (indented under `- name: app`)
    /// that make a generated policy pin these flags; `command` is the
    /// argv after `--`.
    pub fn pod_yaml(&self, command: &[String]) -> Result<String> {
        let list = |v: &[String]| v.iter().map(|c| quoted(c)).collect::<Vec<_>>().join(", ");
        let mut y = String::new();
        match &self.entrypoint {
            Some(e) => {
                y.push_str(&format!("    command: [{}]\n", quoted(e)));
                y.push_str(&format!("    args: [{}]\n", list(command)));
            }
            None if !command.is_empty() => {
                y.push_str(&format!("    command: [{}]\n", list(command)));
            }
            None => {}
        }
        let env = self.env_pairs()?;
        if !env.is_empty() {
            y.push_str("    env:\n");
            for (n, v) in env {
                y.push_str(&format!(
                    "    - name: {}\n      value: {}\n",
                    quoted(&n),
                    quoted(&v)
                ));
            }
        }
        if let Some(w) = &self.workdir {
            y.push_str(&format!("    workingDir: {}\n", quoted(w)));
        }
        if let Some(u) = &self.user {
            let (uid, gid) = parse_user(u)?;
            y.push_str(&format!(
                "    securityContext:\n      runAsUser: {uid}\n      runAsGroup: {}\n",
                gid.unwrap_or(uid)
            ));
        }
        Ok(y)
    }

    /// Put the flags into a process request built from a policy (for given
    /// init-data: the agent then decides, with the policy's explanation).
    /// Idempotent for a policy generated from these flags.
    pub fn apply(&self, p: &mut Process, command: &[String]) -> Result<()> {
        for (n, v) in self.env_pairs()? {
            let prefix = format!("{n}=");
            p.env.retain(|e| !e.starts_with(&prefix));
            p.env.push(format!("{n}={v}"));
        }
        if let Some(w) = &self.workdir {
            p.cwd = w.clone();
        }
        if let Some(u) = &self.user {
            let (uid, gid) = parse_user(u)?;
            p.user.uid = uid;
            p.user.gid = gid.unwrap_or(uid);
        }
        if let Some(e) = &self.entrypoint {
            p.args = std::iter::once(e.clone())
                .chain(command.iter().cloned())
                .collect();
        }
        Ok(())
    }

    /// Whether any flag that shapes the process is set.
    pub fn any(&self) -> bool {
        !self.env.is_empty()
            || !self.env_file.is_empty()
            || self.workdir.is_some()
            || self.user.is_some()
            || self.entrypoint.is_some()
    }
}

/// The docker exit code for a container that could not start, from the
/// agent's explanation: 127 when the command does not exist, 126 when it
/// cannot be executed, else 125 (veil could not run it).
pub fn start_failure_code(message: &str) -> u8 {
    if message.contains("executable not found") || message.contains("ENOENT") {
        EXIT_NOT_FOUND
    } else if message.contains("EACCES")
        || message.contains("ENOEXEC")
        || message.contains("EISDIR")
        || message.contains("ENOTDIR")
    {
        EXIT_CANNOT_INVOKE
    } else {
        EXIT_VEIL_FAILED
    }
}

/// A failure whose exit code is not veil's generic one: what `veil run`
/// and `veil exec` exit with, docker's way.
#[derive(Debug)]
pub struct ExitWith {
    pub code: u8,
    pub message: String,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> DockerArgs {
        DockerArgs {
            env: vec!["A=1".into(), "B=x=y".into(), "A=2".into()],
            workdir: Some("/srv".into()),
            user: Some("1000:100".into()),
            entrypoint: Some("/bin/echo".into()),
            ..Default::default()
        }
    }

    #[test]
    fn flags_become_pod_fields_the_policy_pins() {
        let y = args().pod_yaml(&["hi".into()]).unwrap();
        assert!(
            y.contains("    command: [\"/bin/echo\"]\n    args: [\"hi\"]\n"),
            "{y}"
        );
        assert!(y.contains("- name: \"A\"\n      value: \"2\"\n"), "{y}");
        assert!(!y.contains("value: \"1\""), "later -e wins: {y}");
        assert!(y.contains("value: \"x=y\""), "{y}");
        assert!(y.contains("workingDir: \"/srv\""), "{y}");
        assert!(
            y.contains("runAsUser: 1000\n      runAsGroup: 100\n"),
            "{y}"
        );
    }

    #[test]
    fn flags_applied_to_a_request() {
        let mut p = Process {
            args: vec!["/app".into()],
            env: vec!["PATH=/bin".into(), "A=0".into()],
            cwd: "/".into(),
            ..Default::default()
        };
        args().apply(&mut p, &["hi".into()]).unwrap();
        assert_eq!(p.args, ["/bin/echo", "hi"]);
        assert_eq!(p.env, ["PATH=/bin", "B=x=y", "A=2"]);
        assert_eq!(
            (p.cwd.as_str(), p.user.uid, p.user.gid),
            ("/srv", 1000, 100)
        );
    }

    #[test]
    fn bad_flags_are_refused_with_how_to_fix() {
        for (a, want) in [
            (
                DockerArgs {
                    env: vec!["1A=x".into()],
                    ..Default::default()
                },
                "not a variable name",
            ),
            (
                DockerArgs {
                    workdir: Some("srv".into()),
                    ..Default::default()
                },
                "absolute",
            ),
            (
                DockerArgs {
                    user: Some("www-data".into()),
                    ..Default::default()
                },
                "numeric ids",
            ),
            (
                DockerArgs {
                    hostname: Some("a b".into()),
                    ..Default::default()
                },
                "--hostname",
            ),
        ] {
            let e = a.check().unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
        }
    }

    #[test]
    fn env_files_skip_comments_and_take_veils_value_for_bare_names() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("env");
        std::fs::write(&f, "# comment\n\nX=1\nPATH\n").unwrap();
        let a = DockerArgs {
            env_file: vec![f],
            ..Default::default()
        };
        let pairs = a.env_pairs().unwrap();
        assert_eq!(pairs[0], ("X".into(), "1".into()));
        assert_eq!(pairs[1].0, "PATH");
        assert_eq!(pairs[1].1, std::env::var("PATH").unwrap());
    }

    #[test]
    fn start_failures_map_to_docker_exit_codes() {
        assert_eq!(
            start_failure_code("\"nosuch\": executable not found in the container's PATH (/bin)"),
            127
        );
        assert_eq!(
            start_failure_code("exec /etc/passwd: EACCES: Permission denied"),
            126
        );
        assert_eq!(start_failure_code("mounting proc: EPERM"), 125);
    }
}
