//! Generation settings: what the operator configures once instead of
//! weakening every policy (platform-injected environment, default mounts,
//! the KBS the agent talks to, defaults for exec / logs / signals).
//!
//! A settings file is TOML; every key is optional and falls back to
//! [`Settings::default`]. Unknown keys are refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::binding::HashAlgorithm;
use crate::model::{MountRule, PlatformEnvRule, check_regex};

/// Largest accepted settings file, in bytes.
pub const MAX_SETTINGS_BYTES: usize = 1024 * 1024;

/// Guest directory of one sandbox, as a regex fragment (the id varies).
pub const SANDBOX_DIR_RE: &str = r"/run/veil/sandbox/[A-Za-z0-9_-][A-Za-z0-9_.-]*";

/// Settings for `veil policy generate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// Init-data digest algorithm.
    pub algorithm: HashAlgorithm,
    /// Namespace assumed when a manifest names none.
    pub namespace: String,
    pub kbs: KbsSettings,
    pub image: ImageSettings,
    pub sandbox: SandboxSettings,
    pub containers: ContainerDefaults,
    /// Platform-injected environment variables (anchored regexes).
    pub platform_env: Vec<PlatformEnvRule>,
    /// Mounts the runtime gives every container.
    pub default_mounts: Vec<MountRule>,
}

/// Where the agent's attestation and secret requests go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KbsSettings {
    /// KBS URL (empty: no `aa.toml` / `cdh.toml` in init-data).
    pub url: String,
    /// PEM certificate the agent pins for the KBS's TLS (empty: system roots).
    pub cert: String,
    /// Secrets the agent fetches from the KBS at start (`[kbs.secrets]`):
    /// NAME → `kbs:///repo/type/tag`, placed at `/run/veil/secrets/NAME`.
    /// They become `cdh.toml` credentials, so they are measured.
    pub secrets: BTreeMap<String, String>,
}

/// Where a secret named NAME is placed in the guest.
pub const SECRETS_DIR: &str = "/run/veil/secrets";

/// Check one secret: NAME of `[A-Za-z0-9._-]`, not starting with `.`, and a
/// `kbs:///repo/type/tag` URI whose segments follow the KBS's resource path
/// rules (as `veil run --secret` and `veil_kbs_client::ResourcePath`).
pub fn check_secret(name: &str, uri: &str) -> Result<(), String> {
    if name.is_empty()
        || name.starts_with('.')
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "secret name {name:?}: use [A-Za-z0-9._-] (at most 128), not starting with ."
        ));
    }
    let path = uri
        .strip_prefix("kbs://")
        .and_then(|rest| rest.split_once('/'))
        .map(|(_host, path)| path)
        .ok_or_else(|| format!("secret {name}: {uri:?} must be a kbs:///repo/type/tag URI"))?;
    let segments: Vec<&str> = path.split('/').collect();
    if segments.len() != 3 {
        return Err(format!(
            "secret {name}: {uri:?} has {} path segments, expected 3 (repo/type/tag)",
            segments.len()
        ));
    }
    for seg in segments {
        let ok = seg.len() <= 256
            && seg
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
        if !ok {
            return Err(format!(
                "secret {name}: {uri:?}: segment {seg:?} must be [A-Za-z0-9_.-], not starting with ."
            ));
        }
    }
    Ok(())
}

/// Image trust settings passed to the guest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImageSettings {
    /// URI of the image signature trust policy (containers-policy.json), e.g. `kbs:///default/security-policy/prod`.
    pub security_policy_uri: String,
    /// URI of a docker `auth.json` with registry credentials for the guest's
    /// own pull, e.g. `kbs:///default/registry/auth` (cdh.toml `[image]
    /// authenticated_registry_credentials_uri`).
    pub registry_credentials_uri: String,
    /// CA certificates (PEM) the guest trusts for registries' TLS (cdh.toml
    /// `[image] extra_root_certificates`; measured with init-data).
    pub extra_root_certificates: Vec<String>,
}

/// Sandbox-wide defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SandboxSettings {
    /// Anchored regexes of guest paths the host may copy files to (never pod volumes).
    pub copy_file: Vec<String>,
    pub allow_get_evidence: bool,
    pub allow_stats: bool,
    /// `kind/name` entries the host may update.
    pub update_config: Vec<String>,
    pub kernel_modules: Vec<String>,
    /// Bounds on image unpacking in the guest (`[sandbox.unpack_limits]`).
    pub unpack_limits: crate::model::UnpackBounds,
    /// Admit `hostPath` volumes (the untrusted host can read and change them).
    pub allow_host_path: bool,
    /// Admit `securityContext.privileged: true` containers (every
    /// capability inside the sandbox, including over the agent).
    pub allow_privileged: bool,
    /// Encrypted persistent volumes a pod's `persistentVolumeClaim` may
    /// name (`[sandbox.encrypted_volumes.CLAIM]`: the veil volume, its LUKS2
    /// UUID and its KBS key path); `veil run` fills it from `veil volume`.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub encrypted_volumes: std::collections::BTreeMap<String, crate::model::EncryptedVolume>,
}

