//! `veil run` and the docker-like lifecycle commands around it
//! (`ps`, `logs`, `exec`, `kill`, `stop`, `rm`, `inspect`), plus
//! `veil secret` for the embedded KBS.
//!
//! `veil run` owns its sandbox: it starts the sim platform, the embedded
//! KBS (unless `--kbs`), the process sandbox with `veil-agent`, asks the
//! agent to create and start the containers, streams their output and
//! tears everything down when they exit, on Ctrl-C, or when the agent dies.
//! With `-d` the same work is done by a detached monitor (`veil run --monitor ID`).

pub mod bench;
pub mod bench_service;
pub mod bench_volume;
pub mod docker;
pub mod local_kbs;
pub mod logs;
pub mod net;
pub mod pull;
pub mod stats;
pub use veil_runtime::pod::record;
pub mod stdio;
pub mod vm;
pub mod volumes;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Subcommand};
use nix::sys::signal::{SigSet, Signal};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use veil_agent_api::{AgentRequest, GetEvidenceRequest, Stream};
use veil_image::OciRef;
use veil_policy::{InitData, ParsedInitData, PolicyData};
use veil_runtime::pod::{self, PodClient, PodError, PodNet, Sandbox, SandboxSpec};
use veil_runtime::{AgentClient, SimPlatform, requests};

use local_kbs::LocalKbs;
use record::Record;

/// Arguments of `veil run`.
#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct RunArgs {
    /// The image: a registry reference as docker takes it (`redis:7`,
    /// `host:port/repo:tag`, `docker://…`, `repo@sha256:…`), pulled into
    /// veil's image cache, or `oci:DIR[:TAG]` (an OCI image layout).
    #[arg(required_unless_present_any = ["pod", "monitor"], conflicts_with = "pod")]
    pub image: Option<String>,
    /// The reference an image was pulled from (set by `veil run` itself).
    #[arg(skip)]
    #[serde(default)]
    pub pulled_from: Option<String>,
    /// The normalized reference the guest pulls itself (set by `veil run`
    /// itself when the pull happens in the guest, see `--pull-in`).
    #[arg(skip)]
    #[serde(default)]
    pub guest_pull: Option<String>,
    /// Run the pod (containers) of a Kubernetes YAML file instead of one image.
    #[arg(long)]
    pub pod: Option<PathBuf>,
    /// The OCI image layout the pod's images come from (with --pod); without
    /// it, they are pulled by reference into veil's image cache.
    #[arg(long)]
    pub oci_layout: Option<PathBuf>,
    /// Init-data (with the policy) to run under; without it, the policy is
    /// generated from the image or pod.
    #[arg(long)]
    pub init_data: Option<PathBuf>,
    /// KBS URL; without it (and without a KBS in --init-data) an embedded KBS is started.
    #[arg(long)]
    pub kbs: Option<String>,
    /// CA certificate (PEM) to trust for the KBS's TLS.
    #[arg(long, requires = "kbs")]
    pub kbs_cert: Option<PathBuf>,
    /// A secret for the workload, `NAME=kbs:///repo/type/tag`, placed at
    /// /run/veil/secrets/NAME (repeatable; generated policies only).
    #[arg(long = "secret", value_name = "NAME=URI")]
    pub secrets: Vec<String>,
    /// A command `veil exec` may run in the container, as `'CMD ARGS'`
    /// (split at spaces; repeatable; single-image runs with a generated policy).
    #[arg(long = "allow-exec", value_name = "'CMD ARGS'")]
    pub allow_exec: Vec<String>,
    /// Admit the pod's `securityContext.privileged: true` containers in the
    /// generated policy (with --pod; they get every capability in the sandbox).
    #[arg(long, requires = "pod")]
    #[serde(default)]
    pub allow_privileged: bool,
    /// Run in the background and print the sandbox id.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Name of the sandbox (and pod).
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the sandbox's record when it exits.
    #[arg(long)]
    pub rm: bool,
    /// The veil-agent binary (default: $VEIL_AGENT, then next to veil, then PATH).
    #[arg(long, env = "VEIL_AGENT")]
    pub agent: Option<PathBuf>,
    /// Print phase timings (policy, launch + attestation, pull, start) at the end.
    #[arg(long)]
    pub timings: bool,
    /// Sandbox and TEE (`--sandbox vm --tee sim|snp|tdx`, see docs/vm.md).
    #[command(flatten)]
    pub vm: Box<vm::VmArgs>,
    /// Bounds on unpacking the images in the guest (into the generated policy).
    #[command(flatten)]
    pub unpack: crate::limits::ImageLimitArgs,
    /// The pod network and published ports (docs/network.md).
    #[command(flatten)]
    #[serde(default)]
    pub net: net::NetArgs,
    /// `-i`, `-t`.
    #[command(flatten)]
    #[serde(default)]
    pub stdio: stdio::StdioArgs,
    /// `-e`, `--env-file`, `-w`, `-u`, `--entrypoint`, `--hostname`.
    #[command(flatten)]
    #[serde(default)]
    pub docker: docker::DockerArgs,
    /// `--pull`, `--default-registry`, `--authfile`.
    #[command(flatten)]
    #[serde(default)]
    pub pull: pull::PullArgs,
    /// `--config` (pod volumes, docs/run.md).
    #[command(flatten)]
    #[serde(default)]
    pub volumes: volumes::VolumeArgs,
    /// Internal: run as the detached monitor of sandbox ID.
    #[arg(long, hide = true)]
    pub monitor: Option<String>,
    /// Command and arguments replacing the image's entrypoint and cmd.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// `veil exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Sandbox id (or unique prefix, or name).
    pub id: String,
    /// Container (policy name); default: the first.
    #[arg(long)]
    pub container: Option<String>,
    /// `-i`, `-t`.
    #[command(flatten)]
    pub stdio: stdio::StdioArgs,
    /// The command.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
}

/// `veil logs`, `veil stop`, `veil inspect`.
#[derive(Args, Debug)]
pub struct IdArgs {
    /// Sandbox id (or unique prefix, or name).
    pub id: String,
}

/// `veil stop`.
#[derive(Args, Debug)]
pub struct IdsArgs {
    /// Sandbox ids (or unique prefixes, or names).
    #[arg(required = true)]
    pub ids: Vec<String>,
}

/// `veil kill`.
#[derive(Args, Debug)]
pub struct KillArgs {
    /// Sandbox id (or unique prefix, or name).
    pub id: String,
    /// Signal: a number, or a name with or without SIG (`15`, `TERM`, `SIGTERM`).
    #[arg(short, long, default_value = "KILL", value_parser = parse_signal)]
    pub signal: u32,
}

/// `veil prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {}

/// `veil rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Sandbox ids (or unique prefixes, or names).
    #[arg(required = true)]
    pub ids: Vec<String>,
    /// Stop it first if it is running.
    #[arg(short, long)]
    pub force: bool,
}

/// `veil ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Show exited sandboxes too.
    #[arg(short, long)]
    pub all: bool,
    /// Only the ids, one a line.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,
    /// JSON output (snake_case keys, RFC 3339 times).
    #[arg(long)]
    pub json: bool,
}

/// `veil secret`: resources of the embedded KBS.
#[derive(Subcommand, Debug)]
pub enum SecretCommand {
    /// Store a resource (`repo/type/tag`) from a file (`-` for stdin).
    Put { path: String, file: PathBuf },
    /// List stored resources (paths, sizes, times; never values).
    Ls {
        /// JSON output (snake_case keys, RFC 3339 times).
        #[arg(long)]
        json: bool,
    },
    /// Delete a resource.
    Rm { path: String },
}

/// veil's data dir, private to its owner: run records, workload output,
/// init-data, agent logs, the embedded KBS. Everything the run commands
/// create from here on is 0700/0600 (umask 077); a data dir left open by an
/// older veil is closed (0700).
fn data_dir() -> Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let d = veil_runtime::paths::data_dir();
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&d)
        .with_context(|| format!("creating veil's data dir {}", d.display()))?;
    let meta = std::fs::metadata(&d).with_context(|| format!("{}", d.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making veil's data dir {} private (0700)", d.display()))?;
    }
    Ok(d)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn new_id() -> String {
    let mut b = [0u8; 6];
    OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn agent_binary(a: &RunArgs) -> Result<PathBuf> {
    vm::find_agent(a.agent.as_deref())
}

/// The `veil-agent` binary: `explicit`, else next to `veil`, else in PATH.
pub fn find_agent(explicit: Option<&Path>) -> Result<PathBuf> {
    vm::find_agent(explicit)
}

/// The policy and init-data a run uses, and where they came from.
struct Workload {
    init_data: Vec<u8>,
    policy: PolicyData,
    generated: bool,
    /// Where the policy came from, as the summary says it.
    policy_from: String,
    /// The OCI layout handed to the sandbox; `None` when the guest pulls.
    layout: Option<PathBuf>,
    image_label: String,
    pod_name: String,
    /// What the pod's configMap/secret/downwardAPI/projected volumes hold.
    volume_contents: Vec<veil_agent_api::VolumeContent>,
}

/// A JSON string literal, which is also a valid TOML basic string and YAML scalar.
fn quoted(s: &str) -> String {
    serde_json::Value::String(s.into()).to_string()
}

/// Add the `--secret NAME=URI` credentials to the cdh.toml of init-data.
fn add_credentials(init: &mut InitData, secrets: &[String]) -> Result<()> {
    if secrets.is_empty() {
        return Ok(());
    }
    let mut entries = Vec::new();
    for s in secrets {
        let (name, uri) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("--secret {s:?}: expected NAME=kbs:///repo/type/tag"))?;
        if name.is_empty()
            || name.starts_with('.')
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            bail!("--secret name {name:?}: use [A-Za-z0-9._-], not starting with .");
        }
        if !uri.starts_with("kbs://") {
            bail!("--secret {name}: {uri:?} must be a kbs:/// URI");
        }
        veil_kbs_client::ResourcePath::parse(uri).map_err(|e| anyhow!("--secret {name}: {e}"))?;
        entries.push(format!(
            "{{ path = {}, resource_uri = {} }}",
            quoted(&format!("/run/veil/secrets/{name}")),
            quoted(uri)
        ));
    }
    let cdh = init
        .data
        .get_mut(veil_policy::initdata::CDH_KEY)
        .ok_or_else(|| anyhow!("--secret needs a KBS in init-data"))?;
    if !cdh.contains("credentials = []") {
        bail!("the generated cdh.toml has no empty credentials list to fill");
    }
    *cdh = cdh.replacen(
        "credentials = []",
        &format!("credentials = [{}]", entries.join(", ")),
        1,
    );
    Ok(())
}

