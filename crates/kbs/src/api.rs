//! HTTP handlers: thin parsing and response mapping around the RCAR,
//! resource and admin operations. One route `/kbs/v0/{*path}` dispatched by
//! method and first segment (the "plugin"), as Trustee does.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use kbs_types::{Attestation, Challenge, TeePubKey};
use veil_kbs_client::ResourcePath;
use veil_kbs_client::protocol::{AuthRequest, PROTOCOL_VERSION, SESSION_COOKIE};

use crate::error::{KbsError, Result};
use crate::metrics::Metrics;
use crate::session::{Lookup, Session, new_nonce, new_session_id};
use crate::state::{AppState, now};
use crate::verify::{TeeKind, VerifiedClaims};

/// Time allowed to receive a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// EAR profile of the tokens (Trustee's).
pub const EAT_PROFILE: &str = "tag:github.com,2024:confidential-containers/Trustee";

/// The router.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { StatusCode::OK }))
        .route("/metrics", get(metrics))
        .route("/kbs/v0/{*path}", any(dispatch))
        .fallback(|uri: axum::http::Uri| async move {
            KbsError::InvalidRequestPath(format!(
                "no endpoint at {}; KBS endpoints live under /kbs/v0/",
                uri.path().chars().take(200).collect::<String>()
            ))
        })
        .with_state(state)
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let mut r = st.metrics.render(st.sessions.len()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(KbsError::PayloadTooLarge(format!(
                "Content-Length {len} exceeds the limit of {limit} bytes"
            )));
        }
    }
    match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => Err(KbsError::SerdeError(format!(
            "request body not received within {}s",
            BODY_TIMEOUT.as_secs()
        ))),
        Ok(Err(_)) => Err(KbsError::PayloadTooLarge(format!(
            "body exceeds the limit of {limit} bytes"
        ))),
        Ok(Ok(b)) => Ok(b),
    }
}

fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| {
            let (k, v) = c.trim().split_once('=')?;
            (k.trim() == SESSION_COOKIE).then(|| v.trim().to_string())
        })
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

