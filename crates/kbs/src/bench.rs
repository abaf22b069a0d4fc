//! `veil bench kbs`: full RCAR handshakes (auth + attest with sim evidence +
//! one resource GET and its decryption) per second against an in-process
//! server on loopback, with N concurrent clients; p50/p99 latency; and the
//! ratio to the cryptography alone (the same primitives one handshake needs,
//! timed in the same run on one core).

use std::fmt;
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use veil_attest::sim::{SimPlatformKey, SimReportBody};
use veil_kbs_client::admin::{AdminClient, AdminKey};
use veil_kbs_client::{ClientConfig, KbsClient, KeyType, ResourcePath, TeeKeyPair};

use crate::secrets::Kek;
use crate::simguest::SimGuest;
use crate::state::ServerConfig;

/// Benchmark parameters.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Concurrent clients (threads).
    pub clients: usize,
    /// Handshakes per client.
    pub handshakes_per_client: usize,
    /// Server runtime worker threads.
    pub server_workers: usize,
    /// TEE key type of the clients.
    pub key_type: KeyType,
    /// Iterations of the crypto-only baseline.
    pub crypto_iterations: usize,
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            clients: 4,
            handshakes_per_client: 50,
            server_workers: 2,
            key_type: KeyType::EcP256,
            crypto_iterations: 200,
        }
    }
}

/// Results.
#[derive(Debug, Clone)]
pub struct BenchReport {
    /// Parameters used.
    pub options: BenchOptions,
    /// Handshakes completed.
    pub handshakes: usize,
    /// Wall time of the load phase.
    pub wall: Duration,
    /// Median handshake latency.
    pub p50: Duration,
    /// 99th percentile latency.
    pub p99: Duration,
    /// Crypto-only cost of one handshake (one core).
    pub crypto_per_handshake: Duration,
    /// CPU cores available.
    pub cores: usize,
}

impl BenchReport {
    /// Handshakes per second.
    pub fn throughput(&self) -> f64 {
        self.handshakes as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Handshakes per second if only the cryptography ran, on all cores.
    pub fn crypto_throughput(&self) -> f64 {
        self.cores as f64 / self.crypto_per_handshake.as_secs_f64().max(1e-9)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "veil bench kbs: {} clients x {} handshakes (auth + sim attest + resource GET + JWE decrypt), {:?} TEE keys, plain HTTP on loopback, {} server workers, {} cores",
            self.options.clients,
            self.options.handshakes_per_client,
            self.options.key_type,
            self.options.server_workers,
            self.cores
        )?;
        writeln!(f, "  handshakes           {}", self.handshakes)?;
        writeln!(
            f,
            "  throughput           {:.1} handshakes/s",
            self.throughput()
        )?;
        writeln!(
            f,
            "  latency p50 / p99    {:.2} ms / {:.2} ms",
            ms(self.p50),
            ms(self.p99)
        )?;
        writeln!(
            f,
            "  baseline (crypto only, same run): {:.3} ms per handshake = {:.1} handshakes/s on {} cores",
            ms(self.crypto_per_handshake),
            self.crypto_throughput(),
            self.cores
        )?;
        writeln!(
            f,
            "  ratio                p50 latency / crypto cost = {:.2}x; throughput / crypto-bound throughput = {:.2}",
            self.p50.as_secs_f64() / self.crypto_per_handshake.as_secs_f64().max(1e-9),
            self.throughput() / self.crypto_throughput().max(1e-9)
        )
    }
}

