//! The annotations containerd hands the shim in the OCI spec: the CRI's pod
//! grouping keys and the CoCo/Kata init-data and policy annotations, taken
//! unchanged so that pods annotated by `veil policy generate`, CoCo's
//! tooling or Kata's genpolicy deploy as they are.

use std::collections::BTreeMap;
use std::io::Read;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use veil_policy::binding::HashAlgorithm;
use veil_policy::initdata::{InitData, MAX_INIT_DATA_BYTES, POLICY_KEY, ParsedInitData};

/// CoCo/Kata init-data: base64 of gzip of the TOML, or base64 of the TOML.
pub const INIT_DATA: &str = veil_policy::initdata::INIT_DATA_ANNOTATION;
/// Kata's agent policy (genpolicy, `az confcom`): base64 of the Rego text.
pub const AGENT_POLICY: &str = "io.katacontainers.config.agent.policy";
/// CRI: `sandbox` for the pod's sandbox (pause) container, else `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI: the pod sandbox's id, on every container of the pod.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI: the container's name in the pod spec.
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";
/// CRI: the pod's name and namespace.
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// CRI: the image the kubelet asked for (containerd's name for it).
pub const IMAGE_NAME: &str = "io.kubernetes.cri.image-name";
/// CRI-O's spelling of the image name.
const CRIO_IMAGE_NAME: &str = "io.kubernetes.cri-o.ImageName";
/// CRI (containerd ≥ 1.7): the RuntimeClass handler.
pub const RUNTIME_HANDLER: &str = "io.kubernetes.cri.runtime-handler";
/// CRI-O's spelling of the container type and sandbox id.
const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

/// Largest annotation value decoded (base64 text).
pub const MAX_ANNOTATION_BYTES: usize = MAX_INIT_DATA_BYTES * 4 / 3 + 4;

/// What a container is in its pod, from the CRI annotations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The pod's sandbox (pause) container: it creates the veil sandbox.
    PodSandbox,
    /// An app container of the pod with this sandbox id: it joins that sandbox.
    PodContainer { sandbox_id: String },
    /// No CRI annotations (`ctr run`): its own sandbox.
    Standalone,
}

/// The image the CRI asked for (containerd's or CRI-O's annotation), if any.
pub fn image_name(annotations: &BTreeMap<String, String>) -> Option<&str> {
    annotations
        .get(IMAGE_NAME)
        .or_else(|| annotations.get(CRIO_IMAGE_NAME))
        .map(String::as_str)
        .filter(|s| !s.is_empty())
}

/// The container's role.
pub fn role(annotations: &BTreeMap<String, String>) -> Role {
    let get = |a: &str, b: &str| annotations.get(a).or_else(|| annotations.get(b));
    match get(CONTAINER_TYPE, CRIO_CONTAINER_TYPE).map(String::as_str) {
        Some("sandbox") => Role::PodSandbox,
        Some("container") => match get(SANDBOX_ID, CRIO_SANDBOX_ID) {
            Some(id) if !id.is_empty() => Role::PodContainer {
                sandbox_id: id.clone(),
            },
            _ => Role::Standalone,
        },
        _ => Role::Standalone,
    }
}

/// Annotation errors: each names the annotation and the expected format.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AnnotationError {
    #[error("annotation {annotation}: {reason} (expected {expected})")]
    Invalid {
        annotation: &'static str,
        reason: String,
        expected: &'static str,
    },
    #[error(
        "annotations {INIT_DATA} and {AGENT_POLICY} are both set and the init-data's policy differs from the policy annotation: set one of them"
    )]
    Conflict,
}

/// The pod's init-data and which annotation it came from.
#[derive(Debug, Clone)]
pub struct PodInitData {
    pub parsed: ParsedInitData,
    pub annotation: &'static str,
}

const INIT_DATA_EXPECTED: &str =
    "base64 of gzipped init-data TOML, base64 of the TOML, or the TOML itself, as CoCo writes it";
const POLICY_EXPECTED: &str = "base64 of a Rego policy (package agent_policy)";

fn invalid(
    annotation: &'static str,
    expected: &'static str,
    reason: impl Into<String>,
) -> AnnotationError {
    AnnotationError::Invalid {
        annotation,
        reason: reason.into(),
        expected,
    }
}

/// Decode a `cc_init_data` annotation value to init-data bytes (bounded).
pub fn decode_init_data(value: &str) -> Result<ParsedInitData, AnnotationError> {
    let inv = |r: String| invalid(INIT_DATA, INIT_DATA_EXPECTED, r);
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(inv(format!(
            "{} bytes, limit {MAX_ANNOTATION_BYTES}",
            value.len()
        )));
    }
    let trimmed = value.trim();
    let bytes = match B64.decode(trimmed.as_bytes()) {
        Ok(raw) if raw.starts_with(&[0x1f, 0x8b]) => {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(raw.as_slice())
                .take(MAX_INIT_DATA_BYTES as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| inv(format!("invalid gzip: {e}")))?;
            if out.len() > MAX_INIT_DATA_BYTES {
                return Err(inv(format!(
                    "decompresses to more than {MAX_INIT_DATA_BYTES} bytes"
                )));
            }
            out
        }
        Ok(raw) => raw,
        // Not base64: the TOML itself (what a hand-written pod may carry).
        Err(_) if trimmed.starts_with("version") || trimmed.starts_with("algorithm") => {
            value.as_bytes().to_vec()
        }
        Err(e) => return Err(inv(format!("invalid base64: {e}"))),
    };
    ParsedInitData::parse(&bytes).map_err(|e| inv(e.to_string()))
}

