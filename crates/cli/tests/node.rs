//! `veil node install` / `uninstall` against Debian's containerd (issue 15,
//! must-hold 5), and the deploy/ manifests against the Kubernetes OpenAPI
//! schemas of two Kubernetes versions (kubernetes-validate, pinned, from
//! the venv scripts/install-deps.sh makes).

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{ok, text};

fn veil() -> Command {
    Command::new(env!("CARGO_BIN_EXE_veil"))
}

/// Every file and directory under `root`, with contents, sorted.
fn snapshot(root: &Path) -> Vec<(String, Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let r = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let mode = e.metadata().unwrap().permissions().mode();
            if e.file_type().unwrap().is_dir() {
                out.push((format!("{r}/"), Vec::new(), mode));
                stack.push(p);
            } else {
                out.push((r, fs::read(&p).unwrap(), mode));
            }
        }
    }
    out.sort();
    out
}

/// A node root whose containerd config is what Debian's containerd
/// writes by default (`containerd config default`).
fn node_root(dir: &Path) -> PathBuf {
    let root = dir.join("node");
    fs::create_dir_all(root.join("etc/containerd")).unwrap();
    let default = ok(Command::new("containerd")
        .args(["config", "default"])
        .output()
        .expect("containerd (scripts/install-deps.sh installs it)"));
    fs::write(root.join("etc/containerd/config.toml"), &default.stdout).unwrap();
    root
}

fn install(root: &Path, shim: &Path) -> String {
    let out = ok(veil()
        .args(["node", "install", "--root"])
        .arg(root)
        .arg("--shim")
        .arg(shim)
        .output()
        .unwrap());
    text(&out.stdout)
}

#[test]
fn node_install_twice_is_once_and_uninstall_restores_the_node_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let root = node_root(dir.path());
    let shim = dir.path().join("containerd-shim-veil-v2");
    fs::write(&shim, b"\x7fELF not really, but installed byte for byte").unwrap();
    let before = snapshot(&root);

    let first = install(&root, &shim);
    assert!(first.contains("/etc/containerd/config.toml"), "{first}");
    let once = snapshot(&root);
    let second = install(&root, &shim);
    assert!(second.contains("nothing to change"), "{second}");
    assert_eq!(snapshot(&root), once, "a second install changed the node");

    // containerd itself reads the drop-in with the schema it uses, and
    // sees every handler as a veil runtime with the annotation allowlist.
    let drop_in = root.join("etc/veil/containerd/veil.toml");
    let dump = ok(Command::new("containerd")
        .arg("--config")
        .arg(&drop_in)
        .args(["config", "dump"])
        .output()
        .unwrap());
    let dump = text(&dump.stdout);
    for h in ["veil", "veil-vm-sim", "veil-vm-snp", "veil-vm-tdx"] {
        let table = format!("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.{h}]");
        let at = dump
            .find(&table)
            .unwrap_or_else(|| panic!("{table} not in containerd's view:\n{dump}"));
        let section = &dump[at..];
        let section = &section[..section[1..]
            .find("\n[plugins")
            .map_or(section.len(), |e| e + 1)];
        // containerd runs containerd-shim-<handler>-v2 for it.
        assert!(
            section.contains(&format!("runtime_type = \"io.containerd.{h}.v2\"")),
            "{section}"
        );
        assert!(
            section.contains("io.katacontainers.config.hypervisor.cc_init_data"),
            "{section}"
        );
    }
    assert!(
        dump.contains("runtime_path = \"/usr/local/bin/containerd-shim-veil-vm-snp-v2\""),
        "{dump}"
    );
    // Which the handler's link to the shim, so the shim knows its handler.
    assert_eq!(
        fs::read_link(root.join("usr/local/bin/containerd-shim-veil-vm-snp-v2")).unwrap(),
        Path::new("containerd-shim-veil-v2")
    );
    let shim_toml = fs::read_to_string(root.join("etc/veil/shim.toml")).unwrap();
    assert!(shim_toml.contains("[handlers.veil-vm-tdx]"), "{shim_toml}");
    // The main config imports the drop-in and keeps everything else.
    let main = fs::read_to_string(root.join("etc/containerd/config.toml")).unwrap();
    assert!(
        main.contains("imports = [\"/etc/veil/containerd/veil.toml\"]"),
        "{main}"
    );
    assert_eq!(
        fs::read(root.join("usr/local/bin/containerd-shim-veil-v2")).unwrap(),
        fs::read(&shim).unwrap()
    );

    let out = ok(veil()
        .args(["node", "uninstall", "--root"])
        .arg(&root)
        .output()
        .unwrap());
    assert!(
        text(&out.stdout).contains("removed"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        snapshot(&root),
        before,
        "uninstall did not restore the node exactly"
    );
}

