//! `veil policy` end to end: generate (atomic, nothing written on error),
//! digest, check (exit 0 allow / 1 deny / 2 malformed) and diff.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use predicates::prelude::*;
use veil_testkit::registry::DockerRegistry;

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../policy/tests/data")
        .join(rel)
}

fn veil() -> Command {
    Command::cargo_bin("veil").unwrap()
}

/// Run `cmd`, asserting success (with its stderr otherwise).
fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `veil policy generate INPUT -o OUT --init-data INIT_DATA`; the caller
/// adds where images come from.
fn generate(input: &Path, out: &Path, init_data: &Path) -> Command {
    let mut c = veil();
    c.args(["policy", "generate"])
        .arg(input)
        .arg("-o")
        .arg(out)
        .arg("--init-data")
        .arg(init_data);
    c
}

/// `veil policy check --init-data INIT_DATA --request REQUEST`.
fn check(init_data: &Path, request: &Path) -> Command {
    let mut c = veil();
    c.args(["policy", "check", "--init-data"])
        .arg(init_data)
        .arg("--request")
        .arg(request);
    c
}

fn generate_pod(dir: &Path) -> (PathBuf, PathBuf, String) {
    let yaml = dir.join("out.yaml");
    let toml = dir.join("init.toml");
    let out = output_ok(
        generate(&data("manifests/pod-multi.yaml"), &yaml, &toml)
            .arg("--image-dir")
            .arg(data("layout")),
    );
    (yaml, toml, String::from_utf8(out.stdout).unwrap())
}

fn only_files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn generate_writes_yaml_and_init_data_and_prints_the_digest() {
    let dir = tempfile::tempdir().unwrap();
    let (yaml, toml, stdout) = generate_pod(dir.path());
    let bytes = std::fs::read(&toml).unwrap();
    let digest = veil_policy::HashAlgorithm::Sha384.digest(&bytes).hex();
    assert!(
        stdout.contains(&format!("Pod prod/web: init-data sha384 {digest}")),
        "{stdout}"
    );
    assert!(stdout.contains("note: Service web"), "{stdout}");
    let y = std::fs::read_to_string(&yaml).unwrap();
    assert!(y.contains("io.katacontainers.config.hypervisor.cc_init_data"));
    assert_eq!(
        only_files(dir.path()),
        ["init.toml", "out.yaml"],
        "no temp files left"
    );
    // Same input, same bytes.
    let dir2 = tempfile::tempdir().unwrap();
    let (_, toml2, _) = generate_pod(dir2.path());
    assert_eq!(std::fs::read(toml2).unwrap(), bytes);
}

#[test]
fn generate_errors_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bad_yaml = dir.path().join("bad.yaml");
    std::fs::write(&bad_yaml, "kind: Pod\nmetadata: {name: x\n").unwrap();
    let unknown = dir.path().join("unknown.yaml");
    std::fs::write(
        &unknown,
        "apiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n",
    )
    .unwrap();
    let missing_image = dir.path().join("missing.yaml");
    std::fs::write(
        &missing_image,
        std::fs::read_to_string(data("manifests/pod-multi.yaml"))
            .unwrap()
            .replace("shop/api:1.4.2", "shop/api:9.9"),
    )
    .unwrap();
    let existing = dir.path().join("out.yaml");
    std::fs::write(&existing, "previous content\n").unwrap();
    for (input, want) in [
        (bad_yaml, "malformed YAML"),
        (unknown, "unknown kind \"Gadget\""),
        (missing_image, "cannot be resolved"),
        (
            data("manifests/job.yaml"),
            "--init-data needs exactly one workload",
        ),
    ] {
        generate(&input, &existing, &dir.path().join("init.toml"))
            .arg("--image-dir")
            .arg(data("layout"))
            .assert()
            .code(2)
            .stderr(predicate::str::contains(want));
        assert_eq!(
            std::fs::read_to_string(&existing).unwrap(),
            "previous content\n"
        );
        assert!(!dir.path().join("init.toml").exists(), "{want}");
        assert!(
            !only_files(dir.path())
                .iter()
                .any(|f| f.contains("veil-tmp")),
            "temp file left behind"
        );
    }
}

