//! Must-hold 1 of issue 15: Debian's containerd (a private instance per
//! test) runs containers through `ctr run --runtime io.containerd.veil.v2`
//! from an image imported with `ctr image import`, in a veil process
//! sandbox: output, exit code, `ctr task exec` (allowed and refused by the
//! policy), `ctr task kill`, and deleting leaves no process, mount or
//! record behind.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{assert_root, ok, processes_mentioning, text, wait_for, walk};
use veil_image::OciLayout;
use veil_policy::generate::{LayoutResolver, generate};
use veil_testkit::containerd::{Containerd, ContainerdOptions, mounts_under};

const RUNTIME: &str = "io.containerd.veil.v2";
const IMAGE: &str = "docker.io/veil-test/app";

/// A busybox image tagged `IMAGE:tag` whose command is `sh -c cmd`.
fn image(layout: &OciLayout, work: &Path, tag: &str, cmd: &str) {
    common::busybox_image(layout, work, &format!("{IMAGE}:{tag}"), cmd, &[]);
}

/// base64(gzip(init-data)) for a pod running `IMAGE:tag` as container `app`.
fn init_data(layout: &Path, tag: &str, exec: &str) -> String {
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\n  namespace: default\n  annotations:\n    policy.veil.dev/exec.app: '{exec}'\nspec:\n  containers:\n  - name: app\n    image: {IMAGE}:{tag}\n"
    );
    let g = generate(
        &[&pod],
        &LayoutResolver::open(layout).unwrap(),
        &Default::default(),
    )
    .unwrap();
    veil_policy::initdata::encode_annotation(g.workloads[0].init_data_toml.as_bytes()).unwrap()
}

struct Env {
    dir: tempfile::TempDir,
    ctd: Containerd,
    data: PathBuf,
}

fn env() -> Env {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-veil-v2"));
    let config = dir.path().join("shim.toml");
    // The shims read the config when containerd starts them (after this
    // function); it names containerd's root, which the testkit picks.
    let ctd = Containerd::start(ContainerdOptions {
        shim_dir: Some(shim.parent().unwrap().to_path_buf()),
        env: vec![
            ("VEIL_SHIM_CONFIG".into(), config.display().to_string()),
            ("VEIL_SHIM_LOG".into(), "debug".into()),
        ],
        cri: None,
        private_mounts: false,
    });
    std::fs::write(
        &config,
        format!(
            "[handlers.veil]\ncontainerd_root = {:?}\ndata_dir = {:?}\nagent = {:?}\n",
            ctd.root().display().to_string(),
            data.display().to_string(),
            veil_testkit::veil_agent().display().to_string()
        ),
    )
    .unwrap();
    Env { dir, ctd, data }
}

impl Env {
    fn import(&self, layout: &Path) {
        let tar = self.dir.path().join("image.tar");
        ok(
            std::process::Command::new("tar")
                .arg("-C")
                .arg(layout)
                .arg("-cf")
                .arg(&tar)
                .arg(".")
                .output()
                .unwrap(),
            "tar",
        );
        ok(
            self.ctd
                .ctr()
                .args(["image", "import"])
                .arg(&tar)
                .output()
                .unwrap(),
            "ctr image import",
        );
    }

    fn ctr(&self, args: &[&str]) -> Output {
        self.ctd.ctr().args(args).output().unwrap()
    }

    fn run(&self, extra: &[&str], tag: &str, id: &str, init: &str) -> Output {
        let fifo = self.ctd.fifo_dir();
        let ann = format!("{}={init}", veil_policy::initdata::INIT_DATA_ANNOTATION);
        self.ctd
            .ctr()
            .arg("run")
            .arg("--fifo-dir")
            .arg(&fifo)
            .args(["--runtime", RUNTIME, "--annotation", &ann])
            .args(extra)
            .arg(format!("{IMAGE}:{tag}"))
            .arg(id)
            .output()
            .unwrap()
    }

    fn exec(&self, id: &str, exec_id: &str, argv: &[&str]) -> Output {
        let fifo = self.ctd.fifo_dir();
        self.ctd
            .ctr()
            .args(["task", "exec", "--fifo-dir"])
            .arg(&fifo)
            .args(["--exec-id", exec_id, id])
            .args(argv)
            .output()
            .unwrap()
    }

    /// Fail with containerd's log (which holds the shims' logs).
    fn explain(&self, what: &str) -> String {
        format!("{what}\n--- containerd log:\n{}", self.ctd.log())
    }
}

