//! `veil kbs` end to end through the binary, over HTTP on 127.0.0.1: keys,
//! serve, admin commands, a guest fetch with sim evidence; SIGKILL right
//! after an acknowledged put, restart, the resource is there and decrypts;
//! the plaintext is nowhere in the data directory.

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_testkit::kbs::{DevKbs, make_keys};
use veil_testkit::run_ok;

const VEIL: &str = env!("CARGO_BIN_EXE_veil");

fn veil() -> Command {
    Command::new(VEIL)
}

/// `veil kbs serve` on a free port with the keys `make_keys` put in `dir`.
fn serve(dir: &Path) -> DevKbs {
    DevKbs::serve(Path::new(VEIL), dir)
}

/// `veil kbs serve ARGS --data-dir DIR/DATA`, with no KEK in the
/// environment, exits 2 with `needle` in stderr.
fn serve_refused(dir: &Path, data: &str, args: &[&str], needle: &str) {
    let out = veil()
        .env_remove("VEIL_KBS_KEK")
        .args(["kbs", "serve"])
        .args(args)
        .arg("--data-dir")
        .arg(dir.join(data))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains(needle));
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn serve_put_sigkill_restart_fetch() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    let marker = format!("cli-secret-{}", std::process::id());
    std::fs::write(d.join("secret.bin"), &marker).unwrap();

    let kbs = serve(d);
    // Acknowledged put, then SIGKILL at once: no graceful shutdown.
    let out = run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "repo/key/one"])
            .arg(d.join("secret.bin")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("stored repo/key/one"));
    kbs.kill();

    // The plaintext is in no file of the data dir (database, WAL, …).
    let files = files_under(&d.join("data"));
    assert!(!files.is_empty());
    for f in &files {
        let bytes = std::fs::read(f).unwrap();
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker.as_bytes()),
            "plaintext found in {}",
            f.display()
        );
    }

    let kbs = serve(d);
    let out = run_ok(
        kbs.client()
            .args(["kbs", "resource", "list", "--insecure-http"]),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("repo/key/one"));

    // No policy yet: the guest is refused (exit 1, with the reason).
    let out = kbs
        .sim_guest()
        .args(["--tee", "sim", "repo/key/one"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("PolicyDeny"));

    run_ok(kbs.client().args([
        "kbs",
        "policy",
        "set",
        "--insecure-http",
        "--scope",
        "repo",
        "--template",
        "allow-all",
    ]));
    run_ok(
        kbs.sim_guest()
            .args(["--tee", "sim", "--key-type", "rsa2048", "--out"])
            .arg(d.join("got.bin"))
            .arg("kbs:///repo/key/one"),
    );
    assert_eq!(std::fs::read_to_string(d.join("got.bin")).unwrap(), marker);
    let out = run_ok(kbs.sim_guest().arg("repo/key/one"));
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&marker);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), b64);

    let out = run_ok(kbs.client().args(["kbs", "audit", "--insecure-http"]));
    let audit = String::from_utf8_lossy(&out.stdout);
    assert!(audit.contains("put resource"), "{audit}");
    assert!(
        audit.contains("released by policy scope \"repo\""),
        "{audit}"
    );
    assert!(audit.contains("no resource policy covers"), "{audit}");
}

#[test]
fn serve_refuses_insecure_setups() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    run_ok(
        veil()
            .args(["kbs", "kek-generate", "--out"])
            .arg(d.join("kek.hex")),
    );
    let kek = d.join("kek.hex");
    let kek = kek.to_str().unwrap();
    serve_refused(d, "data", &["--kek-file", kek], "TLS is required");
    serve_refused(
        d,
        "data",
        &[
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--kek-file",
            kek,
        ],
        "refusing plain HTTP",
    );
    // No KEK: refused before anything is created.
    serve_refused(d, "data2", &["--insecure-http"], "VEIL_KBS_KEK");
    assert!(!d.join("data2").exists());
}

