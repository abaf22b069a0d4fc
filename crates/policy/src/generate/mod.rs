//! Policy generation from Kubernetes YAML.
//!
//! Input: one or more YAML texts, each with any number of documents
//! (`Pod`, `Deployment`, `StatefulSet`, `DaemonSet`, `ReplicaSet`, `Job`,
//! `CronJob`, plus `ConfigMap` / `Secret` for references). Each workload
//! becomes a [`PolicyData`], wrapped in canonical init-data. The output YAML
//! carries the init-data as the CoCo annotation (base64 of gzip).
//!
//! The result depends only on the content: document order, key order and
//! whitespace of the input never change the init-data bytes.

mod images;
mod k8s;
mod resources;
mod volumes;

use std::collections::BTreeMap;

pub use images::{ImageInfo, ImageResolver, LayoutResolver, RegistryResolver};
pub use k8s::ALLOW_PRIVILEGED_SETTING;
use serde_json::Value;
pub use volumes::{ALLOW_HOST_PATH_SETTING, DEFAULT_MODE, pod_volume_contents};

use crate::binding::InitDataDigest;
use crate::initdata::{
    AA_KEY, CDH_KEY, INIT_DATA_ANNOTATION, InitData, POLICY_KEY, basic_string, encode_annotation,
};
use crate::model::PolicyData;
use crate::rego::render_policy;
use crate::settings::Settings;

/// Largest accepted YAML input (all files together), in bytes.
pub const MAX_YAML_BYTES: usize = 8 * 1024 * 1024;
/// Largest number of YAML documents.
pub const MAX_DOCUMENTS: usize = 1000;

/// Pod annotation: extra commands a container may exec (JSON list of argv lists).
pub const ANNOTATION_EXEC: &str = "policy.veil.dev/exec.";
/// Pod annotation: env variables whose value varies (JSON object NAME → regex).
pub const ANNOTATION_ENV_REGEX: &str = "policy.veil.dev/env-regex.";
/// Pod annotation: `"true"` / `"false"`: whether logs may be read.
pub const ANNOTATION_ALLOW_STDIO: &str = "policy.veil.dev/allow-stdio.";

/// Why generation failed. Nothing is written when it does.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GenerateError {
    #[error("input is {actual} bytes, larger than the limit of {limit} bytes")]
    TooLarge { limit: usize, actual: usize },
    #[error("malformed YAML in document {document}: {reason}")]
    Yaml { document: usize, reason: String },
    #[error(
        "document {document}: unknown kind {kind:?} (supported workloads: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job, CronJob)"
    )]
    UnknownKind { document: usize, kind: String },
    #[error("{path}: {reason}")]
    Field { path: String, reason: String },
    #[error("image {reference:?} (container {container:?}) cannot be resolved: {reason}")]
    Image {
        container: String,
        reference: String,
        reason: String,
    },
    #[error(
        "the input defines no workload (Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, Job or CronJob)"
    )]
    NoWorkload,
    #[error("{0}")]
    InitData(String),
}

/// The policy of one workload.
#[derive(Debug, Clone)]
pub struct WorkloadPolicy {
    pub kind: String,
    pub name: String,
    pub namespace: String,
    pub policy: PolicyData,
    pub init_data: InitData,
    /// Canonical init-data TOML.
    pub init_data_toml: String,
    pub digest: InitDataDigest,
}

/// Everything `generate` produced.
#[derive(Debug, Clone)]
pub struct Generated {
    pub workloads: Vec<WorkloadPolicy>,
    /// The input documents (keys sorted) with the init-data annotation added.
    pub output_yaml: String,
    /// Fields present in the input that the policy does not model.
    pub unsupported: Vec<String>,
    /// Things the user should know (unpinned secret values, passed-through kinds).
    pub notes: Vec<String>,
}

/// Parse all documents of all inputs into JSON values (null documents dropped).
pub fn parse_documents(inputs: &[&str]) -> Result<Vec<Value>, GenerateError> {
    let total: usize = inputs.iter().map(|s| s.len()).sum();
    if total > MAX_YAML_BYTES {
        return Err(GenerateError::TooLarge {
            limit: MAX_YAML_BYTES,
            actual: total,
        });
    }
    let mut docs = Vec::new();
    let mut n = 0usize;
    for text in inputs {
        for de in yaml_serde::Deserializer::from_str(text) {
            n += 1;
            if n > MAX_DOCUMENTS {
                return Err(GenerateError::TooLarge {
                    limit: MAX_DOCUMENTS,
                    actual: n,
                });
            }
            let v: Value =
                serde::Deserialize::deserialize(de).map_err(|e| GenerateError::Yaml {
                    document: n,
                    reason: e.to_string(),
                })?;
            if v.is_null() {
                continue;
            }
            if !v.is_object() {
                return Err(GenerateError::Yaml {
                    document: n,
                    reason: "a Kubernetes object must be a mapping".into(),
                });
            }
            docs.push(v);
        }
    }
    Ok(docs)
}

