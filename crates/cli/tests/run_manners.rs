//! `veil run` and the lifecycle commands as people use them (issue 17):
//! conflicting or inapplicable arguments refused before anything starts,
//! refusals that say how to get what was refused, `-d` that never
//! misreports a started sandbox, output into closed pipes, several ids,
//! `prune`, `ps -q/--json`. Process sandbox, root (as CI).

use std::os::fd::OwnedFd;
use std::process::{Command, Stdio};

mod common;
use common::*;

/// `veil …` whose stdout is a pipe nobody reads any more: every write
/// fails with EPIPE.
fn into_closed_pipe(mut c: Command) -> std::process::Output {
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().unwrap();
    drop(r);
    c.stdout(Stdio::from(w))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

fn usage_error(out: &std::process::Output, needle: &str) {
    refused_with(out, 2, needle)
}

/// `veil run` failed before the container ran: docker's exit 125.
fn run_refused(out: &std::process::Output, needle: &str) {
    refused_with(out, 125, needle)
}

fn refused_with(out: &std::process::Output, code: i32, needle: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}; stderr: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains(needle),
        "expected {needle:?} in: {}",
        text(&out.stderr)
    );
}

/// init-data generated (`veil policy generate`) for a pod whose one
/// container `app` runs the layout's `app:1`.
fn app_init_data(env: &Env, layout: &veil_image::OciLayout) -> std::path::PathBuf {
    let pod = env.dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: one\nspec:\n  containers:\n  - name: app\n    image: app:1\n",
    )
    .unwrap();
    let init = env.dir.path().join("init.toml");
    ok(env
        .veil()
        .args(["policy", "generate", "--image-dir"])
        .arg(layout.root())
        .arg(&pod)
        .arg("-o")
        .arg(env.dir.path().join("out.yaml"))
        .arg("--init-data")
        .arg(&init)
        .output()
        .unwrap());
    init
}

/// Arguments that cannot all be honoured are refused (exit 125, naming the
/// argument) before any sandbox starts; so is a secret the embedded KBS
/// does not hold, with the commands that fix it.
#[test]
fn conflicting_and_inapplicable_arguments_are_refused_up_front() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo never-runs");
    image(&env, &layout, "other:1", "echo other");
    let img = format!("oci:{}:app:1", layout.root().display());
    let init = app_init_data(&env, &layout);
    let init_arg = init.to_str().unwrap();

    let out = env
        .veil()
        .args(["run", "--init-data", init_arg, &img, "--", "echo", "hi"])
        .output()
        .unwrap();
    run_refused(&out, "-- echo hi: the command is fixed by the policy");
    let other = format!("oci:{}:other:1", layout.root().display());
    let out = env
        .veil()
        .args(["run", "--init-data", init_arg, &other])
        .output()
        .unwrap();
    run_refused(&out, "is not an image the policy from --init-data runs");
    let out = env
        .veil()
        .args(["run", "--init-data", init_arg, "--allow-exec", "sh", &img])
        .output()
        .unwrap();
    run_refused(&out, "--allow-exec only works with a generated policy");

    for (flag, value) in [
        ("--memory", "512M"),
        ("--vcpus", "2"),
        ("--accel", "kvm"),
        ("--boot-timeout", "9"),
    ] {
        let out = env
            .veil()
            .args(["run", flag, value, &img])
            .output()
            .unwrap();
        run_refused(
            &out,
            &format!("{flag} only applies to the VM sandbox (--sandbox vm)"),
        );
    }
    let out = env
        .veil()
        .args(["run", "--sandbox", "vm", "--memory", "2X", &img])
        .output()
        .unwrap();
    run_refused(&out, "unknown unit");

    let out = env
        .veil()
        .args(["run", "--secret", "k=kbs:///default/secret/missing", &img])
        .output()
        .unwrap();
    run_refused(&out, "veil secret put default/secret/missing FILE");
    assert!(text(&out.stderr).contains("veil secret ls"));

    let out = env
        .veil()
        .args(["kill", "-s", "BOGUS", "x"])
        .output()
        .unwrap();
    usage_error(&out, "not a signal");
    // Nothing ran: the refusals that needed the image or the KBS left
    // failed records, and no output.
    let ps = ok(env.veil().args(["ps", "-a", "--json"]).output().unwrap());
    let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    assert!(
        ps.as_array()
            .unwrap()
            .iter()
            .all(|r| r["status"] == "failed"),
        "{ps}"
    );
    assert!(!files_say(&env, "never-runs"));
}