/// `rotate-kek` on the data dir of a running server is refused, naming the
/// server's PID, and changes nothing; once the server stops it works, and
/// the server starts again under the new KEK with the secret intact.
#[test]
fn rotate_kek_refused_while_a_server_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    std::fs::write(d.join("secret.bin"), "rotate-me").unwrap();
    run_ok(
        veil()
            .args(["kbs", "kek-generate", "--out"])
            .arg(d.join("kek-new.hex")),
    );
    let rotate = || {
        let mut c = veil();
        c.args(["kbs", "rotate-kek", "--data-dir"])
            .arg(d.join("data"))
            .arg("--old-kek-file")
            .arg(d.join("kek.hex"))
            .arg("--new-kek-file")
            .arg(d.join("kek-new.hex"));
        c
    };
    let allow_and_fetch = |kbs: &DevKbs| {
        run_ok(kbs.client().args([
            "kbs",
            "policy",
            "set",
            "--insecure-http",
            "--template",
            "allow-all",
        ]));
        run_ok(
            kbs.sim_guest()
                .arg("--out")
                .arg(d.join("got.bin"))
                .arg("repo/key/r"),
        );
        assert_eq!(
            std::fs::read_to_string(d.join("got.bin")).unwrap(),
            "rotate-me"
        );
        std::fs::remove_file(d.join("got.bin")).unwrap();
    };

    let kbs = serve(d);
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "repo/key/r"])
            .arg(d.join("secret.bin")),
    );
    let out = rotate().output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("in use by a running KBS (PID "), "{err}");
    // Nothing changed: the running server still releases the secret.
    allow_and_fetch(&kbs);
    kbs.kill();

    let out = run_ok(&mut rotate());
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-sealed"));
    std::fs::rename(d.join("kek-new.hex"), d.join("kek.hex")).unwrap();
    let kbs = serve(d);
    allow_and_fetch(&kbs);
}

/// A KBS on PostgreSQL over verified TLS (`--store-ca`): it serves; its KEK
/// cannot be rotated while it runs (the refusal says how many replicas hold
/// the KEK lock); once it is stopped `rotate-kek --store` re-seals, and a
/// replica with the new KEK releases the same secret.
#[test]
fn postgres_store_over_tls_and_kek_rotation_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    let tls = veil_kbs::tlsgen::generate(&["127.0.0.1".into()], 10, 10).unwrap();
    let pg = veil_testkit::postgres::Postgres::start_tls(&tls.cert_chain, &tls.key);
    pg.create_db("kbs");
    std::fs::write(d.join("pg-ca.pem"), &tls.ca_cert).unwrap();
    let ca = d.join("pg-ca.pem");
    let url = pg.tcp_url("kbs");
    let store_args = ["--store", url.as_str(), "--store-ca", ca.to_str().unwrap()];
    std::fs::write(d.join("secret.bin"), "over-tls").unwrap();
    run_ok(
        veil()
            .args(["kbs", "kek-generate", "--out"])
            .arg(d.join("kek-new.hex")),
    );
    let fetch = |kbs: &DevKbs| {
        run_ok(kbs.client().args([
            "kbs",
            "policy",
            "set",
            "--insecure-http",
            "--template",
            "allow-all",
        ]));
        run_ok(
            kbs.sim_guest()
                .arg("--out")
                .arg(d.join("got.bin"))
                .arg("repo/key/r"),
        );
        assert_eq!(
            std::fs::read_to_string(d.join("got.bin")).unwrap(),
            "over-tls"
        );
        std::fs::remove_file(d.join("got.bin")).unwrap();
    };
    let rotate = || {
        veil()
            .env_remove("VEIL_KBS_STORE")
            .args(["kbs", "rotate-kek"])
            .args(store_args)
            .arg("--old-kek-file")
            .arg(d.join("kek.hex"))
            .arg("--new-kek-file")
            .arg(d.join("kek-new.hex"))
            .output()
            .unwrap()
    };

    let kbs = DevKbs::serve_with(Path::new(VEIL), d, &store_args);
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "repo/key/r"])
            .arg(d.join("secret.bin")),
    );
    fetch(&kbs);
    assert_eq!(
        pg.psql(
            "kbs",
            "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.application_name = 'veil-kbs' AND NOT s.ssl"
        ),
        "0",
        "every connection of the KBS is encrypted"
    );
    let out = rotate();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refused: 1 KBS replica(s)"), "{err}");
    fetch(&kbs);
    kbs.kill();

    // The dead replica's backend lets go of its lock as soon as PostgreSQL
    // notices the closed connection.
    let t0 = std::time::Instant::now();
    loop {
        let out = rotate();
        if out.status.success() {
            assert!(String::from_utf8_lossy(&out.stdout).contains("re-sealed"));
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("refused: 1 KBS replica(s)") && t0.elapsed().as_secs() < 10,
            "{err}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::fs::rename(d.join("kek-new.hex"), d.join("kek.hex")).unwrap();
    let kbs = DevKbs::serve_with(Path::new(VEIL), d, &store_args);
    fetch(&kbs);
}

/// `veil kbs audit | head`: a reader that has gone away ends the command
/// quietly (status 0, no panic message), in text and in JSON.
#[test]
fn listing_into_a_closed_pipe_exits_quietly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    let kbs = serve(d);
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "list", "--insecure-http"]),
    );
    for json in [false, true] {
        // A socket whose peer is gone: writes fail with EPIPE, as on a pipe.
        let (reader, writer) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(reader);
        let writer = std::os::fd::OwnedFd::from(writer);
        let mut c = kbs.client();
        c.args(["kbs", "audit", "--insecure-http"]);
        if json {
            c.arg("--json");
        }
        let out = c.stdout(writer).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{err}");
        assert!(err.is_empty(), "{err}");
    }
}

