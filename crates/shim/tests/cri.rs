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
/// The VM handler: one QEMU VM per pod, simulated TEE.
const VM_HANDLER: &str = "veil-vm-sim";
const REPO: &str = "registry.test/veil-cri/app";
const PAUSE: &str = "registry.test/veil-cri/pause:1";
const SECRET: &[u8] = b"cri-secret-for-the-pod";
/// The shared emptyDir's `sizeLimit` (a VM pod's scratch disk grows by it).
const SHARED_SIZE_LIMIT: &str = "64Mi";
const REGISTRY_USER: &str = "kubelet-not";
const REGISTRY_PASSWORD: &str = "guest-pull-secret";
/// What a pod writes into its encrypted volume (never on the host in plaintext).
const MARKER: &str = "veil-pvc-marker-5f1d3c";

/// The writer serves "pong" on the pod's loopback (port 7777) once it has
/// written to the emptyDir; the reader sleeps.
const WRITER_CMD: &str = "echo writer up; echo writer-stderr >&2; echo from-writer > /shared/msg; \
    echo secret-fp $(sha256sum /run/veil/secrets/k | cut -c1-16); \
    exec nc -ll -p 7777 -e /bin/pong";
const READER_CMD: &str = "echo reader up; exec sleep 600";

/// Dropped in field order: the node (pods removed through the CRI,
/// containerd stopped, the bridge deleted), then the registry and the KBS,
/// then the files.
struct Env {
    node: CriNode,
    registry: Option<veil_testkit::registry::DockerRegistry>,
    kbs: DevKbs,
    veil: PathBuf,
    layout: PathBuf,
    /// The pod's images' repository (`…/veil-cri/app`).
    repo: String,
    /// `veil policy generate --settings` (the registry's CA and credentials).
    policy_settings: Option<PathBuf>,
    /// The veil volume the pod's reader mounts at /data (a claim), if any.
    volume: Option<String>,
    data: PathBuf,
    dir: tempfile::TempDir,
}

fn env() -> Env {
    env_for(HANDLER, "", false)
}

