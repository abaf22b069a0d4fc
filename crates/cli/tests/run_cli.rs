//! `veil run` and friends end to end, with the real `veil` and `veil-agent`
//! binaries, the embedded KBS on loopback and the process sandbox. These
//! run containers and need root, as CI does.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use veil_image::crypt::kbs::{KbsWrapper, ResourceUri};
use veil_image::crypt::{KeyWrapper, LayerSelection, encrypt_image};

mod common;
use common::*;

/// Every file under `dir` that contains `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let b = std::fs::read(&p).unwrap_or_default();
                if b.windows(needle.len()).any(|w| w == needle) {
                    hits.push(p);
                }
            }
        }
    }
    hits
}

fn mounts_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

/// Must hold 1: an encrypted image and a secret; the workload uses the
/// secret; neither the secret nor the image key is in the data dir.
#[test]
fn encrypted_image_and_secret_never_touch_the_data_dir() {
    let env = Env::new();
    let layout = env.layout();
    image(
        &env,
        &layout,
        "plain",
        "echo fingerprint $(sha256sum /run/veil/secrets/api-key | cut -c1-16)",
    );
    let kek = [0x5au8; 32];
    let wrapper =
        KbsWrapper::new(ResourceUri::parse("kbs:///default/key/app").unwrap(), &kek).unwrap();
    let wrappers: [&dyn KeyWrapper; 1] = [&wrapper];
    encrypt_image(
        &layout,
        Some("plain"),
        &layout,
        "app:enc",
        &wrappers,
        &LayerSelection::All,
    )
    .unwrap();
    let secret = b"correct-horse-battery-staple-7f3a";
    let secret_file = env.dir.path().join("secret.txt");
    std::fs::write(&secret_file, secret).unwrap();
    let kek_file = env.dir.path().join("kek.bin");
    std::fs::write(&kek_file, kek).unwrap();
    ok(env
        .veil()
        .args(["secret", "put", "default/secret/api-key"])
        .arg(&secret_file)
        .output()
        .unwrap());
    ok(env
        .veil()
        .args(["secret", "put", "default/key/app"])
        .arg(&kek_file)
        .output()
        .unwrap());

    let img = format!("oci:{}:app:enc", layout.root().display());
    let out = ok(env
        .veil()
        .args([
            "run",
            "--secret",
            "api-key=kbs:///default/secret/api-key",
            &img,
        ])
        .output()
        .unwrap());
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(
        stdout.contains(&format!("fingerprint {}", sha256_prefix(secret))),
        "{stdout}\n{stderr}"
    );
    assert!(
        stderr.contains("WARNING: simulated TEE") && stderr.contains("attestation  ok"),
        "{stderr}"
    );
    assert!(
        stderr.contains("generated the policy") && stderr.contains("secrets      api-key"),
        "{stderr}"
    );
    for needle in [
        &secret[..],
        &kek[..],
        hex::encode(kek).as_bytes(),
        hex::encode(secret).as_bytes(),
    ] {
        assert_eq!(
            files_containing(&env.data(), needle),
            Vec::<PathBuf>::new(),
            "plaintext found in the data dir"
        );
    }
    for e in std::fs::read_dir(env.data().join("run")).unwrap().flatten() {
        assert!(
            !e.path().join("sandbox").exists(),
            "sandbox dir left in {}",
            e.path().display()
        );
    }
    assert_eq!(
        mounts_mentioning(&env.data().to_string_lossy()),
        Vec::<String>::new()
    );
}

