//! `/etc/veil/shim.toml`: one table per runtime handler (the name a
//! RuntimeClass gives containerd), e.g.
//!
//! ```toml
//! [handlers.veil]
//! sandbox = "process"
//! tee = "sim"
//!
//! [handlers.veil-vm-snp]
//! sandbox = "vm"
//! tee = "snp"
//! kbs_url = "https://kbs.example:8080"
//! kbs_ca = "/etc/veil/kbs-ca.pem"
//! vcpus = 2
//! memory_mib = 2048
//! ```
//!
//! Which file: `$VEIL_SHIM_CONFIG` if set, else `/etc/veil/shim.toml`, else
//! (no file at all) the built-in handler `veil` = process sandbox, sim TEE. Which handler: the container's
//! `io.kubernetes.cri.runtime-handler` annotation (containerd ≥ 1.7's CRI
//! sets it), else `veil`. A handler the file does not define is refused.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The system-wide config file.
pub const DEFAULT_PATH: &str = "/etc/veil/shim.toml";
/// Environment variable naming another config file (tests, staging).
pub const ENV_VAR: &str = "VEIL_SHIM_CONFIG";
/// The handler used when the container names none.
pub const DEFAULT_HANDLER: &str = "veil";

/// The runtime handler a container runs under: the CRI's
/// `io.kubernetes.cri.runtime-handler` annotation (containerd ≥ 1.7), else
/// the name the shim was started by (`veil node install` gives each handler
/// its own `containerd-shim-<handler>-v2` link and `runtime_path`, which
/// containerd 1.6 runs), else [`DEFAULT_HANDLER`].
pub fn handler_name(
    annotations: &std::collections::BTreeMap<String, String>,
    argv0: Option<&std::ffi::OsStr>,
) -> String {
    if let Some(h) = annotations.get(crate::annotations::RUNTIME_HANDLER) {
        return h.clone();
    }
    argv0
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("containerd-shim-"))
        .and_then(|n| n.strip_suffix("-v2"))
        .filter(|h| !h.is_empty())
        .unwrap_or(DEFAULT_HANDLER)
        .to_string()
}
/// Largest config file read.
pub const MAX_CONFIG_BYTES: u64 = 256 * 1024;

/// Config errors: each names the file and what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading the shim config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the shim config {path} is larger than {MAX_CONFIG_BYTES} bytes")]
    TooLarge { path: PathBuf },
    #[error("the shim config {path} is not valid: {reason}")]
    Invalid { path: String, reason: String },
    #[error(
        "runtime handler {handler:?} is not configured in {path}: it defines {defined:?}; add a [handlers.{handler}] table"
    )]
    UnknownHandler {
        handler: String,
        path: String,
        defined: Vec<String>,
    },
}

/// Which sandbox runs a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SandboxKind {
    /// veil-agent in its own namespaces on the host (no hardware protection).
    #[default]
    Process,
    /// One QEMU VM per pod.
    Vm,
}

/// The TEE a handler launches under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Tee {
    #[default]
    Sim,
    None,
    Snp,
    Tdx,
}

/// One runtime handler's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HandlerConfig {
    #[serde(default)]
    pub sandbox: SandboxKind,
    #[serde(default)]
    pub tee: Tee,
    /// The KBS this handler's pods must attest to: a pod whose init-data
    /// (`aa.toml`) names another KBS, or none, is refused. The guest trusts
    /// only the KBS its measured init-data names; this lets the operator
    /// pin which one that is on these nodes.
    pub kbs_url: Option<String>,
    /// PEM file of the certificate (or CA) the init-data must pin for
    /// `kbs_url` (`aa.toml`'s `cert`).
    pub kbs_ca: Option<PathBuf>,
    /// VM sandbox resources.
    pub vcpus: Option<u32>,
    pub memory_mib: Option<u32>,
    /// containerd's root (its content store holds the images' blobs).
    #[serde(default = "default_containerd_root")]
    pub containerd_root: PathBuf,
    /// Where sandboxes' runtime dirs and records go.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The veil-agent binary: the process sandbox's agent, and the one a
    /// VM's guest image is built from when `kernel`/`initrd` are not given.
    pub agent: Option<PathBuf>,
    /// VM sandbox: the QEMU binary (default `qemu-system-x86_64` from `PATH`).
    pub qemu: Option<PathBuf>,
    /// VM sandbox: QEMU's accelerator, `kvm` or `tcg` (default: KVM when it
    /// works here, else TCG, as `veil run --accel auto`).
    pub accel: Option<Accel>,
    /// VM sandbox: the guest kernel and initrd (`veil guest build`'s
    /// `boot_kernel` and `initrd.img`), both or neither; default: the
    /// image built into `<data_dir>/guest` from `agent`.
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    /// VM sandbox: OVMF (SNP) or TDVF (TDX).
    pub firmware: Option<PathBuf>,
    /// Where the pod's images are pulled: `host` (default: containerd's
    /// content store, as the kubelet pulled them, handed to the sandbox as
    /// an OCI layout the guest checks) or `guest` (the agent pulls each
    /// image from its registry by the digest the policy pins, over the
    /// pod's network; the host never holds a layer).
    #[serde(default)]
    pub pull: Pull,
}