/// A node whose runtime handler `handler` has the shim.toml settings
/// `settings` (beyond its dirs and agent). With `registry`, the pod's images
/// are also in a TLS registry with Basic auth on the host side of the pods'
/// bridge, for a guest to pull: its CA and a `kbs:///` URI of its
/// credentials (stored in the KBS) go into the generated init-data.
fn env_for(handler: &str, settings: &str, registry: bool) -> Env {
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

    // The CRI's sandbox (pause) image.
    let layout = dir.path().join("layout");
    let l = OciLayout::create(&layout).unwrap();
    busybox_image(&l, dir.path(), PAUSE, "exec sleep 600", &[]);

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

    // containerd 1.6's CRI neither annotates the runtime handler nor
    // honours `runtime_path`: as `veil node install` sets it up, every
    // handler but `veil` has the runtime type `io.containerd.<handler>.v2`,
    // so containerd runs the shim through a link on its PATH named after
    // the handler, and the shim knows its handler by that name.
    let shim_dir = if handler == HANDLER {
        bin
    } else {
        let links = dir.path().join("bin");
        std::fs::create_dir_all(&links).unwrap();
        std::os::unix::fs::symlink(&shim, links.join(format!("containerd-shim-{handler}-v2")))
            .unwrap();
        links
    };
    let config = dir.path().join("shim.toml");
    let node = CriNode::start(CriOptions {
        shim_dir,
        env: vec![
            ("VEIL_SHIM_CONFIG".into(), config.display().to_string()),
            ("VEIL_SHIM_LOG".into(), "debug".into()),
        ],
        handlers: vec![CriHandler {
            name: handler.into(),
            runtime_type: veil_runtime::node::runtime_type_of(handler),
            runtime_path: None,
        }],
        sandbox_image: (layout.clone(), PAUSE.into()),
    });

    let (registry, repo, policy_settings) = if registry {
        let (reg, settings) = registry_for_guests(&node, &kbs, &veil, dir.path());
        let repo = reg.reference("veil-cri/app");
        (Some(reg), repo, Some(settings))
    } else {
        (None, REPO.to_string(), None)
    };
    // The images the kubelet would have pulled: the pod's two, and one its
    // policy does not run.
    let pong = [("/bin/pong", "#!/bin/sh\necho pong\n", 0o755)];
    busybox_image(&l, dir.path(), &format!("{repo}:writer"), WRITER_CMD, &pong);
    busybox_image(&l, dir.path(), &format!("{repo}:reader"), READER_CMD, &[]);
    busybox_image(&l, dir.path(), &format!("{repo}:other"), "echo other", &[]);
    if let Some(reg) = &registry {
        let auth = std::fs::read(dir.path().join("registry/auth.json")).unwrap();
        for tag in ["writer", "reader"] {
            let r = veil_image::registry::parse_reference(&format!("{repo}:{tag}")).unwrap();
            let creds =
                veil_image::registry::Credentials::from_auth_json(&auth, r.domain()).unwrap();
            let conn = veil_image::registry::Connection {
                ca_pem: Some(std::fs::read(dir.path().join("registry/ca.pem")).unwrap()),
                ..Default::default()
            };
            veil_image::registry::Registry::connect(&r, creds, &conn)
                .unwrap()
                .push(&l, Some(&format!("{repo}:{tag}")))
                .unwrap_or_else(|e| panic!("pushing {repo}:{tag} to {}: {e}", reg.addr()));
        }
    }

    // The shims read it when containerd starts them; it names containerd's
    // root, which the testkit picks.
    std::fs::write(
        &config,
        format!(
            "[handlers.{handler}]\ncontainerd_root = {:?}\ndata_dir = {:?}\nagent = {:?}\n{settings}",
            node.containerd().root().display().to_string(),
            data.display().to_string(),
            veil_testkit::veil_agent().display().to_string()
        ),
    )
    .unwrap();
    node.import(&layout);
    Env {
        node,
        registry,
        kbs,
        veil,
        layout,
        repo,
        policy_settings,
        volume: None,
        data,
        dir,
    }
}

