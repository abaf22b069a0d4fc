//! `veil run --sandbox vm` end to end under QEMU's TCG (KVM is not relied
//! on): the real `veil`, `veil-agent` (as PID 1 of the guest), Debian's
//! kernel, the embedded KBS on loopback. Boots are expensive, so the guest
//! image is built once per test process and only a few tests boot.
//! Needs root and scripts/install-deps.sh (qemu-system-x86, linux-image-amd64).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::*;

/// `veil guest build --json` into `dir`.
fn guest_build(dir: &Path) -> serde_json::Value {
    veil_testkit::guest::build(Path::new(env!("CARGO_BIN_EXE_veil")), dir)
}

/// One guest image for every VM test of this process (shared with the
/// shim's VM tests: the same dir under the target dir).
fn guest() -> (&'static Path, &'static serde_json::Value) {
    let g = veil_testkit::guest::shared(
        Path::new(env!("CARGO_BIN_EXE_veil")),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    );
    (&g.dir, &g.build)
}

/// The kernel `veil run --sandbox vm --tee sim|none` boots from the shared
/// guest image: the extracted PVH vmlinux.
fn guest_kernel() -> PathBuf {
    veil_testkit::guest::shared(
        Path::new(env!("CARGO_BIN_EXE_veil")),
        Path::new(env!("CARGO_TARGET_TMPDIR")),
    )
    .kernel()
}

impl Env {
    /// `veil run --sandbox vm --tee sim`, forced to TCG, with the shared guest.
    fn run_vm(&self) -> Command {
        self.run_vm_tee("sim")
    }
    /// `veil run --sandbox vm --tee TEE` (sim or none), forced to TCG, with
    /// the shared guest.
    fn run_vm_tee(&self, tee: &str) -> Command {
        self.run_vm_with(tee, &guest().0.join("initrd.img"))
    }
    /// The same with another initrd (guests that fail to boot).
    fn run_vm_with(&self, tee: &str, initrd: &Path) -> Command {
        let mut c = self.veil();
        c.args([
            "run",
            "--rm",
            "--sandbox",
            "vm",
            "--tee",
            tee,
            "--accel",
            "tcg",
        ])
        .arg("--kernel")
        .arg(guest_kernel())
        .arg("--initrd")
        .arg(initrd);
        c
    }
    /// `veil run -d --sandbox vm --tee sim`, forced to TCG, with the shared
    /// guest (no `--rm`: the test removes the sandbox).
    fn run_vm_detached(&self) -> Command {
        self.run_vm_kept(&["-d"])
    }
    /// `veil run LEAD… --sandbox vm --tee sim`, forced to TCG, with the
    /// shared guest, without `--rm`.
    fn run_vm_kept(&self, lead: &[&str]) -> Command {
        let mut c = self.veil();
        c.arg("run")
            .args(lead)
            .args(["--sandbox", "vm", "--tee", "sim", "--accel", "tcg"])
            .arg("--kernel")
            .arg(guest_kernel())
            .arg("--initrd")
            .arg(guest().0.join("initrd.img"));
        c
    }
    /// A busybox image running `cmd`, as `oci:DIR:app:1`.
    fn vm_image(&self, cmd: &str) -> String {
        let layout = self.layout();
        image(self, &layout, "app:1", cmd);
        format!("oci:{}:app:1", layout.root().display())
    }
}

fn nothing_left(env: &Env) {
    let data = env.data().display().to_string();
    // QEMU and its relays die with the run; give the kernel a moment to reap.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !processes_mentioning(&data).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_mentioning(&data), Vec::<String>::new());
    let run = env.data().join("run");
    for e in std::fs::read_dir(&run).into_iter().flatten().flatten() {
        assert!(
            !e.path().join("sandbox").exists(),
            "sandbox dir left in {}",
            e.path().display()
        );
    }
}

