//! Harnesses that several veil crates' integration tests share: real
//! services on free 127.0.0.1 ports, stopped when dropped — Debian's
//! `docker-registry` ([`registry::DockerRegistry`]) and `veil kbs serve`
//! ([`kbs::DevKbs`]).
//!
//! Dev-only: used as a `[dev-dependencies]` path entry, never published.
//! Not for helpers that only one test file needs.

pub mod kbs;
pub mod registry;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago (the OS picked it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("no free port on 127.0.0.1: {e}"))
}

/// Poll `ready` every `every` until it holds; panic with "`what` did not
/// start" once `timeout` has passed.
pub fn wait_until(what: &str, timeout: Duration, every: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(every);
    }
}

/// Run `cmd`, panicking with the command and its output unless it succeeds.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