/// Every `--secret` must be in the embedded KBS: say so before launching,
/// with how to store it, rather than fail the guest's attestation.
fn check_secrets_stored(kbs: &LocalKbs, secrets: &[String]) -> Result<()> {
    if secrets.is_empty() {
        return Ok(());
    }
    let v = kbs
        .admin_client()?
        .list_resources()
        .map_err(|e| anyhow!("listing the embedded KBS's resources: {e}"))?;
    let list = v
        .as_array()
        .or_else(|| v.get("resources").and_then(|r| r.as_array()))
        .cloned()
        .unwrap_or_default();
    for s in secrets {
        let Some((name, uri)) = s.split_once('=') else {
            continue; // add_credentials names the syntax error
        };
        let path = uri.trim_start_matches("kbs://").trim_start_matches('/');
        if !list.iter().any(|r| r["path"].as_str() == Some(path)) {
            bail!(
                "--secret {name}: {uri} is not stored in the embedded KBS (see `veil secret ls`); store it with `veil secret put {path} FILE`"
            );
        }
    }
    Ok(())
}

fn settings_for(kbs_url: &str, kbs_cert: Option<&Path>) -> Result<veil_policy::Settings> {
    let mut s = veil_policy::Settings::default();
    s.kbs.url = kbs_url.into();
    if let Some(c) = kbs_cert {
        s.kbs.cert =
            std::fs::read_to_string(c).with_context(|| format!("reading {}", c.display()))?;
    }
    Ok(s)
}

/// Init-data the user gave: `--init-data FILE`, else the CoCo annotation
/// (`io.katacontainers.config.hypervisor.cc_init_data`) of the `--pod`
/// YAML, as `veil policy generate` writes it. With a label for messages.
struct GivenInitData {
    bytes: Vec<u8>,
    label: String,
}