#[test]
fn guest_build_is_reproducible() {
    let (dir, first) = guest();
    let again = tempfile::tempdir().unwrap();
    let again = again.path().join("guest");
    let second = guest_build(&again);
    assert_eq!(first["initrd_sha384"], second["initrd_sha384"]);
    assert_eq!(first["pvh_kernel_sha384"], second["pvh_kernel_sha384"]);
    assert!(first["pvh_kernel_sha384"].is_string(), "{first}");
    assert_eq!(
        std::fs::read(dir.join("initrd.img")).unwrap(),
        std::fs::read(again.join("initrd.img")).unwrap()
    );
    assert_eq!(first["sim_measurement"], second["sim_measurement"]);
    assert!(
        first["modules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m.as_str().unwrap().ends_with("virtio_net.ko"))
    );
}

/// The main flow: boots under TCG, attests to the embedded KBS, gets a
/// secret, runs a busybox container, streams its output and exit code, and
/// tears down. The measurement the guest's sim evidence carries is the one
/// computed from the exact kernel, initrd and command line.
#[test]
fn vm_sim_runs_a_container_with_a_secret_and_tears_down() {
    let env = Env::new();
    let secret = b"vm-secret-4b1d";
    let sf = env.dir.path().join("s.txt");
    std::fs::write(&sf, secret).unwrap();
    let out = env
        .veil()
        .args(["secret", "put", "default/secret/k"])
        .arg(&sf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let img = env.vm_image(
        "echo fp $(sha256sum /run/veil/secrets/k | cut -c1-16); echo to-stderr >&2; exit 7",
    );
    let t = Instant::now();
    let out: Output = env
        .run_vm()
        .args(["--timings", "--secret", "k=kbs:///default/secret/k", &img])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("boot to exit: {:?}\n{stderr}", t.elapsed());
    assert_eq!(
        out.status.code(),
        Some(7),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(
        stdout.contains(&format!("fp {}", sha256_prefix(secret))),
        "{stdout}"
    );
    assert!(stderr.contains("to-stderr"), "{stderr}");
    assert!(stderr.contains("VM sandbox (QEMU, tcg)"), "{stderr}");
    assert!(stderr.contains("tcg (requested)"), "{stderr}");
    let (_, g) = guest();
    let m = g["sim_measurement"].as_str().unwrap();
    assert!(
        stderr.contains(&format!(
            "measurement  {m} (matches the launch measurement)"
        )),
        "expected measurement {m}:\n{stderr}"
    );
    assert!(stderr.contains("attestation  ok"), "{stderr}");
    nothing_left(&env);
}

#[test]
fn qemu_that_cannot_start_is_a_clear_error() {
    let env = Env::new();
    let img = env.vm_image("echo never");
    let t = Instant::now();
    let out = env
        .run_vm()
        .args(["--qemu", "/nonexistent/qemu-system-x86_64", &img])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("QEMU could not be started (/nonexistent/qemu-system-x86_64)"),
        "{stderr}"
    );
    assert!(t.elapsed() < Duration::from_secs(60));
    nothing_left(&env);
}

#[test]
fn guest_whose_kernel_panics_is_a_clear_error_within_bounds() {
    let env = Env::new();
    let img = env.vm_image("echo never");
    let bad = env.dir.path().join("bad-initrd.img");
    std::fs::write(&bad, b"not a cpio archive at all").unwrap();

    let t = Instant::now();
    let out = env
        .run_vm_with("sim", &bad)
        .args(["--boot-timeout", "240", &img])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("the VM stopped before its agent was ready"),
        "{stderr}"
    );
    assert!(stderr.contains("Kernel panic"), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(240), "{:?}", t.elapsed());
    nothing_left(&env);
}

#[test]
fn guest_that_never_connects_times_out_and_is_killed() {
    let env = Env::new();
    let img = env.vm_image("echo never");
    // A guest whose /init is busybox's init: it boots and waits forever.
    let mut a = veil_runtime::vm::cpio::Archive::new();
    use veil_runtime::vm::cpio::Node;
    a.add(
        "init",
        Node::File {
            mode: 0o755,
            data: std::fs::read("/bin/busybox").unwrap(),
        },
    )
    .unwrap();
    a.add(
        "dev/console",
        Node::CharDev {
            mode: 0o600,
            major: 5,
            minor: 1,
        },
    )
    .unwrap();
    let initrd = env.dir.path().join("idle-initrd.img");
    std::fs::write(&initrd, a.write()).unwrap();

    let t = Instant::now();
    let out = env
        .run_vm_with("sim", &initrd)
        .args(["--boot-timeout", "15", &img])
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("was not ready within 15 s (QEMU killed)"),
        "{stderr}"
    );
    assert!(t.elapsed() < Duration::from_secs(60), "{:?}", t.elapsed());
    nothing_left(&env);
}

#[test]
fn snp_and_tdx_fail_early_on_a_host_without_them() {
    let env = Env::new();
    let img = env.vm_image("echo never");
    for tee in ["snp", "tdx"] {
        let out = env
            .veil()
            .args(["run", "--rm", "--sandbox", "vm", "--tee", tee, &img])
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains(&format!(
                "this host cannot launch {}",
                if tee == "snp" { "SEV-SNP" } else { "TDX" }
            )),
            "{stderr}"
        );
    }
    nothing_left(&env);
}

