//! The guest/host boundary under attack (issue #13), in the process
//! sandbox, with the real `veil` and `veil-agent` binaries: each test
//! performs an attack an adversarial review found and checks it fails.
//! The VM-sandbox variants are in `run_vm.rs`. These need root, as CI has.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

mod common;
use common::*;

/// The workload local API socket of a process sandbox, as the host reaches
/// it: the agent's tmpfs is mounted in the agent's own mount namespace, so
/// through `/proc/<agent>/root`.
fn api_socket(rec: &serde_json::Value) -> PathBuf {
    let guest = Path::new(rec["socket"].as_str().unwrap())
        .parent()
        .unwrap()
        .join("guest/api.sock");
    Path::new(&format!("/proc/{}/root", rec["agent_pid"])).join(guest.strip_prefix("/").unwrap())
}

fn put_secret(env: &Env, path: &str, value: &[u8]) {
    let f = env.dir.path().join("secret.in");
    std::fs::write(&f, value).unwrap();
    ok(env
        .veil()
        .args(["secret", "put", path])
        .arg(&f)
        .output()
        .unwrap());
    std::fs::remove_file(&f).unwrap();
}

/// Finding 1: the host (`get_evidence`) and any workload (`/aa/evidence`)
/// could get evidence over the KBS binding bytes of a key of their own and
/// receive the workload's secrets. The evidence they get now is genuine but
/// domain-separated, and the KBS refuses it.
#[test]
fn host_and_workload_evidence_never_unlocks_the_kbs() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "sleep 31401");
    let secret = b"attack-target-secret-5b1d";
    put_secret(&env, "default/secret/api-key", secret);
    let img = format!("oci:{}:app:1", layout.root().display());
    let id = run_detached(
        &env,
        &["--secret", "api-key=kbs:///default/secret/api-key", &img],
    );
    let _rm_id = RmOnDrop(&env, id.clone());
    let rec = record_of(&env, &id);
    let kbs = rec["kbs_url"].as_str().unwrap().to_string();
    let init = std::fs::read_to_string(rec["init_data_file"].as_str().unwrap()).unwrap();
    let socket = PathBuf::from(rec["socket"].as_str().unwrap());

    // The host's way in: get_evidence over bytes it chose.
    let mut seen = Vec::new();
    let r = impersonate_tee_to_kbs(&kbs, &init, |rd| {
        let ev = host_get_evidence(&socket, rd);
        seen.push(ev.clone());
        ev
    });
    let e = r.expect_err("the KBS issued a token for the host's own key");
    assert!(
        e.contains("report_data") && e.contains("caller-supplied runtime data"),
        "{e}"
    );
    // The evidence itself is genuine sim evidence, over the tagged binding.
    let platform =
        veil_runtime::SimPlatform::load_or_create(&veil_runtime::paths::sim_dir(&env.data()))
            .unwrap();
    let claims =
        veil_attest::sim::verify(seen[0].to_string().as_bytes(), Some(&platform.root())).unwrap();
    assert!(veil_agent_api::proto::is_user_report_data(
        &claims.report_data
    ));

    // A workload's way in: the local API, same bytes.
    let api = api_socket(&rec);
    let r = impersonate_tee_to_kbs(&kbs, &init, |rd| {
        let (status, body) = local_api_get(
            &api,
            &format!("/aa/evidence?runtime_data={}", percent_encode(rd)),
        );
        assert_eq!(status, 200, "{}", text(&body));
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        v["evidence"].clone()
    });
    let e = r.expect_err("the KBS issued a token for a workload's own key");
    assert!(
        e.contains("report_data") && e.contains("caller-supplied runtime data"),
        "{e}"
    );

    // A third-party verifier checks local-API evidence over its challenge.
    let (status, body) = local_api_get(&api, "/aa/evidence?runtime_data=peer-challenge-1");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let ev = env.dir.path().join("ev.json");
    std::fs::write(&ev, v["evidence"].to_string()).unwrap();
    let root = env.dir.path().join("sim-root.pem");
    std::fs::write(&root, platform.root().to_pem().unwrap()).unwrap();
    let verify = |challenge: &str| {
        env.veil()
            .args(["attest", "verify", "--tee", "sim", "--evidence"])
            .arg(&ev)
            .arg("--sim-root")
            .arg(&root)
            .args(["--runtime-data", challenge])
            .output()
            .unwrap()
    };
    ok(verify("peer-challenge-1"));
    let out = verify("peer-challenge-2");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("report_data"),
        "{}",
        text(&out.stderr)
    );

    // The genuine agent still gets the secret (the fix broke nothing).
    let (status, body) = local_api_get(&api, "/cdh/resource/default/secret/api-key");
    assert_eq!((status, body.as_slice()), (200, &secret[..]));
    ok(env.veil().args(["rm", "-f", &id]).output().unwrap());
}

