//! Must-holds 2 and 4 of issue 15: Debian's containerd (a private instance
//! with its CRI plugin, Debian's CNI plugins on a bridge of the test's own)
//! runs a Kubernetes pod in a veil process sandbox through runtime handler
//! `veil`, driven over the CRI socket as the kubelet drives it (no kubelet):
//! the pod's init-data comes from `veil policy generate` in CoCo's
//! annotation, its sim TEE attests to a `veil kbs serve` this test runs, and
//! the KBS releases a secret only to the init-data it was bound to.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{assert_root, busybox_image, ok, processes_mentioning, text, wait_for, walk};
use sha2::Digest as _;
use veil_image::OciLayout;
use veil_policy::initdata::INIT_DATA_ANNOTATION;
use veil_testkit::cri::{self, CriHandler, CriNode, CriOptions, api};
use veil_testkit::kbs::DevKbs;

const HANDLER: &str = "veil";
const REPO: &str = "registry.test/veil-cri/app";
const PAUSE: &str = "registry.test/veil-cri/pause:1";
const SECRET: &[u8] = b"cri-secret-for-the-pod";

/// The writer serves "pong" on the pod's loopback (port 7777) once it has
/// written to the emptyDir; the reader sleeps.
const WRITER_CMD: &str = "echo writer up; echo writer-stderr >&2; echo from-writer > /shared/msg; \
    echo secret-fp $(sha256sum /run/veil/secrets/k | cut -c1-16); \
    exec nc -ll -p 7777 -e /bin/pong";
const READER_CMD: &str = "echo reader up; exec sleep 600";

/// Dropped in field order: the node (pods removed through the CRI,
/// containerd stopped, the bridge deleted), then the KBS, then the files.
struct Env {
    node: CriNode,
    kbs: DevKbs,
    veil: PathBuf,
    layout: PathBuf,
    data: PathBuf,
    dir: tempfile::TempDir,
}

fn env() -> Env {
    assert_root();
    let dir = tempfile::tempdir().unwrap();
    let shim = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-veil-v2"));
    let bin = shim.parent().unwrap().to_path_buf();
    let veil = bin.join("veil");
    assert!(
        veil.is_file(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        veil.display()
    );

    // The images the kubelet would have pulled: the pause image, the pod's
    // two, and one its policy does not run.
    let layout = dir.path().join("layout");
    let l = OciLayout::create(&layout).unwrap();
    busybox_image(&l, dir.path(), PAUSE, "exec sleep 600", &[]);
    let pong = [("/bin/pong", "#!/bin/sh\necho pong\n", 0o755)];
    busybox_image(&l, dir.path(), &format!("{REPO}:writer"), WRITER_CMD, &pong);
    busybox_image(&l, dir.path(), &format!("{REPO}:reader"), READER_CMD, &[]);
    busybox_image(&l, dir.path(), &format!("{REPO}:other"), "echo other", &[]);

    // The KBS, trusting the sim platform of the shim's data dir.
    let data = dir.path().join("data");
    let kd = dir.path().join("kbs");
    std::fs::create_dir_all(&kd).unwrap();
    veil_testkit::kbs::make_keys(&veil, &kd);
    std::fs::create_dir_all(data.join("sim")).unwrap();
    // fs::copy keeps the 0600 mode the sim platform insists on.
    std::fs::copy(kd.join("sim.key"), data.join("sim/platform-key.pem")).unwrap();
    let kbs = DevKbs::serve(&veil, &kd);
    std::fs::write(kd.join("secret.bin"), SECRET).unwrap();
    kbs_admin(
        &kbs,
        &["resource", "put", "default/secret/k"],
        &[&kd.join("secret.bin")],
    );

    let config = dir.path().join("shim.toml");
    let node = CriNode::start(CriOptions {
        shim_dir: bin,
        env: vec![
            ("VEIL_SHIM_CONFIG".into(), config.display().to_string()),
            ("VEIL_SHIM_LOG".into(), "debug".into()),
        ],
        handlers: vec![CriHandler {
            name: HANDLER.into(),
            runtime_type: "io.containerd.veil.v2".into(),
            runtime_path: None,
        }],
        sandbox_image: (layout.clone(), PAUSE.into()),
    });
    // The shims read it when containerd starts them; it names containerd's
    // root, which the testkit picks.
    std::fs::write(
        &config,
        format!(
            "[handlers.veil]\ncontainerd_root = {:?}\ndata_dir = {:?}\nagent = {:?}\n",
            node.containerd().root().display().to_string(),
            data.display().to_string(),
            veil_testkit::veil_agent().display().to_string()
        ),
    )
    .unwrap();
    node.import(&layout);
    Env {
        node,
        kbs,
        veil,
        layout,
        data,
        dir,
    }
}

/// `veil kbs ARGS… FILES… --insecure-http` against `kbs`.
fn kbs_admin(kbs: &DevKbs, args: &[&str], files: &[&Path]) {
    let mut c = kbs.client();
    c.arg("kbs").args(args).args(files).arg("--insecure-http");
    ok(c.output().unwrap(), &format!("veil kbs {args:?}"));
}

/// The pod YAML an owner writes: two containers sharing an emptyDir, the
/// commands `kubectl exec` may run.
fn pod_yaml(name: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  annotations:
    policy.veil.dev/exec.reader: '[["/bin/sh","-c","exit 7"],["/bin/cat","/shared/msg"],["/bin/sh","-c","nc 127.0.0.1 7777 </dev/null"],["/bin/cat","/proc/net/fib_trie"]]'
    policy.veil.dev/exec.writer: '[["/bin/cat","/proc/net/fib_trie"]]'
spec:
  volumes:
  - name: shared
    emptyDir: {{}}
  containers:
  - name: writer
    image: {REPO}:writer
    volumeMounts:
    - name: shared
      mountPath: /shared
  - name: reader
    image: {REPO}:reader
    volumeMounts:
    - name: shared
      mountPath: /shared
"#
    )
}