/// `--tee none`: a plain VM. It boots and runs the container under the
/// agent's policy, and every place that reports on it says that nothing is
/// attested; what would need a KBS is refused before anything starts.
#[test]
fn vm_without_a_tee_runs_unattested_and_says_so() {
    let env = Env::new();
    let img = env.vm_image("echo plain-vm; exit 3");
    for (extra, needle) in [
        (
            vec!["--secret", "k=kbs:///default/secret/k"],
            "--tee none with --secret k=kbs:///default/secret/k",
        ),
        (
            vec!["--kbs", "http://127.0.0.1:9"],
            "--tee none with --kbs http://127.0.0.1:9",
        ),
    ] {
        let out = env
            .run_vm_tee("none")
            .args(&extra)
            .arg(&img)
            .output()
            .unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(125), "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
        assert!(stderr.contains("no KBS releases anything"), "{stderr}");
        // Refused before anything starts: no sandbox was ever made.
        let made: Vec<_> = std::fs::read_dir(env.data().join("run"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(made.is_empty(), "a sandbox was made: {made:?}");
    }
    // The process sandbox always has the sim TEE.
    let out = env
        .veil()
        .args(["run", "--rm", "--tee", "none", &img])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("only the VM sandbox runs without a TEE"),
        "{}",
        text(&out.stderr)
    );

    let out = env.run_vm_tee("none").arg(&img).output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("{stderr}");
    assert_eq!(
        out.status.code(),
        Some(3),
        "stdout: {stdout}\nstderr: {stderr}"
    );
    assert!(stdout.contains("plain-vm"), "{stdout}");
    assert!(
        stderr.contains("VM sandbox (QEMU, tcg), TEE: none"),
        "{stderr}"
    );
    assert!(stderr.contains("WARNING: no TEE (--tee none)"), "{stderr}");
    assert!(stderr.contains("measurement  none"), "{stderr}");
    assert!(stderr.contains("attestation  none"), "{stderr}");
    assert!(
        stderr.contains("enforced by the agent, bound to nothing"),
        "{stderr}"
    );
    // No KBS was started for it.
    assert!(
        !env.data().join("kbs").exists(),
        "an embedded KBS was started"
    );
    nothing_left(&env);
}

/// A host whose QEMU aborts under KVM at once (seen on nested hosts:
/// `failed to set MSR 0x10a`, an assertion in `kvm_buf_set_msrs`, SIGABRT):
/// `--accel auto` says why and relaunches under TCG; `--accel kvm` fails.
/// A fake QEMU in front of the real one plays that host; it makes auto
/// pick KVM through `VEIL_VM_ASSUME_KVM=1` (no /dev/kvm probe). One boot.
#[test]
fn auto_accel_falls_back_to_tcg_when_qemu_aborts_under_kvm() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let fake = env.dir.path().join("qemu-aborts-under-kvm");
    std::fs::write(
        &fake,
        "#!/bin/sh\ncase \" $* \" in *accel=kvm*)\n  echo 'qemu-system-x86_64: error: failed to set MSR 0x10a to 0x0' >&2\n  echo \"qemu-system-x86_64: ../target/i386/kvm/kvm.c:3016: kvm_buf_set_msrs: Assertion \\`ret == cpu->kvm_msr_buf->nmsrs' failed.\" >&2\n  kill -ABRT $$;;\nesac\nexec qemu-system-x86_64 \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let img = env.vm_image("echo after-the-fallback");
    let run = |accel: &str| {
        let mut c = env.veil();
        c.args([
            "run",
            "--rm",
            "--sandbox",
            "vm",
            "--tee",
            "sim",
            "--accel",
            accel,
        ])
        .arg("--qemu")
        .arg(&fake)
        .arg("--kernel")
        .arg(guest_kernel())
        .arg("--initrd")
        .arg(guest().0.join("initrd.img"))
        .arg(&img)
        .env("VEIL_VM_ASSUME_KVM", "1");
        c.output().unwrap()
    };

    let t = Instant::now();
    let out = run("kvm");
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(
        stderr.contains("the VM stopped before its agent was ready (QEMU killed by signal 6)")
            && stderr.contains("kvm_buf_set_msrs")
            && !stderr.contains("relaunching"),
        "{stderr}"
    );
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());

    let out = run("auto");
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("{stderr}");
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert_eq!(stdout, "after-the-fallback\n", "{stderr}");
    assert!(
        stderr.contains(
            "veil: QEMU failed under KVM before the agent was ready (killed by signal 6: qemu-system-x86_64: ../target/i386/kvm/kvm.c:3016: kvm_buf_set_msrs: Assertion"
        ) && stderr.contains("relaunching under TCG"),
        "{stderr}"
    );
    assert!(
        stderr.contains("VM sandbox (QEMU, tcg), TEE: sim"),
        "{stderr}"
    );
    // The summary (which `veil run -d` prints too) keeps the reason.
    assert!(
        stderr.contains("  note         under TCG: QEMU failed under KVM"),
        "{stderr}"
    );
    nothing_left(&env);
}

/// A KBS that releases only to guests whose measurement is among its
/// reference values: the VM's sim evidence carries the measurement of the
/// exact guest that booted, so the KBS refuses it while another value is
/// listed (the guest never runs the container), and releases once the
/// guest's own measurement (from `veil guest build`) is.
#[test]
fn kbs_releases_only_to_the_measured_guest() {
    let env = Env::new();
    let kbs = kbs_for_sim_of(&env);
    let dir = env.dir.path();
    std::fs::write(
        dir.join("policy.rego"),
        "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tinput.submods.cpu0[\"ear.trustworthiness-vector\"].executables == 2\n}\n",
    )
    .unwrap();
    kbs_admin(
        &kbs,
        &["policy", "set", "--scope", "default", "--file"],
        Some(&dir.join("policy.rego")),
    );
    let secret = b"measured-vm-secret";
    std::fs::write(dir.join("s.bin"), secret).unwrap();
    kbs_admin(
        &kbs,
        &["resource", "put", "default/secret/k"],
        Some(&dir.join("s.bin")),
    );
    let (_, g) = guest();
    let good = g["sim_measurement"].as_str().unwrap().to_string();
    // The same guest with one bit of its measurement changed, as another
    // kernel, initrd or command line would give.
    let mut other = hex::decode(&good).unwrap();
    other[0] ^= 1;
    let other = hex::encode(other);
    let img = env.vm_image("echo fp $(sha256sum /run/veil/secrets/k | cut -c1-16)");
    let run = || {
        env.run_vm()
            .args([
                "--kbs",
                &kbs.url(),
                "--secret",
                "k=kbs:///default/secret/k",
                &img,
            ])
            .output()
            .unwrap()
    };

    kbs_admin(
        &kbs,
        &["reference-value", "set", "measurement", &other],
        None,
    );
    let out = run();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("{stderr}");
    assert!(
        !out.status.success(),
        "released to an unlisted guest: {stdout}"
    );
    assert!(!stdout.contains("fp "), "{stdout}");
    assert!(stderr.contains("PolicyDeny"), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "measurement {good} is NOT among the 1 reference value(s)"
        )),
        "the refusal should name the guest's measurement: {stderr}"
    );
    nothing_left(&env);

    kbs_admin(
        &kbs,
        &["reference-value", "set", "measurement", &good],
        None,
    );
    let out = run();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains(&format!("fp {}", sha256_prefix(secret))),
        "{stdout}"
    );
    nothing_left(&env);
}

