//! A Kubernetes node without a kubelet: a private containerd with its CRI
//! plugin set up for test pods, and a blocking CRI v1 client over its
//! socket that plays the kubelet.
//!
//! Nothing is pulled and nothing outside the temp dirs changes:
//! - the CRI's sandbox (pause) image is one the caller built and
//!   [`CriNode::start`] imports into the CRI's namespace (`k8s.io`);
//! - CNI: a conflist of Debian's `bridge` plugin (a bridge with a unique
//!   name, no address, no masquerade, so no host route, iptables rule or
//!   `ip_forward` change) and `host-local` IPAM on a private subnet whose
//!   state (`dataDir`) is in the temp dir; network namespaces are mounted
//!   under containerd's state dir (`netns_mounts_under_state_dir`), and
//!   libcni's cache (`/var/lib/cni`) lands in the temp dir through the
//!   private mount namespace containerd runs in
//!   ([`ContainerdOptions::private_mounts`]);
//! - on drop: every pod still there is stopped and removed through the CRI,
//!   containerd is stopped by PID with its shims, and the bridge is deleted.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use hyper_util::rt::TokioIo;
pub use k8s_cri::v1 as api;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tonic::Status;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::{Containerd, ContainerdOptions};

/// The containerd namespace the CRI plugin keeps its pods and images in.
pub const CRI_NAMESPACE: &str = "k8s.io";

/// The annotations containerd passes from the pod to the runtime
/// (`pod_annotations`), as `veil node install` configures them.
pub const POD_ANNOTATIONS: &[&str] = &[
    "io.katacontainers.config.hypervisor.cc_init_data",
    "io.katacontainers.config.agent.policy",
    "io.veil.*",
];

/// A CRI runtime handler (a RuntimeClass's `handler`).
#[derive(Debug, Clone)]
pub struct CriHandler {
    /// The handler's name (`veil`, `veil-vm-sim`…).
    pub name: String,
    /// `runtime_type` (`io.containerd.veil.v2`).
    pub runtime_type: String,
    /// `runtime_path`: the shim binary to run, when not the one the type names
    /// (containerd 1.6 does not annotate the handler; `veil node install`
    /// links `containerd-shim-<handler>-v2` for every handler but `veil`).
    pub runtime_path: Option<PathBuf>,
}

/// What [`CriNode::start`] sets up.
#[derive(Debug, Clone)]
pub struct CriOptions {
    /// Directory holding the shim(s), first on containerd's `PATH`.
    pub shim_dir: PathBuf,
    /// Extra environment for containerd and the shims it starts.
    pub env: Vec<(String, String)>,
    pub handlers: Vec<CriHandler>,
    /// An OCI image layout holding the sandbox (pause) image, and that
    /// image's reference in it (`org.opencontainers.image.ref.name`, a full
    /// reference such as `registry.test/pause:1`).
    pub sandbox_image: (PathBuf, String),
}

