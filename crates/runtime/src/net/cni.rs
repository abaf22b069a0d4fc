//! Running CNI plugins as the CNI specification (1.0) says a runtime does:
//! for each plugin of a network configuration list, in order, the plugin
//! binary found in `CNI_PATH` gets `CNI_COMMAND`, `CNI_CONTAINERID`,
//! `CNI_NETNS`, `CNI_IFNAME`, `CNI_PATH` in its environment and its
//! configuration (with `name`, `cniVersion`, `runtimeConfig` for the
//! capabilities it declares and the previous plugin's result as
//! `prevResult`) on stdin; it answers with a result or an error as JSON.
//! DEL runs the plugins in reverse order with the cached ADD result.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The CNI version veil writes (Debian bookworm's plugins 1.1.1 speak it).
pub const VERSION: &str = "1.0.0";
/// The most a plugin may print.
const OUTPUT_LIMIT: u64 = 1 << 20;

/// One network configuration list attached to the namespace on one
/// interface, with what ADD returned.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attachment {
    /// `CNI_IFNAME`.
    pub ifname: String,
    /// The conflist (`{"cniVersion","name","plugins":[…]}`).
    pub conflist: Value,
    /// The runtime config (`portMappings`…), given to the plugins that
    /// declare the capability, on ADD and on DEL.
    #[serde(default)]
    pub runtime: Value,
    /// The result of the last plugin's ADD, once it succeeded.
    #[serde(default)]
    pub result: Option<Value>,
}

impl Attachment {
    /// An attachment of `conflist` on `ifname`, not added yet.
    pub fn new(ifname: &str, conflist: Value, runtime: Value) -> Self {
        Attachment {
            ifname: ifname.into(),
            conflist,
            runtime,
            result: None,
        }
    }
}

/// A plugin failed or could not be run.
#[derive(Debug, thiserror::Error)]
#[error("CNI {command} of plugin {plugin} (network {network}): {reason}")]
pub struct CniError {
    /// `ADD` or `DEL`.
    pub command: &'static str,
    /// The plugin type.
    pub plugin: String,
    /// The network name.
    pub network: String,
    /// What went wrong (the plugin's own `msg` and `details` when it said).
    pub reason: String,
}

fn plugins(conflist: &Value) -> Vec<Map<String, Value>> {
    conflist["plugins"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p.as_object().cloned()).collect())
        .unwrap_or_default()
}

/// ADD every plugin of `att`'s list; returns the final result.
pub fn add(
    cni_path: &[PathBuf],
    container_id: &str,
    netns: &Path,
    att: &Attachment,
) -> Result<Value, CniError> {
    let mut prev: Option<Value> = None;
    for p in plugins(&att.conflist) {
        let out = exec("ADD", cni_path, container_id, netns, att, &p, prev.as_ref())?;
        prev = Some(out);
    }
    Ok(prev.unwrap_or(Value::Null))
}

/// DEL every plugin of `att`'s list, last first, with its ADD result.
/// Plugins are asked even when ADD did not finish (DEL is idempotent).
pub fn del(
    cni_path: &[PathBuf],
    container_id: &str,
    netns: &Path,
    att: &Attachment,
) -> Result<(), CniError> {
    let mut first = None;
    for p in plugins(&att.conflist).iter().rev() {
        if let Err(e) = exec(
            "DEL",
            cni_path,
            container_id,
            netns,
            att,
            p,
            att.result.as_ref(),
        ) {
            first.get_or_insert(e);
        }
    }
    first.map_or(Ok(()), Err)
}

#[allow(clippy::too_many_arguments)]
fn exec(
    command: &'static str,
    cni_path: &[PathBuf],
    container_id: &str,
    netns: &Path,
    att: &Attachment,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
) -> Result<Value, CniError> {
    let kind = plugin
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let network = att.conflist["name"].as_str().unwrap_or("").to_string();
    let fail = |reason: String| CniError {
        command,
        plugin: kind.clone(),
        network: network.clone(),
        reason,
    };
    if kind.is_empty() || kind.contains('/') {
        return Err(fail(format!("plugin type {kind:?} is not a plugin name")));
    }
    let binary = cni_path
        .iter()
        .map(|d| d.join(&kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            fail(format!(
                "no plugin binary {kind} in {} (install Debian's containernetworking-plugins, \
                 or set VEIL_CNI_PATH)",
                std::env::join_paths(cni_path)
                    .map(|p| p.to_string_lossy().into_owned())
                    .unwrap_or_default()
            ))
        })?;
    let mut conf = plugin.clone();
    conf.insert("cniVersion".into(), att.conflist["cniVersion"].clone());
    conf.insert("name".into(), Value::String(network.clone()));
    if let Some(caps) = plugin.get("capabilities").and_then(Value::as_object) {
        let mut rc = Map::new();
        for (cap, on) in caps {
            if on.as_bool() == Some(true) {
                if let Some(v) = att.runtime.get(cap) {
                    rc.insert(cap.clone(), v.clone());
                }
            }
        }
        if !rc.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(rc));
        }
    }
    if let Some(p) = prev {
        if !p.is_null() {
            conf.insert("prevResult".into(), p.clone());
        }
    }
    let stdin = serde_json::to_vec(&Value::Object(conf)).map_err(|e| fail(e.to_string()))?;
    let path = std::env::join_paths(cni_path).map_err(|e| fail(e.to_string()))?;
    let mut child = Command::new(&binary)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", netns)
        .env("CNI_IFNAME", &att.ifname)
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("starting {}: {e}", binary.display())))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(&stdin);
    }
    let mut out = Vec::new();
    if let Some(o) = child.stdout.take() {
        let _ = o.take(OUTPUT_LIMIT).read_to_end(&mut out);
    }
    let mut err = Vec::new();
    if let Some(e) = child.stderr.take() {
        let _ = e.take(OUTPUT_LIMIT).read_to_end(&mut err);
    }
    let status = child
        .wait()
        .map_err(|e| fail(format!("waiting for {}: {e}", binary.display())))?;
    if !status.success() {
        // The spec's error: {"cniVersion","code","msg","details"} on stdout.
        let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
        let msg = v["msg"].as_str().unwrap_or("");
        let details = v["details"].as_str().unwrap_or("");
        let text = if msg.is_empty() {
            String::from_utf8_lossy(if err.is_empty() { &out } else { &err })
                .trim()
                .to_string()
        } else if details.is_empty() {
            msg.to_string()
        } else {
            format!("{msg}: {details}")
        };
        return Err(fail(format!(
            "{status}, code {}: {}",
            v["code"],
            veil_text(&text)
        )));
    }
    if command == "DEL" || out.iter().all(u8::is_ascii_whitespace) {
        return Ok(prev.cloned().unwrap_or(Value::Null));
    }
    serde_json::from_slice(&out).map_err(|e| fail(format!("unreadable result: {e}")))
}

/// Control characters escaped (plugin output goes into messages and logs).
fn veil_text(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// The first IPv4 address of a result and its gateway (`10.209.0.5/16`,
/// `10.209.0.1`).
pub fn first_ipv4(result: &Value) -> Option<(String, String)> {
    result["ips"].as_array()?.iter().find_map(|ip| {
        let addr = ip["address"].as_str()?;
        if !addr.contains('.') {
            return None;
        }
        Some((
            addr.to_string(),
            ip["gateway"].as_str().unwrap_or("").to_string(),
        ))
    })
}