impl Env {
    /// `veil policy generate` for the pod: the annotated YAML's
    /// `cc_init_data` value (as deployed) and the init-data file.
    fn generate(&self, name: &str) -> (String, PathBuf) {
        let d = self.dir.path().join(format!("policy-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join("pod.yaml"), pod_yaml(name)).unwrap();
        ok(
            Command::new(&self.veil)
                .args(["policy", "generate", "--image-dir"])
                .arg(&self.layout)
                .arg(d.join("pod.yaml"))
                .arg("-o")
                .arg(d.join("out.yaml"))
                .arg("--init-data")
                .arg(d.join("init.toml"))
                .args(["--kbs-url", &self.kbs.url()])
                .args(["--secret", "k=kbs:///default/secret/k"])
                .output()
                .unwrap(),
            "veil policy generate",
        );
        let out = std::fs::read_to_string(d.join("out.yaml")).unwrap();
        let value = out
            .lines()
            .find_map(|l| {
                l.trim()
                    .strip_prefix(INIT_DATA_ANNOTATION)
                    .and_then(|r| r.strip_prefix(':'))
            })
            .unwrap_or_else(|| panic!("no {INIT_DATA_ANNOTATION} in {out}"))
            .trim()
            .trim_matches(|c| c == '\'' || c == '"')
            .to_string();
        (value, d.join("init.toml"))
    }

    /// The KBS releases `default/secret/k` only to this init-data's digest.
    fn bind_secret_to(&self, init: &Path) {
        let parsed = veil_policy::ParsedInitData::parse(&std::fs::read(init).unwrap()).unwrap();
        let digest = parsed.digest().to_string();
        kbs_admin(
            &self.kbs,
            &[
                "policy",
                "set",
                "--scope",
                "default",
                "--template",
                "init-data-digest",
                "--digest",
                &digest,
            ],
            &[],
        );
    }

    fn pod_config(&self, name: &str, init_data: &str) -> api::PodSandboxConfig {
        let logs = self.dir.path().join("logs").join(name);
        std::fs::create_dir_all(logs.join("writer")).unwrap();
        std::fs::create_dir_all(logs.join("reader")).unwrap();
        cri::pod_config(
            name,
            "default",
            &format!("uid-{name}"),
            &logs,
            BTreeMap::from([(INIT_DATA_ANNOTATION.to_string(), init_data.to_string())]),
        )
    }

    /// The kubelet's emptyDir for pod `name` on the host.
    fn empty_dir(&self, name: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join("kubelet/pods")
            .join(name)
            .join("volumes/kubernetes.io~empty-dir/shared");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn container(&self, pod: &str, name: &str, image: &str) -> api::ContainerConfig {
        cri::container_config(
            name,
            image,
            &format!("{name}/0.log"),
            vec![api::Mount {
                container_path: "/shared".into(),
                host_path: self.empty_dir(pod).display().to_string(),
                ..Default::default()
            }],
        )
    }

    /// Why something failed, with containerd's log (which holds the shims').
    fn explain(&self, what: impl std::fmt::Display) -> String {
        format!(
            "{what}\n--- containerd log:\n{}",
            self.node.containerd().log()
        )
    }

    /// Nothing of any pod is left: the CRI's view, the host's network, veil's
    /// processes, records and layouts.
    fn assert_nothing_left(&self) {
        assert!(
            wait_for("the pods' leftovers to go", 30, || self
                .node
                .leftovers()
                .is_empty()),
            "{}",
            self.explain(format!("left: {:?}", self.node.leftovers()))
        );
        let data = self.data.display().to_string();
        assert!(
            wait_for("the sandboxes to exit", 10, || processes_mentioning(&data)
                .is_empty()),
            "processes left: {:?}",
            processes_mentioning(&data)
        );
        for sub in ["run", "shim"] {
            let left = walk(&self.data.join(sub));
            assert!(left.is_empty(), "left under the shim's {sub} dir: {left:?}");
        }
    }
}

fn log_lines(path: &Path) -> Vec<String> {
    // CRI log format: `<RFC 3339 time> <stream> <P|F> <text>`.
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(4, ' ').nth(3).map(str::to_string))
        .collect()
}

/// The CRI's image id (`sha256:` of the config) for `reference`.
fn image_id(cri: &cri::CriClient, reference: &str) -> String {
    let req = api::ImageStatusRequest {
        image: Some(api::ImageSpec {
            image: reference.into(),
            ..Default::default()
        }),
        verbose: false,
    };
    let id = cri
        .images(|mut c| async move { c.image_status(req).await })
        .unwrap()
        .image
        .map(|i| i.id)
        .unwrap_or_default();
    assert!(id.starts_with("sha256:"), "{reference}: image id {id:?}");
    id
}

fn stdout_of(r: &api::ExecSyncResponse) -> String {
    text(&r.stdout)
}

#[test]
fn cri_runs_an_attested_pod_in_a_veil_sandbox() {
    let env = env();
    let cri = env.node.cri();
    let v = cri.version().unwrap();
    assert_eq!(v.runtime_name, "containerd", "{v:?}");
    let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    let (annotation, init) = env.generate("web");
    env.bind_secret_to(&init);
    let pod = env.pod_config("web", &annotation);
    let pod_id = cri
        .run_pod_sandbox(&pod, HANDLER)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("RunPodSandbox: {e}"))));
    let status = cri.pod_sandbox_status(&pod_id).unwrap();
    assert_eq!(status.state, api::PodSandboxState::SandboxReady as i32);
    let pod_ip = status
        .network
        .as_ref()
        .map(|n| n.ip.clone())
        .unwrap_or_default();
    let prefix = env.node.network().subnet().trim_end_matches("0/24");
    assert!(
        pod_ip.starts_with(prefix),
        "the pod's IP {pod_ip:?} comes from the test's CNI subnet {}",
        env.node.network().subnet()
    );

    // The kubelet names the writer's image by its ID (ImageStatus's, the
    // config digest), as it does after pulling; the reader's by reference.
    let mut ids = BTreeMap::new();
    for name in ["writer", "reader"] {
        let reference = format!("{REPO}:{name}");
        let image = if name == "writer" {
            image_id(cri, &reference)
        } else {
            reference
        };
        let c = env.container("web", name, &image);
        let id = cri
            .create_container(&pod_id, &c, &pod)
            .unwrap_or_else(|e| panic!("{}", env.explain(format!("CreateContainer {name}: {e}"))));
        cri.start_container(&id)
            .unwrap_or_else(|e| panic!("{}", env.explain(format!("StartContainer {name}: {e}"))));
        ids.insert(name, id);
    }
    let (writer, reader) = (ids["writer"].clone(), ids["reader"].clone());

    // Logs reach the CRI's log files; the secret arrived from the KBS.
    let wlog = Path::new(&pod.log_directory).join("writer/0.log");
    let fp = &hex::encode(sha2::Sha256::digest(SECRET))[..16];
    assert!(
        wait_for("the writer's log", 30, || log_lines(&wlog)
            .contains(&format!("secret-fp {fp}"))),
        "{}",
        env.explain(format!("writer log: {:?}", log_lines(&wlog)))
    );
    assert_eq!(
        log_lines(&wlog)
            .into_iter()
            .filter(|l| l != "writer-stderr")
            .collect::<Vec<_>>(),
        ["writer up".to_string(), format!("secret-fp {fp}")]
    );
    // Each line with its stream, as `kubectl logs` reads them.
    let raw = std::fs::read_to_string(&wlog).unwrap();
    assert!(
        raw.lines().any(|l| l.ends_with(" stdout F writer up"))
            && raw.lines().any(|l| l.ends_with(" stderr F writer-stderr")),
        "{raw}"
    );
    let rlog = Path::new(&pod.log_directory).join("reader/0.log");
    assert!(
        wait_for("the reader's log", 30, || log_lines(&rlog) == ["reader up"]),
        "reader log: {:?}",
        log_lines(&rlog)
    );

    // What the pod holds on the host, which removing it must undo: its
    // netns, its veth on the test's bridge, its address in IPAM; libcni's
    // cache is in containerd's private /var/lib overlay, not the host's.
    assert_eq!(
        env.node.netns_left().len(),
        1,
        "{:?}",
        env.node.netns_left()
    );
    assert_eq!(env.node.network().attached_links().len(), 1);
    assert_eq!(
        env.node.network().allocated_ips(),
        std::slice::from_ref(&pod_ip)
    );
    assert!(
        env.node.containerd().dir().join("var-lib/cni").is_dir(),
        "libcni's cache is in the overlay's upper dir"
    );

    // ExecSync the policy allows: the emptyDir is shared, so is the netns.
    let r = cri
        .exec_sync(&reader, &["/bin/cat", "/shared/msg"], 30)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("ExecSync: {e}"))));
    assert_eq!((r.exit_code, stdout_of(&r).as_str()), (0, "from-writer\n"));
    let r = cri
        .exec_sync(&reader, &["/bin/sh", "-c", "exit 7"], 30)
        .unwrap();
    assert_eq!(r.exit_code, 7, "an exec's exit status reaches the kubelet");
    let r = cri
        .exec_sync(
            &reader,
            &["/bin/sh", "-c", "nc 127.0.0.1 7777 </dev/null"],
            30,
        )
        .unwrap();
    assert_eq!(
        (r.exit_code, stdout_of(&r).trim()),
        (0, "pong"),
        "the reader reaches the writer on the pod's loopback: {}",
        text(&r.stderr)
    );
    for id in [&writer, &reader] {
        let r = cri
            .exec_sync(id, &["/bin/cat", "/proc/net/fib_trie"], 30)
            .unwrap();
        assert!(
            stdout_of(&r).contains(&pod_ip),
            "both containers have the pod's address {pod_ip}: {}",
            stdout_of(&r)
        );
    }
    // The emptyDir's data stays in the sandbox: the kubelet's dir is empty.
    assert_eq!(walk(&env.empty_dir("web")), Vec::<PathBuf>::new());

    // ExecSync the policy does not allow: refused with its reason.
    let err = cri
        .exec_sync(&reader, &["/bin/cat", "/etc/shadow"], 30)
        .expect_err("an exec the policy does not list must be refused");
    let msg = err.message();
    eprintln!("ExecSync: {msg}");
    assert!(
        msg.contains("exec_process") && msg.contains("policy"),
        "the CRI error carries the policy's reason: {msg}"
    );

    // StopPodSandbox / RemovePodSandbox leave nothing.
    for id in [&writer, &reader] {
        cri.stop_container(id, 5).unwrap();
        let s = cri.container_status(id).unwrap();
        assert_eq!(
            s.state,
            api::ContainerState::ContainerExited as i32,
            "{s:?}"
        );
    }
    cri.stop_pod_sandbox(&pod_id).unwrap();
    for id in [&writer, &reader] {
        cri.remove_container(id).unwrap();
    }
    cri.remove_pod_sandbox(&pod_id)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("RemovePodSandbox: {e}"))));
    env.assert_nothing_left();
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        ip_forward,
        "the host's forwarding setting is untouched"
    );
}