/// A pod network for the CRI: the CNI config dir, the IPAM state, a
/// unique bridge; the bridge is deleted on drop.
pub struct PodNetwork {
    dir: tempfile::TempDir,
    bridge: String,
    subnet: String,
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl PodNetwork {
    fn new() -> Self {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // IFNAMSIZ: at most 15 bytes; pid ≤ 2^22 is ≤ 6 hex digits.
        let bridge = format!("vcri{pid:x}{n:x}");
        let subnet = format!("10.{}.{}.0/24", 200 + n % 50, pid % 256);
        let dir = tempfile::Builder::new()
            .prefix("vcri")
            .tempdir()
            .expect("temp dir for the pod network");
        let conf = dir.path().join("net.d");
        std::fs::create_dir_all(&conf).unwrap();
        let conflist = format!(
            r#"{{
  "cniVersion": "1.0.0",
  "name": "{bridge}",
  "plugins": [
    {{
      "type": "bridge",
      "bridge": "{bridge}",
      "isGateway": false,
      "ipMasq": false,
      "hairpinMode": false,
      "ipam": {{
        "type": "host-local",
        "dataDir": "{ipam}",
        "ranges": [[{{"subnet": "{subnet}"}}]]
      }}
    }}
  ]
}}
"#,
            ipam = dir.path().join("ipam").display()
        );
        std::fs::write(conf.join("10-veil-test.conflist"), conflist).unwrap();
        PodNetwork {
            dir,
            bridge,
            subnet,
        }
    }

    /// The CNI config dir (`cni.conf_dir`).
    pub fn conf_dir(&self) -> PathBuf {
        self.dir.path().join("net.d")
    }

    /// The bridge the pods' veths are attached to.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The pods' subnet (`10.x.y.0/24`).
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// Give the host an address on the pods' bridge (the subnet's `.254`),
    /// creating the bridge now if CNI has not yet (its `bridge` plugin then
    /// uses it as it is): the host side of the pod network, from which a
    /// test reaches pods and serves them. Gone with the bridge on drop.
    pub fn add_host_address(&self) -> String {
        let ip = format!("{}254", self.subnet.trim_end_matches("0/24"));
        if !Path::new("/sys/class/net").join(&self.bridge).exists() {
            crate::run_ok(Command::new("ip").args(["link", "add", &self.bridge, "type", "bridge"]));
        }
        crate::run_ok(Command::new("ip").args([
            "addr",
            "add",
            &format!("{ip}/24"),
            "dev",
            &self.bridge,
        ]));
        crate::run_ok(Command::new("ip").args(["link", "set", &self.bridge, "up"]));
        ip
    }

    /// Links still attached to the bridge (pods' host-side veths).
    pub fn attached_links(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["-o", "link", "show", "master", &self.bridge])
            .output();
        match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split(": ").nth(1))
                .map(|s| s.split('@').next().unwrap_or(s).to_string())
                .collect(),
            _ => Vec::new(),
        }
    }

    /// Addresses host-local still holds (one file per allocated IP).
    pub fn allocated_ips(&self) -> Vec<String> {
        let dir = self.dir.path().join("ipam").join(&self.bridge);
        let Ok(rd) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        rd.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect()
    }
}

impl Drop for PodNetwork {
    fn drop(&mut self) {
        if std::path::Path::new("/sys/class/net")
            .join(&self.bridge)
            .exists()
        {
            let _ = Command::new("ip")
                .args(["link", "del", &self.bridge])
                .status();
        }
    }
}

/// A blocking CRI v1 client (runtime and image services) over a unix socket.
pub struct CriClient {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl CriClient {
    /// Connect to the CRI socket (containerd's gRPC socket).
    pub fn connect(socket: &Path) -> Result<Self, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("tokio runtime: {e}"))?;
        let path = socket.to_path_buf();
        // The URI is not used: every connection goes to the socket.
        let channel = rt
            .block_on(
                Endpoint::from_static("http://[::]:0").connect_with_connector(tower::service_fn(
                    move |_: Uri| {
                        let path = path.clone();
                        async move {
                            Ok::<_, std::io::Error>(TokioIo::new(
                                tokio::net::UnixStream::connect(path).await?,
                            ))
                        }
                    },
                )),
            )
            .map_err(|e| format!("connecting to the CRI at {}: {e}", socket.display()))?;
        Ok(CriClient {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Any RuntimeService call: `cri.runtime(|mut c| async move { c.version(req).await })`.
    pub fn runtime<T, F>(
        &self,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.rt
            .block_on(f(self.runtime.clone()))
            .map(tonic::Response::into_inner)
    }

    /// Any ImageService call.
    pub fn images<T, F>(
        &self,
        f: impl FnOnce(ImageServiceClient<Channel>) -> F,
    ) -> Result<T, Status>
    where
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        self.rt
            .block_on(f(self.images.clone()))
            .map(tonic::Response::into_inner)
    }

    /// `Version`: the runtime's name and version.
    pub fn version(&self) -> Result<api::VersionResponse, Status> {
        self.runtime(|mut c| async move { c.version(api::VersionRequest::default()).await })
    }

    /// `RunPodSandbox` with `handler`; the pod sandbox id.
    pub fn run_pod_sandbox(
        &self,
        config: &api::PodSandboxConfig,
        handler: &str,
    ) -> Result<String, Status> {
        let req = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.runtime(|mut c| async move { c.run_pod_sandbox(req).await })
            .map(|r| r.pod_sandbox_id)
    }

    /// `PodSandboxStatus` (not verbose).
    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatus, Status> {
        let req = api::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose: false,
        };
        self.runtime(|mut c| async move { c.pod_sandbox_status(req).await })
            .and_then(|r| r.status.ok_or_else(|| Status::not_found("no status")))
    }

