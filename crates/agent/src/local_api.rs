//! The workload's local API: HTTP/1.1 on a unix socket mounted into every
//! container at `/run/veil/api.sock` (CoCo's api-server-rest and the Azure
//! SKR sidecar offer the same things over TCP):
//!
//! | request | answer |
//! |---|---|
//! | `GET /cdh/resource/<repo>/<type>/<tag>` | the KBS resource's bytes (fetched with the agent's token; re-attests if needed) |
//! | `GET /aa/evidence?runtime_data=<text>` | fresh evidence JSON binding `SHA-384(runtime_data)` |
//! | `GET /aa/token?token_type=kbs` | the agent's KBS token (EAR JWT) |
//! | `GET /info` | TEE, init-data digest, agent version |
//!
//! The parser is deliberately small: GET only, a bounded request head, one
//! request per connection.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use veil_kbs_client::ResourcePath;
use veil_tee::Attester;

use crate::kbs::Kbs;

/// Largest request head accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Concurrent connections served.
pub const MAX_CONNECTIONS: usize = 32;

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub path: String,
    pub query: Vec<(String, String)>,
}

/// Why a request head was refused (HTTP status, reason).
pub type HttpError = (u16, String);

fn unhex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode (and `+` → space in queries).
pub fn percent_decode(s: &str, plus: bool) -> Result<String, HttpError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let (Some(h), Some(l)) = (
                    b.get(i + 1).and_then(|c| unhex(*c)),
                    b.get(i + 2).and_then(|c| unhex(*c)),
                ) else {
                    return Err((400, "bad percent-encoding".into()));
                };
                out.push(h << 4 | l);
                i += 3;
            }
            b'+' if plus => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| (400, "request target is not UTF-8".into()))
}

/// Parse a request head (everything up to the blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, HttpError> {
    if head.len() > MAX_HEAD_BYTES {
        return Err((431, "request head too large".into()));
    }
    let text =
        std::str::from_utf8(head).map_err(|_| (400, "request head is not UTF-8".to_string()))?;
    let line = text.split("\r\n").next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line".into()));
    };
    if !version.starts_with("HTTP/1.") {
        return Err((505, "only HTTP/1.x".into()));
    }
    if method != "GET" {
        return Err((405, format!("method {method} not allowed; only GET")));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    if !path.starts_with('/') {
        return Err((400, "request target must be an absolute path".into()));
    }
    let path = percent_decode(path, false)?;
    let mut q = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        q.push((percent_decode(k, true)?, percent_decode(v, true)?));
    }
    Ok(Request { path, query: q })
}

/// What the API serves from.
pub struct LocalApi {
    /// `None`: no TEE (`--tee none`).
    pub attester: Option<Arc<dyn Attester>>,
    pub kbs: Option<Arc<Kbs>>,
    pub info: serde_json::Value,
}

pub use veil_agent_api::proto::report_data_for;

impl LocalApi {
    /// Answer one request: (status, content type, body).
    pub fn answer(&self, req: &Request) -> (u16, &'static str, Vec<u8>) {
        let text = |code: u16, s: String| (code, "text/plain; charset=utf-8", s.into_bytes());
        if req.path == "/info" {
            return (200, "application/json", self.info.to_string().into_bytes());
        }
        let Some(attester) = &self.attester else {
            if !(req.path.starts_with("/aa/") || req.path.starts_with("/cdh/")) {
                return text(404, format!("no such endpoint {:?}\n", req.path));
            }
            return text(
                503,
                format!("{}: {}\n", req.path, crate::boot::NO_TEE_WARNING),
            );
        };
        if req.path == "/aa/evidence" {
            let rd = req
                .query
                .iter()
                .find(|(k, _)| k == "runtime_data")
                .map(|(_, v)| v.as_str())
                .unwrap_or("");
            return match attester.evidence(&report_data_for(rd.as_bytes())) {
                Ok(ev) => (
                    200,
                    "application/json",
                    serde_json::json!({"tee": ev.tee.as_str(), "evidence": ev.json})
                        .to_string()
                        .into_bytes(),
                ),
                Err(e) => text(500, format!("evidence: {e}\n")),
            };
        }
        let Some(kbs) = &self.kbs else {
            return text(503, "init-data names no KBS\n".into());
        };
        if req.path == "/aa/token" {
            if let Some((_, t)) = req.query.iter().find(|(k, _)| k == "token_type") {
                if t != "kbs" {
                    return text(400, format!("token_type {t:?}: only \"kbs\"\n"));
                }
            }
            return match kbs.token() {
                Ok(t) => (200, "application/jwt", t.into_bytes()),
                Err(e) => text(502, format!("{e}\n")),
            };
        }
        if let Some(rest) = req.path.strip_prefix("/cdh/resource/") {
            let path = match ResourcePath::parse(rest) {
                Ok(p) => p,
                Err(e) => return text(400, format!("{e}\n")),
            };
            return match kbs.get_resource(&path) {
                Ok(bytes) => (200, "application/octet-stream", bytes.to_vec()),
                Err(e) => text(502, format!("{e}\n")),
            };
        }
        text(404, format!("no such endpoint {:?}\n", req.path))
    }

