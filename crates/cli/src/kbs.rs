//! `veil kbs …`: run the key broker, administer it, and fetch a resource as
//! a (simulated) guest would.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use veil_attest::sim::{SimPlatformKey, SimRootKey};
use veil_kbs::policy::templates;
use veil_kbs::{Kek, ServerConfig, TlsFiles};
use veil_kbs_client::admin::{AdminClient, AdminKey};
use veil_kbs_client::{ClientConfig, ClientError, KbsClient, KeyType, ResourcePath, TeeKeyPair};
use zeroize::Zeroizing;

use crate::output::{self, Access, Existing};
use crate::{out, outln};

/// Key broker service: serve, administer, fetch resources.
#[derive(Subcommand)]
pub enum KbsCommand {
    /// Run the KBS (Trustee KBS protocol v0.4.0). TLS unless --insecure-http.
    Serve(ServeArgs),
    /// Create an Ed25519 admin key pair (give the public key to `serve --admin-pubkey`).
    AdminKeygen(AdminKeygenArgs),
    /// Create a random key-encryption key file for secrets at rest.
    KekGenerate(KekGenerateArgs),
    /// Make a private CA and a KBS server certificate signed by it (for --tls-cert and --ca).
    TlsKeygen(TlsKeygenArgs),
    /// Re-seal every stored secret under a new KEK (refused while a server runs on the data dir).
    RotateKek(RotateKekArgs),
    /// Resources (secrets): put, info, delete, list.
    #[command(subcommand)]
    Resource(ResourceCommand),
    /// Resource and attestation policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Reference values used by the attestation policy.
    #[command(subcommand)]
    ReferenceValue(ReferenceValueCommand),
    /// Show the audit log (attestations, releases, denials, admin calls).
    Audit(AuditArgs),
    /// Attest as a guest and fetch one resource (testing the guest flow).
    GetResource(GetResourceArgs),
}

/// Arguments of `veil kbs serve`.
#[derive(Args)]
pub struct ServeArgs {
    /// Data directory (SQLite database with sealed secrets; with --store,
    /// only this replica's lock file).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// A shared store for several replicas instead of SQLite:
    /// `postgres://USER@HOST[:PORT]/DB` or `postgres:///DB?host=/SOCKET/DIR`
    /// (put a password in $VEIL_KBS_STORE rather than on the command line).
    #[arg(long, env = "VEIL_KBS_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// TLS to PostgreSQL: the CA certificate(s) (PEM) that signed the
    /// database server's certificate. TLS is then required and the server
    /// verified (chain and host name, as libpq's verify-full).
    #[arg(
        long,
        env = "VEIL_KBS_STORE_CA",
        value_name = "FILE",
        requires = "store"
    )]
    pub store_ca: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// TLS certificate chain (PEM): a server (leaf) certificate, e.g. from
    /// `veil kbs tls-keygen`; a CA certificate such as a plain `openssl req
    /// -x509` one is refused by clients.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP (loopback addresses only; development).
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    pub insecure_http: bool,
    /// Key-encryption key file (32 bytes raw, hex or base64); else $VEIL_KBS_KEK.
    #[arg(long)]
    pub kek_file: Option<PathBuf>,
    /// Admin public key (Ed25519 SPKI PEM); repeatable.
    #[arg(long = "admin-pubkey")]
    pub admin_pubkeys: Vec<PathBuf>,
    /// Trust this sim root (PEM) for sim evidence. Without it sim evidence is refused.
    #[arg(long)]
    pub sim_root: Option<PathBuf>,
    /// Development mode: sim tokens may receive resources.
    #[arg(long)]
    pub dev: bool,
    /// Accept CoCo `sample` evidence, which has no cryptography at all.
    #[arg(long)]
    pub insecure_allow_sample: bool,
    /// With --dev only: do not compare GPU reports' nonces with the
    /// session's, for recorded GPU evidence (its nonce is fixed); the GPU
    /// evidence is then bound only through the CPU evidence, its token
    /// submodule says `nonce_bound: false`, and a `gpu` rule refuses it
    /// unless it sets `allow_unbound_nonce` (docs/gpu.md).
    #[arg(long, requires = "dev")]
    pub dev_gpu_nonce_via_cpu_evidence: bool,
    /// Session (cookie) lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    pub session_timeout: u64,
    /// Attestation token lifetime in seconds.
    #[arg(long, default_value_t = 300)]
    pub token_ttl: u64,
    /// Request body limit in bytes.
    #[arg(long, default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// Runtime worker threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// A VMPL an SNP report may be requested from; repeatable (default 0
    /// only: a report from a less privileged VMPL is not vouched for by the
    /// VMPL 0 code).
    #[arg(long = "snp-allowed-vmpl", value_name = "VMPL", default_values_t = [0u32],
          value_parser = clap::value_parser!(u32).range(0..=3))]
    pub snp_allowed_vmpls: Vec<u32>,
    /// An operator-filled cache of NVIDIA RIMs: GPU measurements are
    /// appraised against the driver and VBIOS RIMs selected from it, so a
    /// policy's `gpu` rule can require them (docs/gpu.md).
    #[arg(long, value_name = "DIR")]
    pub gpu_rim_dir: Option<PathBuf>,
    /// A directory of OCSP responses (DER) about the GPU device chains and
    /// RIM signers, so a policy's `gpu` rule can require revocation checked.
    #[arg(long, value_name = "DIR")]
    pub gpu_ocsp_dir: Option<PathBuf>,
    /// The `aud` admin tokens must carry: a token minted for another KBS is
    /// refused here.
    #[arg(long, default_value = veil_kbs_client::admin::DEFAULT_ADMIN_AUDIENCE)]
    pub admin_audience: String,
    /// Longest admin token lifetime (`exp - iat`) accepted, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = veil_kbs::admin_auth::DEFAULT_MAX_LIFETIME_SECS)]
    pub admin_max_token_lifetime: u64,
    /// Accept admin tokens without `jti`, reusable until they expire (e.g.
    /// Trustee's long-lived tokens; raise --admin-max-token-lifetime too).
    #[arg(long)]
    pub admin_allow_reusable_tokens: bool,
    /// Attested sessions held at most.
    #[arg(long, default_value_t = 100_000)]
    pub max_sessions: usize,
    /// Seconds an un-attested session (after /auth) has to attest.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub unattested_timeout: u64,
    /// Un-attested sessions held at most (past it, the oldest is evicted).
    #[arg(long, default_value_t = 100_000)]
    pub max_unattested_sessions: usize,
    /// Un-attested sessions one source address (IPv4, IPv6 /64) holds at
    /// most (past it, that source's oldest is evicted).
    #[arg(long, default_value_t = 256)]
    pub unattested_sessions_per_source: usize,
    /// Connections open at once, all sources together.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Connections one source address holds at most.
    #[arg(long, default_value_t = 128)]
    pub max_connections_per_source: usize,
    /// Days audit rows are kept (0: forever).
    #[arg(long, value_name = "DAYS", default_value_t = 90)]
    pub audit_retention_days: u64,
    /// Refusals stored row by row per source and kind in each
    /// --audit-window; the rest are counted into one summary row.
    #[arg(long, default_value_t = 10)]
    pub audit_refusal_rows: u32,
    /// The refusal rate-limit window, in seconds.
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub audit_window: u64,
}

