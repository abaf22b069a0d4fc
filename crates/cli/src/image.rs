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
use veil_image::registry::{self, Credentials, Registry};
use veil_image::sign::policy::{self, Policy};
use veil_image::sign::reference::DockerReference;
use veil_image::sign::{self, SignError, StoredSignature, cosign, gpg};
use veil_image::source::SourceError;
use veil_image::unpack::{self, UnpackLimits};
use veil_image::verity::{self, VerityHash, VerityParams};
use veil_image::{Digest, OciLayout, OciRef, Platform, ResolvedImage};
use zeroize::Zeroizing;

/// The value of a veil-image call, or, after printing its refusal, exit
/// status 1 from the enclosing command (see [`refusal`]).
macro_rules! checked {
    ($e:expr) => {
        match refusal($e)? {
            Ok(v) => v,
            Err(code) => return Ok(code),
        }
    };
}

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
    Unpack(ImageUnpackArgs),
    /// Sign an image by manifest digest: a cosign/sigstore signature
    /// attached to the layout (`sha256-<hex>.sig`), or a GPG simple-signing
    /// signature in a lookaside directory.
    Sign(SignArgs),
    /// Verify an image's signatures against a containers-policy.json trust
    /// policy (insecureAcceptAnything, reject, signedBy, sigstoreSigned).
    Verify(VerifyArgs),
    /// Push an image from a layout to a registry (digests unchanged).
    Push(PushArgs),
    /// Pull an image from a registry into a layout, every blob verified.
    Pull(PullArgs),
    /// Make a single-layer image from a root filesystem directory
    /// (deterministic: sorted, owners 0:0, mtimes clamped).
    Import(crate::image_import::ImportArgs),
}

/// Arguments of `veil image sign`.
#[derive(Args)]
pub struct SignArgs {
    /// Image reference: `oci:DIR[:TAG]` or `docker://REF`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryOpts,
    /// The docker reference the signature vouches for
    /// (`registry.example/app:v1`).
    #[arg(long)]
    pub identity: String,
    /// cosign/sigstore private key (PEM: ENCRYPTED SIGSTORE/COSIGN PRIVATE
    /// KEY, PKCS#8 or SEC1; ECDSA P-256).
    #[arg(long, value_name = "FILE", conflicts_with = "gpg_key")]
    pub sigstore_key: Option<PathBuf>,
    /// GPG key (fingerprint or user ID) to sign with, from --gpg-home or
    /// GNUPGHOME.
    #[arg(long, value_name = "KEY", requires = "lookaside")]
    pub gpg_key: Option<String>,
    /// GnuPG home holding the GPG secret key.
    #[arg(long, value_name = "DIR")]
    pub gpg_home: Option<PathBuf>,
    /// File holding the private key's passphrase.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// Lookaside directory GPG signatures are written to
    /// (`DIR/<repository path>@sha256=<hex>/signature-N`).
    #[arg(long, value_name = "DIR")]
    pub lookaside: Option<PathBuf>,
}

