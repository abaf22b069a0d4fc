//! Debian's `docker-registry` (the distribution registry, package
//! `docker-registry`, installed by scripts/install-deps.sh).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A bcrypt htpasswd line for `user:password`, from `htpasswd -nbB`
/// (Debian's apache2-utils), for [`DockerRegistry::start`].
pub fn htpasswd_line(user: &str, password: &str) -> String {
    let out = crate::run_ok(Command::new("htpasswd").args(["-nbB", user, password]));
    let line = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(
        line.starts_with(&format!("{user}:")),
        "htpasswd printed {line:?}"
    );
    line
}

/// A CA and a server certificate for `sans` (IP addresses or names) from
/// `veil kbs tls-keygen`, written into `dir` as `ca.pem`, `cert.pem` and
/// `key.pem`; returns their paths, for [`DockerRegistry::start_tls`].
pub fn tls_keygen(veil: &Path, dir: &Path, sans: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    std::fs::create_dir_all(dir).unwrap();
    let (ca, cert, key) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    let mut c = Command::new(veil);
    c.args(["kbs", "tls-keygen"]);
    for s in sans {
        c.args(["--san", s]);
    }
    crate::run_ok(
        c.arg("--ca-cert")
            .arg(&ca)
            .arg("--cert")
            .arg(&cert)
            .arg("--key")
            .arg(&key),
    );
    (ca, cert, key)
}

/// A `docker-registry serve` child on a free port (of 127.0.0.1 unless
/// told otherwise), storing into
/// a temporary directory; killed on drop.
pub struct DockerRegistry {
    child: Child,
    addr: String,
    storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl DockerRegistry {
    /// Start a registry; with `htpasswd` (one `user:bcrypt-hash` line) it
    /// requires Basic auth. Returns once it accepts connections.
    pub fn start(htpasswd: Option<&str>) -> Self {
        Self::start_with("127.0.0.1", htpasswd, None)
    }

    /// [`DockerRegistry::start`] serving HTTPS only, with the certificate
    /// chain `cert` and key `key` (PEM files, e.g. from `veil kbs tls-keygen`).
    pub fn start_tls(htpasswd: Option<&str>, cert: &Path, key: &Path) -> Self {
        Self::start_with("127.0.0.1", htpasswd, Some((cert, key)))
    }

    /// [`DockerRegistry::start_tls`] listening on `ip` (an address of this
    /// host's, e.g. on a test's own bridge) instead of 127.0.0.1.
    pub fn start_tls_on(ip: &str, htpasswd: Option<&str>, cert: &Path, key: &Path) -> Self {
        Self::start_with(ip, htpasswd, Some((cert, key)))
    }

    fn start_with(ip: &str, htpasswd: Option<&str>, tls: Option<(&Path, &Path)>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = format!("{ip}:{}", crate::free_port());
        let storage = dir.path().join("data");
        let auth = match htpasswd {
            Some(line) => {
                let f = dir.path().join("htpasswd");
                std::fs::write(&f, format!("{line}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: veil-test\n    path: {}\n",
                    f.display()
                )
            }
            None => String::new(),
        };
        let tls = match tls {
            Some((cert, key)) => format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ),
            None => String::new(),
        };
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                 http:\n  addr: {addr}\n{tls}{auth}",
                storage.display()
            ),
        )
        .unwrap();
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("docker-registry (Debian package docker-registry, scripts/install-deps.sh)");
        let reg = DockerRegistry {
            child,
            addr,
            storage,
            _dir: dir,
        };
        crate::wait_until(
            "docker-registry",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || std::net::TcpStream::connect(&reg.addr).is_ok(),
        );
        reg
    }

    /// `IP:PORT` (`127.0.0.1:PORT` by default).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `ADDR/repo_tag`, e.g. `reference("veil/app:v1")`.
    pub fn reference(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.addr)
    }

    /// A containers `auth.json` with `auth` (base64 of `user:password`)
    /// for this registry.
    pub fn auth_json(&self, auth: &str) -> String {
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, self.addr)
    }

    /// The registry's filesystem storage root.
    pub fn storage(&self) -> &Path {
        &self.storage
    }
}

impl Drop for DockerRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