/// Arguments of `veil kbs admin-keygen`.
#[derive(Args)]
pub struct AdminKeygenArgs {
    /// Private key output (PKCS#8 PEM, mode 0600).
    #[arg(long, default_value = "kbs-admin.key")]
    pub key: PathBuf,
    /// Public key output (SPKI PEM).
    #[arg(long = "pub", default_value = "kbs-admin.pub")]
    pub public: PathBuf,
}

/// Arguments of `veil kbs kek-generate`.
#[derive(Args)]
pub struct KekGenerateArgs {
    /// Output file (hex, mode 0600). Keep it off the KBS data directory.
    #[arg(long)]
    pub out: PathBuf,
}

/// Arguments of `veil kbs tls-keygen`.
#[derive(Args)]
pub struct TlsKeygenArgs {
    /// A name clients reach the KBS by (DNS name or IP address); repeatable.
    #[arg(long = "san", value_name = "NAME", default_values = ["localhost", "127.0.0.1"])]
    pub sans: Vec<String>,
    /// CA certificate output: give it to clients (`--ca`, `VEIL_KBS_CA`).
    #[arg(long, default_value = "kbs-ca.pem")]
    pub ca_cert: PathBuf,
    /// Server certificate chain output (`serve --tls-cert`).
    #[arg(long, default_value = "kbs-cert.pem")]
    pub cert: PathBuf,
    /// Server private key output (`serve --tls-key`, mode 0600).
    #[arg(long, default_value = "kbs-key.pem")]
    pub key: PathBuf,
    /// Validity of the server certificate, in days (the CA: ten times that).
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Overwrite existing files.
    #[arg(long)]
    pub force: bool,
}

/// Arguments of `veil kbs rotate-kek`.
#[derive(Args)]
#[command(group(clap::ArgGroup::new("where").required(true).args(["data_dir", "store"])))]
pub struct RotateKekArgs {
    /// Data directory of a stopped KBS (SQLite store).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// The PostgreSQL store of a KBS whose replicas are all stopped
    /// (refused while any replica runs on it).
    #[arg(long, env = "VEIL_KBS_STORE", hide_env_values = true)]
    pub store: Option<String>,
    /// TLS to PostgreSQL: the CA certificate(s) (PEM) of its server.
    #[arg(
        long,
        env = "VEIL_KBS_STORE_CA",
        value_name = "FILE",
        requires = "store"
    )]
    pub store_ca: Option<PathBuf>,
    /// The KEK the secrets are sealed under now.
    #[arg(long)]
    pub old_kek_file: PathBuf,
    /// The new KEK.
    #[arg(long)]
    pub new_kek_file: PathBuf,
}

