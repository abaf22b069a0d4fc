//! `veil kbs serve --insecure-http --dev` as a child process, with the
//! files it needs made by the `veil` binary itself.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Make in `dir`, with the `veil` binary at `veil`, what [`DevKbs::serve`]
/// and a sim guest need: `admin.key`/`admin.pub`, `kek.hex` and
/// `sim.key`/`sim.pub`.
pub fn make_keys(veil: &Path, dir: &Path) {
    crate::run_ok(
        Command::new(veil)
            .args(["kbs", "admin-keygen", "--key"])
            .arg(dir.join("admin.key"))
            .arg("--pub")
            .arg(dir.join("admin.pub")),
    );
    crate::run_ok(
        Command::new(veil)
            .args(["kbs", "kek-generate", "--out"])
            .arg(dir.join("kek.hex")),
    );
    crate::run_ok(
        Command::new(veil)
            .args(["attest", "sim-keygen", "--key"])
            .arg(dir.join("sim.key"))
            .arg("--root")
            .arg(dir.join("sim.pub")),
    );
}

/// Whether `GET /healthz` on 127.0.0.1:`port` answers 200.
pub fn healthy(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

/// A running `veil kbs serve --insecure-http --dev` on a free port, with
/// its data in `dir/data` and the files of [`make_keys`]; killed on drop.
pub struct DevKbs {
    child: Child,
    veil: PathBuf,
    dir: PathBuf,
    port: u16,
}

impl DevKbs {
    /// Spawn it and wait (at most 30 s) until `/healthz` answers.
    pub fn serve(veil: &Path, dir: &Path) -> Self {
        Self::serve_with(veil, dir, &[])
    }

    /// [`serve`](Self::serve) with more `veil kbs serve` arguments.
    pub fn serve_with(veil: &Path, dir: &Path, extra: &[&str]) -> Self {
        let port = crate::free_port();
        let child = Command::new(veil)
            .args(["kbs", "serve", "--insecure-http", "--dev"])
            .args(extra)
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--data-dir")
            .arg(dir.join("data"))
            .arg("--kek-file")
            .arg(dir.join("kek.hex"))
            .arg("--admin-pubkey")
            .arg(dir.join("admin.pub"))
            .arg("--sim-root")
            .arg(dir.join("sim.pub"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", veil.display()));
        let kbs = DevKbs {
            child,
            veil: veil.to_path_buf(),
            dir: dir.to_path_buf(),
            port,
        };
        crate::wait_until(
            "KBS",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || healthy(port),
        );
        kbs
    }

    /// The server's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `veil` aimed at this KBS (`VEIL_KBS_URL`) with its admin key
    /// (`VEIL_KBS_ADMIN_KEY`).
    pub fn client(&self) -> Command {
        let mut c = Command::new(&self.veil);
        c.env("VEIL_KBS_URL", self.url())
            .env("VEIL_KBS_ADMIN_KEY", self.dir.join("admin.key"));
        c
    }

    /// [`client`](Self::client) running `veil kbs get-resource
    /// --insecure-http` as the sim guest of `dir/sim.key`.
    pub fn sim_guest(&self) -> Command {
        let mut c = self.client();
        c.args(["kbs", "get-resource", "--insecure-http", "--sim-key"])
            .arg(self.dir.join("sim.key"));
        c
    }

    /// SIGKILL, no graceful shutdown; returns once the process is gone.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for DevKbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
