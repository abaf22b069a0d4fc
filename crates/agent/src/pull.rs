//! Pulling an image inside the guest, from an OCI layout the host exposes
//! read-only or from the registry itself ([`crate::registry`]): find the
//! manifest whose digest is the one the policy allowed, refuse before any
//! layer is read if there is none, then decrypt (keys from the KBS) and
//! unpack every layer with `veil-image`, each checked against its digest
//! and `diff_id`, into a staging directory that becomes the rootfs only
//! when everything passed. When init-data names an image trust policy
//! (`cdh.toml` `[image]`), the image's signatures are checked against it
//! first, also before any layer is read. Both sources share
//! [`verify_and_unpack`]: only where the bytes come from differs.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use veil_agent_api::ImageRef;
use veil_image::crypt::KeyUnwrapper;
use veil_image::crypt::kbs::KbsUnwrapper;
use veil_image::spec::layer_kind;
use veil_image::unpack::{UnpackLimits, unpack_image};
use veil_image::{OciLayout, Platform, ResolvedImage};

use veil_image::sign::cosign;
use veil_image::sign::cosign::SigstoreSignature;
use veil_image::sign::policy::{Policy, oci_scopes};
use veil_image::sign::reference::DockerReference;
use veil_image::sign::{StoredSignature, Subject, evaluate};
use veil_image::source::{BlobSource, SourceError};

use crate::kbs::{ImageTrust, Kbs, KbsKeks};
use crate::registry::{GuestRegistry, RegistryAccess};

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullStats {
    pub digest: String,
    pub layers: u32,
    pub encrypted_layers: u32,
    pub ms: u64,
    /// The image configuration (entrypoint, env…) as pulled.
    pub user: String,
    /// `layout`, or `registry HOST[:PORT]`.
    pub source: String,
    /// Compressed bytes of the layers.
    pub bytes: u64,
}

/// Find the image whose manifest digest is `want.digest` in the layout.
pub fn find_image(layout: &OciLayout, want: &ImageRef) -> Result<ResolvedImage, String> {
    let platform = Platform::linux_amd64();
    let index = layout
        .index()
        .map_err(|e| format!("reading the OCI layout {}: {e}", layout.root().display()))?;
    let tag = want.reference.rsplit('/').next().and_then(|l| {
        l.split_once(':')
            .map(|(_, t)| t.split('@').next().unwrap_or(t))
    });
    let mut named: Option<String> = None;
    for desc in &index.manifests {
        let img = match veil_image::source::resolve(layout, desc, &platform) {
            Ok(i) => i,
            Err(e) => {
                tracing::debug!(digest = %desc.digest, error = %e, "skipping layout entry");
                continue;
            }
        };
        let got = img.manifest_digest().to_string();
        if got == want.digest {
            return Ok(img);
        }
        let name = desc
            .annotations
            .get(veil_image::spec::ANNOTATION_REF_NAME)
            .map(String::as_str);
        if name.is_some() && (name == Some(want.reference.as_str()) || name == tag) {
            named = Some(got);
        }
    }
    Err(match named {
        Some(got) => format!(
            "image digest check: the policy allows {} for {:?}, but the image the host provides under that name is {got}; refusing before unpacking any layer",
            want.digest, want.reference
        ),
        None => format!(
            "image digest check: no image with digest {} ({:?}) in the OCI layout the host provides; refusing before unpacking any layer",
            want.digest, want.reference
        ),
    })
}