/// How to reach the KBS as a client.
#[derive(Args, Clone)]
pub struct ConnArgs {
    /// KBS base URL, or several separated by commas (replicas: the next is
    /// tried when one cannot be reached or answers 5xx).
    #[arg(long, env = "VEIL_KBS_URL", default_value = "https://127.0.0.1:8080")]
    pub url: String,
    /// CA certificate(s) to trust for the KBS (PEM), e.g. from `veil kbs tls-keygen`.
    #[arg(long, env = "VEIL_KBS_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Allow an http:// URL (loopback development servers).
    #[arg(long, env = "VEIL_KBS_INSECURE_HTTP", value_parser = clap::builder::FalseyValueParser::new())]
    pub insecure_http: bool,
}

/// Connection plus admin key.
#[derive(Args, Clone)]
pub struct AdminArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// Admin private key (from `veil kbs admin-keygen`).
    #[arg(long, env = "VEIL_KBS_ADMIN_KEY")]
    pub admin_key: PathBuf,
    /// The admin audience of the KBS (its `serve --admin-audience`).
    #[arg(long = "audience", env = "VEIL_KBS_ADMIN_AUDIENCE",
          default_value = veil_kbs_client::admin::DEFAULT_ADMIN_AUDIENCE)]
    pub audience: String,
}

/// `veil kbs resource …`.
#[derive(Subcommand)]
pub enum ResourceCommand {
    /// Store a resource from a file (or stdin with `-`); returns once durable.
    Put {
        #[command(flatten)]
        admin: AdminArgs,
        /// `<repo>/<type>/<tag>`.
        path: String,
        /// File holding the value, `-` for stdin.
        file: PathBuf,
    },
    /// Show a resource's metadata (the value never leaves unencrypted).
    #[command(visible_alias = "get")]
    Info {
        #[command(flatten)]
        admin: AdminArgs,
        /// `<repo>/<type>/<tag>`.
        path: String,
    },
    /// Delete a resource.
    Delete {
        #[command(flatten)]
        admin: AdminArgs,
        /// `<repo>/<type>/<tag>`.
        path: String,
    },
    /// List resources (path, size, last update, KEK id).
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON (`updated_at` in RFC 3339).
        #[arg(long)]
        json: bool,
    },
}

/// `veil kbs policy …`.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Set a resource policy (a Rego file or a template) for a scope.
    Set(PolicySetArgs),
    /// Show the resource policies (JSON: `[{"scope", "policy"}]`).
    #[command(visible_alias = "list")]
    Get {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON (the default; accepted for symmetry with other listings).
        #[arg(long)]
        json: bool,
    },
    /// Set the attestation (appraisal) policy from a Rego file.
    SetAttestation {
        #[command(flatten)]
        admin: AdminArgs,
        /// Rego file defining data.policy.trust_claims.
        file: PathBuf,
    },
    /// Show the attestation policy.
    GetAttestation {
        #[command(flatten)]
        admin: AdminArgs,
    },
}

/// Arguments of `veil kbs policy set`.
#[derive(Args)]
pub struct PolicySetArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Scope: empty for every resource, `repo`, `repo/type` or `repo/type/tag`.
    #[arg(long, default_value = "")]
    pub scope: String,
    /// Rego file (package policy, rule allow).
    #[arg(long, conflicts_with = "template")]
    pub file: Option<PathBuf>,
    /// Template: allow-all, deny-all, affirming, init-data-digest, measurement, claims.
    #[arg(long)]
    pub template: Option<String>,
    /// init-data-digest template: the digest (`sha384:HEX` as veil prints it, or hex).
    #[arg(long)]
    pub digest: Option<String>,
    /// measurement template: allowed measurements (hex or `sha384:HEX`), repeatable.
    #[arg(long = "measurement")]
    pub measurements: Vec<String>,
    /// measurement template: minimum TCB, `bootloader=3,snp=8`.
    #[arg(long)]
    pub min_tcb: Option<String>,
    /// claims template: key-release JSON `{"anyOf":[{"allOf":[{"claim":..,"equals":..}]}]}`.
    #[arg(long)]
    pub claims_file: Option<PathBuf>,
    /// Print the policy instead of uploading it.
    #[arg(long)]
    pub print: bool,
}

