//! `veil image import DIR oci:LAYOUT:TAG`: a root filesystem directory
//! becomes a single-layer OCI image (deterministic tar, see
//! `veil_image::rootfs`), with its Entrypoint/Cmd/Env/WorkingDir/User/
//! ExposedPorts from a config file and/or flags.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use veil_image::builder::ImageBuilder;
use veil_image::rootfs::RootfsTarOptions;
use veil_image::spec::Compression;
use veil_image::{ContainerConfig, OciLayout, OciRef};

/// The most a `--config` file may hold.
const CONFIG_LIMIT: usize = 1 << 20;

/// Arguments of `veil image import`.
#[derive(Args)]
pub struct ImportArgs {
    /// The root filesystem directory. Symlinks in it are stored as links
    /// (absolute targets too) and never followed while reading it.
    pub dir: PathBuf,
    /// Where to write the image: `oci:LAYOUT:TAG` (the layout is created if
    /// it does not exist; the tag is moved if it does).
    pub reference: String,
    /// Container config as JSON, in the image config's `config` form:
    /// an object with `Entrypoint`, `Cmd`, `Env` (lists of strings),
    /// `WorkingDir`, `User` and `ExposedPorts` (e.g. `{"6379/tcp": {}}`).
    /// Flags override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Entrypoint argument (repeatable: one per argv element).
    #[arg(long = "entrypoint", value_name = "ARG", allow_hyphen_values = true)]
    pub entrypoint: Vec<String>,
    /// Cmd argument (repeatable: one per argv element).
    #[arg(long = "cmd", value_name = "ARG", allow_hyphen_values = true)]
    pub cmd: Vec<String>,
    /// Environment variable `KEY=value` (repeatable).
    #[arg(long = "env", short = 'e', value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory (absolute).
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<String>,
    /// User (`name`, `uid`, `uid:gid`).
    #[arg(long, value_name = "USER")]
    pub user: Option<String>,
    /// Exposed port `PORT[/tcp|udp]` (repeatable).
    #[arg(long = "expose", value_name = "PORT[/PROTO]")]
    pub expose: Vec<String>,
    /// Modification times later than this (seconds since the epoch) are
    /// stored as this. Default: $SOURCE_DATE_EPOCH, else 0.
    #[arg(long, value_name = "SECONDS")]
    pub mtime_clamp: Option<u64>,
    /// Store the layer uncompressed (default: gzip).
    #[arg(long)]
    pub uncompressed: bool,
}

/// Run `veil image import`.
pub fn import(a: ImportArgs) -> Result<ExitCode> {
    let oci = OciRef::parse(&a.reference)?;
    let Some(tag) = oci.tag.clone() else {
        bail!(
            "{}: a tag is required to import into a layout (oci:{}:TAG)",
            a.reference,
            oci.dir.display()
        );
    };
    let meta = std::fs::metadata(&a.dir)
        .with_context(|| format!("rootfs directory {}", a.dir.display()))?;
    if !meta.is_dir() {
        bail!("rootfs {} is not a directory", a.dir.display());
    }
    let config = container_config(&a)?;
    let clamp = match a.mtime_clamp {
        Some(c) => c,
        None => match std::env::var("SOURCE_DATE_EPOCH") {
            Ok(v) => v
                .trim()
                .parse()
                .with_context(|| format!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds"))?,
            Err(_) => 0,
        },
    };
    let layout = OciLayout::create(&oci.dir)?;
    let mut b = ImageBuilder::new(&layout);
    b.config(config);
    let compression = if a.uncompressed {
        Compression::None
    } else {
        Compression::Gzip
    };
    let (layer, stats) = b
        .add_layer_rootfs(&a.dir, compression, RootfsTarOptions { mtime_clamp: clamp })
        .with_context(|| format!("importing {}", a.dir.display()))?;
    let manifest = b.finish(&tag)?;
    eprintln!(
        "veil: imported {}: {} files ({} bytes), {} directories, {} symlinks, {} hard links",
        a.dir.display(),
        stats.files,
        stats.bytes,
        stats.dirs,
        stats.symlinks,
        stats.hardlinks
    );
    eprintln!("  layer     {} ({} bytes)", layer.digest, layer.size);
    crate::outln!("{}", manifest.digest);
    Ok(ExitCode::SUCCESS)
}

fn container_config(a: &ImportArgs) -> Result<ContainerConfig> {
    let mut c = match &a.config {
        Some(path) => {
            let bytes = crate::output::read_limited(path, "image config", CONFIG_LIMIT)?;
            let c: ContainerConfig = serde_json::from_slice(&bytes)
                .with_context(|| format!("parsing image config {}", path.display()))?;
            if let Some(k) = c.extra.keys().next() {
                bail!(
                    "image config {}: unknown field {k:?}; known: Entrypoint, Cmd, Env, \
                     WorkingDir, User, ExposedPorts, Volumes, Labels, StopSignal",
                    path.display()
                );
            }
            c
        }
        None => ContainerConfig::default(),
    };
    if !a.entrypoint.is_empty() {
        c.entrypoint = Some(a.entrypoint.clone());
    }
    if !a.cmd.is_empty() {
        c.cmd = Some(a.cmd.clone());
    }
    for e in &a.env {
        let Some((k, _)) = e.split_once('=') else {
            bail!("--env {e:?}: expected KEY=VALUE");
        };
        let env = c.env.get_or_insert_with(Vec::new);
        env.retain(|old| old.split_once('=').map(|(ok, _)| ok) != Some(k));
        env.push(e.clone());
    }
    if let Some(w) = &a.workdir {
        c.working_dir = Some(w.clone());
    }
    if let Some(u) = &a.user {
        c.user = Some(u.clone());
    }
    for p in &a.expose {
        let key = exposed_port(p)?;
        c.exposed_ports
            .get_or_insert_with(BTreeMap::new)
            .insert(key, serde_json::json!({}));
    }
    if let Some(w) = &c.working_dir
        && !w.starts_with('/')
    {
        bail!("working directory {w:?} is not absolute");
    }
    if let Some(ports) = &c.exposed_ports {
        for p in ports.keys() {
            exposed_port(p)?;
        }
    }
    Ok(c)
}

/// `PORT[/tcp|udp]` → `PORT/proto`, the image config's key.
fn exposed_port(s: &str) -> Result<String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let n: u16 =
        port.parse().ok().filter(|n| *n != 0).with_context(|| {
            format!("exposed port {s:?}: expected PORT[/tcp|udp], PORT 1-65535")
        })?;
    if proto != "tcp" && proto != "udp" {
        bail!("exposed port {s:?}: protocol must be tcp or udp, got {proto:?}");
    }
    Ok(format!("{n}/{proto}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposed_ports_are_normalized_and_checked() {
        assert_eq!(exposed_port("6379").unwrap(), "6379/tcp");
        assert_eq!(exposed_port("53/udp").unwrap(), "53/udp");
        assert!(exposed_port("0").is_err());
        assert!(exposed_port("70000").is_err());
        assert!(exposed_port("80/sctp").is_err());
    }
}