fn files_say(env: &Env, needle: &str) -> bool {
    std::fs::read_dir(env.data().join("run"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_to_string(e.path().join("output.log")).is_ok_and(|s| s.contains(needle))
        })
}

/// `veil run --pod` of YAML that `veil policy generate` annotated runs
/// under the annotation's init-data (not a new policy) and says so; a
/// Deployment's pod name pattern gets a fitting name, and a `--name` that
/// does not fit is refused naming the pattern.
#[test]
fn annotated_deployment_runs_its_own_init_data_under_a_fitting_name() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo from-the-deployment");
    let deploy = env.dir.path().join("deploy.yaml");
    std::fs::write(
        &deploy,
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchLabels: {app: web}\n  template:\n    metadata:\n      labels: {app: web}\n    spec:\n      containers:\n      - name: app\n        image: app:1\n",
    )
    .unwrap();
    let annotated = env.dir.path().join("annotated.yaml");
    let init = env.dir.path().join("init.toml");
    ok(env
        .veil()
        .args(["policy", "generate", "--image-dir"])
        .arg(layout.root())
        .arg(&deploy)
        .arg("-o")
        .arg(&annotated)
        .arg("--init-data")
        .arg(&init)
        .output()
        .unwrap());
    assert!(
        std::fs::read_to_string(&annotated)
            .unwrap()
            .contains("io.katacontainers.config.hypervisor.cc_init_data")
    );
    let run = |extra: &[&str]| {
        let mut c = env.veil();
        c.args(["run", "--pod"])
            .arg(&annotated)
            .arg("--oci-layout")
            .arg(layout.root())
            .args(extra);
        c.output().unwrap()
    };
    let out = run(&["--name", "web"]);
    run_refused(
        &out,
        "--name \"web\" does not fit the policy's pod name pattern",
    );
    assert!(text(&out.stderr).contains("[a-z0-9]{5}$"));

    let out = ok(run(&[]));
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(stdout, "from-the-deployment\n", "{stderr}");
    assert!(
        stderr.contains(
            "using the init-data of the pod's io.katacontainers.config.hypervisor.cc_init_data annotation"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("generated the policy"), "{stderr}");
    // The same init-data as `veil policy generate --init-data` wrote.
    let parsed = veil_policy::ParsedInitData::parse(&std::fs::read(&init).unwrap()).unwrap();
    assert!(
        stderr.contains(&format!("init-data    {}", parsed.digest())),
        "expected {}:\n{stderr}",
        parsed.digest()
    );
    // Generated without a KBS: the summary says what that means.
    assert!(
        stderr.contains("init-data names no KBS: nothing attested, no secrets"),
        "{stderr}"
    );
    let ps = ok(env.veil().args(["ps", "-a", "--json"]).output().unwrap());
    let ps: serde_json::Value = serde_json::from_slice(&ps.stdout).unwrap();
    // The refused `--name web` left a failed record; the run is the other.
    let r = ps
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] != "failed")
        .unwrap();
    let name = r["name"].as_str().unwrap();
    assert!(
        name.starts_with("web-") && name.len() == "web-x-xxxxx".len(),
        "{ps}"
    );
    assert_eq!(r["kind"], "process", "{ps}");
    assert_eq!(r["status"], "exited", "{ps}");
    let created = r["created"].as_str().unwrap();
    assert!(
        created.len() == "2026-12-03T09:00:00Z".len() && created.ends_with('Z'),
        "{ps}"
    );
}

