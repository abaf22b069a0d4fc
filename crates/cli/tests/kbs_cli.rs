//! `veil kbs` end to end through the binary, over HTTP on 127.0.0.1: keys,
//! serve, admin commands, a guest fetch with sim evidence; SIGKILL right
//! after an acknowledged put, restart, the resource is there and decrypts;
//! the plaintext is nowhere in the data directory.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn healthy(port: u16) -> bool {
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

struct Kbs {
    child: Child,
}

impl Drop for Kbs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn serve(dir: &Path, port: u16) -> Kbs {
    let child = veil()
        .args(["kbs", "serve", "--insecure-http", "--dev"])
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
        .unwrap();
    let start = Instant::now();
    while !healthy(port) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "KBS did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Kbs { child }
}

fn client(dir: &Path, port: u16) -> Command {
    let mut c = veil();
    c.env("VEIL_KBS_URL", format!("http://127.0.0.1:{port}"))
        .env("VEIL_KBS_ADMIN_KEY", dir.join("admin.key"));
    c
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn serve_put_sigkill_restart_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run_ok(
        veil()
            .args(["kbs", "admin-keygen", "--key"])
            .arg(d.join("admin.key"))
            .arg("--pub")
            .arg(d.join("admin.pub")),
    );
    run_ok(
        veil()
            .args(["kbs", "kek-generate", "--out"])
            .arg(d.join("kek.hex")),
    );
    run_ok(
        veil()
            .args(["attest", "sim-keygen", "--key"])
            .arg(d.join("sim.key"))
            .arg("--root")
            .arg(d.join("sim.pub")),
    );
    let marker = format!("cli-secret-{}", std::process::id());
    std::fs::write(d.join("secret.bin"), &marker).unwrap();

    let port = free_port();
    let mut kbs = serve(d, port);
    // Acknowledged put, then SIGKILL at once: no graceful shutdown.
    let out = run_ok(
        client(d, port)
            .args(["kbs", "resource", "put", "--insecure-http", "repo/key/one"])
            .arg(d.join("secret.bin")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stored repo/key/one"));
    kbs.child.kill().unwrap();
    kbs.child.wait().unwrap();
    drop(kbs);

    // The plaintext is in no file of the data dir (database, WAL, …).
    let files = files_under(&d.join("data"));
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "plaintext found in {}",
            f.display()
        );
    }

    let port = free_port();
    let _kbs = serve(d, port);
    let out = run_ok(client(d, port).args(["kbs", "resource", "list", "--insecure-http"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("repo/key/one"));

    // No policy yet: the guest is refused (exit 1, with the reason).
    let out = client(d, port)
        .args([
            "kbs",
            "get-resource",
            "--insecure-http",
            "--tee",
            "sim",
            "--sim-key",
        ])
        .arg(d.join("sim.key"))
        .arg("repo/key/one")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("PolicyDeny"));

    run_ok(client(d, port).args([
        "kbs",
        "policy",
        "set",
        "--insecure-http",
        "--scope",
        "repo",
        "--template",
        "allow-all",
    ]));
    run_ok(
        client(d, port)
            .args([
                "kbs",
                "get-resource",
                "--insecure-http",
                "--tee",
                "sim",
                "--key-type",
                "rsa2048",
                "--sim-key",
            ])
            .arg(d.join("sim.key"))
            .arg("--out")
            .arg(d.join("got.bin"))
            .arg("kbs:///repo/key/one"),
    );
    assert_eq!(std::fs::read_to_string(d.join("got.bin")).unwrap(), marker);
    let out = run_ok(
        client(d, port)
            .args(["kbs", "get-resource", "--insecure-http", "--sim-key"])
            .arg(d.join("sim.key"))
            .arg("repo/key/one"),
    );
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&marker);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), b64);

    let out = run_ok(client(d, port).args(["kbs", "audit", "--insecure-http"]));
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("put resource"), "{audit}");
    assert!(
        audit.contains("released by policy scope \"repo\""),
        "{audit}"
    );
    assert!(audit.contains("no resource policy covers"), "{audit}");
}

#[test]
fn serve_refuses_insecure_setups() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run_ok(
        veil()
            .args(["kbs", "kek-generate", "--out"])
            .arg(d.join("kek.hex")),
    );
    let out = veil()
        .args(["kbs", "serve", "--data-dir"])
        .arg(d.join("data"))
        .arg("--kek-file")
        .arg(d.join("kek.hex"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("TLS is required"));
    let out = veil()
        .args([
            "kbs",
            "serve",
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(d.join("data"))
        .arg("--kek-file")
        .arg(d.join("kek.hex"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("refusing plain HTTP"));
    // No KEK: refused before anything is created.
    let out = veil()
        .env_remove("VEIL_KBS_KEK")
        .args(["kbs", "serve", "--insecure-http", "--data-dir"])
        .arg(d.join("data2"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("VEIL_KBS_KEK"));
    assert!(!d.join("data2").exists());
}
