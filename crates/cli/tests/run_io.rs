//! Process I/O of `veil run` and `veil exec` end to end (issue 14, must
//! hold 5): stdin at end-of-file without `-i`, forwarded with `-i`, a
//! terminal made in the container with `-t` whose size follows veil's.
//! Real `veil` and `veil-agent`, the process sandbox; needs root, as CI.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

mod common;
use common::*;

fn img(env: &Env) -> String {
    let layout = env.layout();
    image(env, &layout, "app:1", "echo default");
    format!("oci:{}:app:1", layout.root().display())
}

/// `echo hi | veil run IMG -- cat` ends at once (stdin at EOF); with `-i`
/// the input reaches the container, and its end closes the container's
/// stdin; a large input arrives whole (several chunks, in order).
#[test]
fn stdin_is_at_eof_without_i_and_forwarded_with_i() {
    let env = Env::new();
    let img = img(&env);
    // `close`: the test's end of veil's stdin closes after the input
    // (otherwise it stays open until veil has exited).
    let run = |args: &[&str], input: &[u8], close: bool| {
        let mut child = env
            .veil()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let input = input.to_vec();
        // Written from a thread and never closed by the test before the
        // end: without -i the container must not wait for it.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input);
            (!close).then_some(stdin)
        });
        let status = wait_for_exit(&mut child, 60);
        let mut out = Vec::new();
        child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
        let mut err = Vec::new();
        child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
        drop(writer.join());
        (status, text(&out), text(&err))
    };
    let t = Instant::now();
    let (status, out, err) = run(&["run", "--rm", &img, "--", "cat"], b"hi\n", false);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(out, "", "without -i the container reads nothing: {err}");
    assert!(t.elapsed() < Duration::from_secs(50), "{err}");

    let (status, out, err) = run(&["run", "--rm", "-i", &img, "--", "cat"], b"hi\n", true);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(out, "hi\n", "{err}");

    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let (status, out, err) = run(&["run", "--rm", "-i", &img, "--", "sha256sum"], &big, true);
    assert_eq!(status.code(), Some(0), "{err}");
    assert_eq!(
        out.split_whitespace().next(),
        Some(sha256_hex(&big).as_str()),
        "{err}"
    );
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

/// A pseudo-terminal for veil itself, with a window size.
fn pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let ws = nix::pty::Winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let p = nix::pty::openpty(Some(&ws), None).unwrap();
    (p.master, p.slave)
}

/// Everything the master end shows until `veil` exits (EIO once it has).
fn read_all(master: OwnedFd) -> String {
    let mut f = std::fs::File::from(master);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    text(&out)
}

