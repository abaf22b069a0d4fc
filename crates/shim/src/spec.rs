//! The parts of a bundle's OCI runtime spec (`config.json`, written by
//! containerd) the shim uses. The spec is the host's request: the agent
//! checks every field of it against the policy.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

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
    Ok(ContainerSpec {
        process: raw.process.unwrap_or_default(),
        hostname: raw.hostname,
        annotations: raw.annotations,
        netns,
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

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = parse(&bytes);
            let _ = parse_process(&bytes);
        }
    }
}
