//! One store test suite, run on the embedded SQLite store and on
//! PostgreSQL (Debian's, started by crates/testkit in a temp dir): both
//! pass the same checks of the [`Store`] trait; the shared session table
//! (PostgreSQL only) is checked beside the in-memory one through the same
//! `Sessions` interface the server uses.

use std::sync::Arc;
use std::time::{Duration, Instant};

use veil_kbs::Kek;
use veil_kbs::session::{Lookup, Session, SessionLimits, Sessions};
use veil_kbs::source::SourceKey;
use veil_kbs::store::postgres::PgStore;
use veil_kbs::store::sqlite::SqliteStore;
use veil_kbs::store::{AuditRecord, SealedBlob, Store, StoreError};
use veil_testkit::postgres::Postgres;

fn blob(kek: &str, fill: u8) -> SealedBlob {
    SealedBlob {
        kek_id: kek.into(),
        nonce: vec![fill; 12],
        ciphertext: vec![fill; 20],
    }
}

fn rec(ts: u64, kind: &str, subject: &str) -> AuditRecord {
    AuditRecord {
        id: 0,
        ts,
        kind: kind.into(),
        subject: subject.into(),
        decision: "allow".into(),
        reason: "line one\\nstill one line".into(),
        details: serde_json::json!({"n": ts}),
    }
}

/// The checks every store passes.
fn suite(s: &dyn Store) {
    // Resources: upsert, read back, list sorted, delete.
    s.put_resource("b/t/2", 4, &blob("k1", 1), 10).unwrap();
    s.put_resource("a/t/1", 5, &blob("k1", 2), 11).unwrap();
    s.put_resource("a/t/1", 6, &blob("k1", 3), 12).unwrap();
    let (meta, b) = s.get_resource("a/t/1").unwrap().unwrap();
    assert_eq!((meta.size, meta.updated_at, b.nonce[0]), (6, 12, 3));
    assert!(s.get_resource("nope/t/1").unwrap().is_none());
    let paths: Vec<String> = s
        .list_resources()
        .unwrap()
        .into_iter()
        .map(|m| m.path)
        .collect();
    assert_eq!(paths, ["a/t/1", "b/t/2"]);
    assert!(s.delete_resource("b/t/2").unwrap());
    assert!(!s.delete_resource("b/t/2").unwrap());

    // Sealed meta: the first writer wins put_if_absent.
    let first = s
        .put_sealed_meta_if_absent("token-key", &blob("k1", 7))
        .unwrap();
    let second = s
        .put_sealed_meta_if_absent("token-key", &blob("k1", 8))
        .unwrap();
    assert_eq!((first.nonce[0], second.nonce[0]), (7, 7));
    assert_eq!(s.get_sealed_meta("token-key").unwrap().unwrap().nonce[0], 7);

    // Re-sealing: all or nothing.
    assert_eq!(s.kek_ids().unwrap(), ["k1"]);
    let n = s
        .reseal_all(&mut |_, b| {
            Ok(SealedBlob {
                kek_id: "k2".into(),
                ..b.clone()
            })
        })
        .unwrap();
    assert_eq!(n, 2);
    assert_eq!(s.kek_ids().unwrap(), ["k2"]);
    assert!(
        s.reseal_all(&mut |k, b| if k.starts_with("meta:") {
            Err("refused".into())
        } else {
            Ok(SealedBlob {
                kek_id: "k3".into(),
                ..b.clone()
            })
        })
        .is_err()
    );
    assert_eq!(
        s.kek_ids().unwrap(),
        ["k2"],
        "a failed re-seal changed nothing"
    );

    // Policies and reference values.
    let g0 = s.config_generation().unwrap();
    s.set_policy("resource", "b", "package p", 1).unwrap();
    s.set_policy("resource", "", "package q", 1).unwrap();
    s.set_policy("resource", "b", "package r", 2).unwrap();
    s.set_policy("attestation", "", "package a", 2).unwrap();
    assert_eq!(
        s.list_policies("resource").unwrap(),
        [
            ("".to_string(), "package q".to_string()),
            ("b".into(), "package r".into())
        ]
    );
    s.set_reference_value("m", &serde_json::json!(["aa"]), 99)
        .unwrap();
    s.set_reference_value("m", &serde_json::json!(["bb"]), 100)
        .unwrap();
    assert_eq!(
        s.list_reference_values().unwrap(),
        [("m".to_string(), serde_json::json!(["bb"]), 100)]
    );
    let g1 = s.config_generation().unwrap();
    assert!(g1 >= g0);

    // Audit: batches commit together, newest first, filtered, pruned.
    s.append_audit(&rec(5, "admin", "x")).unwrap();
    s.append_audit_batch(&[
        rec(6, "attest", "a"),
        rec(7, "resource", "r"),
        rec(8, "attest", "b"),
    ])
    .unwrap();
    s.append_audit_batch(&[]).unwrap();
    let all = s.query_audit(10, None).unwrap();
    assert_eq!(all.iter().map(|r| r.ts).collect::<Vec<_>>(), [8, 7, 6, 5]);
    assert!(all.windows(2).all(|w| w[0].id > w[1].id));
    assert_eq!(all[0].details, serde_json::json!({"n": 8}));
    assert_eq!(all[0].reason, "line one\\nstill one line");
    let attest = s.query_audit(1, Some("attest")).unwrap();
    assert_eq!((attest.len(), attest[0].subject.as_str()), (1, "b"));
    assert_eq!(s.prune_audit(7).unwrap(), 2);
    assert_eq!(s.query_audit(10, None).unwrap().len(), 2);
    assert!(!s.describe().is_empty());
}

