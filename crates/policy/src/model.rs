//! The policy data: what one sandbox (pod) may do.
//!
//! This is the JSON object embedded in `policy.rego` as
//! `policy_data := {...}`. [`PolicyData::canonicalize`] puts every
//! order-insensitive list into a fixed order, so two equivalent policies
//! serialize to the same bytes.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

/// Version of the policy data format (and of the rules that read it).
pub const POLICY_FORMAT_VERSION: u32 = 1;

/// Everything the rules need to decide on a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyData {
    /// [`POLICY_FORMAT_VERSION`].
    pub version: u32,
    /// Sandbox-wide rules.
    pub sandbox: SandboxPolicy,
    /// One entry per container (init containers included), sorted by name.
    pub containers: Vec<ContainerPolicy>,
    /// Environment variables the platform injects (name and value regexes).
    /// They never match a name a container's own rules define.
    pub platform_env: Vec<PlatformEnvRule>,
    /// Mounts every container may have (proc, dev, hosts, …).
    pub default_mounts: Vec<MountRule>,
}

/// Sandbox-wide rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SandboxPolicy {
    /// Anchored regex the pod name must match.
    pub pod_name: String,
    /// Exact pod namespace.
    pub namespace: String,
    /// Whether containers share one PID namespace.
    pub sandbox_pidns: bool,
    /// Kernel modules the host may ask to load.
    pub kernel_modules: Vec<String>,
    /// Anchored regexes of guest paths `copy_file` may write.
    pub copy_file: Vec<String>,
    /// Whether the host may request TEE evidence.
    pub allow_get_evidence: bool,
    /// Whether the host may read container statistics.
    pub allow_stats: bool,
    /// `kind/name` of secrets and config values the host may update (e.g. `secret/db-password`).
    pub update_config: Vec<String>,
    /// Bounds on unpacking images in the guest; unset fields keep the
    /// agent's defaults (see docs/image.md). Omitted when all are unset.
    #[serde(default, skip_serializing_if = "UnpackBounds::is_unset")]
    pub unpack_limits: UnpackBounds,
    /// The pod's volumes, by name: their kind and, for configMap, secret,
    /// downwardAPI and projected volumes, the digest of every file, so the
    /// agent knows what each volume must hold (see docs/policy.md).
    /// Omitted when the pod has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<VolumePolicy>,
    /// Whether the host may ask for `bench_volume` (format a blank disk
    /// the host announced and measure it against a plain one). Only the
    /// policy `veil bench volume` generates for itself sets it; omitted
    /// (false) everywhere else, so no workload's init-data changes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub bench_volume: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// What kind of volume a pod volume is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VolumeKind {
    /// Scratch space shared by the pod's containers, made empty in the guest.
    EmptyDir,
    /// Files whose content the policy pins (configMap, secret, downwardAPI,
    /// projected): handed in by the host, checked against `files`.
    Content,
    /// A directory of the untrusted host, only when the settings allow it.
    HostPath,
    /// A persistent veil volume (`veil volume create`): a disk the host
    /// attaches, opened in the guest with dm-crypt + dm-integrity (LUKS2)
    /// under a key the agent fetches from the KBS (VM sandbox only).
    Encrypted,
}

/// What the policy pins about an encrypted persistent volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptedVolume {
    /// The veil volume's name (`veil volume create NAME`).
    pub volume: String,
    /// The LUKS2 UUID the disk must carry (chosen at `veil volume create`,
    /// written by the guest when it formats the volume on first use).
    pub uuid: String,
    /// `kbs:///repo/type/tag` of the volume key.
    pub key: String,
}

impl EncryptedVolume {
    /// Check the fields' shapes: a volume name, a lowercase hyphenated
    /// UUID, a `kbs:///repo/type/tag` key path.
    pub fn validate(&self) -> Result<(), String> {
        check_volume_name(&self.volume)?;
        if !is_uuid(&self.uuid) {
            return Err(format!(
                "encrypted volume {:?}: uuid {:?} is not a lowercase UUID (8-4-4-4-12 hex digits)",
                self.volume, self.uuid
            ));
        }
        let segs: Vec<&str> = self
            .key
            .strip_prefix("kbs:///")
            .map(|r| r.split('/').collect())
            .unwrap_or_default();
        if segs.len() != 3 || segs.iter().any(|s| s.is_empty()) {
            return Err(format!(
                "encrypted volume {:?}: key {:?} is not kbs:///repo/type/tag",
                self.volume, self.key
            ));
        }
        Ok(())
    }
}

/// A lowercase hyphenated UUID (`8-4-4-4-12` hex digits).
pub fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

