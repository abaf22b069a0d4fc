//! `veil volume`: encrypted persistent volumes (docs/storage.md).
//!
//! A volume is a sparse file (or a block device) the host attaches to the
//! VM sandbox, plus a record of what the owner chose for it: its LUKS2
//! UUID and the KBS path of its key. The key itself is 64 random bytes
//! generated here, stored in the KBS through the admin API and zeroized:
//! nothing about it is written next to the volume. The guest formats the
//! volume (LUKS2 with dm-integrity, ext4) on first use and opens it on
//! every later run, after attestation, with the key the KBS releases to it.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use rand_core::{OsRng, RngCore};
use veil_agent_api::luks2::{self, Luks2Header};
use veil_policy::model::check_volume_name;
use zeroize::Zeroizing;

/// Smallest volume: the LUKS2 header (16 MiB) plus room for dm-integrity and ext4.
pub const MIN_VOLUME_BYTES: u64 = 64 << 20;
/// Largest volume file.
pub const MAX_VOLUME_BYTES: u64 = 16 << 40;
/// Bytes of a volume key.
pub const KEY_BYTES: usize = 64;
/// `veil volume …`.
#[derive(Subcommand)]
pub enum VolumeCommand {
    /// Create a volume: a sparse file and a fresh key stored in the KBS
    /// (the guest formats it, LUKS2 + dm-integrity + ext4, on first use).
    Create(CreateArgs),
    /// What the volume's record and LUKS2 header say (never the key).
    Inspect {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// List volumes.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Recovery: write the volume's key, read with the KBS's own KEK from
    /// its store (admin rights over the KBS's data), to a 0600 file for
    /// `cryptsetup open --key-file`.
    Key(KeyArgs),
}

/// `veil volume create`.
#[derive(Args)]
pub struct CreateArgs {
    /// The volume's name (a DNS label: `veil run -v NAME:/path`, or a pod's
    /// `persistentVolumeClaim.claimName`).
    pub name: String,
    /// Size: bytes, or with a unit K, M, G, T (binary), e.g. 1G.
    #[arg(long, value_parser = parse_size)]
    pub size: u64,
    /// The volume file [default: <data>/volumes/NAME.img]; an existing block
    /// device is used as is.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The KBS that keeps the key [default: veil run's embedded KBS].
    #[arg(long)]
    pub kbs: Option<String>,
    /// Admin private key of --kbs.
    #[arg(long, env = "VEIL_KBS_ADMIN_KEY")]
    pub admin_key: Option<PathBuf>,
    /// CA certificate(s) of --kbs (PEM).
    #[arg(long, env = "VEIL_KBS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Allow an http:// --kbs (loopback development servers).
    #[arg(long, requires = "kbs")]
    pub insecure_http: bool,
    /// Where the key goes in the KBS [default: kbs:///veil-volume/key/NAME].
    #[arg(long)]
    pub key_path: Option<String>,
}

/// `veil volume key`.
#[derive(Args)]
pub struct KeyArgs {
    pub name: String,
    /// Where to write the key (0600, never over an existing file).
    #[arg(long)]
    pub out: PathBuf,
    /// The KBS's data dir, for a KBS on SQLite [default: the embedded
    /// KBS's, <data>/kbs].
    #[arg(long, requires = "kek_file")]
    pub kbs_data_dir: Option<PathBuf>,
    /// The store of a `veil kbs serve --store postgres://…` (the same URL).
    #[arg(
        long,
        value_name = "URL",
        requires = "kek_file",
        conflicts_with = "kbs_data_dir"
    )]
    pub store: Option<String>,
    /// The KBS's KEK file (with --kbs-data-dir or --store) [default: <data>/kbs.kek].
    #[arg(long)]
    pub kek_file: Option<PathBuf>,
}

/// `--size`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let bytes = parse_bytes_with_unit(s)?;
    if bytes < MIN_VOLUME_BYTES {
        return Err(format!(
            "{s:?}: a volume needs at least {} MiB (the LUKS2 header alone takes 16 MiB)",
            MIN_VOLUME_BYTES >> 20
        ));
    }
    if bytes > MAX_VOLUME_BYTES {
        return Err(format!("{s:?}: at most {} TiB", MAX_VOLUME_BYTES >> 40));
    }
    Ok(bytes)
}

/// Bytes, or a number with a binary unit: `512M`, `1G`, `2T`.
pub fn parse_bytes_with_unit(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected bytes or a size like 512M, 1G"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use K, M, G or T)")),
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("{s:?}: too large"))
}

pub use veil_runtime::volume::{VolumeRecord, find, known, record_path, volumes_dir};

