//! The agent and a real KBS (veil-kbs on loopback): attestation at start,
//! secrets released to the sandbox, and the workload API re-attesting after
//! the KBS restarts. Needs root, as in CI.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use veil_kbs::{RunningServer, ServerConfig};
use veil_kbs_client::admin::{AdminClient, AdminKey, parse_admin_public_key};
use veil_kbs_client::{ClientConfig, ResourcePath};

/// Release to any attested workload whose evidence binds init-data.
const POLICY: &str = "package policy\nimport rego.v1\n\ndefault allow := false\n\nallow if {\n\tevidence := input.submods.cpu0[\"ear.veraison.annotated-evidence\"]\n\tcount(evidence.init_data) > 0\n}\n";

fn kbs(
    dir: &Path,
    port: u16,
    root: veil_attest::sim::SimRootKey,
    admin: &AdminKey,
    secret: &[u8],
) -> RunningServer {
    let kek = veil_kbs::Kek::from_bytes(&[7u8; 32]).unwrap();
    let mut cfg = ServerConfig::new(dir.to_path_buf(), kek);
    cfg.listen = format!("127.0.0.1:{port}").parse().unwrap();
    cfg.sim_root = Some(root);
    cfg.dev = true;
    cfg.admin_keys = vec![parse_admin_public_key(&admin.public_pem().unwrap()).unwrap()];
    let s = veil_kbs::spawn(cfg, 1).unwrap();
    let mut c = ClientConfig::new(s.url());
    c.allow_http = true;
    let a = AdminClient::new(&c, AdminKey::from_pem(&admin.to_pem().unwrap()).unwrap()).unwrap();
    a.set_resource_policy(None, POLICY).unwrap();
    a.put_resource(&ResourcePath::parse("default/secret/db").unwrap(), secret)
        .unwrap();
    s
}

/// GET through the workload API socket of a running sandbox, reached from
/// the host through the agent's mount namespace (/proc/PID/root).
fn api_get(sock: &Path, path: &str) -> (u16, Vec<u8>) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: veil\r\n\r\n").unwrap();
    let mut r = Vec::new();
    s.read_to_end(&mut r).unwrap();
    let end = r.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&r[..end])
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, r[end + 4..].to_vec())
}

#[test]
fn secrets_are_released_and_the_api_reattests_after_a_kbs_restart() {
    let env = env();
    busybox_image(
        &env.layout,
        env.dir.path(),
        "app:1",
        "cat /run/veil/secrets/db",
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let admin = AdminKey::generate();
    let server = kbs(
        &env.dir.path().join("kbs1"),
        port,
        env.platform.root(),
        &admin,
        b"s3cret-one",
    );
    let url = format!("http://127.0.0.1:{port}");
    let (init, _) = init_data_for(&pod("db", "app:1", ""), env.layout.root(), &url);
    // Ask for the secret as a credential in cdh.toml (what `veil run --secret` does).
    let text = String::from_utf8(init).unwrap().replacen(
        "credentials = []",
        "credentials = [{ path = \"/run/veil/secrets/db\", resource_uri = \"kbs:///default/secret/db\" }]",
        1,
    );
    let cfg = env.config("k1", text.into_bytes());
    let sb = env.launch(&cfg);
    let att = &sb.hello().attestation;
    assert_eq!(
        (att.status.as_str(), att.kbs_url.as_str()),
        ("ok", url.as_str()),
        "{att:?}"
    );
    assert_eq!(att.secrets, vec!["db".to_string()]);

    let sock: PathBuf = PathBuf::from(format!("/proc/{}/root", sb.agent_pid().unwrap()))
        .join(cfg.dir.join("guest/api.sock").strip_prefix("/").unwrap());
    let (code, body) = api_get(&sock, "/cdh/resource/default/secret/db");
    assert_eq!((code, body.as_slice()), (200, &b"s3cret-one"[..]));

    // KBS down: bounded retries, then a clear error.
    server.stop();
    let t = Instant::now();
    let (code, body) = api_get(&sock, "/cdh/resource/default/secret/db");
    let msg = String::from_utf8_lossy(&body).to_string();
    assert_eq!(code, 502, "{msg}");
    assert!(msg.contains("failed after 5 attempts"), "{msg}");
    assert!(t.elapsed() < Duration::from_secs(30));

    // KBS back with a fresh store (a new token key): the next fetch re-attests and succeeds.
    let _server = kbs(
        &env.dir.path().join("kbs2"),
        port,
        env.platform.root(),
        &admin,
        b"s3cret-two",
    );
    let (code, body) = api_get(&sock, "/cdh/resource/default/secret/db");
    assert_eq!(
        (code, body.as_slice()),
        (200, &b"s3cret-two"[..]),
        "{}",
        String::from_utf8_lossy(&body)
    );
    sb.stop(Duration::from_secs(5)).unwrap();
}
