//! `veil node install` / `veil node uninstall`: make a node's containerd
//! run pods with the veil RuntimeClass handlers.
//!
//! What install does, under a root directory (`/` on a node, the host's
//! root mounted into the installer DaemonSet's pod, or a test's temp dir):
//!
//! - copies the shim (`containerd-shim-veil-v2`) to `/usr/local/bin`, with
//!   a link `containerd-shim-<handler>-v2` to it for every other handler
//!   (the name the shim is started by tells it its handler on containerd
//!   1.6, whose CRI does not annotate the handler);
//! - writes one containerd drop-in, `/etc/veil/containerd/veil.toml`, in
//!   the config schema the node's containerd reads (`version = 2` for
//!   1.6/1.7, `version = 3` for 2.x), with one runtime per handler:
//!   `runtime_type = "io.containerd.<handler>.v2"` (containerd runs the
//!   handler's `containerd-shim-<handler>-v2`), the shim's path, the
//!   `pod_annotations` allowlist for init-data and policy annotations;
//! - writes the shim config `/etc/veil/shim.toml` with a table per handler
//!   (sandbox kind and TEE; an operator adds the KBS URL and CA there);
//! - adds the drop-in to the `imports` list of containerd's main config,
//!   editing only that key (the rest of the file keeps its bytes).
//!
//! It records what it did in `/etc/veil/node/state.json`, with the main
//! config's original bytes beside it, so that install is idempotent
//! (a second install changes nothing) and uninstall restores the node
//! exactly: the main config byte for byte when nobody changed it since,
//! otherwise only the `imports` entry is removed (and the caller warned).
//! Files that were changed after install are left in place, with a warning.
//!
//! Not for: restarting containerd (the caller does that when asked) or
//! running pods (the shim does).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The shim binary containerd starts for `runtime_type = RUNTIME_TYPE`.
pub const SHIM_BINARY: &str = "containerd-shim-veil-v2";
/// containerd's name for the veil runtime.
pub const RUNTIME_TYPE: &str = "io.containerd.veil.v2";
/// Pod annotations containerd passes to the shim (CoCo's and Kata's
/// init-data and policy annotations, and veil's own).
pub const POD_ANNOTATIONS: &[&str] = &[
    "io.katacontainers.config.hypervisor.cc_init_data",
    "io.katacontainers.config.agent.policy",
    "io.veil.*",
];
/// Where the shim is installed, relative to the root.
pub const SHIM_PATH: &str = "usr/local/bin/containerd-shim-veil-v2";
/// The containerd drop-in, relative to the root.
pub const DROP_IN: &str = "etc/veil/containerd/veil.toml";
/// The shim config (crates/shim's `config`), relative to the root.
pub const SHIM_CONFIG: &str = "etc/veil/shim.toml";
/// Install state, relative to the root.
pub const STATE_DIR: &str = "etc/veil/node";
/// containerd's main config, relative to the root.
pub const CONTAINERD_CONFIG: &str = "etc/containerd/config.toml";
/// Largest containerd config read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// The handlers a RuntimeClass may name, and what each runs.
pub const HANDLERS: &[(&str, &str, &str)] = &[
    ("veil", "process", "sim"),
    ("veil-vm-sim", "vm", "sim"),
    ("veil-vm-snp", "vm", "snp"),
    ("veil-vm-tdx", "vm", "tdx"),
];

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Refused(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// containerd's config schema.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Schema {
    /// `version = 2`: containerd 1.6 and 1.7.
    V2,
    /// `version = 3`: containerd 2.x.
    V3,
}

