//! Helpers shared by the `veil run` end-to-end tests (process and VM
//! sandboxes): the real `veil-agent`, a scratch data dir per test, busybox
//! test images, and checks for leftover processes.

#![allow(dead_code)]

pub mod net;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use veil_image::OciLayout;
use veil_image::builder::ImageBuilder;
use veil_image::spec::{Compression, ContainerConfig};

/// The agent binary the end-to-end tests run.
pub use veil_testkit::veil_agent as agent;

pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "veil run tests need root (CI runs as root)"
        );
        Env {
            dir: tempfile::tempdir().unwrap(),
        }
    }
    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }
    pub fn veil(&self) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_veil"));
        // Loopback-only pods unless a test asks for the bridge (with its own
        // bridge and subnet): tests leave the host's network alone.
        c.env("VEIL_DATA_DIR", self.data())
            .env("VEIL_AGENT", agent())
            .env("VEIL_NETWORK", "none");
        c
    }
    pub fn layout(&self) -> OciLayout {
        OciLayout::create(self.dir.path().join("layout")).unwrap()
    }
}

pub fn ok(out: Output) -> Output {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A busybox image whose default command is `cmd`.
pub fn image(env: &Env, layout: &OciLayout, tag: &str, cmd: &str) {
    let root = env.dir.path().join(format!("src-{tag}").replace(':', "_"));
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in [
        "sh",
        "cat",
        "echo",
        "sha256sum",
        "sleep",
        "wc",
        "cut",
        "hostname",
        "tty",
        "stty",
        "env",
        "id",
        "pwd",
        "printenv",
        "stat",
        "grep",
        "seq",
        "mv",
        "dd",
        "yes",
        "ls",
        "sync",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", root.join("bin").join(a));
    }
    let mut b = ImageBuilder::new(layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec![cmd.into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/".into()),
        ..Default::default()
    });
    b.add_layer_dir(&root, Compression::Gzip).unwrap();
    b.finish(tag).unwrap();
}

pub fn processes_mentioning(needle: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|s| s.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| c.contains(needle))
        .collect()
}

pub fn sha256_prefix(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(data).unwrap();
    text(&c.wait_with_output().unwrap().stdout)[..16].to_string()
}