/// `veil kbs reference-value …`.
#[derive(Subcommand)]
pub enum ReferenceValueCommand {
    /// Set the values of a name (replaces them). Values are strings unless --json.
    Set {
        #[command(flatten)]
        admin: AdminArgs,
        /// Name, e.g. `measurement` or `min_tcb_snp`.
        #[arg(required_unless_present = "from_measure")]
        name: Option<String>,
        /// Values.
        #[arg(required_unless_present = "from_measure")]
        values: Vec<String>,
        /// Parse each value as JSON (numbers, booleans).
        #[arg(long)]
        json: bool,
        /// Set the reference values of `veil measure` documents instead (repeatable;
        /// values are merged per name, and replace that name's stored values).
        #[arg(long, value_name = "FILE", conflicts_with_all = ["name", "values", "json"])]
        from_measure: Vec<PathBuf>,
    },
    /// Show one name's values.
    Get {
        #[command(flatten)]
        admin: AdminArgs,
        /// Name.
        name: String,
    },
    /// Show all reference values (JSON: name → values).
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Print JSON (the default; accepted for symmetry with other listings).
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `veil kbs audit`.
#[derive(Args)]
pub struct AuditArgs {
    #[command(flatten)]
    pub admin: AdminArgs,
    /// Newest N records.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `veil kbs get-resource`.
#[derive(Args)]
pub struct GetResourceArgs {
    #[command(flatten)]
    pub conn: ConnArgs,
    /// TEE to attest as: `sim`, or `sample` (CoCo's sample evidence: NO
    /// cryptography, development only, for a KBS started with
    /// --insecure-allow-sample or Trustee's sample verifier).
    #[arg(long, default_value = "sim")]
    pub tee: String,
    /// The sim platform private key (from `veil attest sim-keygen`).
    #[arg(long)]
    pub sim_key: Option<PathBuf>,
    /// Launch measurement the sim platform reports (hex, ≤ 48 bytes).
    #[arg(long, default_value = "")]
    pub measurement: String,
    /// Init-data TOML to send (its digest is recorded at "launch").
    #[arg(long)]
    pub init_data: Option<PathBuf>,
    /// Recorded NVIDIA GPU evidence to send as additional evidence beside
    /// the CPU evidence; repeatable, one per GPU (`gpu0`, `gpu1`, … in
    /// order). A directory holding the report (`*AttestationReport.txt`,
    /// `report.txt` or `report.bin`; hex or raw) and the device chain
    /// (`*CertChain.txt` or `chain.pem`), and optionally `uuid`; or a file
    /// of Trustee's device evidence JSON (`{"arch", "uuid", "evidence",
    /// "certificate"}`).
    #[arg(long, value_name = "DIR|FILE")]
    pub gpu_evidence: Vec<PathBuf>,
    /// TEE key type: ec-p256, ec-p521, rsa2048, rsa3072.
    #[arg(long, default_value = "ec-p256")]
    pub key_type: KeyType,
    /// Write the value to this file (mode 0600) instead of base64 on stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// `<repo>/<type>/<tag>` or `kbs:///repo/type/tag`.
    pub path: String,
}

/// Run a `veil kbs` subcommand.
pub fn run(cmd: KbsCommand) -> Result<ExitCode> {
    let r = match cmd {
        KbsCommand::Serve(a) => serve(a),
        KbsCommand::AdminKeygen(a) => admin_keygen(a),
        KbsCommand::KekGenerate(a) => kek_generate(a),
        KbsCommand::TlsKeygen(a) => tls_keygen(a),
        KbsCommand::RotateKek(a) => rotate_kek(a),
        KbsCommand::Resource(c) => resource(c),
        KbsCommand::Policy(c) => policy(c),
        KbsCommand::ReferenceValue(c) => reference_value(c),
        KbsCommand::Audit(a) => audit(a),
        KbsCommand::GetResource(a) => get_resource(a),
    };
    // A refusal by the KBS is an answer, not a tool failure: exit 1.
    match r {
        Err(e) => match e.downcast_ref::<ClientError>() {
            Some(ClientError::Refused { .. }) => {
                eprintln!("veil: {e:#}");
                Ok(ExitCode::from(1))
            }
            _ => Err(advise(e)),
        },
        ok => ok,
    }
}

/// Put advice in front of a TLS failure the user can fix with a flag.
fn advise(e: anyhow::Error) -> anyhow::Error {
    let Some(ClientError::Transport { reason, .. }) = e.downcast_ref::<ClientError>() else {
        return e;
    };
    let advice = if reason.contains("CaUsedAsEndEntity") {
        "the KBS serves a CA certificate (as a plain `openssl req -x509` makes), which TLS clients refuse as a server certificate: make a CA and a server certificate with `veil kbs tls-keygen --san HOST`, serve kbs-cert.pem/kbs-key.pem (--tls-cert/--tls-key) and pass kbs-ca.pem with --ca (or VEIL_KBS_CA)"
    } else if reason.contains("UnknownIssuer") {
        "the KBS's certificate is not signed by a CA this client trusts: pass its CA certificate with --ca FILE (or VEIL_KBS_CA=FILE)"
    } else if reason.contains("NotValidForName") {
        "the KBS's certificate does not name the host of the URL: make one that does with `veil kbs tls-keygen --san HOST`, or use a name it holds in --url"
    } else if reason.contains("Expired") || reason.contains("NotValidYet") {
        "the KBS's certificate is outside its validity period (check both clocks, or renew it with `veil kbs tls-keygen`)"
    } else {
        return e;
    };
    e.context(advice)
}

fn serve(a: ServeArgs) -> Result<ExitCode> {
    let kek = match &a.kek_file {
        Some(p) => Kek::from_file(p)?,
        None => Kek::from_env().context("no --kek-file given")?,
    };
    let mut cfg = ServerConfig::new(a.data_dir.clone(), kek);
    cfg.store_url = a.store.clone();
    cfg.store_ca = a.store_ca.clone();
    cfg.listen = a.listen;
    cfg.tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        }),
        _ if a.insecure_http => None,
        _ => bail!(
            "TLS is required: give --tls-cert and --tls-key (or --insecure-http on a loopback address for development)"
        ),
    };
    for p in &a.admin_pubkeys {
        let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        cfg.admin_keys.push(
            veil_kbs_client::admin::parse_admin_public_key(&pem)
                .with_context(|| p.display().to_string())?,
        );
    }
    if let Some(p) = &a.sim_root {
        let pem = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        cfg.sim_root = Some(SimRootKey::from_pem(&pem).with_context(|| p.display().to_string())?);
    }
    cfg.dev = a.dev;
    cfg.insecure_allow_sample = a.insecure_allow_sample;
    cfg.dev_gpu_nonce_via_cpu_evidence = a.dev_gpu_nonce_via_cpu_evidence;
    cfg.session_timeout = Duration::from_secs(a.session_timeout.max(1));
    cfg.token_ttl = Duration::from_secs(a.token_ttl.max(1));
    cfg.max_body_bytes = a.max_body_bytes;
    cfg.snp_allowed_vmpls = a.snp_allowed_vmpls.clone();
    cfg.gpu_rim_dir = a.gpu_rim_dir.clone();
    cfg.gpu_ocsp_dir = a.gpu_ocsp_dir.clone();
    cfg.admin_audience = a.admin_audience.clone();
    cfg.admin_max_token_lifetime = Duration::from_secs(a.admin_max_token_lifetime.max(1));
    cfg.admin_allow_reusable_tokens = a.admin_allow_reusable_tokens;
    cfg.max_sessions = a.max_sessions.max(1);
    cfg.unattested_timeout = Duration::from_secs(a.unattested_timeout.max(1));
    cfg.max_unattested_sessions = a.max_unattested_sessions.max(1);
    cfg.unattested_sessions_per_source = a.unattested_sessions_per_source.max(1);
    cfg.max_connections = a.max_connections.max(1);
    cfg.max_connections_per_source = a.max_connections_per_source.max(1);
    cfg.audit_retention = Duration::from_secs(a.audit_retention_days.saturating_mul(24 * 3600));
    cfg.audit_refusal_rows = a.audit_refusal_rows;
    cfg.audit_window = Duration::from_secs(a.audit_window.max(1));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VEIL_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    if a.insecure_http {
        eprintln!(
            "veil: WARNING: serving PLAIN HTTP (--insecure-http): session cookies and tokens travel unencrypted; development on loopback only"
        );
    }
    if a.sim_root.is_some() {
        eprintln!(
            "veil: WARNING: sim evidence accepted (--sim-root): {}",
            veil_attest::sim::WARNING
        );
    }
    if a.dev {
        eprintln!("veil: WARNING: --dev: resources may be released to simulated TEEs");
    }
    if a.dev_gpu_nonce_via_cpu_evidence {
        eprintln!(
            "veil: WARNING: --dev-gpu-nonce-via-cpu-evidence: GPU reports are accepted with any nonce (recorded evidence); a `gpu` rule still refuses them unless it sets allow_unbound_nonce"
        );
    }
    if a.insecure_allow_sample {
        eprintln!(
            "veil: WARNING: --insecure-allow-sample: CoCo sample evidence (no cryptography at all) is accepted"
        );
    }
    if a.admin_allow_reusable_tokens {
        eprintln!(
            "veil: WARNING: --admin-allow-reusable-tokens: admin tokens without a jti are accepted again and again until they expire ({} s at most)",
            a.admin_max_token_lifetime
        );
    }
    if cfg.snp_allowed_vmpls != [0] {
        eprintln!(
            "veil: note: SNP reports accepted from VMPL {:?}, not only VMPL 0",
            cfg.snp_allowed_vmpls
        );
    }
    if cfg.admin_keys.is_empty() {
        eprintln!("veil: note: no --admin-pubkey given: the admin API refuses every call");
    }
    let server = veil_kbs::spawn(cfg, a.workers)?;
    // One write, errors ignored: a server keeps serving when whoever read
    // its banner has gone away (`veil kbs serve | head -1`).
    let banner = format!(
        "veil kbs listening on {url}\n  data dir   {}\n  store      {}\n  token key  {} (JWKS at {url}/kbs/v0/jwks)\n",
        a.data_dir.display(),
        server.state.store.describe(),
        server.state.signer.kid(),
        url = server.url(),
    );
    let mut stdout = std::io::stdout().lock();
    let _ = stdout
        .write_all(banner.as_bytes())
        .and_then(|()| stdout.flush());
    drop(stdout);
    server.wait();
    Ok(ExitCode::SUCCESS)
}

