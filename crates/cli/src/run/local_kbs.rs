//! The embedded KBS `veil run` starts when no `--kbs` is given: veil-kbs on
//! 127.0.0.1 (plain HTTP, loopback only), SQLite in veil's data dir, dev
//! mode, trusting only this host's sim root. Secrets are sealed at rest
//! under a key-encryption key kept next to it (`kbs.kek`, mode 0600) and
//! stored through the admin API with a local admin key (`kbs-admin.key`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use veil_kbs::{RunningServer, ServerConfig};
use veil_kbs_client::ClientConfig;
use veil_kbs_client::admin::{AdminClient, AdminKey, parse_admin_public_key};

/// Resource policy of the embedded KBS (scope: every resource): release
/// only to a token whose evidence was verified together with an init-data
/// document (`init_data_claims` is set only then), on top of the per-run
/// pin ([`LocalKbs::pin`]: that run's init-data digest and the resources it
/// names). The KBS has already checked the binding and the dev-mode sim gate.
pub const DEV_POLICY: &str = "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tevidence := input.submods.cpu0[\"ear.veraison.annotated-evidence\"]\n\tis_object(evidence.init_data_claims)\n\tcount(evidence.init_data) > 0\n}\n";

/// The policy older veil versions stored: it tested no binding (the token's
/// `init_data` is always a non-empty hex string). Replaced at start.
const OLD_DEV_POLICY: &str = "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tevidence := input.submods.cpu0[\"ear.veraison.annotated-evidence\"]\n\tcount(evidence.init_data) > 0\n}\n";

/// The KBS resources a sandbox may receive: every `kbs://` URI its init-data
/// names (credentials, the image trust policy) and the key-encryption key of
/// every encrypted layer of the images its policy pins.
pub fn named_resources(
    init_data: &[u8],
    layout: Option<&Path>,
    policy: &veil_policy::PolicyData,
) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let text = String::from_utf8_lossy(init_data);
    for (i, _) in text.match_indices("kbs://") {
        let uri: String = text[i..]
            .chars()
            .take_while(|c| !matches!(c, '"' | '\'' | ' ' | ',' | ']' | '}' | '\n' | '\\'))
            .collect();
        if let Ok(p) = veil_kbs_client::ResourcePath::parse(&uri) {
            out.insert(p.to_string());
        }
    }
    let Some(Ok(layout)) = layout.map(veil_image::OciLayout::open) else {
        return out;
    };
    let Ok(index) = layout.index() else {
        return out;
    };
    let wanted: Vec<&str> = policy
        .containers
        .iter()
        .map(|c| c.image.digest.as_str())
        .collect();
    let platform = veil_image::Platform::linux_amd64();
    for desc in &index.manifests {
        let Ok(img) = veil_image::source::resolve(&layout, desc, &platform) else {
            continue;
        };
        if !wanted.contains(&img.manifest_digest().to_string().as_str()) {
            continue;
        }
        for layer in img.layers() {
            for kid in veil_image::crypt::kbs::key_ids_of(layer) {
                out.insert(kid.path());
            }
        }
    }
    out
}

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

/// Create a secret file of the embedded KBS (its KEK, its admin key) with the
/// CLI's one secret-file writer (0600 from creation, O_EXCL, no symlinks).
/// If another `veil` raced us to it, the first writer's file is kept.
fn write_new_0600(path: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let r = crate::output::stage(
        path,
        bytes,
        crate::output::Access::OwnerOnly,
        crate::output::Existing::Keep,
    )
    .and_then(|s| s.commit());
    match r {
        Err(_) if path.is_file() => Ok(()),
        r => r,
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
        let stale = policies.as_array().is_some_and(|a| {
            a.iter()
                .any(|p| p["scope"] == "" && p["policy"] == OLD_DEV_POLICY)
        });
        if stale || policies.as_array().is_none_or(|a| a.is_empty()) {
            client
                .set_resource_policy(None, DEV_POLICY)
                .map_err(|e| anyhow::anyhow!("setting the embedded KBS resource policy: {e}"))?;
        }
        Ok(kbs)
    }

    /// Serve one sandbox only: release nothing but `resources`, and only to
    /// a token carrying init-data digest `init_data_hex`.
    pub fn pin(
        &self,
        label: &str,
        init_data_hex: &str,
        resources: std::collections::BTreeSet<String>,
    ) {
        self.server
            .state
            .set_release_pin(Some(veil_kbs::pin::ReleasePin {
                label: label.to_string(),
                init_data_hex: init_data_hex.to_string(),
                resources,
            }));
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