/// Must-hold 4: the host alters the pod's init-data annotation after the
/// owner generated it (here: the policy text, so that `kubectl exec` could
/// read /etc/shadow). The sim TEE measures what it is given, the KBS holds
/// a resource policy bound to the original digest, so it refuses the
/// secret: the pod never becomes ready, and the CRI error says why. The
/// same KBS releases to the original init-data; a pod with no init-data
/// annotation at all is refused before anything starts.
#[test]
fn cri_pod_with_altered_init_data_is_refused_by_the_kbs() {
    let env = env();
    let cri = env.node.cri();
    let (annotation, init) = env.generate("web");
    env.bind_secret_to(&init);

    let original = veil_policy::initdata::decode_annotation(&annotation).unwrap();
    let original = String::from_utf8(original).unwrap();
    assert!(original.contains("/shared/msg"), "{original}");
    let altered = original.replacen("/shared/msg", "/etc/shadow", 1);
    let altered_digest = veil_policy::ParsedInitData::parse(altered.as_bytes())
        .expect("the altered init-data is still valid")
        .digest()
        .to_string();
    let altered = veil_policy::initdata::encode_annotation(altered.as_bytes()).unwrap();

    // No annotation at all: refused before anything starts.
    let mut bare = env.pod_config("web", "");
    bare.annotations.clear();
    let err = cri
        .run_pod_sandbox(&bare, HANDLER)
        .expect_err("a pod without init-data must not run");
    assert!(err.message().contains("no init-data"), "{}", err.message());
    for p in cri.list_pod_sandboxes().unwrap() {
        cri.remove_pod_sandbox(&p.id).unwrap();
    }
    env.assert_nothing_left();

    let pod = env.pod_config("web", &altered);
    let err = cri
        .run_pod_sandbox(&pod, HANDLER)
        .expect_err("a pod whose init-data was altered must not run");
    let msg = err.message();
    eprintln!("RunPodSandbox: {msg}");
    assert!(
        msg.contains("PolicyDeny") && msg.contains(&altered_digest),
        "{}",
        env.explain(format!(
            "the CRI error names the KBS's refusal and the altered digest {altered_digest}: {msg}"
        ))
    );
    assert!(
        cri.list_pod_sandboxes()
            .unwrap()
            .iter()
            .all(|p| p.state != api::PodSandboxState::SandboxReady as i32),
        "no pod is ready"
    );
    for p in cri.list_pod_sandboxes().unwrap() {
        cri.remove_pod_sandbox(&p.id).unwrap();
    }
    env.assert_nothing_left();

    // The untouched annotation runs, with the same KBS.
    let pod = env.pod_config("web", &annotation);
    let pod_id = cri
        .run_pod_sandbox(&pod, HANDLER)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("RunPodSandbox: {e}"))));
    cri.stop_pod_sandbox(&pod_id).unwrap();
    cri.remove_pod_sandbox(&pod_id).unwrap();
    env.assert_nothing_left();
}

