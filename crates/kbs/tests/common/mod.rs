//! Shared test fixture: a KBS on 127.0.0.1 over TLS (self-signed rcgen
//! certificate), an admin client, a sim platform.

#![allow(dead_code)]

use std::time::Duration;

use veil_attest::sim::SimPlatformKey;
use veil_kbs::simguest::SimGuest;
use veil_kbs::{Kek, RunningServer, ServerConfig, TlsFiles};
use veil_kbs_client::admin::{AdminClient, AdminKey};
use veil_kbs_client::http::{Http, HttpResponse};
use veil_kbs_client::{ClientConfig, KbsClient, KeyType, TeeKeyPair};

pub struct Fixture {
    pub server: Option<RunningServer>,
    pub dir: tempfile::TempDir,
    pub platform_pem: String,
    pub admin: AdminClient,
    pub client_cfg: ClientConfig,
    pub http: Http,
    pub kek_hex: String,
    pub admin_key_pem: String,
}

pub const MEASUREMENT: [u8; 48] = [0xab; 48];

pub struct Options {
    pub sim_root: bool,
    pub dev: bool,
    pub allow_sample: bool,
    pub session_timeout: Duration,
    pub token_ttl: Duration,
    pub max_body: usize,
    /// Plain HTTP on loopback instead of TLS (abuse tests: the load
    /// generator then measures the KBS, not TLS).
    pub plain_http: bool,
    /// Adjust the configuration last.
    pub tweak: fn(&mut ServerConfig),
    /// Dev mode: GPU nonces not compared (recorded GPU evidence).
    pub gpu_nonce_via_cpu: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            sim_root: true,
            dev: true,
            allow_sample: false,
            session_timeout: Duration::from_secs(300),
            token_ttl: Duration::from_secs(300),
            max_body: 64 * 1024,
            plain_http: false,
            tweak: |_| {},
            gpu_nonce_via_cpu: false,
        }
    }
}

pub fn start(opts: Options) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let cert =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert_path = dir.path().join("tls.crt");
    let key_path = dir.path().join("tls.key");
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let kek_hex = Kek::generate_hex().to_string();
    let kek = Kek::from_bytes(kek_hex.as_bytes()).unwrap();
    let platform = SimPlatformKey::generate();
    let admin_key = AdminKey::generate();
    let admin_pub =
        veil_kbs_client::admin::parse_admin_public_key(&admin_key.public_pem().unwrap()).unwrap();
    let mut cfg = ServerConfig::new(dir.path().join("data"), kek);
    cfg.listen = "127.0.0.1:0".parse().unwrap();
    cfg.tls = Some(TlsFiles {
        cert: cert_path,
        key: key_path,
    });
    cfg.admin_keys = vec![admin_pub];
    cfg.sim_root = opts.sim_root.then(|| platform.root());
    cfg.dev = opts.dev;
    cfg.insecure_allow_sample = opts.allow_sample;
    cfg.session_timeout = opts.session_timeout;
    cfg.token_ttl = opts.token_ttl;
    cfg.max_body_bytes = opts.max_body;
    cfg.dev_gpu_nonce_via_cpu_evidence = opts.gpu_nonce_via_cpu;
    if opts.plain_http {
        cfg.tls = None;
    }
    (opts.tweak)(&mut cfg);
    let server = veil_kbs::spawn(cfg, 2).unwrap();
    let mut client_cfg = ClientConfig::new(server.url());
    client_cfg.ca_pem = Some(cert.cert.pem().into_bytes());
    client_cfg.allow_http = opts.plain_http;
    let admin_key_pem = admin_key.to_pem().unwrap().to_string();
    let admin = AdminClient::new(&client_cfg, admin_key).unwrap();
    let http = Http::new(&client_cfg).unwrap();
    Fixture {
        server: Some(server),
        dir,
        platform_pem: platform.to_pem().unwrap().to_string(),
        admin,
        client_cfg,
        http,
        kek_hex,
        admin_key_pem,
    }
}

impl Fixture {
    pub fn guest(&self) -> SimGuest {
        SimGuest::new(
            SimPlatformKey::from_pem(&self.platform_pem).unwrap(),
            &MEASUREMENT,
        )
    }

    pub fn client(&self, key: KeyType) -> KbsClient<SimGuest> {
        KbsClient::new(
            &self.client_cfg,
            self.guest(),
            TeeKeyPair::generate(key).unwrap(),
        )
        .unwrap()
    }

    pub fn client_with(&self, guest: SimGuest) -> KbsClient<SimGuest> {
        KbsClient::new(
            &self.client_cfg,
            guest,
            TeeKeyPair::generate(KeyType::EcP256).unwrap(),
        )
        .unwrap()
    }

    pub fn post_json(&self, path: &str, cookie: Option<&str>, body: &str) -> HttpResponse {
        let c = cookie.map(|c| format!("kbs-session-id={c}"));
        let headers: Vec<(&str, &str)> = c.iter().map(|c| ("cookie", c.as_str())).collect();
        self.http
            .send(
                "POST",
                path,
                &headers,
                Some(("application/json", body.as_bytes())),
            )
            .unwrap()
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> HttpResponse {
        self.http.send("GET", path, headers, None).unwrap()
    }

    /// `/auth` for a TEE; returns (cookie, nonce).
    pub fn auth(&self, tee: &str) -> (String, String) {
        let r = self.post_json(
            "/kbs/v0/auth",
            None,
            &format!(r#"{{"version":"0.4.0","tee":"{tee}","extra-params":""}}"#),
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let cookie = r
            .set_cookies
            .iter()
            .find_map(|c| c.strip_prefix("kbs-session-id="))
            .unwrap();
        let cookie = cookie.split(';').next().unwrap().to_string();
        let ch: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        (cookie, ch["nonce"].as_str().unwrap().to_string())
    }
}

/// Assert an RFC 7807 refusal: status, error type and a detail substring.
pub fn assert_refused(r: &HttpResponse, status: u16, kind: &str, detail: &str) {
    let body = String::from_utf8_lossy(&r.body);
    assert_eq!(r.status, status, "body: {body}");
    let v: serde_json::Value =
        serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(
        v["type"].as_str().unwrap(),
        format!("https://github.com/confidential-containers/kbs/errors/{kind}"),
        "body: {body}"
    );
    assert!(
        v["detail"].as_str().unwrap().contains(detail),
        "detail {:?} lacks {detail:?}",
        v["detail"]
    );
    assert!(!body.contains("ciphertext"), "nothing may be released");
}

/// The allow-all resource policy template.
pub fn templates_allow_all() -> &'static str {
    veil_kbs::policy::templates::ALLOW_ALL
}