#[test]
fn sqlite_passes_the_store_suite() {
    let dir = tempfile::tempdir().unwrap();
    let s = SqliteStore::open(dir.path()).unwrap();
    suite(&s);
    assert!(
        s.shared_sessions().is_none(),
        "SQLite keeps sessions in memory"
    );
    drop(s);
    let s = SqliteStore::open(dir.path()).unwrap();
    assert!(s.get_resource("a/t/1").unwrap().is_some(), "persisted");
    assert_eq!(s.kek_ids().unwrap(), ["k2"]);
}

fn pg_db(pg: &Postgres, name: &str) -> PgStore {
    pg.create_db(name);
    PgStore::open(&pg.url(name)).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn postgres_passes_the_store_suite_and_migrates_once() {
    let pg = Postgres::start();
    let s = pg_db(&pg, "suite");
    suite(&s);
    // The other replica's change moved the generation.
    let g = s.config_generation().unwrap();
    s.set_policy("resource", "c", "package s", 3).unwrap();
    assert_eq!(s.config_generation().unwrap(), g + 1);
    // Opening again keeps the schema and the data (migrations ran once).
    let again = PgStore::open(&pg.url("suite")).unwrap();
    assert_eq!(again.schema_version().unwrap(), 2);
    assert_eq!(again.list_resources().unwrap().len(), 1);
    assert_eq!(pg.psql("suite", "SELECT version FROM veil_schema"), "2");
    // A database at version 1 (an older veil) is migrated to 2 at start.
    pg.psql(
        "suite",
        "DROP TABLE used_once; UPDATE veil_schema SET version = 1",
    );
    let migrated = PgStore::open(&pg.url("suite")).unwrap();
    assert_eq!(migrated.schema_version().unwrap(), 2);
    let t = migrated.shared_sessions().unwrap();
    assert!(t.first_use("jti-1", 100, 10).unwrap());
    assert!(
        !again
            .shared_sessions()
            .unwrap()
            .first_use("jti-1", 100, 50)
            .unwrap(),
        "replayed on another replica"
    );
    assert!(
        t.first_use("jti-1", 300, 100).unwrap(),
        "usable again once expired"
    );
    // A newer schema is refused, naming both versions.
    pg.psql("suite", "UPDATE veil_schema SET version = 99");
    let e = PgStore::open(&pg.url("suite"))
        .err()
        .expect("newer schema refused")
        .to_string();
    assert!(
        e.contains("schema version 99") && e.contains("up to 2"),
        "{e}"
    );
    // A bad connection string is refused with the expected form.
    let e = PgStore::open("postgres://veil@localhost:notaport/db")
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("expected postgres://"), "{e}");
}