/// Per-container defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ContainerDefaults {
    /// Whether logs (stdout/stderr) may be read unless a pod annotation says otherwise.
    pub allow_stdio: bool,
    /// Signals the host may send to every container (plus the image's StopSignal).
    pub signals: Vec<u32>,
    /// Commands every container may exec.
    pub exec: Vec<Vec<String>>,
}

impl Default for SandboxSettings {
    fn default() -> Self {
        SandboxSettings {
            copy_file: vec![format!(r"^{SANDBOX_DIR_RE}/(hostname|hosts|resolv\.conf)$")],
            allow_get_evidence: true,
            allow_stats: true,
            update_config: Vec::new(),
            kernel_modules: Vec::new(),
            unpack_limits: Default::default(),
            allow_host_path: false,
            allow_privileged: false,
            encrypted_volumes: Default::default(),
        }
    }
}

impl Default for ContainerDefaults {
    fn default() -> Self {
        ContainerDefaults {
            allow_stdio: true,
            // SIGTERM, SIGKILL: what the kubelet sends to stop a container.
            signals: vec![9, 15],
            exec: Vec::new(),
        }
    }
}

fn env(name: &str, value: &str) -> PlatformEnvRule {
    PlatformEnvRule {
        name: name.into(),
        value: value.into(),
    }
}

fn mount(dest: &str, ty: &str, source: &str, options: &[&str]) -> MountRule {
    MountRule {
        destination: dest.into(),
        fs_type: ty.into(),
        source: source.into(),
        options: options.iter().map(|s| s.to_string()).collect(),
    }
}

/// Kubernetes-injected variables: HOSTNAME, the API server and service links.
fn default_platform_env() -> Vec<PlatformEnvRule> {
    let ip = r"[0-9a-fA-F.:]{2,45}";
    vec![
        env("^HOSTNAME$", r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$"),
        env("^TERM$", "^xterm$"),
        env(r"^[A-Z_][A-Z0-9_]*_SERVICE_HOST$", &format!("^{ip}$")),
        env(
            r"^[A-Z_][A-Z0-9_]*_SERVICE_PORT(_[A-Z0-9_]+)?$",
            "^[0-9]{1,5}$",
        ),
        env(
            r"^[A-Z_][A-Z0-9_]*_PORT$",
            &format!(r"^(tcp|udp|sctp)://(\[{ip}\]|{ip}):[0-9]{{1,5}}$"),
        ),
        env(
            r"^[A-Z_][A-Z0-9_]*_PORT_[0-9]{1,5}_(TCP|UDP|SCTP)$",
            &format!(r"^(tcp|udp|sctp)://(\[{ip}\]|{ip}):[0-9]{{1,5}}$"),
        ),
        env(
            r"^[A-Z_][A-Z0-9_]*_PORT_[0-9]{1,5}_(TCP|UDP|SCTP)_PROTO$",
            "^(tcp|udp|sctp)$",
        ),
        env(
            r"^[A-Z_][A-Z0-9_]*_PORT_[0-9]{1,5}_(TCP|UDP|SCTP)_PORT$",
            "^[0-9]{1,5}$",
        ),
        env(
            r"^[A-Z_][A-Z0-9_]*_PORT_[0-9]{1,5}_(TCP|UDP|SCTP)_ADDR$",
            &format!("^{ip}$"),
        ),
    ]
}

/// The mounts the veil runtime gives every container.
fn default_mounts() -> Vec<MountRule> {
    let sb = SANDBOX_DIR_RE;
    vec![
        mount("/proc", "proc", "^proc$", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "^tmpfs$",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "^devpts$",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "^shm$",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "^mqueue$",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "^sysfs$",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup",
            "^cgroup$",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
        mount(
            "/etc/hostname",
            "bind",
            &format!("^{sb}/hostname$"),
            &["rbind", "rprivate", "ro"],
        ),
        mount(
            "/etc/hosts",
            "bind",
            &format!("^{sb}/hosts$"),
            &["rbind", "rprivate", "ro"],
        ),
        mount(
            "/etc/resolv.conf",
            "bind",
            &format!(r"^{sb}/resolv\.conf$"),
            &["rbind", "rprivate", "ro"],
        ),
        mount(
            "/dev/termination-log",
            "bind",
            &format!("^{sb}/termination-log/[A-Za-z0-9_-][A-Za-z0-9_.-]*$"),
            &["rbind", "rprivate", "rw"],
        ),
    ]
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            algorithm: HashAlgorithm::Sha384,
            namespace: "default".into(),
            kbs: KbsSettings::default(),
            image: ImageSettings::default(),
            sandbox: SandboxSettings::default(),
            containers: ContainerDefaults::default(),
            platform_env: default_platform_env(),
            default_mounts: default_mounts(),
        }
    }
}

