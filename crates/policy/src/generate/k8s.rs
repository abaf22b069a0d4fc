//! Kubernetes objects → policy data.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};

use super::{
    ANNOTATION_ALLOW_STDIO, ANNOTATION_ENV_REGEX, ANNOTATION_EXEC, GenerateError, ImageInfo,
    ImageResolver,
};
use crate::model::{
    CapabilityPolicy, ContainerPolicy, EnvRule, ImagePolicy, MountRule, POLICY_FORMAT_VERSION,
    PolicyData, PortRule, SandboxPolicy, SharedPort, Strategy, UserPolicy, VolumeKind, anchor,
    check_regex, exact_regex, namespaced_sysctl,
};
use crate::settings::{SANDBOX_DIR_RE, Settings};
use zeroize::Zeroizing;

const WORKLOAD_KINDS: &[&str] = &[
    "Pod",
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "CronJob",
];

/// Kinds that are not workloads and carry nothing the policy needs; they pass through.
const PASS_THROUGH_KINDS: &[&str] = &[
    "Service",
    "ServiceAccount",
    "Ingress",
    "PersistentVolumeClaim",
    "NetworkPolicy",
    "Namespace",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "Role",
    "RoleBinding",
    "ClusterRole",
    "ClusterRoleBinding",
    "RuntimeClass",
];

const POD_SPEC_KNOWN: &[&str] = &[
    "containers",
    "initContainers",
    "volumes",
    "securityContext",
    "shareProcessNamespace",
    "automountServiceAccountToken",
    "serviceAccountName",
    "serviceAccount",
    "restartPolicy",
    "terminationGracePeriodSeconds",
    "activeDeadlineSeconds",
    "dnsPolicy",
    "dnsConfig",
    "nodeSelector",
    "nodeName",
    "affinity",
    "tolerations",
    "schedulerName",
    "priorityClassName",
    "priority",
    "preemptionPolicy",
    "runtimeClassName",
    "imagePullSecrets",
    "enableServiceLinks",
    "topologySpreadConstraints",
    "readinessGates",
    "overhead",
    "hostname",
    "subdomain",
    "setHostnameAsFQDN",
    "hostAliases",
    "os",
    // true is refused (pod_policy); false is the pod's own network.
    "hostNetwork",
];

const POD_SC_KNOWN: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "supplementalGroups",
    "fsGroup",
    "fsGroupChangePolicy",
    "sysctls",
];

const CONTAINER_KNOWN: &[&str] = &[
    "name",
    "image",
    "command",
    "args",
    "env",
    "envFrom",
    "workingDir",
    "ports",
    "resources",
    "resizePolicy",
    "volumeMounts",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "lifecycle",
    "terminationMessagePath",
    "terminationMessagePolicy",
    "imagePullPolicy",
    "securityContext",
    "stdin",
    "stdinOnce",
    "tty",
    "restartPolicy",
];

const CONTAINER_SC_KNOWN: &[&str] = &[
    "runAsUser",
    "runAsGroup",
    "runAsNonRoot",
    "privileged",
    "allowPrivilegeEscalation",
    "capabilities",
    "readOnlyRootFilesystem",
];

/// The setting that admits privileged containers.
pub const ALLOW_PRIVILEGED_SETTING: &str = "sandbox.allow_privileged";

/// containerd's default capability set.
const DEFAULT_CAPS: &[&str] = &[
    "CAP_AUDIT_WRITE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_MKNOD",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_RAW",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYS_CHROOT",
];

/// Every Linux capability (for privileged containers and `add: [ALL]`).
const ALL_CAPS: &[&str] = &[
    "CAP_AUDIT_CONTROL",
    "CAP_AUDIT_READ",
    "CAP_AUDIT_WRITE",
    "CAP_BLOCK_SUSPEND",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_KILL",
    "CAP_LEASE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_MKNOD",
    "CAP_NET_ADMIN",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_RAW",
    "CAP_PERFMON",
    "CAP_SETFCAP",
    "CAP_SETGID",
    "CAP_SETPCAP",
    "CAP_SETUID",
    "CAP_SYSLOG",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_CHROOT",
    "CAP_SYS_MODULE",
    "CAP_SYS_NICE",
    "CAP_SYS_PACCT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_WAKE_ALARM",
];

const SIGNALS: &[(&str, u32)] = &[
    ("SIGHUP", 1),
    ("SIGINT", 2),
    ("SIGQUIT", 3),
    ("SIGKILL", 9),
    ("SIGUSR1", 10),
    ("SIGUSR2", 12),
    ("SIGTERM", 15),
    ("SIGWINCH", 28),
];

pub(crate) fn field(path: impl Into<String>, reason: impl Into<String>) -> GenerateError {
    GenerateError::Field {
        path: path.into(),
        reason: reason.into(),
    }
}

pub(crate) fn get_str<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn str_list(v: Option<&Value>, path: &str) -> Result<Option<Vec<String>>, GenerateError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, x)| match x {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                _ => Err(field(format!("{path}[{i}]"), "expected a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(field(path, "expected a list of strings")),
    }
}

pub(crate) fn as_u32(v: Option<&Value>, path: &str) -> Result<Option<u32>, GenerateError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(x) => x
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| field(path, format!("expected a number 0..=4294967295, got {x}"))),
    }
}

fn as_bool(v: Option<&Value>) -> Option<bool> {
    v.and_then(Value::as_bool)
}

/// Record every key of `obj` not in `known` as unsupported.
fn check_known(path: &str, obj: &Value, known: &[&str], unsupported: &mut Vec<String>) {
    if let Some(map) = obj.as_object() {
        for k in map.keys() {
            if !known.contains(&k.as_str()) {
                unsupported.push(format!("{path}.{k}: not modelled by the policy"));
            }
        }
    }
}

/// A workload's pod template, located.
pub(crate) struct Workload {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub pod_name_re: String,
    pub template_path: Vec<&'static str>,
    pub metadata: Value,
    pub spec: Value,
}

