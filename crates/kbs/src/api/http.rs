//! Reading requests and writing responses: bounded bodies, the session
//! cookie, Bearer tokens, JSON answers.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use veil_kbs_client::protocol::SESSION_COOKIE;

use crate::error::{KbsError, Result};

/// Time allowed to receive a request body.
pub const BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The body, refused past `limit` bytes or [`BODY_TIMEOUT`].
pub async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<axum::body::Bytes> {
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

/// The value of the session cookie, if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
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

/// The token of an `Authorization: Bearer` header, if any.
pub fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
}

/// `Set-Cookie` for session `id` expiring at `expires` (Unix seconds).
pub fn cookie_header(id: &str, expires: u64) -> HeaderValue {
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

/// 200 with a JSON body.
pub fn json_response(value: &serde_json::Value) -> Response {
    let mut r = (StatusCode::OK, value.to_string()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A serializable value as a 200 JSON answer.
pub fn json_of<T: serde::Serialize>(value: &T) -> Response {
    json_response(&serde_json::to_value(value).unwrap_or_default())
}

/// 200 with the session cookie set.
pub fn with_cookie(mut r: Response, id: &str, expires: u64) -> Response {
    r.headers_mut()
        .insert(header::SET_COOKIE, cookie_header(id, expires));
    r
}

/// The URL's query as a JSON map (at most 32 `key=value` pairs; values
/// kept as sent).
pub fn query_map(query: &str) -> serde_json::Map<String, serde_json::Value> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .take(32)
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(v)))
        })
        .collect()
}
