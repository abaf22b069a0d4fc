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
    let pod = env.dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: default\nspec:\n  containers:\n  - name: app\n    image: app:1\n",
    )
    .unwrap();
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
