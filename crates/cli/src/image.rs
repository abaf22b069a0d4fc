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
use veil_image::crypt::jwe::{JweUnwrapper, JweWrapper};
use veil_image::crypt::kbs::{KbsUnwrapper, KbsWrapper, LocalKeks, ResourceUri};
use veil_image::crypt::keys::{parse_private_key, parse_public_key};
use veil_image::crypt::{self, CryptError, KeyUnwrapper, KeyWrapper, LayerSelection};
use veil_image::source::SourceError;
use veil_image::unpack::{self, UnpackLimits};
use veil_image::verity::{self, VerityHash, VerityParams};
use veil_image::{OciLayout, OciRef, Platform};
use zeroize::Zeroizing;

/// OCI images: inspect, measure, encrypt, sign, verify, unpack.
#[derive(Subcommand)]
pub enum ImageCommand {
    /// Print an image's manifest digest, platform, config and layers.
    Inspect(InspectArgs),
    /// Compute a dm-verity hash tree and root hash, bit-identical to
    /// `veritysetup format` with the same parameters.
    Measure(MeasureArgs),
    /// Encrypt layers (ocicrypt AES-256-CTR + HMAC-SHA256) for JWE public
    /// keys and/or a KBS-held key (`kbs:///repo/type/tag`).
    Encrypt(EncryptArgs),
    /// Decrypt encrypted layers; every layer's HMAC and digest are checked
    /// before anything is written under its digest or tagged.
    Decrypt(DecryptArgs),
    /// Unpack an image into a new root filesystem directory, safely
    /// (contained paths, whiteouts, diff_id checks; devices refused).
    Unpack(UnpackArgs),
}

/// Arguments of `veil image unpack`.
#[derive(Args)]
pub struct UnpackArgs {
    /// Image reference: `oci:DIR[:TAG]`.
    pub reference: String,
    /// Target directory (must not exist; created only on success).
    pub rootfs: PathBuf,
    /// Private key file for encrypted layers (PEM/DER). Repeatable.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
    /// KBS keys as an offline resources file `{"repo/type/tag": "<base64>"}`.
    #[arg(long, value_name = "FILE")]
    pub kbs_keys: Option<PathBuf>,
    /// Skip device nodes and FIFOs instead of refusing the image.
    #[arg(long)]
    pub allow_devices: bool,
}

/// Arguments of `veil image encrypt`.
#[derive(Args)]
pub struct EncryptArgs {
    /// Source image: `oci:DIR[:TAG]`.
    pub source: String,
    /// Destination: `oci:DIR:TAG` (may be the same directory).
    pub destination: String,
    /// Recipient: `jwe:PUBLIC_KEY.pem` (RSA or EC), or `kbs:///repo/type/tag`
    /// (needs --kek). Repeatable.
    #[arg(long = "recipient", required = true)]
    pub recipients: Vec<String>,
    /// File holding the 32-byte key-encryption key stored in the KBS at the
    /// `kbs://` recipient's path (raw bytes, or base64).
    #[arg(long, value_name = "FILE")]
    pub kek: Option<PathBuf>,
    /// Encrypt only this layer index (negative counts from the top). Repeatable.
    #[arg(long = "layer", allow_hyphen_values = true)]
    pub layers: Vec<i64>,
}

/// Arguments of `veil image decrypt`.
#[derive(Args)]
pub struct DecryptArgs {
    /// Source image: `oci:DIR[:TAG]`.
    pub source: String,
    /// Destination: `oci:DIR:TAG`.
    pub destination: String,
    /// Private key file (PEM/DER; RSA or EC). Repeatable.
    #[arg(long = "key", value_name = "FILE")]
    pub keys: Vec<PathBuf>,
    /// KBS keys as an offline resources file `{"repo/type/tag": "<base64>"}`.
    #[arg(long, value_name = "FILE")]
    pub kbs_keys: Option<PathBuf>,
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
        ImageCommand::Encrypt(a) => encrypt(a),
        ImageCommand::Decrypt(a) => decrypt(a),
        ImageCommand::Unpack(a) => unpack(a),
    }
}

fn crypt_result<T>(r: Result<T, CryptError>) -> Result<Result<T, ExitCode>> {
    match r {
        Ok(v) => Ok(Ok(v)),
        Err(e) if e.is_refusal() => {
            eprintln!("veil: refused: {e}");
            Ok(Err(ExitCode::from(1)))
        }
        Err(e) => Err(e.into()),
    }
}

fn destination(s: &str) -> Result<(OciLayout, String)> {
    let r = OciRef::parse(s)?;
    let tag = r
        .tag
        .clone()
        .with_context(|| format!("destination {s:?} needs a tag: oci:DIR:TAG"))?;
    Ok((OciLayout::create(&r.dir)?, tag))
}