/// A guest that dies while its workload runs (QEMU killed: as a crash or
/// an OOM kill on the host would), and Ctrl-C on `veil run`: either way
/// `veil run` ends promptly, says what happened, and leaves nothing.
#[test]
fn guest_dying_mid_run_or_ctrl_c_leaves_nothing() {
    use std::io::BufRead;
    let env = Env::new();
    let img = env.vm_image("echo ready; sleep 31341");
    for kill_qemu in [true, false] {
        let mut child = env
            .run_vm()
            .arg(&img)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "ready");
        let pid = if kill_qemu {
            let qemu = running_record(&env)["agent_pid"].as_u64().unwrap() as i32;
            assert!(
                std::fs::read_to_string(format!("/proc/{qemu}/cmdline"))
                    .unwrap()
                    .contains("qemu-system"),
                "agent_pid of a VM sandbox is QEMU"
            );
            (qemu, nix::sys::signal::Signal::SIGKILL)
        } else {
            (child.id() as i32, nix::sys::signal::Signal::SIGINT)
        };
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid.0), pid.1).unwrap();
        let status = wait_for_exit(&mut child, 30);
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(!status.success(), "{stderr}");
        if kill_qemu {
            assert!(stderr.contains("lost the agent"), "{stderr}");
            assert!(
                stderr.contains(
                    "the VM stopped while the workload was running (QEMU killed by signal 9)"
                ),
                "{stderr}"
            );
        } else {
            assert!(stderr.contains("stopping the sandbox"), "{stderr}");
        }
        nothing_left(&env);
    }
}