/// An exec the policy refuses names the annotation (and, for a single
/// image, `--allow-exec`) that would allow it; `--allow-exec` does. `-d`
/// shows the attestation summary. `kill -s TERM`, `stop`/`rm` of several
/// ids, `prune`, `ps -q`.
#[test]
fn refusals_say_how_and_lifecycle_commands_take_names_and_several_ids() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo up; sleep 31341");
    let img = format!("oci:{}:app:1", layout.root().display());
    let out = ok(env
        .veil()
        .args([
            "run",
            "-d",
            "--allow-exec",
            "cat /etc/hostname",
            "--name",
            "one",
            &img,
        ])
        .output()
        .unwrap());
    let one = text(&out.stdout).trim().to_string();
    assert_eq!(one.len(), 12, "{}", text(&out.stdout));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "veil: sandbox {one} (one): process sandbox, TEE: sim"
        )) && stderr.contains("WARNING: simulated TEE")
            && stderr.contains("(policy generated from the image)")
            && stderr.contains("(embedded, dev mode)"),
        "{stderr}"
    );
    let out = ok(env
        .veil()
        .args(["exec", "one", "--", "cat", "/etc/hostname"])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "one\n");
    let out = env
        .veil()
        .args(["exec", "one", "--", "sh", "-c", "id"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126));
    let e = text(&out.stderr);
    assert!(
        e.contains(r#"policy.veil.dev/exec.app: '[["sh","-c","id"]]'"#)
            && e.contains(&format!("veil run --allow-exec 'sh -c id' {img}")),
        "{e}"
    );

    let two = text(
        &ok(env
            .veil()
            .args(["run", "-d", "--name", "two", &img])
            .output()
            .unwrap())
        .stdout,
    )
    .trim()
    .to_string();
    let q = ok(env.veil().args(["ps", "-q"]).output().unwrap());
    let mut ids: Vec<String> = text(&q.stdout).lines().map(str::to_string).collect();
    ids.sort();
    let mut want = vec![one.clone(), two.clone()];
    want.sort();
    assert_eq!(ids, want);
    let table = text(&ok(env.veil().args(["ps"]).output().unwrap()).stdout);
    assert!(
        table.lines().next().unwrap().contains("KIND")
            && table.lines().next().unwrap().contains("CREATED")
            && table.contains(" ago")
            && table.contains("process"),
        "{table}"
    );

    // A TERM the workload's shell dies of; the policy allows 15.
    for sig in ["TERM", "SIGTERM", "15"] {
        let out = env
            .veil()
            .args(["kill", "-s", sig, "nosuch"])
            .output()
            .unwrap();
        usage_error(&out, "no sandbox \"nosuch\"");
    }
    ok(env
        .veil()
        .args(["kill", "-s", "SIGTERM", "two"])
        .output()
        .unwrap());

    let out = env
        .veil()
        .args(["stop", &one, "nosuch", &two])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("{one}\n{two}\n"));
    assert!(text(&out.stderr).contains("nosuch"));
    assert!(processes_mentioning("sleep 31341").is_empty());

    let three = text(&ok(env.veil().args(["run", "-d", &img]).output().unwrap()).stdout)
        .trim()
        .to_string();
    let pruned = ok(env.veil().args(["prune"]).output().unwrap());
    let mut p: Vec<String> = text(&pruned.stdout).lines().map(str::to_string).collect();
    p.sort();
    assert_eq!(p, want, "prune removes the exited ones only");
    let out = ok(env.veil().args(["rm", "-f", &three]).output().unwrap());
    assert_eq!(text(&out.stdout), format!("{three}\n"));
    assert!(processes_mentioning("sleep 31341").is_empty());
    assert_eq!(
        text(&ok(env.veil().args(["ps", "-a", "-q"]).output().unwrap()).stdout),
        ""
    );
}

/// A workload that exits at once: `veil run -d` still reports it started
/// (id on stdout, exit 0), with and without `--rm`.
#[test]
fn detach_never_misreports_a_workload_that_exited_at_once() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo quick");
    let img = format!("oci:{}:app:1", layout.root().display());
    for i in 0..4 {
        let mut c = env.veil();
        c.args(["run", "-d"]);
        if i % 2 == 1 {
            c.arg("--rm");
        }
        let out = c.arg(&img).output().unwrap();
        let id = text(&out.stdout).trim().to_string();
        assert!(
            out.status.success() && id.len() == 12,
            "run {i}: {:?}\nstdout: {id}\nstderr: {}",
            out.status,
            text(&out.stderr)
        );
    }
    // The --rm ones leave nothing once their monitors are done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let n = text(&ok(env.veil().args(["ps", "-a", "-q"]).output().unwrap()).stdout)
            .lines()
            .count();
        if n == 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{n} records left");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Output into a pipe whose reader is gone: no panic, and `--rm` still
