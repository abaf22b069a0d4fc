//! A private containerd (Debian's package `containerd`, installed by
//! scripts/install-deps.sh): its own root, state, sockets and config under a
//! temporary directory, `PATH` starting with the directory of the shim under
//! test, stopped by PID on drop together with every shim it started and
//! every mount left under its directories. Never the system's containerd.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What the private containerd is started with.
#[derive(Debug, Clone, Default)]
pub struct ContainerdOptions {
    /// Directory holding `containerd-shim-veil-v2`, put first on
    /// containerd's `PATH` (containerd finds shims there).
    pub shim_dir: Option<PathBuf>,
    /// Extra environment for containerd, inherited by the shims it starts.
    pub env: Vec<(String, String)>,
    /// Load the CRI plugin (`io.containerd.grpc.v1.cri`), with this TOML
    /// appended verbatim to the config (runtime handlers, CNI dirs…).
    pub cri: Option<String>,
    /// Run containerd (and so its shims and CNI plugins) in a mount
    /// namespace of its own in which `/var/lib` is an overlay whose writes
    /// land in the temp dir: libcni keeps its cache in `/var/lib/cni`
    /// (containerd 1.6 cannot move it), which the host never sees then.
    /// Mounts containerd makes stay in that namespace and go with it.
    pub private_mounts: bool,
}

/// A running private containerd; stopped and cleaned up on drop.
pub struct Containerd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    address: PathBuf,
    namespace: String,
}

impl Containerd {
    /// Start containerd and wait (up to 30 s) until its socket answers
    /// `ctr version`.
    pub fn start(opts: ContainerdOptions) -> Self {
        // Short paths: the unix socket paths below must fit in 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("vctd")
            .tempdir_in("/tmp")
            .expect("temp dir for containerd");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let d = dir.path();
        let address = d.join("c.sock");
        let mut config = String::new();
        writeln!(config, "version = 2").unwrap();
        writeln!(config, "root = {:?}", d.join("root").display().to_string()).unwrap();
        writeln!(
            config,
            "state = {:?}",
            d.join("state").display().to_string()
        )
        .unwrap();
        writeln!(
            config,
            "[grpc]\naddress = {:?}",
            address.display().to_string()
        )
        .unwrap();
        writeln!(
            config,
            "[ttrpc]\naddress = {:?}",
            d.join("c.sock.ttrpc").display().to_string()
        )
        .unwrap();
        writeln!(config, "[debug]\naddress = \"\"\nlevel = \"info\"").unwrap();
        writeln!(config, "[metrics]\naddress = \"\"").unwrap();
        // Plugins whose defaults live outside the temp dir.
        let mut disabled = vec![
            "io.containerd.internal.v1.opt",
            "io.containerd.tracing.processor.v1.otlp",
        ];
        if opts.cri.is_none() {
            disabled.push("io.containerd.grpc.v1.cri");
        }
        let disabled: Vec<String> = disabled.iter().map(|p| format!("{p:?}")).collect();
        // `disabled_plugins` is a top-level key: it goes before the first table.
        let config = format!(
            "disabled_plugins = [{}]\n{config}{}",
            disabled.join(", "),
            opts.cri.as_deref().unwrap_or("")
        );
        let config_path = d.join("config.toml");
        std::fs::write(&config_path, config).unwrap();
        let mut path = std::env::var_os("PATH").unwrap_or_default();
        if let Some(shim_dir) = &opts.shim_dir {
            let mut p = shim_dir.clone().into_os_string();
            p.push(":");
            p.push(&path);
            path = p;
        }
        let log = std::fs::File::create(d.join("containerd.log")).unwrap();
        let mut cmd = if opts.private_mounts {
            let (upper, work) = (d.join("var-lib"), d.join("var-lib.work"));
            std::fs::create_dir_all(&upper).unwrap();
            std::fs::create_dir_all(&work).unwrap();
            // unshare and sh exec: the child's PID is containerd's.
            let mut c = Command::new("unshare");
            c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                .arg(
                    "mount -t overlay veil-test-var-lib -o \"lowerdir=/var/lib,upperdir=$1,workdir=$2\" /var/lib \
                     && exec containerd --config \"$3\"",
                )
                .arg("sh")
                .args([&upper, &work, &config_path]);
            c
        } else {
            let mut c = Command::new("containerd");
            c.arg("--config").arg(&config_path);
            c
        };
        let child = cmd
            .env("PATH", path)
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("containerd (Debian package containerd, scripts/install-deps.sh)");
        let mut c = Containerd {
            child: Some(child),
            dir,
            address,
            namespace: format!("veil-test-{}", std::process::id()),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if c.address.exists()
                && c.ctr()
                    .arg("version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            {
                break;
            }
            if let Some(status) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                panic!(
                    "containerd exited ({status}) before it was ready:\n{}",
                    c.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "containerd did not start:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        c
    }

    /// The containerd gRPC socket.
    pub fn address(&self) -> &Path {
        &self.address
    }

    /// The temporary directory holding root, state, config and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The containerd namespace [`Self::ctr`] works in (unique per test process).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's root (content store, snapshots, metadata).
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// containerd's state dir (bundles, shim sockets).
    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// A directory for the FIFOs `ctr` makes (`--fifo-dir`), so that none
    /// are made under the system's /run/containerd.
    pub fn fifo_dir(&self) -> PathBuf {
        let p = self.dir.path().join("fifo");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// containerd's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr --address SOCKET --namespace NS`; add the subcommand.
    pub fn ctr(&self) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address")
            .arg(&self.address)
            .arg("--namespace")
            .arg(&self.namespace)
            .stdin(Stdio::null());
        cmd
    }

    /// PIDs of live processes started with `-address SOCKET` of this
    /// containerd (its shims).
    pub fn shim_pids(&self) -> Vec<i32> {
        let want = self.address.as_os_str().as_encoded_bytes();
        let mut pids = Vec::new();
        let Ok(rd) = std::fs::read_dir("/proc") else {
            return pids;
        };
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            if args.windows(2).any(|w| w[0] == b"-address" && w[1] == want) {
                pids.push(pid);
            }
        }
        pids
    }

    /// containerd's PID while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Mount points at or under the temp dir, deepest first, as containerd
    /// (and its shims) see them.
    pub fn mounts(&self) -> Vec<PathBuf> {
        match self.pid() {
            Some(pid) => mounts_in(&format!("/proc/{pid}/mountinfo"), self.dir.path()),
            None => mounts_under(self.dir.path()),
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGTERM by PID, then SIGKILL after 10 s.
            unsafe { libc_kill(child.id() as i32, 15) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() {
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        for pid in self.shim_pids() {
            unsafe { libc_kill(pid, 9) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.shim_pids().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        // In a private mount namespace, its mounts went with its last process.
        for m in mounts_under(self.dir.path()) {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// kill(2) by PID; errors (already gone) are ignored.
unsafe fn libc_kill(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects.
    unsafe { libc::kill(pid, sig) };
}

/// Mount points at or under `dir` (from /proc/self/mountinfo), deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    mounts_in("/proc/self/mountinfo", dir)
}

/// Mount points at or under `dir` in the `mountinfo` file at `path`,
/// deepest first.
pub fn mounts_in(path: &str, dir: &Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string(path).unwrap_or_default();
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    out.dedup();
    out
}

fn unescape_mountinfo(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(u8::is_ascii_digit) {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