/// `veil kbs serve` with TLS files on a free port; returns once it listens.
fn serve_tls(dir: &Path, cert: &Path, key: &Path) -> (std::process::Child, String) {
    use std::io::BufRead;
    let port = veil_testkit::free_port();
    let mut child = veil()
        .args(["kbs", "serve", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--kek-file")
        .arg(dir.join("kek.hex"))
        .arg("--admin-pubkey")
        .arg(dir.join("admin.pub"))
        .arg("--tls-cert")
        .arg(cert)
        .arg("--tls-key")
        .arg(key)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening"), "{line}");
    (child, format!("https://127.0.0.1:{port}"))
}

/// A plain self-signed `openssl req -x509` certificate is a CA certificate,
/// which rustls refuses as a server certificate: the client says so and
/// what to do (`veil kbs tls-keygen`); without `--ca` it names the flag;
/// a `tls-keygen` pair works, with the CA from `VEIL_KBS_CA`; plain HTTP
/// names `--insecure-http`, and `VEIL_KBS_INSECURE_HTTP=1` allows it.
#[test]
fn tls_errors_give_advice_and_tls_keygen_works() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    let status = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(d.join("ossl-key.pem"))
        .arg("-out")
        .arg(d.join("ossl-cert.pem"))
        .output()
        .unwrap();
    assert!(status.status.success(), "{status:?}");
    let list = |url: &str| {
        let mut c = veil();
        c.env_remove("VEIL_KBS_CA")
            .env_remove("VEIL_KBS_INSECURE_HTTP")
            .env("VEIL_KBS_URL", url)
            .env("VEIL_KBS_ADMIN_KEY", d.join("admin.key"))
            .args(["kbs", "resource", "list"]);
        c
    };

    let (mut child, url) = serve_tls(d, &d.join("ossl-cert.pem"), &d.join("ossl-key.pem"));
    let out = list(&url)
        .arg("--ca")
        .arg(d.join("ossl-cert.pem"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("veil kbs tls-keygen --san HOST"), "{err}");
    assert!(err.contains("CaUsedAsEndEntity"), "{err}");
    child.kill().unwrap();
    child.wait().unwrap();

    run_ok(
        veil()
            .current_dir(d)
            .args(["kbs", "tls-keygen", "--san", "127.0.0.1"]),
    );
    let (mut child, url) = serve_tls(d, &d.join("kbs-cert.pem"), &d.join("kbs-key.pem"));
    let out = list(&url).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pass its CA certificate with --ca FILE (or VEIL_KBS_CA=FILE)"),
        "{err}"
    );
    run_ok(list(&url).env("VEIL_KBS_CA", d.join("kbs-ca.pem")));
    child.kill().unwrap();
    child.wait().unwrap();

    let kbs = serve(d);
    let out = list(&kbs.url()).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--insecure-http (or VEIL_KBS_INSECURE_HTTP=1)"),
        "{err}"
    );
    run_ok(list(&kbs.url()).env("VEIL_KBS_INSECURE_HTTP", "1"));
}

fn is_rfc3339(v: &serde_json::Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.len() == 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z') && s.starts_with("20")
    })
}