#[test]
fn node_install_refuses_an_unknown_handler_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = node_root(dir.path());
    let shim = dir.path().join("shim");
    fs::write(&shim, b"x").unwrap();
    let before = snapshot(&root);
    let out = veil()
        .args(["node", "install", "--handlers", "veil,kata-qemu", "--root"])
        .arg(&root)
        .arg("--shim")
        .arg(&shim)
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("unknown handler \"kata-qemu\""), "{err}");
    assert!(err.contains("veil-vm-tdx"), "{err}");
    assert_eq!(snapshot(&root), before);
}

fn kubernetes_validate() -> PathBuf {
    if let Ok(p) = std::env::var("VEIL_KUBERNETES_VALIDATE") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache"));
    let p = cache.join("veil/kubernetes-validate-1.37.0/bin/kubernetes-validate");
    assert!(
        p.exists(),
        "{} missing: run scripts/install-deps.sh",
        p.display()
    );
    p
}

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy")
}

/// Every manifest in deploy/ is valid (strict: no unknown fields) for two
/// Kubernetes minors; a manifest with a typo is not (the check can fail).
#[test]
fn deploy_manifests_validate_against_two_kubernetes_versions() {
    let files: Vec<PathBuf> = fs::read_dir(deploy_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    assert!(files.len() >= 2, "{files:?}");
    for k in ["1.31.0", "1.35.0"] {
        let out = Command::new(kubernetes_validate())
            .args(["--strict", "--quiet", "-k", k])
            .args(&files)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Kubernetes {k}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    let rc = fs::read_to_string(deploy_dir().join("runtimeclasses.yaml")).unwrap();
    fs::write(&bad, rc.replacen("handler: veil\n", "handlr: veil\n", 1)).unwrap();
    let out = Command::new(kubernetes_validate())
        .args(["--strict", "--quiet", "-k", "1.31.0"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a typo passed validation");
}

/// The RuntimeClasses name exactly the handlers `veil node install` puts
/// into containerd's config.
#[test]
fn runtime_classes_name_the_installed_handlers() {
    let rc = fs::read_to_string(deploy_dir().join("runtimeclasses.yaml")).unwrap();
    let handlers: Vec<&str> = rc
        .lines()
        .filter_map(|l| l.strip_prefix("handler: "))
        .collect();
    assert_eq!(
        handlers,
        ["veil", "veil-vm-sim", "veil-vm-snp", "veil-vm-tdx"],
        "deploy/runtimeclasses.yaml and `veil node install --handlers` disagree"
    );
}

/// deploy/build-installer-image.sh builds an image in which the
/// DaemonSet's commands work: veil and the shim run (their libraries are
/// in), busybox gives sh/nsenter/cut, and `veil node install` installs
/// into a root inside the container.
#[test]
fn installer_image_runs_veil_node_install() {
    let env = common::Env::new();
    let bin = Path::new(env!("CARGO_BIN_EXE_veil")).parent().unwrap();
    assert!(
        bin.join("containerd-shim-veil-v2").is_file(),
        "build the workspace first (cargo build --workspace)"
    );
    let layout = env.dir.path().join("installer");
    let reference = format!("oci:{}:0.1.0", layout.display());
    ok(Command::new("bash")
        .arg(deploy_dir().join("build-installer-image.sh"))
        .arg(&reference)
        .arg(bin)
        .output()
        .unwrap());
    let script = "veil --version; /opt/veil/bin/containerd-shim-veil-v2 --version; \
        nsenter --help 2>&1 | head -1; \
        mkdir -p /tmp/node; veil node install --root /tmp/node --shim /opt/veil/bin/containerd-shim-veil-v2 --containerd-version 1.6.20 >/dev/null; \
        grep -c runtime_type /tmp/node/etc/veil/containerd/veil.toml";
    let out = ok(env
        .veil()
        .args(["run", "--rm", &reference, "--", "/bin/sh", "-c", script])
        .output()
        .unwrap());
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("veil "), "{stdout}");
    assert!(lines[1].contains("io.containerd.veil.v2"), "{stdout}");
    assert!(lines[2].starts_with("BusyBox"), "nsenter missing: {stdout}");
    assert_eq!(lines[3], "4", "every handler installed: {stdout}");
}
