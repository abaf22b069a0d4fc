//! `veil run REF`: images by registry reference (issue 14), pulled from
//! Debian's `docker-registry` on loopback into veil's image cache, with
//! docker's pull policies and the digest pinned in the generated policy.

mod common;

use common::{Env, image, ok, text};
use veil_testkit::registry::DockerRegistry;

fn push(env: &Env, tag: &str, remote: &str) -> String {
    let out = ok(env
        .veil()
        .args(["image", "push"])
        .arg(format!(
            "oci:{}:{tag}",
            env.dir.path().join("layout").display()
        ))
        .arg(format!("docker://{remote}"))
        .output()
        .unwrap());
    let s = text(&out.stdout);
    s.split_whitespace()
        .find(|w| w.starts_with("sha256:"))
        .unwrap_or_else(|| panic!("no digest in {s}"))
        .to_string()
}

fn run(env: &Env, args: &[&str]) -> std::process::Output {
    env.veil().arg("run").args(args).output().unwrap()
}

#[test]
fn images_by_reference_are_pulled_cached_and_pinned() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "a", "echo from-image-a");
    image(&env, &layout, "b", "echo from-image-b");
    let reg = DockerRegistry::start(None);
    let remote = reg.reference("veil/app:v1");
    let digest_a = push(&env, "a", &remote);

    // host:port/repo:tag is pulled, runs, and the policy pins its digest.
    let out = ok(run(&env, &[&remote]));
    assert!(
        text(&out.stdout).contains("from-image-a"),
        "{}",
        text(&out.stdout)
    );
    let id = std::fs::read_dir(env.data().join("run"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .file_name();
    let rec = common::record_of(&env, id.to_str().unwrap());
    assert_eq!(rec["image"], remote.as_str(), "{rec}");
    let init = std::fs::read_to_string(rec["init_data_file"].as_str().unwrap()).unwrap();
    assert!(
        init.contains(&digest_a),
        "the generated policy pins {digest_a}"
    );
    let cache = env.data().join("images");
    assert!(cache.join("index.json").is_file());

    // A bare name resolves against the default registry.
    let (host, _) = remote.split_once('/').unwrap();
    let out = ok(env
        .veil()
        .env("VEIL_DEFAULT_REGISTRY", host)
        .args(["run", "--name", "bare", "veil/app:v1"])
        .output()
        .unwrap());
    assert!(text(&out.stdout).contains("from-image-a"));

    // A pod without --oci-layout pulls what its YAML names, as written.
    let pod = common::write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: pulled}\nspec:\n  containers:\n  - name: app\n    image: veil/app:v1\n",
    );
    let out = ok(env
        .veil()
        .env("VEIL_DEFAULT_REGISTRY", host)
        .arg("run")
        .arg("--pod")
        .arg(&pod)
        .output()
        .unwrap());
    assert!(
        text(&out.stdout).contains("from-image-a"),
        "{}",
        text(&out.stdout)
    );

    // The tag moves: docker's default (`missing`) keeps the cached image,
    // `--pull always` asks the registry and gets the new one.
    let digest_b = push(&env, "b", &remote);
    assert_ne!(digest_a, digest_b);
    let out = ok(run(&env, &[&remote]));
    assert!(
        text(&out.stdout).contains("from-image-a"),
        "--pull missing reuses the cache"
    );
    let out = ok(run(&env, &["--pull", "always", &remote]));
    assert!(
        text(&out.stdout).contains("from-image-b"),
        "{}",
        text(&out.stdout)
    );

    // With the registry gone, the cache still serves a digest reference
    // (`repo@sha256:…`), and `--pull never` refuses what it does not hold.
    let by_digest = format!("{}@{digest_a}", reg.reference("veil/app"));
    drop(reg);
    let out = ok(run(&env, &["--pull", "never", &by_digest]));
    assert!(text(&out.stdout).contains("from-image-a"));
    let before = std::fs::read_dir(env.data().join("run")).unwrap().count();
    let out = run(&env, &["--pull", "never", &format!("{host}/veil/other:v9")]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("not in veil's image cache") && err.contains("--pull missing"),
        "{err}"
    );
    // A refused pull leaves no sandbox record behind.
    assert_eq!(
        std::fs::read_dir(env.data().join("run")).unwrap().count(),
        before
    );

    // Malformed references are refused before anything happens.
    let out = run(&env, &["Not/A:Valid:Ref"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("invalid image reference"),
        "{}",
        text(&out.stderr)
    );
}
