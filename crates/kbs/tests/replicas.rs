//! Three KBS replicas on one PostgreSQL (Debian's, private to the test):
//! 32 clients run full handshakes (auth, attest, resource GET, JWE
//! decryption) round-robin across the replicas while an admin writes
//! resources; one replica is SIGKILLed mid-load. Then PostgreSQL itself is
//! restarted mid-load. Checked: no acknowledged write lost (and each is
//! readable on every replica as soon as it is acknowledged), no client
//! error other than failovers that succeeded on another replica, no nonce
//! accepted twice (counted in the audit log, in the database), an audit row
//! for every handshake; during the database outage the replicas answer 503
//! naming the store, and they recover by themselves.
//!
//! Replicas are real processes: this test binary re-run with
//! `VEIL_TEST_REPLICA` set serves one replica (see [`replica_process`]).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use veil_attest::sim::SimPlatformKey;
use veil_kbs::simguest::SimGuest;
use veil_kbs::{Kek, ServerConfig};
use veil_kbs_client::admin::{AdminClient, AdminKey};
use veil_kbs_client::http::Http;
use veil_kbs_client::{ClientConfig, KbsClient, KeyType, ResourcePath, TeeKeyPair};
use veil_testkit::postgres::Postgres;

const CLIENTS: usize = 32;
const MEASUREMENT: [u8; 48] = [0xab; 48];

/// Serve one replica when run as a child of [`replicas_share_postgres`]
/// (`VEIL_TEST_REPLICA` holds its settings); a no-op otherwise.
#[test]
fn replica_process() {
    let Ok(settings) = std::env::var("VEIL_TEST_REPLICA") else {
        return;
    };
    let s: serde_json::Value = serde_json::from_str(&settings).unwrap();
    let field = |k: &str| s[k].as_str().unwrap().to_string();
    let kek = Kek::from_bytes(field("kek").as_bytes()).unwrap();
    let mut cfg = ServerConfig::new(field("data_dir").into(), kek);
    cfg.store_url = Some(field("store"));
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls = None;
    cfg.dev = true;
    cfg.sim_root = Some(SimPlatformKey::from_pem(&field("platform")).unwrap().root());
    cfg.admin_keys =
        vec![veil_kbs_client::admin::parse_admin_public_key(&field("admin_pub")).unwrap()];
    let server = veil_kbs::spawn(cfg, 2).unwrap();
    println!("REPLICA_LISTENING {}", server.url());
    server.wait();
}

/// The replica processes, SIGKILLed on drop.
struct Replicas(Vec<Child>);

