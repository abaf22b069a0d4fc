//! Evidence appraisal inputs: the TEE named in `/auth`, the init-data
//! digest, and the verification of the evidence itself (with `veil-attest`,
//! or the built-in `sample` verifier when explicitly allowed) including the
//! runtime-data binding.

use base64::Engine;
use sha2::{Digest, Sha256, Sha384, Sha512};
use veil_attest::Tee;

/// Largest init-data document accepted.
pub const MAX_INIT_DATA_BYTES: usize = 256 * 1024;
/// Largest `additional_evidence` string accepted.
pub const MAX_ADDITIONAL_EVIDENCE_BYTES: usize = 256 * 1024;

/// What a TEE name from `/auth` resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TeeKind {
    /// Verified by `veil-attest`.
    Attest(Tee),
    /// CoCo's `sample` evidence: no cryptography at all.
    Sample,
}

impl TeeKind {
    /// Wire name.
    pub fn name(self) -> &'static str {
        match self {
            TeeKind::Attest(t) => t.as_str(),
            TeeKind::Sample => "sample",
        }
    }
}

/// Names this KBS verifies.
pub const SUPPORTED: &str = "snp, tdx, sgx, az-snp-vtpm, az-tdx-vtpm, tpm, sim, sample";

/// Resolve a TEE name: `kbs-types` names plus `sim`.
pub fn parse_tee(name: &str) -> Result<TeeKind, String> {
    if name == "sim" {
        return Ok(TeeKind::Attest(Tee::Sim));
    }
    if name.len() > 64 {
        return Err("TEE name longer than 64 characters".into());
    }
    let t: kbs_types::Tee = name
        .parse()
        .map_err(|_| format!("unknown TEE {name:?}; supported: {SUPPORTED}"))?;
    Ok(match t {
        kbs_types::Tee::Snp => TeeKind::Attest(Tee::Snp),
        kbs_types::Tee::Tdx => TeeKind::Attest(Tee::Tdx),
        kbs_types::Tee::Sgx => TeeKind::Attest(Tee::Sgx),
        kbs_types::Tee::AzSnpVtpm => TeeKind::Attest(Tee::AzSnpVtpm),
        kbs_types::Tee::AzTdxVtpm => TeeKind::Attest(Tee::AzTdxVtpm),
        kbs_types::Tee::Tpm => TeeKind::Attest(Tee::Tpm),
        kbs_types::Tee::Sample => TeeKind::Sample,
        other => {
            return Err(format!(
                "TEE {other} is not supported by this KBS; supported: {SUPPORTED}"
            ));
        }
    })
}

/// A verified init-data document.
#[derive(Debug, Clone)]
pub struct InitDataDigest {
    /// `sha256` / `sha384` / `sha512`.
    pub algorithm: String,
    /// Digest of the raw TOML bytes.
    pub digest: Vec<u8>,
    /// Claims derived from it (`aa.toml` / `cdh.toml` as JSON, keys of `data`).
    pub claims: serde_json::Value,
}

/// Digest an init-data document (`format` must be `toml`) with the hash its
/// own `algorithm` field names, over the raw bytes.
pub fn init_data_digest(format: &str, body: &str) -> Result<InitDataDigest, String> {
    if format != "toml" {
        return Err(format!(
            "init-data format is {format:?}; only \"toml\" is supported"
        ));
    }
    if body.len() > MAX_INIT_DATA_BYTES {
        return Err(format!(
            "init-data is {} bytes, limit {MAX_INIT_DATA_BYTES}",
            body.len()
        ));
    }
    let doc: toml::Table =
        toml::from_str(body).map_err(|e| format!("init-data TOML does not parse: {e}"))?;
    let algorithm = doc
        .get("algorithm")
        .and_then(|v| v.as_str())
        .ok_or("init-data has no string \"algorithm\" field")?
        .to_string();
    let digest = match algorithm.as_str() {
        "sha256" => Sha256::digest(body.as_bytes()).to_vec(),
        "sha384" => Sha384::digest(body.as_bytes()).to_vec(),
        "sha512" => Sha512::digest(body.as_bytes()).to_vec(),
        other => {
            return Err(format!(
                "init-data algorithm {other:?}; supported: sha256, sha384, sha512"
            ));
        }
    };
    let mut claims = serde_json::Map::new();
    if let Some(v) = doc.get("version").and_then(|v| v.as_str()) {
        claims.insert("version".into(), v.into());
    }
    if let Some(data) = doc.get("data").and_then(|v| v.as_table()) {
        let keys: Vec<serde_json::Value> = data.keys().map(|k| k.as_str().into()).collect();
        claims.insert("data_keys".into(), keys.into());
        for name in ["aa.toml", "cdh.toml"] {
            if let Some(text) = data.get(name).and_then(|v| v.as_str()) {
                if let Ok(t) = toml::from_str::<toml::Table>(text) {
                    if let Ok(j) = serde_json::to_value(t) {
                        claims.insert(name.trim_end_matches(".toml").into(), j);
                    }
                }
            }
        }
    }
    Ok(InitDataDigest {
        algorithm,
        digest,
        claims: serde_json::Value::Object(claims),
    })
}