/// Listings: `--json` on each, times in RFC 3339 in text and JSON,
/// `resource info` (and its alias `get`) as the help names it.
#[test]
fn listings_have_json_and_rfc3339_times() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    std::fs::write(d.join("v.bin"), "v").unwrap();
    let kbs = serve(d);
    let json = |args: &[&str]| -> serde_json::Value {
        let out = run_ok(kbs.client().args(args).args(["--insecure-http", "--json"]));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "a/b/c"])
            .arg(d.join("v.bin")),
    );
    let list = json(&["kbs", "resource", "list"]);
    assert_eq!(list[0]["path"], "a/b/c");
    assert!(is_rfc3339(&list[0]["updated_at"]), "{list}");
    for sub in ["info", "get"] {
        let out = run_ok(
            kbs.client()
                .args(["kbs", "resource", sub, "--insecure-http", "a/b/c"]),
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(is_rfc3339(&v["updated_at"]), "{v}");
    }
    let audit = json(&["kbs", "audit"]);
    assert!(is_rfc3339(&audit[0]["ts"]), "{audit}");
    let text = run_ok(kbs.client().args(["kbs", "audit", "--insecure-http"]));
    let text = String::from_utf8_lossy(&text.stdout);
    let first = text.lines().next().unwrap();
    assert!(
        is_rfc3339(&first.split(' ').nth(1).unwrap().into()),
        "{text}"
    );
    assert!(json(&["kbs", "policy", "get"]).is_array());
    assert!(json(&["kbs", "reference-value", "list"]).is_object());
}

#[test]
fn serve_flags_set_the_admin_audience_and_the_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    let kbs = DevKbs::serve_with(
        Path::new(VEIL),
        d,
        &[
            "--admin-audience",
            "kbs-test.example",
            "--max-connections-per-source",
            "7",
            "--unattested-sessions-per-source",
            "3",
            "--audit-refusal-rows",
            "2",
            "--snp-allowed-vmpl",
            "0",
            "--snp-allowed-vmpl",
            "1",
        ],
    );
    // A token for the default audience is refused, naming what is expected.
    let out = kbs
        .client()
        .args(["kbs", "resource", "list", "--insecure-http"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("kbs-test.example"), "{err}");
    // With the KBS's audience it works.
    run_ok(kbs.client().args([
        "kbs",
        "resource",
        "list",
        "--insecure-http",
        "--audience",
        "kbs-test.example",
    ]));
    // The limits are in force: 10 /auth from one address leave it 3
    // un-attested sessions.
    for _ in 0..10 {
        let r = ureq_post(
            &kbs.url(),
            "/kbs/v0/auth",
            r#"{"version":"0.4.0","tee":"sim","extra-params":""}"#,
        );
        assert_eq!(r, 200);
    }
    let metrics = ureq_get(&kbs.url(), "/metrics");
    assert!(
        metrics.contains("veil_kbs_sessions_unattested 3"),
        "{metrics}"
    );
    assert!(
        metrics.contains("veil_kbs_sessions_evicted_total 7"),
        "{metrics}"
    );
}

fn ureq_post(url: &str, path: &str, body: &str) -> u16 {
    let http = veil_kbs_client::http::Http::new(&{
        let mut c = veil_kbs_client::ClientConfig::new(url);
        c.allow_http = true;
        c
    })
    .unwrap();
    http.send(
        "POST",
        path,
        &[],
        Some(("application/json", body.as_bytes())),
    )
    .unwrap()
    .status
}

fn ureq_get(url: &str, path: &str) -> String {
    let http = veil_kbs_client::http::Http::new(&{
        let mut c = veil_kbs_client::ClientConfig::new(url);
        c.allow_http = true;
        c
    })
    .unwrap();
    String::from_utf8(http.send("GET", path, &[], None).unwrap().body).unwrap()
}

/// A stand-in for a Trustee KBS as far as scopes go: every request is
/// answered 404 `PluginNotFound` (what Trustee answers for an endpoint it
/// does not have); returns its URL and the request lines it saw.
fn trustee_like() -> (String, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            s.lock().unwrap().push(line.trim().to_string());
            let body = r#"{"type":"https://github.com/confidential-containers/kbs/errors/PluginNotFound","detail":"Plugin veil-capabilities not found"}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (url, seen)
}