#[test]
fn ctr_runs_a_container_in_a_veil_sandbox() {
    let env = env();
    let layout_dir = env.dir.path().join("layout");
    let layout = OciLayout::create(&layout_dir).unwrap();
    image(
        &layout,
        env.dir.path(),
        "1",
        "echo hello from veil; id -u; exit 3",
    );
    image(&layout, env.dir.path(), "2", "echo ready; exec sleep 300");
    env.import(&layout_dir);

    // Foreground: the workload's output and exit code come back through ctr.
    let init1 = init_data(&layout_dir, "1", "[]");
    let out = env.run(&["--rm"], "1", "one", &init1);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        env.explain(&format!(
            "ctr run: stdout {} stderr {}",
            text(&out.stdout),
            text(&out.stderr)
        ))
    );
    assert_eq!(
        text(&out.stdout).replace("\r\n", "\n"),
        "hello from veil\n0\n"
    );

    // Detached: exec allowed by the policy, exec refused with its reason, kill.
    let init2 = init_data(&layout_dir, "2", r#"[["/bin/echo","exec-ok"]]"#);
    let out = env.run(&["-d"], "2", "two", &init2);
    ok(out, &env.explain("ctr run -d"));
    let out = env.exec("two", "e1", &["/bin/echo", "exec-ok"]);
    let out = ok(out, &env.explain("ctr task exec (allowed)"));
    assert_eq!(text(&out.stdout).trim(), "exec-ok");
    let out = env.exec("two", "e2", &["/bin/cat", "/etc/shadow"]);
    assert!(
        !out.status.success(),
        "a command the policy does not list must be refused"
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("exec") && err.contains("policy"),
        "the refusal carries the policy's reason: {err}"
    );

    let tasks = text(&ok(env.ctr(&["task", "ls"]), "ctr task ls").stdout);
    assert!(
        tasks
            .lines()
            .any(|l| l.starts_with("two") && l.contains("RUNNING")),
        "{tasks}"
    );
    ok(
        env.ctr(&["task", "kill", "-s", "SIGKILL", "two"]),
        &env.explain("ctr task kill"),
    );
    assert!(
        wait_for("task two to stop", 20, || {
            text(&env.ctr(&["task", "ls"]).stdout)
                .lines()
                .any(|l| l.starts_with("two") && l.contains("STOPPED"))
        }),
        "{}",
        env.explain("task two did not stop after SIGKILL")
    );
    ok(
        env.ctr(&["task", "delete", "two"]),
        &env.explain("ctr task delete"),
    );
    ok(
        env.ctr(&["container", "delete", "two"]),
        "ctr container delete",
    );

    // Nothing left: no shim, no agent, no mount under the test's dirs, no
    // sandbox dir or layout under the shim's data dir.
    assert!(
        wait_for("the shims to exit", 20, || env.ctd.shim_pids().is_empty()),
        "{}",
        env.explain(&format!("shims still running: {:?}", env.ctd.shim_pids()))
    );
    let data = env.data.display().to_string();
    assert!(
        wait_for("the sandboxes to exit", 10, || processes_mentioning(&data)
            .is_empty()),
        "processes left: {:?}",
        processes_mentioning(&data)
    );
    assert_eq!(mounts_under(env.dir.path()), Vec::<PathBuf>::new());
    assert_eq!(mounts_under(env.ctd.dir()), Vec::<PathBuf>::new());
    let left: Vec<_> = walk(&env.data.join("shim"));
    assert!(left.is_empty(), "left under the shim's data dir: {left:?}");
    let tasks = text(&env.ctr(&["task", "ls"]).stdout);
    assert_eq!(tasks.lines().count(), 1, "only the header: {tasks}");
}

#[test]
fn a_killed_shim_takes_its_sandbox_with_it_and_delete_cleans_up() {
    let env = env();
    let layout_dir = env.dir.path().join("layout");
    let layout = OciLayout::create(&layout_dir).unwrap();
    image(&layout, env.dir.path(), "2", "echo ready; exec sleep 300");
    env.import(&layout_dir);
    let init = init_data(&layout_dir, "2", "[]");
    ok(
        env.run(&["-d"], "2", "three", &init),
        &env.explain("ctr run -d"),
    );
    let data = env.data.display().to_string();
    assert!(
        !processes_mentioning(&data).is_empty(),
        "the sandbox's agent runs from the shim's data dir"
    );
    let shims = env.ctd.shim_pids();
    assert_eq!(shims.len(), 1, "{shims:?}");
    // SAFETY: kill(2) on the shim this test's containerd started.
    unsafe { libc::kill(shims[0], libc::SIGKILL) };

    // containerd sees the shim die, runs `containerd-shim-veil-v2 delete`,
    // and the task ends; the sandbox died with its shim.
    assert!(
        wait_for("the sandbox to die with its shim", 20, || {
            processes_mentioning(&data).is_empty()
        }),
        "{}",
        env.explain(&format!("left: {:?}", processes_mentioning(&data)))
    );
    assert!(
        wait_for("the task to be gone or stopped", 20, || {
            let t = text(&env.ctr(&["task", "ls"]).stdout);
            !t.lines()
                .any(|l| l.starts_with("three") && l.contains("RUNNING"))
        }),
        "{}",
        env.explain("task still running after its shim was killed")
    );
    let _ = env.ctr(&["task", "delete", "three"]);
    ok(
        env.ctr(&["container", "delete", "three"]),
        &env.explain("ctr container delete"),
    );
    let left = walk(&env.data.join("run"));
    assert!(
        left.is_empty(),
        "{}",
        env.explain(&format!("record files left: {left:?}"))
    );
    let left = walk(&env.data.join("shim"));
    assert!(left.is_empty(), "layout left: {left:?}");
}
