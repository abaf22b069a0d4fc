//! Pod volumes of `veil run`: `--config FILE` (ConfigMaps and Secrets for
//! a `--pod`'s configMap/secret/projected volumes and env), `-v NAME:/path`
//! (a sandbox-local scratch volume) and `--mount type=bind,…` (a host
//! directory, only when asked for explicitly, with a warning).
//!
//! The content of configMap, secret, downwardAPI and projected volumes is
//! computed here from the same YAML the policy was generated from and
//! handed to the agent with `create_sandbox`; the agent refuses any file
//! whose SHA-256 the policy does not pin. The bytes stay in this process's
//! memory (zeroized when dropped) and in the sandbox: in the process
//! sandbox that is the run's private directory (0700, like the data dir),
//! in a VM the guest's memory.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use veil_agent_api::VolumeContent;
use veil_policy::PolicyData;
use veil_policy::model::VolumeKind;

/// `--config`, `-v`, `--mount`, `--allow-host-path`.
#[derive(Args, Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeArgs {
    /// A YAML file with ConfigMap and Secret documents for the pod's
    /// volumes and env (repeatable; with --pod). They may also be further
    /// documents of the pod YAML itself.
    #[arg(long = "config", value_name = "FILE", requires = "pod")]
    pub config: Vec<PathBuf>,
    /// Volume NAME mounted at /path (repeatable): the encrypted persistent
    /// veil volume NAME if there is one (`veil volume create`; VM sandbox
    /// only), else a scratch volume made empty inside the sandbox (an
    /// emptyDir). Host directories need --mount.
    #[arg(short = 'v', long = "volume", value_name = "NAME:/path[:ro]")]
    pub volume: Vec<String>,
    /// A host directory in the container:
    /// `type=bind,source=HOST,target=/path[,readonly]` (repeatable). The
    /// generated policy pins it; the host can read and change it.
    #[arg(
        long = "mount",
        value_name = "type=bind,source=HOST,target=/path[,readonly]"
    )]
    pub mount: Vec<String>,
    /// Admit the pod's hostPath volumes in the generated policy (with
    /// --pod; the host can read and change them).
    #[arg(long, requires = "pod")]
    pub allow_host_path: bool,
}

/// One `-v` or `--mount` of a single-image run, as a pod volume.
#[derive(Debug, PartialEq, Eq)]
struct PodMount {
    name: String,
    target: String,
    read_only: bool,
    host_path: Option<PathBuf>,
}

fn check_target(flag: &str, spec: &str, target: &str) -> Result<()> {
    if !target.starts_with('/') || target.split('/').any(|c| c == "." || c == "..") {
        bail!(
            "{flag} {spec:?}: the container path {target:?} must be absolute, without '.' or '..'"
        );
    }
    Ok(())
}

/// `-v NAME:/path[:ro|rw]`.
fn parse_volume(spec: &str) -> Result<PodMount> {
    let parts: Vec<&str> = spec.split(':').collect();
    let (name, target, mode) = match parts.as_slice() {
        [n, t] => (*n, *t, "rw"),
        [n, t, m] => (*n, *t, *m),
        _ => bail!("-v {spec:?}: expected NAME:/path or NAME:/path:ro"),
    };
    if name.starts_with('/') || name.starts_with('.') || name.contains('/') {
        bail!(
            "-v {spec:?}: {name:?} is a host path; veil does not bind host directories with -v (the host could read and change them). Use -v NAME:{target} for a scratch volume inside the sandbox, or, if the host may see the data, --mount type=bind,source={name},target={target}"
        );
    }
    veil_policy::model::check_volume_name(name).map_err(|e| anyhow!("-v {spec:?}: {e}"))?;
    check_target("-v", spec, target)?;
    let read_only = match mode {
        "ro" => true,
        "rw" => false,
        other => bail!("-v {spec:?}: mode {other:?} is not ro or rw"),
    };
    Ok(PodMount {
        name: name.into(),
        target: target.into(),
        read_only,
        host_path: None,
    })
}

/// `--mount type=bind,source=HOST,target=/path[,readonly]`.
fn parse_mount(spec: &str, index: usize) -> Result<PodMount> {
    let (mut ty, mut source, mut target, mut read_only) = (None, None, None, false);
    for kv in spec.split(',') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        match k {
            "type" => ty = Some(v),
            "source" | "src" => source = Some(v),
            "target" | "destination" | "dst" => target = Some(v),
            "readonly" | "ro" if v.is_empty() || v == "true" || v == "1" => read_only = true,
            "readonly" | "ro" if v == "false" || v == "0" => read_only = false,
            other => bail!(
                "--mount {spec:?}: {other:?} is not supported (type=bind,source=HOST,target=/path[,readonly])"
            ),
        }
    }
    match ty {
        Some("bind") => {}
        Some(t) => bail!(
            "--mount {spec:?}: type={t} is not supported; use type=bind, or -v NAME:/path for a scratch volume inside the sandbox"
        ),
        None => bail!("--mount {spec:?}: type=bind is required"),
    }
    let source = source.ok_or_else(|| anyhow!("--mount {spec:?}: source=HOST is required"))?;
    let target = target.ok_or_else(|| anyhow!("--mount {spec:?}: target=/path is required"))?;
    check_target("--mount", spec, target)?;
    let host = std::fs::canonicalize(source)
        .with_context(|| format!("--mount {spec:?}: source {source:?}"))?;
    if !host.is_dir() {
        bail!(
            "--mount {spec:?}: source {} is not a directory (only directories can be bound)",
            host.display()
        );
    }
    Ok(PodMount {
        name: format!("mount-{index}"),
        target: target.into(),
        read_only,
        host_path: Some(host),
    })
}

