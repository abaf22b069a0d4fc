//! Off-the-shelf services in the process sandbox, published with `-p` on
//! 127.0.0.1 and used from the host with their own clients (issue 14):
//! Redis from Debian's redis-server (`redis-cli SET/GET`), nginx from
//! Debian's nginx-light (`curl`), and a Python HTTP app (Debian's python3)
//! that answers with the digest of a KBS secret it reads from
//! /run/veil/secrets. The images are built from the .debs by
//! scripts/test-images.sh (cached under /var/tmp). Afterwards nothing of
//! the sandbox is left on the host.

mod common;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::net::TestNet;
use common::{Env, RmOnDrop, ok, text};

/// The layout holding the `redis`, `nginx` and `python` images.
fn test_images() -> PathBuf {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/test-images.sh");
    let layout = PathBuf::from("/var/tmp/veil-test-images/layout");
    let out = Command::new("bash")
        .arg(&script)
        .arg(&layout)
        .env("VEIL", env!("CARGO_BIN_EXE_veil"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "scripts/test-images.sh failed:\n{}",
        text(&out.stderr)
    );
    layout
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Retry `cmd` until its stdout contains `want` (at most ~20 s).
fn eventually(mut cmd: impl FnMut() -> Command, want: &str) -> String {
    let mut last = String::new();
    for _ in 0..200 {
        let o = cmd().output().unwrap();
        last = format!("{}{}", text(&o.stdout), text(&o.stderr));
        if o.status.success() && text(&o.stdout).contains(want) {
            return text(&o.stdout);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("never got {want:?}; last answer: {last}");
}

fn start(env: &Env, net: &TestNet, args: &[&str]) -> String {
    let out = ok(net
        .veil(env)
        .arg("run")
        .arg("-d")
        .args(args)
        .output()
        .unwrap());
    text(&out.stdout).trim().to_string()
}

#[test]
fn redis_from_debian_answers_redis_cli_through_a_published_port() {
    let env = Env::new();
    let Some(net) = TestNet::new(&env) else {
        return;
    };
    let layout = test_images();
    let port = free_port().to_string();
    let image = format!("oci:{}:redis", layout.display());
    let id = start(
        &env,
        &net,
        &["-p", &format!("127.0.0.1:{port}:6379"), &image],
    );
    let rm = RmOnDrop(&env, id.clone());
    let cli = |args: &'static [&'static str]| {
        let port = port.clone();
        move || {
            let mut c = Command::new("redis-cli");
            c.args(["-h", "127.0.0.1", "-p", &port]).args(args);
            c
        }
    };
    eventually(cli(&["SET", "veil-key", "confidential-value"]), "OK");
    let got = eventually(cli(&["GET", "veil-key"]), "confidential-value");
    assert_eq!(got.trim(), "confidential-value");
    let info = eventually(cli(&["INFO", "server"]), "redis_version");
    assert!(info.contains("redis_mode:standalone"), "{info}");
    drop(rm);
    assert_eq!(net.leftovers(&id), Vec::<String>::new());
}

#[test]
fn nginx_from_debian_serves_its_page_through_a_published_port() {
    let env = Env::new();
    let Some(net) = TestNet::new(&env) else {
        return;
    };
    let layout = test_images();
    let port = free_port().to_string();
    let image = format!("oci:{}:nginx", layout.display());
    let id = start(&env, &net, &["-p", &format!("127.0.0.1:{port}:80"), &image]);
    let rm = RmOnDrop(&env, id.clone());
    let url = format!("http://127.0.0.1:{port}/index.html");
    let page = eventually(
        || {
            let mut c = Command::new("curl");
            c.args(["-s", "--max-time", "2", &url]);
            c
        },
        "veil nginx",
    );
    assert!(page.contains("Debian nginx-light"), "{page}");
    drop(rm);
    assert_eq!(net.leftovers(&id), Vec::<String>::new());
}

#[test]
fn python_app_answers_with_the_digest_of_its_kbs_secret() {
    let env = Env::new();
    let Some(net) = TestNet::new(&env) else {
        return;
    };
    let layout = test_images();
    let secret = env.dir.path().join("app-secret");
    std::fs::write(&secret, b"the workload's API key: 0123456789").unwrap();
    ok(env
        .veil()
        .args(["secret", "put", "default/secret/app-secret"])
        .arg(&secret)
        .output()
        .unwrap());
    let port = free_port().to_string();
    let image = format!("oci:{}:python", layout.display());
    let id = start(
        &env,
        &net,
        &[
            "--secret",
            "app-secret=kbs:///default/secret/app-secret",
            "-p",
            &format!("127.0.0.1:{port}:8080"),
            &image,
        ],
    );
    let _rm = RmOnDrop(&env, id);
    let want = format!(
        "sha256:{}",
        text(
            &Command::new("sha256sum")
                .arg(&secret)
                .output()
                .unwrap()
                .stdout
        )
        .split_whitespace()
        .next()
        .unwrap()
    );
    let url = format!("http://127.0.0.1:{port}/");
    let got = eventually(
        || {
            let mut c = Command::new("curl");
            c.args(["-s", "--max-time", "2", &url]);
            c
        },
        "sha256:",
    );
    assert_eq!(got.trim(), want);
}

/// Must-hold 2: Debian's nginx-light serves a page from a configMap volume
/// (content pinned by the policy) through a published port; a second
/// container of the same pod reads nginx's access log from the emptyDir
/// they share.
#[test]
fn nginx_serves_a_config_map_page_and_a_sidecar_reads_its_log() {
    let env = Env::new();
    let Some(net) = TestNet::new(&env) else {
        return;
    };
    let layout = test_images();
    // The policy pins the published port (must-hold 7): the pod declares it.
    let port = free_port().to_string();
    let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: site\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  volumes:\n  - name: html\n    configMap: {name: site-html}\n  - name: logs\n    emptyDir: {}\n  containers:\n  - name: nginx\n    image: nginx\n    volumeMounts:\n    - {name: html, mountPath: /usr/share/nginx/html}\n    - {name: logs, mountPath: /var/log/nginx}\n  - name: reader\n    image: nginx\n    command: [\"/bin/sh\", \"-c\", \"until grep -q 'GET /index.html' /logs/access.log 2>/dev/null; do sleep 0.2; done; echo \\\"reader saw: $(grep 'GET /index.html' /logs/access.log | head -n 1)\\\"; sleep 3600\"]\n    volumeMounts:\n    - {name: logs, mountPath: /logs, readOnly: true}\n".replacen(
        "    image: nginx\n",
        &format!("    image: nginx\n    ports:\n    - {{containerPort: 80, hostPort: {port}}}\n"),
        1,
    );
    let pod = common::write_pod(&env, &yaml);
    let config = env.dir.path().join("site.yaml");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: site-html\ndata:\n  index.html: \"<h1>served from a configMap</h1>\\n\"\n",
    )
    .unwrap();
    let id = start(
        &env,
        &net,
        &[
            "--pod",
            pod.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
            "--oci-layout",
            layout.to_str().unwrap(),
            "-p",
            &format!("127.0.0.1:{port}:80"),
        ],
    );
    let rm = RmOnDrop(&env, id.clone());
    let url = format!("http://127.0.0.1:{port}/index.html");
    let page = eventually(
        || {
            let mut c = Command::new("curl");
            c.args(["-s", "--max-time", "2", &url]);
            c
        },
        "served from a configMap",
    );
    assert_eq!(page, "<h1>served from a configMap</h1>\n");
    let seen = eventually(
        || {
            let mut c = env.veil();
            c.args(["logs", "-c", "reader", &id]);
            c
        },
        "reader saw:",
    );
    assert!(seen.contains("\"GET /index.html HTTP/1.1\" 200"), "{seen}");
    drop(rm);
    assert_eq!(net.leftovers(&id), Vec::<String>::new());
}

/// Must-hold 1, VM half, and must-hold 6 for the VM path: Redis in the VM
/// sandbox (QEMU TCG, sim TEE), published with `-p 127.0.0.1:PORT:6379` on
/// the guest's own pod NIC (QEMU user networking, not the agent's NIC);
/// `redis-cli SET/GET` from the host works. Then `veil run`'s detached
/// monitor is killed with SIGKILL: QEMU dies with it, the port is free
/// again, and `veil rm` removes the rest. One boot: the heavy test.
#[test]
fn redis_in_the_vm_sandbox_answers_through_a_published_port_and_leaves_nothing() {
    use common::{processes_mentioning, record_of};
    let env = Env::new();
    let layout = test_images();
    let port = free_port();
    let image = format!("oci:{}:redis", layout.display());
    let out = ok(env
        .veil()
        .args([
            "run",
            "-d",
            "--sandbox",
            "vm",
            "--tee",
            "sim",
            "--accel",
            "tcg",
        ])
        .args(["--network", "user"])
        .args(["-p", &format!("127.0.0.1:{port}:6379"), &image])
        .output()
        .unwrap());
    let id = text(&out.stdout).trim().to_string();
    let rm = RmOnDrop(&env, id.clone());
    let rec = record_of(&env, &id);
    assert_eq!(rec["network"], "user", "{rec}");
    assert_eq!(
        rec["ports"][0],
        format!("127.0.0.1:{port}:6379/tcp"),
        "{rec}"
    );
    let port_s = port.to_string();
    let cli = |args: &'static [&'static str]| {
        let port = port_s.clone();
        move || {
            let mut c = Command::new("redis-cli");
            c.args(["-h", "127.0.0.1", "-p", &port]).args(args);
            c
        }
    };
    eventually(cli(&["SET", "veil-key", "in-the-vm"]), "OK");
    let got = eventually(cli(&["GET", "veil-key"]), "in-the-vm");
    assert_eq!(got.trim(), "in-the-vm");

    let data = env.data().display().to_string();
    let qemu = rec["agent_pid"].as_u64().unwrap();
    assert!(
        std::fs::read_to_string(format!("/proc/{qemu}/cmdline"))
            .unwrap()
            .contains("qemu-system"),
        "agent_pid of a VM sandbox is QEMU"
    );
    let monitor = rec["owner_pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&data).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_mentioning(&data), Vec::<String>::new());
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while TcpListener::bind(("127.0.0.1", port)).is_err() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "host port {port} is still taken after SIGKILL"
    );
    // The record still says running (its owner died without writing the
    // end): `rm -f` removes it.
    ok(env.veil().args(["rm", "-f", &id]).output().unwrap());
    assert!(!env.data().join("run").join(&id).exists());
    drop(rm);
}