/// The policy data of `init_data`.
pub fn policy_of(init_data: &[u8]) -> Result<veil_policy::model::PolicyData> {
    let parsed = veil_policy::ParsedInitData::parse(init_data).map_err(|e| anyhow!("{e}"))?;
    veil_policy::rego::extract_policy_data(parsed.init_data.policy().map_err(|e| anyhow!("{e}"))?)
        .map_err(|e| anyhow!("{e}"))
}

/// `kind` with the disks of the policy in `init_data`: its encrypted
/// volumes attached (a VM) or refused (the process sandbox), see
/// [`veil_runtime::volume::disks_for`]; and, for a VM, the encrypted scratch disk:
/// `scratch_base` (`--scratch-size`, else the default) plus the sizeLimits
/// of the pod's disk-backed emptyDirs.
pub fn with_disks(
    kind: veil_runtime::pod::launch::SandboxKind,
    data: &Path,
    init_data: &[u8],
    scratch_base: Option<u64>,
) -> Result<veil_runtime::pod::launch::SandboxKind> {
    use veil_runtime::pod::launch::{SandboxKind, scratch_bytes};
    let policy = policy_of(init_data)?;
    let disks = veil_runtime::volume::disks_for(data, &policy.sandbox.volumes, kind.is_vm())?;
    Ok(match kind {
        SandboxKind::Vm(mut v) => {
            v.volume_disks = disks;
            v.scratch_bytes = Some(scratch_bytes(scratch_base, &policy.sandbox.volumes));
            SandboxKind::Vm(v)
        }
        k => k,
    })
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Make the volume file: a new sparse file (never an existing one), or an
/// existing block device.
fn make_file(path: &Path, size: u64) -> Result<bool> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if m.file_type().is_block_device() {
            return Ok(false);
        }
        bail!(
            "{}: already exists; a volume file is created new (or give a block device)",
            path.display()
        );
    }
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p).with_context(|| format!("creating {}", p.display()))?;
    }
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(size)
        .with_context(|| format!("sizing {}", path.display()))?;
    Ok(true)
}

fn data_dir() -> Result<PathBuf> {
    let d = veil_runtime::paths::data_dir();
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    Ok(d)
}

/// An admin client for the volume's KBS: `--kbs`, or the embedded one
/// (kept running while the client is used).
enum Admin {
    Remote(veil_kbs_client::admin::AdminClient),
    Embedded {
        /// Kept running while `client` is used.
        _server: crate::run::local_kbs::LocalKbs,
        client: veil_kbs_client::admin::AdminClient,
    },
}

impl Admin {
    fn client(&self) -> &veil_kbs_client::admin::AdminClient {
        match self {
            Admin::Remote(c) | Admin::Embedded { client: c, .. } => c,
        }
    }
}

fn admin_for(a: &CreateArgs, data: &Path) -> Result<Admin> {
    match &a.kbs {
        Some(url) => {
            let admin_key = a.admin_key.clone().ok_or_else(|| {
                anyhow!(
                    "--kbs {url}: the admin key is needed (--admin-key FILE or VEIL_KBS_ADMIN_KEY)"
                )
            })?;
            let args = crate::kbs::AdminArgs {
                conn: crate::kbs::ConnArgs {
                    url: url.clone(),
                    ca: a.ca.clone(),
                    insecure_http: a.insecure_http,
                },
                admin_key,
                audience: veil_kbs_client::admin::DEFAULT_ADMIN_AUDIENCE.into(),
            };
            Ok(Admin::Remote(crate::kbs::admin_client(&args)?))
        }
        None => {
            let platform =
                veil_runtime::sim::SimPlatform::load_or_create(&veil_runtime::paths::sim_dir(data))
                    .map_err(|e| anyhow!("{e}"))?;
            let kbs = crate::run::local_kbs::LocalKbs::start(data, platform.root())?;
            let c = kbs.admin_client()?;
            Ok(Admin::Embedded {
                _server: kbs,
                client: c,
            })
        }
    }
}

