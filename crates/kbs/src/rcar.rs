//! The RCAR handshake as domain operations over the session table:
//! `/auth` checks the request and opens a session with a fresh challenge;
//! `/attest` consumes that challenge, has the evidence appraised
//! ([`crate::attestation`]) and records the token on the session. Both
//! count their outcome in the metrics; `/attest` audits it.

use kbs_types::Challenge;
use veil_kbs_client::protocol::{AuthRequest, PROTOCOL_VERSION, SESSION_COOKIE};

use crate::error::{KbsError, Result};
use crate::metrics::Metrics;
use crate::session::{Lookup, Session, new_nonce, new_session_id};
use crate::source::SourceKey;
use crate::state::{AppState, now};
use crate::verify::TeeKind;

/// A session opened by `/auth`.
pub struct Opened {
    /// The session id (the cookie's value).
    pub session_id: String,
    /// The challenge to answer with `/attest`.
    pub challenge: Challenge,
    /// When the session expires, Unix seconds.
    pub expires: u64,
}

/// A session that `/attest` attested.
pub struct Attested {
    /// The EAR token issued.
    pub token: String,
    /// When the session expires, Unix seconds.
    pub expires: u64,
}

/// Why a session cookie was not usable, and what to do.
pub fn lookup_error(l: Lookup) -> String {
    match l {
        Lookup::Unknown => format!(
            "unknown {SESSION_COOKIE} (never issued, already used by an /attest attempt, or the KBS restarted): start again with /kbs/v0/auth"
        ),
        Lookup::Expired(at) => {
            format!("session expired at {at} (Unix time): start again with /kbs/v0/auth")
        }
        Lookup::Full(max) => format!("too many attested sessions ({max}); try again later"),
        Lookup::Store(e) => e.to_string(),
    }
}

/// The refusal for a session lookup: 503 when the shared store is
/// unreachable, else `wrap` (an attestation or token error).
pub fn lookup_refusal(l: Lookup, wrap: fn(String) -> KbsError) -> KbsError {
    match l {
        Lookup::Store(e) => KbsError::store(e),
        other => wrap(lookup_error(other)),
    }
}

/// `/auth` from `source`: check the request `body` and open an
/// un-attested session (which may evict an older one, see
/// [`crate::session`]).
pub fn auth(st: &AppState, source: SourceKey, body: &[u8]) -> Result<Opened> {
    let r = auth_inner(st, source, body);
    Metrics::inc(if r.is_ok() {
        &st.metrics.auth_ok
    } else {
        &st.metrics.auth_refused
    });
    r
}

fn auth_inner(st: &AppState, source: SourceKey, body: &[u8]) -> Result<Opened> {
    let req: AuthRequest =
        crate::json::parse("auth request", body).map_err(KbsError::SerdeError)?;
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
    let session_id = new_session_id();
    let nonce = new_nonce();
    let now = now();
    let expires = now + st.cfg.session_timeout.as_secs();
    st.sessions
        .open(
            session_id.clone(),
            kind.name().to_string(),
            nonce.clone(),
            source,
            now,
            expires,
        )
        .map_err(|l| lookup_refusal(l, KbsError::AttestationError))?;
    Ok(Opened {
        session_id,
        challenge: Challenge {
            nonce,
            extra_params: serde_json::Value::String(String::new()),
        },
        expires,
    })
}

/// `/attest` from `source` on the session `session_id` (from the cookie) with the
/// attestation `body`. Runs verification inline: call it off the async
/// workers.
pub fn attest(
    st: &AppState,
    source: &SourceKey,
    session_id: &str,
    body: &[u8],
) -> Result<Attested> {
    let r = attest_inner(st, source, session_id, body);
    Metrics::inc(if r.is_ok() {
        &st.metrics.attest_ok
    } else {
        &st.metrics.attest_refused
    });
    r
}

fn attest_inner(st: &AppState, source: &SourceKey, id: &str, body: &[u8]) -> Result<Attested> {
    let now = now();
    let session = st
        .sessions
        .take_for_attest(id, now)
        .map_err(|l| lookup_refusal(l, KbsError::AttestationError))?;
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
            ..
        } => (tee, nonce, expires, false),
    };
    match crate::attestation::appraise(st, &tee, &nonce, body, now) {
        Ok(a) => {
            if reattest {
                st.sessions
                    .reissue(id, a.token.clone(), now)
                    .map_err(|l| lookup_refusal(l, KbsError::AttestationError))?;
            } else {
                st.sessions
                    .attested(
                        id.to_string(),
                        Session::Attested {
                            tee,
                            nonce,
                            token: a.token.clone(),
                            expires,
                        },
                        now,
                    )
                    .map_err(|l| lookup_refusal(l, KbsError::AttestationError))?;
            }
            let reason = if reattest {
                format!("re-attested, {}", a.reason)
            } else {
                a.reason
            };
            // A failed audit write is logged; the token is issued (the
            // releases it leads to are audited, and refused if they cannot be).
            let _ = st.audit("attest", &a.subject, "allow", &reason, a.details);
            Ok(Attested {
                token: a.token,
                expires,
            })
        }
        Err((tee, e)) => {
            let reason = if reattest {
                format!("re-attestation refused, the session keeps its earlier token: {e}")
            } else {
                e.to_string()
            };
            st.audit_refusal(source, "attest", &tee, &reason);
            Err(e)
        }
    }
}