/// Claims of verified evidence, ready for the token.
#[derive(Debug, Clone)]
pub struct VerifiedClaims {
    /// The claims JSON (veil-attest [`veil_attest::Claims`] or sample claims).
    pub json: serde_json::Value,
    /// REPORT_DATA as reported.
    pub report_data: Vec<u8>,
    /// The TEE's init-data field as reported.
    pub init_data_field: Vec<u8>,
}

/// Verify CoCo `sample` evidence: `{"svn": "1", "report_data": "<base64 digest>"}`.
pub fn verify_sample(
    evidence: &serde_json::Value,
    binding: &[u8],
) -> Result<VerifiedClaims, String> {
    let rd = evidence
        .get("report_data")
        .and_then(|v| v.as_str())
        .ok_or("sample evidence has no report_data string")?;
    let rd = base64::engine::general_purpose::STANDARD
        .decode(rd)
        .map_err(|e| format!("sample report_data is not standard base64: {e}"))?;
    if rd != binding {
        return Err(format!(
            "report_data mismatch (runtime-data binding): expected {}, got {}",
            hex::encode(binding),
            hex::encode(&rd)
        ));
    }
    let svn = evidence
        .get("svn")
        .cloned()
        .unwrap_or(serde_json::Value::Null);
    Ok(VerifiedClaims {
        json: serde_json::json!({
            "svn": svn, "report_data": hex::encode(&rd), "launch_digest": "abcde",
            "platform_version": {"major": 1, "minor": 4}, "debug": false, "hardware_backed": false,
            "warning": "sample evidence: no cryptography, accepted only with --insecure-allow-sample",
        }),
        report_data: rd,
        init_data_field: Vec::new(),
    })
}

/// Refuse an SNP report requested from a VMPL not in `allowed`: a report
/// from a less privileged VMPL may come from software that the VMPL 0
/// code (an SVSM, a paravisor) does not vouch for. Other TEEs pass.
pub fn check_snp_vmpl(claims: &veil_attest::Claims, allowed: &[u32]) -> Result<(), String> {
    if claims.tee != Tee::Snp {
        return Ok(());
    }
    let vmpl = claims.raw.get("vmpl").and_then(|v| v.as_u64());
    match vmpl {
        Some(v) if allowed.iter().any(|a| u64::from(*a) == v) => Ok(()),
        _ => Err(format!(
            "snp evidence refused by check snp.vmpl: report requested from an unexpected VMPL: expected one of {allowed:?} (snp_allowed_vmpls), got {}",
            vmpl.map_or("none".to_string(), |v| v.to_string())
        )),
    }
}

