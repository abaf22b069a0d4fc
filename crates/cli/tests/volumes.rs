//! Pod volumes and securityContext end to end (issue 14): configMap,
//! secret and downwardAPI volumes hold exactly the content the policy pins
//! (a swapped file is refused, naming it), `emptyDir: {medium: Memory,
//! sizeLimit}` is a tmpfs of that size, hostPath only when allowed,
//! `-v NAME:/path` and `--mount type=bind` for single-image runs, and the
//! pod's sysctls, user and read-only root applied in the container.

mod common;

use std::path::{Path, PathBuf};

use common::{Env, image, ok, text, write_pod};

const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: site\n  namespace: default\ndata:\n  index.html: \"<h1>pinned page</h1>\"\n  app.conf: \"mode=prod\"\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\n  namespace: default\nstringData:\n  password: hunter2-not-logged\n";

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: vols\n  namespace: default\n  labels: {app: vols}\nspec:\n  automountServiceAccountToken: false\n  volumes:\n  - name: site\n    configMap:\n      name: site\n      items:\n      - {key: index.html, path: html/index.html}\n      - {key: app.conf, path: app.conf, mode: 0o600}\n  - name: creds\n    secret: {secretName: creds, defaultMode: 0o400}\n  - name: info\n    downwardAPI:\n      items:\n      - {path: name, fieldRef: {fieldPath: metadata.name}}\n      - {path: labels, fieldRef: {fieldPath: metadata.labels}}\n  containers:\n  - name: app\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"cat /site/html/index.html; echo; cat /site/app.conf; echo; stat -c '%a %n' /site/app.conf /site/html/index.html /creds/password; sha256sum /creds/password; cat /info/name; echo; cat /info/labels; echo; echo x > /site/new || echo site-read-only\"]\n    volumeMounts:\n    - {name: site, mountPath: /site}\n    - {name: creds, mountPath: /creds}\n    - {name: info, mountPath: /info}\n";

fn busybox(env: &Env) -> PathBuf {
    let layout = env.layout();
    image(env, &layout, "app:1", "echo default");
    layout.root().to_path_buf()
}

