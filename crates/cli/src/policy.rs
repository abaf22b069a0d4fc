//! `veil policy …`: generate, digest, check and diff workload policies.
//!
//! Exit status: `check` 0 allow, 1 deny, 2 malformed input; `diff` 0 equal,
//! 1 different, 2 malformed; the others 0 ok, 2 error. On error nothing is
//! written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use clap::{Args, Subcommand};
use veil_agent_api::{AgentMessage, MAX_MESSAGE_BYTES};
use veil_policy::diff::diff_init_data;
use veil_policy::enforce::PolicyEngine;
use veil_policy::generate::{
    ImageResolver, LayoutResolver, MAX_YAML_BYTES, RegistryResolver, generate,
};
use veil_policy::initdata::{MAX_INIT_DATA_BYTES, ParsedInitData};
use veil_policy::settings::{MAX_SETTINGS_BYTES, Settings};

use crate::output::{Access, Existing, kv, read_limited, stage};
use crate::{out, outln};

/// Workload policies: generate from Kubernetes YAML, digest, check requests, diff.
#[derive(Subcommand)]
pub enum PolicyCommand {
    /// Generate the policy and init-data for every workload in Kubernetes YAML,
    /// resolving images to digests and configs; print each init-data digest.
    Generate(GenerateArgs),
    /// Print an init-data document's digest and the HOST_DATA / MRCONFIGID values binding it.
    Digest(DigestArgs),
    /// Decide one agent request (or a JSON list of requests, in order) against
    /// the policy in init-data. Exit 0 allow, 1 deny, 2 malformed.
    Check(CheckArgs),
    /// Semantic diff of two init-data documents (per container, per field).
    /// Exit 0 equal, 1 different.
    Diff(DiffArgs),
}

#[derive(Args)]
pub struct GenerateArgs {
    /// Kubernetes YAML files (multi-document; ConfigMaps/Secrets referenced from any of them).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// OCI image layout holding the images, tagged by reference (org.opencontainers.image.ref.name).
    #[arg(
        long,
        value_name = "DIR",
        required_unless_present = "registry",
        conflicts_with = "registry"
    )]
    image_dir: Option<PathBuf>,
    /// Resolve images through registries (OCI distribution API; linux/amd64
    /// from indexes; every document checked against its digest). Alone:
    /// each image from the registry its reference names. With HOST:PORT:
    /// every image from that registry (a mirror), same repository path.
    /// Plain HTTP only for loopback registries, HTTPS otherwise.
    #[arg(
        long,
        value_name = "HOST:PORT",
        num_args = 0..=1,
        default_missing_value = ""
    )]
    registry: Option<String>,
    /// containers/docker auth.json with registry credentials (for --registry).
    #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    authfile: Option<PathBuf>,
    /// Settings TOML (platform-injected env, default mounts, KBS, defaults).
    #[arg(long, value_name = "FILE")]
    settings: Option<PathBuf>,
    /// Write the annotated YAML here (default: standard output).
    #[arg(short, long, value_name = "OUT.yaml")]
    output: Option<PathBuf>,
    /// Also write the init-data TOML here (needs exactly one workload).
    #[arg(long, value_name = "OUT.toml")]
    init_data: Option<PathBuf>,
    /// The KBS the agent attests to and fetches secrets from (overrides the
    /// settings' kbs.url).
    #[arg(long, value_name = "URL")]
    kbs_url: Option<String>,
    /// A secret for every workload, `NAME=kbs:///repo/type/tag`, placed at
    /// /run/veil/secrets/NAME (repeatable; added to the settings' [kbs.secrets]).
    #[arg(long = "secret", value_name = "NAME=URI")]
    secrets: Vec<String>,
    /// Admit the pods' hostPath volumes (settings: sandbox.allow_host_path):
    /// the untrusted host can read and change them.
    #[arg(long)]
    allow_host_path: bool,
    /// Admit `securityContext.privileged: true` containers (settings:
    /// sandbox.allow_privileged): they get every capability in the sandbox.
    #[arg(long)]
    allow_privileged: bool,
}

#[derive(Args)]
pub struct DigestArgs {
    /// Init-data TOML.
    init_data: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CheckArgs {
    /// Init-data TOML holding policy.rego.
    #[arg(long, value_name = "INIT.toml")]
    init_data: PathBuf,
    /// Agent request JSON: one message, or a list evaluated in order.
    #[arg(long, value_name = "REQ.json")]
    request: PathBuf,
    /// Print decisions as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DiffArgs {
    a: PathBuf,
    b: PathBuf,
}

pub fn run(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::Generate(a) => cmd_generate(a),
        PolicyCommand::Digest(a) => cmd_digest(a),
        PolicyCommand::Check(a) => cmd_check(a),
        PolicyCommand::Diff(a) => cmd_diff(a),
    }
}