/// Verify evidence with `veil-attest`, checking the binding digest, if
/// given the init-data digest, and for SNP the requester's VMPL.
pub fn verify_attest(
    tee: Tee,
    evidence: &[u8],
    binding: &[u8],
    init_data_digest: Option<&[u8]>,
    sim_root: Option<veil_attest::sim::SimRootKey>,
    snp_allowed_vmpls: &[u32],
    now: u64,
) -> Result<VerifiedClaims, String> {
    let ctx = veil_attest::Context {
        now_unix: now,
        expectations: veil_attest::Expectations {
            report_data: Some(binding.to_vec()),
            init_data_digest: init_data_digest.map(<[u8]>::to_vec),
            // Debug and TCB are appraised by the attestation policy, where
            // they lower the trust vector instead of failing the handshake.
            allow_debug: true,
            ..Default::default()
        },
        sim_root,
        ..Default::default()
    };
    let claims = veil_attest::verify(tee, evidence, &ctx).map_err(|e| match e.check() {
        Some(check) => format!("{tee} evidence refused by check {check}: {e}"),
        None => format!("{tee} evidence: {e}"),
    })?;
    check_snp_vmpl(&claims, snp_allowed_vmpls)?;
    Ok(VerifiedClaims {
        json: claims.to_json(),
        report_data: claims.report_data.clone(),
        init_data_field: claims.init_data.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIX: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/snp/");

    /// A real SNP fixture report, verified with no VMPL requirement.
    fn snp_fixture(report: &str, cert: &str) -> veil_attest::Claims {
        let read = |n: &str| std::fs::read(format!("{FIX}{n}")).unwrap();
        let ctx = veil_attest::Context {
            // 2025-01-01: inside the fixture certificates' validity.
            now_unix: 1_735_689_600,
            snp: veil_attest::snp::Options {
                certs: vec![read(cert)],
                ..Default::default()
            },
            ..Default::default()
        };
        veil_attest::verify(Tee::Snp, &read(report), &ctx).unwrap()
    }

    #[test]
    fn snp_vmpl_defaults_to_zero_and_is_configurable() {
        let vmpl0 = snp_fixture("milan-vcek-report.bin", "milan-vcek.der");
        let vmpl1 = snp_fixture("milan-vlek-report.bin", "milan-vlek.der");
        assert_eq!(
            (vmpl0.raw["vmpl"].as_u64(), vmpl1.raw["vmpl"].as_u64()),
            (Some(0), Some(1))
        );
        let default =
            crate::ServerConfig::new("d".into(), crate::Kek::from_bytes(&[7; 32]).unwrap())
                .snp_allowed_vmpls;
        assert_eq!(default, [0]);
        assert!(check_snp_vmpl(&vmpl0, &default).is_ok());
        let e = check_snp_vmpl(&vmpl1, &default).unwrap_err();
        assert!(e.contains("check snp.vmpl"), "{e}");
        assert!(
            e.contains("expected one of [0] (snp_allowed_vmpls), got 1"),
            "{e}"
        );
        assert!(check_snp_vmpl(&vmpl1, &[0, 1]).is_ok());
        assert!(check_snp_vmpl(&vmpl0, &[]).is_err());
    }

    #[test]
    fn tee_names() {
        assert_eq!(parse_tee("sim").unwrap(), TeeKind::Attest(Tee::Sim));
        assert_eq!(parse_tee("snp").unwrap(), TeeKind::Attest(Tee::Snp));
        assert_eq!(
            parse_tee("az-snp-vtpm").unwrap(),
            TeeKind::Attest(Tee::AzSnpVtpm)
        );
        assert_eq!(parse_tee("sample").unwrap(), TeeKind::Sample);
        assert!(parse_tee("cca").unwrap_err().contains("not supported"));
        assert!(parse_tee("foo").unwrap_err().contains("unknown TEE"));
    }

    #[test]
    fn init_data_uses_its_algorithm_over_raw_bytes() {
        let body = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"aa.toml\" = '''\n[token_configs]\n'''\n";
        let d = init_data_digest("toml", body).unwrap();
        assert_eq!(d.digest, Sha256::digest(body.as_bytes()).to_vec());
        assert_eq!(d.claims["data_keys"][0], "aa.toml");
        let body384 = body.replace("sha256", "sha384");
        assert_eq!(init_data_digest("toml", &body384).unwrap().digest.len(), 48);
        assert!(init_data_digest("json", body).is_err());
        assert!(
            init_data_digest("toml", "algorithm = \"md5\"")
                .unwrap_err()
                .contains("md5")
        );
        assert!(init_data_digest("toml", "nope = ").is_err());
    }
}
