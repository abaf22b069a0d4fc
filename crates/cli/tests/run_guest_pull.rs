//! `veil run --pull-in guest REF` in the process sandbox: the agent pulls
//! the image from a TLS registry with Basic auth itself (the host never
//! holds a layer), with the credentials from the KBS that init-data names,
//! and refuses a missing or wrong credentials resource and a registry that
//! serves another manifest than the policy pins, naming the check. The
//! same pull through a VM's network is in run_vm.rs.

mod common;

use common::{Env, TlsRegistry, ok, text};

/// A `veil kbs serve --dev` of the test's own (so that a policy generated
/// by one run can be given to the next), the sim key shared with `env`.
fn dev_kbs(env: &Env) -> veil_testkit::kbs::DevKbs {
    let d = env.dir.path().join("kbs");
    std::fs::create_dir_all(&d).unwrap();
    let veil = std::path::Path::new(env!("CARGO_BIN_EXE_veil"));
    veil_testkit::kbs::make_keys(veil, &d);
    std::fs::create_dir_all(env.data().join("sim")).unwrap();
    std::fs::copy(d.join("sim.key"), env.data().join("sim/platform-key.pem")).unwrap();
    veil_testkit::kbs::DevKbs::serve(veil, &d)
}

fn put(kbs: &veil_testkit::kbs::DevKbs, path: &str, file: &std::path::Path) {
    ok(kbs
        .client()
        .env("VEIL_KBS_INSECURE_HTTP", "1")
        .args(["kbs", "resource", "put", path])
        .arg(file)
        .output()
        .unwrap());
}

#[test]
fn guest_pulls_with_kbs_credentials_and_refuses_what_it_must() {
    let env = Env::new();
    let reg = TlsRegistry::start(&env, "echo pulled-by-the-guest", None);
    let kbs = dev_kbs(&env);
    ok(kbs
        .client()
        .env("VEIL_KBS_INSECURE_HTTP", "1")
        .args([
            "kbs",
            "policy",
            "set",
            "--scope",
            "default/registry",
            "--template",
            "allow-all",
        ])
        .output()
        .unwrap());
    put(&kbs, "default/registry/auth", &reg.good_auth);
    put(&kbs, "default/registry/wrong", &reg.bad_auth);
    let run = |name: &str, auth: &str| {
        let mut c = env.veil();
        c.args([
            "run",
            "--name",
            name,
            "--kbs",
            &kbs.url(),
            "--pull-in",
            "guest",
        ])
        .arg("--registry-ca")
        .arg(&reg.ca)
        // The host's look-up of the digest to pin (the owner's access).
        .arg("--authfile")
        .arg(&reg.good_auth)
        .args(["--registry-auth", auth, &reg.reference]);
        c.output().unwrap()
    };

    let out = ok(run("good", "kbs:///default/registry/auth"));
    assert!(
        text(&out.stdout).contains("pulled-by-the-guest"),
        "{}",
        text(&out.stderr)
    );
    // `veil inspect` says where the image was pulled.
    let rec: serde_json::Value =
        serde_json::from_slice(&ok(env.veil().args(["inspect", "good"]).output().unwrap()).stdout)
            .unwrap();
    assert_eq!(
        rec["pull"],
        format!("guest (registry {})", reg.reg.addr()),
        "{rec}"
    );
    let init = std::fs::read_to_string(rec["init_data_file"].as_str().unwrap()).unwrap();
    assert!(
        init.contains(&reg.digest.to_string()),
        "the policy pins the digest"
    );
    assert!(
        init.contains("authenticated_registry_credentials_uri")
            && init.contains("kbs:///default/registry/auth")
            && init.contains("extra_root_certificates"),
        "{init}"
    );
    // The host pulled nothing: no run layout, no image cache.
    let run_dir = env.data().join("run").join(rec["id"].as_str().unwrap());
    assert!(!run_dir.join("layout").exists());
    assert!(!env.data().join("images").exists());

    // The credentials resource missing, or wrong: refused, naming the check.
    let out = run("missing", "kbs:///default/registry/missing");
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("registry credentials check") && e.contains("kbs:///default/registry/missing"),
        "{e}"
    );
    let out = run("wrong", "kbs:///default/registry/wrong");
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("access denied")
            && e.contains("HTTP 401")
            && e.contains("kbs:///default/registry/wrong"),
        "{e}"
    );
    assert!(!e.contains("pull-secret"), "{e}");

    // The registry serves another manifest under the pinned digest: the
    // guest refuses it before any layer is read (the layer blobs are gone,
    // so reading one would fail differently).
    let mut other = std::fs::read(reg.blob_file(&reg.digest)).unwrap();
    let m: serde_json::Value = serde_json::from_slice(&other).unwrap();
    for l in m["layers"].as_array().unwrap() {
        let d: veil_image::Digest = l["digest"].as_str().unwrap().parse().unwrap();
        std::fs::remove_file(reg.blob_file(&d)).unwrap();
    }
    other.extend_from_slice(b"\n");
    std::fs::write(reg.blob_file(&reg.digest), &other).unwrap();
    let init_data = env.dir.path().join("good-init-data.toml");
    std::fs::copy(rec["init_data_file"].as_str().unwrap(), &init_data).unwrap();
    ok(env.veil().args(["rm", "good"]).output().unwrap());
    let out = env
        .veil()
        .args(["run", "--kbs", &kbs.url(), "--pull-in", "guest"])
        .arg("--init-data")
        .arg(&init_data)
        .arg(&reg.reference)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("image digest check")
            && e.contains(&reg.digest.to_string())
            && e.contains("refusing before reading any layer"),
        "{e}"
    );
}

#[test]
fn guest_pull_refusals_on_the_host_say_what_to_do() {
    let env = Env::new();
    // A plain-HTTP loopback registry cannot be pulled by the guest (TLS only).
    let reg = veil_testkit::registry::DockerRegistry::start(None);
    let out = env
        .veil()
        .args(["run", "--pull-in", "guest", &reg.reference("veil/app:v1")])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("pulls only over TLS") && e.contains("--registry-ca"),
        "{e}"
    );
    // Credentials for the guest when the host pulls.
    let out = env
        .veil()
        .args([
            "run",
            "--pull-in",
            "host",
            "--registry-auth",
            "kbs:///a/b/c",
        ])
        .arg(reg.reference("veil/app:v1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("--registry-auth") && e.contains("--authfile"),
        "{e}"
    );
    // A VM without a network cannot pull in the guest.
    let out = env
        .veil()
        .args([
            "run",
            "--sandbox",
            "vm",
            "--network",
            "none",
            "--pull-in",
            "guest",
        ])
        .arg("--registry-ca")
        .arg("/dev/null")
        .arg(reg.reference("veil/app:v1"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = text(&out.stderr);
    assert!(
        e.contains("no workload network") && e.contains("--pull-in host"),
        "{e}"
    );
}