/// Decode an `agent.policy` annotation (base64 Rego) and wrap it in
/// canonical init-data (sha256) with that policy as `policy.rego`.
pub fn decode_policy(value: &str) -> Result<ParsedInitData, AnnotationError> {
    let inv = |r: String| invalid(AGENT_POLICY, POLICY_EXPECTED, r);
    if value.len() > MAX_ANNOTATION_BYTES {
        return Err(inv(format!(
            "{} bytes, limit {MAX_ANNOTATION_BYTES}",
            value.len()
        )));
    }
    let raw = B64
        .decode(value.trim().as_bytes())
        .map_err(|e| inv(format!("invalid base64: {e}")))?;
    let rego = String::from_utf8(raw).map_err(|_| inv("the policy is not UTF-8".into()))?;
    if !rego.contains("package agent_policy") {
        return Err(inv("no `package agent_policy` in the decoded policy".into()));
    }
    let mut d = InitData::new(HashAlgorithm::Sha256);
    d.data.insert(POLICY_KEY.into(), rego);
    let toml = d.to_toml().map_err(|e| inv(e.to_string()))?;
    ParsedInitData::parse(toml.as_bytes()).map_err(|e| inv(e.to_string()))
}

/// The init-data the pod's annotations carry, if any.
pub fn pod_init_data(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<PodInitData>, AnnotationError> {
    let init = annotations
        .get(INIT_DATA)
        .map(|v| decode_init_data(v))
        .transpose()?;
    let policy = annotations
        .get(AGENT_POLICY)
        .map(|v| decode_policy(v))
        .transpose()?;
    Ok(match (init, policy) {
        (Some(i), Some(p)) => {
            if i.init_data.data.get(POLICY_KEY) != p.init_data.data.get(POLICY_KEY) {
                return Err(AnnotationError::Conflict);
            }
            Some(PodInitData {
                parsed: i,
                annotation: INIT_DATA,
            })
        }
        (Some(i), None) => Some(PodInitData {
            parsed: i,
            annotation: INIT_DATA,
        }),
        (None, Some(p)) => Some(PodInitData {
            parsed: p,
            annotation: AGENT_POLICY,
        }),
        (None, None) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> String {
        let mut d = InitData::new(HashAlgorithm::Sha384);
        d.data
            .insert(POLICY_KEY.into(), "package agent_policy\nx := 1\n".into());
        d.to_toml().unwrap()
    }

    #[test]
    fn all_three_coco_forms_give_the_same_digest() {
        let toml = sample();
        let gz = veil_policy::initdata::encode_annotation(toml.as_bytes()).unwrap();
        let plain64 = B64.encode(toml.as_bytes());
        let want = ParsedInitData::parse(toml.as_bytes()).unwrap().digest();
        for v in [gz.as_str(), plain64.as_str(), toml.as_str()] {
            assert_eq!(decode_init_data(v).unwrap().digest(), want);
        }
    }

    #[test]
    fn policy_annotation_is_wrapped_deterministically() {
        let v = B64.encode("package agent_policy\ndefault allow := true\n");
        let a = decode_policy(&v).unwrap();
        assert_eq!(a.digest(), decode_policy(&v).unwrap().digest());
        assert!(a.init_data.policy().unwrap().contains("default allow"));
        let e = decode_policy(&B64.encode("package other"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(AGENT_POLICY) && e.contains("package agent_policy"),
            "{e}"
        );
    }

    #[test]
    fn refusals_name_the_annotation() {
        let e = decode_init_data("!!not base64!!").unwrap_err().to_string();
        assert!(e.contains(INIT_DATA) && e.contains("base64"), "{e}");
        let e = decode_init_data(&B64.encode("version = \"9\"\nalgorithm = \"sha384\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(INIT_DATA) && e.contains("version"), "{e}");
        let both = BTreeMap::from([
            (INIT_DATA.to_string(), B64.encode(sample())),
            (
                AGENT_POLICY.to_string(),
                B64.encode("package agent_policy\ny := 2\n"),
            ),
        ]);
        assert_eq!(pod_init_data(&both).unwrap_err(), AnnotationError::Conflict);
    }

    #[test]
    fn gzip_bomb_is_bounded() {
        use std::io::Write;
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        gz.write_all(&vec![b'#'; MAX_INIT_DATA_BYTES + 10]).unwrap();
        let e = decode_init_data(&B64.encode(gz.finish().unwrap()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("more than"), "{e}");
    }

    #[test]
    fn roles() {
        let m = |kv: &[(&str, &str)]| {
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(role(&m(&[(CONTAINER_TYPE, "sandbox")])), Role::PodSandbox);
        assert_eq!(
            role(&m(&[(CONTAINER_TYPE, "container"), (SANDBOX_ID, "abc")])),
            Role::PodContainer {
                sandbox_id: "abc".into()
            }
        );
        assert_eq!(role(&m(&[])), Role::Standalone);
    }

    proptest! {
        #[test]
        fn decoders_never_panic(s in ".{0,2048}", bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode_init_data(&s);
            let _ = decode_policy(&s);
            let _ = decode_init_data(&B64.encode(&bytes));
            let mut gz = vec![0x1f, 0x8b];
            gz.extend_from_slice(&bytes);
            let _ = decode_init_data(&B64.encode(&gz));
        }
    }
}
