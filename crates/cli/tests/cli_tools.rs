//! `veil info`, `veil attest sim-root`, `veil completion`, `veil man`, and
//! commands that must not depend on the source tree.

use std::path::Path;
use std::process::{Command, Output};

use veil_runtime::{LaunchRecord, SimPlatform};

fn veil(data: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_veil"));
    c.env("VEIL_DATA_DIR", data);
    c
}

fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The top-level subcommands `veil --help` lists.
fn subcommands() -> Vec<String> {
    let out = ok(Command::new(env!("CARGO_BIN_EXE_veil"))
        .arg("--help")
        .output()
        .unwrap());
    let help = text(&out.stdout);
    let cmds: Vec<String> = help
        .split("Commands:\n")
        .nth(1)
        .unwrap()
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .filter(|c| c != "help")
        .collect();
    assert!(cmds.len() > 10, "{help}");
    cmds
}

#[test]
fn info_json_reports_the_host_and_the_sim_root_that_verifies_run_evidence() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");

    // Before anything created it, the sim key is reported missing, not created.
    let out = ok(veil(&data).args(["info", "--json"]).output().unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sim"]["key_exists"], false, "{v}");
    assert!(!data.join("sim/platform-key.pem").exists());
    for key in [
        "version",
        "data_dir",
        "kvm",
        "qemu",
        "tee_devices",
        "sim",
        "guest_image",
        "containerd",
        "shim",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["data_dir"], data.display().to_string());
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["kvm"]["usable"].is_boolean() && v["kvm"]["accel"].is_string());
    assert!(v["qemu"]["sev_snp_guest"].is_boolean() && v["qemu"]["tdx_guest"].is_boolean());
    let devices: Vec<&str> = v["tee_devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    for d in [
        "/sys/kernel/config/tsm/report",
        "/dev/sev-guest",
        "/dev/tdx_guest",
        "/dev/tpmrm0",
    ] {
        assert!(devices.contains(&d), "{devices:?}");
    }
    assert_eq!(v["guest_image"]["present"], false);

    // `veil attest sim-root` creates the key veil run uses and prints its root.
    let root_pem = text(&ok(veil(&data).args(["attest", "sim-root"]).output().unwrap()).stdout);
    assert!(
        root_pem.starts_with("-----BEGIN PUBLIC KEY-----"),
        "{root_pem}"
    );
    let root_file = tmp.path().join("root.pem");
    ok(veil(&data)
        .args(["attest", "sim-root", "-o"])
        .arg(&root_file)
        .output()
        .unwrap());
    assert_eq!(std::fs::read_to_string(&root_file).unwrap(), root_pem);

    // `veil info` now shows the same root.
    let out = ok(veil(&data).args(["doctor", "--json"]).output().unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["sim"]["key_exists"], true);
    assert_eq!(v["sim"]["root_public_key_pem"], root_pem.as_str());

    // Evidence signed by the platform `veil run` loads from this data dir
    // verifies under that root, and not under another sim root.
    let platform =
        SimPlatform::load_or_create(&veil_runtime::paths::sim_dir(&data)).expect("sim platform");
    let launch = LaunchRecord {
        measurement: [7; 48],
        init_data: [9; 64],
        debug: false,
    };
    let evidence = platform.report(&launch, &[5; 64]).unwrap();
    let ev_file = tmp.path().join("evidence.json");
    std::fs::write(&ev_file, evidence.to_string()).unwrap();
    let verify = |root: &Path| {
        veil(&data)
            .args(["attest", "verify", "--tee", "sim", "--json", "--evidence"])
            .arg(&ev_file)
            .arg("--sim-root")
            .arg(root)
            .args(["--report-data", &hex::encode([5u8; 64])])
            .output()
            .unwrap()
    };
    let out = ok(verify(&root_file));
    let claims: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(claims["measurement"], hex::encode([7u8; 48]), "{claims}");

    let other = tempfile::tempdir().unwrap();
    let other_root = tmp.path().join("other-root.pem");
    ok(veil(other.path())
        .args(["attest", "sim-root", "-o"])
        .arg(&other_root)
        .output()
        .unwrap());
    assert_eq!(verify(&other_root).status.code(), Some(1));
}

