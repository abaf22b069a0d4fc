//! The docs and the CLI never drift: every shell block the docs mark as
//! runnable (a fenced block whose info string is `sh veil-test`) runs here
//! and must exit 0.
//!
//! The marked blocks of one file run in order, each as its own
//! `bash -euo pipefail` script, in one scratch directory laid out like the
//! repository root (`examples/` beside it, `../shared/fixtures` above it),
//! with a fresh `VEIL_DATA_DIR` and the `veil` just built first on `PATH`,
//! in a network namespace with only loopback (nothing reaches the network).
//! Files persist from one block to the next; shell variables do not.
//! Every other `sh` block must say, in the text since the previous block,
//! why it is "not run by" this test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The info string that marks a block as run by this test.
const MARK: &str = "sh veil-test";
/// What an unmarked `sh` block's preceding text must say.
const REASON: &str = "not run by";
/// One block's time limit.
const BLOCK_TIMEOUT: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// README.md and docs/*.md, relative to the repo.
fn doc_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .map(|p| Path::new("docs").join(p.file_name().unwrap()))
        .collect();
    files.sort();
    files.insert(0, "README.md".into());
    files
}

/// A fenced block: its info string, first line (1-based), body, and the
/// text between the previous block and this one.
struct Block {
    info: String,
    line: usize,
    body: String,
    before: String,
}

fn blocks(text: &str) -> Vec<Block> {
    let mut out = Vec::new();
    let mut lines = text.lines().enumerate();
    let mut before = String::new();
    while let Some((i, l)) = lines.next() {
        let Some(info) = l.strip_prefix("```") else {
            before.push_str(l);
            before.push('\n');
            continue;
        };
        let mut body = String::new();
        for (_, l) in lines.by_ref() {
            if l.starts_with("```") {
                break;
            }
            body.push_str(l);
            body.push('\n');
        }
        out.push(Block {
            info: info.trim().to_string(),
            line: i + 1,
            body,
            before: std::mem::take(&mut before),
        });
    }
    out
}

/// The scratch directory's working dir: `<tmp>/repo`, with `examples`
/// and `../shared` linked to the real ones.
fn scratch(tmp: &Path) -> PathBuf {
    let work = tmp.join("repo");
    std::fs::create_dir_all(&work).unwrap();
    std::os::unix::fs::symlink(repo().join("examples"), work.join("examples")).unwrap();
    std::os::unix::fs::symlink(repo().join("../shared"), tmp.join("shared")).unwrap();
    work
}

fn run_block(doc: &Path, b: &Block, n: usize, tmp: &Path, work: &Path) {
    use std::os::unix::process::CommandExt;
    let script = tmp.join(format!("block-{n}.sh"));
    std::fs::write(&script, &b.body).unwrap();
    let veil = PathBuf::from(env!("CARGO_BIN_EXE_veil"));
    let path = std::env::join_paths(std::iter::once(veil.parent().unwrap().to_path_buf()).chain(
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
    ))
    .unwrap();
    let (out, err) = (
        tmp.join(format!("block-{n}.out")),
        tmp.join(format!("block-{n}.err")),
    );
    // A network namespace of its own (loopback only): the docs' fixed
    // ports (a KBS on 127.0.0.1:8080) cannot collide with anything else.
    let mut child = Command::new("unshare")
        .args(["--net", "--", "sh", "-c"])
        .arg(r#"ip link set lo up && exec bash -euo pipefail "$0""#)
        .arg(&script)
        .current_dir(work)
        .env("PATH", path)
        .env("VEIL_DATA_DIR", tmp.join("data"))
        .env("VEIL_AGENT", veil_testkit::veil_agent())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        // Its own process group, so anything it leaves behind is killed.
        .process_group(0)
        .spawn()
        .unwrap();
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if start.elapsed() > BLOCK_TIMEOUT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    let _ = child.wait();
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    assert!(
        status.is_some_and(|s| s.success()),
        "{}:{}: the block {} (status {status:?}):\n{}\n--- stdout\n{}--- stderr\n{}",
        doc.display(),
        b.line,
        if status.is_none() {
            "timed out"
        } else {
            "failed"
        },
        b.body,
        read(&out),
        read(&err)
    );
}

/// Run the marked blocks of `doc`; returns how many ran.
fn run_doc(doc: &str) -> usize {
    assert!(
        nix::unistd::geteuid().is_root(),
        "the docs' commands run veil sandboxes, which need root (CI runs as root)"
    );
    let doc = Path::new(doc);
    let text = std::fs::read_to_string(repo().join(doc)).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let work = scratch(tmp.path());
    let mut n = 0;
    for b in blocks(&text).iter().filter(|b| b.info == MARK) {
        n += 1;
        run_block(doc, b, n, tmp.path(), &work);
    }
    n
}

#[test]
fn readme_tour_runs() {
    assert!(
        run_doc("README.md") >= 2,
        "README.md lost its runnable tour"
    );
}

#[test]
fn docs_kbs_runs() {
    assert!(run_doc("docs/kbs.md") >= 1);
}

#[test]
fn docs_kubernetes_runs() {
    assert!(run_doc("docs/kubernetes.md") >= 1);
}

/// Every doc file with marked blocks has a test above, and every `sh`
/// block not run says why.
#[test]
fn every_shell_block_is_run_or_says_why_not() {
    let tested = ["README.md", "docs/kbs.md", "docs/kubernetes.md"];
    let mut problems = Vec::new();
    for doc in doc_files() {
        let text = std::fs::read_to_string(repo().join(&doc)).unwrap();
        let bs = blocks(&text);
        let marked = bs.iter().filter(|b| b.info == MARK).count();
        if marked > 0 && !tested.contains(&doc.to_str().unwrap()) {
            problems.push(format!(
                "{}: {marked} `{MARK}` blocks but no test runs them (add it to docs_commands.rs)",
                doc.display()
            ));
        }
        for b in bs.iter().filter(|b| b.info == "sh") {
            if !b.before.to_lowercase().contains(REASON) {
                problems.push(format!(
                    "{}:{}: a `sh` block neither marked `{MARK}` nor preceded by why it is \"{REASON}\" the docs test",
                    doc.display(),
                    b.line
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn parser_finds_marked_blocks_and_reasons() {
    let text = "intro\n```sh veil-test\nveil info\n```\nNot run by the test: hardware.\n\n```sh\nveil x\n```\n";
    let bs = blocks(text);
    assert_eq!(bs.len(), 2);
    assert_eq!((bs[0].info.as_str(), bs[0].line), (MARK, 2));
    assert_eq!(bs[0].body, "veil info\n");
    assert!(bs[1].before.to_lowercase().contains(REASON));
    assert!(!bs[0].before.to_lowercase().contains(REASON));
}
