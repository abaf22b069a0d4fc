//! `veil bench service`: an off-the-shelf service in the process sandbox
//! (and Redis in the VM sandbox),
//! reached through a port published on 127.0.0.1, against the same
//! Debian binary run directly on the host, in one run: Redis with
//! `redis-benchmark -t set,get` and nginx with `wrk`. Prints ops/s and
//! requests/s and the ratio to native; never fails on a number.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;

use super::bench::median;

/// Arguments of `veil bench service`.
#[derive(Args, Debug)]
pub struct ServiceBench {
    /// The OCI layout with the `redis` and `nginx` images (scripts/test-images.sh
    /// builds them from Debian's packages).
    #[arg(long, default_value = "/var/tmp/veil-test-images/layout")]
    pub layout: PathBuf,
    /// redis-benchmark requests (-n).
    #[arg(long, default_value_t = 100_000)]
    pub requests: u32,
    /// redis-benchmark and wrk connections (-c).
    #[arg(long, default_value_t = 8)]
    pub clients: u32,
    /// wrk duration in seconds.
    #[arg(long, default_value_t = 5)]
    pub wrk_seconds: u32,
    /// Measured rounds (native and sandbox alternate; the median is
    /// reported, after one warm-up round that is not counted).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Stops (SIGKILL, by PID) and reaps a native server when dropped.
struct Native(Child);

impl Drop for Native {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes a sandbox (`veil rm -f`) when dropped.
struct Sandbox(String);

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Ok(exe) = std::env::current_exe() {
            let _ = Command::new(exe)
                .args(["rm", "-f", &self.0])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn wait_port(port: u16, what: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            // A published port accepts before the service does: give the
            // service a moment to bind behind it.
            std::thread::sleep(Duration::from_millis(300));
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on 127.0.0.1:{port} within 60 s")
}

/// `veil run -d` of `image` with `-p 127.0.0.1:PORT:CONTAINER_PORT`, in the
/// process sandbox (`vm` false: the bridge network) or the VM sandbox
/// (sim TEE, QEMU user networking).
fn sandbox(image: &str, port: u16, container_port: u16, vm: bool) -> Result<Sandbox> {
    let exe = std::env::current_exe()?;
    let mode: &[&str] = if vm {
        &["--sandbox", "vm", "--tee", "sim"]
    } else {
        &["--network", "bridge"]
    };
    let out = Command::new(exe)
        .args(["run", "-d"])
        .args(mode)
        .arg("-p")
        .arg(format!("127.0.0.1:{port}:{container_port}"))
        .arg(image)
        .stderr(Stdio::null())
        .output()
        .context("starting veil run -d")?;
    if !out.status.success() {
        bail!("veil run -d {image} failed ({})", out.status);
    }
    Ok(Sandbox(
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    ))
}

/// redis-benchmark's `--csv` answer: ops/s of SET and GET.
fn redis_bench(port: u16, a: &ServiceBench) -> Result<(f64, f64)> {
    let out = Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,get"])
        .args([
            "-n",
            &a.requests.to_string(),
            "-c",
            &a.clients.to_string(),
            "--csv",
        ])
        .output()
        .context("running redis-benchmark (Debian's redis-tools)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rate = |test: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("\"{test}\"")))
            .and_then(|l| l.split(',').nth(1))
            .and_then(|v| v.trim_matches('"').parse::<f64>().ok())
            .ok_or_else(|| {
                anyhow!(
                    "no {test} line in redis-benchmark's output ({}): {}; stderr: {}",
                    out.status,
                    veil_kbs::text::escape_controls(text.trim()),
                    veil_kbs::text::escape_controls(String::from_utf8_lossy(&out.stderr).trim())
                )
            })
    };
    Ok((rate("SET")?, rate("GET")?))
}

/// wrk's `Requests/sec:`.
fn wrk(port: u16, a: &ServiceBench) -> Result<f64> {
    let out = Command::new("wrk")
        .args(["-t", "2", "-c", &a.clients.to_string()])
        .arg(format!("-d{}s", a.wrk_seconds))
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .context("running wrk")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| anyhow!("no Requests/sec in wrk's output: {text}"))
}

