//! Pod volumes → policy: each volume's kind, and for configMap, secret,
//! downwardAPI and projected volumes the SHA-256 of every file they hold,
//! computed from the ConfigMaps and Secrets given with the pod. The host
//! computes the same files with [`pod_volume_contents`] and hands them to
//! the agent, which refuses any file whose digest the policy does not pin.

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};
use veil_agent_api::{
    MAX_VOLUME_BYTES, MAX_VOLUME_FILES, SecretBytes, VolumeContent, VolumeFileContent,
};
use zeroize::Zeroizing;

use super::GenerateError;
use super::k8s::{References, Workload, field, get_str, metadata_key};
use crate::initdata::INIT_DATA_ANNOTATION;
use crate::model::{
    VolumeFile, VolumeKind, VolumePolicy, check_volume_name, check_volume_path, exact_regex,
};
use crate::settings::Settings;

/// Kubernetes' default file mode of configMap, secret, downwardAPI and projected volumes.
pub const DEFAULT_MODE: u32 = 0o644;

/// The settings flag that lets generated policies admit hostPath volumes.
pub const ALLOW_HOST_PATH_SETTING: &str = "sandbox.allow_host_path";

fn optional(v: &Value) -> bool {
    v.get("optional").and_then(Value::as_bool) == Some(true)
}

/// A file mode from the manifest (`defaultMode`, `items[].mode`): a number
/// of permission bits, 0..=0777 (YAML writes them in decimal, e.g. 420, or
/// octal, 0o644).
fn mode_of(v: Option<&Value>, path: &str, default: u32) -> Result<u32, GenerateError> {
    match v {
        None | Some(Value::Null) => Ok(default),
        Some(x) => x
            .as_u64()
            .filter(|m| *m <= 0o777)
            .map(|m| m as u32)
            .ok_or_else(|| {
                field(
                    path,
                    format!(
                        "{x} is not a file mode 0..=0777 (511); write it in decimal (420 for rw-r--r--) or YAML octal (0o644)"
                    ),
                )
            }),
    }
}

/// A Kubernetes quantity (`64Mi`, `1G`, `1000`) in bytes, rounded up.
pub(crate) fn parse_quantity(q: &str) -> Option<u64> {
    super::resources::quantity_scaled(q.trim(), 0).ok()
}

/// A file of a content volume while it is being assembled.
struct File {
    path: String,
    mode: u32,
    data: Zeroizing<Vec<u8>>,
}