/// One pod volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumePolicy {
    /// The volume's name in the pod.
    pub name: String,
    pub kind: VolumeKind,
    /// The Kubernetes volume type it came from (`configMap`, `secret`, …).
    pub source: String,
    /// `emptyDir.medium: Memory`: a tmpfs in the guest.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub memory: bool,
    /// `emptyDir.sizeLimit` in bytes (enforced for `memory` volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_limit: Option<u64>,
    /// `hostPath.path` of a host path volume.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host_path: String,
    /// Every file of a content volume, sorted by path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<VolumeFile>,
    /// The pod's `securityContext.fsGroup`: the agent makes the volume's
    /// files and directories owned by this group (group-readable; emptyDir
    /// directories setgid), as the kubelet does. Not for hostPath volumes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fs_group: Option<u32>,
    /// The disk, UUID and key of an encrypted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<EncryptedVolume>,
}

/// One file of a content volume.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeFile {
    /// Relative path inside the volume (`key`, or `items[].path`).
    pub path: String,
    /// `sha256:<hex>` of the file's bytes.
    pub digest: String,
    /// Permission bits (`defaultMode` or `items[].mode`; 0644 by default).
    pub mode: u32,
}

/// Owner-chosen bounds on what an image may unpack to in the guest
/// (decompression bombs): measured with the policy, so the host cannot
/// raise them. `None` keeps the agent's default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnpackBounds {
    /// Most uncompressed bytes over all layers of one image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_bytes: Option<u64>,
    /// Most tar entries over all layers of one image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_entries: Option<u64>,
    /// Largest uncompressed/compressed ratio of a layer (past the floor).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_ratio: Option<u64>,
    /// Uncompressed bytes a layer may reach before the ratio applies.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_floor_bytes: Option<u64>,
    /// Largest single file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_file_bytes: Option<u64>,
}

impl UnpackBounds {
    /// Whether every bound is unset (the agent's defaults apply).
    pub fn is_unset(&self) -> bool {
        *self == UnpackBounds::default()
    }
}

/// How an environment rule's value is matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The value must be exactly `value`.
    Exact,
    /// The value must match the anchored regex `value`.
    Regex,
}

/// One allowed environment variable of a container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvRule {
    pub name: String,
    pub value: String,
    pub strategy: Strategy,
    /// The variable must be present.
    pub required: bool,
}

/// A platform-injected variable: both name and value are anchored regexes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlatformEnvRule {
    pub name: String,
    pub value: String,
}

/// An allowed mount. `source` is an anchored regex; the rest must match exactly
/// (options as a set).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountRule {
    pub destination: String,
    #[serde(rename = "type")]
    pub fs_type: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The image a container must run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImagePolicy {
    /// The reference as written in the manifest (informational).
    pub reference: String,
    /// The manifest digest the container must run.
    pub digest: String,
}

/// The user a container runs as.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserPolicy {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Allowed capability sets (requests may hold a subset of each).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapabilityPolicy {
    pub bounding: Vec<String>,
    pub effective: Vec<String>,
    pub inheritable: Vec<String>,
    pub permitted: Vec<String>,
    pub ambient: Vec<String>,
}

/// Everything one container may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerPolicy {
    /// Kubernetes container name.
    pub name: String,
    /// An init container.
    pub init: bool,
    pub image: ImagePolicy,
    /// Exact argv.
    pub args: Vec<String>,
    pub env: Vec<EnvRule>,
    pub cwd: String,
    pub user: UserPolicy,
    pub capabilities: CapabilityPolicy,
    pub privileged: bool,
    /// The request must set no_new_privileges.
    pub no_new_privileges: bool,
    /// The request must mount the root filesystem read-only.
    pub read_only_rootfs: bool,
    pub mounts: Vec<MountRule>,
    pub sysctls: BTreeMap<String, String>,
    /// Exact argv of each command `exec_process` may run.
    pub exec: Vec<Vec<String>>,
    /// The host may read the init process's stdout/stderr (logs).
    pub allow_stdio: bool,
    /// The host may write to the init process's stdin (the pod's `stdin: true`).
    pub allow_stdin: bool,
    /// The init process may run on a terminal (the pod's `tty: true`).
    /// Omitted when false, so policies without terminals keep their bytes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_tty: bool,
    /// Signals the host may send.
    pub signals: Vec<u32>,
    /// The ports the container declares (the pod's `ports`), and the host
    /// port each may be published on. Omitted when empty, so policies of
    /// containers without ports keep their bytes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortRule>,
    /// Upper bounds on the container's resource limits (the pod's
    /// `resources.limits`): the host may ask for these or less, never more
    /// and never none. Omitted when the pod sets no limits, so such
    /// policies keep their bytes (and any limit is then allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourcePolicy>,
    /// NVIDIA GPUs the container needs (the pod's
    /// `resources.limits["nvidia.com/gpu"]`): the agent attests the guest's
    /// GPUs to the KBS and gives the container their device nodes only once
    /// the KBS accepted them (docs/gpu.md). Omitted when zero, so policies
    /// without GPUs keep their bytes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub gpus: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// The most a container may be given (`ContainerPolicy::resources`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourcePolicy {
    /// Largest `memory.max`, bytes (`resources.limits.memory`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_max: Option<u64>,
    /// Largest CPU limit, thousandths of a CPU (`resources.limits.cpu`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