fn cookie_header(id: &str, expires: u64) -> HeaderValue {
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let when =
        time::OffsetDateTime::from_unix_timestamp(i64::try_from(expires).unwrap_or(i64::MAX))
            .ok()
            .and_then(|t| t.format(fmt).ok())
            .unwrap_or_default();
    HeaderValue::from_str(&format!("{SESSION_COOKIE}={id}; Expires={when}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn json_response(value: &serde_json::Value) -> Response {
    let mut r = (StatusCode::OK, value.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

async fn dispatch(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path()
        .strip_prefix("/kbs/v0/")
        .unwrap_or("")
        .to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let (plugin, rest) = path.split_once('/').unwrap_or((&path, ""));
    let (plugin, rest) = (plugin.to_string(), rest.to_string());
    let m = &parts.method;
    let h = &parts.headers;
    let result = match plugin.as_str() {
        "auth" if rest.is_empty() && m == Method::POST => auth(&st, h, body).await,
        "attest" if rest.is_empty() && m == Method::POST => attest(&st, h, body).await,
        "resource" if m == Method::GET => get_resource(&st, h, &rest, &query),
        "resource" if m == Method::POST || m == Method::PUT => {
            match admin(&st, h, "put resource") {
                Ok(_) => put_resource(&st, h, &rest, body).await,
                Err(e) => Err(e),
            }
        }
        "resource" if m == Method::DELETE => {
            admin(&st, h, "delete resource").and_then(|_| delete_resource(&st, &rest))
        }
        "admin" if m == Method::GET => {
            admin(&st, h, "resource info").and_then(|_| admin_resource_info(&st, &rest))
        }
        "resource-policy" if rest.is_empty() && m == Method::POST => {
            match admin(&st, h, "set resource policy") {
                Ok(_) => set_resource_policy(&st, h, body).await,
                Err(e) => Err(e),
            }
        }
        "resource-policy" if rest.is_empty() && m == Method::GET => {
            admin(&st, h, "get resource policy").map(|_| list_resource_policies(&st))
        }
        "attestation-policy" if rest.is_empty() && m == Method::POST => {
            match admin(&st, h, "set attestation policy") {
                Ok(_) => set_attestation_policy(&st, h, body).await,
                Err(e) => Err(e),
            }
        }
        "attestation-policy" if rest.is_empty() && m == Method::GET => {
            admin(&st, h, "get attestation policy").map(|_| {
                let p = st.attestation_policy();
                json_response(&serde_json::json!({"policy_id": p.id, "policy": p.policy.text()}))
            })
        }
        "reference-value" if rest.is_empty() && m == Method::POST => {
            match admin(&st, h, "set reference value") {
                Ok(_) => set_reference_value(&st, h, body).await,
                Err(e) => Err(e),
            }
        }
        "reference-value" if m == Method::GET => {
            admin(&st, h, "get reference value").and_then(|_| get_reference_value(&st, &rest))
        }
        "audit" if rest.is_empty() && m == Method::GET => {
            admin(&st, h, "audit").and_then(|_| audit(&st, &query))
        }
        "jwks" if rest.is_empty() && m == Method::GET => Ok(json_response(&st.signer.jwks())),
        "auth" | "attest" | "resource" | "admin" | "resource-policy" | "attestation-policy"
        | "reference-value" | "audit" | "jwks" => Err(KbsError::InvalidRequestPath(format!(
            "{m} /kbs/v0/{} is not an endpoint",
            path.chars().take(200).collect::<String>()
        ))),
        other => Err(KbsError::PluginNotFound(other.chars().take(64).collect())),
    };
    result.unwrap_or_else(|e| {
        // The detail may quote client text: escaped so that it cannot forge
        // log lines or drive a terminal.
        tracing::info!(
            status = e.status().as_u16(),
            kind = e.variant(),
            detail = %crate::text::escape_controls(&e.to_string()),
            "request refused"
        );
        e.into_response()
    })
}

// ---------------------------------------------------------------- RCAR ----

async fn auth(st: &Arc<AppState>, headers: &HeaderMap, body: Body) -> Result<Response> {
    let r = auth_inner(st, headers, body).await;
    Metrics::inc(if r.is_ok() {
        &st.metrics.auth_ok
    } else {
        &st.metrics.auth_refused
    });
    r
}

async fn auth_inner(st: &Arc<AppState>, headers: &HeaderMap, body: Body) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let req: AuthRequest =
        crate::json::parse("auth request", &bytes).map_err(KbsError::SerdeError)?;
    if req.version != PROTOCOL_VERSION {
        return Err(KbsError::AttestationError(format!(
            "KBS Client Protocol Version Mismatch: expect ={PROTOCOL_VERSION} while the request is {:?}",
            req.version.chars().take(32).collect::<String>()
        )));
    }
    let kind = crate::verify::parse_tee(&req.tee).map_err(KbsError::AttestationError)?;
    match kind {
        TeeKind::Attest(veil_attest::Tee::Sim) if st.cfg.sim_root.is_none() => {
            return Err(KbsError::AttestationError(
                "sim evidence is refused: this KBS was started without --sim-root (sim evidence is not hardware-backed)".into(),
            ));
        }
        TeeKind::Sample if !st.cfg.insecure_allow_sample => {
            return Err(KbsError::AttestationError(
                "sample evidence (no cryptography) is refused: this KBS was started without --insecure-allow-sample".into(),
            ));
        }
        _ => {}
    }
    let id = new_session_id();
    let nonce = new_nonce();
    let expires = now() + st.cfg.session_timeout.as_secs();
    st.sessions
        .insert(
            id.clone(),
            Session::Authed {
                tee: kind.name().to_string(),
                nonce: nonce.clone(),
                expires,
            },
            now(),
        )
        .map_err(KbsError::AttestationError)?;
    let challenge = Challenge {
        nonce,
        extra_params: serde_json::Value::String(String::new()),
    };
    let mut r = json_response(&serde_json::to_value(&challenge).unwrap_or_default());
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(&id, expires));
    Ok(r)
}

fn lookup_error(l: Lookup) -> String {
    match l {
        Lookup::Unknown => format!(
            "unknown {SESSION_COOKIE} (never issued, already used by an /attest attempt, or the KBS restarted): start again with /kbs/v0/auth"
        ),
        Lookup::Expired(at) => {
            format!("session expired at {at} (Unix time): start again with /kbs/v0/auth")
        }
    }
}

async fn attest(st: &Arc<AppState>, headers: &HeaderMap, body: Body) -> Result<Response> {
    let r = attest_inner(st, headers, body).await;
    Metrics::inc(if r.is_ok() {
        &st.metrics.attest_ok
    } else {
        &st.metrics.attest_refused
    });
    r
}

async fn attest_inner(st: &Arc<AppState>, headers: &HeaderMap, body: Body) -> Result<Response> {
    let id = session_cookie(headers).ok_or_else(|| {
        KbsError::AttestationError(format!(
            "no {SESSION_COOKIE} cookie: call /kbs/v0/auth first"
        ))
    })?;
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let now = now();
    let session = st
        .sessions
        .take_for_attest(&id, now)
        .map_err(|l| KbsError::AttestationError(lookup_error(l)))?;
    // A re-attestation on an attested session is appraised like the first
    // one, against the same challenge, and replaces the session's token; a
    // refused one leaves the session and its token as they were.
    let (tee, nonce, expires, reattest) = match session {
        Session::Attested {
            tee,
            nonce,
            expires,
            ..
        } => (tee, nonce, expires, true),
        Session::Authed {
            tee,
            nonce,
            expires,
        } => (tee, nonce, expires, false),
    };
    let st2 = st.clone();
    let (tee2, nonce2) = (tee.clone(), nonce.clone());
    let outcome = blocking(move || appraise_attestation(&st2, &tee2, &nonce2, &bytes, now));
    match outcome {
        Ok((token, (subject, reason, details))) => {
            if reattest {
                st.sessions
                    .reissue(&id, token.clone(), now)
                    .map_err(|l| KbsError::AttestationError(lookup_error(l)))?;
            } else {
                st.sessions
                    .insert(
                        id.clone(),
                        Session::Attested {
                            tee,
                            nonce,
                            token: token.clone(),
                            expires,
                        },
                        now,
                    )
                    .map_err(KbsError::AttestationError)?;
            }
            let reason = if reattest {
                format!("re-attested, {reason}")
            } else {
                reason
            };
            blocking(|| st.audit("attest", &subject, "allow", &reason, details));
            let mut r = json_response(&serde_json::json!({ "token": token }));
            r.headers_mut()
                .insert(header::SET_COOKIE, cookie_header(&id, expires));
            Ok(r)
        }
        Err((tee, e)) => {
            let reason = if reattest {
                format!("re-attestation refused, the session keeps its earlier token: {e}")
            } else {
                e.to_string()
            };
            blocking(|| st.audit("attest", &tee, "deny", &reason, serde_json::json!({})));
            Err(e)
        }
    }
}

type AttestOk = (String, (String, String, serde_json::Value));

/// The tail veil's agent puts in REPORT_DATA when it produces evidence over
/// caller-supplied runtime data (the host's `get_evidence`, a workload's
/// `/aa/evidence`): `veil_agent::proto::USER_REPORT_DATA_TAG`.
const USER_REPORT_DATA_TAG_HEX: &str = "5645494c3a55534552444154413a7631";

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

/// Verify an attestation for a consumed session; returns the token and the
/// audit subject / reason / details.
fn appraise_attestation(
    st: &AppState,
    tee: &str,
    nonce: &str,
    bytes: &[u8],
    now: u64,
) -> std::result::Result<AttestOk, (String, KbsError)> {
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
    if !additional.is_empty() {
        return Err(fail(KbsError::AttestationError(
            "additional (device) evidence is not supported by this KBS; send \"\"".into(),
        )));
    }
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
            if init.is_some() {
                return Err(fail(KbsError::AttestationError(
                    "sample evidence has no init-data field, so init-data cannot be bound: do not send init-data with sample evidence".into(),
                )));
            }
            crate::verify::verify_sample(&att.tee_evidence.primary_evidence, &binding).map_err(
                |e| {
                    fail(KbsError::AttestationError(format!(
                        "sample evidence refused: {e}"
                    )))
                },
            )?
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
    let token = st.signer.sign(&claims);
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
    });
    tracing::info!(tee, status = appraisal.status, "attestation token issued");
    Ok((
        token,
        (
            tee.to_string(),
            format!("token issued, ear.status {}", appraisal.status),
            details,
        ),
    ))
}

