//! Pod networking end to end (process sandbox, root): `--network bridge`
//! gives the pod an address and outbound NAT, `--network none` only
//! loopback, `-p` publishes a port on 127.0.0.1, and nothing is left in
//! `ip netns`, on the bridge, in the NAT table or in the IPAM state after
//! the run ends, after `veil rm -f`, or after SIGKILL of the owner.
//!
//! Each test has its own bridge (`vtn…`), subnet (`10.211.N.0/24`) and IPAM
//! dir, and deletes its bridge when done (even on failure).

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use common::net::TestNet;
use common::{Env, RmOnDrop, image, ok, record_of, text};

/// A one-shot HTTP server on all host addresses; returns its port and a
/// handle whose result says whether a client came.
fn one_shot_server() -> (u16, std::thread::JoinHandle<bool>) {
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        // Generous: on a loaded CI machine `veil run` may take a while.
        let deadline = Instant::now() + Duration::from_secs(600);
        while Instant::now() < deadline {
            if let Ok((mut s, _)) = l.accept() {
                s.set_nonblocking(false).unwrap();
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ =
                    s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 15\r\n\r\nhello from host");
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    });
    (port, h)
}

/// The id of the one sandbox record of `env`.
fn only_sandbox_id(env: &Env) -> String {
    std::fs::read_dir(env.data().join("run"))
        .unwrap()
        .flatten()
        .next()
        .unwrap()
        .file_name()
        .to_string_lossy()
        .into_owned()
}

#[test]
fn bridge_pod_reaches_the_host_and_none_cannot_and_nothing_is_left() {
    let env = Env::new();
    let Some(net) = TestNet::new(&env) else {
        return;
    };
    let layout = env.layout();
    image(&env, &layout, "app:1", "true");
    let l = format!("oci:{}:app:1", layout.root().display());
    let (port, server) = one_shot_server();
    let url = format!("http://{}:{port}/", net.gateway());
    let out = net
        .veil(&env)
        .args([
            "run",
            &l,
            "--",
            "/bin/sh",
            "-c",
            &format!("cat /proc/net/dev; busybox wget -q -O - {url}"),
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("eth0:"), "{stdout}");
    assert!(stdout.contains("hello from host"), "{stdout}");
    assert!(server.join().unwrap(), "the host server saw no connection");
    let id = only_sandbox_id(&env);
    let rec = record_of(&env, &id);
    assert_eq!(rec["network"], "bridge");
    assert!(
        rec["address"]
            .as_str()
            .unwrap()
            .starts_with(&net.subnet_prefix),
        "{rec}"
    );
    assert_eq!(net.leftovers(&id), Vec::<String>::new());
    assert!(!env.data().join("run").join(&id).join("net.json").exists());

    // --network none: loopback only, the same request fails.
    let (port, _server) = one_shot_server();
    let url = format!("http://{}:{port}/", net.gateway());
    let out = net
        .veil(&env)
        .args([
            "run",
            "--network",
            "none",
            &l,
            "--",
            "/bin/sh",
            "-c",
            &format!("cat /proc/net/dev; busybox wget -q -T 3 -O - {url}"),
        ])
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("lo:"), "{stdout}");
    assert!(!stdout.contains("eth0"), "{stdout}");
    assert!(!stdout.contains("hello from host"), "{stdout}");
}