/// Key → bytes of a ConfigMap or Secret (zeroized on drop: secret values).
pub(crate) type KeyedData = BTreeMap<String, Zeroizing<Vec<u8>>>;

/// A downward-API field path naming one label or annotation,
/// `metadata.labels['KEY']` / `metadata.annotations['KEY']`, as
/// (`"labels"` or `"annotations"`, KEY).
pub(super) fn metadata_key(path: &str) -> Option<(&'static str, &str)> {
    path.strip_prefix("metadata.labels['")
        .map(|r| ("labels", r))
        .or_else(|| {
            path.strip_prefix("metadata.annotations['")
                .map(|r| ("annotations", r))
        })
        .and_then(|(sec, r)| r.strip_suffix("']").map(|k| (sec, k)))
}

/// ConfigMaps and Secrets defined in the input, by (namespace, name).
pub(crate) struct References {
    /// `data` (strings), what env and envFrom read.
    config_maps: BTreeMap<(String, String), BTreeMap<String, String>>,
    /// `data` and `binaryData`, what a volume holds.
    config_map_files: BTreeMap<(String, String), KeyedData>,
    /// `data` (base64-decoded) and `stringData`.
    secrets: BTreeMap<(String, String), KeyedData>,
}

fn namespace_of(doc: &Value, default: &str) -> String {
    doc.get("metadata")
        .and_then(|m| get_str(m, "namespace"))
        .unwrap_or(default)
        .to_string()
}

impl References {
    pub fn collect(docs: &[Value], default_ns: &str) -> Result<Self, GenerateError> {
        let mut r = References {
            config_maps: BTreeMap::new(),
            config_map_files: BTreeMap::new(),
            secrets: BTreeMap::new(),
        };
        for (i, d) in docs.iter().enumerate() {
            let kind = get_str(d, "kind").unwrap_or("");
            if kind != "ConfigMap" && kind != "Secret" {
                continue;
            }
            let name = d
                .get("metadata")
                .and_then(|m| get_str(m, "name"))
                .ok_or_else(|| field(format!("document {} ({kind})", i + 1), "no metadata.name"))?
                .to_string();
            let key = (namespace_of(d, default_ns), name.clone());
            if kind == "ConfigMap" {
                let mut data = BTreeMap::new();
                let mut files = KeyedData::new();
                if let Some(m) = d.get("data").and_then(Value::as_object) {
                    for (k, v) in m {
                        let s = match v {
                            Value::String(s) => s.clone(),
                            Value::Number(_) | Value::Bool(_) => v.to_string(),
                            _ => {
                                return Err(field(
                                    format!("ConfigMap {name} data.{k}"),
                                    "expected a string",
                                ));
                            }
                        };
                        files.insert(k.clone(), Zeroizing::new(s.clone().into_bytes()));
                        data.insert(k.clone(), s);
                    }
                }
                if let Some(m) = d.get("binaryData").and_then(Value::as_object) {
                    for (k, v) in m {
                        let p = format!("ConfigMap {name} binaryData.{k}");
                        if files.insert(k.clone(), base64_value(&p, v)?).is_some() {
                            return Err(field(p, "the key is also in data"));
                        }
                    }
                }
                if r.config_maps.insert(key.clone(), data).is_some() {
                    return Err(field(format!("ConfigMap {name}"), "defined twice"));
                }
                r.config_map_files.insert(key, files);
            } else {
                let mut data = KeyedData::new();
                if let Some(m) = d.get("data").and_then(Value::as_object) {
                    for (k, v) in m {
                        data.insert(
                            k.clone(),
                            base64_value(&format!("Secret {name} data.{k}"), v)?,
                        );
                    }
                }
                // stringData wins over data, as the API server merges them.
                if let Some(m) = d.get("stringData").and_then(Value::as_object) {
                    for (k, v) in m {
                        let s = v.as_str().ok_or_else(|| {
                            field(format!("Secret {name} stringData.{k}"), "expected a string")
                        })?;
                        data.insert(k.clone(), Zeroizing::new(s.as_bytes().to_vec()));
                    }
                }
                if r.secrets.insert(key, data).is_some() {
                    return Err(field(format!("Secret {name}"), "defined twice"));
                }
            }
        }
        Ok(r)
    }
}