/// Check the signatures of `img` against the trust policy init-data names.
/// Signatures are the cosign attachments stored next to the image (in the
/// layout, `sha256-<hex>.sig`, or in the registry under that tag), read by
/// `signatures`; keys must be inline (`keyData`) or come from the KBS,
/// never from a host path. `layout_root` names the layout for `oci`
/// scopes when the reference is not a registry's.
pub fn check_signatures(
    want: &ImageRef,
    img: &ResolvedImage,
    signatures: &dyn Fn() -> Result<Vec<SigstoreSignature>, String>,
    layout_root: Option<&Path>,
    trust: &ImageTrust,
    kbs: Option<&Arc<Kbs>>,
) -> Result<String, String> {
    let refuse = |e: String| {
        format!(
            "image signature check for {:?} ({}): {e}; refusing before unpacking any layer",
            want.reference,
            img.manifest_digest()
        )
    };
    let bytes: Vec<u8> = match trust {
        ImageTrust::Inline(s) => s.as_bytes().to_vec(),
        ImageTrust::Kbs(path) => {
            let kbs = kbs.ok_or_else(|| {
                refuse(format!(
                    "the trust policy is kbs:///{path} but init-data names no KBS"
                ))
            })?;
            kbs.get_resource(path)
                .map_err(|e| refuse(format!("getting the trust policy kbs:///{path}: {e}")))?
                .to_vec()
        }
    };
    // Relative keyPath entries would resolve here, where nothing exists.
    let policy = Policy::parse(&bytes, Path::new("/nonexistent/veil-trust-policy"))
        .map_err(|e| refuse(format!("the trust policy: {e}")))?;
    let digest = img.manifest_digest().clone();
    let sigs: Vec<StoredSignature> = signatures()
        .map_err(|e| refuse(format!("reading the signatures: {e}")))?
        .into_iter()
        .map(StoredSignature::Sigstore)
        .collect();
    let identity = DockerReference::parse(&want.reference).ok();
    let (transport, scopes) = match (&identity, layout_root) {
        (Some(id), _) => ("docker", id.policy_scopes()),
        (None, Some(root)) => ("oci", oci_scopes(root, None)),
        (None, None) => {
            return Err(refuse(
                "the reference names no registry repository to match the trust policy's scopes against".into(),
            ));
        }
    };
    let subject = Subject {
        manifest_digest: digest,
        identity,
    };
    let ok = evaluate(&policy, transport, &scopes, &subject, &sigs)
        .map_err(|e| refuse(e.to_string()))?;
    Ok(format!("{} ({})", ok.scope, ok.reasons.join("; ")))
}

/// The unpack limits of a policy: the owner's bounds (measured with
/// init-data, so the host cannot raise them) over veil-image's defaults.
pub fn unpack_limits(b: &veil_policy::model::UnpackBounds) -> UnpackLimits {
    let d = UnpackLimits::default();
    UnpackLimits {
        max_bytes: b.max_bytes.unwrap_or(d.max_bytes),
        max_entries: b.max_entries.unwrap_or(d.max_entries),
        max_ratio: b.max_ratio.unwrap_or(d.max_ratio),
        ratio_floor_bytes: b.ratio_floor_bytes.unwrap_or(d.ratio_floor_bytes),
        max_file_bytes: b.max_file_bytes.unwrap_or(d.max_file_bytes),
        allow_devices: d.allow_devices,
    }
}

/// Room on the agent's tmpfs beyond the images: secrets, sockets, launch specs.
pub const TMPFS_HEADROOM_BYTES: u64 = 256 << 20;

/// `size=` of the agent's tmpfs: every container's image at its limit, plus
/// headroom. A bomb that passes every per-image check still cannot fill
/// more memory than this.
pub fn tmpfs_bytes(limits: &UnpackLimits, containers: usize) -> u64 {
    limits
        .max_bytes
        .saturating_mul(containers.max(1) as u64)
        .saturating_add(TMPFS_HEADROOM_BYTES)
}