#[test]
fn digest_prints_binding_values() {
    let golden = data("golden/pod-multi.web.toml");
    let bytes = std::fs::read(&golden).unwrap();
    let d = veil_policy::HashAlgorithm::Sha384.digest(&bytes);
    let out = veil()
        .args(["policy", "digest", "--json"])
        .arg(&golden)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["digest"], d.hex());
    assert_eq!(v["snp_host_data"], hex::encode(&d.as_bytes()[..32]));
    assert_eq!(v["tdx_mrconfigid"], d.hex());
    assert_eq!(v["canonical"], true);
    veil()
        .args(["policy", "digest"])
        .arg(&golden)
        .assert()
        .success()
        .stdout(predicate::str::contains("HOST_DATA").and(predicate::str::contains(d.hex())));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "version = \"9\"\nalgorithm = \"sha384\"\n").unwrap();
    veil()
        .args(["policy", "digest"])
        .arg(&bad)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("init-data version"));
}

fn requests(db_host: &str) -> serde_json::Value {
    let sb = "/run/veil/sandbox/sb-1";
    serde_json::json!([
        {"api_version": 1, "kind": "create_sandbox", "request": {
            "sandbox_id": "sb-1", "hostname": "web", "pod_name": "web", "pod_namespace": "prod"}},
        {"api_version": 1, "kind": "create_container", "request": {
            "container_id": "c1", "name": "api",
            "image": {"reference": "registry.example/shop/api:1.4.2",
                      "digest": "sha256:b33d5f797a33f95164df0284b403e91987025642adf9fe880442caa323fdae22"},
            "process": {"args": ["/app/api", "--port", "8080"],
                "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "APP_MODE=prod",
                        format!("DB_HOST={db_host}"), "DB_PASSWORD=x", "GREETING=hello db.internal",
                        "POD_NAME=web", "POD_IP=10.0.0.9", "HOSTNAME=web"],
                "cwd": "/app", "user": {"uid": 1000, "gid": 1000, "additional_gids": [2000]},
                "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE"]}, "no_new_privileges": true},
            "mounts": [{"destination": "/config", "source": format!("{sb}/volumes/config"), "type": "bind",
                        "options": ["rbind", "rprivate", "ro"]}],
            "read_only_rootfs": true,
            // The pod's resources.limits (cpu "1", memory 256Mi) bound these.
            "resources": {"memory_max": 268435456u64, "cpu_quota": 100000, "cpu_period": 100000}}}
    ])
}

#[test]
fn check_allows_denies_and_refuses_malformed() {
    let dir = tempfile::tempdir().unwrap();
    let golden = data("golden/pod-multi.web.toml");
    let ok = dir.path().join("ok.json");
    std::fs::write(&ok, requests("db.internal").to_string()).unwrap();
    check(&golden, &ok)
        .assert()
        .code(0)
        .stdout(predicate::str::contains("allow: create_container"));

    let evil = dir.path().join("evil.json");
    std::fs::write(&evil, requests("evil").to_string()).unwrap();
    check(&golden, &evil)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            r#"create_container: env "DB_HOST=evil" matches no rule for container "api"; allowed: DB_HOST=db.internal"#,
        ))
        .stdout(predicate::str::contains("field:    process.env[2]"));

    let malformed = dir.path().join("bad.json");
    std::fs::write(
        &malformed,
        r#"{"api_version": 1, "kind": "pull_image", "request": {}}"#,
    )
    .unwrap();
    check(&golden, &malformed)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unknown request kind"));
    std::fs::write(&malformed, "not json").unwrap();
    check(&golden, &malformed).assert().code(2);
}