fn read_text(path: &Path, what: &str, limit: usize) -> Result<String> {
    String::from_utf8(read_limited(path, what, limit)?)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

fn load_init_data(path: &Path) -> Result<ParsedInitData> {
    let bytes = read_limited(path, "init-data", MAX_INIT_DATA_BYTES)?;
    ParsedInitData::parse(&bytes).with_context(|| format!("{}", path.display()))
}

fn cmd_generate(a: GenerateArgs) -> Result<ExitCode> {
    let settings = match &a.settings {
        Some(p) => Settings::from_toml(&read_text(p, "settings", MAX_SETTINGS_BYTES)?)
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("{}", p.display()))?,
        None => Settings::default(),
    };
    let mut settings = with_kbs_args(settings, a.kbs_url.as_deref(), &a.secrets)?;
    if a.allow_host_path {
        settings.sandbox.allow_host_path = true;
    }
    if a.allow_privileged {
        settings.sandbox.allow_privileged = true;
    }
    // Claims of veil volumes: the settings' `[sandbox.encrypted_volumes]`,
    // else this machine's volume store (as `veil run` and the shim look
    // them up: `veil volume create` on the node that runs the pod).
    for (name, pin) in crate::volume::known(&veil_runtime::paths::data_dir())? {
        settings
            .sandbox
            .encrypted_volumes
            .entry(name)
            .or_insert(pin);
    }
    let mut texts = Vec::new();
    for f in &a.files {
        texts.push(read_text(f, "Kubernetes YAML", MAX_YAML_BYTES)?);
    }
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let resolver: Box<dyn ImageResolver> = match (&a.image_dir, a.registry.as_deref()) {
        (Some(dir), _) => Box::new(LayoutResolver::open(dir).map_err(anyhow::Error::msg)?),
        (None, Some(mirror)) => {
            // `--registry pod.yaml` would swallow the file name: say so.
            if [".yaml", ".yml", ".json"]
                .iter()
                .any(|ext| mirror.ends_with(ext))
            {
                bail!(
                    "--registry {mirror:?} looks like a file, not HOST:PORT: put --registry after the files or write --registry=HOST:PORT"
                );
            }
            let mirror = (!mirror.is_empty()).then_some(mirror);
            Box::new(
                RegistryResolver::new(mirror, a.authfile.as_deref()).map_err(anyhow::Error::msg)?,
            )
        }
        (None, None) => bail!("give --image-dir DIR or --registry [HOST:PORT]"),
    };
    let g = generate(&refs, resolver.as_ref(), &settings)?;
    for w in &g.workloads {
        for v in &w.policy.sandbox.volumes {
            if let Some(e) = &v.encrypted {
                eprintln!(
                    "veil: {} {}: volume {} is the encrypted veil volume {} (LUKS2 UUID {}, key {}), pinned by the policy",
                    w.kind, w.name, v.name, e.volume, e.uuid, e.key
                );
            }
        }
    }
    if a.init_data.is_some() && g.workloads.len() != 1 {
        bail!(
            "--init-data needs exactly one workload, the input defines {} ({})",
            g.workloads.len(),
            g.workloads
                .iter()
                .map(|w| format!("{} {}", w.kind, w.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Both files are staged before either is put in place.
    let mut staged = Vec::new();
    if let Some(p) = &a.output {
        staged.push(stage(
            p,
            g.output_yaml.as_bytes(),
            Access::Public,
            Existing::Replace,
        )?);
    }
    if let Some(p) = &a.init_data {
        let toml = g.workloads[0].init_data_toml.as_bytes();
        staged.push(stage(p, toml, Access::Public, Existing::Replace)?);
    }
    for s in staged {
        s.commit()?;
    }
    // The report goes to stdout when the YAML went to a file, else to stderr.
    let mut report = String::new();
    for w in &g.workloads {
        report.push_str(&format!(
            "{} {}/{}: init-data {} {}\n",
            w.kind,
            w.namespace,
            w.name,
            w.digest.algorithm(),
            w.digest.hex()
        ));
    }
    for u in &g.unsupported {
        report.push_str(&format!("unsupported: {u}\n"));
    }
    for n in &g.notes {
        report.push_str(&format!("note: {n}\n"));
    }
    if a.output.is_some() {
        out!("{report}");
    } else {
        out!("{}", g.output_yaml);
        eprint!("{report}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Apply `--kbs-url` and `--secret NAME=URI` to the settings.
fn with_kbs_args(
    mut settings: Settings,
    url: Option<&str>,
    secrets: &[String],
) -> Result<Settings> {
    if let Some(u) = url {
        settings.kbs.url = u.to_string();
    }
    for s in secrets {
        let (name, uri) = s
            .split_once('=')
            .with_context(|| format!("--secret {s:?}: expected NAME=kbs:///repo/type/tag"))?;
        veil_policy::settings::check_secret(name, uri).map_err(|e| anyhow::anyhow!("--{e}"))?;
        veil_kbs_client::ResourcePath::parse(uri)
            .map_err(|e| anyhow::anyhow!("--secret {name}: {e}"))?;
        if let Some(old) = settings.kbs.secrets.get(name).filter(|old| *old != uri) {
            bail!("--secret {name}={uri}: the settings already map {name} to {old}");
        }
        settings
            .kbs
            .secrets
            .insert(name.to_string(), uri.to_string());
    }
    settings.validate().map_err(anyhow::Error::msg)?;
    Ok(settings)
}

fn cmd_digest(a: DigestArgs) -> Result<ExitCode> {
    let p = load_init_data(&a.init_data)?;
    let d = p.digest();
    let host_data = d.host_data();
    let mrconfigid = d.mr_config_id();
    let sim = d.sim_binding();
    if a.json {
        let v = serde_json::json!({
            "algorithm": d.algorithm().as_str(),
            "digest": d.hex(),
            "canonical": p.is_canonical(),
            "snp_host_data": hex::encode(host_data),
            "snp_host_data_base64": B64.encode(host_data),
            "tdx_mrconfigid": hex::encode(mrconfigid),
            "tdx_mrconfigid_base64": B64.encode(mrconfigid),
            "sim": hex::encode(sim),
        });
        outln!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    outln!("init-data {}", a.init_data.display());
    kv("algorithm", d.algorithm().as_str());
    kv("digest", &d.hex());
    kv(
        "canonical",
        if p.is_canonical() {
            "yes"
        } else {
            "no (not as veil writes it; the digest still covers these exact bytes)"
        },
    );
    kv("HOST_DATA", &hex::encode(host_data));
    kv("  base64", &B64.encode(host_data));
    kv("MRCONFIGID", &hex::encode(mrconfigid));
    kv("  base64", &B64.encode(mrconfigid));
    kv("sim", &hex::encode(sim));
    Ok(ExitCode::SUCCESS)
}

fn cmd_check(a: CheckArgs) -> Result<ExitCode> {
    let init = load_init_data(&a.init_data)?;
    let mut engine = PolicyEngine::from_init_data(&init.init_data)
        .with_context(|| format!("{}", a.init_data.display()))?;
    let bytes = read_limited(&a.request, "request", MAX_MESSAGE_BYTES)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", a.request.display()))?;
    let list = match v {
        serde_json::Value::Array(items) => items,
        one => vec![one],
    };
    if list.is_empty() {
        bail!("{} holds no request", a.request.display());
    }
    let mut msgs = Vec::with_capacity(list.len());
    for (i, item) in list.into_iter().enumerate() {
        msgs.push(
            AgentMessage::from_value(item)
                .with_context(|| format!("{} request {}", a.request.display(), i + 1))?,
        );
    }
    let mut decisions = Vec::new();
    let mut denied = false;
    for m in &msgs {
        let d = engine.enforce(m)?;
        denied = !d.allowed;
        if !a.json {
            if d.allowed {
                outln!("allow: {}", d.kind);
            } else {
                outln!("deny: {}", d.kind);
                for v in &d.violations {
                    outln!("  {}", v.message);
                    outln!("    field:    {}", v.field);
                    outln!("    expected: {}", v.expected);
                    outln!("    actual:   {}", v.actual);
                }
            }
        }
        decisions.push(d);
        if denied {
            break;
        }
    }
    if a.json {
        outln!("{}", serde_json::to_string_pretty(&decisions)?);
    }
    Ok(if denied {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn cmd_diff(a: DiffArgs) -> Result<ExitCode> {
    let x = load_init_data(&a.a)?;
    let y = load_init_data(&a.b)?;
    let changes = diff_init_data(&x.init_data, &y.init_data);
    if changes.is_empty() {
        if x.raw() == y.raw() {
            outln!("identical");
        } else {
            outln!("equivalent (same content, different bytes: the digests differ)");
        }
        return Ok(if x.raw() == y.raw() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        });
    }
    for c in &changes {
        outln!("{c}");
    }
    Ok(ExitCode::from(1))
}