/// Where a handler's pods get their images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pull {
    /// From containerd's content store, as an OCI layout.
    #[default]
    Host,
    /// From the registries, inside the sandbox.
    Guest,
}

/// QEMU's accelerator for a VM handler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

fn default_containerd_root() -> PathBuf {
    "/var/lib/containerd".into()
}
fn default_data_dir() -> PathBuf {
    "/var/lib/veil".into()
}

impl Default for HandlerConfig {
    fn default() -> Self {
        HandlerConfig {
            sandbox: SandboxKind::Process,
            tee: Tee::Sim,
            kbs_url: None,
            kbs_ca: None,
            vcpus: None,
            memory_mib: None,
            containerd_root: default_containerd_root(),
            data_dir: default_data_dir(),
            agent: None,
            qemu: None,
            accel: None,
            kernel: None,
            initrd: None,
            firmware: None,
            pull: Pull::Host,
        }
    }
}

#[derive(Deserialize, Default)]
struct AaToml {
    #[serde(default)]
    token_configs: TokenConfigs,
}
#[derive(Deserialize, Default)]
struct TokenConfigs {
    kbs: Option<KbsConfig>,
}
#[derive(Deserialize)]
struct KbsConfig {
    url: String,
    #[serde(default)]
    cert: String,
}

impl HandlerConfig {
    /// The shim's own dir for the sandbox of containerd's `namespace`/`id`
    /// (the image layout it hands the sandbox).
    pub fn shim_dir(&self, namespace: &str, id: &str) -> PathBuf {
        self.data_dir.join("shim").join(namespace).join(id)
    }