#[test]
fn replicas_starting_together_migrate_once_and_share_one_signing_key() {
    let pg = Postgres::start();
    pg.create_db("race");
    let url = pg.url("race");
    let keys: Vec<Vec<u8>> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..6u8)
            .map(|i| {
                let url = url.clone();
                sc.spawn(move || {
                    let s = PgStore::open(&url).unwrap();
                    s.put_sealed_meta_if_absent("k", &blob("k1", i))
                        .unwrap()
                        .nonce
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(keys.windows(2).all(|w| w[0] == w[1]), "{keys:?}");
    assert_eq!(pg.psql("race", "SELECT count(*) FROM veil_schema"), "1");
}

fn limits() -> SessionLimits {
    SessionLimits {
        max_attested: 3,
        max_unattested: 8,
        unattested_per_source: 2,
        unattested_timeout: Duration::from_secs(10),
    }
}

fn kek() -> Kek {
    Kek::from_bytes(&[7u8; 32]).unwrap()
}

/// The session checks both session tables pass.
fn session_suite(s: &Sessions) {
    let src = |i: u8| SourceKey::V4([10, 0, 0, i]);
    s.open("a".into(), "sim".into(), "n-a".into(), src(1), 100, 400)
        .unwrap();
    // The challenge is taken once.
    let Session::Authed { nonce, .. } = s.take_for_attest("a", 101).unwrap() else {
        panic!("authed")
    };
    assert_eq!(nonce, "n-a");
    assert_eq!(s.take_for_attest("a", 101).unwrap_err(), Lookup::Unknown);
    let attested = |token: &str| Session::Attested {
        tee: "sim".into(),
        nonce: "n-a".into(),
        token: token.into(),
        expires: 400,
    };
    s.attested("a".into(), attested("tok-1"), 101).unwrap();
    match s.get("a", 102).unwrap() {
        Session::Attested { token, .. } => assert_eq!(token, "tok-1"),
        other => panic!("{other:?}"),
    }
    s.reissue("a", "tok-2".into(), 103).unwrap();
    match s.take_for_attest("a", 103).unwrap() {
        Session::Attested { token, .. } => assert_eq!(token, "tok-2", "re-attestation kept"),
        other => panic!("{other:?}"),
    }
    assert_eq!(s.get("a", 400).unwrap_err(), Lookup::Expired(400));
    assert_eq!(s.reissue("gone", "t".into(), 103), Err(Lookup::Unknown));
    // Un-attested sessions time out early and are evicted per source.
    s.open("b".into(), "sim".into(), "n".into(), src(2), 100, 400)
        .unwrap();
    assert_eq!(s.get("b", 110).unwrap_err(), Lookup::Expired(110));
    for i in 0..5 {
        s.open(format!("f{i}"), "sim".into(), "n".into(), src(9), 200, 500)
            .unwrap();
    }
    s.open("legit".into(), "sim".into(), "n".into(), src(3), 200, 500)
        .unwrap();
    assert_eq!(
        s.unattested(&src(9)).1,
        2,
        "the flooding source keeps its newest 2"
    );
    assert!(s.get("f4", 201).is_ok() && s.get("f3", 201).is_ok());
    assert_eq!(s.get("f0", 201).unwrap_err(), Lookup::Unknown);
    assert!(s.get("legit", 201).is_ok());
    assert!(s.evicted() >= 3);
    // The attested cap.
    for id in ["x", "y", "z"] {
        s.attested(id.into(), attested("t"), 200).unwrap();
    }
    assert_eq!(
        s.attested("w".into(), attested("t"), 200),
        Err(Lookup::Full(3))
    );
    s.purge(1000).unwrap();
    assert_eq!(s.len(), 0);
}

#[test]
fn memory_and_postgres_sessions_pass_the_session_suite() {
    session_suite(&Sessions::new(limits()));
    let pg = Postgres::start();
    let store: Arc<dyn Store> = Arc::new(pg_db(&pg, "sessions"));
    let s = Sessions::for_store(limits(), &store, kek());
    assert!(s.is_shared());
    session_suite(&s);
    // The token is kept sealed, never in clear.
    s.attested(
        "sealed".into(),
        Session::Attested {
            tee: "sim".into(),
            nonce: "n".into(),
            token: "secret-token-text".into(),
            expires: u64::MAX / 2,
        },
        1,
    )
    .unwrap();
    let raw = pg.psql("sessions", "SELECT token FROM sessions WHERE id = 'sealed'");
    assert!(
        !raw.is_empty() && !raw.contains("secret-token-text"),
        "{raw}"
    );
    // Another replica (its own pool) reads it.
    let other: Arc<dyn Store> = Arc::new(PgStore::open(&pg.url("sessions")).unwrap());
    let s2 = Sessions::for_store(limits(), &other, kek());
    match s2.get("sealed", 2).unwrap() {
        Session::Attested { token, .. } => assert_eq!(token, "secret-token-text"),
        o => panic!("{o:?}"),
    }
}

#[test]
fn a_challenge_is_taken_by_exactly_one_of_many_replicas() {
    let pg = Postgres::start();
    pg.create_db("once");
    let url = pg.url("once");
    let replicas: Vec<Sessions> = (0..8)
        .map(|_| {
            let st: Arc<dyn Store> = Arc::new(PgStore::open(&url).unwrap());
            Sessions::for_store(SessionLimits::default(), &st, kek())
        })
        .collect();
    let now = veil_kbs::state::now();
    for round in 0..20 {
        let id = format!("c{round}");
        replicas[0]
            .open(
                id.clone(),
                "sim".into(),
                "n".into(),
                SourceKey::V4([1, 2, 3, 4]),
                now,
                now + 300,
            )
            .unwrap();
        let wins = std::thread::scope(|sc| {
            let hs: Vec<_> = replicas
                .iter()
                .map(|r| {
                    let id = id.clone();
                    sc.spawn(move || r.take_for_attest(&id, now).is_ok())
                })
                .collect();
            hs.into_iter()
                .filter(|_| true)
                .map(|h| h.join().unwrap())
                .filter(|w| *w)
                .count()
        });
        assert_eq!(
            wins, 1,
            "round {round}: the challenge was taken {wins} times"
        );
    }
}

#[test]
fn postgres_down_is_unavailable_naming_the_store_then_recovers_by_itself() {
    let mut pg = Postgres::start();
    let s = pg_db(&pg, "outage");
    s.put_resource("a/b/c", 1, &blob("k1", 1), 1).unwrap();
    pg.stop();
    let t = Instant::now();
    let e = s.get_resource("a/b/c").expect_err("down");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("PostgreSQL") && msg.contains("outage"),
        "{msg}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "failed fast: {:?}",
        t.elapsed()
    );
    assert!(
        s.append_audit(&rec(1, "admin", "x"))
            .unwrap_err()
            .is_unavailable()
    );
    pg.start_again();
    // The pool replaces its broken connections: no restart of the store.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match s.get_resource("a/b/c") {
            Ok(Some(_)) => break,
            r => assert!(Instant::now() < deadline, "not recovered: {:?}", r.err()),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    s.append_audit(&rec(2, "admin", "y")).unwrap();
}

#[test]
fn postgres_over_tls_verifies_the_server_and_refuses_what_it_cannot_verify() {
    use veil_kbs::store::postgres::PgTls;
    let tls = veil_kbs::tlsgen::generate(&["127.0.0.1".into()], 10, 10).unwrap();
    let pg = Postgres::start_tls(&tls.cert_chain, &tls.key);
    pg.create_db("tls");
    let url = pg.tcp_url("tls");

    // The right CA: TLS in PostgreSQL's own view, and the store works.
    let verify = PgTls::Verify(tls.ca_cert.as_bytes().to_vec());
    let s = PgStore::open_with(&url, &verify).unwrap_or_else(|e| panic!("{e}"));
    assert!(s.tls_in_use().unwrap(), "pg_stat_ssl says TLS");
    assert!(s.describe().contains("TLS, verified"), "{}", s.describe());
    s.put_resource("a/t/1", 1, &blob("k", 1), 1).unwrap();
    assert!(s.get_resource("a/t/1").unwrap().is_some());

    // Without --store-ca the same server is reached in plaintext (what a
    // Unix socket or private network gives), never "TLS unverified".
    let plain = PgStore::open(&url).unwrap();
    assert!(!plain.tls_in_use().unwrap());

    // Another CA: refused, naming the certificate check.
    let other = veil_kbs::tlsgen::generate(&["127.0.0.1".into()], 10, 10).unwrap();
    let e = PgStore::open_with(&url, &PgTls::Verify(other.ca_cert.as_bytes().to_vec()))
        .err()
        .expect("an unknown issuer is refused")
        .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // The right CA but a certificate for another name (verify-full).
    let named = veil_kbs::tlsgen::generate(&["db.example".into()], 10, 10).unwrap();
    let pg2 = Postgres::start_tls(&named.cert_chain, &named.key);
    pg2.create_db("tls");
    let e = PgStore::open_with(
        &pg2.tcp_url("tls"),
        &PgTls::Verify(named.ca_cert.as_bytes().to_vec()),
    )
    .err()
    .expect("a certificate for another host is refused")
    .to_string();
    assert!(e.to_lowercase().contains("certificate"), "{e}");

    // sslmode=require with nothing to verify against: refused, saying how.
    let e = PgStore::open(&format!("{url}?sslmode=require"))
        .err()
        .expect("require without a CA")
        .to_string();
    assert!(e.contains("--store-ca"), "{e}");
    // A CA file with no certificate, and TLS asked over a Unix socket.
    let e = PgStore::open_with(&url, &PgTls::Verify(b"not pem".to_vec()))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("no certificate"), "{e}");
    let e = PgStore::open_with(&pg.url("tls"), &verify)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("Unix socket"), "{e}");
}

