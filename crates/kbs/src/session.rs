//! RCAR sessions: `Authed` (a challenge was issued) → `Attested` (a token
//! was issued). With the embedded store sessions live in memory: after a
//! restart an old cookie is cleanly refused as unknown and the client
//! attests again. With a shared store (PostgreSQL, several replicas) they
//! live in the database ([`crate::store::SharedSessions`]) so that any
//! replica serves any step, under the same limits; the token kept there is
//! sealed under the KEK like a resource. A nonce is
//! single-use for the first attestation: an `/attest` attempt consumes the
//! `Authed` session whatever its outcome. An `Attested` session keeps its
//! TEE and nonce so that a re-attestation on it is appraised again against
//! the same challenge and gets a fresh token.
//!
//! Un-attested (`Authed`) sessions cost a client one unauthenticated
//! request, so they are kept apart and cheap to lose: each must attest
//! within a short time ([`SessionLimits::unattested_timeout`]), each
//! source address holds at most [`SessionLimits::unattested_per_source`]
//! of them and all sources together [`SessionLimits::max_unattested`]; past
//! either cap the oldest one (of that source, or of all) is evicted rather
//! than the new one refused. A flood from one address therefore only
//! evicts its own challenges, and a flood from many addresses cannot make
//! `/auth` refuse anyone. Attested sessions, which cost an accepted
//! attestation, have their own cap ([`SessionLimits::max_attested`]).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use rand_core::{OsRng, RngCore};

use crate::secrets::Kek;
use crate::source::SourceKey;
use crate::store::{Found, SealedBlob, Store, StoreError, StoredSession};

/// A session.
#[derive(Clone, Debug)]
pub enum Session {
    /// Challenge issued.
    Authed {
        /// TEE name from `/auth`.
        tee: String,
        /// The nonce (standard base64 of 32 bytes).
        nonce: String,
        /// Unix seconds after which the challenge can no longer be
        /// answered (the short un-attested timeout).
        attest_by: u64,
        /// Unix seconds: end of the session (the cookie's expiry).
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
    /// When this session stops being usable in its current state.
    fn deadline(&self) -> u64 {
        match self {
            Session::Authed {
                attest_by, expires, ..
            } => (*attest_by).min(*expires),
            Session::Attested { expires, .. } => *expires,
        }
    }
}

/// Why a session lookup or change failed.
#[derive(Debug)]
pub enum Lookup {
    /// No such session (never issued, consumed, or evicted).
    Unknown,
    /// Expired at (Unix seconds).
    Expired(u64),
    /// The attested-session cap is reached.
    Full(usize),
    /// The shared session store failed.
    Store(StoreError),
}

impl PartialEq for Lookup {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Lookup::Unknown, Lookup::Unknown) => true,
            (Lookup::Expired(a), Lookup::Expired(b)) => a == b,
            (Lookup::Full(a), Lookup::Full(b)) => a == b,
            (Lookup::Store(a), Lookup::Store(b)) => a.to_string() == b.to_string(),
            _ => false,
        }
    }
}

/// Caps and timeouts of the session table.
#[derive(Clone, Debug)]
pub struct SessionLimits {
    /// Attested sessions held at most; past it (after dropping expired
    /// ones) a new attested session is refused.
    pub max_attested: usize,
    /// Un-attested sessions held at most; past it the oldest is evicted.
    pub max_unattested: usize,
    /// Un-attested sessions one source address holds at most; past it that
    /// source's oldest is evicted.
    pub unattested_per_source: usize,
    /// Time an un-attested session has to attest.
    pub unattested_timeout: Duration,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            max_attested: 100_000,
            max_unattested: 100_000,
            unattested_per_source: 256,
            unattested_timeout: Duration::from_secs(60),
        }
    }
}

struct Entry {
    session: Session,
    /// Set while the session is un-attested: its place in the eviction
    /// order and the source it counts against.
    pending: Option<(u64, SourceKey)>,
}