/// Issue #13, findings 1 and 3 in the VM sandbox: the host asks the guest's
/// agent for evidence over the KBS binding bytes of its own key (refused by
/// the KBS), and a descriptor held by the caller of `veil run` (fd 7 on the
/// host's `/`) reaches neither the workload nor `veil exec`.
#[test]
fn vm_host_cannot_impersonate_the_guest_and_caller_fds_stay_out() {
    let env = Env::new();
    let secret = b"vm-attack-target-e41c";
    let sf = env.dir.path().join("s.txt");
    std::fs::write(&sf, secret).unwrap();
    ok(env
        .veil()
        .args(["secret", "put", "default/secret/k"])
        .arg(&sf)
        .output()
        .unwrap());
    let layout = env.layout();
    image(
        &env,
        &layout,
        "app:1",
        "echo fds /proc/self/fd/*; sleep 600",
    );
    let pod = env.dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: vmfds\n  namespace: default\n  annotations:\n    policy.veil.dev/exec.app: '[[\"sh\", \"-c\", \"echo fds /proc/self/fd/*\"]]'\nspec:\n  containers:\n  - name: app\n    image: app:1\n",
    )
    .unwrap();
    let mut run = env.run_vm_detached();
    run.args(["--secret", "k=kbs:///default/secret/k", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(layout.root());
    hold_root_as_fd7(&mut run);
    let out = ok(run.output().unwrap());
    let id = text(&out.stdout).trim().to_string();
    let _rm = RmOnDrop(&env, id.clone());
    let mut logs = String::new();
    for _ in 0..300 {
        logs = text(&ok(env.veil().args(["logs", &id]).output().unwrap()).stdout);
        if logs.contains("fds ") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(fds_listed(&logs), ["0", "1", "2", "3"], "{logs}");
    let mut exec = env.veil();
    exec.args(["exec", &id, "--", "sh", "-c", "echo fds /proc/self/fd/*"]);
    hold_root_as_fd7(&mut exec);
    let out = ok(exec.output().unwrap());
    assert_eq!(fds_listed(&text(&out.stdout)), ["0", "1", "2", "3"]);

    let rec = record_of(&env, &id);
    let kbs = rec["kbs_url"].as_str().unwrap().to_string();
    let init = std::fs::read_to_string(rec["init_data_file"].as_str().unwrap()).unwrap();
    let socket = PathBuf::from(rec["socket"].as_str().unwrap());
    let r = impersonate_tee_to_kbs(&kbs, &init, |rd| host_get_evidence(&socket, rd));
    let e = r.expect_err("the KBS issued a token for the host's own key");
    assert!(
        e.contains("report_data") && e.contains("caller-supplied runtime data"),
        "{e}"
    );
    // The benchmark-only request is refused by name by a workload's policy
    // (issue #16: only the policy `veil bench volume` generates admits it).
    let mut c = veil_runtime::AgentClient::connect(&socket, Duration::from_secs(30)).unwrap();
    let e = c
        .call(veil_agent_api::AgentRequest::BenchVolume(
            veil_agent_api::bench::BenchVolumeRequest {
                seconds: 1,
                seed: 1,
            },
        ))
        .expect_err("a workload policy admitted bench_volume")
        .to_string();
    assert!(
        e.contains(
            "bench_volume: refused by policy: sandbox.bench_volume is false (only the policy `veil bench volume` generates admits it)"
        ),
        "{e}"
    );
    ok(env.veil().args(["rm", "-f", &id]).output().unwrap());
    nothing_left(&env);
}

/// Issue 14 in the VM sandbox, one boot: `echo hi | veil run -i` reaches
/// the pod's `stdin: true` container, which writes it to an emptyDir the
/// pod's second container reads; a configMap volume holds the content the
/// generated policy pins, read-only. The pod's image is pulled by the guest
/// (`--pod --pull-in guest`) from a TLS registry with Basic auth on the
/// host's loopback, credentials from the KBS; the host holds no layout.
#[test]
fn vm_pod_takes_stdin_and_shares_volumes() {
    let env = Env::new();
    let reg = TlsRegistry::start(&env, "echo default", None);
    ok(env
        .veil()
        .args(["secret", "put", "default/registry/auth"])
        .arg(&reg.good_auth)
        .output()
        .unwrap());
    let pod = write_pod(
        &env,
        &"apiVersion: v1\nkind: Pod\nmetadata:\n  name: vmvols\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  volumes:\n  - name: data\n    emptyDir: {}\n  - name: site\n    configMap: {name: site}\n  containers:\n  - name: writer\n    image: app:1\n    stdin: true\n    command: [\"/bin/sh\", \"-c\", \"cat > /data/f.tmp && mv /data/f.tmp /data/f; echo read $(cat /data/f); cat /site/index.html; echo; stat -c '%a %n' /site/index.html; echo x > /site/new || echo site-read-only\"]\n    volumeMounts:\n    - {name: data, mountPath: /data}\n    - {name: site, mountPath: /site}\n  - name: reader\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"i=0; while [ $i -lt 900 ]; do if [ -f /data/f ]; then echo got $(cat /data/f); exit 0; fi; sleep 0.2; i=$((i+1)); done; exit 3\"]\n    volumeMounts:\n    - {name: data, mountPath: /data, readOnly: true}\n  - name: hog\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"dd if=/dev/zero of=/dev/null bs=64M count=1; echo survived\"]\n    resources:\n      limits: {memory: 32Mi, cpu: 500m}\n"
            .replace("app:1", &reg.reference),
    );
    let config = env.dir.path().join("config.yaml");
    std::fs::write(
        &config,
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: site\n  namespace: default\ndata:\n  index.html: \"<h1>vm pinned page</h1>\"\n",
    )
    .unwrap();
    // Kept after it ends (no --rm), for `veil inspect`.
    let mut child = env
        .run_vm_kept(&["-i"])
        // The workload NIC (QEMU user networking) the guest pulls over.
        .args(["--network", "user"])
        .args(["--name", "vmvols", "--pull-in", "guest", "--registry-ca"])
        .arg(&reg.ca)
        .arg("--authfile")
        .arg(&reg.good_auth)
        .args(["--registry-auth", "kbs:///default/registry/auth"])
        .arg("--pod")
        .arg(&pod)
        .arg("--config")
        .arg(&config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // veil's stdin ends after the input: the container's must end too.
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let (status, out, err) = finish(&mut child, 600);
    // The hog container, limited to 32Mi by the pod, allocates 64M: the
    // out-of-memory killer ends it (137, as Kubernetes reports OOMKilled);
    // the others are not touched.
    assert_eq!(status.code(), Some(137), "{out}\n{err}");
    assert!(!out.contains("survived"), "{out}");
    assert!(
        err.contains("veil: container hog was killed by the out-of-memory killer (memory limit 33554432 bytes"),
        "{err}"
    );
    let ps = text(&ok(env.veil().args(["ps", "-a"]).output().unwrap()).stdout);
    assert!(ps.contains("exited (137, OOMKilled)"), "{ps}");
    let id = text(&ok(env.veil().args(["ps", "-a", "-q"]).output().unwrap()).stdout);
    let stats: serde_json::Value = serde_json::from_slice(
        &ok(env
            .veil()
            .args(["stats", "--json", id.trim()])
            .output()
            .unwrap())
        .stdout,
    )
    .unwrap();
    assert_eq!(stats["oom_killed"], serde_json::json!(["hog"]), "{stats}");
    let hog = &stats["containers"]["hog"];
    assert_eq!(hog["source"], "cgroup", "{stats}");
    assert_eq!(hog["enforced"], true, "{stats}");
    assert_eq!(hog["memory_max"], 32 << 20, "{stats}");
    assert!(
        hog["memory_events"]["oom_kill"].as_u64() >= Some(1),
        "{stats}"
    );
    // The guest's cgroup measured what it used: up to the limit.
    let peak = hog["memory_peak"].as_u64().unwrap();
    assert!(peak > 16 << 20 && peak <= 32 << 20, "{stats}");
    let writer = &stats["containers"]["writer"];
    assert!(writer["memory_peak"].as_u64() > Some(0), "{stats}");
    assert_eq!(writer["memory_max"], serde_json::Value::Null, "{stats}");
    assert_eq!(writer["memory_events"]["oom_kill"], 0, "{stats}");
    for want in [
        "[writer] read hi\n",
        "[reader] got hi\n",
        "[writer] <h1>vm pinned page</h1>\n",
        "[writer] 644 /site/index.html\n",
        "[writer] site-read-only\n",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}\n{err}");
    }
    // The guest pulled: no layout, layout disk or image cache on the host.
    let rec: serde_json::Value = serde_json::from_slice(
        &ok(env.veil().args(["inspect", "vmvols"]).output().unwrap()).stdout,
    )
    .unwrap();
    assert!(
        rec["pull"].as_str().unwrap_or("").starts_with("guest"),
        "{rec}"
    );
    let run_dir = env.data().join("run").join(rec["id"].as_str().unwrap());
    assert!(!run_dir.join("layout").exists());
    assert!(!run_dir.join("sandbox/oci-layout.tar").exists());
    assert!(!env.data().join("images").exists());
    ok(env.veil().args(["rm", "vmvols"]).output().unwrap());
    nothing_left(&env);
}

/// Waits for `child` (at most `secs`) and returns its status, stdout, stderr.
fn finish(
    child: &mut std::process::Child,
    secs: u64,
) -> (std::process::ExitStatus, String, String) {
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_for_exit(child, secs);
    (status, text(&o.join().unwrap()), text(&e.join().unwrap()))
}

/// Issue 14 must-hold 5 in the VM sandbox, one boot: `veil run -d -t`
/// gives the container a terminal (its `tty` prints a /dev/pts path); in
/// that sandbox, `veil exec` without `-i` ends at once though its own stdin
/// stays open; with `-i` the input reaches the container (`cat` prints
/// hi, exit 0); `-t` gives the process a terminal (`tty` prints a
/// /dev/pts path).
#[test]
fn vm_stdin_and_tty() {
    let env = Env::new();
    let img = env.vm_image("echo default");
    let mut run = env.run_vm_detached();
    run.args([
        "--allow-exec",
        "cat",
        "--allow-exec",
        "tty",
        "-t",
        &img,
        "--",
        "sh",
        "-c",
        "tty; sleep 900",
    ]);
    let out = ok(run.output().unwrap());
    let id = text(&out.stdout).trim().to_string();
    let _rm = RmOnDrop(&env, id.clone());
    // `veil run -t`: the container's own output names its terminal.
    let mut logs = String::new();
    for _ in 0..600 {
        logs = text(&ok(env.veil().args(["logs", &id]).output().unwrap()).stdout);
        if logs.contains('\n') {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(logs.starts_with("/dev/pts/"), "{logs:?}");

    // Without -i: at end-of-file at once, though veil's stdin stays open.
    let mut child = env
        .veil()
        .args(["exec", &id, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let held = child.stdin.take().unwrap();
    let (status, out, err) = finish(&mut child, 120);
    drop(held);
    assert_eq!((status.code(), out.as_str()), (Some(0), ""), "{err}");

    let mut child = env
        .veil()
        .args(["exec", "-i", &id, "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"hi\n").unwrap();
    let (status, out, err) = finish(&mut child, 120);
    assert_eq!((status.code(), out.as_str()), (Some(0), "hi\n"), "{err}");

    let out = ok(env
        .veil()
        .args(["exec", "-t", &id, "--", "tty"])
        .stdin(Stdio::null())
        .output()
        .unwrap());
    let line = text(&out.stdout);
    assert!(line.starts_with("/dev/pts/"), "{line:?}");

    ok(env.veil().args(["rm", "-f", &id]).output().unwrap());
    nothing_left(&env);
}

/// The guest pulls the image itself over its workload network (issues
/// #14/#15): from a TLS registry with Basic auth on the host's loopback
/// (the guest's 10.0.3.2), with the CA from init-data and the credentials
/// from the KBS, its encrypted layer decrypted with a key from the KBS; the
/// host hands in no layout disk and pulls no layer.
#[test]
fn vm_guest_pulls_from_the_registry_with_kbs_credentials() {
    let env = Env::new();
    // Its layer encrypted: the key from the KBS, decrypted in the guest only.
    let kek = [0x3cu8; 32];
    let reg = TlsRegistry::start(&env, "echo guest-pulled; ls /bin/busybox", Some(&kek));
    let manifest = std::fs::read_to_string(reg.blob_file(&reg.digest)).unwrap();
    assert!(manifest.contains("+encrypted"), "{manifest}");
    let kek_file = env.dir.path().join("kek.bin");
    std::fs::write(&kek_file, kek).unwrap();
    for (path, file) in [
        ("default/registry/auth", &reg.good_auth),
        ("default/key/app", &kek_file),
    ] {
        ok(env
            .veil()
            .args(["secret", "put", path])
            .arg(file)
            .output()
            .unwrap());
    }
    let t = Instant::now();
    let out = env
        .run_vm_kept(&["--name", "gp"])
        // The workload NIC (QEMU user networking) the guest pulls over.
        .args(["--network", "user"])
        .args(["--timings", "--pull-in", "guest", "--registry-ca"])
        .arg(&reg.ca)
        .arg("--authfile")
        .arg(&reg.good_auth)
        .args([
            "--registry-auth",
            "kbs:///default/registry/auth",
            &reg.reference,
        ])
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    eprintln!("boot to exit: {:?}\n{stderr}", t.elapsed());
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {stderr}");
    assert!(
        stdout.contains("guest-pulled") && stdout.contains("/bin/busybox"),
        "{stdout}"
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&ok(env.veil().args(["inspect", "gp"]).output().unwrap()).stdout)
            .unwrap();
    let port = reg.reg.addr().rsplit_once(':').unwrap().1;
    assert_eq!(
        rec["pull"],
        format!("guest (registry 10.0.3.2:{port})"),
        "{rec}"
    );
    // The host holds no image: no layout, no layout disk, no cache.
    let run_dir = env.data().join("run").join(rec["id"].as_str().unwrap());
    assert!(!run_dir.join("layout").exists());
    assert!(!run_dir.join("sandbox/oci-layout.tar").exists());
    assert!(!env.data().join("images").exists());
    ok(env.veil().args(["rm", "gp"]).output().unwrap());
    nothing_left(&env);
}

/// Issue 16 must-hold 5, one boot: a pod whose disk-backed emptyDir
/// receives twice the guest's RAM in files completes (the emptyDir is on
/// the encrypted scratch disk, not in RAM); the scratch file has the size
/// the pod asks for (the base plus its sizeLimit) and holds no plaintext;
/// after the run's owner is SIGKILLed the next `veil ps` removes the
/// scratch file it left, and `veil rm` the rest.
#[test]
fn vm_scratch_holds_twice_the_guest_ram_encrypted_and_goes_with_the_sandbox() {
    use sha2::Digest;
    const RAM_MIB: u64 = 256;
    const FILE_MIB: u64 = 64;
    let files = 2 * RAM_MIB / FILE_MIB;
    let marker = "veil-scratch-marker-51c2e8";
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo default");
    let script = format!(
        "set -e; for n in $(seq {files}); do yes {marker} | dd of=/data/f$n bs=1M count={FILE_MIB} iflag=fullblock 2>/dev/null; done; sync; \
         echo files $(ls /data | wc -l); echo size $(stat -c %s /data/f{files}); echo sum $(sha256sum /data/f{files} | cut -d' ' -f1); echo done; sleep 900"
    );
    let pod = write_pod(
        &env,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: scratch\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  volumes:\n  - name: data\n    emptyDir: {{sizeLimit: 1Gi}}\n  containers:\n  - name: writer\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", {script:?}]\n    volumeMounts:\n    - {{name: data, mountPath: /data}}\n"
        ),
    );
    let mut run = env.run_vm_detached();
    run.args(["--memory", &format!("{RAM_MIB}M"), "--scratch-size", "256M"])
        .arg("--pod")
        .arg(&pod)
        .arg("--oci-layout")
        .arg(layout.root());
    let out = ok(run.output().unwrap());
    let id = text(&out.stdout).trim().to_string();
    let _rm = RmOnDrop(&env, id.clone());
    let t = Instant::now();
    let mut logs = String::new();
    let dir = env.data().join("run").join(&id);
    while t.elapsed() < Duration::from_secs(900) && !logs.contains("done") {
        std::thread::sleep(Duration::from_secs(1));
        logs = text(&env.veil().args(["logs", &id]).output().unwrap().stdout);
        let console = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
        let status = std::fs::read(dir.join("record.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .map(|r| r["status"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default();
        if console.contains("powering off") || matches!(status.as_str(), "exited" | "failed") {
            break;
        }
    }
    eprintln!("wrote {} MiB in {:?}", files * FILE_MIB, t.elapsed());
    let console = std::fs::read_to_string(dir.join("agent.log")).unwrap_or_default();
    assert!(logs.contains("done"), "{logs}\n{console}");
    let mut want = Vec::with_capacity((FILE_MIB << 20) as usize);
    while want.len() < (FILE_MIB << 20) as usize {
        want.extend_from_slice(marker.as_bytes());
        want.push(b'\n');
    }
    want.truncate((FILE_MIB << 20) as usize);
    for line in [
        format!("files {files}"),
        format!("size {}", FILE_MIB << 20),
        format!("sum {}", hex::encode(sha2::Sha256::digest(&want))),
    ] {
        assert!(logs.contains(&line), "missing {line:?} in {logs}");
    }
    assert!(
        console.contains("scratch: disk /dev/vd") && console.contains("key born in the guest"),
        "{console}"
    );

    // The host's file: the size the pod asked for, ciphertext only.
    let scratch = dir.join("sandbox/scratch.img");
    let size = std::fs::metadata(&scratch).unwrap().len();
    assert_eq!(
        size,
        (256 << 20) + (1 << 30),
        "--scratch-size plus the sizeLimit"
    );
    let grep = Command::new("grep")
        .args(["-a", "-q", "-F", marker])
        .arg(&scratch)
        .status()
        .unwrap();
    assert_eq!(grep.code(), Some(1), "plaintext marker in the scratch file");

    // A killed owner leaves the sandbox dir; the next command removes the
    // scratch. SIGKILL for the record's owner and for QEMU's parent (the
    // process holding the sandbox), so no teardown runs.
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("record.json")).unwrap()).unwrap();
    let mut victims = vec![rec["owner_pid"].as_i64().unwrap() as i32];
    let data = env.data().display().to_string();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if cmd.starts_with("qemu-system") && cmd.contains(&data) {
            let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
            victims.extend(status.lines().find_map(|l| {
                l.strip_prefix("PPid:")
                    .and_then(|p| p.trim().parse::<i32>().ok())
            }));
        }
    }
    for pid in victims {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_mentioning(&env.data().display().to_string()).is_empty()
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let listing = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert!(
        scratch.exists(),
        "the killed owner could not remove it; run dir {:?}, sandbox dir {:?}, processes {:?}",
        listing(&dir),
        listing(&dir.join("sandbox")),
        processes_mentioning(&data)
    );
    let out = ok(env.veil().args(["ps", "-a"]).output().unwrap());
    assert!(
        text(&out.stderr).contains(&format!("removed the scratch disk of the VM sandbox {id}")),
        "{}",
        text(&out.stderr)
    );
    assert!(!scratch.exists());
    ok(env.veil().args(["rm", &id]).output().unwrap());
    assert!(!dir.exists());
    nothing_left(&env);
}

/// A pod network namespace made the way CNI makes one (`ip netns add`; a
/// veth whose pod end is `eth0`, addressed, with a default route), and a
/// peer namespace holding the other end (the "node" side). Both private to
/// the test (unique names, `10.213.N.0/24`) and removed on drop, with the
/// veth pair.
struct CniLikeNetns {
    pod: String,
    peer: String,
    prefix: String,
}

impl CniLikeNetns {
    fn new() -> Self {
        let pid = std::process::id();
        let n = CniLikeNetns {
            pod: format!("vmnj-pod-{pid}"),
            peer: format!("vmnj-peer-{pid}"),
            prefix: format!("10.213.{}", pid % 250 + 1),
        };
        let peer_if = format!("vmnjp{}", pid % 100_000);
        for args in [
            vec!["netns", "add", &n.pod],
            vec!["netns", "add", &n.peer],
            vec![
                "-n", &n.pod, "link", "add", "eth0", "type", "veth", "peer", "name", &peer_if,
                "netns", &n.peer,
            ],
        ] {
            n.ip(&args);
        }
        let (pod_ip, peer_ip) = (format!("{}.2/24", n.prefix), format!("{}.1/24", n.prefix));
        n.ip(&["-n", &n.pod, "addr", "add", &pod_ip, "dev", "eth0"]);
        n.ip(&["-n", &n.pod, "link", "set", "eth0", "up"]);
        n.ip(&["-n", &n.pod, "route", "add", "default", "via", &n.peer_ip()]);
        n.ip(&["-n", &n.peer, "addr", "add", &peer_ip, "dev", &peer_if]);
        n.ip(&["-n", &n.peer, "link", "set", &peer_if, "up"]);
        n.ip(&["-n", &n.peer, "link", "set", "lo", "up"]);
        n
    }
    fn ip(&self, args: &[&str]) -> String {
        text(&ok(Command::new("ip").args(args).output().unwrap()).stdout)
    }
    fn pod_path(&self) -> String {
        format!("/run/netns/{}", self.pod)
    }
    fn pod_ip(&self) -> String {
        format!("{}.2", self.prefix)
    }
    fn peer_ip(&self) -> String {
        format!("{}.1", self.prefix)
    }
    /// The pod namespace's interfaces and ingress qdiscs, one line each
    /// (what a joined VM adds and must remove).
    fn pod_state(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .ip(&["-n", &self.pod, "-o", "link", "show"])
            .lines()
            .map(|l| {
                let name = l.split(':').nth(1).unwrap_or("").trim();
                let mac = l
                    .split("link/ether ")
                    .nth(1)
                    .unwrap_or("")
                    .split(' ')
                    .next();
                format!(
                    "link {} {}",
                    name.split('@').next().unwrap(),
                    mac.unwrap_or("")
                )
            })
            .collect();
        let q = Command::new("ip")
            .args(["netns", "exec", &self.pod, "tc", "qdisc", "show", "ingress"])
            .output()
            .unwrap();
        out.extend(text(&q.stdout).lines().map(str::to_string));
        out.extend(
            self.ip(&["-n", &self.pod, "-4", "-o", "addr", "show", "dev", "eth0"])
                .split_whitespace()
                .filter(|w| w.contains('/'))
                .map(|w| format!("addr {w}")),
        );
        out
    }
}

impl Drop for CniLikeNetns {
    fn drop(&mut self) {
        for ns in [&self.pod, &self.peer] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// The containerd shim's network contract, in the VM sandbox: `veil run
/// --sandbox vm --network ns:PATH` joins a namespace someone else made
/// (as CNI does: a veth `eth0` with an address and a default route). The
/// guest's pod NIC is a tap in that namespace mirrored with tc, and takes
/// eth0's MAC and address: a server in the guest's container answers from
/// the peer namespace, the container reaches a server there, and the peer
/// learns the pod's address at eth0's MAC. After SIGKILL of the detached
/// monitor the next `veil ps` removes the tap and the qdiscs veil made, and
/// leaves the veth, its MAC and its address as they were. One boot.
#[test]
fn vm_joins_a_cni_style_netns_traffic_both_ways_and_sigkill_leaves_it_as_it_was() {
    let env = Env::new();
    let net = CniLikeNetns::new();
    let before = net.pod_state();
    let eth0_mac = before
        .iter()
        .find_map(|l| l.strip_prefix("link eth0 "))
        .unwrap()
        .to_string();
    // A server in the peer namespace, stopped by PID when the test ends.
    let www = env.dir.path().join("peer-www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("peer.html"), "hello-from-the-peer\n").unwrap();
    let mut peer_server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &net.peer,
            "python3",
            "-m",
            "http.server",
            "18080",
        ])
        .args(["--bind", &net.peer_ip(), "--directory"])
        .arg(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    struct KillOnDrop<'a>(&'a mut std::process::Child);
    impl Drop for KillOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _peer_server = KillOnDrop(&mut peer_server);

    // (busybox wget without -T: this busybox's wget crashes with it.)
    let cmd = format!(
        "mkdir -p /tmp; echo served-by-the-vm > /tmp/index.html; \
         i=0; until busybox wget -q -O /tmp/from-peer http://{}:18080/peer.html; do \
         i=$((i+1)); [ $i -gt 30 ] && break; sleep 1; done; \
         exec busybox httpd -f -p 8080 -h /tmp",
        net.peer_ip()
    );
    let img = env.vm_image(&cmd);
    let out = ok(env
        .run_vm_detached()
        .args(["--network", &format!("ns:{}", net.pod_path())])
        .args(["--allow-exec", "cat /sys/class/net/eth0/address", &img])
        .output()
        .unwrap());
    let id = text(&out.stdout).trim().to_string();
    let rm = RmOnDrop(&env, id.clone());
    let rec = record_of(&env, &id);
    assert_eq!(rec["network"], format!("ns:{}", net.pod_path()), "{rec}");
    assert_eq!(rec["address"], format!("{}/24", net.pod_ip()), "{rec}");

    let get = |path: &str| {
        let url = format!("http://{}:8080/{path}", net.pod_ip());
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            // curl: the host's busybox wget is not to be relied on.
            let o = Command::new("ip")
                .args(["netns", "exec", &net.peer, "curl", "-sf", "--max-time", "3"])
                .arg(&url)
                .output()
                .unwrap();
            if o.status.success() {
                return text(&o.stdout);
            }
            assert!(Instant::now() < deadline, "{url}: {}", text(&o.stderr));
            std::thread::sleep(Duration::from_millis(500));
        }
    };
    // Peer -> guest container, and the container -> peer (what it fetched).
    assert_eq!(get("index.html"), "served-by-the-vm\n");
    assert_eq!(get("from-peer"), "hello-from-the-peer\n");
    // The guest's NIC answered ARP with eth0's MAC, and has it.
    let neigh = net.ip(&["-n", &net.peer, "neigh", "show", &net.pod_ip()]);
    assert!(neigh.contains(&eth0_mac), "{neigh} (eth0 is {eth0_mac})");
    let guest = ok(env
        .veil()
        .args(["exec", &id, "--", "cat", "/sys/class/net/eth0/address"])
        .output()
        .unwrap());
    assert_eq!(text(&guest.stdout).trim(), eth0_mac);
    let running = net.pod_state();
    assert!(
        running.iter().any(|l| l.starts_with("link tap0_veil"))
            && running
                .iter()
                .filter(|l| l.starts_with("qdisc ingress"))
                .count()
                == 2,
        "while running: a tap and two ingress qdiscs: {running:?}"
    );

    // SIGKILL of the monitor: QEMU follows (the tap goes with it), and the
    // next veil command removes the qdisc veil added to eth0.
    let data = env.data().display().to_string();
    let monitor = rec["owner_pid"].as_u64().unwrap() as i32;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(monitor),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !processes_mentioning(&data).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(processes_mentioning(&data), Vec::<String>::new());
    while Path::new(&format!("/proc/{monitor}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = ok(env.veil().args(["ps", "-a"]).output().unwrap());
    assert!(
        text(&out.stderr).contains(&format!("removed the pod network sandbox {id}")),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(net.pod_state(), before, "the pod netns is as it was");
    ok(env.veil().args(["rm", "-f", &id]).output().unwrap());
    drop(rm);
}
