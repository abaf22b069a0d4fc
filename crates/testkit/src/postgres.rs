//! Debian's PostgreSQL (`scripts/install-deps.sh` installs `postgresql`)
//! as a private server for tests: `initdb` into a temporary directory and
//! `postgres` listening only on a Unix socket in that directory (no TCP
//! port), trust authentication for the user `veil`. Started as the current
//! user, or as Debian's `postgres` user through `setpriv` when running as
//! root (PostgreSQL refuses to run as root). Stopped by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The database user the tests connect as.
pub const USER: &str = "veil";

/// The directory holding PostgreSQL's server binaries (`initdb`,
/// `postgres`, `createdb`): `$VEIL_PG_BIN`, else the newest
/// `/usr/lib/postgresql/*/bin`.
pub fn bin_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VEIL_PG_BIN") {
        return Some(p.into());
    }
    let mut dirs: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("postgres").exists().then_some((v, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, p)| p)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A private PostgreSQL server.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    as_postgres: bool,
    child: Option<Child>,
    /// The server's port (its socket file is `.s.PGSQL.<port>`).
    port: u16,
    /// TLS on 127.0.0.1:`port` besides the Unix socket.
    tls: bool,
}

impl Postgres {
    /// `initdb` and start a server; panics with the reason when PostgreSQL
    /// is not installed or does not start.
    pub fn start() -> Self {
        let mut pg = Self::init();
        pg.start_again();
        pg
    }

    /// Like [`Postgres::start`], and also listening with TLS (`ssl=on`,
    /// this certificate chain and key, PEM) on 127.0.0.1 at a free port:
    /// [`Postgres::tcp_url`].
    pub fn start_tls(cert_chain: &str, key: &str) -> Self {
        let mut pg = Self::init();
        let data = pg.data_dir();
        for (name, pem) in [("server.crt", cert_chain), ("server.key", key)] {
            let path = data.join(name);
            std::fs::write(&path, pem).expect("writing the server's TLS files");
            crate::run_ok(Command::new("chmod").arg("0600").arg(&path));
            if pg.as_postgres {
                crate::run_ok(Command::new("chown").arg("postgres:").arg(&path));
            }
        }
        pg.port = crate::free_port();
        pg.tls = true;
        pg.start_again();
        pg
    }

    fn init() -> Self {
        let bin = bin_dir().unwrap_or_else(|| {
            panic!(
                "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): run scripts/install-deps.sh"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("veil-pg-")
            .tempdir()
            .expect("temp dir");
        let as_postgres = is_root();
        if as_postgres {
            crate::run_ok(Command::new("chown").arg("postgres:").arg(dir.path()));
        }
        let pg = Postgres {
            dir,
            bin,
            as_postgres,
            child: None,
            port: 5432,
            tls: false,
        };
        let data = pg.data_dir();
        crate::run_ok(
            pg.command("initdb")
                .args([
                    "--no-sync",
                    "--auth=trust",
                    "--encoding=UTF8",
                    "--no-instructions",
                    "-U",
                    USER,
                    "-D",
                ])
                .arg(&data),
        );
        pg
    }

    /// Its data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory of its Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The PID of the running server (the postmaster).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// A PostgreSQL program of this installation, run as the server's user.
    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        if self.as_postgres {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid=postgres",
                "--regid=postgres",
                "--init-groups",
                "--",
            ])
            .arg(exe);
            c
        } else {
            Command::new(exe)
        }
    }

    /// Start the server (again, after [`Postgres::stop`]) on the same data
    /// directory; returns once it accepts connections.
    pub fn start_again(&mut self) {
        assert!(self.child.is_none(), "PostgreSQL is already running");
        let log = std::fs::File::create(self.dir.path().join("postgres.log")).expect("log file");
        let mut cmd = self.command("postgres");
        cmd.arg("-D").arg(self.data_dir());
        if self.tls {
            cmd.args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on"]);
        } else {
            cmd.args(["-c", "listen_addresses="]);
        }
        let child = cmd
            .arg("-c")
            .arg(format!("port={}", self.port))
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.socket_dir().display()
            ))
            .args(["-c", "max_connections=200"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}/postgres: {e}", self.bin.display()));
        self.child = Some(child);
        let sock = self.socket_dir().join(format!(".s.PGSQL.{}", self.port));
        let port = self.port.to_string();
        let ready = self.bin.join("pg_isready");
        crate::wait_until(
            "PostgreSQL",
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                sock.exists()
                    && Command::new(&ready)
                        .arg("-q")
                        .arg("-h")
                        .arg(self.socket_dir())
                        .args(["-p", &port, "-U", USER, "-d", "postgres"])
                        .status()
                        .is_ok_and(|s| s.success())
            },
        );
    }

    /// Stop the server (fast shutdown: SIGINT to its PID) and wait for it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if std::time::Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }

    /// Create database `name`.
    pub fn create_db(&self, name: &str) {
        crate::run_ok(
            Command::new(self.bin.join("createdb"))
                .arg("-h")
                .arg(self.socket_dir())
                .args(["-p", &self.port.to_string(), "-U", USER, name]),
        );
    }

    /// The connection URL of database `name` (over the Unix socket).
    pub fn url(&self, name: &str) -> String {
        let host: String = self
            .socket_dir()
            .display()
            .to_string()
            .replace('%', "%25")
            .replace('/', "%2F");
        format!("postgres://{USER}@{host}:{}/{name}", self.port)
    }

    /// The connection URL of database `name` over TCP to 127.0.0.1 (a
    /// server from [`Postgres::start_tls`]).
    pub fn tcp_url(&self, name: &str) -> String {
        assert!(
            self.tls,
            "tcp_url: the server listens on TCP only with start_tls"
        );
        format!("postgres://{USER}@127.0.0.1:{}/{name}", self.port)
    }

    /// Run SQL through `psql` on database `name`; returns its unaligned,
    /// tuples-only output.
    pub fn psql(&self, name: &str, sql: &str) -> String {
        let out = crate::run_ok(
            Command::new(self.bin.join("psql"))
                .arg("-h")
                .arg(self.socket_dir())
                .args([
                    "-p",
                    &self.port.to_string(),
                    "-U",
                    USER,
                    "-d",
                    name,
                    "-At",
                    "-v",
                    "ON_ERROR_STOP=1",
                    "-c",
                    sql,
                ]),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}