    /// `StopPodSandbox`.
    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = api::StopPodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime(|mut c| async move { c.stop_pod_sandbox(req).await })
            .map(drop)
    }

    /// `RemovePodSandbox`.
    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = api::RemovePodSandboxRequest {
            pod_sandbox_id: id.into(),
        };
        self.runtime(|mut c| async move { c.remove_pod_sandbox(req).await })
            .map(drop)
    }

    /// `ListPodSandbox` (all).
    pub fn list_pod_sandboxes(&self) -> Result<Vec<api::PodSandbox>, Status> {
        self.runtime(|mut c| async move {
            c.list_pod_sandbox(api::ListPodSandboxRequest::default())
                .await
        })
        .map(|r| r.items)
    }

    /// `CreateContainer` in pod `pod_id`; the container id.
    pub fn create_container(
        &self,
        pod_id: &str,
        config: &api::ContainerConfig,
        pod_config: &api::PodSandboxConfig,
    ) -> Result<String, Status> {
        let req = api::CreateContainerRequest {
            pod_sandbox_id: pod_id.into(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.runtime(|mut c| async move { c.create_container(req).await })
            .map(|r| r.container_id)
    }

    /// `StartContainer`.
    pub fn start_container(&self, id: &str) -> Result<(), Status> {
        let req = api::StartContainerRequest {
            container_id: id.into(),
        };
        self.runtime(|mut c| async move { c.start_container(req).await })
            .map(drop)
    }

    /// `StopContainer` with a grace period in seconds.
    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), Status> {
        let req = api::StopContainerRequest {
            container_id: id.into(),
            timeout,
        };
        self.runtime(|mut c| async move { c.stop_container(req).await })
            .map(drop)
    }

    /// `RemoveContainer`.
    pub fn remove_container(&self, id: &str) -> Result<(), Status> {
        let req = api::RemoveContainerRequest {
            container_id: id.into(),
        };
        self.runtime(|mut c| async move { c.remove_container(req).await })
            .map(drop)
    }

    /// `ContainerStatus` (not verbose).
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatus, Status> {
        let req = api::ContainerStatusRequest {
            container_id: id.into(),
            verbose: false,
        };
        self.runtime(|mut c| async move { c.container_status(req).await })
            .and_then(|r| r.status.ok_or_else(|| Status::not_found("no status")))
    }

    /// `ListContainers` (all pods).
    pub fn list_containers(&self) -> Result<Vec<api::Container>, Status> {
        self.runtime(|mut c| async move {
            c.list_containers(api::ListContainersRequest::default())
                .await
        })
        .map(|r| r.containers)
    }

    /// `ExecSync` of `cmd` in container `id`, with a timeout in seconds.
    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout: i64,
    ) -> Result<api::ExecSyncResponse, Status> {
        let req = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout,
        };
        self.runtime(|mut c| async move { c.exec_sync(req).await })
    }

    /// `ListImages`: every image reference (repo tags) the CRI knows.
    pub fn image_tags(&self) -> Result<Vec<String>, Status> {
        self.images(|mut c| async move { c.list_images(api::ListImagesRequest::default()).await })
            .map(|r| r.images.into_iter().flat_map(|i| i.repo_tags).collect())
    }
}