    fn handle(&self, mut s: UnixStream) {
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.set_write_timeout(Some(Duration::from_secs(30)));
        let mut head = Vec::new();
        let mut buf = [0u8; 1024];
        let result = loop {
            match s.read(&mut buf) {
                Ok(0) => {
                    break Err((
                        400,
                        "connection closed before the request head ended".to_string(),
                    ));
                }
                Ok(n) => {
                    head.extend_from_slice(&buf[..n]);
                    if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                        break parse_head(&head[..end]);
                    }
                    if head.len() > MAX_HEAD_BYTES {
                        break Err((431, "request head too large".into()));
                    }
                }
                Err(e) => break Err((408, format!("reading the request: {e}"))),
            }
        };
        let (code, ctype, body) = match result {
            Ok(req) => self.answer(&req),
            Err((code, msg)) => (
                code,
                "text/plain; charset=utf-8",
                format!("{msg}\n").into_bytes(),
            ),
        };
        let reason = match code {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            408 => "Request Timeout",
            431 => "Request Header Fields Too Large",
            502 => "Bad Gateway",
            503 => "Service Unavailable",
            505 => "HTTP Version Not Supported",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\ncache-control: no-store\r\n\r\n",
            body.len()
        );
        let _ = s.write_all(head.as_bytes());
        let _ = s.write_all(&body);
        let mut body = body;
        zeroize::Zeroize::zeroize(&mut body);
    }

    /// Serve on `listener` until the process exits.
    pub fn serve(self: Arc<Self>, listener: UnixListener) {
        let active = Arc::new(AtomicUsize::new(0));
        for conn in listener.incoming() {
            let Ok(s) = conn else { continue };
            if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
                continue;
            }
            active.fetch_add(1, Ordering::SeqCst);
            let api = self.clone();
            let active = active.clone();
            std::thread::spawn(move || {
                api.handle(s);
                active.fetch_sub(1, Ordering::SeqCst);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_get_with_query() {
        let r = parse_head(b"GET /aa/evidence?runtime_data=a%20b+c&x HTTP/1.1\r\nHost: x").unwrap();
        assert_eq!(r.path, "/aa/evidence");
        assert_eq!(
            r.query,
            vec![
                ("runtime_data".into(), "a b c".into()),
                ("x".into(), String::new())
            ]
        );
    }

    #[test]
    fn refuses_other_methods_and_garbage() {
        assert_eq!(parse_head(b"POST / HTTP/1.1").unwrap_err().0, 405);
        assert_eq!(parse_head(b"GET / HTTP/2").unwrap_err().0, 505);
        assert_eq!(parse_head(b"GET /%zz HTTP/1.1").unwrap_err().0, 400);
        assert_eq!(parse_head(b"GET http://x/ HTTP/1.1").unwrap_err().0, 400);
        assert_eq!(parse_head(b"\xff").unwrap_err().0, 400);
    }

    #[test]
    fn without_a_tee_attestation_endpoints_say_why() {
        let api = LocalApi {
            attester: None,
            kbs: None,
            info: serde_json::json!({"tee": "none"}),
        };
        let get =
            |t: &str| api.answer(&parse_head(format!("GET {t} HTTP/1.1").as_bytes()).unwrap());
        for t in [
            "/aa/evidence?runtime_data=x",
            "/aa/token?token_type=kbs",
            "/cdh/resource/default/key/1",
        ] {
            let (code, _, body) = get(t);
            assert_eq!(code, 503, "{t}");
            let body = String::from_utf8(body).unwrap();
            assert!(body.contains("no TEE (--tee none)"), "{t}: {body}");
        }
        assert_eq!(get("/info").0, 200);
        assert_eq!(get("/nope").0, 404);
    }

    proptest! {
        #[test]
        fn head_parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_head(&bytes);
        }
    }
}
