//! Evidence appraisal for one `/attest`: the Trustee `Attestation` message
//! is parsed with limits, its runtime data is bound to the session's
//! challenge, the evidence is verified ([`crate::verify`]), the annotated
//! evidence is appraised by the attestation policy ([`crate::appraisal`])
//! and an EAR token is signed.

use kbs_types::{Attestation, TeePubKey};

use crate::error::KbsError;
use crate::state::AppState;
use crate::verify::{TeeKind, VerifiedClaims};

/// EAR profile of the tokens (Trustee's).
pub const EAT_PROFILE: &str = "tag:github.com,2024:confidential-containers/Trustee";

/// The tail veil's agent puts in REPORT_DATA when it produces evidence over
/// caller-supplied runtime data (the host's `get_evidence`, a workload's
/// `/aa/evidence`): `veil_agent_api::proto::USER_REPORT_DATA_TAG`.
const USER_REPORT_DATA_TAG_HEX: &str = "5645494c3a55534552444154413a7631";

/// A token issued for an attestation, with what the audit log records.
pub struct Appraised {
    /// The signed EAR token.
    pub token: String,
    /// Audit subject (the TEE).
    pub subject: String,
    /// Audit reason.
    pub reason: String,
    /// Audit details (key claims, never the token).
    pub details: serde_json::Value,
}

/// A refused attestation: the TEE it claimed (the audit subject) and why.
pub type Refused = (String, KbsError);

/// Say so when a binding mismatch is evidence made for caller-supplied data.
fn explain_user_report_data(e: String) -> String {
    if e.contains("report_data") && e.contains(USER_REPORT_DATA_TAG_HEX) {
        format!(
            "{e} (this evidence was produced for caller-supplied runtime data, by the agent's get_evidence or a workload's /aa/evidence: it never binds a KBS session)"
        )
    } else {
        e
    }
}