/// Finding 3: a descriptor held by whatever starts `veil run` (here a
/// directory fd on the host's `/` as fd 7, as `exec 7</` leaves it) reached
/// the workload, which could then read and write host files as root. Not
/// any more: not in the container, and not in `veil exec`.
#[test]
fn caller_descriptors_never_reach_the_workload() {
    let env = Env::new();
    let layout = env.layout();
    image(
        &env,
        &layout,
        "app:1",
        "echo fds /proc/self/fd/*; sleep 31402",
    );
    let pod = env.dir.path().join("pod.yaml");
    std::fs::write(
        &pod,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: fds\n  namespace: default\n  annotations:\n    policy.veil.dev/exec.app: '[[\"sh\", \"-c\", \"echo fds /proc/self/fd/*\"]]'\nspec:\n  containers:\n  - name: app\n    image: app:1\n",
    )
    .unwrap();
    let mut run = env.veil();
    run.args(["run", "-d", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(layout.root());
    hold_root_as_fd7(&mut run);
    let out = ok(run.output().unwrap());
    let id = text(&out.stdout).trim().to_string();
    let _rm = RmOnDrop(&env, id.clone());
    let mut logs = String::new();
    for _ in 0..100 {
        logs = text(&ok(env.veil().args(["logs", &id]).output().unwrap()).stdout);
        if logs.contains("fds ") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // stdio, and the directory the glob itself reads.
    assert_eq!(fds_listed(&logs), ["0", "1", "2", "3"], "{logs}");

    let mut exec = env.veil();
    exec.args(["exec", &id, "--", "sh", "-c", "echo fds /proc/self/fd/*"]);
    hold_root_as_fd7(&mut exec);
    let out = ok(exec.output().unwrap());
    assert_eq!(fds_listed(&text(&out.stdout)), ["0", "1", "2", "3"]);
    ok(env.veil().args(["rm", "-f", &id]).output().unwrap());
}

/// Finding 9: run records and workload output were world-readable.
#[test]
fn run_records_and_output_are_private() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo private-output-7c2e");
    let img = format!("oci:{}:app:1", layout.root().display());
    ok(env.veil().args(["run", &img]).output().unwrap());
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&env.data()), 0o700, "the data dir");
    let mut seen = 0;
    let mut stack = vec![env.data().join("run")];
    while let Some(d) = stack.pop() {
        assert_eq!(mode(&d) & 0o077, 0, "{} is open to others", d.display());
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                if p.file_name().is_some_and(|n| n == "guest") {
                    continue; // the sandbox's own tree, 0700 above it
                }
                stack.push(p);
            } else if ft.is_file() {
                seen += 1;
                assert_eq!(
                    std::fs::metadata(&p).unwrap().permissions().mode() & 0o077,
                    0,
                    "{} is readable by others",
                    p.display()
                );
            }
        }
    }
    assert!(seen >= 3, "record, init-data and output expected");
}

/// Finding 4: the embedded KBS released any resource to any workload it had
/// attested (its dev policy tested no binding), so workload B read workload
/// A's secret through its local API. Now each run's KBS releases only what
/// that run's init-data and images name, and only to that run's init-data.
#[test]
fn workload_b_cannot_read_workload_a_secret_or_image_key() {
    use veil_image::crypt::kbs::{KbsWrapper, ResourceUri};
    use veil_image::crypt::{KeyWrapper, LayerSelection, encrypt_image};
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "plain", "sleep 31403");
    let kek = [0x3cu8; 32];
    let wrapper = KbsWrapper::new(
        ResourceUri::parse("kbs:///default/key/a-image").unwrap(),
        &kek,
    )
    .unwrap();
    let wrappers: [&dyn KeyWrapper; 1] = [&wrapper];
    encrypt_image(
        &layout,
        Some("plain"),
        &layout,
        "a:enc",
        &wrappers,
        &LayerSelection::All,
    )
    .unwrap();
    put_secret(&env, "default/key/a-image", &kek);
    put_secret(&env, "default/secret/a", b"secret-of-a-91f0");
    put_secret(&env, "default/secret/b", b"secret-of-b-2d77");
    let root = layout.root().display().to_string();
    let a = run_detached(
        &env,
        &[
            "--secret",
            "a=kbs:///default/secret/a",
            &format!("oci:{root}:a:enc"),
        ],
    );
    let _rm_a = RmOnDrop(&env, a.clone());
    let b = run_detached(
        &env,
        &[
            "--secret",
            "b=kbs:///default/secret/b",
            &format!("oci:{root}:plain"),
        ],
    );
    let _rm_b = RmOnDrop(&env, b.clone());
    let api_a = api_socket(&record_of(&env, &a));
    let api_b = api_socket(&record_of(&env, &b));

    // What each run named, it gets.
    assert_eq!(
        local_api_get(&api_a, "/cdh/resource/default/secret/a"),
        (200, b"secret-of-a-91f0".to_vec())
    );
    assert_eq!(
        local_api_get(&api_a, "/cdh/resource/default/key/a-image"),
        (200, kek.to_vec())
    );
    assert_eq!(
        local_api_get(&api_b, "/cdh/resource/default/secret/b"),
        (200, b"secret-of-b-2d77".to_vec())
    );
    // B asks for A's secret and A's image key: refused, naming why.
    for path in ["default/secret/a", "default/key/a-image"] {
        let (status, body) = local_api_get(&api_b, &format!("/cdh/resource/{path}"));
        let body = text(&body);
        assert_ne!(status, 200, "B read {path}: {body}");
        assert!(
            body.contains(&format!("{path} is not among them")) && body.contains(&b),
            "{body}"
        );
        assert!(!body.contains("secret-of-a"), "{body}");
    }
    // A does not get B's either.
    let (status, _) = local_api_get(&api_a, "/cdh/resource/default/secret/b");
    assert_ne!(status, 200);
    for id in [&a, &b] {
        ok(env.veil().args(["rm", "-f", id]).output().unwrap());
    }
}

