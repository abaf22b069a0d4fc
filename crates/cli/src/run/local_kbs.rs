//! The embedded KBS `veil run` starts when no `--kbs` is given: veil-kbs on
//! 127.0.0.1 (plain HTTP, loopback only), SQLite in veil's data dir, dev
//! mode, trusting only this host's sim root. Secrets are sealed at rest
//! under a key-encryption key kept next to it (`kbs.kek`, mode 0600) and
//! stored through the admin API with a local admin key (`kbs-admin.key`).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use veil_kbs::{RunningServer, ServerConfig};
use veil_kbs_client::ClientConfig;
use veil_kbs_client::admin::{AdminClient, AdminKey, parse_admin_public_key};

/// Resource policy of the embedded KBS (scope: every resource): release to
/// any attested workload whose evidence binds an init-data document. The
/// KBS has already checked that binding and the dev-mode sim gate.
pub const DEV_POLICY: &str = "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tevidence := input.submods.cpu0[\"ear.veraison.annotated-evidence\"]\n\tcount(evidence.init_data) > 0\n}\n";

/// Files of the embedded KBS.
pub struct LocalKbsPaths {
    pub dir: PathBuf,
    pub kek: PathBuf,
    pub admin_key: PathBuf,
}

impl LocalKbsPaths {
    pub fn new(data: &Path) -> Self {
        LocalKbsPaths {
            dir: data.join("kbs"),
            kek: data.join("kbs.kek"),
            admin_key: data.join("kbs-admin.key"),
        }
    }
}

fn write_new_0600(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    // Keep the first writer's file if two processes raced.
    let r = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e).with_context(|| format!("creating {}", path.display())),
    }
}

/// The running embedded KBS.
pub struct LocalKbs {
    pub server: RunningServer,
    admin: PathBuf,
}

impl LocalKbs {
    /// Start it (creating its KEK and admin key on first use).
    pub fn start(data: &Path, sim_root: veil_attest::sim::SimRootKey) -> Result<Self> {
        let p = LocalKbsPaths::new(data);
        if !p.kek.exists() {
            write_new_0600(&p.kek, veil_kbs::Kek::generate_hex().as_bytes())?;
        }
        if !p.admin_key.exists() {
            let k = AdminKey::generate();
            write_new_0600(
                &p.admin_key,
                k.to_pem().map_err(|e| anyhow::anyhow!("{e}"))?.as_bytes(),
            )?;
        }
        let kek = veil_kbs::Kek::from_file(&p.kek)
            .map_err(|e| anyhow::anyhow!("embedded KBS KEK {}: {e}", p.kek.display()))?;
        let admin = load_admin(&p.admin_key)?;
        let public = admin.public_pem().map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut cfg = ServerConfig::new(p.dir.clone(), kek);
        cfg.listen = "127.0.0.1:0".parse()?;
        cfg.sim_root = Some(sim_root);
        cfg.dev = true;
        cfg.admin_keys = vec![parse_admin_public_key(&public).map_err(|e| anyhow::anyhow!("{e}"))?];
        let server = veil_kbs::spawn(cfg, 1)
            .map_err(|e| anyhow::anyhow!("starting the embedded KBS: {e}"))?;
        let kbs = LocalKbs {
            server,
            admin: p.admin_key,
        };
        let client = kbs.admin_client()?;
        let policies = client
            .get_resource_policies()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        if policies.as_array().is_none_or(|a| a.is_empty()) {
            client
                .set_resource_policy(None, DEV_POLICY)
                .map_err(|e| anyhow::anyhow!("setting the embedded KBS resource policy: {e}"))?;
        }
        Ok(kbs)
    }

    /// Base URL.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// An admin client for the embedded KBS.
    pub fn admin_client(&self) -> Result<AdminClient> {
        let mut c = ClientConfig::new(self.url());
        c.allow_http = true;
        c.timeout = Duration::from_secs(10);
        AdminClient::new(&c, load_admin(&self.admin)?).map_err(|e| anyhow::anyhow!("{e}"))
    }
}

fn load_admin(path: &Path) -> Result<AdminKey> {
    let pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
    );
    AdminKey::from_pem(&pem).map_err(|e| anyhow::anyhow!("admin key {}: {e}", path.display()))
}
