//! Image signatures: cosign / sigstore key-based signatures and containers
//! "simple signing" GPG signatures, checked against a
//! `containers-policy.json`-compatible trust [`policy`], by manifest
//! digest.
//!
//! A signature is trusted only after its cryptography verified with a key
//! the policy names; only then is its payload read, and it must name the
//! image's manifest digest and an identity the policy's `signedIdentity`
//! accepts. Every refusal says which requirement, which signature and
//! which check failed.
//!
//! Where signatures live (as `containers/image` / skopeo store them):
//! - sigstore: an "attachment" manifest tagged `sha256-<hex>.sig` next to
//!   the image (OCI layout or registry), see [`cosign`];
//! - GPG: a "lookaside" directory, `DIR/<repository path>@sha256=<hex>/signature-N`;
//! - either: skopeo's `dir:` transport (`DIR/signature-N`).

pub mod cosign;
pub mod gpg;
pub mod payload;
pub mod policy;
pub mod reference;

use std::io;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use crate::digest::Digest;
use crate::source::SourceError;

use cosign::SigstoreSignature;
use payload::{MAX_PAYLOAD_BYTES, Payload, PayloadKind};
use policy::{Policy, Requirement};
use reference::DockerReference;

/// Most signatures read from one place.
pub const MAX_SIGNATURES: usize = 256;

/// Why signing or verification failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// Getting blobs failed (includes digest checks).
    #[error(transparent)]
    Source(#[from] SourceError),
    /// A local file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: io::Error,
    },
    /// A docker reference is invalid.
    #[error("invalid docker reference {reference:?}: {reason}")]
    Reference {
        /// The reference given.
        reference: String,
        /// Why.
        reason: String,
    },
    /// A policy, payload or signature container is malformed.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// What was parsed.
        what: String,
        /// Why it is refused.
        reason: String,
    },
    /// A key is unusable.
    #[error("key: {0}")]
    Key(String),
    /// An external tool (gpg, gpgv) is missing or failed.
    #[error("{0}")]
    Tool(String),
    /// A check refused the image.
    #[error("{check} check failed: {reason}")]
    Refused {
        /// The check (a policy requirement or a signature check).
        check: &'static str,
        /// Expected and actual values, or why.
        reason: String,
    },
}

impl SignError {
    /// Whether the image was refused (exit 1), as opposed to bad input.
    pub fn is_refusal(&self) -> bool {
        match self {
            SignError::Refused { .. } => true,
            SignError::Source(e) => e.is_refusal(),
            _ => false,
        }
    }

    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        SignError::Io {
            context: context.into(),
            source,
        }
    }
}

/// A signature as found, not yet verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoredSignature {
    /// An inline-signed OpenPGP message (simple signing).
    Gpg(Vec<u8>),
    /// A cosign signature.
    Sigstore(SigstoreSignature),
}

impl StoredSignature {
    /// Parse the blob format `containers/image` writes to `dir:` and
    /// lookaside storage: raw OpenPGP, or `\0` + format name + `\n` + data
    /// (`simple-signing` / `sigstore-json`).
    pub fn from_blob(blob: &[u8]) -> Result<Self, SignError> {
        let bad = |r: String| SignError::Malformed {
            what: "stored signature".into(),
            reason: r,
        };
        if blob.len() > MAX_PAYLOAD_BYTES + (64 << 10) {
            return Err(bad(format!("{} bytes is larger than accepted", blob.len())));
        }
        match blob.first() {
            None => Err(bad("empty".into())),
            Some(0) => {
                let rest = &blob[1..];
                let nl = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .ok_or_else(|| bad("no format line".into()))?;
                let (format, data) = (&rest[..nl], &rest[nl + 1..]);
                match format {
                    b"simple-signing" => Ok(StoredSignature::Gpg(data.to_vec())),
                    b"sigstore-json" => {
                        #[derive(serde::Deserialize)]
                        #[serde(rename_all = "camelCase")]
                        struct Json {
                            #[serde(default)]
                            mime_type: String,
                            payload: String,
                            #[serde(default)]
                            annotations: std::collections::BTreeMap<String, String>,
                        }
                        let j: Json =
                            serde_json::from_slice(data).map_err(|e| bad(e.to_string()))?;
                        if !j.mime_type.is_empty()
                            && j.mime_type != cosign::SIMPLESIGNING_MEDIA_TYPE
                        {
                            return Err(bad(format!("sigstore MIME type {:?}", j.mime_type)));
                        }
                        let payload = B64
                            .decode(j.payload.as_bytes())
                            .map_err(|e| bad(format!("payload: {e}")))?;
                        let mut annotations = j.annotations;
                        let signature = annotations
                            .remove(cosign::SIGNATURE_ANNOTATION)
                            .ok_or_else(|| {
                                bad(format!("no {} annotation", cosign::SIGNATURE_ANNOTATION))
                            })?;
                        Ok(StoredSignature::Sigstore(SigstoreSignature {
                            payload,
                            signature,
                            annotations,
                        }))
                    }
                    other => Err(bad(format!(
                        "unknown signature format {:?}",
                        String::from_utf8_lossy(other)
                            .chars()
                            .take(40)
                            .collect::<String>()
                    ))),
                }
            }
            // Legacy: a bare OpenPGP message.
            Some(_) => Ok(StoredSignature::Gpg(blob.to_vec())),
        }
    }