/// `-t` gives the container a terminal of its own (`tty` names a
/// /dev/pts path inside it), sized like veil's terminal; `veil exec -t`
/// likewise; a policy that does not allow a terminal refuses it, saying so.
#[test]
fn tty_gives_a_pts_in_the_container_sized_like_veils_terminal() {
    let env = Env::new();
    let img = img(&env);
    // veil's stdout is a pipe: the container still gets its terminal.
    let out = ok(env
        .veil()
        .args(["run", "--rm", "-t", &img, "--", "tty"])
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let line = text(&out.stdout);
    assert!(line.starts_with("/dev/pts/"), "{line:?}");
    assert!(line.ends_with("\r\n"), "terminal line ending: {line:?}");

    // veil on a 33x101 terminal: the container's terminal is 33x101.
    let (master, slave) = pty(33, 101);
    let mut child = env
        .veil()
        .args(["run", "--rm", "-t", &img, "--", "stty", "size"])
        .stdin(Stdio::null())
        .stdout(slave.try_clone().unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(slave);
    let reader = std::thread::spawn(move || read_all(master));
    let status = wait_for_exit(&mut child, 60);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    let shown = reader.join().unwrap();
    assert!(shown.contains("33 101"), "{shown:?} / {err}");

    // exec -t, when the policy allows the command.
    let id = run_detached(&env, &["--allow-exec", "tty", &img, "--", "sleep", "31340"]);
    let _rm = RmOnDrop(&env, id.clone());
    let out = ok(env
        .veil()
        .args(["exec", "-t", &id, "--", "tty"])
        .stdin(Stdio::null())
        .output()
        .unwrap());
    assert!(
        text(&out.stdout).starts_with("/dev/pts/"),
        "{}",
        text(&out.stdout)
    );

    // A pod whose container has no `tty: true`: -t is refused, naming the field.
    let layout = env.layout();
    let pod = write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\nspec:\n  containers:\n  - name: app\n    image: app:1\n",
    );
    let out = env
        .veil()
        .args(["run", "--rm", "-t", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(layout.root())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("tty: true"),
        "{}",
        text(&out.stderr)
    );
}

/// `-e`, `--env-file`, `-w`, `-u`, `--hostname`, `--entrypoint` reach the
/// container, pinned in the generated policy: under that policy (given as
/// init-data) a different `-e` is refused with the policy's explanation.
/// Exit codes as docker's: 127 not found, 126 cannot be invoked. A second
/// sandbox with a name in use is refused, naming the one that has it.
#[test]
fn docker_flags_are_pinned_in_the_policy_and_exit_codes_follow_docker() {
    let env = Env::new();
    let img = img(&env);
    let envfile = env.dir.path().join("env");
    std::fs::write(&envfile, "# from a file\nB=two words\n").unwrap();
    let out = ok(env
        .veil()
        .args(["run", "--rm", "-e", "A=1", "--env-file"])
        .arg(&envfile)
        .args([
            "-w",
            "/bin",
            "-u",
            "1000:1001",
            "--hostname",
            "box",
            &img,
            "--",
        ])
        .args(["sh", "-c", "echo $A $B; pwd; id -u; id -g; hostname"])
        .output()
        .unwrap());
    assert_eq!(
        text(&out.stdout),
        "1 two words\n/bin\n1000\n1001\nbox\n",
        "{}",
        text(&out.stderr)
    );

    let out = ok(env
        .veil()
        .args([
            "run",
            "--rm",
            "--entrypoint",
            "/bin/echo",
            &img,
            "--",
            "from",
            "entrypoint",
        ])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "from entrypoint\n");

    let out = env
        .veil()
        .args(["run", "--rm", &img, "--", "nosuch"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("executable not found"),
        "{}",
        text(&out.stderr)
    );
    let out = env
        .veil()
        .args(["run", "--rm", &img, "--", "/bin"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{}", text(&out.stderr));

    let id = run_detached(
        &env,
        &["--name", "web", "-e", "A=1", &img, "--", "sleep", "31342"],
    );
    let _rm = RmOnDrop(&env, id.clone());
    let out = env
        .veil()
        .args(["run", "--rm", "--name", "web", &img])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("already in use by sandbox") && text(&out.stderr).contains(&id),
        "{}",
        text(&out.stderr)
    );
    // The detached run's policy pins A=1: A=2 under it is refused by the agent.
    let init = env.data().join("run").join(&id).join("init-data.toml");
    let out = env
        .veil()
        .args(["run", "--rm", "--init-data"])
        .arg(&init)
        .args(["-e", "A=2", &img])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("create_container: env \"A=2\" matches no rule"),
        "{}",
        text(&out.stderr)
    );
}

/// `veil logs -f --tail N -c CONTAINER --timestamps` over a two-container
/// pod: per-line container prefixes, the filter, the tail, timestamps, and
/// `-f` following until the sandbox stops.
#[test]
fn logs_follow_tail_per_container_and_timestamps() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo default");
    let pod = write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: two\n  namespace: default\nspec:\n  containers:\n  - name: a\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"echo a1; echo a2; sleep 2; echo a3\"]\n  - name: b\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"echo b1 >&2\"]\n",
    );
    let id = run_detached(
        &env,
        &[
            "--pod",
            pod.to_str().unwrap(),
            "--oci-layout",
            layout.root().to_str().unwrap(),
        ],
    );
    let _rm = RmOnDrop(&env, id.clone());
    // -f returns once the sandbox has stopped, with everything a wrote.
    let out = ok(env
        .veil()
        .args(["logs", "-f", "-c", "a", &id])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "a1\na2\na3\n", "{}", text(&out.stderr));
    let out = ok(env
        .veil()
        .args(["logs", "--tail", "1", "-c", "a", &id])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "a3\n");
    let out = ok(env.veil().args(["logs", &id]).output().unwrap());
    assert!(
        text(&out.stdout).contains("[a] a1\n[a] a2\n"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(text(&out.stderr), "[b] b1\n");
    let out = ok(env
        .veil()
        .args(["logs", "-t", "-c", "b", &id])
        .output()
        .unwrap());
    let line = text(&out.stderr);
    assert!(
        line.starts_with("20") && line.ends_with("Z b1\n"),
        "{line:?}"
    );
    let out = env
        .veil()
        .args(["logs", "-c", "nosuch", &id])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no such container (a, b)"),
        "{}",
        text(&out.stderr)
    );
}

/// Two containers of a pod share an `emptyDir` (issue 14: both used to fail
/// with "nonexistent directory"): what one writes, the other reads.
#[test]
fn containers_of_a_pod_share_an_empty_dir() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo default");
    let pod = write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: share\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  volumes:\n  - name: data\n    emptyDir: {}\n  containers:\n  - name: writer\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"echo shared-bytes > /data/f\"]\n    volumeMounts:\n    - {name: data, mountPath: /data}\n  - name: reader\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do if [ -f /data/f ]; then cat /data/f; exit 0; fi; sleep 0.2; done; exit 3\"]\n    volumeMounts:\n    - {name: data, mountPath: /data, readOnly: true}\n",
    );
    let out = env
        .veil()
        .args(["run", "--rm", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(layout.root())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("[reader] shared-bytes\n"),
        "{}\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// The process sandbox runs a pod with resource limits but cannot enforce
/// them (the host owns the cgroups): `veil run -d` says so once in its
/// summary, the record keeps the warning, and `veil stats` reports the
/// container's usage from `/proc`, marked not enforced.
#[test]
fn process_sandbox_reports_usage_and_says_limits_are_not_enforced() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo default");
    let pod = write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: limited\n  namespace: default\nspec:\n  containers:\n  - name: app\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"sleep 60\"]\n    resources:\n      limits: {memory: 64Mi, cpu: 250m}\n",
    );
    let out = ok(env
        .veil()
        .args(["run", "-d", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(layout.root())
        .output()
        .unwrap());
    let id = text(&out.stdout).trim().to_string();
    let _rm = RmOnDrop(&env, id.clone());
    let err = text(&out.stderr);
    let warning = "resource limits of container ";
    assert_eq!(err.matches(warning).count(), 1, "{err}");
    assert!(
        err.contains("(memory 67108864 bytes, cpu 250m) are not enforced: the process sandbox"),
        "{err}"
    );
    let rec = record_of(&env, &id);
    assert!(
        rec["warnings"][0]
            .as_str()
            .unwrap()
            .contains("not enforced"),
        "{rec}"
    );
    let stats: serde_json::Value = serde_json::from_slice(
        &ok(env.veil().args(["stats", "--json", &id]).output().unwrap()).stdout,
    )
    .unwrap();
    assert_eq!(stats["live"], true, "{stats}");
    let app = &stats["containers"]["app"];
    assert_eq!(app["source"], "proc", "{stats}");
    assert_eq!(app["enforced"], false, "{stats}");
    assert!(app["memory_current"].as_u64() > Some(0), "{stats}");
    assert!(app["pids_current"].as_u64() >= Some(1), "{stats}");
    let table = text(&ok(env.veil().args(["stats", &id]).output().unwrap()).stdout);
    assert!(
        table.contains("app") && table.contains("limits not enforced (process sandbox)"),
        "{table}"
    );
}