// ----------------------------------------------------------- resources ----

fn resource_path(rest: &str) -> Result<ResourcePath> {
    if rest.starts_with("kbs:") {
        return Err(KbsError::InvalidRequestPath(
            "resource path must be <repo>/<type>/<tag>".into(),
        ));
    }
    ResourcePath::parse(rest).map_err(|e| KbsError::InvalidRequestPath(e.to_string()))
}

fn get_resource(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    rest: &str,
    query: &str,
) -> Result<Response> {
    let r = blocking(|| get_resource_inner(st, headers, rest, query));
    match &r {
        Ok(_) => Metrics::inc(&st.metrics.resource_released),
        Err(e) => {
            Metrics::inc(&st.metrics.resource_refused);
            if !matches!(e, KbsError::InvalidRequestPath(_)) {
                st.audit(
                    "resource",
                    rest,
                    "deny",
                    &e.to_string(),
                    serde_json::json!({}),
                );
            }
        }
    }
    r
}

fn get_resource_inner(
    st: &AppState,
    headers: &HeaderMap,
    rest: &str,
    query: &str,
) -> Result<Response> {
    let path = resource_path(rest)?;
    let now = now();
    let token = match bearer(headers) {
        Some(t) => t,
        None => {
            let id = session_cookie(headers).ok_or_else(|| {
                KbsError::TokenNotFound(format!(
                    "send the attestation token as `Authorization: Bearer <token>` or the {SESSION_COOKIE} cookie of an attested session"
                ))
            })?;
            match st.sessions.get(&id, now) {
                Ok(Session::Attested { token, .. }) => token,
                Ok(Session::Authed { .. }) => {
                    return Err(KbsError::TokenNotFound(
                        "this session has not attested yet: POST /kbs/v0/attest first".into(),
                    ));
                }
                Err(l) => return Err(KbsError::TokenNotFound(lookup_error(l))),
            }
        }
    };
    let claims = st
        .signer
        .verify(&token, now)
        .map_err(KbsError::TokenVerifierError)?;
    let evidence = claims
        .pointer("/submods/cpu0/ear.veraison.annotated-evidence")
        .ok_or_else(|| {
            KbsError::TokenVerifierError("token has no submods.cpu0 annotated evidence".into())
        })?;
    let tee = evidence.get("tee").and_then(|v| v.as_str()).unwrap_or("");
    if tee == "sim" && !st.cfg.dev {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: the token comes from the simulated TEE (no hardware protection); sim tokens get resources only from a KBS started with --dev"
        )));
    }
    if tee == "sample" && !st.cfg.insecure_allow_sample {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: sample tokens get resources only from a KBS started with --insecure-allow-sample"
        )));
    }
    let tee_pubkey: TeePubKey = evidence
        .pointer("/runtime_data_claims/tee-pubkey")
        .cloned()
        .and_then(|v| serde_json::from_value(v).ok())
        .ok_or_else(|| KbsError::TokenVerifierError("token carries no usable tee-pubkey".into()))?;
    if let Some(pin) = st.release_pin() {
        pin.check(&path.to_string(), evidence)
            .map_err(KbsError::PolicyDeny)?;
    }
    let policies = st.resource_policies();
    let scopes = crate::policy::scopes_for(&path);
    let Some((scope, policy)) = scopes
        .iter()
        .find_map(|s| policies.get(s).map(|p| (s.clone(), p)))
    else {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: no resource policy covers this resource (scopes tried: {}), and the default is to deny",
            scopes
                .iter()
                .map(|s| format!("{s:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        )));
    };
    let query_map: serde_json::Map<String, serde_json::Value> = query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .take(32)
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
        })
        .collect();
    let data = serde_json::json!({"plugin": "resource", "resource-path": path.segments(), "query": query_map});
    let decision = policy
        .eval(claims.clone(), data, crate::policy::RESOURCE_RULE)
        .map_err(|e| {
            KbsError::PolicyEngineError(format!("resource policy for scope {scope:?}: {e}"))
        })?;
    if decision != serde_json::Value::Bool(true) {
        return Err(KbsError::PolicyDeny(format!(
            "{path}: the resource policy for scope {scope:?} does not allow release to this token (data.policy.allow = {}). {}",
            if decision.is_null() {
                "undefined".to_string()
            } else {
                decision.to_string()
            },
            token_summary(&claims, &st.reference_values())
        )));
    }
    let (meta, blob) = st
        .store
        .get_resource(&path.to_string())
        .map_err(|e| KbsError::PluginInternalError(e.to_string()))?
        .ok_or_else(|| KbsError::PluginInternalError(format!("resource {path} not found")))?;
    let plaintext = st
        .cfg
        .kek
        .open(&format!("resource:{path}"), &blob)
        .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
    let jwe = veil_kbs_client::jwe::encrypt(&tee_pubkey, &plaintext)
        .map_err(|e| KbsError::JweError(e.to_string()))?;
    let kty = match &tee_pubkey {
        TeePubKey::EC { crv, .. } => crv.clone(),
        TeePubKey::RSA { .. } => "RSA".into(),
        TeePubKey::AKP { .. } => "AKP".into(),
    };
    st.audit(
        "resource",
        &path.to_string(),
        "allow",
        &format!("released by policy scope {scope:?}"),
        serde_json::json!({"tee": tee, "size": meta.size, "key": kty, "token_jti": claims.get("jti")}),
    );
    tracing::info!(resource = %path, tee, "resource released");
    Ok(json_response(
        &serde_json::to_value(&jwe).unwrap_or_default(),
    ))
}