#[test]
fn published_port_on_loopback_and_sigkill_of_the_owner_leaves_nothing() {
    let env = Env::new();
    let Some(net) = TestNet::new(&env) else {
        return;
    };
    let layout = env.layout();
    image(&env, &layout, "web:1", "true");
    let l = format!("oci:{}:web:1", layout.root().display());
    let host_port = {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        t.local_addr().unwrap().port()
    };
    let publish = format!("127.0.0.1:{host_port}:8080");
    let out = ok(net
        .veil(&env)
        .args([
            "run",
            "-d",
            "-p",
            &publish,
            &l,
            "--",
            "/bin/sh",
            "-c",
            "mkdir -p /tmp; echo served-by-veil > /tmp/index.html; exec busybox httpd -f -p 8080 -h /tmp",
        ])
        .output()
        .unwrap());
    let id = text(&out.stdout).trim().to_string();
    let _rm = RmOnDrop(&env, id.clone());
    let body = (0..100)
        .find_map(|_| {
            let o = Command::new("curl")
                .args(["-s", "--max-time", "2"])
                .arg(format!("http://127.0.0.1:{host_port}/index.html"))
                .output()
                .unwrap();
            let b = text(&o.stdout);
            if b.contains("served-by-veil") {
                Some(b)
            } else {
                std::thread::sleep(Duration::from_millis(100));
                None
            }
        })
        .expect("curl never got the page through the published port");
    assert_eq!(body.trim(), "served-by-veil");
    let ps = text(&ok(net.veil(&env).args(["ps"]).output().unwrap()).stdout);
    assert!(ps.contains(&format!("{publish}/tcp")), "{ps}");
    assert!(ps.contains("bridge"), "{ps}");
    let before = net.leftovers(&id);
    assert!(
        before.iter().any(|l| l.starts_with("netns")) && before.iter().any(|l| l.contains("DNAT")),
        "the running sandbox should have its netns and DNAT rule: {before:?}"
    );

    // SIGKILL of the owner (the detached monitor): its agent dies with it,
    // the network stays until the next veil command reaps it.
    let owner = record_of(&env, &id)["owner_pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(owner), nix::sys::signal::SIGKILL).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{owner}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    ok(net.veil(&env).args(["ps", "-a"]).output().unwrap());
    assert_eq!(net.leftovers(&id), Vec::<String>::new());
    assert!(common::processes_mentioning(&id).is_empty());
    ok(net.veil(&env).args(["rm", &id]).output().unwrap());
}

#[test]
fn publish_needs_the_bridge_mode() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "true");
    let l = format!("oci:{}:app:1", layout.root().display());
    let out = env
        .veil()
        .args(["run", "--network", "none", "-p", "8080:80", &l])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let err = text(&out.stderr);
    assert!(err.contains("--network none"), "{err}");
    let out = env
        .veil()
        .args(["run", "-p", "8080:80/sctp", &l])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    assert!(text(&out.stderr).contains("sctp"), "{}", text(&out.stderr));
}

/// Must-hold 7: the host cannot publish a port the policy does not pin. A
/// policy generated from a pod pins its container's port and host port; a
/// host that runs that init-data with another host port, or with a port
/// the policy gives no container, is refused by the agent at
/// `create_container`, naming the port and the policy's port rule, and
/// `veil run` exits 125 (veil failed before the container ran).
#[test]
fn host_cannot_publish_a_port_the_policy_does_not_pin() {
    let env = Env::new();
    let Some(net) = TestNet::new(&env) else {
        return;
    };
    let layout = env.layout();
    image(&env, &layout, "web:1", "true");
    let l = format!("oci:{}:web:1", layout.root().display());
    let free = || {
        let t = TcpListener::bind("127.0.0.1:0").unwrap();
        t.local_addr().unwrap().port()
    };
    let (pinned, other) = (free(), free());
    // The owner's policy: container app publishes 8080 on host port PINNED.
    let pod = common::write_pod(
        &env,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: web, namespace: default}}\nspec:\n  containers:\n  - name: app\n    image: web:1\n    ports:\n    - containerPort: 8080\n      hostPort: {pinned}\n"
        ),
    );
    let init = env.dir.path().join("init.toml");
    ok(env
        .veil()
        .args(["policy", "generate"])
        .arg(&pod)
        .arg("--image-dir")
        .arg(layout.root())
        .arg("--init-data")
        .arg(&init)
        .arg("-o")
        .arg(env.dir.path().join("annotated.yaml"))
        .output()
        .unwrap());
    let init_data = init.to_str().unwrap().to_string();
    let toml = std::fs::read_to_string(&init_data).unwrap();
    assert!(
        toml.contains("\"container_port\": 8080")
            && toml.contains(&format!("\"host_port\": {pinned}")),
        "the generated policy pins the mapping: {toml}"
    );
    let attack = |publish: String| {
        let out = net
            .veil(&env)
            .args(["run", "--rm", "--init-data", &init_data, "-p", &publish, &l])
            .output()
            .unwrap();
        (out.status.code(), text(&out.stderr))
    };
    // Another host port for the pinned container port.
    let (code, err) = attack(format!("127.0.0.1:{other}:8080"));
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains(&format!(
            "port 8080/tcp published on host port {other} of container \"app\": the policy \
             (rule ports of \"app\") allows 8080/tcp (host port {pinned} or none)"
        )),
        "{err}"
    );
    // The pinned host port redirected to another port of the pod.
    let (code, err) = attack(format!("127.0.0.1:{pinned}:9090"));
    assert_eq!(code, Some(125), "{err}");
    assert!(
        err.contains(&format!(
            "port 9090/tcp published on host port {pinned} is not declared for container \
             \"app\" by the policy (rule ports of \"app\": 8080/tcp (host port {pinned} or none))"
        )),
        "{err}"
    );
    // What the policy pins runs.
    ok(net
        .veil(&env)
        .args([
            "run",
            "--rm",
            "--init-data",
            &init_data,
            "-p",
            &format!("127.0.0.1:{pinned}:8080"),
            &l,
        ])
        .output()
        .unwrap());
    // And so does not publishing it at all.
    ok(net
        .veil(&env)
        .args(["run", "--rm", "--init-data", &init_data, &l])
        .output()
        .unwrap());
}