impl References {
    /// The files a volume of ConfigMap `name` holds, if it is in the input.
    pub fn config_map(&self, namespace: &str, name: &str) -> Option<&KeyedData> {
        self.config_map_files
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// The files a volume of Secret `name` holds, if it is in the input.
    pub fn secret(&self, namespace: &str, name: &str) -> Option<&KeyedData> {
        self.secrets.get(&(namespace.to_string(), name.to_string()))
    }
}

/// A base64 value of a Secret's `data` or a ConfigMap's `binaryData`.
fn base64_value(path: &str, v: &Value) -> Result<Zeroizing<Vec<u8>>, GenerateError> {
    use base64::Engine;
    let s = v
        .as_str()
        .ok_or_else(|| field(path, "expected a base64 string"))?;
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map(Zeroizing::new)
        .map_err(|e| field(path, format!("not valid base64: {e}")))
}

/// Locate the pod template of a workload document; `None` for supporting kinds.
pub(crate) fn workload_of(
    doc_no: usize,
    doc: &Value,
    settings: &Settings,
    notes: &mut Vec<String>,
) -> Result<Option<Workload>, GenerateError> {
    let kind = get_str(doc, "kind")
        .ok_or_else(|| field(format!("document {doc_no}"), "no kind"))?
        .to_string();
    let name = doc.get("metadata").and_then(|m| get_str(m, "name"));
    if kind == "ConfigMap" || kind == "Secret" {
        return Ok(None);
    }
    if PASS_THROUGH_KINDS.contains(&kind.as_str()) {
        notes.push(format!(
            "{kind} {}: not a workload; passed through unchanged",
            name.unwrap_or("(unnamed)")
        ));
        return Ok(None);
    }
    if !WORKLOAD_KINDS.contains(&kind.as_str()) {
        return Err(GenerateError::UnknownKind {
            document: doc_no,
            kind,
        });
    }
    let namespace = namespace_of(doc, &settings.namespace);
    let generate_name = doc.get("metadata").and_then(|m| get_str(m, "generateName"));
    let (name, pod_name_re) = match (kind.as_str(), name, generate_name) {
        ("Pod", Some(n), _) => (n.to_string(), exact_regex(n)),
        ("Pod", None, Some(g)) => (
            g.to_string(),
            format!("^{}[a-z0-9]{{5}}$", regex::escape(g)),
        ),
        (_, Some(n), _) => {
            let e = regex::escape(n);
            let re = match kind.as_str() {
                "Deployment" => format!("^{e}-[a-z0-9]{{1,10}}-[a-z0-9]{{5}}$"),
                "StatefulSet" => format!("^{e}-[0-9]{{1,9}}$"),
                "Job" => format!("^{e}(-[0-9]{{1,9}})?-[a-z0-9]{{5}}$"),
                "CronJob" => format!("^{e}-[0-9]{{1,12}}-[a-z0-9]{{5}}$"),
                _ => format!("^{e}-[a-z0-9]{{5}}$"),
            };
            (n.to_string(), re)
        }
        _ => {
            return Err(field(
                format!("document {doc_no} ({kind})"),
                "no metadata.name",
            ));
        }
    };
    let template_path: Vec<&'static str> = match kind.as_str() {
        "Pod" => vec![],
        "CronJob" => vec!["spec", "jobTemplate", "spec", "template"],
        _ => vec!["spec", "template"],
    };
    let mut t = doc;
    for p in &template_path {
        t = t.get(*p).ok_or_else(|| {
            field(
                format!("{kind} {name}"),
                format!("missing {}", template_path.join(".")),
            )
        })?;
    }
    let spec = t
        .get("spec")
        .cloned()
        .ok_or_else(|| field(format!("{kind} {name}"), "missing pod spec"))?;
    let metadata = t
        .get("metadata")
        .cloned()
        .unwrap_or(Value::Object(Map::new()));
    let mut template_path = template_path;
    template_path.push("metadata");
    Ok(Some(Workload {
        kind,
        name,
        namespace,
        pod_name_re,
        template_path,
        metadata,
        spec,
    }))
}

/// Set `metadata.annotations[key] = value` at the pod template.
pub(crate) fn set_template_annotation(doc: &mut Value, path: &[&str], key: &str, value: &str) {
    let mut t = doc;
    for p in path.iter().copied().chain(std::iter::once("annotations")) {
        if !t.is_object() {
            return;
        }
        let obj = t.as_object_mut();
        let Some(obj) = obj else { return };
        t = obj
            .entry(p.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if t.is_null() {
            *t = Value::Object(Map::new());
        }
    }
    if let Some(obj) = t.as_object_mut() {
        obj.insert(key.to_string(), Value::String(value.to_string()));
    }
}

fn annotation<'a>(meta: &'a Value, key: &str) -> Option<&'a str> {
    meta.get("annotations").and_then(|a| get_str(a, key))
}

/// Expand Kubernetes `$(VAR)` references; `$$` escapes `$`.
fn expand(s: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        rest = &rest[i..];
        if let Some(r) = rest.strip_prefix("$$") {
            out.push('$');
            rest = r;
        } else if let Some(inner) = rest.strip_prefix("$(") {
            match inner.find(')') {
                Some(end) if vars.contains_key(&inner[..end]) => {
                    out.push_str(&vars[&inner[..end]]);
                    rest = &inner[end + 1..];
                }
                _ => {
                    out.push('$');
                    rest = &rest[1..];
                }
            }
        } else {
            out.push('$');
            rest = &rest[1..];
        }
    }
    out.push_str(rest);
    out
}

fn ip_regex() -> String {
    "^[0-9a-fA-F.:,]{2,200}$".into()
}

fn parse_signal(s: &str) -> Option<u32> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    SIGNALS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

fn cap_name(c: &str) -> String {
    let u = c.to_ascii_uppercase();
    if u.starts_with("CAP_") {
        u
    } else {
        format!("CAP_{u}")
    }
}

struct EnvBuilder {
    rules: BTreeMap<String, EnvRule>,
}