impl Schema {
    /// The schema of containerd `version` (`1.6.20`, `v2.0.1`, …).
    pub fn for_containerd(version: &str) -> Result<Schema, NodeError> {
        let v = version.trim().trim_start_matches('v');
        let mut parts = v.split('.');
        let major: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        let minor: u32 = parts.next().and_then(|m| m.parse().ok()).unwrap_or(0);
        match (major, minor) {
            (1, 6..) => Ok(Schema::V2),
            (2..=9, _) => Ok(Schema::V3),
            _ => Err(NodeError::Refused(format!(
                "containerd {version:?} is not supported (expected 1.6, 1.7 or 2.x)"
            ))),
        }
    }

    fn number(self) -> i64 {
        match self {
            Schema::V2 => 2,
            Schema::V3 => 3,
        }
    }

    /// The CRI plugin table runtimes live under.
    fn runtimes_table(self) -> &'static str {
        match self {
            Schema::V2 => r#"plugins."io.containerd.grpc.v1.cri".containerd.runtimes"#,
            Schema::V3 => r#"plugins."io.containerd.cri.v1.runtime".containerd.runtimes"#,
        }
    }
}

/// What to install.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// The node's root directory (`/`).
    pub root: PathBuf,
    /// containerd's main config, as a path on the node (default
    /// `/etc/containerd/config.toml`).
    pub containerd_config: PathBuf,
    /// The handlers to install (names from [`HANDLERS`]).
    pub handlers: Vec<String>,
    /// The shim binary to copy.
    pub shim: PathBuf,
    /// The config schema; `None`: the main config's `version`, else
    /// `containerd_version`.
    pub schema: Option<Schema>,
    /// The node's containerd version (`containerd --version`), used when
    /// the main config does not say its schema.
    pub containerd_version: Option<String>,
}

/// A file install wrote, with the digest of what it wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Written {
    path: String,
    sha256: String,
}

/// `etc/veil/node/state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    schema: Schema,
    /// The main config, relative to the root.
    containerd_config: String,
    /// Whether the main config existed before install.
    config_existed: bool,
    /// SHA-256 of the main config as install left it.
    config_written_sha256: String,
    /// Whether install added the `imports` key (else it added to the
    /// operator's list).
    imports_created: bool,
    /// Files install created (the main config excluded).
    files: Vec<Written>,
    /// Directories install created, deepest last.
    dirs: Vec<String>,
    /// Per-handler links to the shim install created.
    #[serde(default)]
    links: Vec<String>,
}

/// What install or uninstall did, for the user.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Paths (on the node) changed.
    pub changed: Vec<String>,
    /// Things left alone, and why.
    pub warnings: Vec<String>,
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn rel(p: &Path) -> String {
    p.to_string_lossy().trim_start_matches('/').to_string()
}

fn read_bounded(path: &Path) -> Result<Option<Vec<u8>>, NodeError> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io(path)(e)),
    };
    if !meta.is_file() {
        return Err(NodeError::Refused(format!(
            "{}: expected a regular file (not a symlink or device)",
            path.display()
        )));
    }
    if meta.len() > MAX_CONFIG_BYTES {
        return Err(NodeError::Refused(format!(
            "{}: {} bytes, more than the {MAX_CONFIG_BYTES} bytes a containerd config may have here",
            path.display(),
            meta.len()
        )));
    }
    fs::read(path).map(Some).map_err(io(path))
}

/// Write `bytes` to `path` through a temporary file and a rename, with
/// `mode`; nothing happens when the file already holds exactly `bytes`.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<bool, NodeError> {
    if let Some(old) = read_bounded(path)?
        && old == bytes
    {
        return Ok(false);
    }
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(
        ".{}.veil-tmp.{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(io(&tmp))?;
    let done = f
        .write_all(bytes)
        .and_then(|()| f.set_permissions(fs::Permissions::from_mode(mode)))
        .and_then(|()| f.sync_all())
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = done {
        let _ = fs::remove_file(&tmp);
        return Err(io(path)(e));
    }
    Ok(true)
}