// --------------------------------------------------------------- admin ----

fn admin(st: &Arc<AppState>, headers: &HeaderMap, what: &str) -> Result<String> {
    let r = match bearer(headers) {
        None => Err(format!(
            "{what}: no `Authorization: Bearer <admin token>` header"
        )),
        Some(t) => crate::admin_auth::verify_admin_token(
            &t,
            &st.cfg.admin_keys,
            &st.admin_token_rules(),
            &st.admin_jtis,
            now(),
        )
        .map_err(|e| format!("{what}: {e}")),
    };
    match r {
        Ok(sub) => Ok(sub),
        Err(e) => {
            Metrics::inc(&st.metrics.admin_refused);
            blocking(|| st.audit("admin", what, "deny", &e, serde_json::json!({})));
            Err(KbsError::AdminAuthAccess(e))
        }
    }
}

fn admin_ok(st: &AppState, what: &str, subject: &str, details: serde_json::Value) {
    Metrics::inc(&st.metrics.admin_ok);
    st.audit("admin", what, "ok", subject, details);
}

async fn put_resource(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    rest: &str,
    body: Body,
) -> Result<Response> {
    let path = resource_path(rest)?;
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let plaintext = zeroize::Zeroizing::new(bytes.to_vec());
    drop(bytes);
    blocking(|| {
        let blob = st.cfg.kek.seal(&format!("resource:{path}"), &plaintext);
        st.store
            .put_resource(&path.to_string(), plaintext.len() as u64, &blob, now())
            .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
        admin_ok(
            st,
            "put resource",
            &path.to_string(),
            serde_json::json!({"size": plaintext.len()}),
        );
        Ok(StatusCode::OK.into_response())
    })
}