    /// Check the pod's init-data against `kbs_url`/`kbs_ca`.
    pub fn check_kbs(
        &self,
        handler: &str,
        init_data: &veil_policy::initdata::ParsedInitData,
    ) -> Result<(), String> {
        let Some(want) = &self.kbs_url else {
            return Ok(());
        };
        let kbs = match init_data.init_data.data.get(veil_policy::initdata::AA_KEY) {
            Some(t) => {
                toml::from_str::<AaToml>(t)
                    .map_err(|e| format!("init-data aa.toml: {e}"))?
                    .token_configs
                    .kbs
            }
            None => None,
        };
        let Some(kbs) = kbs else {
            return Err(format!(
                "runtime handler {handler:?} requires pods to attest to the KBS {want}, but the pod's init-data names no KBS; generate it with `veil policy generate --kbs-url {want}`"
            ));
        };
        if kbs.url.trim_end_matches('/') != want.trim_end_matches('/') {
            return Err(format!(
                "runtime handler {handler:?} requires the KBS {want}, the pod's init-data names {}: generate the policy for {want}, or use a handler for that KBS",
                kbs.url
            ));
        }
        if let Some(ca) = &self.kbs_ca {
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| format!("reading kbs_ca {}: {e}", ca.display()))?;
            if pem.trim() != kbs.cert.trim() {
                return Err(format!(
                    "runtime handler {handler:?} pins the KBS certificate in {}, the pod's init-data pins another one (aa.toml cert): generate the policy with that certificate",
                    ca.display()
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    handlers: BTreeMap<String, HandlerConfig>,
}

/// The loaded config and where it came from.
#[derive(Debug)]
pub struct ShimConfig {
    /// The file read, or `None` for the built-in default.
    pub source: Option<PathBuf>,
    handlers: BTreeMap<String, HandlerConfig>,
}

impl ShimConfig {
    /// Load by the documented precedence (`$VEIL_SHIM_CONFIG`, then
    /// `/etc/veil/shim.toml`, then the built-in default).
    pub fn load() -> Result<Self, ConfigError> {
        if let Some(p) = std::env::var_os(ENV_VAR) {
            return Self::from_file(Path::new(&p));
        }
        match Self::from_file(Path::new(DEFAULT_PATH)) {
            Err(ConfigError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(Self::builtin())
            }
            r => r,
        }
    }

    /// The built-in config: handler `veil` with the defaults.
    pub fn builtin() -> Self {
        ShimConfig {
            source: None,
            handlers: BTreeMap::from([(DEFAULT_HANDLER.to_string(), HandlerConfig::default())]),
        }
    }

    /// Read and validate one file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let read = |source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        };
        let mut text = String::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_CONFIG_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read)?;
        if text.len() as u64 > MAX_CONFIG_BYTES {
            return Err(ConfigError::TooLarge {
                path: path.to_path_buf(),
            });
        }
        let mut c = Self::parse(&text, &path.display().to_string())?;
        c.source = Some(path.to_path_buf());
        Ok(c)
    }

    /// Parse config text (`label` names it in errors).
    pub fn parse(text: &str, label: &str) -> Result<Self, ConfigError> {
        let f: File = toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: label.into(),
            reason: e.to_string(),
        })?;
        for (name, h) in &f.handlers {
            if h.sandbox == SandboxKind::Process && !matches!(h.tee, Tee::Sim) {
                return Err(ConfigError::Invalid {
                    path: label.into(),
                    reason: format!(
                        "handler {name}: the process sandbox runs only with tee = \"sim\" (got {:?}); use sandbox = \"vm\" for none/snp/tdx",
                        h.tee
                    ),
                });
            }
            if h.kernel.is_some() != h.initrd.is_some() {
                return Err(ConfigError::Invalid {
                    path: label.into(),
                    reason: format!(
                        "handler {name}: kernel and initrd go together (a guest image from `veil guest build`); give both, or neither for the image built from `agent`"
                    ),
                });
            }
            let vm_only = [
                ("qemu", h.qemu.is_some()),
                ("accel", h.accel.is_some()),
                ("kernel", h.kernel.is_some()),
                ("firmware", h.firmware.is_some()),
                ("vcpus", h.vcpus.is_some()),
                ("memory_mib", h.memory_mib.is_some()),
            ];
            if let Some((key, _)) = vm_only
                .iter()
                .find(|(_, set)| *set && h.sandbox == SandboxKind::Process)
            {
                return Err(ConfigError::Invalid {
                    path: label.into(),
                    reason: format!(
                        "handler {name}: {key} is a VM setting, and this handler runs the process sandbox; set sandbox = \"vm\" or remove {key}"
                    ),
                });
            }
        }
        Ok(ShimConfig {
            source: None,
            handlers: f.handlers,
        })
    }

