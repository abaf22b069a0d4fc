//! Trust policies in the `containers-policy.json(5)` format:
//!
//! ```json
//! {"default":[{"type":"reject"}],
//!  "transports":{"docker":{"registry.example/app":[
//!     {"type":"sigstoreSigned","keyPath":"cosign.pub",
//!      "signedIdentity":{"type":"matchRepository"}}]}}}
//! ```
//!
//! Requirements: `insecureAcceptAnything`, `reject`, `signedBy` (GPG,
//! `keyType: "GPGKeys"`), `sigstoreSigned` (key-based). Every requirement
//! that applies to an image must accept it. Unknown fields are refused, as
//! `containers/image` does, so a policy never means less than it says.
//! Relative key paths are resolved against the policy file's directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::Deserialize;

use super::SignError;
use super::cosign::PublicKey;
use super::gpg::Keyring;
use super::reference::DockerReference;

/// Largest policy file accepted.
pub const MAX_POLICY_BYTES: usize = 1 << 20;
/// Most keys one requirement may name.
const MAX_KEYS: usize = 64;

/// A parsed trust policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Requirements for images no transport scope matches.
    pub default: Vec<Requirement>,
    /// transport → scope → requirements.
    pub transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// One requirement.
#[derive(Debug, Clone, PartialEq)]
pub enum Requirement {
    /// Accept without checking anything.
    InsecureAcceptAnything,
    /// Refuse.
    Reject,
    /// A GPG simple-signing signature by one of `keys`.
    SignedBy {
        /// Where the keys came from, for messages.
        key_source: String,
        /// The trusted keys.
        keys: Keyring,
        /// How the signed identity must relate to the image's.
        identity: SignedIdentity,
    },
    /// A cosign signature by one of `keys`.
    SigstoreSigned {
        /// Where the keys came from, for messages.
        key_source: String,
        /// The trusted keys.
        keys: Vec<PublicKey>,
        /// How the signed identity must relate to the image's.
        identity: SignedIdentity,
    },
}

impl Requirement {
    /// The requirement's `type` name.
    pub fn name(&self) -> &'static str {
        match self {
            Requirement::InsecureAcceptAnything => "insecureAcceptAnything",
            Requirement::Reject => "reject",
            Requirement::SignedBy { .. } => "signedBy",
            Requirement::SigstoreSigned { .. } => "sigstoreSigned",
        }
    }
}

/// `signedIdentity`: which signed docker references are acceptable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedIdentity {
    /// The signed reference equals the image's (both tagged or digested).
    MatchExact,
    /// Same repository if the image is referenced by digest, else exact.
    MatchRepoDigestOrExact,
    /// Same repository.
    MatchRepository,
    /// The signed reference equals this one, whatever the image's is.
    ExactReference(DockerReference),
    /// The signed repository equals this one.
    ExactRepository(DockerReference),
    /// The image's reference with `prefix` replaced by `signed_prefix`,
    /// then `MatchRepoDigestOrExact`.
    RemapIdentity {
        /// Prefix of the image's reference.
        prefix: String,
        /// What the signature says instead.
        signed_prefix: String,
    },
}

impl SignedIdentity {
    /// Does a signature for `signed` satisfy this rule for an image known
    /// as `image`? `Err` explains why not.
    pub fn check(
        &self,
        image: Option<&DockerReference>,
        signed: &DockerReference,
    ) -> Result<(), String> {
        let need_image = || {
            image.ok_or_else(|| {
                "the image has no docker reference to compare with (give its identity, e.g. --identity registry.example/app:tag)".to_string()
            })
        };
        match self {
            SignedIdentity::MatchExact => {
                let image = need_image()?;
                if image.is_name_only() || signed.is_name_only() || image != signed {
                    return Err(format!(
                        "matchExact: signed identity {signed} differs from the image's {image}"
                    ));
                }
                Ok(())
            }
            SignedIdentity::MatchRepoDigestOrExact => repo_digest_or_exact(need_image()?, signed),
            SignedIdentity::MatchRepository => {
                let image = need_image()?;
                if image.repository() != signed.repository() {
                    return Err(format!(
                        "matchRepository: signed repository {} differs from the image's {}",
                        signed.repository(),
                        image.repository()
                    ));
                }
                Ok(())
            }
            SignedIdentity::ExactReference(want) => {
                if signed != want {
                    return Err(format!(
                        "exactReference: signed identity {signed} is not {want}"
                    ));
                }
                Ok(())
            }
            SignedIdentity::ExactRepository(want) => {
                if signed.repository() != want.repository() {
                    return Err(format!(
                        "exactRepository: signed repository {} is not {}",
                        signed.repository(),
                        want.repository()
                    ));
                }
                Ok(())
            }
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            } => {
                let image = need_image()?;
                let s = image.to_string();
                let remapped = match s.strip_prefix(prefix.as_str()) {
                    // Only at a component boundary (or the whole name).
                    Some(rest)
                        if rest.is_empty()
                            || rest.starts_with(['/', ':', '@'])
                            || prefix.ends_with('/') =>
                    {
                        DockerReference::parse(&format!("{signed_prefix}{rest}"))
                            .map_err(|e| format!("remapIdentity: {e}"))?
                    }
                    _ => image.clone(),
                };
                repo_digest_or_exact(&remapped, signed).map_err(|e| format!("remapIdentity: {e}"))
            }
        }
    }
}

