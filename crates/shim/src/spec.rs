//! The parts of a bundle's OCI runtime spec (`config.json`, written by
//! containerd) the shim uses. The spec is the host's request: the agent
//! checks every field of it against the policy.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use veil_agent_api::resources::{DEFAULT_CPU_PERIOD, Resources, weight_of_shares};

/// Largest `config.json` read.
pub const MAX_SPEC_BYTES: u64 = 4 * 1024 * 1024;

/// Spec errors.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("reading the OCI spec {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the OCI spec {path} is larger than {MAX_SPEC_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("the OCI spec {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
}

#[derive(Debug, Deserialize, Default)]
struct RawSpec {
    #[serde(default)]
    process: Option<RawProcess>,
    #[serde(default)]
    hostname: Option<String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    linux: Option<RawLinux>,
}

/// An OCI `process` (also the spec of an exec).
#[derive(Debug, Deserialize, Default, Clone, PartialEq, Eq)]
pub struct RawProcess {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: String,
    #[serde(default)]
    pub user: RawUser,
}

/// An OCI `process.user`.
#[derive(Debug, Deserialize, Default, Clone, PartialEq, Eq)]
pub struct RawUser {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default, rename = "additionalGids")]
    pub additional_gids: Vec<u32>,
}

#[derive(Debug, Deserialize, Default)]
struct RawLinux {
    #[serde(default)]
    namespaces: Vec<RawNamespace>,
    #[serde(default)]
    resources: Option<RawResources>,
}

/// `linux.resources`: what the kubelet derives from the pod's
/// `resources` (memory and CPU limits, CPU shares from requests, pids).
#[derive(Debug, Deserialize, Default)]
struct RawResources {
    #[serde(default)]
    memory: Option<RawMemory>,
    #[serde(default)]
    cpu: Option<RawCpu>,
    #[serde(default)]
    pids: Option<RawPids>,
}

#[derive(Debug, Deserialize, Default)]
struct RawMemory {
    #[serde(default)]
    limit: Option<i64>,
}

#[derive(Debug, Deserialize, Default)]
struct RawCpu {
    #[serde(default)]
    shares: Option<u64>,
    #[serde(default)]
    quota: Option<i64>,
    #[serde(default)]
    period: Option<u64>,
}

#[derive(Debug, Deserialize, Default)]
struct RawPids {
    #[serde(default)]
    limit: Option<i64>,
}

impl RawResources {
    /// The limits to ask the agent for: a non-positive value (-1, 0) means
    /// no limit, as for runc; shares become a cgroup v2 weight as runc
    /// converts them. The agent checks the ranges, the policy the bounds.
    fn to_request(&self) -> Option<Resources> {
        let positive = |v: Option<i64>| v.filter(|v| *v > 0).map(|v| v as u64);
        let cpu = self.cpu.as_ref();
        let quota = positive(cpu.and_then(|c| c.quota));
        let r = Resources {
            memory_max: positive(self.memory.as_ref().and_then(|m| m.limit)),
            cpu_quota: quota,
            cpu_period: quota.map(|_| {
                cpu.and_then(|c| c.period)
                    .filter(|p| *p > 0)
                    .unwrap_or(DEFAULT_CPU_PERIOD)
            }),
            cpu_weight: cpu
                .and_then(|c| c.shares)
                .filter(|s| *s > 0)
                .map(weight_of_shares),
            pids_max: positive(self.pids.as_ref().and_then(|p| p.limit)),
        };
        (!r.is_empty()).then_some(r)
    }
}

#[derive(Debug, Deserialize)]
struct RawNamespace {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    path: Option<String>,
}

/// What the shim takes from a container's spec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContainerSpec {
    pub process: RawProcess,
    pub hostname: Option<String>,
    pub annotations: BTreeMap<String, String>,
    /// `linux.namespaces[type=network].path`: the pod's netns the CRI/CNI
    /// made, which the sandbox joins.
    pub netns: Option<PathBuf>,
    /// `linux.resources` as the limits to ask the agent for.
    pub resources: Option<Resources>,
}

