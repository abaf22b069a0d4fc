//! A simulated guest for tests, benchmarks and `veil kbs get-resource`:
//! produces sim evidence (signed by a sim platform key) for the RCAR client,
//! with the init-data digest recorded "at launch" as the sim platform would.

use sha2::{Digest, Sha256, Sha384, Sha512};
use veil_attest::sim::{SimPlatformKey, SimReportBody};
use veil_kbs_client::EvidenceProvider;
use veil_kbs_client::protocol::InitData;

/// A sim TEE instance.
pub struct SimGuest {
    /// The sim platform key (the "secure processor").
    pub platform: SimPlatformKey,
    /// Launch measurement (up to 48 bytes).
    pub measurement: Vec<u8>,
    /// The init-data TOML handed to the guest, if any.
    pub init_data: Option<String>,
    /// The init-data digest the platform recorded at launch (defaults to the
    /// digest of `init_data`; tests set another value to simulate a mismatch).
    pub launch_init_data_digest: Option<Vec<u8>>,
    /// Launched with debugging enabled.
    pub debug: bool,
    /// The `additional_evidence` sent along (recorded GPU evidence,
    /// `{"nvidia": …}`), or `""`.
    pub additional_evidence: String,
}

/// Digest of an init-data TOML with the hash its `algorithm` names.
pub fn init_data_digest(toml_text: &str) -> Result<Vec<u8>, String> {
    let alg = toml_text
        .parse::<toml::Table>()
        .map_err(|e| format!("init-data TOML: {e}"))?
        .get("algorithm")
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or("init-data has no algorithm field")?;
    Ok(match alg.as_str() {
        "sha256" => Sha256::digest(toml_text.as_bytes()).to_vec(),
        "sha384" => Sha384::digest(toml_text.as_bytes()).to_vec(),
        "sha512" => Sha512::digest(toml_text.as_bytes()).to_vec(),
        other => return Err(format!("init-data algorithm {other:?} not supported")),
    })
}

impl SimGuest {
    /// A guest on `platform` with a measurement and no init-data.
    pub fn new(platform: SimPlatformKey, measurement: &[u8]) -> Self {
        SimGuest {
            platform,
            measurement: measurement.to_vec(),
            init_data: None,
            launch_init_data_digest: None,
            debug: false,
            additional_evidence: String::new(),
        }
    }

    /// The sim evidence JSON for given report data.
    pub fn evidence_for(&self, report_data: &[u8]) -> Result<serde_json::Value, String> {
        let launch = match (&self.launch_init_data_digest, &self.init_data) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => init_data_digest(t)?,
            (None, None) => Vec::new(),
        };
        let mut body = SimReportBody::new(report_data, &self.measurement, &launch)
            .map_err(|e| e.to_string())?;
        body.debug = self.debug;
        serde_json::from_str(&self.platform.evidence_json(&body)).map_err(|e| e.to_string())
    }
}

impl EvidenceProvider for SimGuest {
    fn tee(&self) -> &str {
        "sim"
    }

    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, String> {
        self.evidence_for(report_data)
    }

    fn additional_evidence(&self, _device_digest: &[u8; 48]) -> Result<String, String> {
        // Recorded device evidence: its nonce is fixed, not this digest.
        Ok(self.additional_evidence.clone())
    }

    fn init_data(&self) -> Option<InitData> {
        self.init_data.as_ref().map(|body| InitData {
            format: "toml".into(),
            body: body.clone(),
        })
    }
}

/// CoCo's `sample` "TEE", for development against a KBS that accepts it
/// (`veil kbs serve --insecure-allow-sample`, Trustee's sample verifier):
/// its evidence is `{"svn", "report_data"}` with NO cryptography at all —
/// anyone can produce it for any report data.
pub struct SampleGuest {
    /// Init-data TOML to send along (accepted unbound: sample evidence has
    /// no field that could bind it).
    pub init_data: Option<String>,
}

impl EvidenceProvider for SampleGuest {
    fn tee(&self) -> &str {
        "sample"
    }

    /// The runtime-data digest (SHA-384, the first 48 bytes of
    /// REPORT_DATA), base64, as Trustee's sample attester sends it.
    fn evidence(&self, report_data: &[u8; 64]) -> Result<serde_json::Value, String> {
        use base64::Engine;
        Ok(serde_json::json!({
            "svn": "1",
            "report_data": base64::engine::general_purpose::STANDARD.encode(&report_data[..48]),
        }))
    }

    fn init_data(&self) -> Option<InitData> {
        self.init_data.as_ref().map(|body| InitData {
            format: "toml".into(),
            body: body.clone(),
        })
    }
}