/// A pod's config as a kubelet sends it: metadata, the pod's log dir,
/// annotations (the RuntimeClass's `pod_annotations` reach the runtime).
pub fn pod_config(
    name: &str,
    namespace: &str,
    uid: &str,
    log_directory: &Path,
    annotations: BTreeMap<String, String>,
) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: uid.into(),
            namespace: namespace.into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_directory.display().to_string(),
        annotations: annotations.into_iter().collect(),
        linux: Some(api::LinuxPodSandboxConfig::default()),
        ..Default::default()
    }
}

/// A container's config as a kubelet sends it: the image, its log path
/// (relative to the pod's log dir), mounts.
pub fn container_config(
    name: &str,
    image: &str,
    log_path: &str,
    mounts: Vec<api::Mount>,
) -> api::ContainerConfig {
    api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: name.into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.into(),
            ..Default::default()
        }),
        log_path: log_path.into(),
        mounts,
        linux: Some(api::LinuxContainerConfig::default()),
        ..Default::default()
    }
}

/// A private containerd with its CRI plugin, a pod network and a CRI
/// client: a node a test drives as the kubelet would.
pub struct CriNode {
    client: CriClient,
    // Dropped in this order: containerd (with its shims), then the network.
    containerd: Containerd,
    net: PodNetwork,
    sandbox_image: String,
}

impl CriNode {
    /// Start containerd with the CRI plugin, import the sandbox image and
    /// connect. Panics, naming what to install, when a prerequisite is
    /// missing.
    pub fn start(opts: CriOptions) -> Self {
        for (what, path) in [
            ("containerd", "/usr/bin/containerd"),
            ("ctr", "/usr/bin/ctr"),
            ("the CNI bridge plugin", "/usr/lib/cni/bridge"),
            ("the CNI host-local plugin", "/usr/lib/cni/host-local"),
            ("the CNI loopback plugin", "/usr/lib/cni/loopback"),
            ("ip (iproute2)", "/usr/bin/ip"),
            ("unshare (util-linux)", "/usr/bin/unshare"),
        ] {
            assert!(
                Path::new(path).exists(),
                "{what} ({path}) is missing: run scripts/install-deps.sh (Debian packages containerd, containernetworking-plugins, iproute2, util-linux)"
            );
        }
        let net = PodNetwork::new();
        let sandbox_image = opts.sandbox_image.1.clone();
        let cri = cri_config(&opts, &net);
        let containerd = Containerd::start(ContainerdOptions {
            shim_dir: Some(opts.shim_dir.clone()),
            env: opts.env.clone(),
            cri: Some(cri),
            private_mounts: true,
        });
        let client = CriClient::connect(containerd.address())
            .unwrap_or_else(|e| panic!("{e}\n--- containerd log:\n{}", containerd.log()));
        // The CRI plugin answers once loaded; a config it refuses leaves
        // the service unknown (its reason is in containerd's log).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while let Err(e) = client.version() {
            assert!(
                std::time::Instant::now() < deadline && e.code() != tonic::Code::Unimplemented,
                "the CRI does not answer ({e}):\n--- containerd log:\n{}",
                containerd.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let node = CriNode {
            client,
            containerd,
            net,
            sandbox_image,
        };
        node.import(&opts.sandbox_image.0);
        node
    }

    /// The CRI client.
    pub fn cri(&self) -> &CriClient {
        &self.client
    }

    /// The containerd under the CRI.
    pub fn containerd(&self) -> &Containerd {
        &self.containerd
    }

    /// The pods' network.
    pub fn network(&self) -> &PodNetwork {
        &self.net
    }

    /// The sandbox (pause) image reference.
    pub fn sandbox_image(&self) -> &str {
        &self.sandbox_image
    }

    /// `ctr` in the CRI's namespace (`k8s.io`).
    pub fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.containerd.address())
            .arg("--namespace")
            .arg(CRI_NAMESPACE)
            .stdin(std::process::Stdio::null());
        c
    }

    /// Import every image of an OCI layout into the CRI's namespace
    /// (`ctr image import`, which unpacks them), as images the kubelet has
    /// pulled.
    pub fn import(&self, layout: &Path) {
        let tar = self.containerd.dir().join(format!(
            "import-{}.tar",
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        crate::run_ok(
            Command::new("tar")
                .arg("-C")
                .arg(layout)
                .arg("-cf")
                .arg(&tar)
                .arg("."),
        );
        crate::run_ok(self.ctr().args(["image", "import"]).arg(&tar));
        let _ = std::fs::remove_file(&tar);
    }

    /// The CRI's network namespaces still mounted (under containerd's state dir).
    pub fn netns_left(&self) -> Vec<PathBuf> {
        let dir = self
            .containerd
            .state()
            .join("io.containerd.grpc.v1.cri/netns");
        std::fs::read_dir(dir)
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default()
    }

    /// What a removed pod may not leave: pods and containers the CRI
    /// lists, shims, network namespaces, veths on the bridge, IPs held by
    /// IPAM, mounts under containerd's dirs. Empty when clean.
    pub fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        match self.client.list_pod_sandboxes() {
            Ok(p) => left.extend(p.iter().map(|p| format!("pod sandbox {}", p.id))),
            Err(e) => left.push(format!("ListPodSandbox: {e}")),
        }
        match self.client.list_containers() {
            Ok(c) => left.extend(c.iter().map(|c| format!("container {}", c.id))),
            Err(e) => left.push(format!("ListContainers: {e}")),
        }
        left.extend(
            self.containerd
                .shim_pids()
                .iter()
                .map(|p| format!("shim process {p}")),
        );
        left.extend(
            self.netns_left()
                .iter()
                .map(|p| format!("netns {}", p.display())),
        );
        left.extend(
            self.net
                .attached_links()
                .iter()
                .map(|l| format!("link {l} on bridge {}", self.net.bridge)),
        );
        left.extend(
            self.net
                .allocated_ips()
                .iter()
                .map(|ip| format!("IP {ip} still allocated")),
        );
        left.extend(
            self.containerd
                .mounts()
                .iter()
                .map(|m| format!("mount {}", m.display())),
        );
        left
    }
}