fn write(env: &Env, name: &str, body: &str) -> PathBuf {
    let p = env.dir.path().join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn run_pod(env: &Env, pod: &Path, layout: &Path, extra: &[&str]) -> std::process::Output {
    env.veil()
        .args(["run", "--rm", "--pod"])
        .arg(pod)
        .arg("--oci-layout")
        .arg(layout)
        .args(extra)
        .output()
        .unwrap()
}

/// The content of configMap (items, per-item mode), secret (defaultMode)
/// and downwardAPI volumes reaches the container as pinned, read-only;
/// the secret's value is not in the run's logs or records.
#[test]
fn content_volumes_hold_what_the_policy_pins() {
    let env = Env::new();
    let layout = busybox(&env);
    let pod = write_pod(&env, POD);
    let config = write(&env, "config.yaml", CONFIG);
    // Not --rm: the run's records and logs stay, to be searched below.
    let out = env
        .veil()
        .args(["run", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(&layout)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    for want in [
        "<h1>pinned page</h1>\n",
        "mode=prod\n",
        "600 /site/app.conf\n",
        "644 /site/html/index.html\n",
        "400 /creds/password\n",
        "afd84c10e13216f4947fc72e749dc85d9e42969d4805205f6e13481d959fe50f  /creds/password\n",
        "vols\n",
        "app=\"vols\"\n",
        "site-read-only\n",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    // The secret's bytes are in no file of the data dir (records, logs,
    // init-data): the volume lives in the agent's private tmpfs.
    let leaked = std::process::Command::new("grep")
        .args(["-rl", "hunter2-not-logged"])
        .arg(env.data())
        .output()
        .unwrap();
    assert_eq!(text(&leaked.stdout), "", "secret value found on disk");
}

/// A ConfigMap swapped by the host after the policy was generated is
/// refused at create_sandbox, naming the volume, the file and both
/// digests; without the ConfigMap the generated run says what is missing.
#[test]
fn a_swapped_config_map_file_is_refused_naming_it() {
    let env = Env::new();
    let layout = busybox(&env);
    let pod = write_pod(&env, POD);
    let config = write(&env, "config.yaml", CONFIG);
    let init = env.dir.path().join("init.toml");
    ok(env
        .veil()
        .args(["policy", "generate"])
        .arg(&pod)
        .arg(&config)
        .arg("--image-dir")
        .arg(&layout)
        .arg("--init-data")
        .arg(&init)
        .arg("-o")
        .arg(env.dir.path().join("annotated.yaml"))
        .output()
        .unwrap());
    let swapped = write(
        &env,
        "swapped.yaml",
        &CONFIG.replace("<h1>pinned page</h1>", "<h1>host page</h1>"),
    );
    let out = run_pod(
        &env,
        &pod,
        &layout,
        &[
            "--init-data",
            init.to_str().unwrap(),
            "--config",
            swapped.to_str().unwrap(),
        ],
    );
    let err = text(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("volume site (configMap): file html/index.html has digest sha256:"),
        "{err}"
    );
    assert!(err.contains("the policy pins sha256:"), "{err}");
    assert!(!text(&out.stdout).contains("host page"));
    // The honest ConfigMap under the same init-data runs.
    let out = run_pod(
        &env,
        &pod,
        &layout,
        &[
            "--init-data",
            init.to_str().unwrap(),
            "--config",
            config.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // No ConfigMap at all: generation names it and --config.
    let out = run_pod(&env, &pod, &layout, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("ConfigMap \"site\""), "{err}");
    assert!(err.contains("--config"), "{err}");
}

/// `emptyDir: {medium: Memory, sizeLimit: 1Mi}` is a tmpfs of that size:
/// writing past it fails with ENOSPC; a plain emptyDir is not limited so.
#[test]
fn memory_empty_dir_honours_its_size_limit() {
    let env = Env::new();
    let layout = busybox(&env);
    let pod = write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mem\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  volumes:\n  - name: scratch\n    emptyDir: {medium: Memory, sizeLimit: 1Mi}\n  containers:\n  - name: app\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"cat /dev/zero > /scratch/fill; echo rc=$?; wc -c < /scratch/fill; grep /scratch /proc/mounts\"]\n    volumeMounts:\n    - {name: scratch, mountPath: /scratch}\n",
    );
    let out = run_pod(&env, &pod, &layout, &[]);
    let stdout = text(&out.stdout);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(stdout.contains("rc=1\n"), "{stdout}");
    assert!(stdout.contains("\n1048576\n"), "{stdout}");
    assert!(stdout.contains("tmpfs"), "{stdout}");
}

/// `-v NAME:/path` is a scratch volume in the sandbox; docker's
/// `-v /host:/ctr` is refused pointing at --mount; `--mount type=bind`
/// binds a host directory with a warning; `,readonly` makes it read-only.
#[test]
fn single_image_volumes_and_bind_mounts() {
    let env = Env::new();
    let layout = env.layout();
    image(&env, &layout, "app:1", "echo default");
    let img = format!("oci:{}:app:1", layout.root().display());
    let out = ok(env
        .veil()
        .args(["run", "--rm", "-v", "scratch:/scratch", &img, "--"])
        .args(["sh", "-c", "echo kept > /scratch/f && cat /scratch/f"])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "kept\n");

    let out = env
        .veil()
        .args(["run", "--rm", "-v", "/tmp:/host", &img])
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--mount type=bind,source=/tmp,target=/host"),
        "{err}"
    );

    let shared = env.dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("from-host"), "host bytes").unwrap();
    let mount = format!("type=bind,source={},target=/host", shared.display());
    let out = ok(env
        .veil()
        .args(["run", "--rm", "--mount", &mount, &img, "--"])
        .args([
            "sh",
            "-c",
            "cat /host/from-host; echo; echo ctr > /host/from-ctr",
        ])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "host bytes\n");
    assert!(
        text(&out.stderr).contains("the host can read and change everything in it"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("from-ctr")).unwrap(),
        "ctr\n"
    );

    let out = ok(env
        .veil()
        .args([
            "run",
            "--rm",
            "--mount",
            &format!("{mount},readonly"),
            &img,
            "--",
        ])
        .args(["sh", "-c", "echo x > /host/nope || echo read-only"])
        .output()
        .unwrap());
    assert_eq!(text(&out.stdout), "read-only\n");
    assert!(!shared.join("nope").exists());
}

/// A pod's hostPath is refused by the generated policy, naming the field
/// and the flag; with --allow-host-path it runs, with the warning.
#[test]
fn host_path_needs_the_flag() {
    let env = Env::new();
    let layout = busybox(&env);
    let dir = env.dir.path().join("hp");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("f"), "on the host").unwrap();
    let pod = write_pod(
        &env,
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hp\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  volumes:\n  - name: host\n    hostPath: {{path: {}}}\n  containers:\n  - name: app\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"cat /h/f\"]\n    volumeMounts:\n    - {{name: host, mountPath: /h, readOnly: true}}\n",
            dir.display()
        ),
    );
    let out = run_pod(&env, &pod, &layout, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("volumes[0].hostPath.path"), "{err}");
    assert!(err.contains("--allow-host-path"), "{err}");
    let out = run_pod(&env, &pod, &layout, &["--allow-host-path"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("on the host"));
    assert!(text(&out.stderr).contains("the host can read and change"));
}

/// The securityContext fields the policy pins are applied in the
/// container: a namespaced sysctl, the user and group, a read-only root
/// filesystem, dropped capabilities; a non-namespaced sysctl is refused.
#[test]
fn security_context_and_sysctls_are_applied() {
    let env = Env::new();
    let layout = busybox(&env);
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: sc\n  namespace: default\nspec:\n  automountServiceAccountToken: false\n  securityContext:\n    sysctls:\n    - {name: net.ipv4.ip_unprivileged_port_start, value: \"80\"}\n  containers:\n  - name: app\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"cat /proc/sys/net/ipv4/ip_unprivileged_port_start; id -u; id -g; echo x > /f || echo root-read-only; grep CapEff /proc/self/status\"]\n    securityContext:\n      runAsUser: 1000\n      runAsGroup: 1001\n      readOnlyRootFilesystem: true\n      capabilities: {drop: [ALL]}\n";
    let p = write_pod(&env, pod);
    let out = run_pod(&env, &p, &layout, &[]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    assert!(
        stdout.starts_with("80\n1000\n1001\nroot-read-only\n"),
        "{stdout}"
    );
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    // The host's own value is untouched.
    let host = std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").unwrap();
    assert_ne!(host.trim(), "80", "the sysctl leaked to the host's netns");

    let p = write_pod(
        &env,
        &pod.replace("net.ipv4.ip_unprivileged_port_start", "vm.swappiness"),
    );
    let out = run_pod(&env, &p, &layout, &[]);
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("vm.swappiness is not a namespaced sysctl"),
        "{err}"
    );
}

/// `fsGroup` as Kubernetes applies it: a non-root container user reads a
/// secret file of mode 0440 through the group, and a file it makes in an
/// emptyDir inherits that group. `privileged: true` is refused with the
/// way to admit it; `veil policy generate --allow-privileged` admits it.
#[test]
fn fs_group_owns_volumes_and_privileged_needs_the_flag() {
    let env = Env::new();
    let layout = busybox(&env);
    let pod = write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: grp\nspec:\n  securityContext: {runAsUser: 1000, runAsGroup: 1000, fsGroup: 2000}\n  volumes:\n  - name: creds\n    secret: {secretName: creds, defaultMode: 0o440}\n  - name: scratch\n    emptyDir: {}\n  containers:\n  - name: app\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"id -G; stat -c '%g %a' /creds/password /scratch; cat /creds/password; echo; touch /scratch/f; stat -c '%g' /scratch/f\"]\n    volumeMounts:\n    - {name: creds, mountPath: /creds}\n    - {name: scratch, mountPath: /scratch}\n",
    );
    let config = write(&env, "config.yaml", CONFIG);
    let out = run_pod(&env, &pod, &layout, &["--config", config.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        text(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].split(' ').any(|g| g == "2000"),
        "fsGroup not a supplementary group: {stdout}"
    );
    assert_eq!(lines[1], "2000 440", "{stdout}");
    assert_eq!(lines[2], "2000 2777", "{stdout}");
    assert_eq!(lines[3], "hunter2-not-logged", "{stdout}");
    assert_eq!(
        lines[4], "2000",
        "a new emptyDir file inherits fsGroup: {stdout}"
    );

    let privileged = write_pod(
        &env,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: priv\nspec:\n  containers:\n  - name: app\n    image: app:1\n    command: [\"/bin/true\"]\n    securityContext: {privileged: true}\n",
    );
    let out = run_pod(&env, &privileged, &layout, &[]);
    let err = text(&out.stderr);
    assert_ne!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("securityContext.privileged"), "{err}");
    assert!(err.contains("--allow-privileged"), "{err}");
    // Admitted, the policy pins the container privileged.
    let init = env.dir.path().join("priv.toml");
    ok(env
        .veil()
        .args(["policy", "generate", "--allow-privileged"])
        .arg(&privileged)
        .arg("--image-dir")
        .arg(&layout)
        .arg("--init-data")
        .arg(&init)
        .arg("-o")
        .arg(env.dir.path().join("priv-annotated.yaml"))
        .output()
        .unwrap());
    let init = std::fs::read_to_string(&init).unwrap();
    assert!(init.contains("\"privileged\": true"), "{init}");
}

/// `veil volume key` recovers a volume key from a `veil kbs serve` whose
/// store is PostgreSQL (`--store`, as given to the server), and nothing
/// from its data dir, which holds no SQLite store then; a wrong KEK opens
/// nothing.
#[test]
fn volume_key_reads_a_kbs_whose_store_is_postgresql() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    let pg = veil_testkit::postgres::Postgres::start();
    pg.create_db("kbs");
    let url = pg.url("kbs");
    let d = env.dir.path().join("kbs");
    std::fs::create_dir_all(&d).unwrap();
    let veil = Path::new(env!("CARGO_BIN_EXE_veil"));
    veil_testkit::kbs::make_keys(veil, &d);
    let kbs = veil_testkit::kbs::DevKbs::serve_with(veil, &d, &["--store", &url]);
    ok(kbs
        .client()
        .args([
            "volume",
            "create",
            "db",
            "--size",
            "64M",
            "--insecure-http",
            "--kbs",
        ])
        .arg(kbs.url())
        .env("VEIL_DATA_DIR", env.data())
        .output()
        .unwrap());
    let key = |extra: &[&str], kek: &Path, out: &Path| {
        env.veil()
            .args(["volume", "key", "db", "--out"])
            .arg(out)
            .args(extra)
            .arg("--kek-file")
            .arg(kek)
            .output()
            .unwrap()
    };
    let out_file = env.dir.path().join("db.key");
    let out = ok(key(&["--store", &url], &d.join("kek.hex"), &out_file));
    assert!(
        text(&out.stderr).contains("cryptsetup open --key-file"),
        "{}",
        text(&out.stderr)
    );
    let k = std::fs::read(&out_file).unwrap();
    assert_eq!(k.len(), 64, "the 64-byte volume key");
    assert_eq!(
        std::fs::metadata(&out_file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // The server's data dir has no SQLite copy of it.
    let out = key(
        &["--kbs-data-dir", d.to_str().unwrap()],
        &d.join("kek.hex"),
        &env.dir.path().join("other.key"),
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("holds no kbs:///veil-volume/key/db"),
        "{}",
        text(&out.stderr)
    );
    // Another KEK opens nothing.
    let other = env.dir.path().join("other-kek");
    std::fs::create_dir_all(&other).unwrap();
    veil_testkit::kbs::make_keys(veil, &other);
    let out = key(
        &["--store", &url],
        &other.join("kek.hex"),
        &env.dir.path().join("x.key"),
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert!(!env.dir.path().join("x.key").exists());
    // --kek-file alone names no store.
    let out = key(&[], &d.join("kek.hex"), &env.dir.path().join("y.key"));
    assert!(
        text(&out.stderr).contains("--kbs-data-dir DIR (SQLite) or --store"),
        "{}",
        text(&out.stderr)
    );
}