#[derive(Default)]
struct Table {
    map: HashMap<String, Entry>,
    /// Un-attested sessions by arrival (oldest first): seq → id.
    pending: BTreeMap<u64, String>,
    /// Un-attested sessions of each source, by arrival.
    by_source: HashMap<SourceKey, BTreeSet<u64>>,
    attested: usize,
    next_seq: u64,
    evicted: u64,
}

impl Table {
    fn forget_pending(&mut self, seq: u64, source: &SourceKey) {
        self.pending.remove(&seq);
        if let Some(set) = self.by_source.get_mut(source) {
            set.remove(&seq);
            if set.is_empty() {
                self.by_source.remove(source);
            }
        }
    }

    fn remove(&mut self, id: &str) -> Option<Session> {
        let e = self.map.remove(id)?;
        match &e.pending {
            Some((seq, source)) => self.forget_pending(*seq, source),
            None => self.attested -= 1,
        }
        Some(e.session)
    }

    fn evict_seq(&mut self, seq: u64) {
        if let Some(id) = self.pending.get(&seq).cloned() {
            self.remove(&id);
            self.evicted += 1;
        }
    }

    /// Drop un-attested sessions whose time to attest is over (they are in
    /// arrival order, which is deadline order).
    fn expire_pending(&mut self, now: u64) {
        while let Some((_, id)) = self.pending.first_key_value() {
            let over = self.map.get(id).is_none_or(|e| e.session.deadline() <= now);
            if !over {
                break;
            }
            let id = id.clone();
            self.remove(&id);
        }
    }

    /// The session `id` if it has not expired at `now`; an expired one is
    /// dropped.
    fn live(&mut self, id: &str, now: u64) -> Result<&mut Entry, Lookup> {
        let deadline = self.map.get(id).ok_or(Lookup::Unknown)?.session.deadline();
        if deadline <= now {
            self.remove(id);
            return Err(Lookup::Expired(deadline));
        }
        self.map.get_mut(id).ok_or(Lookup::Unknown)
    }
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

/// The session table.
pub struct Sessions {
    table: Mutex<Table>,
    limits: SessionLimits,
    shared: Option<Shared>,
}

/// Sessions in a shared store.
struct Shared {
    store: Arc<dyn Store>,
    kek: Kek,
    evicted: AtomicU64,
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

impl Shared {
    fn table(&self) -> Result<&dyn crate::store::SharedSessions, Lookup> {
        self.store.shared_sessions().ok_or_else(|| {
            Lookup::Store(StoreError::Failed(format!(
                "{} keeps no shared sessions",
                self.store.describe()
            )))
        })
    }

    /// A token as kept in the shared table: sealed under the KEK, bound to
    /// the session id.
    fn seal(&self, id: &str, token: &str) -> String {
        let b = self
            .kek
            .seal(&format!("session-token:{id}"), token.as_bytes());
        format!(
            "{}.{}.{}",
            B64.encode(b.kek_id.as_bytes()),
            B64.encode(&b.nonce),
            B64.encode(&b.ciphertext)
        )
    }

    fn open(&self, id: &str, sealed: &str) -> Result<String, Lookup> {
        let fail = |why: String| {
            Lookup::Store(StoreError::Failed(format!(
                "the stored token of this session cannot be opened ({why}); start again with /kbs/v0/auth"
            )))
        };
        let mut parts = sealed.split('.');
        let (Some(k), Some(n), Some(c), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(fail("not kek.nonce.ciphertext".into()));
        };
        let dec = |s: &str| B64.decode(s).map_err(|e| fail(e.to_string()));
        let blob = SealedBlob {
            kek_id: String::from_utf8(dec(k)?).map_err(|e| fail(e.to_string()))?,
            nonce: dec(n)?,
            ciphertext: dec(c)?,
        };
        let plain = self
            .kek
            .open(&format!("session-token:{id}"), &blob)
            .map_err(|e| fail(e.to_string()))?;
        String::from_utf8(plain.to_vec()).map_err(|e| fail(e.to_string()))
    }