/// Read `<bundle>/config.json`.
pub fn read_bundle(bundle: &Path) -> Result<ContainerSpec, SpecError> {
    let path = bundle.join("config.json");
    let read = |source| SpecError::Read {
        path: path.clone(),
        source,
    };
    let mut buf = Vec::new();
    std::fs::File::open(&path)
        .map_err(read)?
        .take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(read)?;
    if buf.len() as u64 > MAX_SPEC_BYTES {
        return Err(SpecError::TooLarge { path });
    }
    parse(&buf).map_err(|reason| SpecError::Invalid { path, reason })
}

/// Parse spec JSON (bounded by the caller).
pub fn parse(bytes: &[u8]) -> Result<ContainerSpec, String> {
    let raw: RawSpec = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let netns = raw
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.iter().find(|n| n.kind == "network"))
        .and_then(|n| n.path.clone())
        .filter(|p| !p.is_empty())
        .map(PathBuf::from);
    let resources = raw
        .linux
        .as_ref()
        .and_then(|l| l.resources.as_ref())
        .and_then(RawResources::to_request);
    Ok(ContainerSpec {
        process: raw.process.unwrap_or_default(),
        hostname: raw.hostname,
        annotations: raw.annotations,
        netns,
        resources,
    })
}

/// Parse an exec's process spec (the `Any` value of `ExecProcessRequest.spec`).
pub fn parse_process(bytes: &[u8]) -> Result<RawProcess, String> {
    if bytes.len() as u64 > MAX_SPEC_BYTES {
        return Err(format!("process spec larger than {MAX_SPEC_BYTES} bytes"));
    }
    serde_json::from_slice(bytes).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_what_containerd_writes() {
        let s = parse(br#"{"ociVersion":"1.0.2","process":{"terminal":false,"user":{"uid":1000,"gid":1000,"additionalGids":[10]},
            "args":["/bin/sh","-c","echo hi"],"env":["PATH=/bin"],"cwd":"/"},"root":{"path":"rootfs"},"hostname":"h",
            "annotations":{"io.kubernetes.cri.container-type":"sandbox"},
            "linux":{"namespaces":[{"type":"pid"},{"type":"network","path":"/var/run/netns/cni-1"}]}}"#)
        .unwrap();
        assert_eq!(s.process.args, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(s.process.user.additional_gids, [10]);
        assert_eq!(s.netns, Some(PathBuf::from("/var/run/netns/cni-1")));
        assert_eq!(s.annotations.len(), 1);
        let s = parse(br#"{"linux":{"namespaces":[{"type":"network"}]}}"#).unwrap();
        assert_eq!(
            s.netns, None,
            "a new netns (no path) is not a pod netns to join"
        );
    }

    #[test]
    fn linux_resources_as_the_kubelet_writes_them() {
        // A container with limits {cpu: 500m, memory: 64Mi} and requests {cpu: 250m}.
        let s = parse(br#"{"linux":{"resources":{"devices":[{"allow":false,"access":"rwm"}],
            "memory":{"limit":67108864,"swap":67108864},"cpu":{"shares":256,"quota":50000,"period":100000},
            "pids":{"limit":-1}}}}"#)
        .unwrap();
        let r = s.resources.unwrap();
        assert_eq!(r.memory_max, Some(64 << 20));
        assert_eq!((r.cpu_quota, r.cpu_period), (Some(50_000), Some(100_000)));
        assert_eq!(r.cpu_millis(), Some(500));
        assert_eq!(r.cpu_weight, Some(10));
        assert_eq!(r.pids_max, None, "-1 is no limit");
        // BestEffort: shares 2, no quota, no memory limit.
        let s = parse(br#"{"linux":{"resources":{"cpu":{"shares":2,"quota":-1}}}}"#).unwrap();
        assert_eq!(
            s.resources.unwrap(),
            Resources {
                cpu_weight: Some(1),
                ..Default::default()
            }
        );
        let s = parse(br#"{"linux":{"resources":{"memory":{"limit":0}}}}"#).unwrap();
        assert_eq!(s.resources, None);
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes);
            let _ = parse_process(&bytes);
        }
    }
}