/// A TLS registry with Basic auth on the host's address on the pods'
/// bridge (its certificate names that address), the pods' guests' way to
/// their images; its CA and the docker `auth.json` with the credentials go
/// to `<work>/registry/{ca.pem,auth.json}`, the credentials into the KBS as
/// `default/registry/auth`. Returns it and the `veil policy generate`
/// settings that put the CA and the credentials' `kbs:///` URI into the
/// init-data.
fn registry_for_guests(
    node: &CriNode,
    kbs: &DevKbs,
    veil: &Path,
    work: &Path,
) -> (veil_testkit::registry::DockerRegistry, PathBuf) {
    use base64::Engine as _;
    let ip = node.network().add_host_address();
    let d = work.join("registry");
    let (ca, cert, key) = veil_testkit::registry::tls_keygen(veil, &d, &[&ip]);
    let line = veil_testkit::registry::htpasswd_line(REGISTRY_USER, REGISTRY_PASSWORD);
    let reg = veil_testkit::registry::DockerRegistry::start_tls_on(&ip, Some(&line), &cert, &key);
    let auth = d.join("auth.json");
    let b64 = base64::engine::general_purpose::STANDARD
        .encode(format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"));
    std::fs::write(&auth, reg.auth_json(&b64)).unwrap();
    kbs_admin(kbs, &["resource", "put", "default/registry/auth"], &[&auth]);
    let settings = d.join("policy-settings.toml");
    std::fs::write(
        &settings,
        format!(
            "[image]\nregistry_credentials_uri = \"kbs:///default/registry/auth\"\nextra_root_certificates = [{:?}]\n",
            std::fs::read_to_string(&ca).unwrap()
        ),
    )
    .unwrap();
    (reg, settings)
}

/// `veil kbs ARGS… FILES… --insecure-http` against `kbs`.
fn kbs_admin(kbs: &DevKbs, args: &[&str], files: &[&Path]) {
    let mut c = kbs.client();
    c.arg("kbs").args(args).args(files).arg("--insecure-http");
    ok(c.output().unwrap(), &format!("veil kbs {args:?}"));
}

/// The pod YAML an owner writes: two containers sharing an emptyDir, the
/// commands `kubectl exec` may run; with `claim`, the reader also mounts
/// that persistentVolumeClaim (a veil volume) at /data and may write and
/// read a marker there.
fn pod_yaml(name: &str, repo: &str, claim: Option<&str>) -> String {
    let (data_execs, data_volume, data_mount) = match claim {
        Some(c) => (
            format!(
                r#",["/bin/sh","-c","echo {MARKER} > /data/marker && sync"],["/bin/cat","/data/marker"]"#
            ),
            format!("\n  - name: data\n    persistentVolumeClaim:\n      claimName: {c}"),
            "\n    - name: data\n      mountPath: /data".to_string(),
        ),
        None => Default::default(),
    };
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  namespace: default
  annotations:
    policy.veil.dev/exec.reader: '[["/bin/sh","-c","exit 7"],["/bin/cat","/shared/msg"],["/bin/sh","-c","nc 127.0.0.1 7777 </dev/null"],["/bin/cat","/proc/net/fib_trie"]{data_execs}]'
    policy.veil.dev/exec.writer: '[["/bin/cat","/proc/net/fib_trie"]]'
spec:
  volumes:
  - name: shared
    emptyDir:
      sizeLimit: {SHARED_SIZE_LIMIT}{data_volume}
  containers:
  - name: writer
    image: {repo}:writer
    volumeMounts:
    - name: shared
      mountPath: /shared
  - name: reader
    image: {repo}:reader
    volumeMounts:
    - name: shared
      mountPath: /shared{data_mount}
"#
    )
}