    fn session(&self, id: &str, s: StoredSession) -> Result<Session, Lookup> {
        Ok(match s.token {
            Some(t) => Session::Attested {
                tee: s.tee,
                nonce: s.nonce,
                token: self.open(id, &t)?,
                expires: s.expires,
            },
            None => Session::Authed {
                tee: s.tee,
                nonce: s.nonce,
                attest_by: s.attest_by,
                expires: s.expires,
            },
        })
    }

    fn found(&self, id: &str, f: Found) -> Result<Session, Lookup> {
        match f {
            Found::Missing => Err(Lookup::Unknown),
            Found::Expired(at) => Err(Lookup::Expired(at)),
            Found::Live(s) => self.session(id, s),
        }
    }
}

impl Sessions {
    /// An empty in-memory table with these limits.
    pub fn new(limits: SessionLimits) -> Self {
        Sessions {
            table: Mutex::new(Table::default()),
            limits,
            shared: None,
        }
    }

    /// Sessions in `store`'s shared table if it has one (tokens sealed
    /// under `kek`), else in memory.
    pub fn for_store(limits: SessionLimits, store: &Arc<dyn Store>, kek: Kek) -> Self {
        let mut s = Sessions::new(limits);
        if store.shared_sessions().is_some() {
            s.shared = Some(Shared {
                store: store.clone(),
                kek,
                evicted: AtomicU64::new(0),
            });
        }
        s
    }