/// Create `dir` and its missing parents under `root`, recording the ones made.
fn make_dirs(root: &Path, dir: &str, made: &mut Vec<String>) -> Result<(), NodeError> {
    let mut cur = String::new();
    for part in dir.split('/').filter(|p| !p.is_empty()) {
        if !cur.is_empty() {
            cur.push('/');
        }
        cur.push_str(part);
        let p = root.join(&cur);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(NodeError::Refused(format!(
                    "{}: expected a directory (not a symlink or file)",
                    p.display()
                )));
            }
            Err(_) => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&p)
                    .map_err(io(&p))?;
                made.push(cur.clone());
            }
        }
    }
    Ok(())
}

/// The schema `doc` declares with its top-level `version`.
fn declared_schema(doc: &toml_edit::DocumentMut, path: &Path) -> Result<Option<Schema>, NodeError> {
    match doc.get("version").and_then(|v| v.as_integer()) {
        None => Ok(None),
        Some(2) => Ok(Some(Schema::V2)),
        Some(3) => Ok(Some(Schema::V3)),
        Some(n) => Err(NodeError::Refused(format!(
            "{}: config version {n} is not supported (expected 2 for containerd 1.6/1.7 or 3 for 2.x); migrate it with `containerd config migrate`",
            path.display()
        ))),
    }
}

/// The permission bits of `path` (kept when it is rewritten), 0644 when
/// it does not exist yet.
fn mode_of(path: &Path) -> u32 {
    fs::symlink_metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644)
}

fn parse(bytes: &[u8], path: &Path) -> Result<toml_edit::DocumentMut, NodeError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| NodeError::Refused(format!("{}: not UTF-8", path.display())))?;
    text.parse::<toml_edit::DocumentMut>()
        .map_err(|e| NodeError::Refused(format!("{}: not valid TOML: {e}", path.display())))
}

/// The shim path of handler `h` on the node: the shim itself for `veil`,
/// else the handler's link to it.
pub fn shim_path_of(h: &str) -> String {
    if h == "veil" {
        format!("/{SHIM_PATH}")
    } else {
        format!("/usr/local/bin/containerd-shim-{h}-v2")
    }
}

/// The `runtime_type` of handler `h`: `io.containerd.<h>.v2`, so that
/// containerd runs `containerd-shim-<h>-v2` (the handler's link to the
/// shim, found on its `PATH`), which tells the shim its handler on every
/// containerd: 1.6's CRI neither annotates the handler nor honours
/// `runtime_path` (containerd/containerd#8207, fixed in 1.7.1).
pub fn runtime_type_of(h: &str) -> String {
    format!("io.containerd.{h}.v2")
}

/// The drop-in for `handlers` in `schema`.
pub fn drop_in(schema: Schema, handlers: &[String]) -> Result<String, NodeError> {
    let mut out = format!(
        "# Written by `veil node install`; `veil node uninstall` removes it.\nversion = {}\n",
        schema.number()
    );
    let annotations = POD_ANNOTATIONS
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    for h in handlers {
        let (name, _, _) = handler(h)?;
        let table = format!("{}.{name}", schema.runtimes_table());
        out.push_str(&format!(
            "\n[{table}]\n  runtime_type = {:?}\n  runtime_path = {:?}\n  pod_annotations = [{annotations}]\n  privileged_without_host_devices = true\n",
            runtime_type_of(name),
            shim_path_of(name)
        ));
    }
    Ok(out)
}

