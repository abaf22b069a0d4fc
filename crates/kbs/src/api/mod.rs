//! HTTP handlers: each parses the request, calls one domain operation
//! ([`crate::rcar`], [`crate::release`], [`crate::admin`]) and maps its
//! result to a response. One route `/kbs/v0/{*path}` dispatched by method
//! and first segment (the "plugin"), as Trustee does.

pub mod http;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use veil_kbs_client::protocol::SESSION_COOKIE;

use crate::admin;
use crate::error::{KbsError, Result};
use crate::metrics::{Gauge, Metrics};
use crate::release::{Credential, resource_path};
use crate::source::SourceKey;
use crate::state::AppState;
use http::{bearer, json_of, json_response, read_body, session_cookie, with_cookie};

pub use http::BODY_TIMEOUT;

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
    let (unattested, sessions) = blocking(|| {
        (
            st.sessions.unattested(&SourceKey::Unknown).0,
            st.sessions.len(),
        )
    });
    let conns = st.connections.stats();
    let gauges = [
        Gauge {
            name: "veil_kbs_sessions",
            help: "Open RCAR sessions.",
            kind: "gauge",
            value: sessions as u64,
        },
        Gauge {
            name: "veil_kbs_sessions_unattested",
            help: "Open RCAR sessions that have not attested yet.",
            kind: "gauge",
            value: unattested as u64,
        },
        Gauge {
            name: "veil_kbs_sessions_evicted_total",
            help: "Un-attested sessions evicted to make room (oldest first, per source).",
            kind: "counter",
            value: st.sessions.evicted(),
        },
        Gauge {
            name: "veil_kbs_connections",
            help: "Open connections.",
            kind: "gauge",
            value: conns.open as u64,
        },
        Gauge {
            name: "veil_kbs_connections_shed_total",
            help: "Connections closed to make room for a source holding fewer.",
            kind: "counter",
            value: conns.shed,
        },
        Gauge {
            name: "veil_kbs_connections_refused_per_source_total",
            help: "Connections refused because their source held its cap.",
            kind: "counter",
            value: conns.refused_per_source,
        },
        Gauge {
            name: "veil_kbs_connections_refused_full_total",
            help: "Connections refused because all were in use and fairly shared.",
            kind: "counter",
            value: conns.refused_full,
        },
    ];
    let mut r = st.metrics.render(&gauges).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

/// Run store I/O, verification and policy evaluation without stalling the
/// async workers.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
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
    let source = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SourceKey::Unknown, |c| SourceKey::of(c.0.ip()));
    let m = &parts.method;
    let h = &parts.headers;
    let result = match plugin.as_str() {
        "auth" if rest.is_empty() && m == Method::POST => auth(&st, source, h, body).await,
        "attest" if rest.is_empty() && m == Method::POST => attest(&st, &source, h, body).await,
        "resource" if m == Method::GET => get_resource(&st, &source, h, &rest, &query),
        "resource" if m == Method::POST || m == Method::PUT => {
            match authorize(&st, &source, h, "put resource") {
                Ok(()) => put_resource(&st, h, &rest, body).await,
                Err(e) => Err(e),
            }
        }
        "resource" if m == Method::DELETE => {
            authorize(&st, &source, h, "delete resource").and_then(|()| delete_resource(&st, &rest))
        }
        "admin" if m == Method::GET => authorize(&st, &source, h, "resource info")
            .and_then(|()| admin_resource_info(&st, &rest)),
        "resource-policy" if rest.is_empty() && m == Method::POST => {
            match authorize(&st, &source, h, "set resource policy") {
                Ok(()) => set_resource_policy(&st, h, body).await,
                Err(e) => Err(e),
            }
        }
        "resource-policy" if rest.is_empty() && m == Method::GET => {
            authorize(&st, &source, h, "get resource policy").map(|()| list_resource_policies(&st))
        }
        "attestation-policy" if rest.is_empty() && m == Method::POST => {
            match authorize(&st, &source, h, "set attestation policy") {
                Ok(()) => set_attestation_policy(&st, h, body).await,
                Err(e) => Err(e),
            }
        }
        "attestation-policy" if rest.is_empty() && m == Method::GET => {
            authorize(&st, &source, h, "get attestation policy").map(|()| {
                let p = st.attestation_policy();
                json_response(&serde_json::json!({"policy_id": p.id, "policy": p.policy.text()}))
            })
        }
        "reference-value" if rest.is_empty() && m == Method::POST => {
            match authorize(&st, &source, h, "set reference value") {
                Ok(()) => set_reference_value(&st, h, body).await,
                Err(e) => Err(e),
            }
        }
        "reference-value" if m == Method::GET => authorize(&st, &source, h, "get reference value")
            .and_then(|()| admin::reference_values(&st, &rest))
            .map(|v| json_response(&v)),
        "audit" if rest.is_empty() && m == Method::GET => {
            authorize(&st, &source, h, "audit").and_then(|()| audit(&st, &query))
        }
        "jwks" if rest.is_empty() && m == Method::GET => Ok(json_response(&st.signer.jwks())),
        // What veil's KBS does beyond Trustee's protocol, so that clients
        // can tell it from a Trustee KBS (which answers 404 here).
        "veil-capabilities" if rest.is_empty() && m == Method::GET => Ok(json_response(
            &serde_json::json!({"resource_policy_scopes": true}),
        )),
        "auth" | "attest" | "resource" | "admin" | "resource-policy" | "attestation-policy"
        | "reference-value" | "audit" | "jwks" | "veil-capabilities" => {
            Err(KbsError::InvalidRequestPath(format!(
                "{m} /kbs/v0/{} is not an endpoint",
                path.chars().take(200).collect::<String>()
            )))
        }
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

async fn auth(
    st: &Arc<AppState>,
    source: SourceKey,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes)
        .await
        .inspect_err(|_| Metrics::inc(&st.metrics.auth_refused))?;
    let opened = blocking(|| crate::rcar::auth(st, source, &bytes))?;
    Ok(with_cookie(
        json_of(&opened.challenge),
        &opened.session_id,
        opened.expires,
    ))
}

