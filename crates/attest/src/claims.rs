//! The normalized claims every verifier produces.
//!
//! Field names are stable: they are what the key broker's policies, the
//! audit log and `veil attest verify --json` users read. The schema is
//! documented in `docs/attestation.md`.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A kind of TEE evidence. The string forms are the Trustee `kbs-types` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tee {
    /// AMD SEV-SNP attestation report.
    Snp,
    /// Intel TDX DCAP quote.
    Tdx,
    /// Intel SGX DCAP quote.
    Sgx,
    /// Azure confidential VM on SNP: HCL report + vTPM quote.
    AzSnpVtpm,
    /// Azure confidential VM on TDX: HCL report + vTPM quote.
    AzTdxVtpm,
    /// Plain TPM 2.0 quote.
    Tpm,
    /// veil's simulated TEE: real signatures, no hardware protection.
    Sim,
    /// NVIDIA GPU (Hopper) attestation report with its device chain: a
    /// device TEE, appraised beside a CPU TEE (docs/gpu.md).
    Nvidia,
}

impl Tee {
    /// All TEE names, for help texts and error messages.
    pub const ALL: [Tee; 8] = [
        Tee::Snp,
        Tee::Tdx,
        Tee::Sgx,
        Tee::AzSnpVtpm,
        Tee::AzTdxVtpm,
        Tee::Tpm,
        Tee::Sim,
        Tee::Nvidia,
    ];

    /// The wire name (`snp`, `az-snp-vtpm`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Tee::Snp => "snp",
            Tee::Tdx => "tdx",
            Tee::Sgx => "sgx",
            Tee::AzSnpVtpm => "az-snp-vtpm",
            Tee::AzTdxVtpm => "az-tdx-vtpm",
            Tee::Tpm => "tpm",
            Tee::Sim => "sim",
            Tee::Nvidia => "nvidia",
        }
    }

    /// Size in bytes of the field that carries the init-data digest.
    pub fn init_data_field_len(self) -> usize {
        match self {
            Tee::Snp => 32,
            Tee::Tdx => 48,
            Tee::Sgx => 64,
            Tee::AzSnpVtpm | Tee::AzTdxVtpm | Tee::Tpm => 32,
            Tee::Sim => 64,
            // A GPU has no launch-configuration field.
            Tee::Nvidia => 0,
        }
    }
}

impl fmt::Display for Tee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tee {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tee::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Tee::ALL.iter().map(|t| t.as_str()).collect();
                format!("unknown TEE {s:?}; known: {}", names.join(", "))
            })
    }
}

/// Who signed the evidence, in vendor terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// Product or CPU generation (`Milan`, `Genoa`, `Turin`, `sim`, …).
    pub product: String,
    /// Unique chip / platform identifier, hex (SNP CHIP_ID, sim platform id).
    pub chip_id: String,
    /// Kind of signing key (`vcek`, `vlek`, `pck`, `sim`).
    pub signer: String,
}

/// Normalized, verified claims about one TEE instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Which kind of evidence this came from.
    pub tee: Tee,
    /// False only for `sim`: the evidence is signed by a software key.
    pub hardware_backed: bool,
    /// Launch measurement (SNP MEASUREMENT, TDX MRTD, SGX MRENCLAVE, sim).
    #[serde(with = "crate::hexbytes")]
    pub measurement: Vec<u8>,
    /// The 64-byte user data bound into the evidence (binding digest, zero-padded).
    #[serde(with = "crate::hexbytes")]
    pub report_data: Vec<u8>,
    /// The launch-time configuration field carrying the init-data digest
    /// (SNP HOST_DATA, TDX MRCONFIGID, sim init_data).
    #[serde(with = "crate::hexbytes")]
    pub init_data: Vec<u8>,
    /// Security version numbers per TCB component.
    pub tcb: BTreeMap<String, u64>,
    /// True when the TEE was launched with debugging enabled (its memory is
    /// readable by the host).
    pub debug: bool,
    /// Who signed the evidence.
    pub platform: Platform,
    /// Every TEE-specific field, for policies that need more.
    pub raw: serde_json::Value,
}

impl Claims {
    /// Claims as a JSON value (the form policies see).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}