/// The record (`record.json`) of the one sandbox of `env` that is running.
pub fn running_record(env: &Env) -> serde_json::Value {
    let rec = std::fs::read_dir(env.data().join("run"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("sandbox").exists())
        .expect("a running sandbox");
    serde_json::from_slice(&std::fs::read(rec.path().join("record.json")).unwrap()).unwrap()
}

/// Wait (at most `secs`) for `child` to exit.
pub fn wait_for_exit(child: &mut std::process::Child, secs: u64) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "veil run did not exit within {secs} s"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The host-impersonation attack of issue #13, as an attacker on the host
/// would run it against a running sandbox's KBS: `/auth` for a nonce, the
/// RCAR binding bytes built for the attacker's *own* key, evidence over
/// exactly those bytes obtained from the agent through `evidence_for`
/// (the host's `get_evidence`, or a workload's `/aa/evidence`), then
/// `/attest` with the sandbox's (public) init-data. Returns the KBS's answer
/// to `/attest`: `Ok(token)` means the attack worked.
pub fn impersonate_tee_to_kbs(
    kbs_url: &str,
    init_data_toml: &str,
    mut evidence_for: impl FnMut(&[u8]) -> serde_json::Value,
) -> Result<String, String> {
    use veil_kbs_client::binding;
    use veil_kbs_client::protocol::{
        Attestation, Challenge, CompositeEvidence, InitData, RuntimeData,
    };
    let mut cfg = veil_kbs_client::ClientConfig::new(kbs_url.to_string());
    cfg.allow_http = true;
    let http = veil_kbs_client::http::Http::new(&cfg).unwrap();
    let auth = serde_json::json!({"version": "0.4.0", "tee": "sim", "extra-params": ""});
    let resp = http
        .send(
            "POST",
            "/kbs/v0/auth",
            &[],
            Some(("application/json", auth.to_string().as_bytes())),
        )
        .unwrap();
    assert_eq!(resp.status, 200, "{}", text(&resp.body));
    let cookie = resp
        .set_cookies
        .iter()
        .find_map(|c| {
            c.split(';')
                .next()
                .filter(|c| c.starts_with("kbs-session-id="))
        })
        .expect("a session cookie")
        .to_string();
    let challenge: Challenge = serde_json::from_slice(&resp.body).unwrap();
    // The attacker's own key: whatever the KBS releases is encrypted to it.
    let mine = veil_kbs_client::TeeKeyPair::generate(veil_kbs_client::KeyType::EcP256).unwrap();
    let pubkey = mine.public_jwk();
    let jcs = binding::canonical_json(&binding::runtime_data_object(
        &challenge.nonce,
        &pubkey,
        Some(""),
    ));
    let evidence = evidence_for(&jcs);
    let att = Attestation {
        init_data: Some(InitData {
            format: "toml".into(),
            body: init_data_toml.to_string(),
        }),
        runtime_data: RuntimeData {
            nonce: challenge.nonce,
            tee_pubkey: pubkey,
        },
        tee_evidence: CompositeEvidence {
            primary_evidence: evidence,
            additional_evidence: String::new(),
        },
    };
    let resp = http
        .send(
            "POST",
            "/kbs/v0/attest",
            &[("cookie", &cookie)],
            Some(("application/json", &serde_json::to_vec(&att).unwrap())),
        )
        .unwrap();
    if resp.status == 200 {
        Ok(text(&resp.body))
    } else {
        Err(format!("{} {}", resp.status, text(&resp.body)))
    }
}

/// Evidence from a running sandbox's agent over `runtime_data`, asked the way
/// the host asks (`get_evidence` on the agent socket).
pub fn host_get_evidence(socket: &std::path::Path, runtime_data: &[u8]) -> serde_json::Value {
    let mut c = veil_runtime::AgentClient::connect(socket, std::time::Duration::from_secs(30))
        .expect("connecting to the agent");
    let ev: veil_agent_api::proto::GetEvidenceResult = c
        .call_typed(veil_agent_api::AgentRequest::GetEvidence(
            veil_agent_api::GetEvidenceRequest {
                runtime_data: veil_agent_api::Bytes(runtime_data.to_vec()),
            },
        ))
        .expect("get_evidence is allowed by the generated policy");
    ev.evidence
}

/// `GET path` on a workload local API socket (`/run/veil/api.sock` inside the
/// containers; `<sandbox>/guest/api.sock` on the host in the process
/// sandbox): (status, body).
pub fn local_api_get(socket: &std::path::Path, path: &str) -> (u16, Vec<u8>) {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("the local API socket");
    write!(s, "GET {path} HTTP/1.1\r\nHost: veil\r\n\r\n").unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response head");
    let status = text(&resp[..end])
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (status, resp[end + 4..].to_vec())
}

/// Percent-encode every byte but unreserved ones (for a query value).
pub fn percent_encode(b: &[u8]) -> String {
    b.iter()
        .map(|c| {
            if c.is_ascii_alphanumeric() || b"-._~".contains(c) {
                (*c as char).to_string()
            } else {
                format!("%{c:02X}")
            }
        })
        .collect()
}

/// Run `veil run -d` with extra args; returns the sandbox id.
pub fn run_detached(env: &Env, args: &[&str]) -> String {
    let out = ok(env.veil().arg("run").arg("-d").args(args).output().unwrap());
    let id = text(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 12, "{}", text(&out.stdout));
    id
}

/// Writes a pod YAML into the test's dir and returns its path.
pub fn write_pod(env: &Env, yaml: &str) -> PathBuf {
    let pod = env.dir.path().join("pod.yaml");
    std::fs::write(&pod, yaml).unwrap();
    pod
}

/// Removes a detached sandbox (`veil rm -f`) when dropped, so a failing
/// test leaves no sandbox running.
pub struct RmOnDrop<'a>(pub &'a Env, pub String);

impl Drop for RmOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.veil().args(["rm", "-f", &self.1]).output();
    }
}

/// The record of sandbox `id`.
pub fn record_of(env: &Env, id: &str) -> serde_json::Value {
    serde_json::from_slice(
        &std::fs::read(env.data().join("run").join(id).join("record.json")).unwrap(),
    )
    .unwrap()
}