/// A declared container port (`containerPort`/`protocol`/`hostPort`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortRule {
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// The only host port it may be published on; 0: it may not be
    /// published at all (the pod declares no `hostPort`).
    pub host_port: u16,
}

fn sort_dedup<T: Ord + Clone>(v: &mut Vec<T>) {
    let set: BTreeSet<T> = v.drain(..).collect();
    v.extend(set);
}

impl PolicyData {
    /// Put every order-insensitive list into its canonical order.
    pub fn canonicalize(&mut self) {
        let s = &mut self.sandbox;
        sort_dedup(&mut s.kernel_modules);
        sort_dedup(&mut s.copy_file);
        sort_dedup(&mut s.update_config);
        for v in &mut s.volumes {
            sort_dedup(&mut v.files);
        }
        s.volumes.sort_by(|a, b| a.name.cmp(&b.name));
        sort_dedup(&mut self.platform_env);
        for m in &mut self.default_mounts {
            sort_dedup(&mut m.options);
        }
        sort_dedup(&mut self.default_mounts);
        for c in &mut self.containers {
            c.canonicalize();
        }
        self.containers.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// The container named `name`.
    pub fn container(&self, name: &str) -> Option<&ContainerPolicy> {
        self.containers.iter().find(|c| c.name == name)
    }

    /// Check internal consistency: version, unique names, regexes that compile.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != POLICY_FORMAT_VERSION {
            return Err(format!(
                "policy data version: expected {POLICY_FORMAT_VERSION}, got {}",
                self.version
            ));
        }
        let mut names = BTreeSet::new();
        for c in &self.containers {
            if !names.insert(c.name.as_str()) {
                return Err(format!("container {:?} appears twice", c.name));
            }
            if !is_digest(&c.image.digest) {
                return Err(format!(
                    "container {:?}: image digest {:?} is not sha256:<64 hex>",
                    c.name, c.image.digest
                ));
            }
            for e in &c.env {
                if e.strategy == Strategy::Regex {
                    check_regex(&format!("container {:?} env {}", c.name, e.name), &e.value)?;
                }
            }
            check_ports(c)?;
            for m in &c.mounts {
                check_regex(
                    &format!("container {:?} mount {}", c.name, m.destination),
                    &m.source,
                )?;
            }
        }
        if let Some(shared) = SharedPort::find(&self.containers) {
            return Err(shared.to_string());
        }
        check_regex("sandbox.pod_name", &self.sandbox.pod_name)?;
        let mut volumes = BTreeSet::new();
        for v in &self.sandbox.volumes {
            if !volumes.insert(v.name.as_str()) {
                return Err(format!("volume {:?} appears twice", v.name));
            }
            check_volume_name(&v.name)?;
            let mut paths = BTreeSet::new();
            for f in &v.files {
                check_volume_path(&v.name, &f.path)?;
                if !paths.insert(f.path.as_str()) {
                    return Err(format!(
                        "volume {:?}: file {:?} appears twice",
                        v.name, f.path
                    ));
                }
                if !is_digest(&f.digest) {
                    return Err(format!(
                        "volume {:?} file {:?}: digest {:?} is not sha256:<64 hex>",
                        v.name, f.path, f.digest
                    ));
                }
                if f.mode > 0o777 {
                    return Err(format!(
                        "volume {:?} file {:?}: mode {:o} is not within 0777",
                        v.name, f.path, f.mode
                    ));
                }
            }
            if v.kind != VolumeKind::Content && !v.files.is_empty() {
                return Err(format!(
                    "volume {:?}: only content volumes list files",
                    v.name
                ));
            }
            match (&v.encrypted, v.kind == VolumeKind::Encrypted) {
                (Some(e), true) => e.validate()?,
                (None, true) => {
                    return Err(format!(
                        "volume {:?}: an encrypted volume needs its uuid and key",
                        v.name
                    ));
                }
                (Some(_), false) => {
                    return Err(format!(
                        "volume {:?}: only encrypted volumes name a uuid and key",
                        v.name
                    ));
                }
                (None, false) => {}
            }
        }
        for r in &self.sandbox.copy_file {
            check_regex("sandbox.copy_file", r)?;
        }
        for r in &self.platform_env {
            check_regex("platform_env name", &r.name)?;
            check_regex("platform_env value", &r.value)?;
        }
        for m in &self.default_mounts {
            check_regex(&format!("default mount {}", m.destination), &m.source)?;
        }
        Ok(())
    }
}

