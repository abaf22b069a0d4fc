//! Harnesses that several veil crates' integration tests share: real
//! services on free 127.0.0.1 ports, stopped when dropped — Debian's
//! `docker-registry` ([`registry::DockerRegistry`]), a private containerd
//! ([`containerd::Containerd`]; with the `cri` feature, its CRI plugin
//! and a CRI client acting as the kubelet: [`cri::CriNode`]), PostgreSQL
//! ([`postgres::Postgres`]) and `veil kbs serve`
//! ([`kbs::DevKbs`]) — the `veil-agent` binary ([`veil_agent`]) and the
//! guest image VM tests boot ([`guest::shared`]).
//!
//! Dev-only: used as a `[dev-dependencies]` path entry, never published.
//! Not for helpers that only one test file needs.

pub mod containerd;
#[cfg(feature = "cri")]
pub mod cri;
pub mod guest;
pub mod kbs;
pub mod postgres;
pub mod registry;

use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The `veil-agent` binary end-to-end tests run: `$VEIL_AGENT` (what
/// `scripts/test.sh` built), else built once per test process by cargo into
/// the target dir the calling test binary lives in.
pub fn veil_agent() -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("VEIL_AGENT") {
                return p.into();
            }
            // Test binaries live in <target>/<profile>/deps.
            let exe = std::env::current_exe().expect("the test binary's path");
            let profile = exe
                .parent()
                .and_then(std::path::Path::parent)
                .expect("<target>/<profile>/deps/<test>")
                .to_path_buf();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            run_ok(
                Command::new(cargo)
                    .args(["build", "-q", "-p", "veil-agent", "--bin", "veil-agent"])
                    .env("CARGO_TARGET_DIR", profile.parent().expect("<target>")),
            );
            let bin = profile.join("veil-agent");
            assert!(bin.exists(), "{} missing after cargo build", bin.display());
            bin
        })
        .clone()
}

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