impl EnvBuilder {
    fn set(&mut self, name: &str, value: String, strategy: Strategy, required: bool) {
        self.rules.insert(
            name.to_string(),
            EnvRule {
                name: name.to_string(),
                value,
                strategy,
                required,
            },
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn container_policy(
    w: &Workload,
    c: &Value,
    init: bool,
    refs: &References,
    resolver: &dyn ImageResolver,
    settings: &Settings,
    volumes: &BTreeMap<String, VolumeKind>,
    unsupported: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<ContainerPolicy, GenerateError> {
    let cname = get_str(c, "name")
        .ok_or_else(|| field(format!("{} {} container", w.kind, w.name), "no name"))?
        .to_string();
    let path = format!("{} {} container {cname}", w.kind, w.name);
    check_known(&path, c, CONTAINER_KNOWN, unsupported);
    let reference = get_str(c, "image")
        .ok_or_else(|| field(&path, "no image"))?
        .to_string();
    let info: ImageInfo = resolver
        .resolve(&reference)
        .map_err(|reason| GenerateError::Image {
            container: cname.clone(),
            reference: reference.clone(),
            reason,
        })?;
    let pod_sc = w
        .spec
        .get("securityContext")
        .cloned()
        .unwrap_or(Value::Null);
    let sc = c.get("securityContext").cloned().unwrap_or(Value::Null);
    check_known(
        &format!("{path}.securityContext"),
        &sc,
        CONTAINER_SC_KNOWN,
        unsupported,
    );

    // ---- environment: image, then envFrom, then env, then annotations.
    let mut env = EnvBuilder {
        rules: BTreeMap::new(),
    };
    for (i, kv) in info.env.iter().enumerate() {
        let (n, v) = kv.split_once('=').ok_or_else(|| {
            field(
                format!("image {reference} Env[{i}]"),
                format!("{kv:?} is not NAME=value"),
            )
        })?;
        env.set(n, v.to_string(), Strategy::Exact, true);
    }
    // Variables the pod spec defines (for $(VAR) expansion): exact values only.
    let mut pod_vars: BTreeMap<String, String> = BTreeMap::new();
    let mut variable_vars: BTreeSet<String> = BTreeSet::new();
    if let Some(list) = c.get("envFrom").and_then(Value::as_array) {
        for (i, ef) in list.iter().enumerate() {
            let prefix = get_str(ef, "prefix").unwrap_or("");
            let p = format!("{path}.envFrom[{i}]");
            if let Some(r) = ef.get("configMapRef") {
                let name =
                    get_str(r, "name").ok_or_else(|| field(&p, "configMapRef without name"))?;
                match refs.config_maps.get(&(w.namespace.clone(), name.to_string())) {
                    Some(data) => {
                        for (k, v) in data {
                            let n = format!("{prefix}{k}");
                            env.set(&n, v.clone(), Strategy::Exact, true);
                            pod_vars.insert(n, v.clone());
                        }
                    }
                    None if as_bool(r.get("optional")) == Some(true) => notes.push(format!(
                        "{p}: optional ConfigMap {name} is not in the input; its variables are not allowed"
                    )),
                    None => {
                        return Err(field(
                            p,
                            format!("ConfigMap {name:?} (namespace {}) is not defined in the input", w.namespace),
                        ));
                    }
                }
            } else if let Some(r) = ef.get("secretRef") {
                let name = get_str(r, "name").ok_or_else(|| field(&p, "secretRef without name"))?;
                match refs.secrets.get(&(w.namespace.clone(), name.to_string())) {
                    Some(keys) => {
                        for k in keys.keys() {
                            let n = format!("{prefix}{k}");
                            env.set(&n, "^(?s:.*)$".into(), Strategy::Regex, true);
                            variable_vars.insert(n.clone());
                            notes.push(format!(
                                "{path}: env {n} comes from Secret {name}; its value is not pinned (use KBS secrets for values the policy must protect)"
                            ));
                        }
                    }
                    None => {
                        return Err(field(
                            p,
                            format!(
                                "Secret {name:?} is not defined in the input, so its keys are unknown"
                            ),
                        ));
                    }
                }
            } else {
                unsupported.push(format!(
                    "{p}: only configMapRef and secretRef are supported"
                ));
            }
        }
    }
    if let Some(list) = c.get("env").and_then(Value::as_array) {
        for (i, e) in list.iter().enumerate() {
            let p = format!("{path}.env[{i}]");
            let n = get_str(e, "name")
                .ok_or_else(|| field(&p, "no name"))?
                .to_string();
            if let Some(v) = e.get("value") {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                let v = expand(&v, &pod_vars);
                env.set(&n, v.clone(), Strategy::Exact, true);
                pod_vars.insert(n, v);
                variable_vars.retain(|x| x != get_str(e, "name").unwrap_or(""));
                continue;
            }
            let Some(from) = e.get("valueFrom") else {
                env.set(&n, String::new(), Strategy::Exact, true);
                pod_vars.insert(n, String::new());
                continue;
            };
            pod_vars.remove(&n);
            let optional = |r: &Value| as_bool(r.get("optional")) == Some(true);
            if let Some(r) = from.get("configMapKeyRef") {
                let cm =
                    get_str(r, "name").ok_or_else(|| field(&p, "configMapKeyRef without name"))?;
                let key =
                    get_str(r, "key").ok_or_else(|| field(&p, "configMapKeyRef without key"))?;
                match refs
                    .config_maps
                    .get(&(w.namespace.clone(), cm.to_string()))
                    .and_then(|d| d.get(key))
                {
                    Some(v) => {
                        env.set(&n, v.clone(), Strategy::Exact, true);
                        pod_vars.insert(n, v.clone());
                    }
                    None if optional(r) => notes.push(format!(
                        "{p}: optional key {key} of ConfigMap {cm} is not in the input; {n} is not allowed"
                    )),
                    None => {
                        return Err(field(
                            p,
                            format!("key {key:?} of ConfigMap {cm:?} is not defined in the input"),
                        ));
                    }
                }
            } else if let Some(r) = from.get("secretKeyRef") {
                let s = get_str(r, "name").unwrap_or("");
                env.set(&n, "^(?s:.*)$".into(), Strategy::Regex, !optional(r));
                variable_vars.insert(n.clone());
                notes.push(format!(
                    "{path}: env {n} comes from Secret {s}; its value is not pinned (use KBS secrets for values the policy must protect)"
                ));
            } else if let Some(r) = from.get("fieldRef") {
                let fp = get_str(r, "fieldPath").unwrap_or("");
                let (value, strategy) = match fp {
                    "metadata.name" => (w.pod_name_re.clone(), Strategy::Regex),
                    "metadata.namespace" => (w.namespace.clone(), Strategy::Exact),
                    "metadata.uid" => ("^[0-9a-f-]{36}$".into(), Strategy::Regex),
                    "spec.nodeName" => (
                        "^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$".into(),
                        Strategy::Regex,
                    ),
                    "spec.serviceAccountName" => (
                        get_str(&w.spec, "serviceAccountName")
                            .unwrap_or("default")
                            .to_string(),
                        Strategy::Exact,
                    ),
                    "status.hostIP" | "status.podIP" | "status.hostIPs" | "status.podIPs" => {
                        (ip_regex(), Strategy::Regex)
                    }
                    other => {
                        match metadata_key(other)
                            .and_then(|(sec, k)| w.metadata.get(sec).and_then(|m| get_str(m, k)))
                        {
                            Some(v) => (v.to_string(), Strategy::Exact),
                            None => {
                                return Err(field(
                                    p,
                                    format!("fieldRef {other:?} is not supported"),
                                ));
                            }
                        }
                    }
                };
                if strategy == Strategy::Exact {
                    pod_vars.insert(n.clone(), value.clone());
                } else {
                    variable_vars.insert(n.clone());
                }
                env.set(&n, value, strategy, true);
            } else if from.get("resourceFieldRef").is_some() {
                env.set(&n, "^[0-9]+$".into(), Strategy::Regex, true);
                variable_vars.insert(n.clone());
            } else {
                return Err(field(p, "unsupported valueFrom"));
            }
        }
    }
    if let Some(text) = annotation(&w.metadata, &format!("{ANNOTATION_ENV_REGEX}{cname}")) {
        let p = format!("{path} annotation {ANNOTATION_ENV_REGEX}{cname}");
        let map: BTreeMap<String, String> = serde_json::from_str(text)
            .map_err(|e| field(&p, format!("expected a JSON object NAME -> regex: {e}")))?;
        for (n, re) in map {
            let anchored = anchor(&re);
            check_regex(&p, &anchored).map_err(|e| field(&p, e))?;
            let required = env.rules.contains_key(&n);
            env.set(&n, anchored, Strategy::Regex, required);
            pod_vars.remove(&n);
            variable_vars.insert(n);
        }
    }

    // ---- argv
    let command = str_list(c.get("command"), &format!("{path}.command"))?;
    let args = str_list(c.get("args"), &format!("{path}.args"))?;
    let expand_all = |v: Vec<String>| -> Result<Vec<String>, GenerateError> {
        v.into_iter()
            .map(|a| {
                let out = expand(&a, &pod_vars);
                for var in &variable_vars {
                    if out.contains(&format!("$({var})")) {
                        return Err(field(
                            format!("{path} argv {a:?}"),
                            format!("refers to $({var}), whose value is not fixed by the manifest"),
                        ));
                    }
                }
                Ok(out)
            })
            .collect()
    };
    let argv: Vec<String> = match (command, args) {
        (Some(cmd), Some(a)) => [expand_all(cmd)?, expand_all(a)?].concat(),
        (Some(cmd), None) => expand_all(cmd)?,
        (None, Some(a)) => [info.entrypoint.clone(), expand_all(a)?].concat(),
        (None, None) => [info.entrypoint.clone(), info.cmd.clone()].concat(),
    };
    if argv.is_empty() {
        return Err(field(
            &path,
            format!(
                "no command: image {reference} has no Entrypoint or Cmd and the manifest gives none"
            ),
        ));
    }

    // ---- user
    let run_as_user = as_u32(
        sc.get("runAsUser"),
        &format!("{path}.securityContext.runAsUser"),
    )?
    .or(as_u32(
        pod_sc.get("runAsUser"),
        "securityContext.runAsUser",
    )?);
    let run_as_group = as_u32(
        sc.get("runAsGroup"),
        &format!("{path}.securityContext.runAsGroup"),
    )?
    .or(as_u32(
        pod_sc.get("runAsGroup"),
        "securityContext.runAsGroup",
    )?);
    let (img_user, img_group) = match info.user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (info.user.as_str(), None),
    };
    let numeric = |s: &str, what: &str| -> Result<u32, GenerateError> {
        s.parse::<u32>().map_err(|_| {
            field(
                &path,
                format!(
                    "image {reference} runs as {what} {s:?}, a name; veil does not read the image's /etc/passwd: set securityContext.runAsUser and runAsGroup"
                ),
            )
        })
    };
    let uid = match run_as_user {
        Some(u) => u,
        None if img_user.is_empty() => 0,
        None => numeric(img_user, "user")?,
    };
    let gid = match run_as_group {
        Some(g) => g,
        None => match img_group {
            Some(g) if !g.is_empty() => numeric(g, "group")?,
            _ => 0,
        },
    };
    let non_root = as_bool(sc.get("runAsNonRoot")).or(as_bool(pod_sc.get("runAsNonRoot")));
    if non_root == Some(true) && uid == 0 {
        return Err(field(
            &path,
            "runAsNonRoot is set but the container would run as uid 0",
        ));
    }
    let mut additional_gids: Vec<u32> = Vec::new();
    if let Some(list) = pod_sc.get("supplementalGroups").and_then(Value::as_array) {
        for (i, g) in list.iter().enumerate() {
            if let Some(g) = as_u32(Some(g), &format!("securityContext.supplementalGroups[{i}]"))? {
                additional_gids.push(g);
            }
        }
    }
    if let Some(g) = as_u32(pod_sc.get("fsGroup"), "securityContext.fsGroup")? {
        additional_gids.push(g);
    }

    // ---- privileges and capabilities
    let privileged = as_bool(sc.get("privileged")) == Some(true);
    if privileged && !settings.sandbox.allow_privileged {
        return Err(field(
            format!("{path}.securityContext.privileged"),
            format!(
                "true would give the container every capability, so it could read the agent's memory and keys, \
                 reach the TEE's attestation device and remount anything in the sandbox; veil refuses it unless \
                 the settings allow it ({ALLOW_PRIVILEGED_SETTING} = true, or veil policy generate / veil run \
                 --allow-privileged); add only the capabilities the container needs \
                 (securityContext.capabilities.add) instead"
            ),
        ));
    }
    let mut caps: BTreeSet<String> = if privileged {
        ALL_CAPS.iter().map(|s| s.to_string()).collect()
    } else {
        DEFAULT_CAPS.iter().map(|s| s.to_string()).collect()
    };
    if let Some(cs) = sc.get("capabilities") {
        if let Some(drop) = str_list(
            cs.get("drop"),
            &format!("{path}.securityContext.capabilities.drop"),
        )? {
            for d in drop {
                if d.eq_ignore_ascii_case("ALL") {
                    caps.clear();
                } else {
                    caps.remove(&cap_name(&d));
                }
            }
        }
        if let Some(add) = str_list(
            cs.get("add"),
            &format!("{path}.securityContext.capabilities.add"),
        )? {
            for a in add {
                if a.eq_ignore_ascii_case("ALL") {
                    caps.extend(ALL_CAPS.iter().map(|s| s.to_string()));
                } else {
                    let n = cap_name(&a);
                    if !ALL_CAPS.contains(&n.as_str()) {
                        return Err(field(
                            format!("{path}.securityContext.capabilities.add"),
                            format!("unknown capability {a:?}"),
                        ));
                    }
                    caps.insert(n);
                }
            }
        }
    }
    let caps: Vec<String> = caps.into_iter().collect();
    let capabilities = CapabilityPolicy {
        bounding: caps.clone(),
        effective: if uid == 0 || privileged {
            caps.clone()
        } else {
            Vec::new()
        },
        inheritable: Vec::new(),
        permitted: if uid == 0 || privileged {
            caps
        } else {
            Vec::new()
        },
        ambient: Vec::new(),
    };

    // ---- mounts
    let mut mounts = Vec::new();
    if let Some(list) = c.get("volumeMounts").and_then(Value::as_array) {
        for (i, m) in list.iter().enumerate() {
            let p = format!("{path}.volumeMounts[{i}]");
            let vname = get_str(m, "name").ok_or_else(|| field(&p, "no name"))?;
            let dest = get_str(m, "mountPath").ok_or_else(|| field(&p, "no mountPath"))?;
            if m.get("subPath").is_some() || m.get("subPathExpr").is_some() {
                unsupported.push(format!(
                    "{p}.subPath: not supported; this mount will be denied"
                ));
                continue;
            }
            if let Some(prop) = get_str(m, "mountPropagation") {
                if prop != "None" {
                    unsupported.push(format!(
                        "{p}.mountPropagation {prop}: not supported; this mount will be denied"
                    ));
                    continue;
                }
            }
            let Some(vkind) = volumes.get(vname) else {
                if w.spec
                    .get("volumes")
                    .and_then(Value::as_array)
                    .is_some_and(|l| l.iter().any(|v| get_str(v, "name") == Some(vname)))
                {
                    unsupported.push(format!(
                        "{p}: volume {vname} is of a type veil does not support; this mount will be denied"
                    ));
                    continue;
                }
                return Err(field(
                    p,
                    format!("volume {vname:?} is not defined in the pod"),
                ));
            };
            // Content volumes are read-only, as kubelet mounts them.
            let read_only =
                as_bool(m.get("readOnly")) == Some(true) || *vkind == VolumeKind::Content;
            mounts.push(MountRule {
                destination: dest.to_string(),
                fs_type: "bind".into(),
                source: format!("^{SANDBOX_DIR_RE}/volumes/{}$", regex::escape(vname)),
                options: vec![
                    "rbind".into(),
                    "rprivate".into(),
                    if read_only { "ro" } else { "rw" }.into(),
                ],
            });
        }
    }
    if as_bool(w.spec.get("automountServiceAccountToken")) != Some(false) {
        mounts.push(MountRule {
            destination: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            fs_type: "bind".into(),
            source: format!("^{SANDBOX_DIR_RE}/serviceaccount$"),
            options: vec!["rbind".into(), "rprivate".into(), "ro".into()],
        });
    }
    if let Some(tp) = get_str(c, "terminationMessagePath") {
        if tp != "/dev/termination-log" {
            mounts.push(MountRule {
                destination: tp.to_string(),
                fs_type: "bind".into(),
                source: format!("^{SANDBOX_DIR_RE}/termination-log/[A-Za-z0-9_-][A-Za-z0-9_.-]*$"),
                options: vec!["rbind".into(), "rprivate".into(), "rw".into()],
            });
        }
    }

    // ---- sysctls (pod-wide)
    let mut sysctls = BTreeMap::new();
    if let Some(list) = pod_sc.get("sysctls").and_then(Value::as_array) {
        for s in list {
            if let (Some(n), Some(v)) = (get_str(s, "name"), s.get("value")) {
                let v = v
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| v.to_string());
                if !namespaced_sysctl(n) {
                    return Err(field(
                        format!("{} {} pod spec.securityContext.sysctls", w.kind, w.name),
                        format!(
                            "{n} is not a namespaced sysctl (net.*, kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*): setting it would change the whole guest, not this pod; remove it"
                        ),
                    ));
                }
                if v.contains('\0') || v.contains('\n') || v.len() > 4096 {
                    return Err(field(
                        format!("{} {} pod spec.securityContext.sysctls.{n}", w.kind, w.name),
                        "the value must be one line of at most 4096 bytes",
                    ));
                }
                sysctls.insert(n.to_string(), v);
            }
        }
    }

    // ---- exec commands: probes, lifecycle hooks, annotation, settings
    let mut exec: Vec<Vec<String>> = settings.containers.exec.clone();
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(cmd) = str_list(
            c.get(probe)
                .and_then(|p| p.get("exec"))
                .and_then(|e| e.get("command")),
            &format!("{path}.{probe}.exec.command"),
        )? {
            exec.push(cmd);
        }
    }
    for hook in ["postStart", "preStop"] {
        if let Some(cmd) = str_list(
            c.get("lifecycle")
                .and_then(|l| l.get(hook))
                .and_then(|h| h.get("exec"))
                .and_then(|e| e.get("command")),
            &format!("{path}.lifecycle.{hook}.exec.command"),
        )? {
            exec.push(cmd);
        }
    }
    if let Some(text) = annotation(&w.metadata, &format!("{ANNOTATION_EXEC}{cname}")) {
        let extra: Vec<Vec<String>> = serde_json::from_str(text).map_err(|e| {
            field(
                format!("{path} annotation {ANNOTATION_EXEC}{cname}"),
                format!("expected a JSON list of argv lists: {e}"),
            )
        })?;
        exec.extend(extra);
    }
    if exec.iter().any(Vec::is_empty) {
        return Err(field(&path, "an allowed exec command has an empty argv"));
    }

    let allow_stdio = match annotation(&w.metadata, &format!("{ANNOTATION_ALLOW_STDIO}{cname}")) {
        Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(field(
                format!("{path} annotation {ANNOTATION_ALLOW_STDIO}{cname}"),
                format!("expected \"true\" or \"false\", got {other:?}"),
            ));
        }
        None => settings.containers.allow_stdio,
    };
    let mut signals = settings.containers.signals.clone();
    if let Some(s) = &info.stop_signal {
        match parse_signal(s) {
            Some(n) => signals.push(n),
            None => notes.push(format!("{path}: image StopSignal {s:?} is not recognised")),
        }
    }