/// Go's `%q` of a string, as kubelet formats label and annotation values.
fn go_quote(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// kubelet's downwardAPI map file: `key="value"` lines sorted by key.
fn format_map(m: &serde_json::Map<String, Value>, skip: &[&str]) -> String {
    let sorted: BTreeMap<&String, &Value> = m
        .iter()
        .filter(|(k, _)| !skip.contains(&k.as_str()))
        .collect();
    sorted
        .into_iter()
        .map(|(k, v)| format!("{k}={}", go_quote(v.as_str().unwrap_or(&v.to_string()))))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Files of a key → bytes source (a ConfigMap's or Secret's data), honouring `items`.
fn keyed_files(
    p: &str,
    what: &str,
    data: Option<&BTreeMap<String, Zeroizing<Vec<u8>>>>,
    src: &Value,
    default_mode: u32,
    out: &mut Vec<File>,
) -> Result<(), GenerateError> {
    let Some(data) = data else {
        if optional(src) {
            return Ok(());
        }
        return Err(field(
            p,
            format!(
                "{what} is not defined in the input; give it in the pod YAML or with --config FILE (or mark the volume optional: true)"
            ),
        ));
    };
    match src.get("items").and_then(Value::as_array) {
        None => {
            for (k, v) in data {
                out.push(File {
                    path: k.clone(),
                    mode: default_mode,
                    data: v.clone(),
                });
            }
        }
        Some(items) => {
            for (i, it) in items.iter().enumerate() {
                let ip = format!("{p}.items[{i}]");
                let key = get_str(it, "key").ok_or_else(|| field(&ip, "no key"))?;
                let path = get_str(it, "path").ok_or_else(|| field(&ip, "no path"))?;
                let mode = mode_of(it.get("mode"), &format!("{ip}.mode"), default_mode)?;
                match data.get(key) {
                    Some(v) => out.push(File {
                        path: path.to_string(),
                        mode,
                        data: v.clone(),
                    }),
                    None if optional(src) => {}
                    None => {
                        return Err(field(ip, format!("key {key:?} is not in {what}")));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Files of a downwardAPI source.
fn downward_files(
    p: &str,
    w: &Workload,
    src: &Value,
    default_mode: u32,
    out: &mut Vec<File>,
) -> Result<(), GenerateError> {
    let items = src.get("items").and_then(Value::as_array);
    for (i, it) in items.into_iter().flatten().enumerate() {
        let ip = format!("{p}.items[{i}]");
        let path = get_str(it, "path").ok_or_else(|| field(&ip, "no path"))?;
        let mode = mode_of(it.get("mode"), &format!("{ip}.mode"), default_mode)?;
        let fp = it
            .get("fieldRef")
            .and_then(|f| get_str(f, "fieldPath"))
            .ok_or_else(|| {
                field(
                    &ip,
                    "only fieldRef items are supported (resourceFieldRef values are not known when the policy is made)",
                )
            })?;
        let empty = serde_json::Map::new();
        let section = |s: &str| {
            w.metadata
                .get(s)
                .and_then(Value::as_object)
                .unwrap_or(&empty)
        };
        let text = match fp {
            "metadata.name" => (w.kind == "Pod" && w.pod_name_re == exact_regex(&w.name))
                .then(|| w.name.clone())
                .ok_or_else(|| {
                field(
                    &ip,
                    format!(
                        "metadata.name of a {} pod is not known when the policy is made (pattern {}); only a Pod's own name can be pinned",
                        w.kind, w.pod_name_re
                    ),
                )
            })?,
            "metadata.namespace" => w.namespace.clone(),
            "metadata.labels" => format_map(section("labels"), &[]),
            "metadata.annotations" => format_map(section("annotations"), &[INIT_DATA_ANNOTATION]),
            other => {
                match metadata_key(other) {
                    Some((sec, k)) => section(sec)
                        .get(k)
                        .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                        .unwrap_or_default(),
                    None => {
                        return Err(field(
                            ip,
                            format!(
                                "fieldRef {other:?} is not supported in a volume (supported: metadata.name, metadata.namespace, metadata.labels, metadata.annotations and single keys of them)"
                            ),
                        ));
                    }
                }
            }
        };
        out.push(File {
            path: path.to_string(),
            mode,
            data: Zeroizing::new(text.into_bytes()),
        });
    }
    Ok(())
}

/// One pod volume: its policy and (for content volumes) its files.
pub(crate) struct PodVolume {
    pub policy: VolumePolicy,
    files: Vec<File>,
}

/// Every volume of the pod. Volumes of types the policy does not model are
/// reported in `unsupported` (their mounts are denied) and left out.
pub(crate) fn pod_volumes(
    w: &Workload,
    refs: &References,
    settings: &Settings,
    unsupported: &mut Vec<String>,
) -> Result<Vec<PodVolume>, GenerateError> {
    let path = format!("{} {} pod spec", w.kind, w.name);
    let mut out: Vec<PodVolume> = Vec::new();
    let Some(list) = w.spec.get("volumes").and_then(Value::as_array) else {
        return Ok(out);
    };
    let fs_group = super::k8s::as_u32(
        w.spec
            .get("securityContext")
            .and_then(|sc| sc.get("fsGroup")),
        &format!("{path}.securityContext.fsGroup"),
    )?;
    let mut total_files = 0usize;
    let mut total_bytes = 0usize;
    for (i, v) in list.iter().enumerate() {
        let p = format!("{path}.volumes[{i}]");
        let name = get_str(v, "name").ok_or_else(|| field(&p, "no name"))?;
        check_volume_name(name).map_err(|e| field(&p, e))?;
        if out.iter().any(|o| o.policy.name == name) {
            return Err(field(p, format!("volume {name:?} defined twice")));
        }
        let kind = v
            .as_object()
            .and_then(|o| o.keys().find(|k| k.as_str() != "name").cloned())
            .unwrap_or_else(|| "emptyDir".into());
        let src = v.get(&kind).cloned().unwrap_or(Value::Null);
        let p = format!("{p}.{kind}");
        let mut vp = VolumePolicy {
            name: name.to_string(),
            kind: VolumeKind::Content,
            source: kind.clone(),
            memory: false,
            size_limit: None,
            host_path: String::new(),
            files: Vec::new(),
            fs_group: None,
            encrypted: None,
        };
        let mut files = Vec::new();
        let default_mode = mode_of(
            src.get("defaultMode"),
            &format!("{p}.defaultMode"),
            DEFAULT_MODE,
        )?;
        match kind.as_str() {
            "emptyDir" => {
                vp.kind = VolumeKind::EmptyDir;
                match get_str(&src, "medium").unwrap_or("") {
                    "" => {}
                    "Memory" => vp.memory = true,
                    other => {
                        return Err(field(
                            format!("{p}.medium"),
                            format!(
                                "{other:?} is not supported (use \"\" for disk or \"Memory\" for tmpfs)"
                            ),
                        ));
                    }
                }
                if let Some(q) = src.get("sizeLimit").filter(|q| !q.is_null()) {
                    let text = q.as_str().map(str::to_string).unwrap_or(q.to_string());
                    let bytes = parse_quantity(&text).filter(|b| *b > 0).ok_or_else(|| {
                        field(
                            format!("{p}.sizeLimit"),
                            format!("{text:?} is not a positive quantity like 64Mi or 1G"),
                        )
                    })?;
                    vp.size_limit = Some(bytes);
                }
            }
            "configMap" => {
                let cm = get_str(&src, "name").ok_or_else(|| field(&p, "no name"))?;
                let what = format!("ConfigMap {cm:?} (namespace {})", w.namespace);
                let data = refs.config_map(&w.namespace, cm);
                keyed_files(&p, &what, data, &src, default_mode, &mut files)?;
            }
            "secret" => {
                let s = get_str(&src, "secretName").ok_or_else(|| field(&p, "no secretName"))?;
                let what = format!("Secret {s:?} (namespace {})", w.namespace);
                let data = refs.secret(&w.namespace, s);
                keyed_files(&p, &what, data, &src, default_mode, &mut files)?;
            }
            "downwardAPI" => downward_files(&p, w, &src, default_mode, &mut files)?,
            "projected" => {
                let sources = src.get("sources").and_then(Value::as_array);
                for (j, s) in sources.into_iter().flatten().enumerate() {
                    let sp = format!("{p}.sources[{j}]");
                    if let Some(c) = s.get("configMap") {
                        let cm = get_str(c, "name").ok_or_else(|| field(&sp, "no name"))?;
                        let what = format!("ConfigMap {cm:?} (namespace {})", w.namespace);
                        let data = refs.config_map(&w.namespace, cm);
                        keyed_files(
                            &format!("{sp}.configMap"),
                            &what,
                            data,
                            c,
                            default_mode,
                            &mut files,
                        )?;
                    } else if let Some(c) = s.get("secret") {
                        let sn = get_str(c, "name").ok_or_else(|| field(&sp, "no name"))?;
                        let what = format!("Secret {sn:?} (namespace {})", w.namespace);
                        let data = refs.secret(&w.namespace, sn);
                        keyed_files(
                            &format!("{sp}.secret"),
                            &what,
                            data,
                            c,
                            default_mode,
                            &mut files,
                        )?;
                    } else if let Some(d) = s.get("downwardAPI") {
                        downward_files(
                            &format!("{sp}.downwardAPI"),
                            w,
                            d,
                            default_mode,
                            &mut files,
                        )?;
                    } else {
                        return Err(field(
                            sp,
                            "only configMap, secret and downwardAPI sources can be pinned by the policy (a serviceAccountToken is minted after the policy is made)",
                        ));
                    }
                }
            }
            "hostPath" => {
                let hp = get_str(&src, "path").ok_or_else(|| field(&p, "no path"))?;
                if !settings.sandbox.allow_host_path {
                    return Err(field(
                        format!("{p}.path"),
                        format!(
                            "hostPath {hp:?} would give the container a directory of the untrusted host, which can read and change it; veil refuses it unless the settings allow it ({ALLOW_HOST_PATH_SETTING} = true, or veil policy generate --allow-host-path); use an emptyDir or a configMap/secret volume instead"
                        ),
                    ));
                }
                if !hp.starts_with('/') || hp.split('/').any(|c| c == "." || c == "..") {
                    return Err(field(
                        format!("{p}.path"),
                        format!("{hp:?} must be an absolute path without '.' or '..'"),
                    ));
                }
                vp.kind = VolumeKind::HostPath;
                vp.host_path = hp.to_string();
            }
            "persistentVolumeClaim" => {
                let claim = get_str(&src, "claimName").ok_or_else(|| field(&p, "no claimName"))?;
                let Some(e) = settings.sandbox.encrypted_volumes.get(claim) else {
                    let known: Vec<&str> = settings
                        .sandbox
                        .encrypted_volumes
                        .keys()
                        .map(String::as_str)
                        .collect();
                    return Err(field(
                        format!("{p}.claimName"),
                        format!(
                            "claim {claim:?} is not a veil encrypted volume (known: {}); a claim's storage is the untrusted host's, so veil mounts only volumes it encrypts: create one with `veil volume create {claim}` (veil run looks it up by name)",
                            if known.is_empty() {
                                "none".to_string()
                            } else {
                                known.join(", ")
                            }
                        ),
                    ));
                };
                e.validate().map_err(|e| field(&p, e))?;
                vp.kind = VolumeKind::Encrypted;
                vp.encrypted = Some(e.clone());
            }
            other => {
                unsupported.push(format!(
                    "{p}: volume {name} of type {other} is not supported; its mounts will be denied"
                ));
                continue;
            }
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &files {
            check_volume_path(name, &f.path).map_err(|e| field(&p, e))?;
            if !seen.insert(f.path.clone()) {
                return Err(field(
                    &p,
                    format!("file {:?} appears twice in volume {name}", f.path),
                ));
            }
            total_bytes += f.data.len();
        }
        total_files += files.len();
        if total_files > MAX_VOLUME_FILES || total_bytes > MAX_VOLUME_BYTES {
            return Err(field(
                p,
                format!(
                    "the pod's volumes hold {total_files} files and {total_bytes} bytes so far; the limits are {MAX_VOLUME_FILES} files and {MAX_VOLUME_BYTES} bytes"
                ),
            ));
        }
        vp.files = files
            .iter()
            .map(|f| VolumeFile {
                path: f.path.clone(),
                digest: format!("sha256:{}", hex::encode(Sha256::digest(f.data.as_slice()))),
                mode: f.mode,
            })
            .collect();
        vp.files.sort();
        // As the kubelet: fsGroup owns the volumes it manages, not hostPath.
        if vp.kind != VolumeKind::HostPath {
            vp.fs_group = fs_group;
        }
        out.push(PodVolume { policy: vp, files });
    }
    Ok(out)
}

/// The content of the first workload's configMap, secret, downwardAPI and
/// projected volumes, computed from `inputs` (the pod YAML and any YAML
/// with ConfigMaps and Secrets) exactly as the policy generator pins it:
/// what an honest host hands the agent in `create_sandbox`.
pub fn pod_volume_contents(
    inputs: &[&str],
    settings: &Settings,
) -> Result<Vec<VolumeContent>, GenerateError> {
    let docs = super::parse_documents(inputs)?;
    let refs = References::collect(&docs, &settings.namespace)?;
    let mut notes = Vec::new();
    let mut unsupported = Vec::new();
    // hostPath volumes carry no content: their refusal is the policy's business.
    let mut allow = settings.clone();
    allow.sandbox.allow_host_path = true;
    for (i, doc) in docs.iter().enumerate() {
        let Some(w) = super::k8s::workload_of(i + 1, doc, settings, &mut notes)? else {
            continue;
        };
        return Ok(pod_volumes(&w, &refs, &allow, &mut unsupported)?
            .into_iter()
            .filter(|v| v.policy.kind == VolumeKind::Content)
            .map(|v| VolumeContent {
                name: v.policy.name,
                files: v
                    .files
                    .into_iter()
                    .map(|f| VolumeFileContent {
                        path: f.path,
                        data: SecretBytes(f.data),
                    })
                    .collect(),
            })
            .collect());
    }
    Err(GenerateError::NoWorkload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_in_bytes() {
        assert_eq!(parse_quantity("64Mi"), Some(64 << 20));
        assert_eq!(parse_quantity("1G"), Some(1_000_000_000));
        assert_eq!(parse_quantity("1000"), Some(1000));
        assert_eq!(parse_quantity("1.5Ki"), Some(1536));
        assert_eq!(parse_quantity("64MB"), None);
        assert_eq!(parse_quantity("Mi"), None);
    }

    #[test]
    fn maps_formatted_as_kubelet_does() {
        let m: serde_json::Map<String, Value> =
            serde_json::from_str(r#"{"b": "x\"y", "a": "1", "skip": "z"}"#).unwrap();
        assert_eq!(format_map(&m, &["skip"]), "a=\"1\"\nb=\"x\\\"y\"");
    }
}