#[test]
fn diff_is_semantic() {
    let golden = data("golden/pod-multi.web.toml");
    veil()
        .args(["policy", "diff"])
        .arg(&golden)
        .arg(&golden)
        .assert()
        .code(0)
        .stdout("identical\n");
    let dir = tempfile::tempdir().unwrap();
    let changed = dir.path().join("changed.toml");
    let text = std::fs::read_to_string(&golden).unwrap();
    std::fs::write(
        &changed,
        text.replacen("\"value\": \"db.internal\"", "\"value\": \"db.evil\"", 1),
    )
    .unwrap();
    veil()
        .args(["policy", "diff"])
        .arg(&golden)
        .arg(&changed)
        .assert()
        .code(1)
        .stdout(predicate::str::contains(
            r#"~ policy.containers["api"].env["DB_HOST"].value: "db.internal" -> "db.evil""#,
        ));
}

#[test]
fn generate_resolves_images_through_a_registry() {
    use veil_image::builder::ImageBuilder;
    use veil_image::spec::{Compression, ContainerConfig};

    let reg = DockerRegistry::start(None);
    let dir = tempfile::tempdir().unwrap();
    // A test image, pushed to the registry.
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/hello.txt"), "hello\n").unwrap();
    let layout = veil_image::OciLayout::create(dir.path().join("layout")).unwrap();
    let mut b = ImageBuilder::new(&layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/app".into()]),
        env: Some(vec!["PATH=/bin".into()]),
        ..Default::default()
    });
    b.add_layer_dir(&src, Compression::Gzip).unwrap();
    b.finish("v1").unwrap();
    let reference = reg.reference("veil/app:v1");
    let r = veil_image::registry::parse_reference(&reference).unwrap();
    let pushed = veil_image::registry::Registry::new(&r, None)
        .push(&layout, Some("v1"))
        .unwrap();

    let pod = |image: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  containers:\n  - {{name: app, image: \"{image}\"}}\n"
        )
    };
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let yaml = dir.path().join("pod.yaml");
    std::fs::write(&yaml, pod(&reference)).unwrap();
    // Each image from its own registry, then the same through --registry HOST:PORT as a mirror.
    for (image, registry_arg) in [
        (reference.clone(), "--registry".to_string()),
        (
            "registry.example/veil/app:v1".to_string(),
            format!("--registry={}", reg.addr()),
        ),
    ] {
        std::fs::write(&yaml, pod(&image)).unwrap();
        let toml = out_dir.join("init.toml");
        let out = output_ok(generate(&yaml, &out_dir.join("out.yaml"), &toml).arg(&registry_arg));
        let bytes = std::fs::read(&toml).unwrap();
        let digest = veil_policy::HashAlgorithm::Sha384.digest(&bytes).hex();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains(&format!("Pod default/app: init-data sha384 {digest}")),
            "{stdout}"
        );
        let parsed = veil_policy::initdata::ParsedInitData::parse(&bytes).unwrap();
        let policy =
            veil_policy::rego::extract_policy_data(parsed.init_data.policy().unwrap()).unwrap();
        assert_eq!(policy.containers[0].image.digest, pushed.to_string());
        assert_eq!(policy.containers[0].image.reference, image);
    }

    // Unresolvable: a clear error, exit 2, nothing written.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    std::fs::write(&yaml, pod(&reg.reference("veil/app:absent"))).unwrap();
    generate(&yaml, &empty.join("out.yaml"), &empty.join("init.toml"))
        .arg("--registry")
        .assert()
        .code(2)
        .stderr(
            predicate::str::contains("cannot be resolved")
                .and(predicate::str::contains("veil/app:absent"))
                .and(predicate::str::contains("not found")),
        );
    assert!(only_files(&empty).is_empty(), "{:?}", only_files(&empty));

    // --registry and --image-dir exclude each other; a file given as HOST:PORT is caught.
    veil()
        .args(["policy", "generate"])
        .arg(&yaml)
        .arg("--registry")
        .arg("--image-dir")
        .arg(data("layout"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot be used with"));
    veil()
        .args(["policy", "generate", "--registry"])
        .arg(&yaml)
        .arg(&yaml)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("looks like a file"));
    assert!(only_files(&empty).is_empty());
}

