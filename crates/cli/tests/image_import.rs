//! `veil image import DIR oci:LAYOUT:TAG`: a rootfs directory becomes an
//! image whose config carries the given entrypoint, env and ports; the
//! same tree gives the same digest; modes and absolute symlinks survive a
//! round trip through `veil image unpack`; nothing outside DIR is read.

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::Path;

use assert_cmd::Command;

fn veil() -> Command {
    Command::cargo_bin("veil").unwrap()
}

fn rootfs(dir: &Path) {
    fs::create_dir_all(dir.join("usr/bin")).unwrap();
    fs::create_dir_all(dir.join("tmp")).unwrap();
    fs::set_permissions(dir.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
    fs::copy("/bin/busybox", dir.join("usr/bin/busybox")).unwrap();
    symlink("/etc/shadow", dir.join("usr/bin/shadow-link")).unwrap();
    symlink("/etc", dir.join("host-etc")).unwrap();
}

fn import(dir: &Path, reference: &str, extra: &[&str]) -> std::process::Output {
    veil()
        .args(["image", "import"])
        .arg(dir)
        .arg(reference)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn import_makes_a_deterministic_image_with_its_config() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    rootfs(&a);
    rootfs(&b);
    let config = t.path().join("config.json");
    fs::write(
        &config,
        r#"{"Entrypoint":["/usr/bin/busybox"],"Cmd":["sh"],"ExposedPorts":{"6379/tcp":{}}}"#,
    )
    .unwrap();
    let layout = t.path().join("layout");
    let r1 = format!("oci:{}:one", layout.display());
    let r2 = format!("oci:{}:two", layout.display());
    let flags = [
        "--config",
        config.to_str().unwrap(),
        "-e",
        "A=1",
        "--expose",
        "53/udp",
    ];
    let o1 = import(&a, &r1, &flags);
    assert!(
        o1.status.success(),
        "{}",
        String::from_utf8_lossy(&o1.stderr)
    );
    let o2 = import(&b, &r2, &flags);
    assert!(
        o2.status.success(),
        "{}",
        String::from_utf8_lossy(&o2.stderr)
    );
    // Same tree (made at another time, other inodes): same manifest digest.
    assert_eq!(o1.stdout, o2.stdout);
    assert!(String::from_utf8_lossy(&o1.stdout).starts_with("sha256:"));

    let out = veil()
        .args(["image", "inspect", &r1, "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["config"]["Entrypoint"],
        serde_json::json!(["/usr/bin/busybox"])
    );
    assert_eq!(v["config"]["Env"], serde_json::json!(["A=1"]));
    assert_eq!(
        v["config"]["ExposedPorts"],
        serde_json::json!({"53/udp": {}, "6379/tcp": {}})
    );

    // Round trip: modes kept, symlinks stored as links, host files not read.
    let unpacked = t.path().join("unpacked");
    let out = veil()
        .args(["image", "unpack", &r1])
        .arg(&unpacked)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tmp_mode = fs::metadata(unpacked.join("tmp"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    assert_eq!(
        fs::read_link(unpacked.join("usr/bin/shadow-link")).unwrap(),
        Path::new("/etc/shadow")
    );
    assert!(
        fs::symlink_metadata(unpacked.join("host-etc"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert_eq!(
        fs::read(unpacked.join("usr/bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
}

#[test]
fn import_refuses_what_it_cannot_honour() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("root");
    rootfs(&dir);
    let layout = t.path().join("layout");
    // No tag.
    let out = import(&dir, &format!("oci:{}", layout.display()), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("a tag is required"));
    // A misspelt config field is not silently dropped.
    let config = t.path().join("config.json");
    fs::write(&config, r#"{"Entrypont":["/bin/sh"]}"#).unwrap();
    let out = import(
        &dir,
        &format!("oci:{}:x", layout.display()),
        &["--config", config.to_str().unwrap()],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown field \"Entrypont\""),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A FIFO is named.
    nix::unistd::mkfifo(&dir.join("tmp/fifo"), nix::sys::stat::Mode::S_IRWXU).unwrap();
    let out = import(&dir, &format!("oci:{}:x", layout.display()), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("tmp/fifo: is a FIFO"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