fn delete_resource(st: &Arc<AppState>, rest: &str) -> Result<Response> {
    let path = resource_path(rest)?;
    blocking(|| {
        let existed = st
            .store
            .delete_resource(&path.to_string())
            .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
        if !existed {
            return Err(KbsError::PluginInternalError(format!(
                "resource {path} not found"
            )));
        }
        admin_ok(
            st,
            "delete resource",
            &path.to_string(),
            serde_json::json!({}),
        );
        Ok(StatusCode::OK.into_response())
    })
}

fn admin_resource_info(st: &Arc<AppState>, rest: &str) -> Result<Response> {
    let sub = rest.strip_prefix("resource").unwrap_or("/");
    blocking(|| {
        if sub.is_empty() {
            let list = st
                .store
                .list_resources()
                .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
            admin_ok(
                st,
                "list resources",
                "",
                serde_json::json!({"count": list.len()}),
            );
            return Ok(json_response(
                &serde_json::to_value(list).unwrap_or_default(),
            ));
        }
        let Some(p) = sub.strip_prefix('/') else {
            return Err(KbsError::InvalidRequestPath(
                "admin endpoints: /kbs/v0/admin/resource[/<repo>/<type>/<tag>]".into(),
            ));
        };
        let path = resource_path(p)?;
        let (meta, _) = st
            .store
            .get_resource(&path.to_string())
            .map_err(|e| KbsError::PluginInternalError(e.to_string()))?
            .ok_or_else(|| KbsError::PluginInternalError(format!("resource {path} not found")))?;
        admin_ok(
            st,
            "resource info",
            &path.to_string(),
            serde_json::json!({}),
        );
        Ok(json_response(
            &serde_json::to_value(meta).unwrap_or_default(),
        ))
    })
}