#[test]
fn scoped_policy_set_is_refused_against_a_kbs_without_scopes() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    let (url, seen) = trustee_like();
    let out = veil()
        .env("VEIL_KBS_URL", &url)
        .env("VEIL_KBS_ADMIN_KEY", d.join("admin.key"))
        .args([
            "kbs",
            "policy",
            "set",
            "--insecure-http",
            "--scope",
            "app",
            "--template",
            "allow-all",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not keep resource policies per scope") && err.contains("--scope app"),
        "{err}"
    );
    // It asked, and set nothing.
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        vec!["GET /kbs/v0/veil-capabilities HTTP/1.1".to_string()]
    );

    // veil's own KBS says it has scopes: the same command works there.
    let kbs = serve(d);
    run_ok(kbs.client().args([
        "kbs",
        "policy",
        "set",
        "--insecure-http",
        "--scope",
        "app",
        "--template",
        "allow-all",
    ]));
}

#[test]
fn get_resource_with_sample_evidence_from_a_sample_mode_kbs() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    std::fs::write(d.join("secret.bin"), "sample-secret").unwrap();
    let kbs = DevKbs::serve_with(Path::new(VEIL), d, &["--insecure-allow-sample"]);
    run_ok(
        kbs.client()
            .args(["kbs", "resource", "put", "--insecure-http", "app/key/s"])
            .arg(d.join("secret.bin")),
    );
    run_ok(kbs.client().args([
        "kbs",
        "policy",
        "set",
        "--insecure-http",
        "--template",
        "allow-all",
    ]));
    let out = run_ok(kbs.client().args([
        "kbs",
        "get-resource",
        "--insecure-http",
        "--tee",
        "sample",
        "app/key/s",
    ]));
    use base64::Engine;
    let got = base64::engine::general_purpose::STANDARD
        .decode(String::from_utf8(out.stdout).unwrap().trim())
        .unwrap();
    assert_eq!(got, b"sample-secret");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("SAMPLE evidence has NO cryptography") && err.contains("DEVELOPMENT ONLY"),
        "{err}"
    );
    // Other TEEs cannot attest from the command line.
    let out = kbs
        .client()
        .args([
            "kbs",
            "get-resource",
            "--insecure-http",
            "--tee",
            "snp",
            "app/key/s",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("only `sim` and `sample`"));
}

/// `veil bench kbs --url` loads a KBS over the protocol (sample evidence):
/// both workloads at each client count, no errors, the server's CPU per
/// operation read from its PID; a KBS that refuses sample evidence is
/// named at once.
#[test]
fn bench_kbs_loads_any_kbs_by_url() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    make_keys(Path::new(VEIL), d);
    std::fs::write(d.join("secret.bin"), "bench-secret").unwrap();
    let kbs = DevKbs::serve_with(Path::new(VEIL), d, &["--insecure-allow-sample"]);
    run_ok(
        kbs.client()
            .args([
                "kbs",
                "resource",
                "put",
                "--insecure-http",
                "default/bench/key",
            ])
            .arg(d.join("secret.bin")),
    );
    run_ok(kbs.client().args([
        "kbs",
        "policy",
        "set",
        "--insecure-http",
        "--template",
        "allow-all",
    ]));
    let out = run_ok(Command::new(VEIL).args([
        "bench",
        "kbs",
        "--url",
        &kbs.url(),
        "--insecure-http",
        "--seconds",
        "1",
        "--client-counts",
        "1,2",
        "--server-pid",
        &kbs.pid().to_string(),
        "--json",
    ]));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    let shape: Vec<(String, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["workload"].as_str().unwrap().to_string(),
                r["clients"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [("handshake", 1), ("handshake", 2), ("get", 1), ("get", 2)]
            .map(|(w, c)| (w.to_string(), c))
    );
    for r in rows {
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
        assert!(
            r["p99_ms"].as_f64().unwrap() >= r["p50_ms"].as_f64().unwrap(),
            "{r}"
        );
        assert!(r["server_cpu_ms_per_op"].as_f64().unwrap() > 0.0, "{r}");
    }
    // A server without sample mode is refused by name, before any row.
    let plain = DevKbs::serve(Path::new(VEIL), &{
        let p = d.join("plain");
        std::fs::create_dir_all(&p).unwrap();
        make_keys(Path::new(VEIL), &p);
        p
    });
    let out = Command::new(VEIL)
        .args([
            "bench",
            "kbs",
            "--url",
            &plain.url(),
            "--insecure-http",
            "--seconds",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("must accept `sample` evidence"), "{err}");
}
