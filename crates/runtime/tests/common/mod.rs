//! Shared helpers: the real `veil-agent` binary, a busybox test image, and
//! policies generated from pod YAML with `veil-policy`.

#![allow(dead_code)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use veil_image::OciLayout;
use veil_image::builder::ImageBuilder;
use veil_image::spec::{Compression, ContainerConfig};
use veil_policy::generate::{LayoutResolver, generate};
use veil_policy::settings::Settings;
use veil_runtime::{ProcessSandbox, SandboxConfig, SimPlatform};

/// The agent binary the tests run.
pub use veil_testkit::veil_agent as agent_binary;

/// A busybox image (sh, cat, echo, hostname, sleep) tagged `tag` in `layout`.
pub fn busybox_image(layout: &OciLayout, work: &Path, tag: &str, cmd: &str) -> String {
    let root = work.join(format!("rootfs-{}", tag.replace(':', "_")));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "hostname", "sleep", "ls", "id", "wc"] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(applet));
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    let mut b = ImageBuilder::new(layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![cmd.into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/".into()),
        user: Some("0:0".into()),
        ..Default::default()
    });
    b.add_layer_dir(&root, Compression::Gzip).unwrap();
    b.finish(tag).unwrap().digest.to_string()
}

/// Init-data for a pod YAML whose images come from `layout`.
pub fn init_data_for(
    pod_yaml: &str,
    layout: &Path,
    kbs_url: &str,
) -> (Vec<u8>, veil_policy::PolicyData) {
    let resolver = LayoutResolver::open(layout).unwrap();
    let mut settings = Settings::default();
    settings.kbs.url = kbs_url.into();
    let g = generate(&[pod_yaml], &resolver, &settings).unwrap();
    let w = &g.workloads[0];
    (w.init_data_toml.clone().into_bytes(), w.policy.clone())
}

/// A pod with one container `app` running `image`.
pub fn pod(name: &str, image: &str, annotations: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: default\n  annotations:\n    x: \"y\"\n{annotations}spec:\n  containers:\n  - name: app\n    image: {image}\n"
    )
}

/// Everything a test sandbox needs.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub layout: OciLayout,
    pub platform: Arc<SimPlatform>,
}

pub fn env() -> Env {
    assert!(
        nix::unistd::geteuid().is_root(),
        "these tests run containers and need root (CI runs as root)"
    );
    let dir = tempfile::tempdir().unwrap();
    let layout = OciLayout::create(dir.path().join("layout")).unwrap();
    let platform = Arc::new(SimPlatform::load_or_create(&dir.path().join("sim")).unwrap());
    Env {
        dir,
        layout,
        platform,
    }
}

impl Env {
    pub fn config(&self, id: &str, init_data: Vec<u8>) -> SandboxConfig {
        SandboxConfig {
            id: id.into(),
            agent_binary: agent_binary(),
            dir: self.dir.path().join(format!("sb-{id}")),
            log_path: self.dir.path().join(format!("agent-{id}.log")),
            init_data,
            handover_init_data: None,
            oci_layout: Some(self.layout.root().to_path_buf()),
            debug: false,
            log_filter: "info".into(),
            ready_timeout: Duration::from_secs(60),
            pod_netns: None,
        }
    }

    pub fn launch(&self, cfg: &SandboxConfig) -> ProcessSandbox {
        ProcessSandbox::launch(&self.platform, cfg).unwrap_or_else(|e| panic!("launch: {e}"))
    }
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if e.file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
            .is_none()
        {
            continue;
        }
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(needle) {
                out.push(format!("{}: {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// Mounts (in this mount namespace) under `dir`.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let d = dir.to_string_lossy().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&d))
        .map(str::to_string)
        .collect()
}