/// The `aa.toml` (attestation agent) configuration for the settings' KBS.
fn aa_toml(settings: &Settings) -> String {
    let mut s = String::from("[token_configs.kbs]\nurl = ");
    basic_string(&settings.kbs.url, &mut s);
    s.push('\n');
    if !settings.kbs.cert.is_empty() {
        s.push_str("cert = ");
        basic_string(&settings.kbs.cert, &mut s);
        s.push('\n');
    }
    s
}

/// The `cdh.toml` (confidential data hub) configuration for the settings' KBS and image trust.
fn cdh_toml(settings: &Settings) -> String {
    let mut s =
        String::from("socket = \"unix:///run/confidential-containers/cdh.sock\"\ncredentials = [");
    // The same shape as `veil run --secret`: one inline table per secret.
    for (i, (name, uri)) in settings.kbs.secrets.iter().enumerate() {
        s.push_str(if i == 0 { "{ path = " } else { ", { path = " });
        basic_string(&format!("{}/{name}", crate::settings::SECRETS_DIR), &mut s);
        s.push_str(", resource_uri = ");
        basic_string(uri, &mut s);
        s.push_str(" }");
    }
    s.push_str("]\n\n[kbc]\nname = \"cc_kbc\"\nurl = ");
    basic_string(&settings.kbs.url, &mut s);
    s.push('\n');
    if !settings.kbs.cert.is_empty() {
        s.push_str("kbs_cert = ");
        basic_string(&settings.kbs.cert, &mut s);
        s.push('\n');
    }
    let image = &settings.image;
    if !image.security_policy_uri.is_empty()
        || !image.registry_credentials_uri.is_empty()
        || !image.extra_root_certificates.is_empty()
    {
        s.push_str("\n[image]\n");
    }
    if !image.security_policy_uri.is_empty() {
        s.push_str("image_security_policy_uri = ");
        basic_string(&image.security_policy_uri, &mut s);
        s.push('\n');
    }
    if !image.registry_credentials_uri.is_empty() {
        s.push_str("authenticated_registry_credentials_uri = ");
        basic_string(&image.registry_credentials_uri, &mut s);
        s.push('\n');
    }
    if !image.extra_root_certificates.is_empty() {
        s.push_str("extra_root_certificates = [");
        for (i, c) in image.extra_root_certificates.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            basic_string(c, &mut s);
        }
        s.push_str("]\n");
    }
    s
}

/// Wrap a policy in init-data with the agent configuration from `settings`.
pub fn build_init_data(policy: &PolicyData, settings: &Settings) -> InitData {
    let mut data = BTreeMap::new();
    data.insert(POLICY_KEY.to_string(), render_policy(policy));
    if !settings.kbs.url.is_empty() {
        data.insert(AA_KEY.to_string(), aa_toml(settings));
        data.insert(CDH_KEY.to_string(), cdh_toml(settings));
    }
    InitData {
        algorithm: settings.algorithm,
        data,
    }
}

/// Generate policies for every workload in `inputs`.
pub fn generate(
    inputs: &[&str],
    resolver: &dyn ImageResolver,
    settings: &Settings,
) -> Result<Generated, GenerateError> {
    settings.validate().map_err(|reason| GenerateError::Field {
        path: "settings".into(),
        reason,
    })?;
    let mut docs = parse_documents(inputs)?;
    let refs = k8s::References::collect(&docs, &settings.namespace)?;
    let mut unsupported = Vec::new();
    let mut notes = Vec::new();
    let mut workloads = Vec::new();
    for (i, doc) in docs.iter_mut().enumerate() {
        let Some(w) = k8s::workload_of(i + 1, doc, settings, &mut notes)? else {
            continue;
        };
        let policy = k8s::pod_policy(&w, &refs, resolver, settings, &mut unsupported, &mut notes)?;
        policy.validate().map_err(|reason| GenerateError::Field {
            path: format!("{} {}", w.kind, w.name),
            reason,
        })?;
        let init_data = build_init_data(&policy, settings);
        let toml = init_data
            .to_toml()
            .map_err(|e| GenerateError::InitData(e.to_string()))?;
        let digest = init_data.algorithm.digest(toml.as_bytes());
        let annotation = encode_annotation(toml.as_bytes())
            .map_err(|e| GenerateError::InitData(e.to_string()))?;
        k8s::set_template_annotation(doc, &w.template_path, INIT_DATA_ANNOTATION, &annotation);
        workloads.push(WorkloadPolicy {
            kind: w.kind.clone(),
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            policy,
            init_data,
            init_data_toml: toml,
            digest,
        });
    }
    if workloads.is_empty() {
        return Err(GenerateError::NoWorkload);
    }
    let mut output_yaml = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            output_yaml.push_str("---\n");
        }
        let text = yaml_serde::to_string(doc).map_err(|e| GenerateError::Yaml {
            document: i + 1,
            reason: e.to_string(),
        })?;
        output_yaml.push_str(&text);
    }
    unsupported.sort();
    unsupported.dedup();
    notes.sort();
    notes.dedup();
    Ok(Generated {
        workloads,
        output_yaml,
        unsupported,
        notes,
    })
}