    /// The settings of `handler`.
    pub fn handler(&self, handler: &str) -> Result<&HandlerConfig, ConfigError> {
        self.handlers
            .get(handler)
            .ok_or_else(|| ConfigError::UnknownHandler {
                handler: handler.into(),
                path: self.source.as_ref().map_or_else(
                    || "the built-in config (no shim.toml)".into(),
                    |p| p.display().to_string(),
                ),
                defined: self.handlers.keys().cloned().collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handlers_and_defaults() {
        let c = ShimConfig::parse(
            "[handlers.veil]\n[handlers.veil-vm-snp]\nsandbox = \"vm\"\ntee = \"snp\"\nkbs_url = \"https://kbs\"\nvcpus = 2\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.handler("veil").unwrap(), &HandlerConfig::default());
        let snp = c.handler("veil-vm-snp").unwrap();
        assert_eq!(
            (snp.sandbox, snp.tee, snp.vcpus),
            (SandboxKind::Vm, Tee::Snp, Some(2))
        );
        let e = c.handler("kata-cc").unwrap_err().to_string();
        assert!(
            e.contains("\"kata-cc\"")
                && e.contains("[handlers.kata-cc]")
                && e.contains("veil-vm-snp"),
            "{e}"
        );
    }

    #[test]
    fn refuses_unknown_keys_and_impossible_combinations() {
        let e = ShimConfig::parse("[handlers.veil]\ntee_kind = \"sim\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.toml") && e.contains("tee_kind"), "{e}");
        let e = ShimConfig::parse("[handlers.veil]\ntee = \"snp\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sandbox = \\\"vm\\\"") || e.contains("sandbox = \"vm\""),
            "{e}"
        );
    }

    #[test]
    fn vm_settings_need_a_vm_handler_and_a_whole_guest_image() {
        let c = ShimConfig::parse(
            "[handlers.v]\nsandbox = \"vm\"\naccel = \"tcg\"\nqemu = \"/q\"\nkernel = \"/k\"\ninitrd = \"/i\"\n",
            "t",
        )
        .unwrap();
        let v = c.handler("v").unwrap();
        assert_eq!((v.accel, v.kernel.is_some()), (Some(Accel::Tcg), true));
        let e = ShimConfig::parse("[handlers.v]\nsandbox = \"vm\"\nkernel = \"/k\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kernel and initrd go together"), "{e}");
        let e = ShimConfig::parse("[handlers.veil]\naccel = \"kvm\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("accel is a VM setting"), "{e}");
        let e = ShimConfig::parse("[handlers.v]\nsandbox = \"vm\"\naccel = \"hvf\"\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hvf"), "{e}");
    }

    #[test]
    fn kbs_pin() {
        let c = ShimConfig::parse(
            "[handlers.veil]\nkbs_url = \"https://kbs.example:8080\"\n",
            "t",
        )
        .unwrap();
        let h = c.handler("veil").unwrap();
        let with = |aa: Option<&str>| {
            let mut d = veil_policy::initdata::InitData::new(Default::default());
            d.data
                .insert("policy.rego".into(), "package agent_policy\n".into());
            if let Some(aa) = aa {
                d.data.insert("aa.toml".into(), aa.into());
            }
            veil_policy::initdata::ParsedInitData::parse(d.to_toml().unwrap().as_bytes()).unwrap()
        };
        assert!(
            h.check_kbs(
                "veil",
                &with(Some(
                    "[token_configs.kbs]\nurl = \"https://kbs.example:8080/\"\n"
                ))
            )
            .is_ok()
        );
        let e = h
            .check_kbs(
                "veil",
                &with(Some("[token_configs.kbs]\nurl = \"https://evil:1\"\n")),
            )
            .unwrap_err();
        assert!(
            e.contains("https://evil:1") && e.contains("https://kbs.example:8080"),
            "{e}"
        );
        assert!(
            h.check_kbs("veil", &with(None))
                .unwrap_err()
                .contains("names no KBS")
        );
    }

    #[test]
    fn builtin_has_only_veil() {
        let c = ShimConfig::builtin();
        assert!(c.handler("veil").is_ok());
        assert!(
            c.handler("veil-vm-snp")
                .unwrap_err()
                .to_string()
                .contains("built-in")
        );
    }

    #[test]
    fn the_handler_comes_from_the_annotation_then_the_binary_name() {
        use std::collections::BTreeMap;
        use std::ffi::OsStr;
        let none = BTreeMap::new();
        assert_eq!(handler_name(&none, None), "veil");
        let link = OsStr::new("/usr/local/bin/containerd-shim-veil-vm-snp-v2");
        assert_eq!(handler_name(&none, Some(link)), "veil-vm-snp");
        let plain = OsStr::new("/usr/local/bin/containerd-shim-veil-v2");
        assert_eq!(handler_name(&none, Some(plain)), "veil");
        assert_eq!(handler_name(&none, Some(OsStr::new("shim"))), "veil");
        let cri = BTreeMap::from([(
            crate::annotations::RUNTIME_HANDLER.to_string(),
            "veil-vm-tdx".to_string(),
        )]);
        assert_eq!(handler_name(&cri, Some(link)), "veil-vm-tdx");
    }

    /// The shim reads the config `veil node install` writes, with every
    /// handler's sandbox and TEE as the RuntimeClass names promise.
    #[test]
    fn reads_what_veil_node_install_writes() {
        let all: Vec<String> = veil_runtime::node::HANDLERS
            .iter()
            .map(|(n, _, _)| n.to_string())
            .collect();
        let text = veil_runtime::node::shim_config(&all).unwrap();
        let c = ShimConfig::parse(&text, "node install").unwrap();
        for (name, sandbox, tee) in veil_runtime::node::HANDLERS {
            let h = c.handler(name).unwrap();
            let want_sandbox = if *sandbox == "vm" {
                SandboxKind::Vm
            } else {
                SandboxKind::Process
            };
            let want_tee = match *tee {
                "snp" => Tee::Snp,
                "tdx" => Tee::Tdx,
                _ => Tee::Sim,
            };
            assert_eq!((h.sandbox, h.tee), (want_sandbox, want_tee), "{name}");
        }
    }
}
