//! Helpers shared by the `veil run` end-to-end tests (process and VM
//! sandboxes): the real `veil-agent`, a scratch data dir per test, busybox
//! test images, and checks for leftover processes.

#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use veil_image::OciLayout;
use veil_image::builder::ImageBuilder;
use veil_image::spec::{Compression, ContainerConfig};

/// The agent binary the end-to-end tests run.
pub use veil_testkit::veil_agent as agent;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "veil run tests need root (CI runs as root)"
        );
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn veil(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_veil"));
        c.env("VEIL_DATA_DIR", self.data())
            .env("VEIL_AGENT", agent());
        c
    }
    pub fn layout(&self) -> OciLayout {
        OciLayout::create(self.dir.path().join("layout")).unwrap()
    }
}

pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A busybox image whose default command is `cmd`.
pub fn image(env: &Env, layout: &OciLayout, tag: &str, cmd: &str) {
    let root = env.dir.path().join(format!("src-{tag}").replace(':', "_"));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in [
        "sh",
        "cat",
        "echo",
        "sha256sum",
        "sleep",
        "wc",
        "cut",
        "hostname",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    let mut b = ImageBuilder::new(layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![cmd.into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/".into()),
        ..Default::default()
    });
    b.add_layer_dir(&root, Compression::Gzip).unwrap();
    b.finish(tag).unwrap();
}

pub fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

pub fn sha256_prefix(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    text(&c.wait_with_output().unwrap().stdout)[..16].to_string()
}

/// The record (`record.json`) of the one sandbox of `env` that is running.
pub fn running_record(env: &Env) -> serde_json::Value {
    let rec = std::fs::read_dir(env.data().join("run"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("sandbox").exists())
        .expect("a running sandbox");
    serde_json::from_slice(&std::fs::read(rec.path().join("record.json")).unwrap()).unwrap()
}

/// Wait (at most `secs`) for `child` to exit.
pub fn wait_for_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "veil run did not exit within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}