fn native_nginx(dir: &Path, port: u16) -> Result<Native> {
    std::fs::create_dir_all(dir.join("html"))?;
    std::fs::write(
        dir.join("html/index.html"),
        "<html><body><h1>veil nginx</h1><p>served from a Debian nginx-light image</p></body></html>\n",
    )?;
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\nhttp {{\n  access_log {d}/access.log;\n  \
         client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
         fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
         scgi_temp_path {d}/scgi;\n  server {{ listen 127.0.0.1:{port}; root {d}/html; }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf)?;
    let child = Command::new("/usr/sbin/nginx")
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting Debian's nginx (/usr/sbin/nginx, package nginx-light)")?;
    Ok(Native(child))
}

/// Run `veil bench service`.
pub fn bench(a: ServiceBench) -> Result<ExitCode> {
    if !nix::unistd::geteuid().is_root() {
        bail!("veil bench service publishes ports through the bridge network: run it as root");
    }
    let layout = a.layout.display().to_string();
    let mut rows: Vec<(String, String, f64, f64)> = Vec::new();

    // Both servers run side by side and the load alternates between them,
    // so noise from the rest of the machine falls on both alike; the median
    // of the rounds is reported (one warm-up round is not counted).
    let port = free_port()?;
    let native = Native(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .context("starting Debian's redis-server (package redis-server)")?,
    );
    wait_port(port, "native redis-server")?;
    let sport = free_port()?;
    let sb = sandbox(&format!("oci:{layout}:redis"), sport, 6379, false)?;
    wait_port(sport, "redis in the process sandbox")?;
    let (mut nset, mut nget, mut sset, mut sget) = (vec![], vec![], vec![], vec![]);
    for round in 0..=a.rounds {
        let (ns, ng) = redis_bench(port, &a)?;
        let (ss, sg) = redis_bench(sport, &a)?;
        if round > 0 {
            nset.push(ns);
            nget.push(ng);
            sset.push(ss);
            sget.push(sg);
        }
    }
    drop(sb);
    drop(native);
    let (nset, nget) = (median(&mut nset), median(&mut nget));
    rows.push((
        "redis SET ops/s".into(),
        "process".into(),
        median(&mut sset),
        nset,
    ));
    rows.push((
        "redis GET ops/s".into(),
        "process".into(),
        median(&mut sget),
        nget,
    ));
    // The VM sandbox (QEMU's hostfwd into the guest's pod NIC; TCG when
    // there is no KVM): a figure when it works, the reason otherwise.
    let mut vm_note = None;
    let vm_run = (|| -> Result<(f64, f64)> {
        let port = free_port()?;
        let sb = sandbox(&format!("oci:{layout}:redis"), port, 6379, true)?;
        wait_port(port, "redis in the VM sandbox")?;
        let r = redis_bench(port, &a);
        drop(sb);
        r
    })();
    match vm_run {
        Ok((vset, vget)) => {
            rows.push(("redis SET ops/s".into(), "vm".into(), vset, nset));
            rows.push(("redis GET ops/s".into(), "vm".into(), vget, nget));
        }
        Err(e) => vm_note = Some(format!("VM sandbox: not measured: {e:#}")),
    }

    // nginx: wrk against native and sandboxed nginx, alternating likewise.
    let tmp = tempfile::tempdir()?;
    let port = free_port()?;
    let native = native_nginx(tmp.path(), port)?;
    wait_port(port, "native nginx")?;
    let sport = free_port()?;
    let sb = sandbox(&format!("oci:{layout}:nginx"), sport, 80, false)?;
    wait_port(sport, "nginx in the process sandbox")?;
    let (mut nrps, mut srps) = (vec![], vec![]);
    for round in 0..=a.rounds {
        let n = wrk(port, &a)?;
        let s = wrk(sport, &a)?;
        if round > 0 {
            nrps.push(n);
            srps.push(s);
        }
    }
    drop(sb);
    drop(native);
    rows.push((
        "nginx requests/s".into(),
        "process".into(),
        median(&mut srps),
        median(&mut nrps),
    ));

    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, s, v, n)| {
                serde_json::json!({"metric": m, "sandbox": s, "veil": v, "native": n, "ratio": v / n})
            })
            .collect();
        crate::outln!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        crate::outln!(
            "veil bench service: -n {} -c {} (redis-benchmark -t set,get), wrk -c {} -d {}s; \
             median of {} alternating rounds; baseline: the same Debian binary run directly on this host",
            a.requests,
            a.clients,
            a.clients,
            a.wrk_seconds,
            a.rounds
        );
        crate::outln!(
            "{:<18} {:<8} {:>12} {:>12} {:>7}",
            "metric",
            "sandbox",
            "veil",
            "native",
            "ratio"
        );
        for (m, s, v, n) in &rows {
            crate::outln!("{m:<18} {s:<8} {v:>12.0} {n:>12.0} {:>6.2}x", v / n);
        }
        if let Some(n) = &vm_note {
            crate::outln!("{n}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