/// Verify the attestation `bytes` for a session that issued `nonce` to a
/// `tee`, appraise it and sign a token valid from `now`.
pub fn appraise(
    st: &AppState,
    tee: &str,
    nonce: &str,
    bytes: &[u8],
    now: u64,
) -> std::result::Result<Appraised, Refused> {
    let fail = |e: KbsError| (tee.to_string(), e);
    let att: Attestation =
        crate::json::parse("attestation", bytes).map_err(|e| fail(KbsError::SerdeError(e)))?;
    if att.runtime_data.nonce != nonce {
        return Err(fail(KbsError::AttestationError(format!(
            "runtime-data nonce does not match this session's challenge (replayed or foreign nonce): expected {nonce:?}, got {:?}",
            att.runtime_data.nonce.chars().take(64).collect::<String>()
        ))));
    }
    let tee_pubkey: TeePubKey = att.runtime_data.tee_pubkey.clone();
    veil_kbs_client::jwe::validate_tee_pubkey(&tee_pubkey).map_err(|e| {
        fail(KbsError::AttestationError(format!(
            "tee-pubkey refused: {e}"
        )))
    })?;
    let additional = &att.tee_evidence.additional_evidence;
    if additional.len() > crate::verify::MAX_ADDITIONAL_EVIDENCE_BYTES {
        return Err(fail(KbsError::AttestationError(format!(
            "additional_evidence is {} bytes, limit {}",
            additional.len(),
            crate::verify::MAX_ADDITIONAL_EVIDENCE_BYTES
        ))));
    }
    let gpu_submods = crate::gpu::appraise_additional(
        additional,
        nonce,
        &tee_pubkey,
        now,
        st.cfg.dev && st.cfg.dev_gpu_nonce_via_cpu_evidence,
        &crate::gpu::Operator {
            rim_dir: st.cfg.gpu_rim_dir.as_deref(),
            ocsp_dir: st.cfg.gpu_ocsp_dir.as_deref(),
        },
    )
    .map_err(|e| fail(KbsError::AttestationError(e)))?;
    let evidence = serde_json::to_vec(&att.tee_evidence.primary_evidence).unwrap_or_default();
    if evidence.len() > veil_attest::MAX_EVIDENCE_BYTES {
        return Err(fail(KbsError::AttestationError(format!(
            "evidence is {} bytes, limit {}",
            evidence.len(),
            veil_attest::MAX_EVIDENCE_BYTES
        ))));
    }
    let binding = veil_kbs_client::binding::binding_digest(nonce, &tee_pubkey, additional);
    let init = match &att.init_data {
        Some(d) => Some(
            crate::verify::init_data_digest(&d.format, &d.body).map_err(|e| {
                fail(KbsError::AttestationError(format!(
                    "init-data refused: {e}"
                )))
            })?,
        ),
        None => None,
    };
    let kind = crate::verify::parse_tee(tee).map_err(|e| fail(KbsError::AttestationError(e)))?;
    let verified: VerifiedClaims = match kind {
        TeeKind::Sample => {
            let mut v = crate::verify::verify_sample(&att.tee_evidence.primary_evidence, &binding)
                .map_err(|e| {
                    fail(KbsError::AttestationError(format!(
                        "sample evidence refused: {e}"
                    )))
                })?;
            // Sample evidence has no init-data field: init-data sent with it
            // is taken as the client says (as Trustee's sample verifier does,
            // for testing init-data features) and marked unbound.
            if init.is_some() {
                if let Some(o) = v.json.as_object_mut() {
                    o.insert("init_data_bound".into(), false.into());
                }
                tracing::warn!(
                    "sample evidence with init-data: accepted UNBOUND (sample evidence has no init-data field)"
                );
            }
            v
        }
        TeeKind::Attest(t) => crate::verify::verify_attest(
            t,
            &evidence,
            &binding,
            init.as_ref().map(|i| i.digest.as_slice()),
            st.cfg.sim_root.clone(),
            &st.cfg.snp_allowed_vmpls,
            now,
        )
        .map_err(|e| fail(KbsError::AttestationError(explain_user_report_data(e))))?,
    };
    let init_hex = match &init {
        Some(i) => hex::encode(&i.digest),
        None => hex::encode(&verified.init_data_field),
    };
    let runtime_data_claims = serde_json::json!({
        "nonce": nonce,
        "tee-pubkey": serde_json::to_value(&tee_pubkey).unwrap_or_default(),
        "additional-evidence": additional,
    });
    let mut annotated = serde_json::Map::new();
    annotated.insert("tee".into(), tee.into());
    annotated.insert(tee.into(), verified.json.clone());
    annotated.insert(
        "report_data".into(),
        hex::encode(&verified.report_data).into(),
    );
    annotated.insert("init_data".into(), init_hex.clone().into());
    annotated.insert("runtime_data_claims".into(), runtime_data_claims);
    annotated.insert(
        "init_data_claims".into(),
        init.as_ref()
            .map(|i| {
                let mut c = i.claims.clone();
                if let Some(o) = c.as_object_mut() {
                    o.insert("algorithm".into(), i.algorithm.clone().into());
                    if kind == TeeKind::Sample {
                        o.insert("bound".into(), false.into());
                    }
                }
                c
            })
            .unwrap_or(serde_json::Value::Null),
    );
    let annotated = serde_json::Value::Object(annotated);
    let policy = st.attestation_policy();
    let reference = serde_json::Value::Object((*st.reference_values()).clone());
    let appraisal =
        crate::appraisal::appraise(&policy.policy, &annotated, reference).map_err(|e| {
            fail(KbsError::PolicyEngineError(format!(
                "attestation policy {:?}: {e}",
                policy.id
            )))
        })?;
    let exp = now + st.cfg.token_ttl.as_secs();
    let mut jti = [0u8; 16];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut jti);
    let claims = serde_json::json!({
        "eat_profile": EAT_PROFILE,
        "iat": now,
        "exp": exp,
        "iss": crate::token::ISSUER,
        "jti": hex::encode(jti),
        "ear.verifier-id": {"developer": "https://veil.invalid", "build": concat!("veil-kbs ", env!("CARGO_PKG_VERSION"))},
        "submods": {"cpu0": {
            "ear.status": appraisal.status,
            "ear.trustworthiness-vector": appraisal.vector,
            "ear.appraisal-policy-id": policy.id,
            "ear.veraison.annotated-evidence": annotated,
        }},
    });
    let mut claims = claims;
    if let Some(submods) = claims["submods"].as_object_mut() {
        submods.extend(gpu_submods);
    }

    let token = st
        .signer
        .sign(&claims)
        .map_err(|e| fail(KbsError::AttestationError(e)))?;
    let measurement = verified
        .json
        .get("measurement")
        .cloned()
        .unwrap_or_default();
    let details = serde_json::json!({
        "tee": tee, "status": appraisal.status, "measurement": measurement,
        "init_data": init_hex, "debug": verified.json.get("debug").cloned().unwrap_or_default(),
        "hardware_backed": verified.json.get("hardware_backed").cloned().unwrap_or_default(),
        "token_jti": hex::encode(jti), "exp": exp,
        // The (public) challenge answered: replays across replicas show
        // as one nonce on two rows.
        "nonce": nonce,
    });
    tracing::info!(tee, status = appraisal.status, "attestation token issued");
    Ok(Appraised {
        token,
        subject: tee.to_string(),
        reason: format!("token issued, ear.status {}", appraisal.status),
        details,
    })
}