async fn attest(
    st: &Arc<AppState>,
    source: &SourceKey,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let refused = |e| {
        Metrics::inc(&st.metrics.attest_refused);
        e
    };
    let id = session_cookie(headers)
        .ok_or_else(|| {
            KbsError::AttestationError(format!(
                "no {SESSION_COOKIE} cookie: call /kbs/v0/auth first"
            ))
        })
        .map_err(refused)?;
    let bytes = read_body(headers, body, st.cfg.max_body_bytes)
        .await
        .map_err(refused)?;
    let attested = blocking(|| crate::rcar::attest(st, source, &id, &bytes))?;
    Ok(with_cookie(
        json_response(&serde_json::json!({ "token": attested.token })),
        &id,
        attested.expires,
    ))
}

// ----------------------------------------------------------- resources ----

fn get_resource(
    st: &Arc<AppState>,
    source: &SourceKey,
    headers: &HeaderMap,
    rest: &str,
    query: &str,
) -> Result<Response> {
    let (token, cookie) = (bearer(headers), session_cookie(headers));
    let credential = match (&token, &cookie) {
        (Some(t), _) => Some(Credential::Bearer(t)),
        (None, Some(id)) => Some(Credential::Session(id)),
        (None, None) => None,
    };
    let jwe =
        blocking(|| crate::release::release(st, source, credential, rest, http::query_map(query)))?;
    Ok(json_of(&jwe))
}

// --------------------------------------------------------------- admin ----

fn authorize(
    st: &Arc<AppState>,
    source: &SourceKey,
    headers: &HeaderMap,
    what: &str,
) -> Result<()> {
    let token = bearer(headers);
    blocking(|| admin::authorize(st, source, token.as_deref(), what)).map(|_| ())
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
    blocking(|| admin::put_resource(st, &path, &plaintext))?;
    Ok(StatusCode::OK.into_response())
}

fn delete_resource(st: &Arc<AppState>, rest: &str) -> Result<Response> {
    let path = resource_path(rest)?;
    blocking(|| admin::delete_resource(st, &path))?;
    Ok(StatusCode::OK.into_response())
}

fn admin_resource_info(st: &Arc<AppState>, rest: &str) -> Result<Response> {
    let sub = rest.strip_prefix("resource").unwrap_or("/");
    if sub.is_empty() {
        return Ok(json_of(&blocking(|| admin::list_resources(st))?));
    }
    let Some(p) = sub.strip_prefix('/') else {
        return Err(KbsError::InvalidRequestPath(
            "admin endpoints: /kbs/v0/admin/resource[/<repo>/<type>/<tag>]".into(),
        ));
    };
    let path = resource_path(p)?;
    Ok(json_of(&blocking(|| admin::resource_info(st, &path))?))
}

async fn set_resource_policy(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let (scope, text) = wire::resource_policy(&bytes)?;
    blocking(|| admin::set_resource_policy(st, &scope, &text))?;
    Ok(StatusCode::OK.into_response())
}

fn list_resource_policies(st: &Arc<AppState>) -> Response {
    let list: Vec<serde_json::Value> = admin::resource_policies(st)
        .into_iter()
        .map(|(scope, text)| serde_json::json!({"scope": scope, "policy": text}))
        .collect();
    json_response(&serde_json::Value::Array(list))
}

async fn set_attestation_policy(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let (policy_id, text) = wire::attestation_policy(&bytes)?;
    blocking(|| admin::set_attestation_policy(st, policy_id.as_deref(), &text))?;
    Ok(StatusCode::OK.into_response())
}

async fn set_reference_value(
    st: &Arc<AppState>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response> {
    let bytes = read_body(headers, body, st.cfg.max_body_bytes).await?;
    let values = wire::reference_values(&bytes)?;
    blocking(|| admin::set_reference_values(st, &values))?;
    Ok(StatusCode::OK.into_response())
}

fn audit(st: &Arc<AppState>, query: &str) -> Result<Response> {
    let (limit, kind) = wire::audit_query(query)?;
    Ok(json_of(&blocking(|| {
        admin::audit(st, limit, kind.as_deref())
    })?))
}