/// A pod whose policy runs `app:writer` as its container `writer`, asked
/// by the kubelet to create `writer` from another image (one containerd
/// holds): the guest refuses, and StartContainer (where containerd's CRI
/// creates the task) fails with the policy's reason.
#[test]
fn cri_refuses_a_container_image_the_policy_does_not_run() {
    let env = env();
    let cri = env.node.cri();
    let (annotation, init) = env.generate("web");
    env.bind_secret_to(&init);
    let pod = env.pod_config("web", &annotation);
    let pod_id = cri
        .run_pod_sandbox(&pod, HANDLER)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("RunPodSandbox: {e}"))));
    // containerd's CRI creates the task (the shim's Create) at StartContainer.
    let c = env.container("web", "writer", &format!("{REPO}:other"));
    let bad = cri
        .create_container(&pod_id, &c, &pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("CreateContainer: {e}"))));
    let err = cri
        .start_container(&bad)
        .expect_err("an image the policy does not run must be refused");
    let msg = err.message();
    eprintln!("StartContainer: {msg}");
    assert!(
        msg.contains("image digest")
            && msg.contains(r#"does not match the policy for container "writer""#)
            && msg.contains(&format!("{REPO}:other")),
        "{}",
        env.explain(format!("the CRI error carries the policy's reason: {msg}"))
    );
    let s = cri.container_status(&bad).unwrap();
    assert_ne!(
        s.state,
        api::ContainerState::ContainerRunning as i32,
        "{s:?}"
    );
    cri.remove_container(&bad).unwrap();
    // The image the policy names still runs in that pod.
    let c = env.container("web", "writer", &format!("{REPO}:writer"));
    let id = cri
        .create_container(&pod_id, &c, &pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("CreateContainer: {e}"))));
    cri.start_container(&id).unwrap();
    cri.stop_pod_sandbox(&pod_id).unwrap();
    cri.remove_pod_sandbox(&pod_id).unwrap();
    env.assert_nothing_left();
}