    /// The blob format of [`StoredSignature::from_blob`].
    pub fn to_blob(&self) -> Vec<u8> {
        match self {
            StoredSignature::Gpg(b) => b.clone(),
            StoredSignature::Sigstore(s) => {
                let mut annotations = s.annotations.clone();
                annotations.insert(cosign::SIGNATURE_ANNOTATION.into(), s.signature.clone());
                let json = serde_json::json!({
                    "mimeType": cosign::SIMPLESIGNING_MEDIA_TYPE,
                    "payload": B64.encode(&s.payload),
                    "annotations": annotations,
                });
                let mut out = b"\0sigstore-json\n".to_vec();
                out.extend(json.to_string().into_bytes());
                out
            }
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            StoredSignature::Gpg(_) => "GPG",
            StoredSignature::Sigstore(_) => "sigstore",
        }
    }
}

/// Read `dir/signature-1`, `signature-2`, … until one is missing.
fn read_numbered(dir: &Path) -> Result<Vec<StoredSignature>, SignError> {
    let mut out = Vec::new();
    for n in 1..=MAX_SIGNATURES {
        let path = dir.join(format!("signature-{n}"));
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => break,
            Err(e) => return Err(SignError::io(format!("stat {}", path.display()), e)),
            Ok(_) => {}
        }
        let blob = policy::read_bounded(&path, MAX_PAYLOAD_BYTES + (64 << 10), "signature")?;
        out.push(StoredSignature::from_blob(&blob)?);
    }
    Ok(out)
}

/// The lookaside directory of `identity`'s repository and `digest`.
pub fn lookaside_dir(base: &Path, identity: &DockerReference, digest: &Digest) -> PathBuf {
    base.join(format!(
        "{}@{}={}",
        identity.path(),
        digest.algorithm().name(),
        digest.hex()
    ))
}

/// Signatures stored in the lookaside directory `base` for `digest` in
/// `identity`'s repository (none when the directory does not exist).
pub fn read_lookaside(
    base: &Path,
    identity: &DockerReference,
    digest: &Digest,
) -> Result<Vec<StoredSignature>, SignError> {
    read_numbered(&lookaside_dir(base, identity, digest))
}

/// Signatures in a skopeo `dir:` image directory.
pub fn read_dir_transport(dir: &Path) -> Result<Vec<StoredSignature>, SignError> {
    if !dir.join("manifest.json").is_file() {
        return Err(SignError::Malformed {
            what: "dir: image".into(),
            reason: format!("{} has no manifest.json", dir.display()),
        });
    }
    read_numbered(dir)
}