/// Make `cmd` start with a directory descriptor on the host's `/` as fd 7,
/// inheritable, as a shell's `exec 7</` leaves it (issue #13, finding 3).
pub fn hold_root_as_fd7(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let root = std::fs::File::open("/").unwrap();
    // SAFETY: dup2 in the child before exec; fd 7 is inheritable.
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::dup2(root.as_raw_fd(), 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The descriptors a workload listed with `echo fds /proc/self/fd/*`.
pub fn fds_listed(output: &str) -> Vec<String> {
    output
        .lines()
        .find_map(|l| l.strip_prefix("fds "))
        .unwrap_or_else(|| panic!("no fds line in {output:?}"))
        .split_whitespace()
        .map(|p| p.trim_start_matches("/proc/self/fd/").to_string())
        .collect()
}

/// A dev-mode `veil kbs serve` on loopback that trusts the sim platform of
/// `env`'s data dir (its key made now, where `veil run` will use it).
pub fn kbs_for_sim_of(env: &Env) -> veil_testkit::kbs::DevKbs {
    let d = env.dir.path().join("kbs");
    std::fs::create_dir_all(&d).unwrap();
    let veil = std::path::Path::new(env!("CARGO_BIN_EXE_veil"));
    veil_testkit::kbs::make_keys(veil, &d);
    std::fs::create_dir_all(env.data().join("sim")).unwrap();
    // fs::copy keeps the 0600 mode the sim platform insists on.
    std::fs::copy(d.join("sim.key"), env.data().join("sim/platform-key.pem")).unwrap();
    veil_testkit::kbs::DevKbs::serve(veil, &d)
}

/// `veil kbs ARGS… [FILE] --insecure-http` against `kbs`, which must succeed.
pub fn kbs_admin(kbs: &veil_testkit::kbs::DevKbs, args: &[&str], file: Option<&std::path::Path>) {
    let mut c = kbs.client();
    c.arg("kbs").args(args);
    if let Some(f) = file {
        c.arg(f);
    }
    ok(c.arg("--insecure-http").output().unwrap());
}

/// A TLS registry with Basic auth (user `veil`, password `pull-secret`),
/// certified by a private CA for 127.0.0.1 and the VM's view of the host
/// (10.0.3.2), holding the busybox image `cmd` runs as `veil/app:v1`.
pub struct TlsRegistry {
    pub reg: veil_testkit::registry::DockerRegistry,
    /// The CA certificate (PEM file).
    pub ca: PathBuf,
    /// `127.0.0.1:PORT/veil/app:v1`.
    pub reference: String,
    /// Its manifest digest.
    pub digest: veil_image::Digest,
    /// A containers auth.json with the right credentials.
    pub good_auth: PathBuf,
    /// One with a wrong password.
    pub bad_auth: PathBuf,
}

pub const REGISTRY_USER: &str = "veil";
pub const REGISTRY_PASSWORD: &str = "pull-secret";

impl TlsRegistry {
    /// With `kek`, the image's layer is encrypted to `kbs:///default/key/app`.
    pub fn start(env: &Env, cmd: &str, kek: Option<&[u8; 32]>) -> Self {
        let d = env.dir.path().join("registry-tls");
        let (ca, cert, key) = veil_testkit::registry::tls_keygen(
            Path::new(env!("CARGO_BIN_EXE_veil")),
            &d,
            &["127.0.0.1", "10.0.3.2"],
        );
        let line = veil_testkit::registry::htpasswd_line(REGISTRY_USER, REGISTRY_PASSWORD);
        let reg = veil_testkit::registry::DockerRegistry::start_tls(Some(&line), &cert, &key);
        let reference = reg.reference("veil/app:v1");
        let layout = OciLayout::create(env.dir.path().join("registry-src")).unwrap();
        image(env, &layout, "v1", cmd);
        if let Some(kek) = kek {
            use veil_image::crypt::{KeyWrapper, LayerSelection, encrypt_image};
            let wrapper = veil_image::crypt::kbs::KbsWrapper::new(
                veil_image::crypt::kbs::ResourceUri::parse("kbs:///default/key/app").unwrap(),
                kek,
            )
            .unwrap();
            let wrappers: [&dyn KeyWrapper; 1] = [&wrapper];
            encrypt_image(
                &layout,
                Some("v1"),
                &layout,
                "v1",
                &wrappers,
                &LayerSelection::All,
            )
            .unwrap();
        }
        let b64 = |s: &str| {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(s)
        };
        let (good_auth, bad_auth) = (d.join("auth.json"), d.join("bad-auth.json"));
        std::fs::write(
            &good_auth,
            reg.auth_json(&b64(&format!("{REGISTRY_USER}:{REGISTRY_PASSWORD}"))),
        )
        .unwrap();
        std::fs::write(
            &bad_auth,
            reg.auth_json(&b64(&format!("{REGISTRY_USER}:wrong"))),
        )
        .unwrap();
        let r = veil_image::registry::parse_reference(&reference).unwrap();
        let creds =
            veil_image::registry::Credentials::from_auth_file(&good_auth, r.domain()).unwrap();
        let conn = veil_image::registry::Connection {
            ca_pem: Some(std::fs::read(&ca).unwrap()),
            ..Default::default()
        };
        let digest = veil_image::registry::Registry::connect(&r, creds, &conn)
            .unwrap()
            .push(&layout, Some("v1"))
            .unwrap();
        TlsRegistry {
            reg,
            ca,
            reference,
            digest,
            good_auth,
            bad_auth,
        }
    }

    /// Path of a blob's data file in the registry's storage.
    pub fn blob_file(&self, d: &veil_image::Digest) -> PathBuf {
        self.reg.storage().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{}/data",
            &d.hex()[..2],
            d.hex()
        ))
    }
}