fn decode_policy_text(b64: &str) -> Result<String> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(b64.trim_end_matches('='))
        .map_err(|e| KbsError::SerdeError(format!("policy must be base64url (no padding): {e}")))?;
    String::from_utf8(bytes).map_err(|_| KbsError::SerdeError("policy is not UTF-8".into()))
}

#[derive(serde::Deserialize)]
struct ResourcePolicyBody {
    policy: String,
    #[serde(default)]
    scope: Option<String>,
}

async fn set_resource_policy(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let b: ResourcePolicyBody =
        crate::json::parse("resource policy", &bytes).map_err(KbsError::SerdeError)?;
    let scope = b.scope.unwrap_or_default();
    crate::policy::validate_scope(&scope).map_err(KbsError::InvalidRequestPath)?;
    let text = decode_policy_text(&b.policy)?;
    crate::policy::compile_resource_policy(&text).map_err(KbsError::PolicyEngineError)?;
    blocking(|| {
        st.store
            .set_policy("resource", &scope, &text, now())
            .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
        st.reload().map_err(KbsError::PolicyEngineError)?;
        admin_ok(
            st,
            "set resource policy",
            &scope,
            serde_json::json!({"bytes": text.len()}),
        );
        Ok(StatusCode::OK.into_response())
    })
}

fn list_resource_policies(st: &Arc<AppState>) -> Response {
    let list: Vec<serde_json::Value> = st
        .resource_policies()
        .iter()
        .map(|(scope, p)| serde_json::json!({"scope": scope, "policy": p.text()}))
        .collect();
    json_response(&serde_json::Value::Array(list))
}

#[derive(serde::Deserialize)]
struct AttestationPolicyBody {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    #[serde(default)]
    policy_id: Option<String>,
    policy: String,
}