/// Arguments of `veil image verify`.
#[derive(Args)]
pub struct VerifyArgs {
    /// Image reference: `oci:DIR[:TAG]` or `docker://REF`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryOpts,
    /// Trust policy in the containers-policy.json(5) format.
    #[arg(long, value_name = "FILE")]
    pub policy: PathBuf,
    /// The docker reference the image is pulled as; selects the policy's
    /// `docker` transport scopes and is what signed identities are matched
    /// against (without it: the `oci` transport, by layout path).
    #[arg(long)]
    pub identity: Option<String>,
    /// Lookaside directory holding GPG signatures. Repeatable.
    #[arg(long, value_name = "DIR")]
    pub lookaside: Vec<PathBuf>,
    /// A skopeo `dir:` copy of the image whose `signature-N` files to use.
    /// Repeatable.
    #[arg(long, value_name = "DIR")]
    pub signatures_dir: Vec<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `veil image unpack`.
#[derive(Args)]
pub struct ImageUnpackArgs {
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
    /// Bounds on what the image may unpack to (decompression bombs).
    #[command(flatten)]
    pub limits: crate::limits::ImageLimitArgs,
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
    /// `kbs://` recipient's path (32 raw bytes, 64 hex characters or base64).
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
    /// Image reference: `oci:DIR[:TAG]` or `docker://REF`.
    pub reference: String,
    #[command(flatten)]
    pub registry: RegistryOpts,
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

/// Registry access options (for `docker://` references).
#[derive(Args, Clone, Default)]
pub struct RegistryOpts {
    /// containers/docker auth.json with registry credentials.
    #[arg(long, value_name = "FILE", env = "REGISTRY_AUTH_FILE")]
    pub authfile: Option<PathBuf>,
    /// Content-addressed blob cache directory (blobs re-verified on use).
    #[arg(long, value_name = "DIR", env = "VEIL_BLOB_CACHE")]
    pub cache: Option<PathBuf>,
}

/// Where an image is read from.
enum Src {
    Layout {
        layout: OciLayout,
        r: OciRef,
    },
    Registry {
        reg: Box<Registry>,
        r: DockerReference,
    },
}

impl Src {
    fn open(reference: &str, o: &RegistryOpts) -> Result<Self> {
        if reference.starts_with(registry::TRANSPORT_PREFIX) {
            let r = registry::parse_reference(reference)?;
            let creds = match &o.authfile {
                Some(p) => Credentials::from_auth_file(p, r.domain())?,
                None => None,
            };
            let mut reg = Registry::new(&r, creds);
            if let Some(c) = &o.cache {
                reg = reg.with_cache(c)?;
            }
            return Ok(Src::Registry {
                reg: Box::new(reg),
                r,
            });
        }
        if !reference.starts_with("oci:") {
            anyhow::bail!(
                "invalid image reference {reference:?}: expected oci:DIR[:TAG] or docker://REGISTRY/REPO[:TAG|@DIGEST]"
            );
        }
        let r = OciRef::parse(reference)?;
        Ok(Src::Layout {
            layout: OciLayout::open(&r.dir)?,
            r,
        })
    }

    fn resolve(&self) -> Result<ResolvedImage, SourceError> {
        match self {
            Src::Layout { layout, r } => layout.resolve(r.tag.as_deref(), &Platform::linux_amd64()),
            Src::Registry { reg, .. } => reg.resolve(&Platform::linux_amd64()),
        }
    }

    fn name(&self) -> String {
        match self {
            Src::Layout { r, .. } => r.to_string(),
            Src::Registry { r, .. } => format!("{}{r}", registry::TRANSPORT_PREFIX),
        }
    }