    Ok(ContainerPolicy {
        name: cname,
        init,
        image: ImagePolicy {
            reference,
            digest: info.digest,
        },
        args: argv,
        env: env.rules.into_values().collect(),
        cwd: get_str(c, "workingDir")
            .filter(|s| !s.is_empty())
            .or(Some(info.working_dir.as_str()).filter(|s| !s.is_empty()))
            .unwrap_or("/")
            .to_string(),
        user: UserPolicy {
            uid,
            gid,
            additional_gids,
        },
        capabilities,
        privileged,
        no_new_privileges: as_bool(sc.get("allowPrivilegeEscalation")) == Some(false),
        read_only_rootfs: as_bool(sc.get("readOnlyRootFilesystem")) == Some(true),
        mounts,
        sysctls,
        exec,
        allow_stdio,
        allow_stdin: as_bool(c.get("stdin")) == Some(true),
        allow_tty: as_bool(c.get("tty")) == Some(true),
        signals,
        ports: container_ports(c, &path, unsupported)?,
        resources: super::resources::resource_policy(c, &path, unsupported)?,
        gpus: container_gpus(c, &path)?,
    })
}

/// The Kubernetes extended resource NVIDIA's device plugin serves.
pub const NVIDIA_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// `resources.limits["nvidia.com/gpu"]` (an extended resource: requests, if
/// given, must equal it), at most the GPUs one guest attests.
fn container_gpus(c: &Value, path: &str) -> Result<u32, GenerateError> {
    let res = c.get("resources");
    let count = |what: &str| -> Result<Option<u32>, GenerateError> {
        let p = format!("{path}.resources.{what}[\"{NVIDIA_GPU_RESOURCE}\"]");
        match res
            .and_then(|r| r.get(what))
            .and_then(|m| m.get(NVIDIA_GPU_RESOURCE))
        {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => s
                .parse::<u32>()
                .map(Some)
                .map_err(|_| field(p, format!("expected a whole number of GPUs, got {s:?}"))),
            v => as_u32(v, &p),
        }
    };
    let limit = count("limits")?;
    let request = count("requests")?;
    let n = match (limit, request) {
        (Some(l), Some(r)) if l != r => {
            return Err(field(
                format!("{path}.resources"),
                format!(
                    "requests[\"{NVIDIA_GPU_RESOURCE}\"] ({r}) must equal limits ({l}), as Kubernetes requires for extended resources"
                ),
            ));
        }
        (Some(l), _) => l,
        (None, Some(r)) => {
            return Err(field(
                format!("{path}.resources"),
                format!(
                    "requests[\"{NVIDIA_GPU_RESOURCE}\"] ({r}) without limits: Kubernetes requires the limit for extended resources"
                ),
            ));
        }
        (None, None) => 0,
    };
    let max = 16;
    if n > max {
        return Err(field(
            format!("{path}.resources.limits[\"{NVIDIA_GPU_RESOURCE}\"]"),
            format!("{n} GPUs; one guest attests at most {max}"),
        ));
    }
    Ok(n)
}