/// A workload that writes and exits at once: its output and exit code reach
/// the terminal every time (a teardown triggered by the end of the empty
/// stderr stream must not race the stdout pump).
#[test]
fn output_and_exit_code_of_a_short_lived_workload_are_never_lost() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo never-the-default");
    let img = format!("oci:{}:app:1", layout.root().display());
    for i in 0..4 {
        let out = env
            .veil()
            .args(["run", "--rm", &img, "--", "/bin/sh", "-c"])
            .arg(format!("echo fast-{i}; echo to-stderr >&2; exit 7"))
            .output()
            .unwrap();
        assert_eq!(
            text(&out.stdout),
            format!("fast-{i}\n"),
            "run {i}: stderr: {}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("to-stderr"),
            "{}",
            text(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
    }
    let ps = ok(env.veil().args(["ps", "-a"]).output().unwrap());
    assert_eq!(
        text(&ps.stdout).lines().count(),
        1,
        "--rm leaves no record: {}",
        text(&ps.stdout)
    );
}

/// Must hold 3: exec only what the policy allows; logs refused when stdio is not allowed.
#[test]
fn exec_and_logs_follow_the_policy() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo up; sleep 31339");
    let pod = env.dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\n  annotations:\n    policy.veil.dev/exec.app: '[[\"cat\", \"/etc/hostname\"]]'\n    policy.veil.dev/allow-stdio.app: \"false\"\nspec:\n  containers:\n  - name: app\n    image: app:1\n",
    )
    .unwrap();
    let out = ok(env
        .veil()
        .args(["run", "-d", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(layout.root())
        .output()
        .unwrap());
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 12, "{}", text(&out.stdout));
    let ps = ok(env.veil().args(["ps"]).output().unwrap());
    assert!(
        text(&ps.stdout).contains(&id) && text(&ps.stdout).contains("running"),
        "{}",
        text(&ps.stdout)
    );

    let out = ok(env
        .veil()
        .args(["exec", &id, "--", "cat", "/etc/hostname"])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "web\n");
    let out = env.veil().args(["exec", &id, "--", "sh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(126));
    assert!(
        text(&out.stderr).contains("exec_process: command [\"sh\"] is not allowed")
            && text(&out.stderr).contains(r#"policy.veil.dev/exec.app: '[["sh"]]'"#),
        "{}",
        text(&out.stderr)
    );

    let insp = ok(env.veil().args(["inspect", &id]).output().unwrap());
    let v: serde_json::Value = serde_json::from_slice(&insp.stdout).unwrap();
    assert_eq!(v["evidence"]["verified"], true, "{v}");
    assert_eq!(v["containers"][0]["name"], "app", "{v}");
    assert!(
        v["created"].as_str().is_some_and(|c| c.ends_with('Z')),
        "{v}"
    );
    assert_eq!(v["kind"], "process", "{v}");

    // While it runs, too, the logs are refused with the policy's reason.
    let out = env.veil().args(["logs", &id]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("allow_stdio = false")
            && text(&out.stderr).contains("policy.veil.dev/allow-stdio."),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(text(&out.stdout), "");

    ok(env.veil().args(["stop", &id]).output().unwrap());
    assert!(processes_mentioning("sleep 31339").is_empty());
    let out = env.veil().args(["logs", &id]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("allow_stdio = false"),
        "{}",
        text(&out.stderr)
    );
    let ps = ok(env.veil().args(["ps", "-a"]).output().unwrap());
    assert!(text(&ps.stdout).contains(&id), "{}", text(&ps.stdout));
    ok(env.veil().args(["rm", &id]).output().unwrap());
    assert!(!env.data().join("run").join(&id).exists());
}

/// Must hold 5 (first half): an unreachable KBS gives bounded retries, then a clear error.
#[test]
fn unreachable_kbs_is_a_clear_bounded_error() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo never");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = Instant::now();
    let out = env
        .veil()
        .args([
            "run",
            "--kbs",
            &format!("http://127.0.0.1:{port}"),
            &format!("oci:{}:app:1", layout.root().display()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("failed after 5 attempts") && e.contains(&format!("127.0.0.1:{port}")),
        "{e}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "took {:?}",
        start.elapsed()
    );
    assert!(!text(&out.stdout).contains("never"));

    // Detached, the same failure reaches the caller, and `veil ps -a` keeps
    // a record of what was asked for and why it failed.
    let img = format!("oci:{}:app:1", layout.root().display());
    let out = env
        .veil()
        .args(["run", "-d", "--name", "unreachable"])
        .args(["--kbs", &format!("http://127.0.0.1:{port}"), &img])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("failed after 5 attempts"),
        "{}",
        text(&out.stderr)
    );
    let ps = ok(env.veil().args(["ps", "-a", "--json"]).output().unwrap());
    let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    let failed: Vec<_> = ps
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["name"] == "unreachable")
        .collect();
    assert_eq!(failed.len(), 1, "{ps}");
    assert_eq!(failed[0]["status"], "failed");
    assert_eq!(failed[0]["image"], img.as_str());
}

/// Must hold 6: SIGINT to `veil run` and SIGKILL of the agent leave nothing behind.
#[test]
fn interrupting_run_or_killing_the_agent_leaves_nothing() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo ready; sleep 31340");
    let img = format!("oci:{}:app:1", layout.root().display());
    for kill_agent in [false, true] {
        let mut child = env
            .veil()
            .args(["run", &img])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        if kill_agent {
            let pid = running_record(&env)["agent_pid"].as_u64().unwrap() as i32;
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            )
            .unwrap();
        } else {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            )
            .unwrap();
        }
        let status = wait_for_exit(&mut child, 30);
        assert!(!status.success());
        assert_eq!(processes_mentioning("sleep 31340"), Vec::<String>::new());
        assert_eq!(
            processes_mentioning(&env.data().to_string_lossy()),
            Vec::<String>::new()
        );
        assert_eq!(
            mounts_mentioning(&env.data().to_string_lossy()),
            Vec::<String>::new()
        );
        for e in std::fs::read_dir(env.data().join("run")).unwrap().flatten() {
            assert!(
                !e.path().join("sandbox").exists(),
                "sandbox dir left behind"
            );
        }
    }
}