    /// The cosign signatures attached to `digest`.
    fn attachments(&self, digest: &Digest) -> Result<Vec<cosign::SigstoreSignature>, SignError> {
        match self {
            Src::Layout { layout, .. } => cosign::layout_attachments(layout, digest),
            Src::Registry { reg, .. } => match reg.attachment(digest)? {
                Some(att) => cosign::read_attachment(&**reg, &att),
                None => Ok(Vec::new()),
            },
        }
    }
}

/// Arguments of `veil image push`.
#[derive(Args)]
pub struct PushArgs {
    /// Source image: `oci:DIR[:TAG]`.
    pub source: String,
    /// Destination: `docker://REGISTRY/REPO[:TAG]`.
    pub destination: String,
    #[command(flatten)]
    pub registry: RegistryOpts,
}

/// Arguments of `veil image pull`.
#[derive(Args)]
pub struct PullArgs {
    /// Source: `docker://REGISTRY/REPO[:TAG|@DIGEST]`.
    pub source: String,
    /// Destination: `oci:DIR:TAG`.
    pub destination: String,
    #[command(flatten)]
    pub registry: RegistryOpts,
}

fn push(a: PushArgs) -> Result<ExitCode> {
    let src = OciRef::parse(&a.source)?;
    let layout = OciLayout::open(&src.dir)?;
    let Src::Registry { reg, r } = Src::open(&a.destination, &a.registry)? else {
        anyhow::bail!("push destination must be docker://REGISTRY/REPO[:TAG]");
    };
    let digest = checked!(reg.push_with_progress(
        &layout,
        src.tag.as_deref(),
        &crate::progress::Bar::new("pushing")
    ));
    println!("pushed {digest} to {}{r}", registry::TRANSPORT_PREFIX);
    Ok(ExitCode::SUCCESS)
}

fn pull(a: PullArgs) -> Result<ExitCode> {
    let Src::Registry { reg, .. } = Src::open(&a.source, &a.registry)? else {
        anyhow::bail!("pull source must be docker://REGISTRY/REPO[:TAG|@DIGEST]");
    };
    let dst = Destination::open(&a.destination)?;
    let desc = checked!(reg.pull_into_with_progress(
        &dst.layout,
        &dst.tag,
        &crate::progress::Bar::new("pulling")
    ));
    dst.keep();
    println!("{}", desc.digest);
    Ok(ExitCode::SUCCESS)
}

/// Run a `veil image` subcommand.
pub fn run(cmd: ImageCommand) -> Result<ExitCode> {
    match cmd {
        ImageCommand::Inspect(a) => inspect(a),
        ImageCommand::Measure(a) => measure(a),
        ImageCommand::Encrypt(a) => encrypt(a),
        ImageCommand::Decrypt(a) => decrypt(a),
        ImageCommand::Unpack(a) => unpack(a),
        ImageCommand::Sign(a) => sign_image(a),
        ImageCommand::Verify(a) => verify_image(a),
        ImageCommand::Push(a) => push(a),
        ImageCommand::Pull(a) => pull(a),
        ImageCommand::Import(a) => crate::image_import::import(a),
    }
}

/// A key file's bytes, zeroized when dropped.
fn read_secret(path: &std::path::Path) -> Result<Zeroizing<Vec<u8>>> {
    Ok(Zeroizing::new(
        std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    ))
}

fn read_passphrase(path: Option<&std::path::Path>) -> Result<Option<Zeroizing<Vec<u8>>>> {
    let Some(p) = path else { return Ok(None) };
    let mut bytes = Zeroizing::new(
        std::fs::read(p).with_context(|| format!("reading passphrase file {}", p.display()))?,
    );
    // One line: a trailing newline is not part of the passphrase.
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(Some(bytes))
}

fn sign_image(a: SignArgs) -> Result<ExitCode> {
    let identity = DockerReference::parse(&a.identity)?;
    let src = Src::open(&a.reference, &a.registry)?;
    let img = checked!(src.resolve());
    let digest = img.manifest_digest().clone();
    if let Some(key_path) = &a.sigstore_key {
        let bytes = read_secret(key_path)?;
        let pass = read_passphrase(a.passphrase_file.as_deref())?;
        let key = cosign::PrivateKey::from_pem(&bytes, pass.as_ref().map(|p| p.as_slice()))?;
        let sig = sign::sign_sigstore(&key, &identity, &digest);
        let (att, place) = match &src {
            Src::Layout { layout, .. } => (
                cosign::attach_to_layout(layout, &digest, sig)?,
                layout.root().display().to_string(),
            ),
            Src::Registry { reg, .. } => (reg.attach_signature(&digest, sig)?, src.name()),
        };
        println!(
            "signed {digest} as {identity} (sigstore): {} in {place} ({})",
            cosign::attachment_tag(&digest),
            att.digest
        );
        return Ok(ExitCode::SUCCESS);
    }
    let (Some(key_id), Some(lookaside)) = (&a.gpg_key, &a.lookaside) else {
        anyhow::bail!("give --sigstore-key FILE, or --gpg-key KEY with --lookaside DIR");
    };
    let opts = gpg::GpgOptions {
        home: a.gpg_home.clone(),
        passphrase_file: a.passphrase_file.clone(),
    };
    let sig = sign::sign_gpg(key_id, &identity, &digest, &opts)?;
    let path = sign::write_lookaside(lookaside, &identity, &digest, &sig)?;
    println!("signed {digest} as {identity} (GPG): {}", path.display());
    Ok(ExitCode::SUCCESS)
}

fn verify_image(a: VerifyArgs) -> Result<ExitCode> {
    let policy = Policy::from_file(&a.policy)?;
    let identity = a
        .identity
        .as_deref()
        .map(DockerReference::parse)
        .transpose()?;
    let src = Src::open(&a.reference, &a.registry)?;
    // A registry reference is itself the identity, unless one is given.
    let identity = match (&src, identity) {
        (_, Some(i)) => Some(i),
        (Src::Registry { r, .. }, None) => Some(r.clone()),
        (Src::Layout { .. }, None) => None,
    };
    let img = checked!(src.resolve());
    let digest = img.manifest_digest().clone();
    let mut sigs = Vec::new();
    let mut sources = Vec::new();
    let found = src.attachments(&digest)?;
    if !found.is_empty() {
        sources.push(format!("{} sigstore attached to the image", found.len()));
    }
    sigs.extend(found.into_iter().map(StoredSignature::Sigstore));
    if !a.lookaside.is_empty() {
        let id = identity
            .as_ref()
            .context("--lookaside needs --identity (signatures are stored by repository)")?;
        for dir in &a.lookaside {
            let found = sign::read_lookaside(dir, id, &digest)?;
            sources.push(format!("{} in lookaside {}", found.len(), dir.display()));
            sigs.extend(found);
        }
    }
    for dir in &a.signatures_dir {
        let found = sign::read_dir_transport(dir)?;
        sources.push(format!("{} in {}", found.len(), dir.display()));
        sigs.extend(found);
    }
    let (transport, scopes) = match (&identity, &src) {
        (Some(id), _) => ("docker", id.policy_scopes()),
        (None, Src::Layout { r, .. }) => ("oci", policy::oci_scopes(&r.dir, r.tag.as_deref())),
        (None, Src::Registry { r, .. }) => ("docker", r.policy_scopes()),
    };
    let subject = sign::Subject {
        manifest_digest: digest.clone(),
        identity: identity.clone(),
    };
    let ok = checked!(sign::evaluate(&policy, transport, &scopes, &subject, &sigs));
    if a.json {
        let out = serde_json::json!({
            "accepted": true,
            "manifestDigest": digest,
            "identity": identity.map(|i| i.to_string()),
            "scope": ok.scope,
            "requirements": ok.reasons,
            "signaturesFound": sigs.len(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("accepted {digest} under {}", ok.scope);
        for line in &ok.reasons {
            println!("  {line}");
        }
        if !sources.is_empty() {
            println!("  signatures found: {}", sources.join(", "));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A destination layout; a directory created for it is removed again
/// unless [`Destination::keep`] is called, so a failed command leaves
/// nothing behind.
struct Destination {
    layout: OciLayout,
    tag: String,
    created: Option<PathBuf>,
}

impl Destination {
    fn open(s: &str) -> Result<Self> {
        let r = OciRef::parse(s)?;
        let tag = r
            .tag
            .clone()
            .with_context(|| format!("destination {s:?} needs a tag: oci:DIR:TAG"))?;
        let created = (!r.dir.exists()).then(|| r.dir.clone());
        let layout = match OciLayout::create(&r.dir) {
            Ok(l) => l,
            Err(e) => {
                if let Some(dir) = &created {
                    let _ = std::fs::remove_dir_all(dir);
                }
                return Err(e.into());
            }
        };
        Ok(Destination {
            layout,
            tag,
            created,
        })
    }

    fn keep(mut self) {
        self.created = None;
    }
}

impl Drop for Destination {
    fn drop(&mut self) {
        if let Some(dir) = self.created.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
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
            let raw = read_secret(path)?;
            let key = veil_kbs::secrets::decode_key32(&raw)
                .map_err(|e| anyhow::anyhow!("--kek {}: {e}", path.display()))?;
            wrappers.push(Box::new(KbsWrapper::new(kid, key.as_ref())?));
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
    let dst = Destination::open(&a.destination)?;
    let desc = checked!(crypt::encrypt_image_with_progress(
        &src_layout,
        src.tag.as_deref(),
        &dst.layout,
        &dst.tag,
        &refs,
        &selection,
        &crate::progress::Bar::new("encrypting"),
    ));
    dst.keep();
    println!("{}", desc.digest);
    Ok(ExitCode::SUCCESS)
}

fn unpack(a: ImageUnpackArgs) -> Result<ExitCode> {
    let r = OciRef::parse(&a.reference)?;
    let layout = OciLayout::open(&r.dir)?;
    let img = checked!(layout.resolve(r.tag.as_deref(), &Platform::linux_amd64()));
    let unwrappers = load_unwrappers(&a.keys, a.kbs_keys.as_deref())?;
    let refs: Vec<&dyn KeyUnwrapper> = unwrappers.iter().map(|u| u.as_ref()).collect();
    let limits = UnpackLimits {
        allow_devices: a.allow_devices,
        ..a.limits.limits()
    };
    let stats = checked!(unpack::unpack_image(
        &layout, &img, &a.rootfs, &refs, &limits
    ));
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

fn load_unwrappers(
    keys: &[PathBuf],
    kbs_keys: Option<&std::path::Path>,
) -> Result<Vec<Box<dyn KeyUnwrapper>>> {
    let mut unwrappers: Vec<Box<dyn KeyUnwrapper>> = Vec::new();
    let mut parsed = Vec::new();
    for path in keys {
        let bytes = read_secret(path)?;
        parsed.push(
            parse_private_key(&bytes).with_context(|| format!("private key {}", path.display()))?,
        );
    }
    if !parsed.is_empty() {
        unwrappers.push(Box::new(JweUnwrapper::new(parsed)));
    }
    if let Some(path) = kbs_keys {
        let bytes = read_secret(path)?;
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
    let dst = Destination::open(&a.destination)?;
    let desc = checked!(crypt::decrypt_image_with_progress(
        &src_layout,
        src.tag.as_deref(),
        &dst.layout,
        &dst.tag,
        &refs,
        &crate::progress::Bar::new("decrypting"),
    ));
    dst.keep();
    println!("{}", desc.digest);
    Ok(ExitCode::SUCCESS)
}

/// veil-image's errors, each of which knows whether it is a refusal (a
/// failed digest, HMAC, signature, policy or safety check: exit 1) or bad
/// input (exit 2).
trait Refusable: Into<anyhow::Error> + std::fmt::Display {
    fn is_refusal(&self) -> bool;
}

macro_rules! refusable {
    ($($t:ty),*) => {
        $(impl Refusable for $t {
            fn is_refusal(&self) -> bool {
                <$t>::is_refusal(self)
            }
        })*
    };
}
refusable!(SourceError, SignError, CryptError, unpack::UnpackError);

/// Print a refusal and return exit status 1; other errors propagate (2).
fn refusal<T, E: Refusable>(r: Result<T, E>) -> Result<Result<T, ExitCode>> {
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
    let src = Src::open(&a.reference, &a.registry)?;
    let img = checked!(src.resolve());
    // Signatures found next to the image (not verified here).
    let digest = img.manifest_digest().clone();
    let signatures: Vec<String> = src
        .attachments(&digest)?
        .iter()
        .map(|s| {
            sign::payload::Payload::parse(&s.payload, sign::payload::PayloadKind::Cosign)
                .map_or_else(
                    |e| format!("sigstore (unreadable payload: {e})"),
                    |p| format!("sigstore, claims {}", p.docker_reference),
                )
        })
        .collect();
    // Recipient schemes of each encrypted layer.
    let recipients = |l: &veil_image::Descriptor| -> Vec<String> {
        l.annotations
            .keys()
            .filter_map(|k| k.strip_prefix(crypt::ANNOTATION_KEYS_PREFIX))
            .map(str::to_owned)
            .collect()
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
                    "recipients": recipients(l),
                })
            })
            .collect();
        let out = serde_json::json!({
            "reference": src.name(),
            "manifestDigest": img.manifest_digest(),
            "indexDigest": img.index_digest,
            "configDigest": img.config_digest(),
            "platform": img.config.platform().to_string(),
            "config": img.config.config,
            "layers": layers,
            "signatures": signatures,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("Reference:  {}", src.name());
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
        let r = recipients(l);
        if !r.is_empty() {
            println!("    recipients: {}", r.join(", "));
        }
    }
    if signatures.is_empty() {
        println!("Signatures: none attached");
    } else {
        println!("Signatures (unverified; check with `veil image verify`):");
        for s in &signatures {
            println!("  {s}");
        }
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
            let existed = path.exists();
            let out = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            match verity::format(&data, &out, &params) {
                Ok(t) => t,
                Err(e) => {
                    // A hash file veil created is not left half-written.
                    if !existed {
                        let _ = std::fs::remove_file(path);
                    }
                    return Err(e.into());
                }
            }
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

/// Arguments of `veil bench image`.
#[derive(Args)]
pub struct BenchArgs {
    /// Size of the random layer and of the dm-verity data image, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub size_mib: u64,
    /// Runs per tool; the best time of each is kept.
    #[arg(long, default_value_t = 3)]
    pub runs: u32,
    /// Directory for the temporary images (needs about 3 × size free;
    /// default: $TMPDIR, else /var/tmp).
    #[arg(long, value_name = "DIR")]
    pub work_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// CPU seconds (user + system) used by this process's waited-for children.
fn children_cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the rusage struct we pass it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return f64::NAN;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Best wall time and CPU time of a tool over the runs.
#[derive(Clone, Copy)]
struct Timing {
    wall: f64,
    cpu: f64,
}

impl Timing {
    fn new() -> Self {
        Timing {
            wall: f64::INFINITY,
            cpu: f64::INFINITY,
        }
    }

    /// Run `c` once (it must succeed) and keep the best times.
    fn run(&mut self, mut c: std::process::Command) -> Result<()> {
        let cpu0 = children_cpu_seconds();
        let t = std::time::Instant::now();
        let out = c
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {c:?}"))?;
        let wall = t.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds() - cpu0;
        if !out.status.success() {
            anyhow::bail!(
                "{c:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        self.wall = self.wall.min(wall);
        self.cpu = self.cpu.min(cpu);
        Ok(())
    }
}

fn need_tool(name: &str) -> Result<()> {
    let found = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
        .unwrap_or(false);
    if !found {
        anyhow::bail!("{name} is missing (install it with scripts/install-deps.sh)");
    }
    Ok(())
}

fn run_ok(mut c: std::process::Command) -> Result<std::process::Output> {
    let out = c.output().with_context(|| format!("running {c:?}"))?;
    if !out.status.success() {
        anyhow::bail!(
            "{c:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Digests of the layers of `tag` in the layout at `dir`.
fn layer_digests(dir: &std::path::Path, tag: &str) -> Result<Vec<Digest>> {
    let img = OciLayout::open(dir)?.resolve(Some(tag), &Platform::linux_amd64())?;
    Ok(img.layers().iter().map(|l| l.digest.clone()).collect())
}

/// `veil bench image`: `veil image decrypt` vs `skopeo copy
/// --decryption-key` and `veil image measure` vs `veritysetup format` on
/// the same data, as throughput and ratios, plus the primitives' speed.
pub fn bench(a: BenchArgs) -> Result<ExitCode> {
    use std::io::Write as _;
    use std::process::Command;

    for tool in ["skopeo", "veritysetup", "openssl"] {
        need_tool(tool)?;
    }
    if a.size_mib == 0 {
        anyhow::bail!("--size-mib must be at least 1");
    }
    let veil = std::env::current_exe().context("locating the veil binary")?;
    let parent = a
        .work_dir
        .clone()
        .or_else(|| std::env::var_os("TMPDIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let tmp = tempfile::Builder::new()
        .prefix("veil-bench-image.")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let t = tmp.path();
    let bytes = a.size_mib << 20;
    eprintln!(
        "veil bench image: {} MiB of random data in {}",
        a.size_mib,
        t.display()
    );

    // The data: one random file, the dm-verity data image and the layer's content.
    let src = t.join("src");
    std::fs::create_dir(&src)?;
    let data = src.join("data.bin");
    {
        let mut f = std::io::BufWriter::new(File::create(&data)?);
        let mut chunk = vec![0u8; 1 << 20];
        for _ in 0..a.size_mib {
            rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut chunk)
                .map_err(|e| anyhow::anyhow!("random data: {e}"))?;
            f.write_all(&chunk)?;
        }
        f.flush()?;
    }
    // The plain image (one gzip layer, as registries serve them), encrypted
    // by skopeo for an RSA key.
    let img = t.join("img");
    let plain_layer = {
        let layout = OciLayout::create(&img)?;
        let mut b = veil_image::builder::ImageBuilder::new(&layout);
        let layer = b
            .add_layer_dir(&src, veil_image::spec::Compression::Gzip)?
            .clone();
        b.finish("plain")?;
        layout.blob_path(&layer.digest)
    };
    let key = t.join("rsa.key");
    let public = t.join("rsa.pub");
    run_ok({
        let mut c = Command::new("openssl");
        c.args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key);
        c
    })?;
    run_ok({
        let mut c = Command::new("openssl");
        c.args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public);
        c
    })?;
    let policy = t.join("policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let skopeo = || {
        let mut c = Command::new("skopeo");
        c.arg("--policy").arg(&policy);
        c
    };
    let oci = |dir: &std::path::Path, tag: &str| format!("oci:{}:{tag}", dir.display());
    run_ok({
        let mut c = skopeo();
        c.args(["copy", "--quiet", "--encryption-key"])
            .arg(format!("jwe:{}", public.display()))
            .arg(oci(&img, "plain"))
            .arg(oci(&img, "enc"));
        c
    })?;
    // The plaintext layer is not needed any more: save the disk space.
    std::fs::remove_file(&plain_layer)?;
    let enc = OciLayout::open(&img)?.resolve(Some("enc"), &Platform::linux_amd64())?;
    let layer_bytes: u64 = enc.layers().iter().map(|l| l.size).sum();

    // Decryption: the same encrypted image, each tool into a fresh layout.
    let out_veil = t.join("out-veil");
    let out_skopeo = t.join("out-skopeo");
    let clean = |d: &std::path::Path| -> Result<()> {
        if d.exists() {
            std::fs::remove_dir_all(d)?;
        }
        Ok(())
    };
    let veil_decrypt = || {
        let mut c = Command::new(&veil);
        c.args(["image", "decrypt"])
            .arg(oci(&img, "enc"))
            .arg(oci(&out_veil, "dec"))
            .arg("--key")
            .arg(&key);
        c
    };
    let skopeo_decrypt = || {
        let mut c = skopeo();
        c.args(["copy", "--quiet", "--decryption-key"])
            .arg(&key)
            .arg(oci(&img, "enc"))
            .arg(oci(&out_skopeo, "dec"));
        c
    };
    // Runs alternate between the tools so that load from elsewhere hits both
    // alike; the best time of each is kept. Every run's output is checked
    // (outside the timing) and removed.
    let (mut veil_dec, mut skopeo_dec) = (Timing::new(), Timing::new());
    for _ in 0..a.runs.max(1) {
        veil_dec.run(veil_decrypt())?;
        let dec_veil = layer_digests(&out_veil, "dec")?;
        clean(&out_veil)?;
        skopeo_dec.run(skopeo_decrypt())?;
        let dec_skopeo = layer_digests(&out_skopeo, "dec")?;
        clean(&out_skopeo)?;
        if dec_veil != dec_skopeo {
            anyhow::bail!("decrypted layers differ: veil {dec_veil:?}, skopeo {dec_skopeo:?}");
        }
    }

    // dm-verity: the same data, salt and UUID; the hash files must be identical.
    let mut salt = [0u8; 32];
    rand_core::RngCore::try_fill_bytes(&mut rand_core::OsRng, &mut salt)
        .map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    let salt = hex::encode(salt);
    let uuid = "12345678-1234-1234-1234-123456789abc";
    let h_veil = t.join("hash-veil");
    let h_vs = t.join("hash-veritysetup");
    let rm = |p: &std::path::Path| -> Result<()> {
        if p.exists() {
            std::fs::remove_file(p)?;
        }
        Ok(())
    };
    let veil_measure = || {
        let mut c = Command::new(&veil);
        c.args(["image", "measure"])
            .arg(&data)
            .arg("--hash-file")
            .arg(&h_veil)
            .args(["--salt", &salt, "--uuid", uuid]);
        c
    };
    let vs_format = || {
        let mut c = Command::new("veritysetup");
        c.arg("format")
            .arg(&data)
            .arg(&h_vs)
            .args(["--salt", &salt, "--uuid", uuid]);
        c
    };
    let (mut veil_measure_t, mut vs_format_t) = (Timing::new(), Timing::new());
    for _ in 0..a.runs.max(1) {
        rm(&h_veil)?;
        rm(&h_vs)?;
        veil_measure_t.run(veil_measure())?;
        vs_format_t.run(vs_format())?;
        if std::fs::read(&h_veil)? != std::fs::read(&h_vs)? {
            anyhow::bail!("veil's hash tree differs from veritysetup's");
        }
    }

    let prims = veil_image::bench::primitives(std::time::Duration::from_secs(1));
    let openssl = |alg: &str| -> Option<f64> {
        let out = Command::new("openssl")
            .args(["speed", "-evp", alg, "-bytes", "16384", "-seconds", "1"])
            .stderr(std::process::Stdio::null())
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let line = text
            .lines()
            .rev()
            .find(|l| l.to_ascii_lowercase().starts_with(alg))?;
        let v: f64 = line
            .split_whitespace()
            .last()?
            .trim_end_matches('k')
            .parse()
            .ok()?;
        Some(v * 1000.0 / f64::from(1u32 << 20))
    };
    let ossl_aes = openssl("aes-256-ctr");
    let ossl_sha = openssl("sha256");

    let mib = |b: u64| b as f64 / f64::from(1u32 << 20);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_default();
    let pair = |bytes: u64, v: Timing, b: Timing, base: &str| {
        serde_json::json!({
            "bytes": bytes,
            "veilSeconds": v.wall,
            "veilCpuSeconds": v.cpu,
            "veilMiBs": mib(bytes) / v.wall,
            format!("{base}Seconds"): b.wall,
            format!("{base}CpuSeconds"): b.cpu,
            format!("{base}MiBs"): mib(bytes) / b.wall,
            "ratio": b.wall / v.wall,
            "cpuRatio": b.cpu / v.cpu,
        })
    };
    let out = serde_json::json!({
        "sizeMiB": a.size_mib,
        "runs": a.runs,
        "cores": cores,
        "loadAverage": load,
        "decrypt": pair(layer_bytes, veil_dec, skopeo_dec, "skopeo"),
        "measure": pair(bytes, veil_measure_t, vs_format_t, "veritysetup"),
        "primitives": prims,
        "openssl": { "aes256CtrMiBs": ossl_aes, "sha256MiBs": ossl_sha },
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "veil bench image: {} MiB random data, {cores} cores (load average {load}), best of {} runs",
        a.size_mib, a.runs
    );
    for (name, bytes, v, b, base) in [
        ("decrypt", layer_bytes, veil_dec, skopeo_dec, "skopeo"),
        ("measure", bytes, veil_measure_t, vs_format_t, "veritysetup"),
    ] {
        println!(
            "  {name}  veil {:7.1} MiB/s  {base:<11} {:7.1} MiB/s  ratio {:5.2}x   CPU s: veil {:.2}, {base} {:.2} ({:.2}x)",
            mib(bytes) / v.wall,
            mib(bytes) / b.wall,
            b.wall / v.wall,
            v.cpu,
            b.cpu,
            b.cpu / v.cpu,
        );
    }
    println!(
        "  primitives (veil's crates, one core): SHA-256 {:.0} MiB/s (4 KiB blocks {:.0}), AES-256-CTR {:.0} MiB/s, HMAC-SHA256 {:.0} MiB/s",
        prims.sha256_mib_s,
        prims.sha256_4k_blocks_mib_s,
        prims.aes256_ctr_mib_s,
        prims.hmac_sha256_mib_s
    );
    let f = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format!("{v:.0} MiB/s"));
    println!(
        "  openssl speed (one core): SHA-256 {}, AES-256-CTR {}",
        f(ossl_sha),
        f(ossl_aes)
    );
    Ok(ExitCode::SUCCESS)
}