/// `veil policy check --json | head`: a closed pipe ends it quietly, with
/// the decision's status (0 here) and no panic message.
#[test]
fn check_into_a_closed_pipe_exits_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let ok = dir.path().join("ok.json");
    std::fs::write(&ok, requests("db.internal").to_string()).unwrap();
    for json in [false, true] {
        // A socket whose peer is gone: writes fail with EPIPE, as on a pipe.
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(reader);
        let writer = std::os::fd::OwnedFd::from(writer);
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("veil"));
        c.args(["policy", "check", "--init-data"])
            .arg(data("golden/pod-multi.web.toml"))
            .arg("--request")
            .arg(&ok);
        if json {
            c.arg("--json");
        }
        let out = c.stdout(writer).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.is_empty(), "{err}");
    }
}

/// The owner's production flow delivers secrets: `--secret NAME=URI` puts
/// the same cdh.toml credential `veil run --secret` writes into the
/// generated init-data (so its digest changes), and bad names, bad URIs
/// or no KBS are refused with nothing written.
#[test]
fn generate_with_secrets_writes_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let gen_with = |name: &str, extra: &[&str]| {
        let toml = dir.path().join(format!("{name}.toml"));
        let mut c = generate(
            &data("manifests/pod-multi.yaml"),
            &dir.path().join(format!("{name}.yaml")),
            &toml,
        );
        c.arg("--image-dir")
            .arg(data("layout"))
            .args(["--kbs-url", "https://kbs.example:8080"])
            .args(extra);
        (c, toml)
    };
    let (mut c, plain) = gen_with("plain", &[]);
    output_ok(&mut c);
    let (mut c, with) = gen_with(
        "with",
        &[
            "--secret",
            "db-password=kbs:///default/secret/db",
            "--secret",
            "tls.key=kbs:///prod/key/tls",
        ],
    );
    let out = output_ok(&mut c);
    let plain_text = std::fs::read_to_string(&plain).unwrap();
    let text = std::fs::read_to_string(&with).unwrap();
    assert!(plain_text.contains("credentials = []"), "{plain_text}");
    assert!(
        text.contains(
            r#"credentials = [{ path = "/run/veil/secrets/db-password", resource_uri = "kbs:///default/secret/db" }, { path = "/run/veil/secrets/tls.key", resource_uri = "kbs:///prod/key/tls" }]"#
        ),
        "{text}"
    );
    let digest = veil_policy::HashAlgorithm::Sha384
        .digest(text.as_bytes())
        .hex();
    let plain_digest = veil_policy::HashAlgorithm::Sha384
        .digest(plain_text.as_bytes())
        .hex();
    assert_ne!(digest, plain_digest);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&digest));

    for (args, needle) in [
        (
            &["--secret", "../x=kbs:///a/b/c"][..],
            "secret name \"../x\"",
        ),
        (
            &["--secret", "x=https://a/b/c"][..],
            "must be a kbs:///repo/type/tag URI",
        ),
        (&["--secret", "x=kbs:///a/b"][..], "expected 3"),
        (&["--secret", "x"][..], "expected NAME=kbs:///repo/type/tag"),
    ] {
        let (mut c, toml) = gen_with("bad", args);
        c.assert().code(2).stderr(predicate::str::contains(needle));
        assert!(!toml.exists());
    }
    let mut c = generate(
        &data("manifests/pod-multi.yaml"),
        &dir.path().join("nokbs.yaml"),
        &dir.path().join("nokbs.toml"),
    );
    c.arg("--image-dir")
        .arg(data("layout"))
        .args(["--secret", "x=kbs:///a/b/c"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("needs kbs.url (--kbs-url)"));
}
