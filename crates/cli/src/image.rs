//! `veil image …`: inspect, measure (dm-verity), encrypt/decrypt, sign/verify
//! and unpack OCI images.
//!
//! Exit status for every subcommand: 0 ok, 1 refused (a digest, HMAC,
//! signature or policy check failed; the message names it), 2 malformed
//! input or usage.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use veil_image::source::SourceError;
use veil_image::verity::{self, VerityHash, VerityParams};
use veil_image::{OciLayout, OciRef, Platform};

/// OCI images: inspect, measure, encrypt, sign, verify, unpack.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Print an image's manifest digest, platform, config and layers.
    Inspect(InspectArgs),
    /// Compute a dm-verity hash tree and root hash, bit-identical to
    /// `veritysetup format` with the same parameters.
    Measure(MeasureArgs),
}

/// Arguments of `veil image inspect`.
#[derive(Args)]
pub struct InspectArgs {
    /// Image reference: `oci:DIR[:TAG]`.
    pub reference: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `veil image measure` (names follow `veritysetup format`).
#[derive(Args)]
pub struct MeasureArgs {
    /// Data device or image file.
    pub data: PathBuf,
    /// Write the hash tree (and superblock) here, as `veritysetup format DATA HASH`.
    #[arg(long, value_name = "FILE")]
    pub hash_file: Option<PathBuf>,
    /// Hash algorithm: sha256, sha1 or sha512.
    #[arg(long, default_value = "sha256")]
    pub hash: String,
    /// Data block size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub data_block_size: u32,
    /// Hash block size in bytes.
    #[arg(long, default_value_t = 4096)]
    pub hash_block_size: u32,
    /// Salt as hex, or `-` for none; random 32 bytes when omitted (printed).
    #[arg(long)]
    pub salt: Option<String>,
    /// Format type: 1 (normal) or 0 (Chrome OS).
    #[arg(long, default_value_t = 1)]
    pub format: u32,
    /// Number of data blocks to cover (default: all whole blocks).
    #[arg(long)]
    pub data_blocks: Option<u64>,
    /// Do not write a superblock.
    #[arg(long)]
    pub no_superblock: bool,
    /// UUID for the superblock (random when omitted).
    #[arg(long)]
    pub uuid: Option<String>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Run a `veil image` subcommand.
pub fn run(cmd: ImageCommand) -> Result<ExitCode> {
    match cmd {
        ImageCommand::Inspect(a) => inspect(a),
        ImageCommand::Measure(a) => measure(a),
    }
}

/// Print a refusal and return exit status 1; other errors propagate (2).
fn source_result<T>(r: Result<T, SourceError>) -> Result<Result<T, ExitCode>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) if e.is_refusal() => {
            eprintln!("veil: refused: {e}");
            Ok(Err(ExitCode::from(1)))
        }
        Err(e) => Err(e.into()),
    }
}

fn inspect(a: InspectArgs) -> Result<ExitCode> {
    let r = OciRef::parse(&a.reference)?;
    let layout = OciLayout::open(&r.dir)?;
    let img = match source_result(layout.resolve(r.tag.as_deref(), &Platform::linux_amd64()))? {
        Ok(img) => img,
        Err(code) => return Ok(code),
    };
    if a.json {
        let layers: Vec<_> = img
            .layers()
            .iter()
            .zip(img.diff_ids())
            .map(|(l, d)| {
                serde_json::json!({
                    "mediaType": l.media_type, "digest": l.digest, "size": l.size,
                    "diffId": d,
                    "encrypted": l.media_type.ends_with("+encrypted"),
                })
            })
            .collect();
        let out = serde_json::json!({
            "reference": r.to_string(),
            "manifestDigest": img.manifest_digest(),
            "indexDigest": img.index_digest,
            "configDigest": img.config_digest(),
            "platform": img.config.platform().to_string(),
            "config": img.config.config,
            "layers": layers,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Reference:  {r}");
    println!("Digest:     {}", img.manifest_digest());
    if let Some(i) = &img.index_digest {
        println!("Index:      {i}");
    }
    println!("Config:     {}", img.config_digest());
    println!("Platform:   {}", img.config.platform());
    println!("Entrypoint: {:?}", img.config.entrypoint());
    println!("Cmd:        {:?}", img.config.cmd());
    println!("Env:        {:?}", img.config.env());
    println!("WorkingDir: {:?}", img.config.working_dir());
    println!("User:       {:?}", img.config.user());
    println!("Layers:");
    for (l, d) in img.layers().iter().zip(img.diff_ids()) {
        println!("  {} {} bytes {}", l.digest, l.size, l.media_type);
        println!("    diff_id {d}");
    }
    Ok(ExitCode::SUCCESS)
}

fn measure(a: MeasureArgs) -> Result<ExitCode> {
    let salt = match a.salt.as_deref() {
        Some("-") => Vec::new(),
        Some(h) => hex::decode(h).context("--salt: expected hex or `-`")?,
        None => {
            let mut s = vec![0u8; 32];
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut s)
                .map_err(|e| anyhow::anyhow!("generating a salt: {e}"))?;
            s
        }
    };
    let uuid = match a.uuid.as_deref() {
        Some(u) => verity::parse_uuid(u)?,
        None => verity::random_uuid()?,
    };
    let params = VerityParams {
        hash: VerityHash::parse(&a.hash)?,
        data_block_size: a.data_block_size,
        hash_block_size: a.hash_block_size,
        salt,
        format: a.format,
        data_blocks: a.data_blocks,
        superblock: !a.no_superblock,
        uuid,
    };
    let data = File::open(&a.data).with_context(|| format!("opening {}", a.data.display()))?;
    let tree = match &a.hash_file {
        Some(path) => {
            let out = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            verity::format(&data, &out, &params)?
        }
        None => verity::root_hash(&data, &params)?,
    };
    let salt_hex = if params.salt.is_empty() {
        "-".to_string()
    } else {
        hex::encode(&params.salt)
    };
    let uuid = if params.superblock {
        verity::format_uuid(&params.uuid)
    } else {
        String::new()
    };
    if a.json {
        let out = serde_json::json!({
            "rootHash": hex::encode(&tree.root_hash),
            "hashType": params.format,
            "hashAlgorithm": params.hash.name(),
            "dataBlocks": tree.data_blocks,
            "dataBlockSize": params.data_block_size,
            "hashBlocks": tree.hash_blocks,
            "hashBlockSize": params.hash_block_size,
            "salt": salt_hex,
            "uuid": uuid,
            "superblock": params.superblock,
            "hashDeviceSize": tree.hash_device_size,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("UUID:            \t{uuid}");
        println!("Hash type:       \t{}", params.format);
        println!("Data blocks:     \t{}", tree.data_blocks);
        println!("Data block size: \t{}", params.data_block_size);
        println!("Hash blocks:     \t{}", tree.hash_blocks);
        println!("Hash block size: \t{}", params.hash_block_size);
        println!("Hash algorithm:  \t{}", params.hash.name());
        println!("Salt:            \t{salt_hex}");
        println!("Root hash:      \t{}", hex::encode(&tree.root_hash));
        println!("Hash device size: \t{} [bytes]", tree.hash_device_size);
    }
    if a.data_blocks.is_none() && params.data_block_size > 0 {
        let len = data.metadata().map(|m| m.len()).unwrap_or(0);
        if len % u64::from(params.data_block_size) != 0 {
            eprintln!(
                "veil: note: the last {} bytes of {} are not a whole data block and are not covered (as with veritysetup)",
                len % u64::from(params.data_block_size),
                a.data.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