/// Where the guest pulls an image from.
pub enum Source<'a> {
    /// The read-only OCI layout the host exposes.
    Layout(&'a Path),
    /// The registry itself ([`crate::registry`]).
    Registry(&'a RegistryAccess),
}

/// Pull `want` from `source` into `rootfs` (which must not exist),
/// checking signatures first when `trust` is given, within `limits`.
pub fn pull(
    source: Source<'_>,
    want: &ImageRef,
    rootfs: &Path,
    kbs: Option<&Arc<Kbs>>,
    trust: Option<&ImageTrust>,
    limits: &UnpackLimits,
) -> Result<PullStats, String> {
    let start = Instant::now();
    match source {
        Source::Layout(layout_dir) => {
            let layout = OciLayout::open(layout_dir)
                .map_err(|e| format!("opening the OCI layout {}: {e}", layout_dir.display()))?;
            let img = find_image(&layout, want)?;
            let sigs = || {
                cosign::layout_attachments(&layout, img.manifest_digest())
                    .map_err(|e| e.to_string())
            };
            let mut stats = verify_and_unpack(
                &layout,
                &img,
                (&sigs, Some(layout.root())),
                want,
                rootfs,
                kbs,
                trust,
                limits,
            )?;
            stats.source = "layout".into();
            stats.ms = start.elapsed().as_millis() as u64;
            Ok(stats)
        }
        Source::Registry(access) => {
            let reg = GuestRegistry::open(access, want, kbs)?;
            let img = reg.resolve().map_err(|e| {
                let check = match &e {
                    SourceError::DigestMismatch { .. } => "image digest check",
                    _ => "registry pull",
                };
                let creds = match &access.trust.auth {
                    Some(p) => format!(" with the credentials from kbs:///{p}"),
                    None => " anonymously (init-data names no registry credentials)".into(),
                };
                format!(
                    "{check}: pulling {:?} by its pinned digest {} from {}{creds}: {e}; refusing before reading any layer",
                    want.reference, want.digest, reg.endpoint
                )
            })?;
            let sigs = || reg.signatures().map_err(|e| e.to_string());
            let mut stats =
                verify_and_unpack(&reg, &img, (&sigs, None), want, rootfs, kbs, trust, limits)?;
            stats.source = format!("registry {}", reg.endpoint);
            stats.ms = start.elapsed().as_millis() as u64;
            Ok(stats)
        }
    }
}

type Signatures<'a> = (
    &'a dyn Fn() -> Result<Vec<SigstoreSignature>, String>,
    Option<&'a Path>,
);

/// What both sources share once the manifest matched: signatures, then
/// every layer decrypted and unpacked, each checked against its digest.
#[allow(clippy::too_many_arguments)]
fn verify_and_unpack(
    source: &dyn BlobSource,
    img: &ResolvedImage,
    (signatures, layout_root): Signatures<'_>,
    want: &ImageRef,
    rootfs: &Path,
    kbs: Option<&Arc<Kbs>>,
    trust: Option<&ImageTrust>,
    limits: &UnpackLimits,
) -> Result<PullStats, String> {
    if let Some(trust) = trust {
        let accepted = check_signatures(want, img, signatures, layout_root, trust, kbs)?;
        tracing::info!(image = %want.reference, accepted = %accepted, "image signatures accepted");
    }
    let encrypted = img
        .layers()
        .iter()
        .filter(|l| layer_kind(&l.media_type).is_some_and(|k| k.encrypted))
        .count() as u32;
    if encrypted > 0 && kbs.is_none() {
        return Err(format!(
            "the image has {encrypted} encrypted layer(s) but init-data names no KBS to get their keys from"
        ));
    }
    let unwrapper = kbs.map(|k| KbsUnwrapper::new(KbsKeks(k.clone())));
    let unwrappers: Vec<&dyn KeyUnwrapper> =
        unwrapper.iter().map(|u| u as &dyn KeyUnwrapper).collect();
    let stats = unpack_image(source, img, rootfs, &unwrappers, limits)
        .map_err(|e| format!("unpacking {}: {e}", want.reference))?;
    Ok(PullStats {
        digest: img.manifest_digest().to_string(),
        layers: stats.layers as u32,
        encrypted_layers: encrypted,
        ms: 0,
        user: img.config.user().to_string(),
        source: String::new(),
        bytes: img.layers().iter().map(|l| l.size).sum(),
    })
}