impl Drop for Replicas {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_replica(settings: &serde_json::Value, replicas: &mut Replicas) -> String {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "replica_process",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("VEIL_TEST_REPLICA", settings.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    replicas.0.push(child);
    let mut lines = BufReader::new(stdout).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("the replica exited before listening")
            .unwrap();
        // libtest may have printed "test replica_process ... " first.
        if let Some((_, u)) = line.split_once("REPLICA_LISTENING ") {
            break u.trim().to_string();
        }
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    url
}

fn http_cfg(urls: &[String]) -> ClientConfig {
    let mut c = ClientConfig::new(urls.join(","));
    c.allow_http = true;
    c.timeout = Duration::from_secs(10);
    c
}

/// Sets the flag when dropped: the load threads stop even when the
/// test's main thread panics inside the scope.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// What the load produced.
#[derive(Default)]
struct Tally {
    handshakes: AtomicU64,
    failovers: AtomicU64,
    errors: Mutex<Vec<String>>,
}

/// One client's loop: a full handshake with a fresh key per round, on the
/// replica list rotated by `i` (round-robin), fetching the newest
/// acknowledged resource; every round must succeed (failover included).
fn client_loop(
    i: usize,
    urls: &[String],
    platform_pem: &str,
    acked: &AtomicU64,
    stop: &AtomicBool,
    tally: &Tally,
    tolerate: &dyn Fn(&str) -> bool,
) {
    let mut rotated = urls.to_vec();
    rotated.rotate_left(i % urls.len());
    let cfg = http_cfg(&rotated);
    while !stop.load(Ordering::Relaxed) {
        let guest = SimGuest::new(
            SimPlatformKey::from_pem(platform_pem).unwrap(),
            &MEASUREMENT,
        );
        let mut c =
            KbsClient::new(&cfg, guest, TeeKeyPair::generate(KeyType::EcP256).unwrap()).unwrap();
        let want = acked.load(Ordering::SeqCst);
        let path = ResourcePath::parse(&format!("default/rep/{want}")).unwrap();
        let r = c.attest().and_then(|_| c.get_resource(&path));
        match r {
            Ok(v) => {
                assert_eq!(
                    v.as_slice(),
                    format!("value {want}").as_bytes(),
                    "{path} read back other bytes"
                );
                tally.handshakes.fetch_add(1, Ordering::Relaxed);
                if c.url() != rotated[0] {
                    tally.failovers.fetch_add(1, Ordering::Relaxed);
                }
            }
            Err(e) => {
                let e = e.to_string();
                if !tolerate(&e) {
                    tally
                        .errors
                        .lock()
                        .unwrap()
                        .push(format!("client {i}: {e}"));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// The admin's loop: write `default/rep/{n}` for n = 1, 2, … through the
/// replicas in turn, moving to the next replica on a failure; a write is
/// acknowledged when a replica answered 200.
fn admin_loop(admins: &[AdminClient], acked: &AtomicU64, stop: &AtomicBool, ok: &Mutex<Vec<u64>>) {
    let mut n = acked.load(Ordering::SeqCst) + 1;
    let mut which = 0;
    while !stop.load(Ordering::Relaxed) {
        let path = ResourcePath::parse(&format!("default/rep/{n}")).unwrap();
        match admins[which % admins.len()].put_resource(&path, format!("value {n}").as_bytes()) {
            Ok(()) => {
                ok.lock().unwrap().push(n);
                acked.store(n, Ordering::SeqCst);
                n += 1;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
        which += 1;
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn replicas_share_postgres() {
    if std::env::var_os("VEIL_TEST_REPLICA").is_some() {
        return;
    }
    let t0 = Instant::now();
    let mut pg = Postgres::start();
    pg.create_db("kbs");
    let dir = tempfile::tempdir().unwrap();
    let platform = SimPlatformKey::generate();
    let platform_pem = platform.to_pem().unwrap().to_string();
    let admin_key = AdminKey::generate();
    let admin_pem = admin_key.to_pem().unwrap().to_string();
    let kek = Kek::generate_hex().to_string();
    let mut replicas = Replicas(Vec::new());
    let urls: Vec<String> = (0..3)
        .map(|i| {
            let settings = serde_json::json!({
                "kek": kek, "store": pg.url("kbs"), "platform": platform_pem,
                "admin_pub": admin_key.public_pem().unwrap(),
                "data_dir": dir.path().join(format!("replica{i}")).display().to_string(),
            });
            start_replica(&settings, &mut replicas)
        })
        .collect();
    let admins: Vec<AdminClient> = urls
        .iter()
        .map(|u| {
            AdminClient::new(
                &http_cfg(std::slice::from_ref(u)),
                AdminKey::from_pem(&admin_pem).unwrap(),
            )
            .unwrap()
        })
        .collect();
    admins[1]
        .set_resource_policy(None, veil_kbs::policy::templates::ALLOW_ALL)
        .unwrap();
    admins[2]
        .put_resource(&ResourcePath::parse("default/rep/0").unwrap(), b"value 0")
        .unwrap();
    // The policy set on replica 1 reaches the others (they reload when
    // the configuration generation moves).
    std::thread::sleep(veil_kbs::serve::RELOAD_EVERY * 2);

    // Phase 1: load, and SIGKILL replica 0 in the middle of it.
    let acked = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let tally = Tally::default();
    let written = Mutex::new(Vec::new());
    std::thread::scope(|sc| {
        for i in 0..CLIENTS {
            let (urls, pem, acked, stop, tally) = (&urls, &platform_pem, &acked, &stop, &tally);
            sc.spawn(move || client_loop(i, urls, pem, acked, stop, tally, &|_| false));
        }
        sc.spawn(|| admin_loop(&admins, &acked, &stop, &written));
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_secs(4));
        eprintln!("phase 1: SIGKILL replica 0 ({})", urls[0]);
        let killed = &mut replicas.0[0];
        killed.kill().unwrap(); // SIGKILL
        killed.wait().unwrap();
        std::thread::sleep(Duration::from_secs(5));
        stop.store(true, Ordering::Relaxed);
    });
    let errors = tally.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "client errors: {errors:#?}");
    let phase1 = tally.handshakes.load(Ordering::Relaxed);
    let failovers = tally.failovers.load(Ordering::Relaxed);
    assert!(phase1 >= CLIENTS as u64, "only {phase1} handshakes");
    assert!(failovers > 0, "no client failed over after the kill");
    let written = written.into_inner().unwrap();
    assert!(written.len() > 10, "only {} admin writes", written.len());
    eprintln!(
        "phase 1: {phase1} full handshakes by {CLIENTS} clients on 3 replicas, {failovers} after a failover, {} admin writes acknowledged",
        written.len()
    );

    // No acknowledged write lost: each is in the database with its value.
    let stored: std::collections::BTreeSet<u64> = pg
        .psql(
            "kbs",
            "SELECT path FROM resources WHERE path LIKE 'default/rep/%'",
        )
        .lines()
        .filter_map(|l| l.rsplit('/').next()?.parse().ok())
        .collect();
    let lost: Vec<u64> = written
        .iter()
        .filter(|n| !stored.contains(n))
        .copied()
        .collect();
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // No nonce accepted twice, and an audit row for every handshake.
    let counts = pg.psql(
        "kbs",
        "SELECT count(*), count(DISTINCT (details::json)->>'nonce') FROM audit WHERE kind = 'attest' AND decision = 'allow'",
    );
    let (rows, distinct) = counts.split_once('|').unwrap();
    let (rows, distinct): (u64, u64) = (rows.parse().unwrap(), distinct.parse().unwrap());
    assert_eq!(rows, distinct, "a nonce was accepted twice");
    assert!(
        rows >= phase1,
        "{rows} attestation rows for {phase1} handshakes"
    );
    let releases: u64 = pg
        .psql(
            "kbs",
            "SELECT count(*) FROM audit WHERE kind = 'resource' AND decision = 'allow'",
        )
        .parse()
        .unwrap();
    assert!(
        releases >= phase1,
        "{releases} release rows for {phase1} releases"
    );

    // Phase 2: PostgreSQL restarts under load. The two live replicas answer
    // 503 naming the store meanwhile, and serve again by themselves.
    let live = urls[1..].to_vec();
    let tally = Tally::default();
    let stop = AtomicBool::new(false);
    let outage_seen = AtomicBool::new(false);
    let tolerate = |e: &str| {
        let ok = e.contains("HTTP 503") && e.contains("PostgreSQL");
        if ok {
            outage_seen.store(true, Ordering::Relaxed);
        }
        ok
    };
    let probe = Http::new(&http_cfg(&live[..1])).unwrap();
    std::thread::scope(|sc| {
        for i in 0..8 {
            let (urls, pem, acked, stop, tally, tolerate) =
                (&live, &platform_pem, &acked, &stop, &tally, &tolerate);
            sc.spawn(move || client_loop(i, urls, pem, acked, stop, tally, tolerate));
        }
        let _stop = StopOnDrop(&stop);
        std::thread::sleep(Duration::from_secs(1));
        pg.stop();
        eprintln!("phase 2: PostgreSQL stopped");
        let r = probe
            .send(
                "POST",
                "/kbs/v0/auth",
                &[],
                Some((
                    "application/json",
                    br#"{"version":"0.4.0","tee":"sim","extra-params":""}"#,
                )),
            )
            .unwrap();
        let body = String::from_utf8_lossy(&r.body).to_string();
        assert_eq!(r.status, 503, "{body}");
        assert!(
            body.contains("StoreUnavailable") && body.contains("PostgreSQL"),
            "{body}"
        );
        std::thread::sleep(Duration::from_secs(2));
        pg.start_again();
        let back = Instant::now();
        let before = tally.handshakes.load(Ordering::Relaxed);
        while tally.handshakes.load(Ordering::Relaxed) < before + 16 {
            assert!(
                back.elapsed() < Duration::from_secs(20),
                "the replicas did not recover"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "phase 2: serving again {:?} after PostgreSQL came back",
            back.elapsed()
        );
        stop.store(true, Ordering::Relaxed);
    });
    let errors = tally.errors.lock().unwrap().clone();
    assert!(
        errors.is_empty(),
        "errors other than 503 naming the store: {errors:#?}"
    );
    assert!(
        outage_seen.load(Ordering::Relaxed),
        "no client saw the outage"
    );
    eprintln!("replica test took {:?}", t0.elapsed());
}