/// Store `sig` as the next `signature-N` in the lookaside directory;
/// returns its path. Existing signatures are never overwritten.
pub fn write_lookaside(
    base: &Path,
    identity: &DockerReference,
    digest: &Digest,
    sig: &StoredSignature,
) -> Result<PathBuf, SignError> {
    use std::io::Write;
    let dir = lookaside_dir(base, identity, digest);
    std::fs::create_dir_all(&dir)
        .map_err(|e| SignError::io(format!("creating {}", dir.display()), e))?;
    let blob = sig.to_blob();
    for n in 1..=MAX_SIGNATURES {
        let path = dir.join(format!("signature-{n}"));
        if path.exists() {
            continue;
        }
        // Write aside, then link into place without replacing anything.
        let mut tmp = tempfile::Builder::new()
            .prefix(".tmp-signature-")
            .tempfile_in(&dir)
            .map_err(|e| SignError::io(format!("creating a file in {}", dir.display()), e))?;
        tmp.write_all(&blob)
            .and_then(|_| tmp.as_file().sync_all())
            .map_err(|e| SignError::io(format!("writing {}", path.display()), e))?;
        match tmp.persist_noclobber(&path) {
            Ok(_) => return Ok(path),
            Err(e) if e.error.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                return Err(SignError::io(
                    format!("writing {}", path.display()),
                    e.error,
                ));
            }
        }
    }
    Err(SignError::Malformed {
        what: "lookaside directory".into(),
        reason: format!(
            "{} already holds {MAX_SIGNATURES} signatures",
            dir.display()
        ),
    })
}

/// What is being verified.
#[derive(Debug, Clone)]
pub struct Subject {
    /// Digest of the image manifest (what signatures must name).
    pub manifest_digest: Digest,
    /// The docker reference the image is known as, if any.
    pub identity: Option<DockerReference>,
}

/// Why an image was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acceptance {
    /// The policy scope whose requirements applied.
    pub scope: String,
    /// One line per requirement: which one, and what satisfied it.
    pub reasons: Vec<String>,
}

/// Check `subject` against the requirements `policy` has for `transport`
/// and `scopes`, using `signatures` (unverified, from wherever they were
/// found). Every applicable requirement must accept.
pub fn evaluate(
    policy: &Policy,
    transport: &str,
    scopes: &[String],
    subject: &Subject,
    signatures: &[StoredSignature],
) -> Result<Acceptance, SignError> {
    let (reqs, scope) = policy.requirements_for(transport, scopes);
    let mut reasons = Vec::new();
    for req in reqs {
        let line = check_requirement(req, subject, signatures).map_err(|e| match e {
            SignError::Refused { check, reason } => SignError::Refused {
                check,
                reason: format!("{reason} (policy scope {scope})"),
            },
            other => other,
        })?;
        reasons.push(line);
    }
    Ok(Acceptance { scope, reasons })
}

fn check_requirement(
    req: &Requirement,
    subject: &Subject,
    signatures: &[StoredSignature],
) -> Result<String, SignError> {
    let (want_kind, key_source) = match req {
        Requirement::InsecureAcceptAnything => {
            return Ok("insecureAcceptAnything: accepted without checks".into());
        }
        Requirement::Reject => {
            return Err(SignError::Refused {
                check: "trust policy",
                reason: "the policy rejects this image (\"type\": \"reject\")".into(),
            });
        }
        Requirement::SignedBy { key_source, .. } => ("GPG", key_source),
        Requirement::SigstoreSigned { key_source, .. } => ("sigstore", key_source),
    };
    let candidates: Vec<&StoredSignature> = signatures
        .iter()
        .filter(|s| s.kind() == want_kind)
        .collect();
    let check = if want_kind == "GPG" {
        "signedBy"
    } else {
        "sigstoreSigned"
    };
    if candidates.is_empty() {
        return Err(SignError::Refused {
            check,
            reason: format!(
                "no {want_kind} signature found for {} ({} signatures of other kinds)",
                subject.manifest_digest,
                signatures.len()
            ),
        });
    }
    let mut why = Vec::new();
    for (i, sig) in candidates.iter().enumerate() {
        match check_one(req, subject, sig) {
            Ok(line) => return Ok(line),
            Err(e) if e.is_refusal() => why.push(format!("signature {}: {e}", i + 1)),
            Err(SignError::Malformed { what, reason }) => {
                why.push(format!("signature {}: malformed {what}: {reason}", i + 1));
            }
            Err(e) => return Err(e),
        }
    }
    Err(SignError::Refused {
        check,
        reason: format!(
            "none of {} {want_kind} signatures is valid for {} with {key_source}: {}",
            candidates.len(),
            subject.manifest_digest,
            why.join("; ")
        ),
    })
}