async fn set_attestation_policy(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let b: AttestationPolicyBody =
        crate::json::parse("attestation policy", &bytes).map_err(KbsError::SerdeError)?;
    if let Some(k) = &b.kind {
        if k != "rego" {
            return Err(KbsError::PolicyEngineError(format!(
                "policy type {k:?}; only \"rego\" is supported"
            )));
        }
    }
    let text = decode_policy_text(&b.policy)?;
    crate::appraisal::compile(&text).map_err(KbsError::PolicyEngineError)?;
    blocking(|| {
        st.store
            .set_policy("attestation", "", &text, now())
            .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
        st.reload().map_err(KbsError::PolicyEngineError)?;
        admin_ok(
            st,
            "set attestation policy",
            b.policy_id.as_deref().unwrap_or("default_cpu"),
            serde_json::json!({}),
        );
        Ok(StatusCode::OK.into_response())
    })
}

/// Lifetime of sample-provisioned reference values (as Trustee's RVPS).
pub const REFERENCE_VALUE_LIFETIME_SECS: u64 = 365 * 24 * 3600;

#[derive(serde::Deserialize)]
struct RvpsMessage {
    version: String,
    #[serde(rename = "type")]
    kind: String,
    payload: String,
}

async fn set_reference_value(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let msg: RvpsMessage =
        crate::json::parse("reference value message", &bytes).map_err(KbsError::SerdeError)?;
    if msg.version != "0.1.0" || msg.kind != "sample" {
        return Err(KbsError::RvpsError(format!(
            "message version {:?} type {:?}; supported: version \"0.1.0\", type \"sample\"",
            msg.version, msg.kind
        )));
    }
    let payload = base64::engine::general_purpose::STANDARD
        .decode(&msg.payload)
        .map_err(|e| KbsError::RvpsError(format!("payload is not standard base64: {e}")))?;
    let values: serde_json::Map<String, serde_json::Value> =
        crate::json::parse("reference value payload", &payload).map_err(KbsError::RvpsError)?;
    for (name, v) in &values {
        if name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        {
            return Err(KbsError::RvpsError(format!(
                "reference value name {name:?} must be 1-128 of [A-Za-z0-9_.-]"
            )));
        }
        if !v.is_array() {
            return Err(KbsError::RvpsError(format!(
                "reference value {name:?} must be a JSON array of values"
            )));
        }
    }
    blocking(|| {
        let expires = now() + REFERENCE_VALUE_LIFETIME_SECS;
        for (name, v) in &values {
            st.store
                .set_reference_value(name, v, expires)
                .map_err(|e| KbsError::RvpsError(e.to_string()))?;
        }
        st.reload().map_err(KbsError::PolicyEngineError)?;
        admin_ok(
            st,
            "set reference value",
            &values.keys().cloned().collect::<Vec<_>>().join(","),
            serde_json::json!({}),
        );
        Ok(StatusCode::OK.into_response())
    })
}

fn get_reference_value(st: &Arc<AppState>, rest: &str) -> Result<Response> {
    let rv = st.reference_values();
    if rest.is_empty() {
        return Ok(json_response(&serde_json::Value::Object((*rv).clone())));
    }
    rv.get(rest).map(json_response).ok_or_else(|| {
        KbsError::RvpsError(format!(
            "no reference value named {:?}",
            rest.chars().take(128).collect::<String>()
        ))
    })
}

fn audit(st: &Arc<AppState>, query: &str) -> Result<Response> {
    let mut limit = 100u32;
    let mut kind = None;
    for kv in query.split('&').filter(|s| !s.is_empty()) {
        match kv.split_once('=') {
            Some(("limit", v)) => {
                limit = v
                    .parse::<u32>()
                    .map_err(|_| KbsError::SerdeError(format!("limit {v:?} is not a number")))?
                    .min(10_000)
            }
            Some(("kind", v)) => kind = Some(v.to_string()),
            _ => {
                return Err(KbsError::SerdeError(format!(
                    "unknown audit query parameter {kv:?}; known: limit, kind"
                )));
            }
        }
    }
    blocking(|| {
        let recs = st
            .store
            .query_audit(limit, kind.as_deref())
            .map_err(|e| KbsError::PluginInternalError(e.to_string()))?;
        Metrics::inc(&st.metrics.admin_ok);
        Ok(json_response(
            &serde_json::to_value(recs).unwrap_or_default(),
        ))
    })
}