fn create(a: CreateArgs) -> Result<ExitCode> {
    check_volume_name(&a.name).map_err(|e| anyhow!("{e}"))?;
    let data = data_dir()?;
    if find(&data, &a.name)?.is_some() {
        bail!(
            "volume {} already exists ({}); pick another name",
            a.name,
            record_path(&data, &a.name).display()
        );
    }
    let key_uri = a
        .key_path
        .clone()
        .unwrap_or_else(|| format!("kbs:///veil-volume/key/{}", a.name));
    let key_path = veil_kbs_client::ResourcePath::parse(&key_uri).map_err(|e| anyhow!("{e}"))?;
    let key_uri = format!("kbs:///{key_path}");
    let file = match &a.file {
        Some(f) => std::path::absolute(f).with_context(|| format!("{}", f.display()))?,
        None => volumes_dir(&data).join(format!("{}.img", a.name)),
    };
    let admin = admin_for(&a, &data)?;
    if admin.client().resource_info(&key_path).is_ok() {
        bail!(
            "{key_uri} already holds a resource in the KBS: a volume key is never overwritten (another volume's data would be lost); choose --key-path"
        );
    }
    let made = make_file(&file, a.size)?;
    let mut key = Zeroizing::new([0u8; KEY_BYTES]);
    OsRng.fill_bytes(key.as_mut());
    let record = VolumeRecord {
        name: a.name.clone(),
        file: file.clone(),
        size: a.size,
        uuid: uuid_v4(),
        key: key_uri.clone(),
        kbs: a.kbs.clone().unwrap_or_else(|| "embedded".into()),
        created: crate::kbs::rfc3339(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        ),
    };
    let stored = admin
        .client()
        .put_resource(&key_path, key.as_ref())
        .map_err(|e| anyhow!("storing the volume key at {key_uri}: {e}"));
    drop(key);
    if let Err(e) = stored {
        if made {
            let _ = std::fs::remove_file(&file);
        }
        return Err(e);
    }
    crate::output::stage(
        &record_path(&data, &a.name),
        &serde_json::to_vec_pretty(&record)?,
        crate::output::Access::OwnerOnly,
        crate::output::Existing::Keep,
    )?
    .commit()?;
    eprintln!(
        "veil: volume {} created: {} ({} bytes, sparse), LUKS2 UUID {}, key {} in {}; the guest formats it (LUKS2, dm-crypt + dm-integrity, ext4) on first use",
        a.name,
        file.display(),
        a.size,
        record.uuid,
        key_uri,
        if a.kbs.is_some() {
            record.kbs.as_str()
        } else {
            "the embedded KBS"
        }
    );
    Ok(ExitCode::SUCCESS)
}

/// The header facts of a volume file: `None` while it is blank.
pub fn header_of(file: &Path) -> Result<Option<Luks2Header>> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(file)
        .with_context(|| format!("opening {}", file.display()))?;
    let mut first = vec![0u8; luks2::BINARY_HEADER_BYTES];
    let n = f.read(&mut first)?;
    first.truncate(n);
    if first.iter().all(|&b| b == 0) {
        return Ok(None);
    }
    let size = luks2::header_size(&first).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let mut all = first;
    (&mut f)
        .take(size - all.len() as u64)
        .read_to_end(&mut all)?;
    Ok(Some(
        Luks2Header::parse(&all).map_err(|e| anyhow!("{}: {e}", file.display()))?,
    ))
}