fn check_one(
    req: &Requirement,
    subject: &Subject,
    sig: &StoredSignature,
) -> Result<String, SignError> {
    let (payload_bytes, signer, identity_rule, kind) = match (req, sig) {
        (Requirement::SignedBy { keys, identity, .. }, StoredSignature::Gpg(blob)) => {
            let v = gpg::verify(blob, keys)?;
            (
                v.payload,
                format!("GPG key {}", v.fingerprint),
                identity,
                PayloadKind::Simple,
            )
        }
        (Requirement::SigstoreSigned { keys, identity, .. }, StoredSignature::Sigstore(s)) => {
            let mut last = None;
            let mut ok = None;
            for (i, k) in keys.iter().enumerate() {
                match k.verify(&s.payload, &s.signature) {
                    Ok(()) => {
                        ok = Some(i);
                        break;
                    }
                    Err(e) => last = Some(e),
                }
            }
            match ok {
                Some(i) => (
                    s.payload.clone(),
                    format!("sigstore key {}", i + 1),
                    identity,
                    PayloadKind::Cosign,
                ),
                None => {
                    return Err(last.unwrap_or(SignError::Refused {
                        check: "sigstore signature",
                        reason: "no key".into(),
                    }));
                }
            }
        }
        _ => {
            return Err(SignError::Refused {
                check: "signature kind",
                reason: "not the kind this requirement needs".into(),
            });
        }
    };
    // Cryptographically valid: now what does it claim?
    let payload = Payload::parse(&payload_bytes, kind)?;
    if payload.manifest_digest != subject.manifest_digest {
        return Err(SignError::Refused {
            check: "signed manifest digest",
            reason: format!(
                "the signature is for {}, the image is {}",
                payload.manifest_digest, subject.manifest_digest
            ),
        });
    }
    let signed = payload.identity().map_err(|e| SignError::Refused {
        check: "signed identity",
        reason: e.to_string(),
    })?;
    identity_rule
        .check(subject.identity.as_ref(), &signed)
        .map_err(|reason| SignError::Refused {
            check: "signed identity",
            reason,
        })?;
    Ok(format!(
        "{}: {signer} signed {signed} for {}",
        req.name(),
        payload.manifest_digest
    ))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// A cosign signature of `digest` as `identity` with `key`.
pub fn sign_sigstore(
    key: &cosign::PrivateKey,
    identity: &DockerReference,
    digest: &Digest,
) -> SigstoreSignature {
    let payload = Payload::build(PayloadKind::Cosign, identity, digest, now());
    let signature = key.sign(&payload);
    SigstoreSignature {
        payload,
        signature,
        annotations: Default::default(),
    }
}

/// A GPG simple-signing signature of `digest` as `identity` by the secret
/// key `key_id` (run through `gpg` with `opts`).
pub fn sign_gpg(
    key_id: &str,
    identity: &DockerReference,
    digest: &Digest,
    opts: &gpg::GpgOptions,
) -> Result<StoredSignature, SignError> {
    let payload = Payload::build(PayloadKind::Simple, identity, digest, now());
    Ok(StoredSignature::Gpg(gpg::sign(&payload, key_id, opts)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn blob_format_round_trips() {
        let s = StoredSignature::Sigstore(SigstoreSignature {
            payload: b"{}".to_vec(),
            signature: "c2ln".into(),
            annotations: Default::default(),
        });
        assert_eq!(StoredSignature::from_blob(&s.to_blob()).unwrap(), s);
        let g = StoredSignature::Gpg(vec![0xA3, 1, 2]);
        assert_eq!(StoredSignature::from_blob(&g.to_blob()).unwrap(), g);
        assert_eq!(
            StoredSignature::from_blob(b"\0simple-signing\n\xA3\x01").unwrap(),
            StoredSignature::Gpg(vec![0xA3, 1])
        );
        assert!(StoredSignature::from_blob(b"\0other\nx").is_err());
        assert!(StoredSignature::from_blob(b"").is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_blobs_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = StoredSignature::from_blob(&b);
        }
    }
}