/// The `cc_init_data` annotation of the first workload in a pod YAML that
/// has one: base64 of gzip (as CoCo writes it), or plain TOML.
fn annotated_init_data(yaml: &str, file: &Path) -> Result<Option<Vec<u8>>> {
    use veil_policy::initdata::{INIT_DATA_ANNOTATION, decode_annotation};
    let docs = veil_policy::generate::parse_documents(&[yaml])
        .map_err(|e| anyhow!("{}: {e}", file.display()))?;
    for d in &docs {
        let metas = [
            d.pointer("/metadata/annotations"),
            d.pointer("/spec/template/metadata/annotations"),
            d.pointer("/spec/jobTemplate/spec/template/metadata/annotations"),
        ];
        for a in metas.into_iter().flatten() {
            let Some(v) = a.get(INIT_DATA_ANNOTATION).and_then(|v| v.as_str()) else {
                continue;
            };
            let bytes = match decode_annotation(v) {
                Ok(b) => b,
                Err(gz) if ParsedInitData::parse(v.as_bytes()).is_ok() => {
                    let _ = gz;
                    v.as_bytes().to_vec()
                }
                Err(e) => bail!(
                    "{}: annotation {INIT_DATA_ANNOTATION}: {e} (expected base64 of gzipped init-data TOML, or the TOML itself)",
                    file.display()
                ),
            };
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

fn given_init_data(a: &RunArgs) -> Result<Option<GivenInitData>> {
    if let Some(f) = &a.init_data {
        let bytes = std::fs::read(f).with_context(|| format!("reading {}", f.display()))?;
        return Ok(Some(GivenInitData {
            bytes,
            label: "--init-data".into(),
        }));
    }
    if let Some(pod) = &a.pod {
        let text =
            std::fs::read_to_string(pod).with_context(|| format!("reading {}", pod.display()))?;
        if let Some(bytes) = annotated_init_data(&text, pod)? {
            return Ok(Some(GivenInitData {
                bytes,
                label: format!(
                    "the pod's {} annotation",
                    veil_policy::initdata::INIT_DATA_ANNOTATION
                ),
            }));
        }
    }
    Ok(None)
}

/// Arguments that a run cannot honour together, refused before anything
/// starts rather than silently ignored.
fn check_conflicts(a: &RunArgs, given: Option<&GivenInitData>) -> Result<()> {
    a.vm.check_process_flags()?;
    a.docker.check()?;
    if a.pod.is_some() && a.docker.any() {
        bail!(
            "-e/--env-file/-w/-u/--entrypoint are for single-image runs; for --pod, set env, workingDir, securityContext and command in the pod YAML"
        );
    }
    if a.pod.is_some() && !(a.volumes.volume.is_empty() && a.volumes.mount.is_empty()) {
        bail!(
            "-v/--mount are for single-image runs; for --pod, declare the volumes (emptyDir, hostPath with --allow-host-path) and volumeMounts in the pod YAML"
        );
    }
    if !a.allow_exec.is_empty() && a.image.is_none() {
        bail!(
            "--allow-exec is for single-image runs; for --pod, add the annotation {}<container>: '[[\"cmd\", \"arg\"]]' to the pod",
            veil_policy::generate::ANNOTATION_EXEC
        );
    }
    let Some(g) = given else {
        return Ok(());
    };
    let why = format!("the policy comes from {}", g.label);
    if !a.command.is_empty() {
        bail!(
            "-- {}: the command is fixed by the policy ({why}); drop the command, or drop --init-data to generate a policy for it",
            a.command.join(" ")
        );
    }
    if !a.secrets.is_empty() {
        bail!(
            "--secret only works with a generated policy: {why}, and the secrets are the credentials its cdh.toml lists"
        );
    }
    if a.unpack.any() {
        bail!(
            "--max-image-* only work with a generated policy: {why}, and the unpack limits are the policy's (set [sandbox.unpack_limits] in the settings when generating it)"
        );
    }
    if !a.allow_exec.is_empty() {
        bail!(
            "--allow-exec only works with a generated policy: {why}; allow the command with the pod annotation {}<container> when generating it",
            veil_policy::generate::ANNOTATION_EXEC
        );
    }
    if a.allow_privileged {
        bail!(
            "--allow-privileged only works with a generated policy: {why}; set {} = true in the settings when generating it",
            veil_policy::generate::ALLOW_PRIVILEGED_SETTING
        );
    }
    if !a.volumes.volume.is_empty() || !a.volumes.mount.is_empty() || a.volumes.allow_host_path {
        bail!(
            "-v/--mount/--allow-host-path only work with a generated policy: {why}, and the volumes are the ones it declares (sandbox.volumes)"
        );
    }
    Ok(())
}

/// `--name` must not name another sandbox (running or not), as with docker.
fn check_name_unused(data: &Path, name: Option<&str>) -> Result<()> {
    let Some(name) = name else {
        return Ok(());
    };
    if let Some(r) = Record::all(data)?.into_iter().find(|r| r.name == name) {
        bail!(
            "--name {name:?} is already in use by sandbox {} ({}); remove it with `veil rm -f {}`, or choose another name",
            r.id,
            r.effective_status(),
            r.id
        );
    }
    Ok(())
}

/// The pod name to run under: `--name` if it fits the policy's pattern
/// (refused otherwise, naming the pattern), else the policy's literal
/// name, else a name made to fit the pattern (a Deployment's `web-…-…`).
fn pod_name_for(policy: &PolicyData, given: Option<&str>, id: &str) -> Result<String> {
    let pattern = &policy.sandbox.pod_name;
    if let Some(n) = given {
        if !requests::pod_name_fits(pattern, n) {
            bail!(
                "--name {n:?} does not fit the policy's pod name pattern {pattern:?}; pass a name that matches it, or no --name to have one made up"
            );
        }
        return Ok(n.to_string());
    }
    requests::pod_name(policy)
        .or_else(|| requests::fitting_pod_name(pattern, id))
        .ok_or_else(|| {
            anyhow!("the policy's pod name pattern {pattern:?} is not a single name; pass --name")
        })
}

fn workload(
    a: &RunArgs,
    id: &str,
    kbs_url: &str,
    given: Option<&GivenInitData>,
    quiet: bool,
) -> Result<Workload> {
    let (layout, image_label, pod_yaml) = match (&a.image, &a.pod) {
        (Some(img), None) => {
            // The layout and the digest in it, unless the guest pulls.
            let (layout_dir, reference, digest) = match &a.guest_pull {
                Some(r) => (None, r.clone(), None),
                None => {
                    let r = OciRef::parse(img).map_err(|e| anyhow!("{e}"))?;
                    let layout = veil_image::OciLayout::open(&r.dir).map_err(|e| anyhow!("{e}"))?;
                    let desc = layout.find(r.tag.as_deref()).map_err(|e| anyhow!("{e}"))?;
                    let reference = desc
                        .annotations
                        .get(veil_image::spec::ANNOTATION_REF_NAME)
                        .cloned()
                        .ok_or_else(|| {
                            anyhow!("the image in {} has no ref name (tag it)", r.dir.display())
                        })?;
                    (
                        Some(r.dir.clone()),
                        reference,
                        Some(desc.digest.to_string()),
                    )
                }
            };
            if let Some(g) = given {
                // The image only supplies the layout: the policy pins what
                // runs. An image the policy does not name would be refused
                // at pull; say so now.
                let p = ParsedInitData::parse(&g.bytes).map_err(|e| anyhow!("{e}"))?;
                let policy = veil_policy::rego::extract_policy_data(
                    p.init_data.policy().map_err(|e| anyhow!("{e}"))?,
                )
                .map_err(|e| anyhow!("{e}"))?;
                let digest = digest.clone().unwrap_or_else(|| "its pinned digest".into());
                if !policy
                    .containers
                    .iter()
                    .any(|c| c.image.digest == digest || c.image.reference == reference)
                {
                    let named: Vec<String> = policy
                        .containers
                        .iter()
                        .map(|c| format!("{} ({})", c.image.reference, c.image.digest))
                        .collect();
                    bail!(
                        "{img} ({reference}, {digest}) is not an image the policy from {} runs ({}); give the image it names, or drop --init-data to generate a policy for this one",
                        g.label,
                        named.join(", ")
                    );
                }
            }
            let name = a.name.clone().unwrap_or_else(|| format!("veil-{id}"));
            let mut yaml = format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {}\n  namespace: default\n",
                quoted(&name),
            );
            if !a.allow_exec.is_empty() {
                let argvs: Vec<Vec<&str>> = a
                    .allow_exec
                    .iter()
                    .map(|c| c.split_whitespace().collect())
                    .collect();
                if argvs.iter().any(Vec::is_empty) {
                    bail!("--allow-exec: empty command");
                }
                yaml.push_str(&format!(
                    "  annotations:\n    {}app: {}\n",
                    veil_policy::generate::ANNOTATION_EXEC,
                    quoted(&serde_json::to_string(&argvs)?)
                ));
            }
            yaml.push_str(&format!(
                "spec:\n  containers:\n  - name: app\n    image: {}\n",
                quoted(&reference)
            ));
            yaml.push_str(&a.docker.pod_yaml(&a.command)?);
            yaml.push_str(&a.stdio.pod_yaml());
            yaml.push_str(&a.net.pod_yaml()?);
            let (mounts, volumes) = a.volumes.pod_yaml()?;
            yaml.push_str(&mounts);
            yaml.push_str(&volumes);
            (
                layout_dir,
                a.pulled_from.clone().unwrap_or_else(|| img.clone()),
                yaml,
            )
        }
        (None, Some(pod)) => {
            let text = std::fs::read_to_string(pod)
                .with_context(|| format!("reading {}", pod.display()))?;
            // Pulled by the guest: no layout.
            let layout = match &a.guest_pull {
                Some(_) => None,
                None => Some(
                    a.oci_layout
                        .clone()
                        .ok_or_else(|| anyhow!("--pod needs --oci-layout"))?,
                ),
            };
            (layout, pod.display().to_string(), text)
        }
        _ => bail!(
            "give an image (a registry reference such as redis:7, or oci:DIR[:TAG]) or --pod FILE"
        ),
    };
    let config_texts = a.volumes.config_texts()?;
    let inputs: Vec<&str> = std::iter::once(pod_yaml.as_str())
        .chain(config_texts.iter().map(String::as_str))
        .collect();
    let volume_contents = volumes::contents(&inputs)?;
    if let Some(g) = given {
        let parsed = ParsedInitData::parse(&g.bytes).map_err(|e| anyhow!("{}: {e}", g.label))?;
        let policy = veil_policy::rego::extract_policy_data(
            parsed.init_data.policy().map_err(|e| anyhow!("{e}"))?,
        )
        .map_err(|e| anyhow!("{}: {e}", g.label))?;
        if a.init_data.is_none() {
            say(
                quiet,
                &format!(
                    "veil: using the init-data of {} in {} ({}): its policy, not a newly generated one",
                    g.label,
                    image_label,
                    parsed.digest()
                ),
            );
        }
        let pod_name = pod_name_for(&policy, a.name.as_deref(), id)?;
        return Ok(Workload {
            init_data: g.bytes.clone(),
            policy,
            generated: false,
            policy_from: format!("from {}", g.label),
            layout,
            image_label,
            pod_name,
            volume_contents,
        });
    }
    // The digest to pin: from the layout, or (guest pull) the registry's
    // manifest and config only, never a layer.
    let resolver: Box<dyn veil_policy::generate::ImageResolver> = match &layout {
        Some(l) => {
            Box::new(veil_policy::generate::LayoutResolver::open(l).map_err(|e| anyhow!("{e}"))?)
        }
        None => {
            let r = veil_policy::generate::RegistryResolver::new(None, a.pull.authfile.as_deref())
                .map_err(|e| anyhow!("{e}"))?;
            Box::new(match pull::connection(&a.pull)?.ca_pem {
                Some(pem) => r.with_ca(pem),
                None => r,
            })
        }
    };
    let mut settings = settings_for(kbs_url, a.kbs_cert.as_deref())?;
    if a.guest_pull.is_some() {
        settings.image.registry_credentials_uri = a.pull.registry_auth.clone().unwrap_or_default();
        settings.image.extra_root_certificates = pull::registry_cas(&a.pull)?;
    }
    settings.sandbox.unpack_limits = a.unpack.bounds();
    settings.sandbox.allow_host_path = a.volumes.host_paths_allowed();
    settings.sandbox.allow_privileged = a.allow_privileged;
    settings.sandbox.encrypted_volumes = crate::volume::known(&veil_runtime::paths::data_dir())?;
    let g = veil_policy::generate::generate(&inputs, resolver.as_ref(), &settings)
        .map_err(|e| anyhow!("generating the policy: {e}"))?;
    let w = g
        .workloads
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("the input defines no workload"))?;
    let mut init = w.init_data;
    add_credentials(&mut init, &a.secrets)?;
    let toml = init.to_toml().map_err(|e| anyhow!("{e}"))?;
    let pod_name = pod_name_for(&w.policy, a.name.as_deref(), id)?;
    Ok(Workload {
        init_data: toml.into_bytes(),
        policy: w.policy,
        generated: true,
        policy_from: if a.pod.is_some() {
            "policy generated from the pod".into()
        } else {
            "policy generated from the image".into()
        },
        layout,
        image_label,
        pod_name,
        volume_contents,
    })
}

/// Events the foreground loop waits for.
enum Event {
    /// One output stream of a container reached its end (the process has
    /// exited and everything it wrote was read).
    Exited {
        container: String,
        stream: Stream,
        code: i32,
    },
    Signal(Signal),
    /// The connection to the agent broke (the agent died).
    AgentLost(String),
}

fn block_signals() -> Result<SigSet> {
    let mut s = SigSet::empty();
    s.add(Signal::SIGINT);
    s.add(Signal::SIGTERM);
    s.add(Signal::SIGHUP);
    // Forwarded to a container's terminal (`-t`), ignored otherwise.
    s.add(Signal::SIGWINCH);
    s.thread_block().context("blocking signals")?;
    Ok(s)
}

/// `veil run`.
pub fn run(mut a: RunArgs) -> Result<ExitCode> {
    let data = data_dir()?;
    if let Some(id) = a.monitor.clone() {
        let saved = std::fs::read(record::dir_of(&data, &id).join("run-args.json"))
            .context("reading the monitor's arguments")?;
        a = serde_json::from_slice(&saved).context("parsing the monitor's arguments")?;
        a.monitor = Some(id.clone());
        return foreground(a, &data, id, true);
    }
    // Refuse what cannot be honoured before anything (even a record) exists.
    check_conflicts(&a, given_init_data(&a)?.as_ref())?;
    a.net.check(a.vm.is_vm())?;
    net::reap(&data);
    check_name_unused(&data, a.name.as_deref())?;
    let id = new_id();
    pull_image(&mut a, &data, &id)?;
    if a.detach {
        return detach(a, &data, &id);
    }
    foreground(a, &data, id, false)
}

/// An image given by reference is pulled (before a `-d` run detaches, so
/// the progress and any refusal reach the caller) into a layout of the run's
/// own; the run then proceeds as for `oci:DIR:TAG`.
fn pull_image(a: &mut RunArgs, data: &Path, id: &str) -> Result<()> {
    let dir = record::dir_of(data, id);
    if let (Some(pod), None) = (&a.pod, &a.oci_layout) {
        let yaml =
            std::fs::read_to_string(pod).with_context(|| format!("reading {}", pod.display()))?;
        let images = pull::pod_images(&yaml)?;
        // In the guest when every image can be pulled there (one pull
        // model per pod: the sandbox gets a layout of them all, or none).
        let network = a.vm.is_vm() && a.net.network.as_deref() != Some("none");
        let mut in_guest = !images.is_empty();
        for i in &images {
            in_guest &=
                pull::pulls_in_guest(&a.pull, i, a.vm.is_vm(), network, a.init_data.is_some())?;
        }
        if in_guest {
            check_guest_pull_args(a)?;
            a.guest_pull = Some(
                images
                    .iter()
                    .map(|i| pull::normalize(i, &a.pull.default_registry).map(|r| r.to_string()))
                    .collect::<Result<Vec<_>>>()?
                    .join(", "),
            );
            return Ok(());
        }
        if a.pull.registry_auth.is_some() {
            bail!(
                "--registry-auth names credentials for the guest's own pull, but the pod's images are pulled on the host (see --pull-in); give the host's credentials with --authfile"
            );
        }
        let layout = pull::pull_pod(&yaml, &a.pull, data, &dir).inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&dir);
        })?;
        a.oci_layout = Some(layout);
        return Ok(());
    }
    let Some(img) = a.image.clone().filter(|i| !pull::is_layout(i)) else {
        if a.pull.pull_in == pull::PullIn::Guest {
            bail!(
                "--pull-in guest pulls images given by registry reference; {} is handed to the sandbox on a read-only disk (use a reference such as host:port/repo:tag)",
                a.image
                    .as_deref()
                    .map(quoted)
                    .unwrap_or_else(|| "--pod with --oci-layout".into())
            );
        }
        return Ok(());
    };
    let network = a.vm.is_vm() && a.net.vm_workload()?.is_some();
    if pull::pulls_in_guest(&a.pull, &img, a.vm.is_vm(), network, a.init_data.is_some())? {
        check_guest_pull_args(a)?;
        a.guest_pull = Some(pull::normalize(&img, &a.pull.default_registry)?.to_string());
        a.pulled_from = Some(img);
        return Ok(());
    }
    if a.pull.registry_auth.is_some() {
        bail!(
            "--registry-auth names credentials for the guest's own pull, but {img} is pulled on the host (see --pull-in); give the host's credentials with --authfile"
        );
    }
    let pulled = pull::pull_for_run(&img, &a.pull, data, &dir).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&dir);
    })?;
    if pulled.fetched {
        eprintln!("veil: pulled {} ({})", pulled.name, pulled.digest);
    }
    a.image = Some(pulled.oci_ref);
    a.pulled_from = Some(img);
    Ok(())
}