fn inspect(name: &str, json: bool) -> Result<ExitCode> {
    let data = data_dir()?;
    let r = find(&data, name)?.ok_or_else(|| {
        anyhow!("no volume {name} (veil volume ls); create it with `veil volume create {name}`")
    })?;
    let header = header_of(&r.file)?;
    if let Some(h) = &header {
        if h.uuid != r.uuid {
            bail!(
                "volume {name}: {} carries LUKS2 UUID {}, the record says {}: the file was replaced",
                r.file.display(),
                h.uuid,
                r.uuid
            );
        }
    }
    if json {
        let v = serde_json::json!({"volume": r, "formatted": header.is_some(), "header": header});
        crate::output::stdout_fmt(format_args!("{}\n", serde_json::to_string_pretty(&v)?));
        return Ok(ExitCode::SUCCESS);
    }
    use crate::output::kv;
    kv("name", &r.name);
    kv("file", &r.file.display().to_string());
    kv("size", &r.size.to_string());
    kv("uuid", &r.uuid);
    kv("key", &format!("{} ({})", r.key, r.kbs));
    kv("created", &r.created);
    match header {
        None => kv(
            "header",
            "none yet (blank: the guest formats it on first use)",
        ),
        Some(h) => {
            kv(
                "header",
                &format!("LUKS2, {} bytes, seqid {}", h.hdr_size, h.seqid),
            );
            kv("label", &h.label);
            kv("cipher", &h.cipher);
            kv("integrity", &h.integrity);
            kv("sector size", &h.sector_size.to_string());
            kv("data offset", &h.data_offset.to_string());
            kv("keyslots", &format!("{} ({})", h.keyslots, h.kdf));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn ls(json: bool) -> Result<ExitCode> {
    let data = data_dir()?;
    let all = veil_runtime::volume::all(&data)?;
    if json {
        let v: Vec<&VolumeRecord> = all.values().collect();
        crate::output::stdout_fmt(format_args!("{}\n", serde_json::to_string_pretty(&v)?));
        return Ok(ExitCode::SUCCESS);
    }
    let mut out = format!("{:<24} {:>14}  {:<36}  KEY\n", "NAME", "SIZE", "UUID");
    for r in all.values() {
        out.push_str(&format!(
            "{:<24} {:>14}  {:<36}  {}\n",
            r.name, r.size, r.uuid, r.key
        ));
    }
    crate::output::stdout_fmt(format_args!("{out}"));
    Ok(ExitCode::SUCCESS)
}

fn key(a: KeyArgs) -> Result<ExitCode> {
    use veil_kbs::store::Store;
    let data = data_dir()?;
    let r =
        find(&data, &a.name)?.ok_or_else(|| anyhow!("no volume {} (veil volume ls)", a.name))?;
    let (store, kek_file): (Box<dyn Store>, PathBuf) = match (
        &a.kbs_data_dir,
        &a.store,
        &a.kek_file,
    ) {
        (Some(d), None, Some(k)) => (
            Box::new(
                veil_kbs::store::sqlite::SqliteStore::open(d)
                    .map_err(|e| anyhow!("the KBS's store {}: {e}", d.display()))?,
            ),
            k.clone(),
        ),
        (None, Some(url), Some(k)) => (
            Box::new(
                veil_kbs::store::postgres::PgStore::open(url)
                    .map_err(|e| anyhow!("the KBS's PostgreSQL store: {e}"))?,
            ),
            k.clone(),
        ),
        (None, None, Some(_)) => bail!(
            "--kek-file needs the store it opens: --kbs-data-dir DIR (SQLite) or --store postgres://… (as given to veil kbs serve)"
        ),
        _ => {
            let p = crate::run::local_kbs::LocalKbsPaths::new(&data);
            (
                Box::new(
                    veil_kbs::store::sqlite::SqliteStore::open(&p.dir)
                        .map_err(|e| anyhow!("the KBS's store {}: {e}", p.dir.display()))?,
                ),
                p.kek,
            )
        }
    };
    let where_ = match (&a.store, &a.kbs_data_dir) {
        (Some(_), _) => "the PostgreSQL store".to_string(),
        (None, Some(d)) => d.display().to_string(),
        (None, None) => "the embedded KBS".to_string(),
    };
    let kek = veil_kbs::Kek::from_file(&kek_file)
        .map_err(|e| anyhow!("the KBS's KEK {}: {e}", kek_file.display()))?;
    let path = veil_kbs_client::ResourcePath::parse(&r.key).map_err(|e| anyhow!("{e}"))?;
    let (_, blob) = store
        .get_resource(&path.to_string())
        .map_err(|e| anyhow!("{e}"))?
        .ok_or_else(|| anyhow!("the KBS in {where_} holds no {}", r.key))?;
    let value = kek
        .open(&format!("resource:{path}"), &blob)
        .map_err(|e| anyhow!("{e}"))?;
    crate::output::stage(
        &a.out,
        &value,
        crate::output::Access::OwnerOnly,
        crate::output::Existing::Keep,
    )?
    .commit()?;
    eprintln!(
        "veil: the key of volume {} written to {} (0600); open the volume offline with: cryptsetup open --key-file {} {} NAME",
        r.name,
        a.out.display(),
        a.out.display(),
        r.file.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// `veil volume`.
pub fn run(cmd: VolumeCommand) -> Result<ExitCode> {
    match cmd {
        VolumeCommand::Create(a) => create(a),
        VolumeCommand::Inspect { name, json } => inspect(&name, json),
        VolumeCommand::Ls { json } => ls(json),
        VolumeCommand::Key(a) => key(a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_have_a_floor_and_binary_units() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert!(parse_size("1M").unwrap_err().contains("at least 64 MiB"));
        assert!(parse_size("1Q").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn uuids_are_v4_and_fresh() {
        let (a, b) = (uuid_v4(), uuid_v4());
        assert!(veil_policy::model::is_uuid(&a), "{a}");
        assert_ne!(a, b);
        assert_eq!(&a[14..15], "4");
    }

    #[test]
    fn records_round_trip_and_files_are_never_reused() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("v.img");
        assert!(make_file(&f, 1 << 20).unwrap());
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 1 << 20);
        assert!(make_file(&f, 1 << 20).is_err());
        assert!(header_of(&f).unwrap().is_none());
        std::fs::create_dir_all(volumes_dir(d.path())).unwrap();
        let r = VolumeRecord {
            name: "db".into(),
            file: f,
            size: 1 << 20,
            uuid: uuid_v4(),
            key: "kbs:///veil-volume/key/db".into(),
            kbs: "embedded".into(),
            created: "2026-12-03T09:00:00Z".into(),
        };
        std::fs::write(record_path(d.path(), "db"), serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(find(d.path(), "db").unwrap(), Some(r.clone()));
        assert_eq!(known(d.path()).unwrap()["db"], r.pin());
        assert_eq!(find(d.path(), "other").unwrap(), None);
    }
}