fn handler(h: &str) -> Result<(&'static str, &'static str, &'static str), NodeError> {
    HANDLERS
        .iter()
        .find(|(n, _, _)| *n == h)
        .copied()
        .ok_or_else(|| {
            NodeError::Refused(format!(
                "unknown handler {h:?} (expected one of {})",
                HANDLERS
                    .iter()
                    .map(|(n, _, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
}

/// The shim config (`/etc/veil/shim.toml`, crates/shim's format) for `handlers`.
pub fn shim_config(handlers: &[String]) -> Result<String, NodeError> {
    let mut out = String::from(
        "# veil shim config: one table per RuntimeClass handler (docs/kubernetes.md).\n\
         # Written by `veil node install`; edit it to set each handler's KBS\n\
         # (kbs_url, kbs_ca) and resources (vcpus, memory_mib).\n",
    );
    for h in handlers {
        let (name, sandbox, tee) = handler(h)?;
        out.push_str(&format!(
            "\n[handlers.{name}]\nsandbox = {sandbox:?}\ntee = {tee:?}\n"
        ));
    }
    Ok(out)
}

/// Add `entry` to the top-level `imports` array of `doc` (creating it).
fn add_import(doc: &mut toml_edit::DocumentMut, entry: &str) -> Result<bool, NodeError> {
    let item = doc
        .entry("imports")
        .or_insert_with(|| toml_edit::value(toml_edit::Array::new()));
    let arr = item.as_array_mut().ok_or_else(|| {
        NodeError::Refused("the containerd config's `imports` is not an array".into())
    })?;
    if arr.iter().any(|v| v.as_str() == Some(entry)) {
        return Ok(false);
    }
    arr.push(entry);
    Ok(true)
}

/// Remove `entry` from `imports`; drop `imports` when install made it and
/// it is empty now.
fn remove_import(doc: &mut toml_edit::DocumentMut, entry: &str, created: bool) -> bool {
    let Some(arr) = doc.get_mut("imports").and_then(|i| i.as_array_mut()) else {
        return false;
    };
    let before = arr.len();
    arr.retain(|v| v.as_str() != Some(entry));
    let removed = arr.len() != before;
    if created && arr.is_empty() {
        doc.remove("imports");
    }
    removed
}

/// The new main config: `original` (or a fresh one) importing the drop-in.
fn main_config(
    original: Option<toml_edit::DocumentMut>,
    schema: Schema,
) -> Result<Vec<u8>, NodeError> {
    let mut doc = match original {
        Some(d) => d,
        None => format!("version = {}\n", schema.number())
            .parse::<toml_edit::DocumentMut>()
            .map_err(|e| NodeError::Refused(e.to_string()))?,
    };
    add_import(&mut doc, &format!("/{DROP_IN}"))?;
    Ok(doc.to_string().into_bytes())
}

fn load_state(root: &Path) -> Result<Option<State>, NodeError> {
    let p = root.join(STATE_DIR).join("state.json");
    match read_bounded(&p)? {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
            NodeError::Refused(format!(
                "{}: not a veil install state ({e}); remove it only if veil is not installed",
                p.display()
            ))
        }),
    }
}

/// Install veil on the node under `o.root`. Idempotent.
pub fn install(o: &InstallOptions) -> Result<Report, NodeError> {
    let mut report = Report::default();
    if !o.root.is_dir() {
        return Err(NodeError::Refused(format!(
            "the node root {} is not a directory (expected / or the node's root mounted, e.g. /host)",
            o.root.display()
        )));
    }
    if o.handlers.is_empty() {
        return Err(NodeError::Refused(
            "no handlers to install (expected at least one of veil, veil-vm-sim, veil-vm-snp, veil-vm-tdx)".into(),
        ));
    }
    let mut handlers: Vec<String> = Vec::new();
    for h in &o.handlers {
        handler(h)?;
        if !handlers.contains(h) {
            handlers.push(h.clone());
        }
    }
    let shim = fs::read(&o.shim).map_err(|e| {
        NodeError::Refused(format!(
            "reading the shim {}: {e} (build it with `cargo build --bin {SHIM_BINARY}`, or pass --shim PATH)",
            o.shim.display()
        ))
    })?;
    let cfg_rel = rel(&o.containerd_config);
    let cfg_path = o.root.join(&cfg_rel);
    let previous = load_state(&o.root)?;
    if let Some(s) = &previous
        && s.containerd_config != cfg_rel
    {
        return Err(NodeError::Refused(format!(
            "veil is installed for containerd config /{} already; uninstall first to switch to /{cfg_rel}",
            s.containerd_config
        )));
    }
    let current = read_bounded(&cfg_path)?;
    // Parsed once: its schema, whether it had `imports`, and the edit.
    let current_doc = current
        .as_deref()
        .map(|b| parse(b, &cfg_path))
        .transpose()?;
    let doc_schema = match &current_doc {
        Some(d) => declared_schema(d, &cfg_path)?,
        None => None,
    };
    let had_imports = current_doc
        .as_ref()
        .is_some_and(|d| d.get("imports").is_some());
    let schema = match (o.schema, doc_schema, &o.containerd_version) {
        (Some(s), Some(d), _) if s != d => {
            return Err(NodeError::Refused(format!(
                "{}: declares config version {} but version {} was asked for",
                cfg_path.display(),
                d.number(),
                s.number()
            )));
        }
        (Some(s), _, _) | (None, Some(s), _) => s,
        (None, None, Some(v)) => Schema::for_containerd(v)?,
        (None, None, None) => {
            return Err(NodeError::Refused(format!(
                "cannot tell which config schema containerd reads: {} has no `version` and containerd's version is unknown (pass --containerd-version or --schema)",
                cfg_path.display()
            )));
        }
    };

    // Everything is computed (and so checked) before anything is written.
    let new_cfg = main_config(current_doc, schema)?;
    let drop_in_text = drop_in(schema, &handlers)?;

    let state_dir = o.root.join(STATE_DIR);
    let mut dirs = previous
        .as_ref()
        .map(|s| s.dirs.clone())
        .unwrap_or_default();
    make_dirs(&o.root, STATE_DIR, &mut dirs)?;
    // The original main config, saved once, before anything changes.
    let orig = state_dir.join("containerd-config.orig");
    if previous.is_none()
        && let Some(b) = &current
    {
        write_file(&orig, b, 0o600)?;
    }

    let mut files: Vec<(String, Vec<u8>, u32)> = vec![
        (SHIM_PATH.to_string(), shim, 0o755),
        (DROP_IN.to_string(), drop_in_text.into_bytes(), 0o644),
    ];
    files.push((
        SHIM_CONFIG.to_string(),
        shim_config(&handlers)?.into_bytes(),
        0o644,
    ));
    let mut written = Vec::new();
    for (path, bytes, mode) in &files {
        let p = o.root.join(path);
        if let Some(parent) = Path::new(path).parent() {
            make_dirs(&o.root, &parent.to_string_lossy(), &mut dirs)?;
        }
        let ours = previous
            .as_ref()
            .and_then(|s| s.files.iter().find(|f| &f.path == path));
        // A shim config the operator edited is theirs now: keep it.
        if path == SHIM_CONFIG
            && let Some(old) = read_bounded(&p)?
            && ours.is_none_or(|f| f.sha256 != sha256_hex(&old))
        {
            report.warnings.push(format!(
                "/{path}: kept as it is (it was changed after install or was there before)"
            ));
            if let Some(f) = ours {
                written.push(f.clone());
            }
            continue;
        }
        if write_file(&p, bytes, *mode)? {
            report.changed.push(format!("/{path}"));
        }
        written.push(Written {
            path: path.clone(),
            sha256: sha256_hex(bytes),
        });
    }
    // A link per handler other than veil: its name tells the shim its handler.
    let mut links = Vec::new();
    for h in handlers.iter().filter(|h| h.as_str() != "veil") {
        let link = shim_path_of(h).trim_start_matches('/').to_string();
        let p = o.root.join(&link);
        match fs::read_link(&p) {
            Ok(t) if t == Path::new(node_shim_name()) => {}
            Ok(_) | Err(_) if fs::symlink_metadata(&p).is_ok() => {
                return Err(NodeError::Refused(format!(
                    "{}: exists and is not veil's link to {}; remove it or leave handler {h} out",
                    p.display(),
                    node_shim_name()
                )));
            }
            _ => {
                std::os::unix::fs::symlink(node_shim_name(), &p).map_err(io(&p))?;
                report.changed.push(format!("/{link}"));
            }
        }
        links.push(link);
    }
    if let Some(s) = &previous {
        for l in s.links.iter().filter(|l| !links.contains(l)) {
            remove_link_if_ours(&o.root, l, &mut report)?;
        }
    }
    // Files a previous install wrote for handlers not asked for now.
    if let Some(s) = &previous {
        for f in &s.files {
            if !written.iter().any(|w| w.path == f.path) {
                remove_if_ours(&o.root, f, &mut report)?;
            }
        }
    }

    let parent = Path::new(&cfg_rel)
        .parent()
        .map(|p| p.to_string_lossy().into_owned());
    if let Some(parent) = parent {
        make_dirs(&o.root, &parent, &mut dirs)?;
    }
    let cfg_mode = mode_of(&cfg_path);
    if write_file(&cfg_path, &new_cfg, cfg_mode)? {
        report.changed.push(format!("/{cfg_rel}"));
    }
    let imports_created = match &previous {
        Some(s) => s.imports_created,
        None => !had_imports,
    };
    let state = State {
        imports_created,
        schema,
        containerd_config: cfg_rel,
        config_existed: previous
            .as_ref()
            .map(|s| s.config_existed)
            .unwrap_or(current.is_some()),
        config_written_sha256: sha256_hex(&new_cfg),
        files: written,
        dirs,
        links,
    };
    let json = serde_json::to_vec_pretty(&state).map_err(|e| NodeError::Refused(e.to_string()))?;
    write_file(&state_dir.join("state.json"), &json, 0o600)?;
    Ok(report)
}

/// What the per-handler links point to (a sibling in the same directory).
fn node_shim_name() -> &'static str {
    SHIM_BINARY
}

fn remove_link_if_ours(root: &Path, link: &str, report: &mut Report) -> Result<(), NodeError> {
    let p = root.join(link);
    match fs::read_link(&p) {
        Ok(t) if t == Path::new(node_shim_name()) => {
            fs::remove_file(&p).map_err(io(&p))?;
            report.changed.push(format!("/{link}"));
        }
        Ok(_) => report
            .warnings
            .push(format!("/{link}: left in place (changed after install)")),
        Err(_) => {}
    }
    Ok(())
}

fn remove_if_ours(root: &Path, f: &Written, report: &mut Report) -> Result<(), NodeError> {
    let p = root.join(&f.path);
    match read_bounded(&p)? {
        None => {}
        Some(b) if sha256_hex(&b) == f.sha256 => {
            fs::remove_file(&p).map_err(io(&p))?;
            report.changed.push(format!("/{}", f.path));
        }
        Some(_) => report.warnings.push(format!(
            "/{}: left in place (changed after install)",
            f.path
        )),
    }
    Ok(())
}

/// Undo [`install`] under `root`: the node as it was before. Idempotent.
pub fn uninstall(root: &Path) -> Result<Report, NodeError> {
    let mut report = Report::default();
    let Some(state) = load_state(root)? else {
        report.warnings.push(format!(
            "veil is not installed here (no /{STATE_DIR}/state.json): nothing to do"
        ));
        return Ok(report);
    };
    let cfg_path = root.join(&state.containerd_config);
    let orig_path = root.join(STATE_DIR).join("containerd-config.orig");
    let current = read_bounded(&cfg_path)?;
    match current {
        Some(b) if sha256_hex(&b) == state.config_written_sha256 => {
            if state.config_existed {
                let orig = read_bounded(&orig_path)?.ok_or_else(|| {
                    NodeError::Refused(format!(
                        "{}: the saved original containerd config is missing; the config keeps veil's import",
                        orig_path.display()
                    ))
                })?;
                let mode = mode_of(&cfg_path);
                write_file(&cfg_path, &orig, mode)?;
            } else {
                fs::remove_file(&cfg_path).map_err(io(&cfg_path))?;
            }
            report.changed.push(format!("/{}", state.containerd_config));
        }
        Some(b) => {
            let mut doc = parse(&b, &cfg_path)?;
            if remove_import(&mut doc, &format!("/{DROP_IN}"), state.imports_created) {
                let mode = mode_of(&cfg_path);
                write_file(&cfg_path, doc.to_string().as_bytes(), mode)?;
                report.changed.push(format!("/{}", state.containerd_config));
            }
            report.warnings.push(format!(
                "/{}: changed since install, so only veil's import was removed (the original is not restored)",
                state.containerd_config
            ));
        }
        None => report.warnings.push(format!(
            "/{}: gone since install; not recreated",
            state.containerd_config
        )),
    }
    for l in &state.links {
        remove_link_if_ours(root, l, &mut report)?;
    }
    for f in &state.files {
        remove_if_ours(root, f, &mut report)?;
    }
    let _ = fs::remove_file(&orig_path);
    let state_file = root.join(STATE_DIR).join("state.json");
    fs::remove_file(&state_file).map_err(io(&state_file))?;
    for d in state.dirs.iter().rev() {
        // Only empty directories go: anything else was put there by someone else.
        let _ = fs::remove_dir(root.join(d));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGINAL: &str = "# the operator's config\nversion = 2\n\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  default_runtime_name = \"runc\"   # keep this comment\n";

    fn opts(root: &Path) -> InstallOptions {
        let shim = root.join("shim-src");
        fs::write(&shim, b"#!/bin/sh\n").unwrap();
        InstallOptions {
            root: root.to_path_buf(),
            containerd_config: PathBuf::from("/etc/containerd/config.toml"),
            handlers: vec!["veil".into(), "veil-vm-sim".into()],
            shim,
            schema: None,
            containerd_version: None,
        }
    }

    fn snapshot(root: &Path) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let e = e.unwrap();
                let p = e.path();
                let r = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                if e.file_type().unwrap().is_dir() {
                    out.push((format!("{r}/"), Vec::new()));
                    stack.push(p);
                } else {
                    out.push((r, fs::read(&p).unwrap()));
                }
            }
        }
        out.sort();
        out
    }

    #[test]
    fn install_twice_is_once_and_uninstall_restores_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/containerd")).unwrap();
        fs::write(root.join(CONTAINERD_CONFIG), ORIGINAL).unwrap();
        let o = opts(root);
        let before = snapshot(root);
        let first = install(&o).unwrap();
        assert!(
            first
                .changed
                .contains(&"/etc/containerd/config.toml".to_string())
        );
        let after_one = snapshot(root);
        let second = install(&o).unwrap();
        assert_eq!(second.changed, Vec::<String>::new(), "{second:?}");
        assert_eq!(snapshot(root), after_one);
        let cfg = fs::read_to_string(root.join(CONTAINERD_CONFIG)).unwrap();
        // One line added; every other byte is the operator's.
        assert_eq!(
            cfg.replace("imports = [\"/etc/veil/containerd/veil.toml\"]\n", ""),
            ORIGINAL,
            "{cfg}"
        );
        let drop = fs::read_to_string(root.join(DROP_IN)).unwrap();
        assert!(drop.contains("version = 2"));
        assert!(
            drop.contains(
                r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.veil-vm-sim]"#
            )
        );
        assert!(drop.contains("runtime_type = \"io.containerd.veil.v2\""));
        assert!(drop.contains("runtime_type = \"io.containerd.veil-vm-sim.v2\""));
        assert!(drop.contains("runtime_path = \"/usr/local/bin/containerd-shim-veil-vm-sim-v2\""));
        assert_eq!(
            fs::read_link(root.join("usr/local/bin/containerd-shim-veil-vm-sim-v2")).unwrap(),
            Path::new("containerd-shim-veil-v2")
        );
        let shim_toml = fs::read_to_string(root.join(SHIM_CONFIG)).unwrap();
        assert!(
            shim_toml.contains("[handlers.veil-vm-sim]\nsandbox = \"vm\"\ntee = \"sim\""),
            "{shim_toml}"
        );
        uninstall(root).unwrap();
        assert_eq!(snapshot(root), before);
        let again = uninstall(root).unwrap();
        assert!(again.changed.is_empty());
    }

    #[test]
    fn a_node_without_a_config_gets_one_and_loses_it_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut o = opts(root);
        let before = snapshot(root);
        let e = install(&o).unwrap_err().to_string();
        assert!(e.contains("--containerd-version"), "{e}");
        assert_eq!(snapshot(root), before, "a refused install changes nothing");
        o.containerd_version = Some("2.0.4".into());
        install(&o).unwrap();
        let cfg = fs::read_to_string(root.join(CONTAINERD_CONFIG)).unwrap();
        assert!(cfg.contains("version = 3"), "{cfg}");
        let drop = fs::read_to_string(root.join(DROP_IN)).unwrap();
        assert!(
            drop.contains(r#"plugins."io.containerd.cri.v1.runtime".containerd.runtimes.veil]"#)
        );
        uninstall(root).unwrap();
        assert_eq!(snapshot(root), before);
    }

    #[test]
    fn a_config_edited_after_install_keeps_the_edit_and_loses_only_the_import() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/containerd")).unwrap();
        fs::write(root.join(CONTAINERD_CONFIG), ORIGINAL).unwrap();
        install(&opts(root)).unwrap();
        let mut cfg = fs::read_to_string(root.join(CONTAINERD_CONFIG)).unwrap();
        cfg.push_str("\n[debug]\n  level = \"debug\"\n");
        fs::write(root.join(CONTAINERD_CONFIG), &cfg).unwrap();
        let r = uninstall(root).unwrap();
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains("changed since install")),
            "{r:?}"
        );
        let now = fs::read_to_string(root.join(CONTAINERD_CONFIG)).unwrap();
        assert!(now.contains("level = \"debug\""));
        assert!(!now.contains("veil"), "{now}");
        assert!(!root.join(DROP_IN).exists());
    }

    #[test]
    fn bad_input_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("etc/containerd")).unwrap();
        let mut o = opts(root);
        for (cfg, want) in [
            ("version = 1\n", "config version 1 is not supported"),
            ("version = 2\nimports = \"x\"\n", "not an array"),
            ("version = [\n", "not valid TOML"),
        ] {
            fs::write(root.join(CONTAINERD_CONFIG), cfg).unwrap();
            let before = snapshot(root);
            let e = install(&o).unwrap_err().to_string();
            assert!(e.contains(want), "{cfg}: {e}");
            assert_eq!(
                snapshot(root),
                before,
                "{cfg}: a refused install changes nothing"
            );
        }
        fs::write(root.join(CONTAINERD_CONFIG), ORIGINAL).unwrap();
        let mut elsewhere = o.clone();
        elsewhere.root = root.join("missing");
        let e = install(&elsewhere).unwrap_err().to_string();
        assert!(e.contains("is not a directory"), "{e}");
        o.handlers = vec!["kata".into()];
        let e = install(&o).unwrap_err().to_string();
        assert!(e.contains("unknown handler \"kata\""), "{e}");
        assert!(e.contains("veil-vm-snp"), "{e}");
        assert_eq!(Schema::for_containerd("1.6.20~ds1").unwrap(), Schema::V2);
        assert_eq!(Schema::for_containerd("v2.1.0").unwrap(), Schema::V3);
        assert!(Schema::for_containerd("1.5.9").is_err());
    }
}