/// What a denied token says, for the refusal: its appraisal (the claims
/// that are not "none") and its measurement, and whether that measurement
/// is among the reference values (the usual reason for a denial). The
/// reference values themselves are not listed, only counted.
fn token_summary(
    claims: &serde_json::Value,
    reference: &serde_json::Map<String, serde_json::Value>,
) -> String {
    let cpu0 = claims.pointer("/submods/cpu0");
    let status = cpu0
        .and_then(|c| c.get("ear.status"))
        .and_then(|s| s.as_str())
        .unwrap_or("?");
    let vector: Vec<String> = cpu0
        .and_then(|c| c.get("ear.trustworthiness-vector"))
        .and_then(|v| v.as_object())
        .map(|v| {
            v.iter()
                .filter_map(|(k, n)| {
                    let n = n.as_i64()?;
                    (n != 0).then(|| format!("{k} {n} ({})", crate::appraisal::tier(n).1))
                })
                .collect()
        })
        .unwrap_or_default();
    let evidence = cpu0.and_then(|c| c.get("ear.veraison.annotated-evidence"));
    let measurement = evidence
        .and_then(|e| e.get(e.get("tee")?.as_str()?))
        .and_then(|c| c.get("measurement"))
        .and_then(|m| m.as_str());
    // The init-data digest the token carries: what an init-data-digest
    // policy compared (all zeros when the guest sent no init-data).
    let init_data = evidence
        .and_then(|e| e.get("init_data"))
        .and_then(|d| d.as_str());
    let mut out = format!("The token: ear.status {status}");
    if !vector.is_empty() {
        out.push_str(&format!("; {}", vector.join(", ")));
    }
    if let Some(m) = measurement {
        let listed = reference
            .get("measurement")
            .and_then(|v| v.as_array())
            .map(|a| a.as_slice())
            .unwrap_or_default();
        let found = listed.iter().any(|v| v.as_str() == Some(m));
        out.push_str(&format!(
            "; measurement {m} {} the {} reference value(s) \"measurement\"",
            if found { "is among" } else { "is NOT among" },
            listed.len()
        ));
    }
    if let Some(d) = init_data {
        let algorithm = evidence
            .and_then(|e| e.pointer("/init_data_claims/algorithm"))
            .and_then(|a| a.as_str());
        match algorithm {
            Some(a) => out.push_str(&format!("; init-data digest {a}:{d}")),
            None => out.push_str(&format!(
                "; init-data digest {d} (no init-data sent: the TEE's field)"
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denial_says_what_the_token_holds() {
        let claims = serde_json::json!({"submods": {"cpu0": {
            "ear.status": "contraindicated",
            "ear.trustworthiness-vector": {"instance-identity": 0, "executables": 33, "hardware": 97, "configuration": 2},
            "ear.veraison.annotated-evidence": {"tee": "sim", "sim": {"measurement": "abcd"},
                "init_data": "0f0e", "init_data_claims": {"algorithm": "sha384"}},
        }}});
        let mut reference = serde_json::Map::new();
        reference.insert("measurement".into(), serde_json::json!(["1234", "5678"]));
        let s = token_summary(&claims, &reference);
        assert_eq!(
            s,
            "The token: ear.status contraindicated; executables 33 (warning), hardware 97 (contraindicated), configuration 2 (affirming); measurement abcd is NOT among the 2 reference value(s) \"measurement\"; init-data digest sha384:0f0e"
        );
        reference.insert("measurement".into(), serde_json::json!(["abcd"]));
        assert!(token_summary(&claims, &reference).contains("abcd is among the 1 reference"));
        // Whatever the token lacks is left out rather than guessed.
        assert_eq!(
            token_summary(&serde_json::json!({}), &serde_json::Map::new()),
            "The token: ear.status ?"
        );
    }
}