fn encrypt(a: EncryptArgs) -> Result<ExitCode> {
    let src = OciRef::parse(&a.source)?;
    let src_layout = OciLayout::open(&src.dir)?;
    let mut jwe_keys = Vec::new();
    let mut wrappers: Vec<Box<dyn KeyWrapper>> = Vec::new();
    for r in &a.recipients {
        if let Some(path) = r.strip_prefix("jwe:") {
            let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
            jwe_keys.push(parse_public_key(&bytes).with_context(|| format!("public key {path}"))?);
        } else if r.starts_with("kbs://") {
            let kid = ResourceUri::parse(r)?;
            let path = a
                .kek
                .as_ref()
                .context("a kbs:// recipient needs --kek FILE")?;
            let raw = Zeroizing::new(
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
            );
            let key = if raw.len() == 32 {
                raw
            } else {
                use base64::Engine as _;
                Zeroizing::new(
                    base64::engine::general_purpose::STANDARD
                        .decode(String::from_utf8_lossy(&raw).trim())
                        .context("--kek: expected 32 raw bytes or base64")?,
                )
            };
            wrappers.push(Box::new(KbsWrapper::new(kid, &key)?));
        } else {
            anyhow::bail!("recipient {r:?}: expected jwe:PUBLIC_KEY_FILE or kbs:///repo/type/tag");
        }
    }
    if !jwe_keys.is_empty() {
        wrappers.push(Box::new(JweWrapper::new(jwe_keys)));
    }
    let refs: Vec<&dyn KeyWrapper> = wrappers.iter().map(|w| w.as_ref()).collect();
    let selection = if a.layers.is_empty() {
        LayerSelection::All
    } else {
        LayerSelection::Indexes(a.layers.clone())
    };
    let (dst, tag) = destination(&a.destination)?;
    let desc = match crypt_result(crypt::encrypt_image(
        &src_layout,
        src.tag.as_deref(),
        &dst,
        &tag,
        &refs,
        &selection,
    ))? {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    println!("{}", desc.digest);
    Ok(ExitCode::SUCCESS)
}

fn unpack(a: UnpackArgs) -> Result<ExitCode> {
    let r = OciRef::parse(&a.reference)?;
    let layout = OciLayout::open(&r.dir)?;
    let img = match source_result(layout.resolve(r.tag.as_deref(), &Platform::linux_amd64()))? {
        Ok(img) => img,
        Err(code) => return Ok(code),
    };
    let unwrappers = load_unwrappers(&a.keys, a.kbs_keys.as_deref())?;
    let refs: Vec<&dyn KeyUnwrapper> = unwrappers.iter().map(|u| u.as_ref()).collect();
    let limits = UnpackLimits {
        allow_devices: a.allow_devices,
        ..UnpackLimits::default()
    };
    match unpack::unpack_image(&layout, &img, &a.rootfs, &refs, &limits) {
        Ok(stats) => {
            println!(
                "unpacked {} ({} layers, {} entries, {} bytes) into {}",
                img.manifest_digest(),
                stats.layers,
                stats.entries,
                stats.bytes,
                a.rootfs.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if e.is_refusal() => {
            eprintln!("veil: refused: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn load_unwrappers(
    keys: &[PathBuf],
    kbs_keys: Option<&std::path::Path>,
) -> Result<Vec<Box<dyn KeyUnwrapper>>> {
    let mut unwrappers: Vec<Box<dyn KeyUnwrapper>> = Vec::new();
    let mut parsed = Vec::new();
    for path in keys {
        let bytes = Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        );
        parsed.push(
            parse_private_key(&bytes).with_context(|| format!("private key {}", path.display()))?,
        );
    }
    if !parsed.is_empty() {
        unwrappers.push(Box::new(JweUnwrapper::new(parsed)));
    }
    if let Some(path) = kbs_keys {
        let bytes = Zeroizing::new(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        );
        unwrappers.push(Box::new(KbsUnwrapper::new(LocalKeks::from_json(&bytes)?)));
    }
    Ok(unwrappers)
}

fn decrypt(a: DecryptArgs) -> Result<ExitCode> {
    let src = OciRef::parse(&a.source)?;
    let src_layout = OciLayout::open(&src.dir)?;
    let unwrappers = load_unwrappers(&a.keys, a.kbs_keys.as_deref())?;
    if unwrappers.is_empty() {
        anyhow::bail!("give at least one --key or --kbs-keys");
    }
    let refs: Vec<&dyn KeyUnwrapper> = unwrappers.iter().map(|u| u.as_ref()).collect();
    let (dst, tag) = destination(&a.destination)?;
    let desc = match crypt_result(crypt::decrypt_image(
        &src_layout,
        src.tag.as_deref(),
        &dst,
        &tag,
        &refs,
    ))? {
        Ok(d) => d,
        Err(code) => return Ok(code),
    };
    println!("{}", desc.digest);
    Ok(ExitCode::SUCCESS)
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