impl Env {
    /// `veil policy generate` for the pod: the annotated YAML's
    /// `cc_init_data` value (as deployed) and the init-data file.
    fn generate(&self, name: &str) -> (String, PathBuf) {
        let d = self.dir.path().join(format!("policy-{name}"));
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(
            d.join("pod.yaml"),
            pod_yaml(name, &self.repo, self.volume.as_deref()),
        )
        .unwrap();
        ok(
            Command::new(&self.veil)
                // Claims of veil volumes are pinned from this store.
                .env("VEIL_DATA_DIR", &self.data)
                .args(["policy", "generate", "--image-dir"])
                .arg(&self.layout)
                .arg(d.join("pod.yaml"))
                .arg("-o")
                .arg(d.join("out.yaml"))
                .arg("--init-data")
                .arg(d.join("init.toml"))
                .args(["--kbs-url", &self.kbs.url()])
                .args(["--secret", "k=kbs:///default/secret/k"])
                .args(
                    self.policy_settings
                        .iter()
                        .flat_map(|p| [PathBuf::from("--settings"), p.clone()]),
                )
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

    /// The kubelet's mount of pod `name`'s claim on the host (what a CSI
    /// driver or a local PV gives it).
    fn claim_dir(&self, name: &str) -> PathBuf {
        let p = self
            .dir
            .path()
            .join("kubelet/pods")
            .join(name)
            .join("volumes/kubernetes.io~csi/pvc-data/mount");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn container(&self, pod: &str, name: &str, image: &str) -> api::ContainerConfig {
        let mut mounts = vec![api::Mount {
            container_path: "/shared".into(),
            host_path: self.empty_dir(pod).display().to_string(),
            ..Default::default()
        }];
        if self.volume.is_some() && name == "reader" {
            mounts.push(api::Mount {
                container_path: "/data".into(),
                host_path: self.claim_dir(pod).display().to_string(),
                ..Default::default()
            });
        }
        cri::container_config(name, image, &format!("{name}/0.log"), mounts)
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

/// A running pod of the flow the kubelet drives: its ids and address.
struct Pod {
    config: api::PodSandboxConfig,
    id: String,
    ip: String,
    writer: String,
    reader: String,
}

impl Env {
    /// RunPodSandbox (init-data from `veil policy generate`, the KBS's secret
    /// bound to its digest) → CreateContainer ×2 (the writer's image named
    /// by its ID, as after a pull; the reader's by reference) →
    /// StartContainer, under `handler`; the pod is ready with an address
    /// from the test's CNI subnet.
    fn run_pod(&self, handler: &str) -> Pod {
        let cri = self.node.cri();
        let (annotation, init) = self.generate("web");
        self.bind_secret_to(&init);
        let config = self.pod_config("web", &annotation);
        let id = cri
            .run_pod_sandbox(&config, handler)
            .unwrap_or_else(|e| panic!("{}", self.explain(format!("RunPodSandbox: {e}"))));
        let status = cri.pod_sandbox_status(&id).unwrap();
        assert_eq!(status.state, api::PodSandboxState::SandboxReady as i32);
        let ip = status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .unwrap_or_default();
        let prefix = self.node.network().subnet().trim_end_matches("0/24");
        assert!(
            ip.starts_with(prefix),
            "the pod's IP {ip:?} comes from the test's CNI subnet {}",
            self.node.network().subnet()
        );
        let mut ids = BTreeMap::new();
        for name in ["writer", "reader"] {
            let reference = format!("{}:{name}", self.repo);
            let image = if name == "writer" {
                image_id(cri, &reference)
            } else {
                reference
            };
            let c = self.container("web", name, &image);
            let cid = cri.create_container(&id, &c, &config).unwrap_or_else(|e| {
                panic!("{}", self.explain(format!("CreateContainer {name}: {e}")))
            });
            cri.start_container(&cid).unwrap_or_else(|e| {
                panic!("{}", self.explain(format!("StartContainer {name}: {e}")))
            });
            ids.insert(name, cid);
        }
        Pod {
            config,
            id,
            ip,
            writer: ids["writer"].clone(),
            reader: ids["reader"].clone(),
        }
    }

    /// The containers' output is in the CRI's log files, each line with its
    /// stream; the writer printed the digest of the secret the KBS released.
    fn check_logs(&self, pod: &Pod) {
        let wlog = Path::new(&pod.config.log_directory).join("writer/0.log");
        let fp = &hex::encode(sha2::Sha256::digest(SECRET))[..16];
        assert!(
            wait_for("the writer's log", 60, || log_lines(&wlog)
                .contains(&format!("secret-fp {fp}"))),
            "{}",
            self.explain(format!("writer log: {:?}", log_lines(&wlog)))
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
        let rlog = Path::new(&pod.config.log_directory).join("reader/0.log");
        assert!(
            wait_for("the reader's log", 60, || log_lines(&rlog) == ["reader up"]),
            "reader log: {:?}",
            log_lines(&rlog)
        );
    }

    /// ExecSync as the policy allows and refuses: the containers share the
    /// emptyDir and the pod's netns (loopback, and the pod's address on
    /// both); an exec's exit status reaches the kubelet; an exec the policy
    /// does not list fails with its reason.
    fn check_execs(&self, pod: &Pod) {
        let cri = self.node.cri();
        let r = cri
            .exec_sync(&pod.reader, &["/bin/cat", "/shared/msg"], 60)
            .unwrap_or_else(|e| panic!("{}", self.explain(format!("ExecSync: {e}"))));
        assert_eq!((r.exit_code, stdout_of(&r).as_str()), (0, "from-writer\n"));
        let r = cri
            .exec_sync(&pod.reader, &["/bin/sh", "-c", "exit 7"], 60)
            .unwrap();
        assert_eq!(r.exit_code, 7, "an exec's exit status reaches the kubelet");
        let r = cri
            .exec_sync(
                &pod.reader,
                &["/bin/sh", "-c", "nc 127.0.0.1 7777 </dev/null"],
                60,
            )
            .unwrap();
        assert_eq!(
            (r.exit_code, stdout_of(&r).trim()),
            (0, "pong"),
            "the reader reaches the writer on the pod's loopback: {}",
            text(&r.stderr)
        );
        for id in [&pod.writer, &pod.reader] {
            let r = cri
                .exec_sync(id, &["/bin/cat", "/proc/net/fib_trie"], 60)
                .unwrap();
            assert!(
                stdout_of(&r).contains(&pod.ip),
                "both containers have the pod's address {}: {}",
                pod.ip,
                stdout_of(&r)
            );
        }
        // The emptyDir's data stays in the sandbox: the kubelet's dir is empty.
        assert_eq!(walk(&self.empty_dir("web")), Vec::<PathBuf>::new());
        let err = cri
            .exec_sync(&pod.reader, &["/bin/cat", "/etc/shadow"], 60)
            .expect_err("an exec the policy does not list must be refused");
        let msg = err.message();
        eprintln!("ExecSync: {msg}");
        assert!(
            msg.contains("exec_process") && msg.contains("policy"),
            "the CRI error carries the policy's reason: {msg}"
        );
    }

    /// StopContainer, StopPodSandbox, RemoveContainer, RemovePodSandbox
    /// leave nothing.
    fn remove_pod(&self, pod: &Pod) {
        let cri = self.node.cri();
        for id in [&pod.writer, &pod.reader] {
            cri.stop_container(id, 5).unwrap();
            let s = cri.container_status(id).unwrap();
            assert_eq!(
                s.state,
                api::ContainerState::ContainerExited as i32,
                "{s:?}"
            );
        }
        cri.stop_pod_sandbox(&pod.id).unwrap();
        for id in [&pod.writer, &pod.reader] {
            cri.remove_container(id).unwrap();
        }
        cri.remove_pod_sandbox(&pod.id)
            .unwrap_or_else(|e| panic!("{}", self.explain(format!("RemovePodSandbox: {e}"))));
        self.assert_nothing_left();
    }
}

#[test]
fn cri_runs_an_attested_pod_in_a_veil_sandbox() {
    let env = env();
    let cri = env.node.cri();
    let v = cri.version().unwrap();
    assert_eq!(v.runtime_name, "containerd", "{v:?}");
    let ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    let pod = env.run_pod(HANDLER);
    env.check_logs(&pod);

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
        std::slice::from_ref(&pod.ip)
    );
    assert!(
        env.node.containerd().dir().join("var-lib/cni").is_dir(),
        "libcni's cache is in the overlay's upper dir"
    );

    env.check_execs(&pod);
    env.remove_pod(&pod);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        ip_forward,
        "the host's forwarding setting is untouched"
    );
}

/// Must-hold 3: the same flow with runtime handler `veil-vm-sim`, one
/// QEMU VM per pod under TCG with the simulated TEE (no hardware
/// protection: the shim says so), booted once. The guest's NIC is joined
/// to the netns the CRI's CNI made (a tap there, mirrored with tc), so the
/// host side of the CNI bridge reaches the writer's server in the guest at
/// the pod's address; the sim TEE attests to the test's KBS through the
/// relay QEMU runs for a loopback KBS; removing the pod leaves no QEMU,
/// tap, netns, mount, record or sandbox dir.
///
/// And the guest pulls (the handler's `pull = "guest"`, CoCo's model):
/// the images the kubelet pulled into containerd are ignored, no layout is
/// built on the host, and the agent pulls both images by the digests its
/// policy pins from a TLS registry on the CNI bridge, with the CA from
/// init-data and the registry's credentials from the KBS.
#[test]
fn cri_runs_an_attested_pod_in_a_vm_sandbox_under_tcg() {
    let veil = PathBuf::from(env!("CARGO_BIN_EXE_containerd-shim-veil-v2")).with_file_name("veil");
    let guest = veil_testkit::guest::shared(&veil, Path::new(env!("CARGO_TARGET_TMPDIR")));
    let mut env = env_for(
        VM_HANDLER,
        &format!(
            "sandbox = \"vm\"\ntee = \"sim\"\naccel = \"tcg\"\nkernel = {:?}\ninitrd = {:?}\npull = \"guest\"\n",
            guest.kernel().display().to_string(),
            guest.initrd().display().to_string()
        ),
        true,
    );
    // A veil volume on the node, in the shim's data dir (where `veil volume
    // create` as root puts it), its key in the test's KBS under the scope
    // the pod's resource policy covers; the pod's reader claims it.
    let out = ok(
        env.kbs
            .client()
            .args(["volume", "create", "db", "--size", "64M", "--insecure-http"])
            .args(["--key-path", "kbs:///default/volume/db", "--kbs"])
            .arg(env.kbs.url())
            .env("VEIL_DATA_DIR", &env.data)
            .output()
            .unwrap(),
        "veil volume create db",
    );
    assert!(text(&out.stderr).contains("volume db created"));
    env.volume = Some("db".into());
    let volume = env.data.join("volumes/db.img");
    let registry = env.registry.as_ref().unwrap().addr().to_string();
    assert!(
        env.repo.starts_with(&registry),
        "the pod's images are the registry's: {}",
        env.repo
    );
    let pod = env.run_pod(VM_HANDLER);
    let log = env.node.containerd().log();
    assert!(
        log.contains("simulated TEE") && log.contains("VM sandbox (QEMU, tcg)"),
        "the shim says the pod runs in a TCG VM with the simulated TEE:\n{log}"
    );
    let data = env.data.display().to_string();
    assert!(
        processes_mentioning(&data)
            .iter()
            .any(|p| p.contains("qemu-system")),
        "one QEMU per pod: {:?}",
        processes_mentioning(&data)
    );
    // The encrypted scratch disk holds the pod's emptyDirs: the default
    // size plus the shared emptyDir's sizeLimit.
    let scratch: Vec<PathBuf> = walk(&env.data.join("run"))
        .into_iter()
        .filter(|f| f.ends_with(format!("sandbox/{}", veil_runtime::vm::SCRATCH_FILE)))
        .collect();
    assert_eq!(scratch.len(), 1, "one scratch disk: {scratch:?}");
    assert_eq!(
        std::fs::metadata(&scratch[0]).unwrap().len(),
        veil_runtime::vm::DEFAULT_SCRATCH_BYTES + (64 << 20),
        "{SHARED_SIZE_LIMIT} more than the default"
    );
    // The host built no layout (and so no layout disk): the guest pulled.
    let shim_files = walk(&env.data.join("shim"));
    assert!(
        shim_files
            .iter()
            .all(|f| !f.to_string_lossy().contains("layout")),
        "no image layout on the host: {shim_files:?}"
    );
    env.check_logs(&pod);

    // The pod netns the CRI made holds the VM's tap, mirrored to CNI's eth0.
    let netns = env.node.netns_left();
    assert_eq!(netns.len(), 1, "{netns:?}");
    let links = text(
        &ok(
            // The netns is mounted in containerd's private mount namespace.
            Command::new("nsenter")
                .arg(format!(
                    "--mount=/proc/{}/ns/mnt",
                    env.node.containerd().pid().unwrap()
                ))
                .arg("nsenter")
                .arg(format!("--net={}", netns[0].display()))
                .args(["ip", "-o", "link", "show"])
                .output()
                .unwrap(),
            "ip link in the pod netns",
        )
        .stdout,
    );
    assert!(links.contains("tap0_veil"), "{links}");
    // The host side of the CNI bridge reaches the writer's server in the
    // guest at the pod's address.
    let mut pong = String::new();
    assert!(
        wait_for("the writer's server from the bridge", 60, || {
            pong.clear();
            std::net::TcpStream::connect((pod.ip.as_str(), 7777))
                .and_then(|mut s| std::io::Read::read_to_string(&mut s, &mut pong))
                .is_ok()
                && pong.trim() == "pong"
        }),
        "{}",
        env.explain(format!("the host -> {}:7777 got {pong:?}", pod.ip))
    );

    env.check_execs(&pod);

    // The reader writes into the encrypted volume; the kubelet's mount of
    // the claim on the host is not what it wrote to.
    let cri = env.node.cri();
    let write = format!("echo {MARKER} > /data/marker && sync");
    let r = cri
        .exec_sync(&pod.reader, &["/bin/sh", "-c", &write], 60)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("ExecSync: {e}"))));
    assert_eq!(r.exit_code, 0, "{}", text(&r.stderr));
    let r = cri
        .exec_sync(&pod.reader, &["/bin/cat", "/data/marker"], 60)
        .unwrap();
    assert_eq!(stdout_of(&r), format!("{MARKER}\n"));
    assert_eq!(walk(&env.claim_dir("web")), Vec::<PathBuf>::new());
    assert!(!contains(
        &std::fs::read(&volume).unwrap(),
        MARKER.as_bytes()
    ));

    // A second pod claiming the volume while the first runs is refused
    // before its VM starts, naming the volume and the pod that holds it.
    let (annotation, _) = env.generate("web2");
    let second = env.pod_config("web2", &annotation);
    let err = cri
        .run_pod_sandbox(&second, VM_HANDLER)
        .expect_err("a volume attached to a running pod must not be attached twice");
    let msg = err.message();
    eprintln!("RunPodSandbox (second pod): {msg}");
    assert!(
        msg.contains(&format!("volume file {}", volume.display()))
            && msg.contains("attached to another running sandbox")
            && msg.contains("(web)"),
        "{}",
        env.explain(msg)
    );
    for p in cri.list_pod_sandboxes().unwrap() {
        if p.metadata.as_ref().is_some_and(|m| m.name == "web2") {
            cri.remove_pod_sandbox(&p.id).unwrap();
        }
    }
    let qemus = processes_mentioning(&env.data.display().to_string())
        .into_iter()
        .filter(|p| p.contains("qemu-system"))
        .count();
    assert_eq!(qemus, 1, "the refused pod started no VM");

    env.remove_pod(&pod);
    // The guest formatted the volume with the UUID the policy pins; the
    // host's file holds no plaintext after the VM is gone either.
    let inspect = ok(
        Command::new(&env.veil)
            .args(["volume", "inspect", "db", "--json"])
            .env("VEIL_DATA_DIR", &env.data)
            .output()
            .unwrap(),
        "veil volume inspect",
    );
    let rec: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(rec["formatted"], true, "{rec}");
    assert_eq!(rec["header"]["uuid"], rec["volume"]["uuid"], "{rec}");
    assert!(!contains(
        &std::fs::read(&volume).unwrap(),
        MARKER.as_bytes()
    ));
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
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
    let c = env.container("web", "writer", &format!("{}:other", env.repo));
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
            && msg.contains(&format!("{}:other", env.repo)),
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
    let c = env.container("web", "writer", &format!("{}:writer", env.repo));
    let id = cri
        .create_container(&pod_id, &c, &pod)
        .unwrap_or_else(|e| panic!("{}", env.explain(format!("CreateContainer: {e}"))));
    cri.start_container(&id).unwrap();
    cri.stop_pod_sandbox(&pod_id).unwrap();
    cri.remove_pod_sandbox(&pod_id).unwrap();
    env.assert_nothing_left();
}