impl Settings {
    /// Parse a settings file; missing keys take their defaults.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        if text.len() > MAX_SETTINGS_BYTES {
            return Err(format!(
                "settings file is {} bytes, limit {MAX_SETTINGS_BYTES}",
                text.len()
            ));
        }
        let s: Settings = toml::from_str(text).map_err(|e| {
            format!(
                "invalid settings: {}",
                e.to_string().lines().collect::<Vec<_>>().join(" ")
            )
        })?;
        s.validate()?;
        Ok(s)
    }

    /// Check every regex and value in the settings.
    pub fn validate(&self) -> Result<(), String> {
        for r in &self.platform_env {
            check_regex("settings platform_env.name", &r.name)?;
            check_regex("settings platform_env.value", &r.value)?;
        }
        for m in &self.default_mounts {
            check_regex(
                &format!("settings default_mounts {}", m.destination),
                &m.source,
            )?;
        }
        for r in &self.sandbox.copy_file {
            check_regex("settings sandbox.copy_file", r)?;
        }
        if self.containers.signals.iter().any(|s| *s == 0 || *s > 64) {
            return Err("settings containers.signals: signals are 1..=64".into());
        }
        if !(self.kbs.url.is_empty()
            || self.kbs.url.starts_with("https://")
            || self.kbs.url.starts_with("http://"))
        {
            return Err(format!(
                "settings kbs.url {:?}: expected an http(s) URL",
                self.kbs.url
            ));
        }
        for (name, uri) in &self.kbs.secrets {
            check_secret(name, uri).map_err(|e| format!("settings kbs.secrets: {e}"))?;
        }
        if !self.kbs.secrets.is_empty() && self.kbs.url.is_empty() {
            return Err(
                "settings kbs.secrets needs kbs.url (--kbs-url): the agent fetches secrets from that KBS"
                    .into(),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_overridable() {
        Settings::default().validate().unwrap();
        let s = Settings::from_toml(
            "algorithm = \"sha256\"\n[containers]\nallow_stdio = false\n[[platform_env]]\nname = \"^APP_IDENTITY_ENDPOINT$\"\nvalue = \"^http://[0-9.]+:[0-9]+/.*$\"\n",
        )
        .unwrap();
        assert_eq!(s.algorithm, HashAlgorithm::Sha256);
        assert!(!s.containers.allow_stdio);
        assert_eq!(s.containers.signals, vec![9, 15]);
        assert_eq!(s.platform_env.len(), 1);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert!(
            Settings::from_toml("nope = 1")
                .unwrap_err()
                .contains("nope")
        );
        assert!(
            Settings::from_toml("[[platform_env]]\nname = \"FOO\"\nvalue = \"^.*$\"\n")
                .unwrap_err()
                .contains("anchored")
        );
        assert!(Settings::from_toml("[kbs]\nurl = \"ftp://x\"\n").is_err());
    }

    #[test]
    fn secrets_follow_the_resource_path_rules() {
        check_secret("db-password", "kbs:///default/secret/db").unwrap();
        check_secret("tls.key", "kbs://kbs.example/prod/key/v1.2").unwrap();
        for (name, uri) in [
            ("", "kbs:///a/b/c"),
            (".hidden", "kbs:///a/b/c"),
            ("a/b", "kbs:///a/b/c"),
            ("x", "a/b/c"),
            ("x", "kbs:///a/b"),
            ("x", "kbs:///a/.b/c"),
            ("x", "kbs:///a/b/c d"),
        ] {
            assert!(check_secret(name, uri).is_err(), "{name} {uri}");
        }
        let s = Settings::from_toml(
            "[kbs]\nurl = \"https://k\"\n[kbs.secrets]\ndb = \"kbs:///d/s/db\"\n",
        )
        .unwrap();
        assert_eq!(s.kbs.secrets["db"], "kbs:///d/s/db");
        let e = Settings::from_toml("[kbs.secrets]\ndb = \"kbs:///d/s/db\"\n").unwrap_err();
        assert!(e.contains("needs kbs.url"), "{e}");
    }
}
