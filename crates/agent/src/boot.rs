//! Start-up: the init-data the host handed over must be the init-data the
//! platform measured at launch, or the agent does not serve at all.
//!
//! The agent hashes the exact init-data bytes with the algorithm the TOML
//! names and compares (in constant time) with the platform's binding field:
//! SNP `HOST_DATA`, TDX `MRCONFIGID`, or the sim platform's launch binding,
//! read from a fresh report. Then it compiles the policy in init-data.

use std::sync::Arc;

use veil_policy::{BindingField, InitDataDigest, ParsedInitData, PolicyEngine};
use veil_tee::{Attester, TeeKind};

/// Why the agent refuses to start.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("init-data: {0}")]
    InitData(String),
    #[error("TEE: {0}")]
    Tee(String),
    #[error(
        "init-data binding check failed: {0}. The init-data handed to the agent is not the one the platform recorded at launch; refusing to serve"
    )]
    Binding(String),
    #[error("policy in init-data: {0}")]
    Policy(String),
}

/// What the agent proved at start.
pub struct Booted {
    pub init_data: ParsedInitData,
    pub digest: InitDataDigest,
    pub attester: Arc<dyn Attester>,
    pub engine: PolicyEngine,
    pub measurement: Vec<u8>,
}

impl std::fmt::Debug for Booted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Booted")
            .field("digest", &self.digest)
            .field("tee", &self.attester.tee())
            .finish()
    }
}

/// The binding field of a TEE.
pub fn binding_field(tee: TeeKind) -> BindingField {
    match tee {
        TeeKind::Snp => BindingField::SnpHostData,
        TeeKind::Tdx => BindingField::TdxMrConfigId,
        TeeKind::Sim => BindingField::Sim,
    }
}

/// Check init-data against the platform and load its policy.
pub fn boot(init_data: &[u8], attester: Arc<dyn Attester>) -> Result<Booted, BootError> {
    let parsed =
        ParsedInitData::parse(init_data).map_err(|e| BootError::InitData(e.to_string()))?;
    let digest = parsed.digest();
    let reported = attester.init_data_binding().map_err(|e| {
        BootError::Tee(format!(
            "reading the init-data binding from the platform: {e}"
        ))
    })?;
    digest
        .verify(binding_field(attester.tee()), &reported)
        .map_err(|e| BootError::Binding(e.to_string()))?;
    let measurement = attester
        .measurement()
        .map_err(|e| BootError::Tee(format!("reading the launch measurement: {e}")))?;
    let engine = PolicyEngine::from_init_data(&parsed.init_data)
        .map_err(|e| BootError::Policy(e.to_string()))?;
    Ok(Booted {
        init_data: parsed,
        digest,
        attester,
        engine,
        measurement,
    })
}