impl VolumeArgs {
    /// The texts of the `--config` files.
    pub fn config_texts(&self) -> Result<Vec<String>> {
        self.config
            .iter()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
            .collect()
    }

    fn mounts(&self) -> Result<Vec<PodMount>> {
        let mut out: Vec<PodMount> = self
            .volume
            .iter()
            .map(|v| parse_volume(v))
            .chain(
                self.mount
                    .iter()
                    .enumerate()
                    .map(|(i, m)| parse_mount(m, i)),
            )
            .collect::<Result<_>>()?;
        out.sort_by(|a, b| a.target.cmp(&b.target));
        for w in out.windows(2) {
            if w[0].target == w[1].target {
                bail!("two volumes are mounted at {}", w[0].target);
            }
        }
        Ok(out)
    }

    /// Whether the generated policy admits hostPath volumes.
    pub fn host_paths_allowed(&self) -> bool {
        self.allow_host_path || !self.mount.is_empty()
    }

    /// The container's `volumeMounts` and the pod's `volumes` lines of a
    /// single-image run's generated pod YAML (indented for it).
    pub fn pod_yaml(&self) -> Result<(String, String)> {
        let mounts = self.mounts()?;
        if mounts.is_empty() {
            return Ok((String::new(), String::new()));
        }
        let q = |s: &str| serde_json::Value::String(s.into()).to_string();
        let mut vm = String::from("    volumeMounts:\n");
        let mut vols = String::from("  volumes:\n");
        let mut names: Vec<&str> = Vec::new();
        for m in &mounts {
            vm.push_str(&format!(
                "    - {{name: {}, mountPath: {}, readOnly: {}}}\n",
                q(&m.name),
                q(&m.target),
                m.read_only
            ));
            // One -v NAME may be mounted at several paths: one volume.
            if names.contains(&m.name.as_str()) {
                continue;
            }
            names.push(&m.name);
            match &m.host_path {
                Some(h) => vols.push_str(&format!(
                    "  - name: {}\n    hostPath: {{path: {}}}\n",
                    q(&m.name),
                    q(&h.to_string_lossy())
                )),
                // A veil volume of that name: the encrypted persistent one.
                None if crate::volume::find(&veil_runtime::paths::data_dir(), &m.name)?
                    .is_some() =>
                {
                    vols.push_str(&format!(
                        "  - name: {}\n    persistentVolumeClaim: {{claimName: {}}}\n",
                        q(&m.name),
                        q(&m.name)
                    ))
                }
                None => vols.push_str(&format!("  - name: {}\n    emptyDir: {{}}\n", q(&m.name))),
            }
        }
        Ok((vm, vols))
    }
}

/// The content volumes of the pod in `inputs` (the pod YAML and the
/// `--config` files), as the agent must be handed them.
pub fn contents(inputs: &[&str]) -> Result<Vec<VolumeContent>> {
    let mut settings = veil_policy::Settings::default();
    // Claims of veil volumes are volumes too (they have no content).
    settings.sandbox.encrypted_volumes = crate::volume::known(&veil_runtime::paths::data_dir())?;
    veil_policy::generate::pod_volume_contents(inputs, &settings)
        .map_err(|e| anyhow!("the pod's volumes: {e}"))
}

/// The warning for each hostPath volume the policy admits.
pub fn host_path_warnings(policy: &PolicyData) -> Vec<String> {
    policy
        .sandbox
        .volumes
        .iter()
        .filter(|v| v.kind == VolumeKind::HostPath)
        .map(|v| {
            format!(
                "veil: warning: volume {} binds the host directory {}: the host can read and change everything in it; keep secrets out of it",
                v.name, v.host_path
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_volumes_and_docker_bind_syntax() {
        let m = parse_volume("cache:/var/cache").unwrap();
        assert_eq!(
            (m.name.as_str(), m.target.as_str(), m.read_only),
            ("cache", "/var/cache", false)
        );
        assert!(parse_volume("cache:/c:ro").unwrap().read_only);
        let e = parse_volume("/srv/data:/data").unwrap_err().to_string();
        assert!(
            e.contains("--mount type=bind,source=/srv/data,target=/data"),
            "{e}"
        );
        assert!(parse_volume("Cache:/c").is_err());
        assert!(parse_volume("c:relative").is_err());
        assert!(parse_volume("c:/a/../b").is_err());
    }

    #[test]
    fn bind_mounts_need_type_source_and_target() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().display().to_string();
        let m = parse_mount(&format!("type=bind,source={src},target=/data,readonly"), 0).unwrap();
        assert!(m.read_only);
        assert_eq!(
            m.host_path.as_deref(),
            Some(std::fs::canonicalize(dir.path()).unwrap().as_path())
        );
        assert!(parse_mount(&format!("type=volume,source={src},target=/d"), 0).is_err());
        assert!(parse_mount(&format!("source={src},target=/d"), 0).is_err());
        assert!(parse_mount("type=bind,source=/nonexistent-veil,target=/d", 0).is_err());
        assert!(parse_mount(&format!("type=bind,source={src}"), 0).is_err());
    }
}