fn repo_digest_or_exact(image: &DockerReference, signed: &DockerReference) -> Result<(), String> {
    if image.digest().is_some() {
        if image.repository() != signed.repository() {
            return Err(format!(
                "matchRepoDigestOrExact: signed repository {} differs from the image's {}",
                signed.repository(),
                image.repository()
            ));
        }
        return Ok(());
    }
    if image.is_name_only() || image != signed {
        return Err(format!(
            "matchRepoDigestOrExact: signed identity {signed} differs from the image's {image}"
        ));
    }
    Ok(())
}

// ---- the JSON shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Vec<RawRequirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<RawRequirement>>>,
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawRequirement {
    // Struct variants (not unit variants): serde only denies unknown
    // fields of internally tagged variants that have a field list.
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything {},
    #[serde(rename = "reject")]
    Reject {},
    #[serde(rename = "signedBy", rename_all = "camelCase")]
    SignedBy {
        key_type: String,
        #[serde(default)]
        key_path: Option<String>,
        #[serde(default)]
        key_paths: Option<Vec<String>>,
        #[serde(default)]
        key_data: Option<String>,
        #[serde(default)]
        signed_identity: Option<RawIdentity>,
    },
    #[serde(rename = "sigstoreSigned", rename_all = "camelCase")]
    SigstoreSigned {
        #[serde(default)]
        key_path: Option<String>,
        #[serde(default)]
        key_paths: Option<Vec<String>>,
        #[serde(default)]
        key_data: Option<String>,
        #[serde(default)]
        key_datas: Option<Vec<String>>,
        #[serde(default)]
        fulcio: Option<serde_json::Value>,
        #[serde(default)]
        rekor_public_key_path: Option<String>,
        #[serde(default)]
        rekor_public_key_data: Option<String>,
        #[serde(default)]
        signed_identity: Option<RawIdentity>,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawIdentity {
    #[serde(rename = "matchExact")]
    MatchExact {},
    #[serde(rename = "matchRepoDigestOrExact")]
    MatchRepoDigestOrExact {},
    #[serde(rename = "matchRepository")]
    MatchRepository {},
    #[serde(rename = "exactReference", rename_all = "camelCase")]
    ExactReference { docker_reference: String },
    #[serde(rename = "exactRepository", rename_all = "camelCase")]
    ExactRepository { docker_repository: String },
    #[serde(rename = "remapIdentity", rename_all = "camelCase")]
    RemapIdentity {
        prefix: String,
        signed_prefix: String,
    },
}

fn malformed(reason: impl Into<String>) -> SignError {
    SignError::Malformed {
        what: "trust policy".into(),
        reason: reason.into(),
    }
}

impl Policy {
    /// Read and parse a policy file; relative key paths are resolved
    /// against its directory.
    pub fn from_file(path: &Path) -> Result<Self, SignError> {
        let bytes = read_bounded(path, MAX_POLICY_BYTES, "trust policy")?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse(&bytes, base)
    }

    /// Parse policy JSON; key paths are resolved against `base`.
    pub fn parse(bytes: &[u8], base: &Path) -> Result<Self, SignError> {
        if bytes.len() > MAX_POLICY_BYTES {
            return Err(malformed(format!(
                "{} bytes, more than {MAX_POLICY_BYTES}",
                bytes.len()
            )));
        }
        let raw: RawPolicy = serde_json::from_slice(bytes).map_err(|e| malformed(e.to_string()))?;
        let list = |reqs: Vec<RawRequirement>, at: &str| -> Result<Vec<Requirement>, SignError> {
            if reqs.is_empty() {
                return Err(malformed(format!(
                    "{at}: an empty requirement list is not allowed (use [{{\"type\":\"reject\"}}] or insecureAcceptAnything)"
                )));
            }
            reqs.into_iter()
                .map(|r| convert(r, base).map_err(|e| prefix_err(e, at)))
                .collect()
        };
        let default = list(raw.default, "default")?;
        let mut transports = BTreeMap::new();
        for (t, scopes) in raw.transports {
            let mut out = BTreeMap::new();
            for (scope, reqs) in scopes {
                let at = format!("transports.{t}[{scope:?}]");
                out.insert(scope, list(reqs, &at)?);
            }
            transports.insert(t, out);
        }
        Ok(Policy {
            default,
            transports,
        })
    }

    /// The requirements for an image of `transport` whose scopes, most
    /// specific first, are `scopes`; and the scope that matched
    /// (`transports.T[S]`, `transports.T[""]` or `default`).
    pub fn requirements_for(&self, transport: &str, scopes: &[String]) -> (&[Requirement], String) {
        if let Some(t) = self.transports.get(transport) {
            for s in scopes {
                if let Some(r) = t.get(s) {
                    return (r, format!("transports.{transport}[{s:?}]"));
                }
            }
            if let Some(r) = t.get("") {
                return (r, format!("transports.{transport}[\"\"]"));
            }
        }
        (&self.default, "default".into())
    }
}

fn prefix_err(e: SignError, at: &str) -> SignError {
    match e {
        SignError::Malformed { what, reason } => SignError::Malformed {
            what,
            reason: format!("{at}: {reason}"),
        },
        SignError::Key(k) => SignError::Key(format!("{at}: {k}")),
        other => other,
    }
}

/// Exactly one of `keyPath`, `keyPaths`, `keyData`(s); returns each key
/// file's bytes and a description of where they came from.
fn key_material(
    path: Option<String>,
    paths: Option<Vec<String>>,
    data: Option<String>,
    datas: Option<Vec<String>>,
    base: &Path,
) -> Result<(Vec<Vec<u8>>, String), SignError> {
    let given = [
        path.is_some(),
        paths.is_some(),
        data.is_some(),
        datas.is_some(),
    ]
    .iter()
    .filter(|&&b| b)
    .count();
    if given != 1 {
        return Err(malformed(format!(
            "exactly one of keyPath, keyPaths, keyData{} is required, {given} given",
            if datas.is_some() { ", keyDatas" } else { "" }
        )));
    }
    let read = |p: &str| -> Result<Vec<u8>, SignError> {
        let full = base.join(p);
        read_bounded(&full, super::gpg::MAX_KEYRING_BYTES, "key file")
    };
    let decode = |d: &str| {
        B64.decode(d.trim())
            .map_err(|e| malformed(format!("keyData is not base64: {e}")))
    };
    if let Some(p) = path {
        return Ok((vec![read(&p)?], format!("keyPath {p}")));
    }
    if let Some(ps) = paths {
        if ps.is_empty() || ps.len() > MAX_KEYS {
            return Err(malformed(format!(
                "keyPaths must list 1 to {MAX_KEYS} files"
            )));
        }
        let files = ps.iter().map(|p| read(p)).collect::<Result<_, _>>()?;
        return Ok((files, format!("keyPaths {}", ps.join(", "))));
    }
    if let Some(d) = data {
        return Ok((vec![decode(&d)?], "keyData".into()));
    }
    let ds = datas.unwrap_or_default();
    if ds.is_empty() || ds.len() > MAX_KEYS {
        return Err(malformed(format!(
            "keyDatas must list 1 to {MAX_KEYS} keys"
        )));
    }
    let keys = ds.iter().map(|d| decode(d)).collect::<Result<_, _>>()?;
    Ok((keys, "keyDatas".into()))
}

fn convert(r: RawRequirement, base: &Path) -> Result<Requirement, SignError> {
    Ok(match r {
        RawRequirement::InsecureAcceptAnything {} => Requirement::InsecureAcceptAnything,
        RawRequirement::Reject {} => Requirement::Reject,
        RawRequirement::SignedBy {
            key_type,
            key_path,
            key_paths,
            key_data,
            signed_identity,
        } => {
            if key_type != "GPGKeys" {
                return Err(malformed(format!(
                    "signedBy keyType {key_type:?} is not supported (only \"GPGKeys\")"
                )));
            }
            let (files, key_source) = key_material(key_path, key_paths, key_data, None, base)?;
            let mut keys: Option<Keyring> = None;
            for f in files {
                let k = Keyring::parse(&f)?;
                match keys.as_mut() {
                    Some(all) => all.extend(k),
                    None => keys = Some(k),
                }
            }
            Requirement::SignedBy {
                key_source,
                keys: keys.ok_or_else(|| malformed("signedBy: no keys"))?,
                identity: identity(signed_identity)?,
            }
        }
        RawRequirement::SigstoreSigned {
            key_path,
            key_paths,
            key_data,
            key_datas,
            fulcio,
            rekor_public_key_path,
            rekor_public_key_data,
            signed_identity,
        } => {
            if fulcio.is_some() {
                return Err(malformed(
                    "sigstoreSigned with fulcio (keyless) is not supported; use keyPath/keyData",
                ));
            }
            if rekor_public_key_path.is_some() || rekor_public_key_data.is_some() {
                return Err(malformed(
                    "sigstoreSigned with a Rekor key is not supported (veil cannot check Rekor inclusion offline); remove rekorPublicKey*",
                ));
            }
            let (files, key_source) = key_material(key_path, key_paths, key_data, key_datas, base)?;
            let keys = files
                .iter()
                .map(|f| PublicKey::from_pem(f))
                .collect::<Result<Vec<_>, _>>()?;
            Requirement::SigstoreSigned {
                key_source,
                keys,
                identity: identity(signed_identity)?,
            }
        }
    })
}

fn identity(raw: Option<RawIdentity>) -> Result<SignedIdentity, SignError> {
    Ok(match raw {
        None | Some(RawIdentity::MatchRepoDigestOrExact {}) => {
            SignedIdentity::MatchRepoDigestOrExact
        }
        Some(RawIdentity::MatchExact {}) => SignedIdentity::MatchExact,
        Some(RawIdentity::MatchRepository {}) => SignedIdentity::MatchRepository,
        Some(RawIdentity::ExactReference { docker_reference }) => {
            let r = DockerReference::parse(&docker_reference)?;
            if r.is_name_only() {
                return Err(malformed(format!(
                    "exactReference {docker_reference:?} needs a tag or digest"
                )));
            }
            SignedIdentity::ExactReference(r)
        }
        Some(RawIdentity::ExactRepository { docker_repository }) => {
            let r = DockerReference::parse(&docker_repository)?;
            if !r.is_name_only() {
                return Err(malformed(format!(
                    "exactRepository {docker_repository:?} must not have a tag or digest"
                )));
            }
            SignedIdentity::ExactRepository(r)
        }
        Some(RawIdentity::RemapIdentity {
            prefix,
            signed_prefix,
        }) => {
            for p in [&prefix, &signed_prefix] {
                if p.is_empty() || p.len() > 1024 {
                    return Err(malformed("remapIdentity prefixes must be 1 to 1024 bytes"));
                }
            }
            SignedIdentity::RemapIdentity {
                prefix,
                signed_prefix,
            }
        }
    })
}

/// Read a regular file of at most `limit` bytes.
pub(crate) fn read_bounded(path: &Path, limit: usize, what: &str) -> Result<Vec<u8>, SignError> {
    use std::io::Read;
    let meta = std::fs::metadata(path)
        .map_err(|e| SignError::io(format!("{what} {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(SignError::Malformed {
            what: what.into(),
            reason: format!("{} is not a regular file", path.display()),
        });
    }
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| SignError::io(format!("opening {what} {}", path.display()), e))?
        .take(limit as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| SignError::io(format!("reading {what} {}", path.display()), e))?;
    if buf.len() > limit {
        return Err(SignError::Malformed {
            what: what.into(),
            reason: format!("{} is larger than {limit} bytes", path.display()),
        });
    }
    Ok(buf)
}

/// Policy scopes of an `oci:DIR[:TAG]` image, most specific first (the
/// absolute directory with the tag, the directory, each parent).
pub fn oci_scopes(dir: &Path, tag: Option<&str>) -> Vec<String> {
    let abs: PathBuf = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mut out = Vec::new();
    let s = abs.display().to_string();
    if let Some(t) = tag {
        out.push(format!("{s}:{t}"));
    }
    out.push(s);
    let mut p = abs.parent();
    while let Some(d) = p {
        out.push(d.display().to_string());
        p = d.parent();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(s: &str) -> DockerReference {
        DockerReference::parse(s).unwrap()
    }

    #[test]
    fn parses_and_selects_scopes() {
        let p = Policy::parse(
            br#"{"default":[{"type":"reject"}],
                "transports":{"docker":{
                  "registry.example/app":[{"type":"insecureAcceptAnything"}],
                  "registry.example":[{"type":"reject"}]}}}"#,
            Path::new("."),
        )
        .unwrap();
        let (reqs, at) =
            p.requirements_for("docker", &r("registry.example/app:v1").policy_scopes());
        assert_eq!(reqs, [Requirement::InsecureAcceptAnything]);
        assert_eq!(at, "transports.docker[\"registry.example/app\"]");
        let (reqs, _) =
            p.requirements_for("docker", &r("registry.example/other:v1").policy_scopes());
        assert_eq!(reqs, [Requirement::Reject]);
        let (_, at) = p.requirements_for("oci", &["/x".into()]);
        assert_eq!(at, "default");
    }

    #[test]
    fn refuses_what_it_cannot_enforce() {
        for bad in [
            r#"{"default":[]}"#,
            r#"{"default":[{"type":"reject","extra":1}]}"#,
            r#"{"default":[{"type":"sigstoreSigned","keyData":"AA==","signedIdentity":{"type":"matchRepository","x":1}}]}"#,
            r#"{"default":[{"type":"signedBy","keyType":"X509Certificates","keyData":"AA=="}]}"#,
            r#"{"default":[{"type":"sigstoreSigned","fulcio":{}}]}"#,
            r#"{"default":[{"type":"sigstoreSigned","keyData":"AA==","keyPath":"x"}]}"#,
            r#"{"default":[{"type":"unknownType"}]}"#,
            r#"{"default":[{"type":"insecureAcceptAnything"}],"unknown":{}}"#,
        ] {
            assert!(
                Policy::parse(bad.as_bytes(), Path::new(".")).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn identities() {
        let d = crate::Digest::sha256(b"m");
        let tagged = r("registry.example/app:v1");
        let by_digest = r("registry.example/app").with_digest(&d);
        let other_tag = r("registry.example/app:v2");
        let other_repo = r("registry.example/evil:v1");
        use SignedIdentity::*;
        assert!(MatchExact.check(Some(&tagged), &tagged).is_ok());
        assert!(MatchExact.check(Some(&tagged), &other_tag).is_err());
        assert!(
            MatchRepoDigestOrExact
                .check(Some(&by_digest), &other_tag)
                .is_ok()
        );
        assert!(
            MatchRepoDigestOrExact
                .check(Some(&tagged), &other_tag)
                .is_err()
        );
        assert!(
            MatchRepoDigestOrExact
                .check(Some(&by_digest), &other_repo)
                .is_err()
        );
        assert!(MatchRepository.check(Some(&tagged), &other_tag).is_ok());
        assert!(MatchRepository.check(Some(&tagged), &other_repo).is_err());
        assert!(MatchRepository.check(None, &tagged).is_err());
        assert!(ExactReference(tagged.clone()).check(None, &tagged).is_ok());
        assert!(
            ExactReference(tagged.clone())
                .check(None, &other_tag)
                .is_err()
        );
        assert!(
            ExactRepository(r("registry.example/app"))
                .check(None, &other_tag)
                .is_ok()
        );
        let remap = RemapIdentity {
            prefix: "mirror.example/team".into(),
            signed_prefix: "registry.example".into(),
        };
        assert!(
            remap
                .check(Some(&r("mirror.example/team/app:v1")), &tagged)
                .is_ok()
        );
        assert!(
            remap
                .check(Some(&r("mirror.example/teamx/app:v1")), &tagged)
                .is_err()
        );
    }

    proptest! {
        #[test]
        fn arbitrary_policies_never_panic(b in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Policy::parse(&b, Path::new("/nonexistent"));
        }
    }
}
