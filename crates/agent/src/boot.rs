//! Start-up: the init-data the host handed over must be the init-data the
//! platform measured at launch, or the agent does not serve at all.
//!
//! The agent hashes the exact init-data bytes with the algorithm the TOML
//! names and compares (in constant time) with the platform's binding field:
//! SNP `HOST_DATA`, TDX `MRCONFIGID`, or the sim platform's launch binding,
//! read from a fresh report. Then it compiles the policy in init-data.
//!
//! Without a TEE (`--tee none`, VM sandbox only) there is no binding to
//! check and no evidence to give: the agent still parses init-data and
//! enforces its policy, but nothing proves that to anyone, and it refuses
//! init-data that names a KBS (no KBS could release anything to it).

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

pub use veil_agent_api::proto::{NO_TEE, NO_TEE_WARNING};

/// What the agent proved at start.
pub struct Booted {
    pub init_data: ParsedInitData,
    pub digest: InitDataDigest,
    /// `None`: no TEE (`--tee none`).
    pub attester: Option<Arc<dyn Attester>>,
    pub engine: PolicyEngine,
    /// Empty without a TEE.
    pub measurement: Vec<u8>,
}

impl Booted {
    /// `snp`, `tdx`, `sim` or [`NO_TEE`].
    pub fn tee_name(&self) -> &'static str {
        self.attester.as_ref().map_or(NO_TEE, |a| a.tee().as_str())
    }
}

impl std::fmt::Debug for Booted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Booted")
            .field("digest", &self.digest)
            .field("tee", &self.tee_name())
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

/// Check init-data against the platform and load its policy. `attester`
/// `None` means no TEE: nothing to check init-data against, and init-data
/// that names a KBS is refused.
pub fn boot(init_data: &[u8], attester: Option<Arc<dyn Attester>>) -> Result<Booted, BootError> {
    let parsed =
        ParsedInitData::parse(init_data).map_err(|e| BootError::InitData(e.to_string()))?;
    let digest = parsed.digest();
    let Some(attester) = attester else {
        if let Some((target, _)) = crate::kbs::target_of(&parsed).map_err(BootError::InitData)? {
            return Err(BootError::InitData(format!(
                "it names a KBS ({}), but this guest has no TEE (--tee none): without evidence no KBS releases anything to it; run with a TEE, or with init-data that names no KBS",
                target.url
            )));
        }
        let engine = PolicyEngine::from_init_data(&parsed.init_data)
            .map_err(|e| BootError::Policy(e.to_string()))?;
        return Ok(Booted {
            init_data: parsed,
            digest,
            attester: None,
            engine,
            measurement: Vec::new(),
        });
    };
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
        attester: Some(attester),
        engine,
        measurement,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_policy::initdata::{AA_KEY, InitData};

    fn init_data(aa: Option<&str>) -> Vec<u8> {
        let mut d = InitData::new(veil_policy::HashAlgorithm::Sha384);
        if let Some(a) = aa {
            d.data.insert(AA_KEY.into(), a.into());
        }
        d.to_toml().unwrap().into_bytes()
    }

    #[test]
    fn without_a_tee_init_data_naming_a_kbs_is_refused() {
        let e = boot(
            &init_data(Some(
                "[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n",
            )),
            None,
        )
        .unwrap_err();
        let e = e.to_string();
        assert!(e.contains("names a KBS (http://127.0.0.1:8080)"), "{e}");
        assert!(e.contains("no TEE (--tee none)"), "{e}");
    }

    #[test]
    fn without_a_tee_the_policy_is_still_required() {
        // No binding to check, but init-data is still parsed and its policy
        // loaded: a guest without a TEE is not a guest without a policy.
        let e = boot(&init_data(None), None).unwrap_err();
        assert!(matches!(e, BootError::Policy(_)), "{e}");
        let e = boot(b"not toml", None).unwrap_err();
        assert!(matches!(e, BootError::InitData(_)), "{e}");
    }
}