/// The container's `ports`: each `containerPort`/`protocol` and the
/// `hostPort` it may be published on (none: it may not be published).
fn container_ports(
    c: &Value,
    path: &str,
    unsupported: &mut Vec<String>,
) -> Result<Vec<PortRule>, GenerateError> {
    let Some(list) = c.get("ports") else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| field(format!("{path}.ports"), "expected a list"))?;
    let port = |v: Option<&Value>, p: &str| -> Result<Option<u16>, GenerateError> {
        match as_u32(v, p)? {
            None => Ok(None),
            Some(n) => match u16::try_from(n) {
                Ok(n) if n > 0 => Ok(Some(n)),
                _ => Err(field(p, format!("{n} is not a port number (1 to 65535)"))),
            },
        }
    };
    let mut out: Vec<PortRule> = Vec::new();
    for (i, e) in list.iter().enumerate() {
        let p = format!("{path}.ports[{i}]");
        check_known(
            &p,
            e,
            &["name", "containerPort", "protocol", "hostPort", "hostIP"],
            unsupported,
        );
        let container_port = port(e.get("containerPort"), &format!("{p}.containerPort"))?
            .ok_or_else(|| field(&p, "no containerPort"))?;
        let protocol = match get_str(e, "protocol").unwrap_or("TCP") {
            "TCP" => "tcp",
            "UDP" => "udp",
            other => {
                return Err(field(
                    format!("{p}.protocol"),
                    format!("{other:?} is not supported; use TCP or UDP"),
                ));
            }
        };
        let host_port = port(e.get("hostPort"), &format!("{p}.hostPort"))?.unwrap_or(0);
        if get_str(e, "hostIP").is_some() {
            unsupported.push(format!(
                "{p}.hostIP: not pinned (the host chooses its own addresses)"
            ));
        }
        if out
            .iter()
            .any(|r| r.container_port == container_port && r.protocol == protocol)
        {
            return Err(field(
                p,
                format!("containerPort {container_port}/{protocol} is declared twice"),
            ));
        }
        out.push(PortRule {
            container_port,
            protocol: protocol.into(),
            host_port,
        });
    }
    Ok(out)
}