#[test]
fn info_text_names_each_check() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(veil(tmp.path()).arg("info").output().unwrap());
    let s = text(&out.stdout);
    for k in [
        "data dir",
        "kvm",
        "qemu",
        "tee device",
        "sim platform",
        "guest image",
        "containerd",
    ] {
        assert!(s.contains(k), "{k} missing:\n{s}");
    }
    assert!(!s.contains('\x1b'), "escape sequences on a pipe:\n{s}");
}

#[test]
fn bash_completion_knows_every_subcommand() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(veil(tmp.path())
        .args(["completion", "bash"])
        .output()
        .unwrap());
    let script = text(&out.stdout);
    assert!(
        script.contains("complete -F _veil"),
        "not a bash completion"
    );
    for c in subcommands() {
        assert!(
            script.contains(&format!("veil__{}", c.replace('-', "__")))
                || script.contains(&format!(" {c} ")),
            "{c} missing from the bash completion"
        );
    }
    // `veil attest sim-root` and a nested flag are completed too.
    assert!(script.contains("sim-root"));
    assert!(script.contains("--init-data-digest"));
    for shell in ["zsh", "fish"] {
        let out = ok(veil(tmp.path())
            .args(["completion", shell])
            .output()
            .unwrap());
        assert!(
            text(&out.stdout).contains("sim-root"),
            "{shell} completion lacks sim-root"
        );
    }
}

#[test]
fn man_pages_for_every_subcommand_render() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("man");
    ok(veil(tmp.path())
        .args(["man", "-o"])
        .arg(&dir)
        .output()
        .unwrap());
    let pages: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(pages.contains(&"veil.1".to_string()));
    for c in subcommands() {
        assert!(pages.contains(&format!("veil-{c}.1")), "no page for {c}");
    }
    for nested in [
        "veil-attest-verify.1",
        "veil-attest-sim-root.1",
        "veil-kbs-reference-value-set.1",
        "veil-image-encrypt.1",
    ] {
        assert!(pages.contains(&nested.to_string()), "no {nested}");
    }
    // Hidden internals get no page.
    assert!(!pages.iter().any(|p| p.contains("relay")), "{pages:?}");

    // Every page renders with man(1) when it is installed.
    if Command::new("man").arg("--version").output().is_err() {
        eprintln!("man not installed: rendering not checked");
        return;
    }
    for p in &pages {
        let out = Command::new("man")
            .arg("-l")
            .arg(dir.join(p))
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .unwrap();
        assert!(out.status.success(), "man -l {p}: {}", text(&out.stderr));
        let name = p.trim_end_matches(".1");
        assert!(
            text(&out.stdout).contains(name),
            "{p} rendered without its name"
        );
        assert!(
            !text(&out.stderr).contains("warning"),
            "{p}: {}",
            text(&out.stderr)
        );
    }
}

#[test]
fn bench_attest_runs_outside_the_source_tree() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ok(veil(tmp.path())
        .args(["bench", "attest", "--seconds", "0.05", "--json"])
        .current_dir(tmp.path())
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["snp"]["full_per_second"].as_f64().unwrap() > 0.0, "{v}");
    assert_eq!(v["dcap"].as_array().unwrap().len(), 2);

    // An explicit folder is still honoured, and a wrong one says what is missing.
    let out = veil(tmp.path())
        .args(["bench", "attest", "--seconds", "0.05", "--fixtures"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("snp/milan-vcek-report.bin"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn install_cli_installs_binary_completion_and_man_pages_idempotently() {
    let tmp = tempfile::tempdir().unwrap();
    let prefix = tmp.path().join("prefix");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/install-cli.sh");
    let install = || {
        let out = ok(Command::new("bash")
            .arg(&script)
            .env("VEIL", env!("CARGO_BIN_EXE_veil"))
            .env("VEIL_AGENT", tmp.path().join("no-agent"))
            .env("PREFIX", &prefix)
            .output()
            .unwrap());
        text(&out.stdout)
    };
    let first = install();
    for f in [
        "bin/veil",
        "share/bash-completion/completions/veil",
        "share/zsh/site-functions/_veil",
        "share/fish/vendor_completions.d/veil.fish",
        "share/man/man1/veil.1",
        "share/man/man1/veil-attest-sim-root.1",
    ] {
        assert!(prefix.join(f).is_file(), "{f} not installed:\n{first}");
    }
    let second = install();
    assert!(second.contains("(0 files changed)"), "{second}");
}