/// removes the record.
#[test]
fn closed_pipes_are_not_errors() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo x");
    let img = format!("oci:{}:app:1", layout.root().display());
    let veil = env!("CARGO_BIN_EXE_veil");
    let out = ok(Command::new("sh")
        .arg("-c")
        .arg(format!(
            "'{veil}' run --rm '{img}' -- /bin/sh -c 'i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done' | head -n 1"
        ))
        .env("VEIL_DATA_DIR", env.data())
        .env("VEIL_AGENT", agent())
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "line 0\n");
    assert!(
        !text(&out.stderr).contains("panicked"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&ok(env.veil().args(["ps", "-a", "-q"]).output().unwrap()).stdout),
        "",
        "--rm removes the record"
    );

    ok(env
        .veil()
        .args(["run", "--name", "kept", &img])
        .output()
        .unwrap());
    for args in [
        &["ps", "-a"][..],
        &["logs", "kept"],
        &["ps", "-a", "--json"],
    ] {
        let mut c = env.veil();
        c.args(args);
        let out = into_closed_pipe(c);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert!(
            !text(&out.stderr).contains("panicked"),
            "{}",
            text(&out.stderr)
        );
    }
}

/// The summary says what veil knows: that the embedded KBS runs in dev
/// mode, and of an external KBS only that it released. `veil secret ls`
/// lists the embedded KBS's resources (snake_case JSON, RFC 3339 times).
#[test]
fn summary_claims_dev_mode_only_for_the_embedded_kbs() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo ran");
    let img = format!("oci:{}:app:1", layout.root().display());

    let d = env.dir.path().join("kbs");
    std::fs::create_dir_all(&d).unwrap();
    let veil = std::path::Path::new(env!("CARGO_BIN_EXE_veil"));
    veil_testkit::kbs::make_keys(veil, &d);
    std::fs::create_dir_all(env.data().join("sim")).unwrap();
    // fs::copy keeps the 0600 mode the sim platform insists on.
    std::fs::copy(d.join("sim.key"), env.data().join("sim/platform-key.pem")).unwrap();
    let kbs = veil_testkit::kbs::DevKbs::serve(veil, &d);
    let out = ok(env
        .veil()
        .args(["run", "--rm", "--kbs", &kbs.url(), &img])
        .output()
        .unwrap());
    let e = text(&out.stderr);
    eprintln!("{e}");
    assert!(e.contains("attestation  ok"), "{e}");
    assert!(
        !e.contains("released only because the KBS runs in dev mode"),
        "{e}"
    );
    assert!(!e.contains("(embedded, dev mode)"), "{e}");
    assert!(
        e.contains("token contraindicated (software-signed sim evidence; this KBS released anyway: its mode is unknown to veil"),
        "{e}"
    );

    let out = ok(env.veil().args(["run", "--rm", &img]).output().unwrap());
    let e = text(&out.stderr);
    assert!(
        e.contains("released only because the KBS runs in dev mode")
            && e.contains("(embedded, dev mode)"),
        "{e}"
    );

    let f = env.dir.path().join("s.txt");
    std::fs::write(&f, b"12345").unwrap();
    ok(env
        .veil()
        .args(["secret", "put", "default/secret/k"])
        .arg(&f)
        .output()
        .unwrap());
    let ls = ok(env
        .veil()
        .args(["secret", "ls", "--json"])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&ls.stdout).unwrap();
    assert_eq!(v[0]["path"], "default/secret/k", "{v}");
    assert_eq!(v[0]["size"], 5, "{v}");
    assert!(v[0]["updated_at"].as_str().unwrap().ends_with('Z'), "{v}");
    let table = text(&ok(env.veil().args(["secret", "ls"]).output().unwrap()).stdout);
    assert!(
        table.starts_with("PATH") && table.contains("default/secret/k"),
        "{table}"
    );
}

/// Docker's 125: `veil run` failed before the container ran, whether the
/// flag is unknown, the image is not there, or the policy refuses the
/// request at create (with given init-data, an env the policy does not
/// allow); other commands keep exit 2 for usage errors.
#[test]
fn veil_run_failures_exit_125_as_docker() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "true");
    let img = format!("oci:{}:app:1", layout.root().display());
    let out = env
        .veil()
        .args(["run", "--no-such-flag", &img])
        .output()
        .unwrap();
    run_refused(&out, "--no-such-flag");
    let missing = format!("oci:{}:missing:9", layout.root().display());
    let out = env.veil().args(["run", &missing]).output().unwrap();
    run_refused(&out, "missing:9");
    let init = app_init_data(&env, &layout);
    let out = env
        .veil()
        .args(["run", "--rm", "--init-data"])
        .arg(&init)
        .args(["-e", "SNEAKY=1", &img])
        .output()
        .unwrap();
    run_refused(&out, "env \"SNEAKY=1\" matches no rule");
    let out = env.veil().args(["ps", "--no-such-flag"]).output().unwrap();
    usage_error(&out, "--no-such-flag");
}