/// The policy data of one workload's pod.
pub(crate) fn pod_policy(
    w: &Workload,
    refs: &References,
    resolver: &dyn ImageResolver,
    settings: &Settings,
    unsupported: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<PolicyData, GenerateError> {
    let path = format!("{} {} pod spec", w.kind, w.name);
    if as_bool(w.spec.get("hostNetwork")) == Some(true) {
        return Err(field(
            format!("{path}.hostNetwork"),
            "true would put the pod in the host's network namespace, where the untrusted \
             host controls every interface and can reach every port; veil refuses it: remove \
             hostNetwork (the pod gets its own network; publish ports with veil run -p or a \
             Service)",
        ));
    }
    check_known(&path, &w.spec, POD_SPEC_KNOWN, unsupported);
    if let Some(sc) = w.spec.get("securityContext") {
        check_known(
            &format!("{path}.securityContext"),
            sc,
            POD_SC_KNOWN,
            unsupported,
        );
    }
    let pod_volumes = super::volumes::pod_volumes(w, refs, settings, unsupported)?;
    let volumes: BTreeMap<String, VolumeKind> = pod_volumes
        .iter()
        .map(|v| (v.policy.name.clone(), v.policy.kind))
        .collect();
    // Pod volumes are never the host's to write: content volumes are handed
    // in with create_sandbox and checked against their digests.
    let mut copy_file = settings.sandbox.copy_file.clone();
    if as_bool(w.spec.get("automountServiceAccountToken")) != Some(false) {
        copy_file.push(format!("^{SANDBOX_DIR_RE}/serviceaccount/[^/]+$"));
    }
    let mut containers = Vec::new();
    let mut names = BTreeSet::new();
    for (key, init) in [("initContainers", true), ("containers", false)] {
        let Some(list) = w.spec.get(key) else {
            continue;
        };
        let list = list
            .as_array()
            .ok_or_else(|| field(format!("{path}.{key}"), "expected a list"))?;
        for c in list {
            let cp = container_policy(
                w,
                c,
                init,
                refs,
                resolver,
                settings,
                &volumes,
                unsupported,
                notes,
            )?;
            if !names.insert(cp.name.clone()) {
                return Err(field(
                    &path,
                    format!("container name {:?} used twice", cp.name),
                ));
            }
            containers.push(cp);
        }
    }
    if let Some(shared) = SharedPort::find(&containers) {
        return Err(field(&path, shared.to_string()));
    }
    if !containers.iter().any(|c| !c.init) {
        return Err(field(
            format!("{path}.containers"),
            "the pod has no containers",
        ));
    }
    let mut data = PolicyData {
        version: POLICY_FORMAT_VERSION,
        sandbox: SandboxPolicy {
            pod_name: w.pod_name_re.clone(),
            namespace: w.namespace.clone(),
            sandbox_pidns: as_bool(w.spec.get("shareProcessNamespace")) == Some(true),
            kernel_modules: settings.sandbox.kernel_modules.clone(),
            copy_file,
            allow_get_evidence: settings.sandbox.allow_get_evidence,
            allow_stats: settings.sandbox.allow_stats,
            update_config: settings.sandbox.update_config.clone(),
            unpack_limits: settings.sandbox.unpack_limits.clone(),
            volumes: pod_volumes.into_iter().map(|v| v.policy).collect(),
            // Never from a pod or the settings: see `veil bench volume`.
            bench_volume: false,
        },
        containers,
        platform_env: settings.platform_env.clone(),
        default_mounts: settings.default_mounts.clone(),
    };
    data.canonicalize();
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_count_comes_from_the_nvidia_limit() {
        let gpus = |r: serde_json::Value| container_gpus(&serde_json::json!({"resources": r}), "c");
        assert_eq!(gpus(serde_json::json!({})).unwrap(), 0);
        assert_eq!(
            gpus(serde_json::json!({"limits": {"nvidia.com/gpu": 2}})).unwrap(),
            2
        );
        assert_eq!(
            gpus(serde_json::json!({"limits": {"nvidia.com/gpu": "1"}, "requests": {"nvidia.com/gpu": "1"}}))
                .unwrap(),
            1
        );
        for (r, needle) in [
            (
                serde_json::json!({"limits": {"nvidia.com/gpu": 1}, "requests": {"nvidia.com/gpu": 2}}),
                "must equal limits",
            ),
            (
                serde_json::json!({"requests": {"nvidia.com/gpu": 1}}),
                "without limits",
            ),
            (
                serde_json::json!({"limits": {"nvidia.com/gpu": 17}}),
                "at most 16",
            ),
            (
                serde_json::json!({"limits": {"nvidia.com/gpu": "half"}}),
                "whole number",
            ),
        ] {
            let e = gpus(r).unwrap_err().to_string();
            assert!(e.contains(needle), "{e}");
        }
    }

    #[test]
    fn expands_like_kubernetes() {
        let vars: BTreeMap<String, String> = [("A".to_string(), "x".to_string())].into();
        assert_eq!(expand("$(A)-$(B)-$$(A)-$", &vars), "x-$(B)-$(A)-$");
        assert_eq!(expand("héllo $(A)", &vars), "héllo x");
    }

    #[test]
    fn signals_parse() {
        assert_eq!(parse_signal("SIGQUIT"), Some(3));
        assert_eq!(parse_signal("term"), Some(15));
        assert_eq!(parse_signal("10"), Some(10));
        assert_eq!(parse_signal("SIGNOPE"), None);
    }
}