impl Drop for CriNode {
    fn drop(&mut self) {
        // As the kubelet would on the way out: every pod stopped and removed.
        if let Ok(pods) = self.client.list_pod_sandboxes() {
            for p in pods {
                let _ = self.client.stop_pod_sandbox(&p.id);
                let _ = self.client.remove_pod_sandbox(&p.id);
            }
        }
    }
}

/// The CRI plugin's part of containerd's config.
fn cri_config(opts: &CriOptions, net: &PodNetwork) -> String {
    let q = |s: &str| format!("{s:?}");
    let cri = r#"plugins."io.containerd.grpc.v1.cri""#;
    let annotations: Vec<String> = POD_ANNOTATIONS.iter().map(|a| q(a)).collect();
    let mut toml = format!(
        "[{cri}]\n\
         sandbox_image = {image}\n\
         disable_apparmor = true\n\
         netns_mounts_under_state_dir = true\n\
         stream_server_address = \"127.0.0.1\"\n\
         stream_server_port = \"0\"\n\
         [{cri}.cni]\n\
         bin_dir = \"/usr/lib/cni\"\n\
         conf_dir = {conf}\n\
         max_conf_num = 1\n\
         [{cri}.containerd]\n\
         snapshotter = \"overlayfs\"\n\
         default_runtime_name = {default}\n",
        image = q(&opts.sandbox_image.1),
        conf = q(&net.conf_dir().display().to_string()),
        default = q(opts.handlers.first().map_or("", |h| h.name.as_str())),
    );
    for h in &opts.handlers {
        toml.push_str(&format!(
            "[{cri}.containerd.runtimes.{name}]\n\
             runtime_type = {ty}\n\
             pod_annotations = [{ann}]\n",
            name = q(&h.name),
            ty = q(&h.runtime_type),
            ann = annotations.join(", "),
        ));
        if let Some(p) = &h.runtime_path {
            toml.push_str(&format!("runtime_path = {}\n", q(&p.display().to_string())));
        }
    }
    toml
}