fn admin_keygen(a: AdminKeygenArgs) -> Result<ExitCode> {
    let k = AdminKey::generate();
    let private = k.to_pem()?;
    // Both staged before either is in place: no key without its public half.
    let key = output::stage(
        &a.key,
        private.as_bytes(),
        Access::OwnerOnly,
        Existing::Replace,
    )?;
    let public = output::stage(
        &a.public,
        k.public_pem()?.as_bytes(),
        Access::Public,
        Existing::Replace,
    )?;
    key.commit()?;
    public.commit()?;
    outln!("admin private key: {} (keep it secret)", a.key.display());
    outln!(
        "admin public key:  {} (give it to `veil kbs serve --admin-pubkey`)",
        a.public.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn kek_generate(a: KekGenerateArgs) -> Result<ExitCode> {
    let hex = Kek::generate_hex();
    output::write_secret(&a.out, hex.as_bytes())?;
    let id = Kek::from_bytes(hex.as_bytes())?;
    outln!("key-encryption key: {} (id {})", a.out.display(), id.id());
    Ok(ExitCode::SUCCESS)
}

fn rotate_kek(a: RotateKekArgs) -> Result<ExitCode> {
    let old = Kek::from_file(&a.old_kek_file)?;
    let new = Kek::from_file(&a.new_kek_file)?;
    let n = if let Some(url) = &a.store {
        use veil_kbs::store::postgres::{PgStore, PgTls};
        let tls = PgTls::from_ca_file(a.store_ca.as_deref())?;
        // The store refuses inside its transaction while a replica holds
        // its share of the KEK lock.
        let store = PgStore::open_with(url, &tls)?;
        match veil_kbs::secrets::rotate_kek(&store, &old, &new) {
            Ok(n) => n,
            Err(e) if e.contains("refused:") => {
                eprintln!("veil: {e}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => bail!(e),
        }
    } else {
        let dir = a.data_dir.as_deref().expect("clap: --data-dir or --store");
        if !dir.is_dir() {
            bail!("--data-dir {}: no such directory", dir.display());
        }
        // Held until the rotation is committed: no server may start meanwhile.
        let _lock = match veil_kbs::datadir::DataDirLock::exclusive(dir) {
            Ok(l) => l,
            Err(e @ veil_kbs::datadir::LockError::InUse { .. }) => {
                eprintln!("veil: refused: {e}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        };
        let store = veil_kbs::store::sqlite::SqliteStore::open(dir)?;
        veil_kbs::secrets::rotate_kek(&store, &old, &new).map_err(anyhow::Error::msg)?
    };
    outln!(
        "re-sealed {n} secret(s) from KEK {} to KEK {}",
        old.id(),
        new.id()
    );
    Ok(ExitCode::SUCCESS)
}

fn tls_keygen(a: TlsKeygenArgs) -> Result<ExitCode> {
    let m = veil_kbs::tlsgen::generate(&a.sans, a.days.saturating_mul(10), a.days)
        .map_err(anyhow::Error::msg)?;
    let existing = if a.force {
        Existing::Replace
    } else {
        Existing::Keep
    };
    // All three staged before any is in place.
    let ca = output::stage(&a.ca_cert, m.ca_cert.as_bytes(), Access::Public, existing)?;
    let cert = output::stage(&a.cert, m.cert_chain.as_bytes(), Access::Public, existing)?;
    let key = output::stage(&a.key, m.key.as_bytes(), Access::OwnerOnly, existing)?;
    ca.commit()?;
    cert.commit()?;
    key.commit()?;
    outln!(
        "CA certificate:     {} (clients: --ca or VEIL_KBS_CA; the CA key is not kept)",
        a.ca_cert.display()
    );
    outln!(
        "server certificate: {} for {} ({} days; serve --tls-cert)",
        a.cert.display(),
        a.sans.join(", "),
        a.days
    );
    outln!("server key:         {} (serve --tls-key)", a.key.display());
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn client_config(c: &ConnArgs) -> Result<ClientConfig> {
    if c.url.to_ascii_lowercase().starts_with("http://") && !c.insecure_http {
        bail!(
            "{} is plain HTTP: tokens and cookies would travel in clear; use https://, or pass --insecure-http (or VEIL_KBS_INSECURE_HTTP=1) for a loopback development server",
            c.url
        );
    }
    let mut cfg = ClientConfig::new(c.url.clone());
    cfg.allow_http = c.insecure_http;
    if let Some(p) = &c.ca {
        cfg.ca_pem = Some(std::fs::read(p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(cfg)
}

pub(crate) fn admin_client(a: &AdminArgs) -> Result<AdminClient> {
    let pem = Zeroizing::new(
        std::fs::read_to_string(&a.admin_key)
            .with_context(|| format!("reading {}", a.admin_key.display()))?,
    );
    Ok(
        AdminClient::new(&client_config(&a.conn)?, AdminKey::from_pem(&pem)?)?
            .with_audience(&a.audience),
    )
}

/// Unix seconds → RFC 3339 (UTC), as every time veil prints.
pub fn rfc3339(unix: u64) -> String {
    i64::try_from(unix)
        .ok()
        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

/// In a list of objects, turn the integer fields `keys` into RFC 3339.
fn times_to_rfc3339(list: &mut serde_json::Value, keys: &[&str]) {
    for r in list.as_array_mut().into_iter().flatten() {
        for k in keys {
            if let Some(t) = r.get(*k).and_then(|t| t.as_u64()) {
                r[*k] = rfc3339(t).into();
            }
        }
    }
}

fn print_json(v: &serde_json::Value) {
    outln!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn resource(c: ResourceCommand) -> Result<ExitCode> {
    match c {
        ResourceCommand::Put { admin, path, file } => {
            let path = ResourcePath::parse(&path)?;
            let value = Zeroizing::new(if file.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                v
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            });
            admin_client(&admin)?.put_resource(&path, &value)?;
            outln!("stored {path} ({} bytes)", value.len());
        }
        ResourceCommand::Info { admin, path } => {
            let mut v = serde_json::Value::Array(vec![
                admin_client(&admin)?.resource_info(&ResourcePath::parse(&path)?)?,
            ]);
            times_to_rfc3339(&mut v, &["updated_at"]);
            print_json(&v[0]);
        }
        ResourceCommand::Delete { admin, path } => {
            let path = ResourcePath::parse(&path)?;
            admin_client(&admin)?.delete_resource(&path)?;
            outln!("deleted {path}");
        }
        ResourceCommand::List { admin, json } => {
            let mut list = admin_client(&admin)?.list_resources()?;
            times_to_rfc3339(&mut list, &["updated_at"]);
            if json {
                print_json(&list);
                return Ok(ExitCode::SUCCESS);
            }
            for r in list.as_array().into_iter().flatten() {
                outln!(
                    "{}\t{} bytes\tupdated {}\tKEK {}",
                    r["path"].as_str().unwrap_or(""),
                    r["size"],
                    r["updated_at"].as_str().unwrap_or("?"),
                    r["kek_id"].as_str().unwrap_or("?")
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn policy_text(a: &PolicySetArgs) -> Result<String> {
    if let Some(f) = &a.file {
        return std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()));
    }
    let Some(t) = a.template.as_deref() else {
        bail!(
            "give --file or --template (allow-all, deny-all, affirming, init-data-digest, measurement, claims)"
        );
    };
    Ok(match t {
        "allow-all" => templates::ALLOW_ALL.to_string(),
        "deny-all" => templates::DENY_ALL.to_string(),
        "affirming" => templates::AFFIRMING.to_string(),
        "init-data-digest" => {
            let d = a.digest.as_deref().context("--digest is required")?;
            templates::init_data_digest(&hex::encode(output::parse_digest("digest", d)?))
                .map_err(anyhow::Error::msg)?
        }
        "measurement" => {
            let min = veil_attest::expect::parse_min_tcb(a.min_tcb.as_deref().unwrap_or(""))
                .map_err(anyhow::Error::msg)?;
            let measurements = a
                .measurements
                .iter()
                .map(|m| Ok(hex::encode(output::parse_digest("measurement", m)?)))
                .collect::<Result<Vec<_>>>()?;
            templates::measurement(&measurements, &min).map_err(anyhow::Error::msg)?
        }
        "claims" => {
            let f = a
                .claims_file
                .as_ref()
                .context("--claims-file is required")?;
            let spec: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(f)?)
                .with_context(|| format!("{} is not JSON", f.display()))?;
            templates::claims(&spec).map_err(anyhow::Error::msg)?
        }
        other => bail!(
            "unknown template {other:?}; known: allow-all, deny-all, affirming, init-data-digest, measurement, claims"
        ),
    })
}

fn policy(c: PolicyCommand) -> Result<ExitCode> {
    match c {
        PolicyCommand::Set(a) => {
            let text = policy_text(&a)?;
            if a.print {
                out!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            let scope = (!a.scope.is_empty()).then_some(a.scope.as_str());
            let client = admin_client(&a.admin)?;
            if scope.is_some() && !client.supports_policy_scopes()? {
                bail!(
                    "refused: this KBS does not keep resource policies per scope (it answers 404 to GET {}, as a Trustee KBS does, which has ONE global resource policy): `--scope {}` would silently replace that global policy for every resource. Write one policy that covers all resources (it sees the path in data[\"resource-path\"]) and set it without --scope",
                    veil_kbs_client::admin::CAPABILITIES_PATH,
                    a.scope
                );
            }
            client.set_resource_policy(scope, &text)?;
            outln!("resource policy set for scope {:?}", a.scope);
        }
        PolicyCommand::Get { admin, json: _ } => {
            print_json(&admin_client(&admin)?.get_resource_policies()?)
        }
        PolicyCommand::SetAttestation { admin, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            admin_client(&admin)?.set_attestation_policy(&text)?;
            outln!("attestation policy set");
        }
        PolicyCommand::GetAttestation { admin } => {
            print_json(&admin_client(&admin)?.get_attestation_policy()?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn reference_value(c: ReferenceValueCommand) -> Result<ExitCode> {
    match c {
        ReferenceValueCommand::Set {
            admin,
            name,
            values,
            json,
            from_measure,
        } => {
            if !from_measure.is_empty() {
                return reference_values_from_measure(&admin, &from_measure);
            }
            let name = name.context("a reference value name is required")?;
            let vals: Vec<serde_json::Value> = values
                .iter()
                .map(|v| {
                    if json {
                        serde_json::from_str(v).with_context(|| format!("{v:?} is not JSON"))
                    } else {
                        Ok(serde_json::Value::String(v.clone()))
                    }
                })
                .collect::<Result<_>>()?;
            admin_client(&admin)?.set_reference_value(&name, &vals)?;
            outln!("reference value {name} set ({} values)", vals.len());
        }
        ReferenceValueCommand::Get { admin, name } => {
            print_json(&admin_client(&admin)?.get_reference_value(&name)?)
        }
        ReferenceValueCommand::List { admin, json: _ } => {
            print_json(&admin_client(&admin)?.list_reference_values()?)
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `reference-value set --from-measure FILE…`: load `veil measure` documents.
fn reference_values_from_measure(admin: &AdminArgs, files: &[PathBuf]) -> Result<ExitCode> {
    use veil_measure::report::{MAX_REPORT_BYTES, MeasurementReport, merge_reference_values};
    let mut reports = Vec::new();
    for f in files {
        let file = std::fs::File::open(f).with_context(|| format!("opening {}", f.display()))?;
        let mut bytes = Vec::new();
        std::io::Read::read_to_end(
            &mut std::io::Read::take(file, MAX_REPORT_BYTES as u64 + 1),
            &mut bytes,
        )
        .with_context(|| format!("reading {}", f.display()))?;
        let report =
            MeasurementReport::from_json(&bytes).with_context(|| f.display().to_string())?;
        reports.push(report);
    }
    let merged = merge_reference_values(&reports);
    let client = admin_client(admin)?;
    for (name, values) in &merged {
        let vals: Vec<serde_json::Value> = values.iter().cloned().map(Into::into).collect();
        client.set_reference_value(name, &vals)?;
        outln!("reference value {name} set ({} values)", vals.len());
    }
    Ok(ExitCode::SUCCESS)
}

fn audit(a: AuditArgs) -> Result<ExitCode> {
    let mut recs = admin_client(&a.admin)?.audit(a.limit)?;
    times_to_rfc3339(&mut recs, &["ts"]);
    if a.json {
        print_json(&recs);
        return Ok(ExitCode::SUCCESS);
    }
    // Escaped again at print time: rows written by an older KBS (or a
    // third-party server) may hold raw control characters that would forge
    // lines or drive the terminal.
    let esc = |v: &serde_json::Value| veil_kbs::text::escape_controls(v.as_str().unwrap_or(""));
    for r in recs.as_array().into_iter().flatten() {
        outln!(
            "#{} {} {:<8} {:<5} {} — {}",
            r["id"],
            esc(&r["ts"]),
            esc(&r["kind"]),
            esc(&r["decision"]),
            esc(&r["subject"]),
            esc(&r["reason"])
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn get_resource(a: GetResourceArgs) -> Result<ExitCode> {
    let init_data = match &a.init_data {
        Some(p) => {
            Some(std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
        }
        None => None,
    };
    match a.tee.as_str() {
        "sim" => {
            let key_path = a
                .sim_key
                .as_ref()
                .context("--sim-key is required for --tee sim")?;
            let pem = Zeroizing::new(
                std::fs::read_to_string(key_path)
                    .with_context(|| format!("reading {}", key_path.display()))?,
            );
            let platform = SimPlatformKey::from_pem(&pem)?;
            let measurement = output::parse_digest("measurement", &a.measurement)?;
            let mut guest = veil_kbs::simguest::SimGuest::new(platform, &measurement);
            guest.init_data = init_data;
            eprintln!("veil: WARNING: {}", veil_attest::sim::WARNING);
            if a.gpu_evidence.is_empty() {
                fetch_resource(&a, guest)
            } else {
                let gpus = a
                    .gpu_evidence
                    .iter()
                    .map(|p| crate::kbs_gpu::read(p))
                    .collect::<Result<Vec<_>>>()?;
                fetch_resource(&a, crate::kbs_gpu::WithGpus::new(guest, gpus)?)
            }
        }
        "sample" => {
            if !a.gpu_evidence.is_empty() {
                bail!(
                    "--gpu-evidence: sample evidence has no cryptography to bind GPU evidence to; use --tee sim"
                );
            }
            eprintln!(
                "veil: WARNING: --tee sample: CoCo SAMPLE evidence has NO cryptography at all (anyone can forge it); DEVELOPMENT ONLY, accepted only by a KBS started with --insecure-allow-sample (or Trustee's sample verifier){}",
                if init_data.is_some() {
                    "; the init-data is sent UNBOUND"
                } else {
                    ""
                }
            );
            fetch_resource(&a, veil_kbs::simguest::SampleGuest { init_data })
        }
        other => bail!(
            "--tee {other}: from the command line outside a TEE only `sim` and `sample` can attest (the agent attests with hardware)"
        ),
    }
}

fn fetch_resource<E: veil_kbs_client::EvidenceProvider>(
    a: &GetResourceArgs,
    guest: E,
) -> Result<ExitCode> {
    let path = ResourcePath::parse(&a.path)?;
    let key = TeeKeyPair::generate(a.key_type)?;
    let mut client = KbsClient::new(&client_config(&a.conn)?, guest, key)?;
    let value = client.get_resource(&path)?;
    match &a.out {
        Some(out) => {
            output::write_secret(out, &value)?;
            eprintln!("wrote {} bytes of {path} to {}", value.len(), out.display());
        }
        None => {
            use base64::Engine;
            outln!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(value.as_slice())
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