#[test]
fn kek_rotation_on_postgres_waits_for_every_replica_to_stop() {
    let pg = Postgres::start();
    let s = pg_db(&pg, "rotate");
    let (old, new) = (
        Kek::from_bytes(&[0x11; 32]).unwrap(),
        Kek::from_bytes(&[0x22; 32]).unwrap(),
    );
    s.put_resource("a/t/1", 6, &old.seal("resource:a/t/1", b"secret"), 1)
        .unwrap();
    // Two running replicas hold their share of the KEK lock.
    let r1 = s.hold_replica_lock().unwrap();
    let other = PgStore::open(&pg.url("rotate")).unwrap();
    let r2 = other.hold_replica_lock().unwrap();
    let e = veil_kbs::secrets::rotate_kek(&s, &old, &new).unwrap_err();
    assert!(e.contains("refused: 2 KBS replica(s)"), "{e}");
    assert_eq!(s.kek_ids().unwrap(), [old.id()], "nothing re-sealed");
    drop(r1);
    let e = veil_kbs::secrets::rotate_kek(&s, &old, &new).unwrap_err();
    assert!(e.contains("refused: 1 KBS replica(s)"), "{e}");
    // The last replica stops: a stopped replica releases its share before
    // it hangs up, so a rotation right after it counts none.
    drop(r2);
    drop(other);
    let n = veil_kbs::secrets::rotate_kek(&s, &old, &new).unwrap();
    assert_eq!(n, 1);
    let (_, b) = s.get_resource("a/t/1").unwrap().unwrap();
    assert_eq!(
        new.open("resource:a/t/1", &b).unwrap().as_slice(),
        b"secret"
    );
}