impl ContainerPolicy {
    fn canonicalize(&mut self) {
        sort_dedup(&mut self.env);
        for m in &mut self.mounts {
            sort_dedup(&mut m.options);
        }
        sort_dedup(&mut self.mounts);
        sort_dedup(&mut self.exec);
        sort_dedup(&mut self.signals);
        sort_dedup(&mut self.ports);
        sort_dedup(&mut self.user.additional_gids);
        let c = &mut self.capabilities;
        for set in [
            &mut c.bounding,
            &mut c.effective,
            &mut c.inheritable,
            &mut c.permitted,
            &mut c.ambient,
        ] {
            sort_dedup(set);
        }
    }
}

/// A pod volume name: a DNS label (as Kubernetes requires), so it is one
/// path component in the guest.
pub fn check_volume_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume name {name:?} is not a DNS label (lowercase letters, digits, '-', at most 63)"
        ))
    }
}

/// A file path inside a volume: relative, no `.`/`..`/empty components,
/// no NUL, at most 4096 bytes.
pub fn check_volume_path(volume: &str, path: &str) -> Result<(), String> {
    let ok = !path.is_empty()
        && path.len() <= 4096
        && !path.starts_with('/')
        && !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with(".."));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "volume {volume:?}: file path {path:?} must be relative, without empty, '.' or '..' components (and must not start with '..', which kubelet reserves)"
        ))
    }
}

/// Whether `name` is a sysctl Kubernetes calls namespaced: the container
/// has its own copy (net: the pod's network namespace; IPC; mqueue), so
/// setting it does not change the rest of the guest.
pub fn namespaced_sysctl(name: &str) -> bool {
    let well_formed = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
        && name.split('.').all(|c| !c.is_empty());
    well_formed
        && (name.starts_with("net.")
            || name.starts_with("fs.mqueue.")
            || name.starts_with("kernel.shm")
            || name.starts_with("kernel.msg")
            || name == "kernel.sem")
}

/// A port two containers of one pod both declare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedPort {
    pub port: u16,
    pub protocol: String,
    pub first: String,
    pub second: String,
}

impl SharedPort {
    /// The first port declared by two of `containers`, if any.
    pub fn find(containers: &[ContainerPolicy]) -> Option<SharedPort> {
        let mut owners: BTreeMap<(u16, &str), &str> = BTreeMap::new();
        for c in containers {
            for p in &c.ports {
                if let Some(first) = owners.insert((p.container_port, &p.protocol), &c.name) {
                    return Some(SharedPort {
                        port: p.container_port,
                        protocol: p.protocol.clone(),
                        first: first.into(),
                        second: c.name.clone(),
                    });
                }
            }
        }
        None
    }
}

impl std::fmt::Display for SharedPort {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "containers {:?} and {:?} both declare port {}/{}; the containers of a pod share \
             one network, so a port belongs to one of them",
            self.first, self.second, self.port, self.protocol
        )
    }
}

/// Ports: `tcp`/`udp`, no port 0, and each (port, protocol) once in the
/// whole pod (containers share one network namespace: a port has one owner).
fn check_ports(c: &ContainerPolicy) -> Result<(), String> {
    let mut seen = BTreeSet::new();
    for p in &c.ports {
        if p.protocol != "tcp" && p.protocol != "udp" {
            return Err(format!(
                "container {:?} port {}: protocol {:?} is not tcp or udp",
                c.name, p.container_port, p.protocol
            ));
        }
        if p.container_port == 0 {
            return Err(format!("container {:?}: container port 0", c.name));
        }
        if !seen.insert((p.container_port, p.protocol.as_str())) {
            return Err(format!(
                "container {:?} declares port {}/{} twice",
                c.name, p.container_port, p.protocol
            ));
        }
    }
    Ok(())
}

/// `sha256:` followed by 64 lowercase hex digits.
pub fn is_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// Every regex in the policy must be anchored (`^…$`) and compile.
pub fn check_regex(what: &str, re: &str) -> Result<(), String> {
    if !(re.starts_with('^') && re.ends_with('$')) {
        return Err(format!(
            "{what}: regex {re:?} must be anchored with ^ and $"
        ));
    }
    regex::Regex::new(re)
        .map(|_| ())
        .map_err(|e| format!("{what}: invalid regex {re:?}: {e}"))
}

/// Anchor a user-written regex: `^(?:re)$`.
pub fn anchor(re: &str) -> String {
    format!("^(?:{re})$")
}

/// A regex matching exactly `s`.
pub fn exact_regex(s: &str) -> String {
    format!("^{}$", regex::escape(s))
}