/// Finding 2, through `veil run`: a layer with `evil -> <host file>` and a
/// hard link `evil2 -> evil` owned by 65534 made the agent (root on the
/// host in the process sandbox) chown the host file. Now the host file
/// keeps its owner and mode, whatever the run's outcome.
#[test]
fn malicious_layer_through_veil_run_leaves_host_files_untouched() {
    let env = Env::new();
    let victim = env.dir.path().join("victim");
    std::fs::write(&victim, "host file").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o640)).unwrap();
    let before = std::fs::metadata(&victim).unwrap();

    let mut t = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_path("evil").unwrap();
    h.set_link_name(&victim).unwrap();
    h.set_mode(0o777);
    h.set_size(0);
    h.set_cksum();
    t.append(&h, std::io::empty()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Link);
    h.set_path("evil2").unwrap();
    h.set_link_name("evil").unwrap();
    h.set_uid(65534);
    h.set_gid(65534);
    h.set_mode(0o4777);
    h.set_size(0);
    h.set_cksum();
    t.append(&h, std::io::empty()).unwrap();
    let layer = t.into_inner().unwrap();

    let layout = env.layout();
    let root = env.dir.path().join("src");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
    let mut b = veil_image::builder::ImageBuilder::new(&layout);
    b.config(veil_image::spec::ContainerConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["echo ran".into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/".into()),
        ..Default::default()
    });
    b.add_layer_dir(&root, veil_image::spec::Compression::Gzip)
        .unwrap();
    b.add_layer_tar(&mut layer.as_slice(), veil_image::spec::Compression::None)
        .unwrap();
    b.finish("evil:1").unwrap();

    let out = env
        .veil()
        .args(["run", &format!("oci:{}:evil:1", layout.root().display())])
        .output()
        .unwrap();
    let after = std::fs::metadata(&victim).unwrap();
    assert_eq!(
        (after.uid(), after.gid(), after.mode()),
        (before.uid(), before.gid(), before.mode()),
        "the host file changed owner or mode; veil run said:\n{}",
        text(&out.stderr)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "host file");
    // Refused, naming the entry.
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("evil2"), "{}", text(&out.stderr));
}

/// Finding 7: unpack limits are configurable and reach the guest through the
/// generated policy (the host cannot raise them: they are measured); a
/// refusal names the limit and how to raise it; with an owner's init-data
/// the flags are refused (its policy decides).
#[test]
fn unpack_limits_reach_the_guest_and_name_themselves() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo ran");
    let img = format!("oci:{}:app:1", layout.root().display());
    for (flag, value, field) in [
        ("--max-image-size", "64K", "max_bytes"),
        ("--max-image-entries", "3", "max_entries"),
    ] {
        let out = env
            .veil()
            .args(["run", flag, value, &img])
            .output()
            .unwrap();
        let e = text(&out.stderr);
        assert!(!out.status.success(), "{e}");
        assert!(!text(&out.stdout).contains("ran"));
        assert!(
            e.contains(&format!("unpack limit {field}")) && e.contains(flag),
            "{e}"
        );
    }
    let out = env
        .veil()
        .args(["run", "--max-image-size", "12X", &img])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125), "{}", text(&out.stderr));
    // Within the limits it runs.
    let out = ok(env
        .veil()
        .args(["run", "--max-image-size", "64M", &img])
        .output()
        .unwrap());
    assert!(text(&out.stdout).contains("ran"));
    // An owner's init-data: its policy decides, the flags are refused.
    let init = env.dir.path().join("init.toml");
    let id = run_detached(&env, &[&img]);
    let _rm_id = RmOnDrop(&env, id.clone());
    let rec = record_of(&env, &id);
    std::fs::copy(rec["init_data_file"].as_str().unwrap(), &init).unwrap();
    ok(env.veil().args(["rm", "-f", &id]).output().unwrap());
    let out = env
        .veil()
        .args(["run", "--init-data"])
        .arg(&init)
        .args(["--max-image-size", "1G", &img])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("only work with a generated policy"),
        "{}",
        text(&out.stderr)
    );
}
