//! Helpers the shim's containerd tests share (`ctr.rs`, `cri.rs`).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use veil_image::OciLayout;
use veil_image::builder::ImageBuilder;
use veil_image::spec::{Compression, ContainerConfig};

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn ok(out: Output, what: &str) -> Output {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Panic unless the test runs as root (containerd and its containers need it).
pub fn assert_root() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert!(
        root,
        "this test runs containerd and containers and needs root (CI runs as root)"
    );
}

/// A busybox image named `reference` whose command is `sh -c cmd`, with
/// `files` (path in the image, content, mode) added.
pub fn busybox_image(
    layout: &OciLayout,
    work: &Path,
    reference: &str,
    cmd: &str,
    files: &[(&str, &str, u32)],
) {
    use std::os::unix::fs::PermissionsExt;
    let root = work.join(format!("rootfs-{}", reference.replace(['/', ':'], "_")));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in [
        "sh",
        "echo",
        "sleep",
        "cat",
        "id",
        "nc",
        "cut",
        "sha256sum",
        "hostname",
        "ls",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    for (path, content, mode) in files {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode)).unwrap();
    }
    let mut b = ImageBuilder::new(layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![cmd.into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/".into()),
        user: Some("0:0".into()),
        ..Default::default()
    });
    b.add_layer_dir(&root, Compression::Gzip).unwrap();
    b.finish(reference).unwrap();
}

pub fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("timed out waiting for {what}");
    false
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if !e
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = text(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Files (not empty dirs) under `dir`.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