/// `--registry-auth`/`--registry-ca` for a guest pull: they go into a
/// generated policy's init-data, so not with `--init-data`; the credentials
/// must be a KBS resource.
fn check_guest_pull_args(a: &RunArgs) -> Result<()> {
    if a.init_data.is_some() && (a.pull.registry_auth.is_some() || a.pull.registry_ca.is_some()) {
        bail!(
            "--registry-auth and --registry-ca go into a generated policy's init-data; with --init-data, put them in its cdh.toml [image] (authenticated_registry_credentials_uri, extra_root_certificates)"
        );
    }
    if let Some(u) = &a.pull.registry_auth {
        let path = u.strip_prefix("kbs:///").ok_or_else(|| {
            anyhow!("--registry-auth {u:?}: expected kbs:///repo/type/tag (a resource in the KBS)")
        })?;
        veil_kbs_client::ResourcePath::parse(path)
            .map_err(|e| anyhow!("--registry-auth {u:?}: {e}"))?;
    }
    Ok(())
}

fn detach(a: RunArgs, data: &Path, id: &str) -> Result<ExitCode> {
    let dir = record::dir_of(data, id);
    std::fs::create_dir_all(&dir)?;
    let mut saved = a.clone();
    saved.detach = false;
    saved.agent = Some(agent_binary(&a)?);
    std::fs::write(dir.join("run-args.json"), serde_json::to_vec(&saved)?)?;
    let log = std::fs::File::create(dir.join("monitor.log"))?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(["run", "--monitor", id])
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the monitor")?;
    // A VM may take its whole --boot-timeout (plus a KVM→TCG fallback).
    let wait = if a.vm.is_vm() {
        a.vm.boot_timeout().saturating_add(60).max(180)
    } else {
        180
    };
    let deadline = Instant::now() + Duration::from_secs(wait);
    // Once the workload has started, `-d` has succeeded, whatever happens
    // next: a workload that exits at once leaves its monitor gone and its
    // record `exited` by the time this loop looks, and that is still a
    // started sandbox (its output and exit code are in `veil logs`/`ps -a`).
    let started = |r: &Record| r.started || r.status == "running";
    loop {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        // Read the record after checking the monitor, so that a monitor
        // that exited has written its last record by then.
        if let Ok(r) = Record::load(data, id) {
            if started(&r) {
                print_summary(&r);
                // Tell a `--rm` monitor that the record was read.
                let _ = std::fs::write(dir.join(SEEN), b"");
                println_or_pipe(id)?;
                return Ok(ExitCode::SUCCESS);
            }
            if r.status == "failed" {
                bail!("{}", r.error);
            }
        }
        if exited {
            let s = child.try_wait().ok().flatten();
            let log = std::fs::read_to_string(dir.join("monitor.log")).unwrap_or_default();
            bail!(
                "the sandbox monitor of {id} exited ({}) before the workload started:\n{log}",
                s.map(|s| s.to_string()).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "the sandbox {id} did not start within {wait} s (see {})",
                dir.join("monitor.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Write to stdout; a reader that went away (`| head`) is not an error.
fn out_or_pipe(bytes: &[u8]) -> Result<()> {
    let mut o = std::io::stdout().lock();
    match o.write_all(bytes).and_then(|_| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("writing to stdout"),
    }
}

fn println_or_pipe(line: &str) -> Result<()> {
    out_or_pipe(format!("{line}\n").as_bytes())
}

/// The file `veil run -d` creates in the sandbox dir once it has read
/// the started record.
const SEEN: &str = "detach-seen";

/// A `-d --rm` monitor whose workload ended at once waits (up to 10 s,
/// or until the `veil run -d` that started it is gone) for that command to
/// read the record before removing it, so that `-d` never reports a started
/// sandbox as failed.
fn wait_until_seen(dir: &Path, parent: nix::unistd::Pid) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join(SEEN).exists() && nix::unistd::getppid() == parent && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn ms(t: Instant) -> serde_json::Value {
    serde_json::Value::from(t.elapsed().as_millis() as u64)
}

fn foreground(a: RunArgs, data: &Path, id: String, quiet: bool) -> Result<ExitCode> {
    let t0 = Instant::now();
    // For a monitor: the `veil run -d` that started it.
    let parent = nix::unistd::getppid();
    // Before any thread exists, so that every thread inherits the mask.
    let sigs = block_signals()?;
    let dir = record::dir_of(data, &id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut rec = Record {
        id: id.clone(),
        // What was asked for, so that `veil ps -a` shows it even when the
        // run fails before the image is opened.
        image: a
            .image
            .clone()
            .or_else(|| a.pod.as_ref().map(|p| p.display().to_string()))
            .unwrap_or_default(),
        name: a.name.clone().unwrap_or_default(),
        created: now(),
        status: "starting".into(),
        owner_pid: std::process::id(),
        ..Default::default()
    };
    let result = run_sandbox(&a, data, &dir, &mut rec, sigs, quiet, t0);
    match &result {
        Ok(code) => {
            rec.status = "exited".into();
            rec.exit_code = Some(*code);
        }
        Err(e) => {
            rec.status = "failed".into();
            rec.error = format!("{e:#}");
        }
    }
    rec.socket = PathBuf::new();
    rec.agent_pid = 0;
    let _ = rec.save(data);
    if a.rm {
        if a.monitor.is_some() {
            wait_until_seen(&dir, parent);
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    let code = result?;
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

struct Output {
    log: Mutex<std::fs::File>,
    /// Per line, for `veil logs -c/--tail/--timestamps/-f`.
    lines: logs::LineLog,
    quiet: bool,
    prefix: bool,
    /// The (container, is-stdout) streams whose last write ended inside a
    /// line: their next write continues it, unprefixed.
    mid_line: Mutex<std::collections::HashSet<(String, bool)>>,
}

impl Output {
    fn write(&self, container: &str, stream: Stream, bytes: &[u8]) {
        if let Ok(mut f) = self.log.lock() {
            let _ = f.write_all(bytes);
        }
        self.lines.write(container, stream, bytes);
        if self.quiet {
            return;
        }
        let mut buf = Vec::new();
        if self.prefix && !bytes.is_empty() {
            let key = (container.to_string(), matches!(stream, Stream::Stdout));
            let mut mid = self.mid_line.lock().unwrap_or_else(|e| e.into_inner());
            let mut inside = mid.contains(&key);
            buf = prefix_lines(container, bytes, &mut inside);
            if inside {
                mid.insert(key);
            } else {
                mid.remove(&key);
            }
        } else {
            buf.extend_from_slice(bytes);
        }
        let _ = match stream {
            Stream::Stdout => std::io::stdout()
                .lock()
                .write_all(&buf)
                .and_then(|_| std::io::stdout().flush()),
            Stream::Stderr => std::io::stderr().lock().write_all(&buf),
        };
    }
}

/// `bytes` with `[container] ` before each line that starts in them;
/// `inside` says whether the stream's previous bytes ended inside a line
/// (that line's rest gets no prefix) and is updated for the next call.
fn prefix_lines(container: &str, bytes: &[u8], inside: &mut bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(bytes.len() + container.len() + 3);
    for line in bytes.split_inclusive(|b| *b == b'\n') {
        if !*inside {
            buf.extend_from_slice(format!("[{container}] ").as_bytes());
        }
        buf.extend_from_slice(line);
        *inside = !line.ends_with(b"\n");
    }
    buf
}

fn say(quiet: bool, msg: &str) {
    if !quiet {
        eprintln!("{msg}");
    }
}

#[allow(clippy::too_many_arguments)]
fn run_sandbox(
    a: &RunArgs,
    data: &Path,
    dir: &Path,
    rec: &mut Record,
    sigs: SigSet,
    quiet: bool,
    t0: Instant,
) -> Result<i32> {
    let agent = agent_binary(a)?;
    let platform = Arc::new(
        SimPlatform::load_or_create(&veil_runtime::paths::sim_dir(data))
            .map_err(|e| anyhow!("{e}"))?,
    );
    let given = given_init_data(a)?;
    check_conflicts(a, given.as_ref())?;
    // The KBS: --kbs, else the one init-data names, else the embedded one.
    let init_kbs = match &given {
        Some(g) => pod::kbs_url_of(
            &ParsedInitData::parse(&g.bytes).map_err(|e| anyhow!("{}: {e}", g.label))?,
        ),
        None => None,
    };
    let t_kbs = Instant::now();
    if a.vm.no_tee() {
        vm::check_no_tee(a, init_kbs.as_deref())?;
    }
    let (local, kbs_url) = match (&a.kbs, &init_kbs) {
        (Some(u), _) => (None, u.clone()),
        (None, Some(u)) => (None, u.clone()),
        // No TEE: no KBS (nothing would be released to the guest).
        (None, None) if a.vm.no_tee() => (None, String::new()),
        (None, None) => {
            let l = LocalKbs::start(data, platform.root())?;
            check_secrets_stored(&l, &a.secrets)?;
            let u = l.url();
            (Some(l), u)
        }
    };
    rec.timings.insert("kbs_start_ms".into(), ms(t_kbs));
    // The KBS as the sandbox sees it (a VM reaches the host through QEMU).
    let (sandbox_kbs_url, forwards) = vm::route_kbs(&a.vm, &kbs_url)?;
    let t_policy = Instant::now();
    let mut w = workload(a, &rec.id, &sandbox_kbs_url, given.as_ref(), quiet)?;
    for warning in volumes::host_path_warnings(&w.policy) {
        eprintln!("{warning}");
    }
    rec.timings.insert("policy_ms".into(), ms(t_policy));
    let init_path = dir.join("init-data.toml");
    std::fs::write(&init_path, &w.init_data)?;
    rec.name = w.pod_name.clone();
    rec.image = w.image_label.clone();
    rec.policy_generated = w.generated;
    rec.policy_from = w.policy_from.clone();
    rec.single_image = a.image.is_some();
    rec.pull = match (&a.guest_pull, &a.pulled_from) {
        (Some(_), _) => "guest".into(),
        (None, Some(_)) => "host".into(),
        (None, None) => String::new(),
    };
    rec.init_data_file = init_path;
    rec.kbs_url = kbs_url.clone();
    rec.containers = w
        .policy
        .containers
        .iter()
        .filter(|c| !c.init)
        .map(|c| (format!("{}-{}", rec.id, c.name), c.name.clone()))
        .collect();
    rec.save(data)?;
    let digest = ParsedInitData::parse(&w.init_data)
        .map_err(|e| anyhow!("{e}"))?
        .digest();
    if let Some(l) = &local {
        // The embedded KBS serves this sandbox only: its init-data digest,
        // and only the secrets and image keys it names.
        let mut resources =
            local_kbs::named_resources(&w.init_data, w.layout.as_deref(), &w.policy);
        if w.layout.is_none() {
            for c in &w.policy.containers {
                resources.extend(pull::layer_key_ids(
                    &a.pull,
                    &c.image.reference,
                    &c.image.digest,
                )?);
            }
        }
        l.pin(&format!("sandbox {}", rec.id), &digest.hex(), resources);
    }
    if w.generated {
        say(
            quiet,
            &format!(
                "veil: no --init-data given: generated the policy from {} (init-data {digest})",
                w.image_label
            ),
        );
    }

    let network = if a.vm.is_vm() {
        a.net.vm_network()?
    } else {
        PodNet::Process {
            mode: a.net.mode()?,
            ports: a.net.ports()?,
        }
    };
    let t_launch = Instant::now();
    let spec = SandboxSpec {
        id: rec.id.clone(),
        data: data.to_path_buf(),
        agent_binary: agent,
        kind: crate::volume::with_disks(a.vm.kind()?, data, &w.init_data, a.vm.scratch_size)?,
        tee: a.vm.tee()?,
        init_data: w.init_data.clone(),
        oci_layout: w.layout.clone(),
        forwards,
        network,
        log_filter: std::env::var("VEIL_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        ready_timeout: Duration::from_secs(120),
    };
    let mut shown = vm::LaunchOutput::new(quiet);
    let (mut sb, _note) =
        Sandbox::launch(spec, rec, &mut |e| shown.event(e)).map_err(|e| anyhow!("{e}"))?;
    shown.launched(sb.inner());
    rec.timings
        .insert("launch_and_attest_ms".into(), ms(t_launch));
    rec.kbs_embedded = local.is_some();
    rec.save(data)?;
    if !quiet {
        print_summary(rec);
    }

    let t_create = Instant::now();
    let mut c = sb.client().map_err(|e| anyhow!("{e}"))?;
    let mut sandbox_req = requests::create_sandbox(&w.policy, &rec.id, &w.pod_name);
    if let Some(h) = &a.docker.hostname {
        sandbox_req.hostname = h.clone();
    }
    sandbox_req.volumes = std::mem::take(&mut w.volume_contents);
    sb.create_pod(&mut c, sandbox_req)
        .map_err(|e| anyhow!("{e}"))?;
    let mut pull_ms = 0u64;
    // The container veil's stdin and terminal go to (-i/-t): the only one,
    // or a pod's first that the policy lets have them.
    let attached = stdio_container(a, &w.policy)?;
    // What the host publishes goes to the agent with the container it is
    // for: the agent refuses what the policy does not pin.
    let published = a.net.ports()?;
    for c_pol in w.policy.containers.iter() {
        let cid = format!("{}-{}", rec.id, c_pol.name);
        let mut req = requests::create_container(&w.policy, c_pol, &rec.id, &cid);
        req.ports = veil_runtime::net::ports::request_ports(&w.policy, c_pol, &published);
        if attached.as_deref() == Some(c_pol.name.as_str()) {
            a.stdio.apply(&mut req.process);
        }
        if a.image.is_some() && !c_pol.init {
            // Already in a generated policy; under given init-data the
            // agent decides, with the policy's explanation.
            a.docker.apply(&mut req.process, &a.command)?;
        }
        let r = c
            .create_container(req)
            .map_err(|e| anyhow!("create_container {}: {e}", c_pol.name))?;
        pull_ms += r.pull_ms;
        for w in &r.warnings {
            // From the agent: escaped, and said once.
            let w = veil_kbs::text::escape_controls(w);
            say(quiet, &format!("veil: warning: {w}"));
            rec.warnings.push(w);
        }
        if !rec.pull.is_empty() && !r.pulled_from.is_empty() && !rec.pull.contains('(') {
            // What the agent says it pulled from, next to what was asked.
            rec.pull = format!("{} ({})", rec.pull, r.pulled_from);
        }
        if c_pol.init {
            // Init containers run to completion, in order, before the others.
            c.start(&cid)
                .map_err(|e| anyhow!("start_container {}: {e}", c_pol.name))?;
            let code = wait_exit(&sb, &cid)?;
            if code != 0 {
                bail!("init container {} exited with {code}", c_pol.name);
            }
        }
    }
    rec.timings
        .insert("pull_decrypt_unpack_ms".into(), pull_ms.into());
    let t_start = Instant::now();
    for (cid, name) in &rec.containers {
        c.start(cid).map_err(|e| {
            let message = format!("start_container {name}: {e}");
            anyhow::Error::new(docker::ExitWith {
                code: docker::start_failure_code(&message),
                message,
            })
        })?;
    }
    rec.timings.insert("create_ms".into(), ms(t_create));
    rec.timings.insert("start_ms".into(), ms(t_start));
    rec.status = "running".into();
    rec.started = true;
    rec.save(data)?;
    let attached_cid = attached.as_ref().map(|n| format!("{}-{n}", rec.id));
    // Keys reach the container as typed only with -i -t on a terminal.
    let _raw = match &attached_cid {
        Some(cid) if a.monitor.is_none() => {
            if a.stdio.tty {
                stdio::send_window_size(c.agent(), cid, "");
            }
            if a.stdio.interactive {
                stdio::forward_stdin(sb.inner().socket(), cid.clone(), String::new());
            }
            (a.stdio.tty && a.stdio.interactive && stdio::stdin_is_terminal())
                .then(stdio::RawMode::enable)
                .flatten()
        }
        _ => None,
    };

    let out = Arc::new(Output {
        log: Mutex::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("output.log"))?,
        ),
        lines: logs::LineLog::open(dir)?,
        quiet,
        prefix: rec.containers.len() > 1,
        mid_line: Mutex::new(Default::default()),
    });
    let (tx, rx) = mpsc::channel::<Event>();
    let first_output: Arc<Mutex<Option<u64>>> = Arc::new(Mutex::new(None));
    let denied: Arc<Mutex<String>> = Arc::new(Mutex::new(String::new()));
    // Every stream's connection first, then the pumps: once one pump shows
    // output, the agent may die at any moment, and that must reach the
    // loop below as "lost the agent", not fail a later connect.
    let mut conns = Vec::new();
    for (cid, name) in rec.containers.clone() {
        for stream in [Stream::Stdout, Stream::Stderr] {
            conns.push((
                cid.clone(),
                name.clone(),
                stream,
                sb.inner().connect().map_err(|e| anyhow!("{e}"))?,
            ));
        }
    }
    for (cid, name, stream, conn) in conns {
        let (tx, out, first, denied) = (
            tx.clone(),
            out.clone(),
            first_output.clone(),
            denied.clone(),
        );
        std::thread::spawn(move || pump(conn, &cid, &name, stream, &out, &tx, &first, &denied, t0));
    }
    std::thread::spawn({
        let tx = tx.clone();
        move || {
            while let Ok(sig) = sigs.wait() {
                if tx.send(Event::Signal(sig)).is_err() {
                    return;
                }
            }
        }
    });
    drop(tx);
    // A container is done when *both* of its streams are drained: a process
    // that writes and exits at once must not lose its output to a teardown
    // triggered by the other (empty) stream's end.
    let mut remaining: std::collections::BTreeSet<(String, bool)> = rec
        .containers
        .iter()
        .flat_map(|(_, n)| [(n.clone(), true), (n.clone(), false)])
        .collect();
    let mut exit = 0;
    let mut lost = false;
    while !remaining.is_empty() {
        match rx.recv() {
            Ok(Event::Exited {
                container,
                stream,
                code,
            }) => {
                if remaining.remove(&(container, stream == Stream::Stdout)) && exit == 0 {
                    exit = code;
                }
            }
            Ok(Event::AgentLost(e)) => {
                let log = veil_runtime::sandbox::log_tail(&dir.join("agent.log"), 5);
                say(
                    quiet,
                    &format!("veil: lost the agent ({e}); tearing the sandbox down\n{log}"),
                );
                lost = true;
                exit = 125;
                break;
            }
            Ok(Event::Signal(Signal::SIGWINCH)) => {
                if let (Some(cid), true) = (&attached_cid, a.stdio.tty) {
                    stdio::send_window_size(c.agent(), cid, "");
                }
            }
            Ok(Event::Signal(sig)) => {
                say(quiet, &format!("veil: {sig}: stopping the sandbox"));
                exit = 128 + sig as i32;
                break;
            }
            Err(_) => break,
        }
    }
    out.lines.flush();
    if let Ok(d) = denied.lock() {
        rec.stdio_denied = d.clone();
    }
    if let Some(first) = first_output.lock().ok().and_then(|f| *f) {
        rec.timings.insert("first_output_ms".into(), first.into());
    }
    // What the containers used, and whether the OOM killer ended one
    // (its exit is then 137, as for any SIGKILL: the cgroup says why).
    if !lost {
        record_resources(&mut c, rec, quiet);
    }
    // Teardown: containers, then the agent (and with it every process and
    // mount of the sandbox), then the KBS.
    if !lost {
        for (cid, _) in &rec.containers {
            let _ = c.delete(cid, 2);
        }
    }
    drop(c);
    // How the agent (process sandbox) or QEMU (VM) ended, when it did.
    let ended = if lost { sb.exit_status() } else { None };
    let net_warning = sb
        .stop(Duration::from_secs(5))
        .map_err(|e| anyhow!("{e}"))?;
    if let Some(w) = net_warning {
        say(quiet, &format!("veil: warning: {w}"));
    }
    drop(local);
    rec.timings.insert("total_ms".into(), ms(t0));
    if a.timings && !quiet {
        eprintln!(
            "veil: timings {}",
            serde_json::Value::Object(rec.timings.clone())
        );
    }
    if lost {
        let what = if a.vm.is_vm() { "the VM" } else { "the agent" };
        bail!(
            "{what} stopped while the workload was running ({}); see {}",
            ended.unwrap_or_else(|| "still running; the connection to its agent broke".into()),
            dir.join("agent.log").display()
        );
    }
    Ok(exit)
}

/// Prints the agent's warnings when dropped (at the end of the summary).
struct Warnings<'a>(&'a [String]);

impl Drop for Warnings<'_> {
    fn drop(&mut self) {
        for w in self.0 {
            eprintln!("  WARNING: {w}");
        }
    }
}

/// Each container's last resource usage into the record; an OOM kill said
/// on stderr and recorded (`veil ps -a` shows it).
fn record_resources(c: &mut pod::PodClient, rec: &mut Record, quiet: bool) {
    for (cid, name) in rec.containers.clone() {
        let usage = match c.stats(&cid) {
            Ok(s) => s.resources,
            Err(e) => {
                say(
                    quiet,
                    &format!("veil: warning: no resource usage for {name}: {e}"),
                );
                None
            }
        };
        let Some(u) = usage else { continue };
        if u.oom_killed() {
            let limit = u
                .memory_max
                .map_or("no limit".to_string(), |m| format!("limit {m} bytes"));
            say(
                quiet,
                &format!(
                    "veil: container {name} was killed by the out-of-memory killer (memory {limit}, peak {} bytes)",
                    u.memory_peak
                ),
            );
            rec.oom_killed.push(name.clone());
        }
        rec.resources.insert(name, u);
    }
}

/// The container `-i`/`-t` attach to: the single image's, or the first of
/// a pod's (non-init) containers whose policy allows them; `None` without
/// `-i`/`-t`. A pod none of whose containers allows them is refused here,
/// naming the pod fields that would.
fn stdio_container(a: &RunArgs, policy: &PolicyData) -> Result<Option<String>> {
    let s = &a.stdio;
    if !s.interactive && !s.tty {
        return Ok(None);
    }
    let mut run = policy.containers.iter().filter(|c| !c.init);
    if a.image.is_some() {
        // The agent decides, with the policy's explanation, if it disallows them.
        return Ok(run.next().map(|c| c.name.clone()));
    }
    let fits = |c: &&veil_policy::model::ContainerPolicy| {
        (!s.interactive || c.allow_stdin) && (!s.tty || c.allow_tty)
    };
    match run.find(fits) {
        Some(c) => Ok(Some(c.name.clone())),
        None => bail!(
            "{}: no container of the pod's policy allows them (allow_stdin/allow_tty); give a container `stdin: true`{} in the pod YAML and generate the policy again",
            [(s.interactive, "-i"), (s.tty, "-t")]
                .iter()
                .filter(|(on, _)| *on)
                .map(|(_, f)| *f)
                .collect::<Vec<_>>()
                .join(" and "),
            if s.tty { " / `tty: true`" } else { "" }
        ),
    }
}

fn wait_exit(sb: &Sandbox, cid: &str) -> Result<i32> {
    let mut c = sb.client().map_err(|e| anyhow!("{e}"))?;
    c.wait(cid).map_err(|e| anyhow!("{e}"))
}

/// One output stream of a container as [`Output`] takes it, noting when
/// the first byte of the workload's output arrived.
struct OutputSink<'a> {
    out: &'a Output,
    name: &'a str,
    stream: Stream,
    first: &'a Mutex<Option<u64>>,
    t0: Instant,
}

impl Write for OutputSink<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if !bytes.is_empty() {
            if let Ok(mut f) = self.first.lock() {
                f.get_or_insert(self.t0.elapsed().as_millis() as u64);
            }
            self.out.write(self.name, self.stream, bytes);
        }
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Copy one output stream of a container to the terminal and the log; on
/// its end, report the exit code. If the policy refuses reading it, learn
/// the exit from the container's state instead.
#[allow(clippy::too_many_arguments)]
fn pump(
    mut c: AgentClient,
    cid: &str,
    name: &str,
    stream: Stream,
    out: &Output,
    tx: &mpsc::Sender<Event>,
    first: &Mutex<Option<u64>>,
    denied: &Mutex<String>,
    t0: Instant,
) {
    let mut sink = OutputSink {
        out,
        name,
        stream,
        first,
        t0,
    };
    let mut on_denied = |msg: &str| {
        if stream == Stream::Stdout {
            if !out.quiet {
                eprintln!("veil: the policy does not allow reading the output of {name}: {msg}");
            }
            if let Ok(mut d) = denied.lock() {
                *d = msg.to_string();
            }
        }
    };
    let event = match pod::stdio::pump(&mut c, cid, "", stream, &mut sink, &mut on_denied) {
        Ok(end) => Event::Exited {
            container: name.into(),
            stream,
            code: end.exit_code.unwrap_or(0),
        },
        Err(e) => Event::AgentLost(e.to_string()),
    };
    let _ = tx.send(event);
}

/// What was proved at start, on stderr (also by `veil run -d`, from the record).
fn print_summary(rec: &Record) {
    let Some(h) = &rec.hello else {
        return;
    };
    // After the function: what the agent warned of at create_container
    // (known by `-d` when it reads the record; a foreground run says it
    // when it hears it).
    let _warnings = Warnings(&rec.warnings);
    let m_ok = if h.measurement == rec.expected_measurement {
        "matches the launch measurement"
    } else {
        "DIFFERS from the launch measurement"
    };
    eprintln!(
        "veil: sandbox {} ({}): {}, TEE: {}",
        rec.id, rec.name, rec.sandbox_label, h.tee
    );
    let no_tee = h.tee == veil_agent_api::proto::NO_TEE;
    if h.tee == "sim" {
        eprintln!("  WARNING: {}", veil_attest::sim::WARNING);
    }
    if no_tee {
        eprintln!("  WARNING: {}", veil_agent_api::proto::NO_TEE_WARNING);
        eprintln!("  measurement  none (no TEE measures this guest)");
    } else {
        eprintln!("  measurement  {} ({m_ok})", h.measurement);
    }
    let from = if rec.policy_from.is_empty() {
        if rec.policy_generated {
            "policy generated from the image"
        } else {
            "from --init-data"
        }
    } else {
        rec.policy_from.as_str()
    };
    if no_tee {
        eprintln!(
            "  init-data    {} ({from}; enforced by the agent, bound to nothing)",
            h.init_data_digest
        );
    } else {
        eprintln!("  init-data    {} ({from})", h.init_data_digest);
    }
    let att = &h.attestation;
    let kbs = if rec.kbs_embedded {
        format!("{} (embedded, dev mode)", att.kbs_url)
    } else {
        att.kbs_url.clone()
    };
    match att.status.as_str() {
        "ok" => {
            let status = if att.ear_status.is_empty() {
                "issued"
            } else {
                &att.ear_status
            };
            // The sim platform's evidence is software-signed, so the KBS's
            // appraisal marks it contraindicated (hardware = 97). Only the
            // embedded KBS is known to run in dev mode; of another KBS
            // veil knows only that it released.
            let why = match (
                h.tee == "sim" && att.ear_status == "contraindicated",
                rec.kbs_embedded,
            ) {
                (true, true) => {
                    " (software-signed sim evidence; released only because the KBS runs in dev mode)"
                }
                (true, false) => {
                    " (software-signed sim evidence; this KBS released anyway: its mode is unknown to veil, not the embedded one)"
                }
                _ => "",
            };
            eprintln!("  attestation  ok: token {status}{why}, KBS {kbs}")
        }
        _ if no_tee => eprintln!("  attestation  none (no TEE: no evidence, no KBS, no secrets)"),
        "not_configured" => {
            eprintln!("  attestation  none: init-data names no KBS: nothing attested, no secrets")
        }
        other => eprintln!("  attestation  {other} {}", att.error),
    }
    if !att.secrets.is_empty() {
        eprintln!(
            "  secrets      {} (in /run/veil/secrets)",
            att.secrets.join(", ")
        );
    }
    for n in &rec.notes {
        eprintln!("  note         {n}");
    }
}

/// A running sandbox's record and a client.
fn connect(key: &str) -> Result<(PathBuf, Record, PodClient)> {
    let data = data_dir()?;
    let (rec, c) = PodClient::reconnect(&data, key, Duration::from_secs(30)).map_err(pod_err)?;
    Ok((data, rec, c))
}

/// A library error for the user: a record error keeps its cause chain;
/// the others already say theirs.
fn pod_err(e: PodError) -> anyhow::Error {
    match e {
        PodError::Record(r) => r.into(),
        e => anyhow!("{e}"),
    }
}

fn policy_of(rec: &Record) -> Result<PolicyData> {
    Ok(rec.policy()?)
}

/// `veil exec`: exit code of the command; 126 when the policy refuses it.
pub fn exec(a: ExecArgs) -> Result<ExitCode> {
    let (_, rec, mut c) = connect(&a.id)?;
    let policy = policy_of(&rec)?;
    let (cid, name) = match &a.container {
        Some(n) => rec
            .containers
            .iter()
            .find(|(_, cn)| cn == n)
            .cloned()
            .ok_or_else(|| anyhow!("no container {n:?}"))?,
        None => rec
            .containers
            .first()
            .cloned()
            .ok_or_else(|| anyhow!("the sandbox has no containers"))?,
    };
    let cp = policy
        .container(&name)
        .ok_or_else(|| anyhow!("container {name} is not in the policy"))?;
    let exec_id = format!("exec-{}", new_id());
    let mut req = requests::exec_process(cp, &cid, &exec_id, a.command.clone());
    a.stdio.apply(&mut req.process);
    // Before any thread: every thread inherits the blocked SIGWINCH.
    let winch = if a.stdio.tty {
        let mut s = SigSet::empty();
        s.add(Signal::SIGWINCH);
        s.thread_block().context("blocking SIGWINCH")?;
        Some(s)
    } else {
        None
    };
    match c.exec(req) {
        Ok(()) => {}
        Err(e) if e.is_denied() => {
            eprintln!("veil: exec refused: {e}");
            eprintln!("{}", exec_hint(&rec, &name, &a.command));
            return Ok(ExitCode::from(126));
        }
        Err(e) => {
            let message = format!("exec: {e}");
            return Err(anyhow::Error::new(docker::ExitWith {
                code: docker::start_failure_code(&message),
                message,
            }));
        }
    }
    if let Some(sigs) = winch {
        stdio::send_window_size(c.agent(), &cid, &exec_id);
        let (socket, cid, exec_id) = (rec.socket.clone(), cid.clone(), exec_id.clone());
        std::thread::spawn(move || {
            let Ok(mut c) = AgentClient::connect(&socket, Duration::from_secs(30)) else {
                return;
            };
            while sigs.wait().is_ok() {
                stdio::send_window_size(&mut c, &cid, &exec_id);
            }
        });
    }
    if a.stdio.interactive {
        stdio::forward_stdin(rec.socket.clone(), cid.clone(), exec_id.clone());
    }
    let _raw = (a.stdio.tty && a.stdio.interactive && stdio::stdin_is_terminal())
        .then(stdio::RawMode::enable)
        .flatten();
    let mut handles = Vec::new();
    for stream in [Stream::Stdout, Stream::Stderr] {
        let mut c = AgentClient::connect(&rec.socket, Duration::from_secs(30))
            .map_err(|e| anyhow!("{e}"))?;
        let (cid, exec_id) = (cid.clone(), exec_id.clone());
        handles.push(std::thread::spawn(move || -> Result<i32> {
            let mut out: Box<dyn Write> = match stream {
                Stream::Stdout => Box::new(std::io::stdout()),
                Stream::Stderr => Box::new(std::io::stderr()),
            };
            let end = pod::stdio::pump(&mut c, &cid, &exec_id, stream, &mut out, &mut |_| {})
                .map_err(|e| anyhow!("{e}"))?;
            Ok(end.exit_code.unwrap_or(0))
        }));
    }
    let mut code = 0;
    for h in handles {
        code = h.join().map_err(|_| anyhow!("output thread panicked"))??;
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// How to allow a refused exec: the pod annotation the policy generator
/// reads, and for a single-image run `veil run --allow-exec`.
fn exec_hint(rec: &Record, container: &str, argv: &[String]) -> String {
    let json = serde_json::to_string(&[argv]).unwrap_or_default();
    let mut h = format!(
        "  to allow it, generate the policy with the pod annotation {}{container}: '{json}'",
        veil_policy::generate::ANNOTATION_EXEC
    );
    if rec.single_image && rec.policy_generated {
        h.push_str(&format!(
            "\n  or run the image with: veil run --allow-exec '{}' {}",
            argv.join(" "),
            rec.image
        ));
    }
    h
}

/// Why the policy keeps the output of `rec`'s containers from the host, if
/// it does for every one of them.
fn stdio_denied_by_policy(rec: &Record) -> Option<String> {
    let policy = policy_of(rec).ok()?;
    let denied: Vec<&str> = rec
        .containers
        .iter()
        .filter(|(_, n)| policy.container(n).is_some_and(|c| !c.allow_stdio))
        .map(|(_, n)| n.as_str())
        .collect();
    (!denied.is_empty() && denied.len() == rec.containers.len()).then(|| {
        format!(
            "the policy does not allow reading the output of {} (allow_stdio = false; set the pod annotation {}<container>: \"true\" when generating it)",
            denied.join(", "),
            veil_policy::generate::ANNOTATION_ALLOW_STDIO
        )
    })
}

/// `veil logs`: the output the sandbox's owner recorded, or the policy's refusal.
pub fn logs(a: logs::LogsArgs) -> Result<ExitCode> {
    let data = data_dir()?;
    let rec = Record::find(&data, &a.id)?;
    let denied = if rec.stdio_denied.is_empty() {
        stdio_denied_by_policy(&rec)
    } else {
        Some(rec.stdio_denied.clone())
    };
    if let Some(why) = denied {
        eprintln!("veil: logs of {} are not available: {why}", rec.id);
        return Ok(ExitCode::from(1));
    }
    let dir = record::dir_of(&data, &rec.id);
    if let Some(c) = &a.container {
        if !rec.containers.iter().any(|(_, n)| n == c) {
            let names: Vec<&str> = rec.containers.iter().map(|(_, n)| n.as_str()).collect();
            bail!(
                "-c {c:?}: sandbox {} has no such container ({})",
                rec.id,
                names.join(", ")
            );
        }
    }
    if dir.join(logs::LINES_FILE).exists() {
        let id = rec.id.clone();
        logs::print(&dir, &a, rec.containers.len() > 1, || {
            Record::find(&data, &id).is_ok_and(|r| r.effective_status() == "running")
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    // A record from a veil without per-line logs: the raw output only.
    let bytes = std::fs::read(dir.join("output.log")).unwrap_or_default();
    out_or_pipe(&bytes)?;
    Ok(ExitCode::SUCCESS)
}

/// Unix seconds as RFC 3339 (UTC).
fn rfc3339(secs: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// How long ago, as `docker ps` says it: `5 seconds ago`, `3 minutes ago`.
fn age(secs: u64) -> String {
    let d = now().saturating_sub(secs);
    let (n, unit) = match d {
        0..=59 => (d, "second"),
        60..=3599 => (d / 60, "minute"),
        3600..=86399 => (d / 3600, "hour"),
        _ => (d / 86400, "day"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// `process` or `vm` (records from before the field: from the label).
fn kind_of(r: &Record) -> &str {
    if !r.kind.is_empty() {
        &r.kind
    } else if r.sandbox_label.starts_with("VM") {
        "vm"
    } else {
        "process"
    }
}

/// `veil ps`.
pub fn ps(a: PsArgs) -> Result<ExitCode> {
    let data = data_dir()?;
    net::reap(&data);
    let all: Vec<Record> = Record::all(&data)?
        .into_iter()
        .filter(|r| a.all || r.effective_status() == "running")
        .collect();
    let mut out = String::new();
    if a.quiet {
        for r in &all {
            out.push_str(&r.id);
            out.push('\n');
        }
    } else if a.json {
        let v: Vec<serde_json::Value> = all
            .iter()
            .map(|r| {
                serde_json::json!({
                    "id": r.id,
                    "name": r.name,
                    "image": r.image,
                    "kind": kind_of(r),
                    "tee": r.hello.as_ref().map(|h| h.tee.clone()),
                    "init_data_digest": r.hello.as_ref().map(|h| h.init_data_digest.clone()),
                    "status": r.effective_status(),
                    "exit_code": r.exit_code,
                    "oom_killed": r.oom_killed,
                    "created": rfc3339(r.created),
                    "network": r.network,
                    "address": r.address,
                    "ports": r.ports,
                })
            })
            .collect();
        out = serde_json::to_string_pretty(&v)? + "\n";
    } else {
        out.push_str(&format!(
            "{:<14} {:<20} {:<8} {:<12} {:<16} {:<30} {:<8} IMAGE  PORTS\n",
            "ID", "NAME", "KIND", "STATUS", "CREATED", "TEE / INIT-DATA", "NETWORK"
        ));
        for r in all {
            let status = match (r.effective_status().as_str(), r.exit_code) {
                ("exited", Some(c)) if !r.oom_killed.is_empty() => {
                    format!("exited ({c}, OOMKilled)")
                }
                ("exited", Some(c)) => format!("exited ({c})"),
                (s, _) => s.to_string(),
            };
            let tee = r
                .hello
                .as_ref()
                .map(|h| {
                    format!(
                        "{} {}",
                        h.tee,
                        h.init_data_digest.chars().take(20).collect::<String>()
                    )
                })
                .unwrap_or_default();
            let network = r.network.split(':').next().unwrap_or("");
            out.push_str(&format!(
                "{:<14} {:<20} {:<8} {:<12} {:<16} {:<30} {:<8} {}  {}\n",
                r.id,
                r.name,
                kind_of(&r),
                status,
                age(r.created),
                tee,
                network,
                r.image,
                r.ports.join(",")
            ));
        }
    }
    out_or_pipe(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `veil kill`.
pub fn kill(a: KillArgs) -> Result<ExitCode> {
    let (_, rec, mut c) = connect(&a.id)?;
    for (cid, _) in &rec.containers {
        c.kill(cid, "", a.signal)
            .map_err(|e| anyhow!("signal {}: {e}", a.signal))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `-s`: `15`, `TERM`, `SIGTERM` (any case).
fn parse_signal(s: &str) -> Result<u32, String> {
    if let Ok(n) = s.parse::<u32>() {
        return Signal::try_from(n as i32)
            .map(|_| n)
            .map_err(|_| format!("{s}: not a signal number"));
    }
    let up = s.to_ascii_uppercase();
    let name = if up.starts_with("SIG") {
        up
    } else {
        format!("SIG{up}")
    };
    name.parse::<Signal>()
        .map(|sig| sig as i32 as u32)
        .map_err(|_| format!("{s}: not a signal (use a number, TERM or SIGTERM)"))
}

/// Run `f` for each id, printing what it returns; report every failure,
/// fail if any did.
fn each_id(ids: &[String], f: impl Fn(&Path, &str) -> Result<String>) -> Result<ExitCode> {
    let data = data_dir()?;
    let mut failed = 0;
    for id in ids {
        match f(&data, id) {
            Ok(done) => println_or_pipe(&done)?,
            Err(e) => {
                eprintln!("veil: {id}: {e:#}");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} failed", ids.len());
    }
    Ok(ExitCode::SUCCESS)
}

/// `veil stop`.
pub fn stop(a: IdsArgs) -> Result<ExitCode> {
    each_id(&a.ids, |data, id| {
        let rec = Record::find(data, id)?;
        stop_record(&rec)?;
        Ok(rec.id)
    })
}

fn stop_record(rec: &Record) -> Result<()> {
    Ok(rec.stop_owner(Duration::from_secs(30))?)
}

/// `veil rm`.
pub fn rm(a: RmArgs) -> Result<ExitCode> {
    each_id(&a.ids, |data, id| {
        let rec = Record::find(data, id)?;
        if rec.owner_alive() {
            if !a.force {
                bail!("sandbox {} is running; stop it first or use rm -f", rec.id);
            }
            stop_record(&rec)?;
        }
        net::reap(data);
        std::fs::remove_dir_all(record::dir_of(data, &rec.id)).context("removing the record")?;
        Ok(rec.id)
    })
}

/// `veil prune`: remove the records of sandboxes that are not running
/// (exited, failed, or whose owner died); prints each id removed.
pub fn prune(_a: PruneArgs) -> Result<ExitCode> {
    let data = data_dir()?;
    net::reap(&data);
    let mut out = String::new();
    for r in Record::all(&data)? {
        let status = r.effective_status();
        if matches!(status.as_str(), "exited" | "failed" | "dead") && !r.owner_alive() {
            std::fs::remove_dir_all(record::dir_of(&data, &r.id))
                .with_context(|| format!("removing the record of {}", r.id))?;
            out.push_str(&format!("{}\n", r.id));
        }
    }
    out_or_pipe(out.as_bytes())?;
    Ok(ExitCode::SUCCESS)
}

/// `veil inspect`: the record and, while running, fresh evidence verified
/// here against this host's sim root.
pub fn inspect(a: IdArgs) -> Result<ExitCode> {
    let data = data_dir()?;
    let rec = Record::find(&data, &a.id)?;
    let mut out = serde_json::to_value(&rec)?;
    out["created"] = rfc3339(rec.created).into();
    out["status"] = rec.effective_status().into();
    out["kind"] = kind_of(&rec).into();
    if let Some(c) = out.get_mut("containers") {
        *c = rec
            .containers
            .iter()
            .map(|(id, name)| serde_json::json!({"id": id, "name": name}))
            .collect();
    }
    if rec.effective_status() == "running" {
        // Live figures over the record's (which are the last ones seen at exit).
        if let Ok((usage, true)) = stats::usage_of(&rec) {
            out["resources"] = serde_json::to_value(usage)?;
        }
        let (_, _, mut c) = connect(&rec.id)?;
        let mut nonce = [0u8; 32];
        OsRng.fill_bytes(&mut nonce);
        let ev = c
            .agent()
            .call_typed::<veil_agent_api::proto::GetEvidenceResult>(AgentRequest::GetEvidence(
                GetEvidenceRequest {
                    runtime_data: veil_agent_api::Bytes(nonce.to_vec()),
                },
            ));
        out["evidence"] = match ev {
            Ok(ev) if ev.tee == "sim" => {
                let platform = SimPlatform::load_or_create(&veil_runtime::paths::sim_dir(&data))
                    .map_err(|e| anyhow!("{e}"))?;
                match veil_attest::sim::verify(
                    ev.evidence.to_string().as_bytes(),
                    Some(&platform.root()),
                ) {
                    Ok(claims) => serde_json::json!({
                        "tee": "sim",
                        "verified": claims.report_data == veil_agent_api::proto::report_data_for(&nonce).to_vec(),
                        "claims": claims.to_json(),
                        "warning": veil_attest::sim::WARNING,
                    }),
                    Err(e) => {
                        serde_json::json!({"tee": "sim", "verified": false, "error": e.to_string()})
                    }
                }
            }
            Ok(ev) => serde_json::json!({"tee": ev.tee, "evidence": ev.evidence}),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
    }
    println_or_pipe(&serde_json::to_string_pretty(&out)?)?;
    Ok(ExitCode::SUCCESS)
}

/// `veil secret`.
pub fn secret(cmd: SecretCommand) -> Result<ExitCode> {
    let data = data_dir()?;
    let platform = SimPlatform::load_or_create(&veil_runtime::paths::sim_dir(&data))
        .map_err(|e| anyhow!("{e}"))?;
    let kbs = LocalKbs::start(&data, platform.root())?;
    let admin = kbs.admin_client()?;
    match cmd {
        SecretCommand::Put { path, file } => {
            let p = veil_kbs_client::ResourcePath::parse(&path).map_err(|e| anyhow!("{e}"))?;
            let value = zeroize::Zeroizing::new(if file.as_os_str() == "-" {
                let mut v = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                v
            } else {
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?
            });
            admin.put_resource(&p, &value).map_err(|e| anyhow!("{e}"))?;
            eprintln!(
                "veil: stored kbs:///{p} ({} bytes, sealed in {})",
                value.len(),
                data.join("kbs").display()
            );
        }
        SecretCommand::Ls { json } => {
            let v = admin.list_resources().map_err(|e| anyhow!("{e}"))?;
            let list = v
                .as_array()
                .or_else(|| v.get("resources").and_then(|r| r.as_array()))
                .cloned()
                .unwrap_or_default();
            let rows: Vec<serde_json::Value> = list
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "path": r["path"],
                        "uri": format!("kbs:///{}", r["path"].as_str().unwrap_or_default()),
                        "size": r["size"],
                        "updated_at": rfc3339(r["updated_at"].as_u64().unwrap_or(0)),
                    })
                })
                .collect();
            if json {
                println_or_pipe(&serde_json::to_string_pretty(&rows)?)?;
            } else {
                let mut out = format!("{:<40} {:>10}  UPDATED\n", "PATH", "SIZE");
                for r in &rows {
                    out.push_str(&format!(
                        "{:<40} {:>10}  {}\n",
                        r["path"].as_str().unwrap_or_default(),
                        r["size"],
                        r["updated_at"].as_str().unwrap_or_default()
                    ));
                }
                out_or_pipe(out.as_bytes())?;
            }
        }
        SecretCommand::Rm { path } => {
            let p = veil_kbs_client::ResourcePath::parse(&path).map_err(|e| anyhow!("{e}"))?;
            admin.delete_resource(&p).map_err(|e| anyhow!("{e}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A line written in several pieces (`cat f; echo`) is prefixed once.
    #[test]
    fn container_prefix_once_per_line_across_writes() {
        let mut inside = false;
        let mut out = prefix_lines("w", b"<h1>page</h1>", &mut inside);
        assert!(inside);
        out.extend(prefix_lines("w", b"\nnext\nla", &mut inside));
        out.extend(prefix_lines("w", b"st\n", &mut inside));
        assert!(!inside);
        assert_eq!(text_of(&out), "[w] <h1>page</h1>\n[w] next\n[w] last\n");
    }

    fn text_of(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn signals_by_number_or_name() {
        for s in ["15", "TERM", "term", "SIGTERM", "sigterm"] {
            assert_eq!(parse_signal(s), Ok(15), "{s}");
        }
        assert_eq!(parse_signal("KILL"), Ok(9));
        for s in ["", "0", "99", "BOGUS", "SIG"] {
            assert!(parse_signal(s).is_err(), "{s}");
        }
    }

    #[test]
    fn times_are_rfc3339_and_ages_read_like_docker() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_288_400), "2026-12-03T09:00:00Z");
        assert_eq!(age(now()), "0 seconds ago");
        assert_eq!(age(now() - 60), "1 minute ago");
        assert_eq!(age(now() - 3 * 86400), "3 days ago");
    }
}
