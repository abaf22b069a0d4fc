//! `-i` and `-t` of `veil run` and `veil exec`, as docker has them.
//!
//! Without `-i` the container's stdin is at end-of-file (the agent gives
//! it `/dev/null`); with `-i` it stays open and veil forwards its own
//! stdin, closing the container's when its own ends. With `-t` the agent
//! makes a pseudo-terminal inside the container; veil sends the size of
//! its own terminal at start and on every SIGWINCH, and, with `-i` on a
//! terminal, puts that terminal into raw mode (restored on exit) so that
//! keys reach the container as typed. Both are part of the request the
//! agent checks against the policy (`process.stdin`, `process.terminal`;
//! generated policies allow them when the pod's container says `stdin:
//! true` / `tty: true`, which is what `-i`/`-t` put in the generated pod).

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use serde::{Deserialize, Serialize};
use veil_agent_api::{AgentRequest, Process, ResizeTerminalRequest};
use veil_runtime::AgentClient;

/// `-i`, `-t`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct StdioArgs {
    /// Keep the container's stdin open and forward veil's stdin to it
    /// (without -i the container reads end-of-file at once).
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a terminal made inside the container (stdout and
    /// stderr merged, window size follows veil's terminal).
    #[arg(short = 't', long)]
    pub tty: bool,
}

impl StdioArgs {
    /// Ask for what the flags say in a process request.
    pub fn apply(&self, p: &mut Process) {
        p.stdin = self.interactive;
        p.terminal = self.tty;
        p.console_size = if self.tty {
            window_size().map(|(rows, cols)| veil_agent_api::ConsoleSize { rows, cols })
        } else {
            None
        };
    }

    /// The pod YAML lines (under a container) that make a generated policy
    /// allow these flags.
    pub fn pod_yaml(&self) -> String {
        let mut y = String::new();
        if self.interactive {
            y.push_str("    stdin: true\n");
        }
        if self.tty {
            y.push_str("    tty: true\n");
        }
        y
    }
}

/// The size of veil's own terminal (stdin, stdout or stderr), if any.
pub fn window_size() -> Option<(u16, u16)> {
    for fd in [0, 1, 2] {
        // SAFETY: an all-zero winsize is valid; TIOCGWINSZ writes one.
        let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
        // SAFETY: ioctl on a standard descriptor with a valid pointer.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0
            && ws.ws_row > 0
            && ws.ws_col > 0
        {
            return Some((ws.ws_row, ws.ws_col));
        }
    }
    None
}

/// Send veil's window size to a process's terminal (nothing when veil has
/// no terminal). Failures are reported, not fatal: the workload runs on.
pub fn send_window_size(c: &mut AgentClient, container_id: &str, exec_id: &str) {
    let Some((rows, cols)) = window_size() else {
        return;
    };
    if let Err(e) = c.call(AgentRequest::ResizeTerminal(ResizeTerminalRequest {
        container_id: container_id.into(),
        exec_id: exec_id.into(),
        rows,
        cols,
    })) {
        eprintln!("veil: resizing the container's terminal: {e}");
    }
}

/// Forward veil's stdin to a process's stdin on its own connection, until
/// either ends; the end of veil's stdin closes the process's.
pub fn forward_stdin(socket: PathBuf, container_id: String, exec_id: String) {
    std::thread::spawn(move || {
        let Ok(mut c) = AgentClient::connect(&socket, Duration::from_secs(30)) else {
            return;
        };
        let _ = veil_runtime::pod::stdio::forward_stdin(
            &mut c,
            &container_id,
            &exec_id,
            &mut std::io::stdin().lock(),
        );
    });
}

/// veil's terminal in raw mode while it forwards keys to a container's
/// terminal; the previous mode comes back on drop.
pub struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    /// Raw mode on stdin, if stdin is a terminal.
    pub fn enable() -> Option<RawMode> {
        use nix::sys::termios::{SetArg, cfmakeraw, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin).ok()?;
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw).ok()?;
        Some(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        use nix::sys::termios::{SetArg, tcsetattr};
        let _ = tcsetattr(std::io::stdin(), SetArg::TCSANOW, &self.saved);
    }
}

/// Whether veil's stdin is a terminal.
pub fn stdin_is_terminal() -> bool {
    // SAFETY: isatty on a standard descriptor.
    unsafe { libc::isatty(std::io::stdin().as_raw_fd()) == 1 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_become_the_request_and_the_pod_fields_that_allow_it() {
        let a = StdioArgs {
            interactive: true,
            tty: true,
        };
        let mut p = Process::default();
        a.apply(&mut p);
        assert!(p.stdin && p.terminal);
        assert_eq!(a.pod_yaml(), "    stdin: true\n    tty: true\n");
        let mut p = Process::default();
        StdioArgs::default().apply(&mut p);
        assert!(!p.stdin && !p.terminal);
        assert_eq!(StdioArgs::default().pod_yaml(), "");
    }
}