/// Time the cryptography of one handshake: TEE key generation, sim report
/// signing (guest) and verification (ECDSA P-384), EAR token signing and
/// verification (ECDSA P-256), JWE encryption and decryption (ECDH + key
/// wrap + AES-256-GCM, or RSA-OAEP).
pub fn crypto_baseline(key_type: KeyType, iterations: usize) -> Result<Duration, String> {
    let platform = SimPlatformKey::generate();
    let root = platform.root();
    let token_key =
        crate::token::TokenSigner::from_key(p256::ecdsa::SigningKey::random(&mut OsRng))?;
    let claims = serde_json::json!({"iss": crate::token::ISSUER, "exp": 2, "submods": {}});
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    // RSA key generation would dominate and a client reuses nothing, so it
    // is part of the client cost in both the baseline and the handshake.
    let iterations = iterations.max(1);
    let start = Instant::now();
    for _ in 0..iterations {
        let kp = TeeKeyPair::generate(key_type).map_err(|e| e.to_string())?;
        let body = SimReportBody::new(&[7u8; 64], &[1u8; 48], &[]).map_err(|e| e.to_string())?;
        let ev = platform.evidence_json(&body);
        veil_attest::sim::verify(ev.as_bytes(), Some(&root)).map_err(|e| e.to_string())?;
        let token = token_key.sign(&claims)?;
        token_key.verify(&token, 1)?;
        let jwe = crate::jwe::encrypt(&kp.public_jwk(), &secret).map_err(|e| e.to_string())?;
        let out = kp.decrypt(&jwe).map_err(|e| e.to_string())?;
        if out.as_slice() != secret {
            return Err("baseline JWE round trip mismatch".into());
        }
    }
    Ok(start.elapsed() / iterations as u32)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// Run the benchmark.
pub fn run(opts: &BenchOptions) -> Result<BenchReport, String> {
    let dir = std::env::temp_dir().join(format!(
        "veil-kbs-bench-{}-{:x}",
        std::process::id(),
        OsRng.next_u64()
    ));
    let result = run_in(opts, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(opts: &BenchOptions, dir: &std::path::Path) -> Result<BenchReport, String> {
    let crypto = crypto_baseline(opts.key_type, opts.crypto_iterations)?;
    let kek = Kek::from_bytes(Kek::generate_hex().as_bytes()).map_err(|e| e.to_string())?;
    let platform = SimPlatformKey::generate();
    let admin = AdminKey::generate();
    let admin_pub = veil_kbs_client::admin::parse_admin_public_key(
        &admin.public_pem().map_err(|e| e.to_string())?,
    )
    .map_err(|e| e.to_string())?;
    let mut cfg = ServerConfig::new(dir.to_path_buf(), kek);
    cfg.listen = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    cfg.sim_root = Some(platform.root());
    cfg.dev = true;
    cfg.admin_keys = vec![admin_pub];
    let server = crate::serve::spawn(cfg, opts.server_workers).map_err(|e| e.to_string())?;
    let mut ccfg = ClientConfig::new(server.url());
    ccfg.allow_http = true;
    let admin = AdminClient::new(&ccfg, admin).map_err(|e| e.to_string())?;
    let path = ResourcePath::parse("bench/key/1").map_err(|e| e.to_string())?;
    let mut secret = [0u8; 32];
    OsRng.fill_bytes(&mut secret);
    admin
        .put_resource(&path, &secret)
        .map_err(|e| e.to_string())?;
    admin
        .set_resource_policy(Some("bench"), crate::policy::templates::ALLOW_ALL)
        .map_err(|e| e.to_string())?;
    let platform_pem = platform.to_pem().map_err(|e| e.to_string())?;

    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..opts.clients.max(1) {
        let ccfg = ccfg.clone();
        let path = path.clone();
        let pem = platform_pem.clone();
        let n = opts.handshakes_per_client.max(1);
        let key_type = opts.key_type;
        handles.push(std::thread::spawn(
            move || -> Result<Vec<Duration>, String> {
                let mut lat = Vec::with_capacity(n);
                for _ in 0..n {
                    let t = Instant::now();
                    let platform = SimPlatformKey::from_pem(&pem).map_err(|e| e.to_string())?;
                    let guest = SimGuest::new(platform, &[1u8; 48]);
                    let key = TeeKeyPair::generate(key_type).map_err(|e| e.to_string())?;
                    let mut client =
                        KbsClient::new(&ccfg, guest, key).map_err(|e| e.to_string())?;
                    client.attest().map_err(|e| e.to_string())?;
                    let v = client.get_resource(&path).map_err(|e| e.to_string())?;
                    if v.as_slice() != secret {
                        return Err("resource mismatch".into());
                    }
                    lat.push(t.elapsed());
                }
                Ok(lat)
            },
        ));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(
            h.join()
                .map_err(|_| "client thread panicked".to_string())??,
        );
    }
    let wall = start.elapsed();
    server.stop();
    all.sort();
    Ok(BenchReport {
        options: opts.clone(),
        handshakes: all.len(),
        wall,
        p50: percentile(&all, 0.50),
        p99: percentile(&all, 0.99),
        crypto_per_handshake: crypto,
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
    })
}