    /// True when the sessions are in a shared store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// The limits in force.
    pub fn limits(&self) -> &SessionLimits {
        &self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of sessions (both states); 0 when a shared store cannot be
    /// read.
    pub fn len(&self) -> usize {
        match &self.shared {
            Some(sh) => sh
                .table()
                .ok()
                .and_then(|t| t.counts("").ok())
                .map_or(0, |c| c.0 as usize),
            None => self.lock().map.len(),
        }
    }

    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Un-attested sessions held, in all and for `source`.
    pub fn unattested(&self, source: &SourceKey) -> (usize, usize) {
        match &self.shared {
            Some(sh) => sh
                .table()
                .ok()
                .and_then(|t| t.counts(&source.to_string()).ok())
                .map_or((0, 0), |c| (c.1 as usize, c.2 as usize)),
            None => {
                let t = self.lock();
                (
                    t.pending.len(),
                    t.by_source.get(source).map_or(0, |s| s.len()),
                )
            }
        }
    }

    /// Un-attested sessions evicted so far to make room (by this replica).
    pub fn evicted(&self) -> u64 {
        match &self.shared {
            Some(sh) => sh.evicted.load(Ordering::Relaxed),
            None => self.lock().evicted,
        }
    }

    /// Open an un-attested session for `source`, evicting that source's
    /// oldest (or everyone's oldest) un-attested session if a cap is
    /// reached. Never refuses.
    pub fn open(
        &self,
        id: String,
        tee: String,
        nonce: String,
        source: SourceKey,
        now: u64,
        expires: u64,
    ) -> Result<(), Lookup> {
        let attest_by = now + self.limits.unattested_timeout.as_secs().max(1);
        if let Some(sh) = &self.shared {
            let n = sh
                .table()?
                .open(
                    &id,
                    &StoredSession {
                        tee,
                        nonce,
                        token: None,
                        attest_by,
                        expires,
                    },
                    &source.to_string(),
                    self.limits.unattested_per_source,
                    self.limits.max_unattested,
                )
                .map_err(Lookup::Store)?;
            sh.evicted.fetch_add(n, Ordering::Relaxed);
            return Ok(());
        }
        let mut t = self.lock();
        t.expire_pending(now);
        let own = t.by_source.get(&source).map_or(0, |s| s.len());
        if own >= self.limits.unattested_per_source.max(1) {
            if let Some(oldest) = t.by_source.get(&source).and_then(|s| s.first().copied()) {
                t.evict_seq(oldest);
            }
        }
        if t.pending.len() >= self.limits.max_unattested.max(1) {
            if let Some(oldest) = t.pending.first_key_value().map(|(s, _)| *s) {
                t.evict_seq(oldest);
            }
        }
        let seq = t.next_seq;
        t.next_seq += 1;
        if let Some(old) = t.map.contains_key(&id).then(|| id.clone()) {
            t.remove(&old);
        }
        t.pending.insert(seq, id.clone());
        t.by_source.entry(source.clone()).or_default().insert(seq);
        t.map.insert(
            id,
            Entry {
                session: Session::Authed {
                    tee,
                    nonce,
                    attest_by,
                    expires,
                },
                pending: Some((seq, source)),
            },
        );
        Ok(())
    }

    /// Record an attested session; refuses when the attested cap is
    /// reached (after dropping expired ones).
    pub fn attested(&self, id: String, session: Session, now: u64) -> Result<(), Lookup> {
        if let Some(sh) = &self.shared {
            let Session::Attested {
                tee,
                nonce,
                token,
                expires,
            } = session
            else {
                return Err(Lookup::Unknown);
            };
            let stored = StoredSession {
                tee,
                nonce,
                token: Some(sh.seal(&id, &token)),
                attest_by: expires,
                expires,
            };
            return match sh
                .table()?
                .attested(&id, &stored, self.limits.max_attested, now)
                .map_err(Lookup::Store)?
            {
                true => Ok(()),
                false => Err(Lookup::Full(self.limits.max_attested)),
            };
        }
        let mut t = self.lock();
        if t.map.contains_key(&id) {
            t.remove(&id);
        }
        if t.attested >= self.limits.max_attested {
            let expired: Vec<String> = t
                .map
                .iter()
                .filter(|(_, e)| e.pending.is_none() && e.session.deadline() <= now)
                .map(|(k, _)| k.clone())
                .collect();
            for k in expired {
                t.remove(&k);
            }
            if t.attested >= self.limits.max_attested {
                return Err(Lookup::Full(self.limits.max_attested));
            }
        }
        t.attested += 1;
        t.map.insert(
            id,
            Entry {
                session,
                pending: None,
            },
        );
        Ok(())
    }

    /// Look up a session without consuming it.
    pub fn get(&self, id: &str, now: u64) -> Result<Session, Lookup> {
        if let Some(sh) = &self.shared {
            let f = sh.table()?.get(id, now).map_err(Lookup::Store)?;
            return sh.found(id, f);
        }
        self.lock().live(id, now).map(|e| e.session.clone())
    }

    /// Take an `Authed` session out (consuming its nonce); an `Attested`
    /// session is returned and left in place.
    pub fn take_for_attest(&self, id: &str, now: u64) -> Result<Session, Lookup> {
        if let Some(sh) = &self.shared {
            let f = sh
                .table()?
                .take_for_attest(id, now)
                .map_err(Lookup::Store)?;
            return sh.found(id, f);
        }
        let mut t = self.lock();
        match &t.live(id, now)?.session {
            s @ Session::Attested { .. } => Ok(s.clone()),
            Session::Authed { .. } => t.remove(id).ok_or(Lookup::Unknown),
        }
    }

    /// Replace the token of a live `Attested` session (a re-attestation);
    /// refuses when the session is gone, expired or not attested.
    pub fn reissue(&self, id: &str, new_token: String, now: u64) -> Result<(), Lookup> {
        if let Some(sh) = &self.shared {
            let sealed = sh.seal(id, &new_token);
            return match sh
                .table()?
                .reissue(id, &sealed, now)
                .map_err(Lookup::Store)?
            {
                true => Ok(()),
                false => Err(Lookup::Unknown),
            };
        }
        let mut t = self.lock();
        match &mut t.live(id, now)?.session {
            Session::Attested { token, .. } => {
                *token = new_token;
                Ok(())
            }
            Session::Authed { .. } => Err(Lookup::Unknown),
        }
    }

    /// Drop expired sessions.
    pub fn purge(&self, now: u64) -> Result<(), StoreError> {
        if let Some(sh) = &self.shared {
            if let Some(t) = sh.store.shared_sessions() {
                t.purge(now)?;
            }
            return Ok(());
        }
        let mut t = self.lock();
        t.expire_pending(now);
        let expired: Vec<String> = t
            .map
            .iter()
            .filter(|(_, e)| e.session.deadline() <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in expired {
            t.remove(&k);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(last: u8) -> SourceKey {
        SourceKey::V4([127, 0, 0, last])
    }

    fn limits(per_source: usize, max_unattested: usize, max_attested: usize) -> SessionLimits {
        SessionLimits {
            max_attested,
            max_unattested,
            unattested_per_source: per_source,
            unattested_timeout: Duration::from_secs(10),
        }
    }

    fn attested(token: &str, expires: u64) -> Session {
        Session::Attested {
            tee: "sim".into(),
            nonce: "n".into(),
            token: token.into(),
            expires,
        }
    }

    fn open(s: &Sessions, id: &str, source: SourceKey, now: u64) {
        s.open(id.into(), "sim".into(), "n".into(), source, now, now + 300)
            .unwrap();
    }

    #[test]
    fn nonce_single_use_and_expiry() {
        let s = Sessions::new(limits(8, 8, 2));
        let id = new_session_id();
        assert_eq!(id.len(), 32);
        assert_eq!(new_nonce().len(), 44);
        open(&s, &id, src(1), 0);
        assert!(s.take_for_attest(&id, 5).is_ok());
        assert_eq!(s.take_for_attest(&id, 5).unwrap_err(), Lookup::Unknown);
        s.attested(id.clone(), attested("t", 10), 0).unwrap();
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
        s.attested("a".into(), attested("t", 100), 0).unwrap();
        s.attested("b".into(), attested("t", 100), 0).unwrap();
        assert!(s.attested("c".into(), attested("t", 100), 0).is_err());
        // Expired attested sessions make room.
        assert!(s.attested("c".into(), attested("t", 200), 100).is_ok());
    }

    #[test]
    fn an_unattested_session_must_attest_quickly() {
        let s = Sessions::new(limits(8, 8, 8));
        open(&s, "a", src(1), 100);
        // 10 s to attest, although the session (cookie) lasts 300 s.
        assert!(s.get("a", 109).is_ok());
        assert_eq!(
            s.take_for_attest("a", 110).unwrap_err(),
            Lookup::Expired(110)
        );
        assert_eq!(s.len(), 0);
        open(&s, "b", src(1), 100);
        s.purge(111).unwrap();
        assert_eq!(s.len(), 0);
    }

    #[test]
    fn a_flooding_source_evicts_only_its_own_oldest_challenges() {
        let s = Sessions::new(limits(3, 100, 8));
        open(&s, "legit", src(2), 0);
        for i in 0..1000 {
            open(&s, &format!("flood{i}"), src(9), 0);
        }
        assert_eq!(s.unattested(&src(9)), (4, 3));
        assert!(
            s.get("legit", 1).is_ok(),
            "another source keeps its challenge"
        );
        assert!(s.get("flood999", 1).is_ok() && s.get("flood997", 1).is_ok());
        assert_eq!(s.get("flood996", 1).unwrap_err(), Lookup::Unknown);
        assert_eq!(s.evicted(), 997);
    }

    #[test]
    fn many_sources_evict_the_oldest_challenge_and_never_refuse() {
        let s = Sessions::new(limits(3, 10, 8));
        for i in 0..=255u8 {
            open(&s, &format!("s{i}"), src(i), 0);
        }
        assert_eq!(s.unattested(&src(0)).0, 10);
        assert!(s.get("s255", 0).is_ok());
        assert_eq!(s.get("s0", 0).unwrap_err(), Lookup::Unknown);
        // A challenge answered in time becomes an attested session, which
        // the un-attested flood cannot evict.
        let Session::Authed {
            tee,
            nonce,
            expires,
            ..
        } = s.take_for_attest("s255", 1).unwrap()
        else {
            panic!()
        };
        s.attested(
            "s255".into(),
            Session::Attested {
                tee,
                nonce,
                token: "t".into(),
                expires,
            },
            1,
        )
        .unwrap();
        for i in 0..100u8 {
            open(&s, &format!("again{i}"), src(i), 1);
        }
        assert!(matches!(s.get("s255", 2), Ok(Session::Attested { .. })));
    }
}
