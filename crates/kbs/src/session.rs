//! RCAR sessions: `Authed` (a challenge was issued) → `Attested` (a token
//! was issued). Sessions live in memory: after a restart an old cookie is
//! cleanly refused as unknown and the client attests again. A nonce is
//! single-use for the first attestation: an `/attest` attempt consumes the
//! `Authed` session whatever its outcome. An `Attested` session keeps its
//! TEE and nonce so that a re-attestation on it is appraised again against
//! the same challenge and gets a fresh token.

use std::collections::HashMap;
use std::sync::Mutex;

use base64::Engine;
use rand_core::{OsRng, RngCore};

/// A session.
#[derive(Clone, Debug)]
pub enum Session {
    /// Challenge issued.
    Authed {
        /// TEE name from `/auth`.
        tee: String,
        /// The nonce (standard base64 of 32 bytes).
        nonce: String,
        /// Unix seconds.
        expires: u64,
    },
    /// Token issued.
    Attested {
        /// TEE name from `/auth`.
        tee: String,
        /// The challenge the first attestation bound; a re-attestation
        /// must bind it too.
        nonce: String,
        /// The latest token issued on this session.
        token: String,
        /// Unix seconds.
        expires: u64,
    },
}

impl Session {
    fn expires(&self) -> u64 {
        match self {
            Session::Authed { expires, .. } | Session::Attested { expires, .. } => *expires,
        }
    }
}

/// Why a session lookup failed.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// No such session.
    Unknown,
    /// Expired at (Unix seconds).
    Expired(u64),
}

/// The session table.
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    max: usize,
}

/// The session `id` if it has not expired at `now`; an expired one is
/// dropped from `m`.
fn live<'m>(
    m: &'m mut HashMap<String, Session>,
    id: &str,
    now: u64,
) -> Result<&'m Session, Lookup> {
    let expires = m.get(id).ok_or(Lookup::Unknown)?.expires();
    if expires <= now {
        m.remove(id);
        return Err(Lookup::Expired(expires));
    }
    m.get(id).ok_or(Lookup::Unknown)
}

/// A new session id: a UUID v4 in "simple" form (32 lowercase hex).
pub fn new_session_id() -> String {
    let mut b = [0u8; 16];
    OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    hex::encode(b)
}

/// A new nonce: standard base64 of 32 random bytes (44 characters).
pub fn new_nonce() -> String {
    let mut b = [0u8; 32];
    OsRng.fill_bytes(&mut b);
    base64::engine::general_purpose::STANDARD.encode(b)
}

impl Sessions {
    /// A table holding at most `max` sessions.
    pub fn new(max: usize) -> Self {
        Sessions {
            map: Mutex::new(HashMap::new()),
            max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Insert a session; refuses when full (after dropping expired ones).
    pub fn insert(&self, id: String, s: Session, now: u64) -> Result<(), String> {
        let mut m = self.lock();
        if m.len() >= self.max {
            m.retain(|_, v| v.expires() > now);
            if m.len() >= self.max {
                return Err(format!(
                    "too many open sessions ({}); try again later",
                    self.max
                ));
            }
        }
        m.insert(id, s);
        Ok(())
    }

    /// Look up a session without consuming it.
    pub fn get(&self, id: &str, now: u64) -> Result<Session, Lookup> {
        live(&mut self.lock(), id, now).cloned()
    }

    /// Take an `Authed` session out (consuming its nonce); an `Attested`
    /// session is returned and left in place.
    pub fn take_for_attest(&self, id: &str, now: u64) -> Result<Session, Lookup> {
        let mut m = self.lock();
        match live(&mut m, id, now)? {
            Session::Attested { .. } => m.get(id).cloned().ok_or(Lookup::Unknown),
            Session::Authed { .. } => m.remove(id).ok_or(Lookup::Unknown),
        }
    }

    /// Replace the token of a live `Attested` session (a re-attestation);
    /// refuses when the session is gone, expired or not attested.
    pub fn reissue(&self, id: &str, new_token: String, now: u64) -> Result<(), Lookup> {
        let mut m = self.lock();
        live(&mut m, id, now)?;
        match m.get_mut(id) {
            Some(Session::Attested { token, .. }) => {
                *token = new_token;
                Ok(())
            }
            _ => Err(Lookup::Unknown),
        }
    }

    /// Drop expired sessions.
    pub fn purge(&self, now: u64) {
        self.lock().retain(|_, v| v.expires() > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attested(token: &str, expires: u64) -> Session {
        Session::Attested {
            tee: "sim".into(),
            nonce: "n".into(),
            token: token.into(),
            expires,
        }
    }

    #[test]
    fn nonce_single_use_and_expiry() {
        let s = Sessions::new(2);
        let id = new_session_id();
        assert_eq!(id.len(), 32);
        assert_eq!(new_nonce().len(), 44);
        s.insert(
            id.clone(),
            Session::Authed {
                tee: "sim".into(),
                nonce: "n".into(),
                expires: 10,
            },
            0,
        )
        .unwrap();
        assert!(s.take_for_attest(&id, 5).is_ok());
        assert_eq!(s.take_for_attest(&id, 5).unwrap_err(), Lookup::Unknown);
        s.insert(id.clone(), attested("t", 10), 0).unwrap();
        // An attested session is not consumed: it keeps its tee and nonce
        // for a re-attestation, whose fresh token replaces the old one.
        for _ in 0..2 {
            match s.take_for_attest(&id, 5).unwrap() {
                Session::Attested { tee, nonce, .. } => {
                    assert_eq!((tee.as_str(), nonce.as_str()), ("sim", "n"))
                }
                other => panic!("{other:?}"),
            }
        }
        s.reissue(&id, "t2".into(), 5).unwrap();
        match s.get(&id, 5).unwrap() {
            Session::Attested { token, .. } => assert_eq!(token, "t2"),
            other => panic!("{other:?}"),
        }
        assert_eq!(s.reissue("nope", "t3".into(), 5), Err(Lookup::Unknown));
        assert_eq!(s.get(&id, 10).unwrap_err(), Lookup::Expired(10));
        assert_eq!(s.reissue(&id, "t3".into(), 10), Err(Lookup::Unknown));
        s.insert("a".into(), attested("t", 100), 0).unwrap();
        s.insert("b".into(), attested("t", 100), 0).unwrap();
        assert!(s.insert("c".into(), attested("t", 100), 0).is_err());
    }
}
