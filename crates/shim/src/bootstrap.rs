//! The shim v2 process protocol: `start` (find or spawn the shim that
//! serves the pod, print its address), serve (the ttrpc Task service on a
//! unix socket), `delete` (clean up after a shim that died).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, IntoRawFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::SystemTime;

use containerd_shim_protos as protos;
use protos::api::DeleteResponse;
use protos::protobuf::Message;
use sha2::Digest as _;

use crate::annotations::{self, Role};
use crate::args::Flags;
use crate::backend::Launcher;
use crate::config::{self, ShimConfig};
use crate::events::{Publisher, timestamp};
use crate::service::{ExitSignal, Service};

/// The runtime name containerd resolves to this binary.
pub const RUNTIME_NAME: &str = "io.containerd.veil.v2";
/// Where containerd's own shims put their sockets, when the bundle does not
/// tell us containerd's state dir.
const DEFAULT_SOCKET_DIR: &str = "/run/containerd/s";

/// Bootstrap errors (printed by the binary, which exits 1).
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BootstrapError {
    let context = context.into();
    move |source| BootstrapError::Io { context, source }
}

/// containerd's state dir, when `bundle` is `<state>/io.containerd.runtime.v2.task/<ns>/<id>`.
pub fn state_dir_of(bundle: &Path) -> Option<PathBuf> {
    let ns_dir = bundle.parent()?;
    let task_dir = ns_dir.parent()?;
    (task_dir.file_name()? == "io.containerd.runtime.v2.task")
        .then(|| task_dir.parent().map(Path::to_path_buf))?
}

/// The socket of the shim serving `grouping` (a pod sandbox id or a
/// standalone container id): `<containerd state>/s/<sha256(address/ns/grouping)>`,
/// the name containerd's own shims use.
pub fn socket_path(bundle: &Path, address: &str, namespace: &str, grouping: &str) -> PathBuf {
    let hash = hex::encode(sha2::Sha256::digest(format!(
        "{address}/{namespace}/{grouping}"
    )));
    let dir =
        state_dir_of(bundle).map_or_else(|| PathBuf::from(DEFAULT_SOCKET_DIR), |s| s.join("s"));
    dir.join(hash)
}

fn connectable(path: &Path) -> bool {
    UnixStream::connect(path).is_ok()
}

/// `start`: print the address of the shim that serves this container.
pub fn start(flags: &Flags) -> Result<String, BootstrapError> {
    let bundle = std::env::current_dir().map_err(io("the bundle dir (cwd)"))?;
    let spec =
        crate::spec::read_bundle(&bundle).map_err(|e| BootstrapError::Other(e.to_string()))?;
    let grouping = match annotations::role(&spec.annotations) {
        Role::PodContainer { sandbox_id } => {
            let sock = socket_path(&bundle, &flags.address, &flags.namespace, &sandbox_id);
            if !connectable(&sock) {
                return Err(BootstrapError::Other(format!(
                    "container {} belongs to pod sandbox {sandbox_id}, whose shim is not running at {}",
                    flags.id,
                    sock.display()
                )));
            }
            let addr = format!("unix://{}", sock.display());
            std::fs::write(bundle.join("address"), &addr)
                .map_err(io("writing the address file"))?;
            return Ok(addr);
        }
        Role::PodSandbox | Role::Standalone => flags.id.clone(),
    };
    let sock = socket_path(&bundle, &flags.address, &flags.namespace, &grouping);
    let addr = format!("unix://{}", sock.display());
    if connectable(&sock) {
        return Ok(addr);
    }
    let exe = std::env::current_exe().map_err(io("finding the shim binary"))?;
    let mut cmd = Command::new(exe);
    // The server keeps the name containerd started the shim by: it names
    // the runtime handler on containerd 1.6 (config::handler_name).
    if let Some(argv0) = std::env::args_os().next() {
        cmd.arg0(argv0);
    }
    cmd.current_dir(&bundle)
        .args([
            "-namespace",
            &flags.namespace,
            "-id",
            &flags.id,
            "-address",
            &flags.address,
        ])
        .args(["-publish-binary", &flags.publish_binary, "-socket", &addr])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        // Its own process group: signals to containerd's group do not reach it.
        .process_group(0);
    if flags.debug {
        cmd.arg("-debug");
    }
    let mut child = cmd.spawn().map_err(io("spawning the shim server"))?;
    // The server closes its stdout once it listens (or exits on failure).
    let mut msg = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.by_ref().take(64 * 1024).read_to_string(&mut msg);
    }
    if let Ok(Some(status)) = child.try_wait() {
        return Err(BootstrapError::Other(format!(
            "the shim server exited ({status}): {}",
            msg.trim()
        )));
    }
    if !connectable(&sock) {
        return Err(BootstrapError::Other(format!(
            "the shim server is not listening on {}: {}",
            sock.display(),
            msg.trim()
        )));
    }
    std::fs::write(bundle.join("address"), &addr).map_err(io("writing the address file"))?;
    Ok(addr)
}

/// `delete`: containerd calls it when a shim died; clean up what it left.
pub fn delete(flags: &Flags, launcher: &dyn Launcher) -> Result<Vec<u8>, BootstrapError> {
    let bundle = if flags.bundle.is_empty() {
        std::env::current_dir().map_err(io("the bundle dir (cwd)"))?
    } else {
        PathBuf::from(&flags.bundle)
    };
    if let Ok(spec) = crate::spec::read_bundle(&bundle) {
        let owns = !matches!(
            annotations::role(&spec.annotations),
            Role::PodContainer { .. }
        );
        if owns {
            let handler =
                config::handler_name(&spec.annotations, std::env::args_os().next().as_deref());
            let cfg = ShimConfig::load().map_err(|e| BootstrapError::Other(e.to_string()))?;
            if let Ok(h) = cfg.handler(&handler) {
                let dir = h.shim_dir(&flags.namespace, &flags.id);
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        return Err(BootstrapError::Other(format!(
                            "removing {}: {e}",
                            dir.display()
                        )));
                    }
                }
                if let Some(ns) = dir.parent() {
                    let _ = std::fs::remove_dir(ns);
                }
                launcher
                    .cleanup(h, &flags.namespace, &flags.id)
                    .map_err(|e| {
                        BootstrapError::Other(format!("cleaning up sandbox {}: {e}", flags.id))
                    })?;
            }
            let sock = socket_path(&bundle, &flags.address, &flags.namespace, &flags.id);
            if !connectable(&sock) {
                let _ = std::fs::remove_file(&sock);
            }
        }
    }
    let mut resp = DeleteResponse::new();
    resp.pid = 0;
    resp.exit_status = 128 + 9;
    resp.exited_at = Some(timestamp(SystemTime::now())).into();
    resp.write_to_bytes()
        .map_err(|e| BootstrapError::Other(format!("encoding the delete response: {e}")))
}

/// Serve the Task service on `flags.socket` until `Shutdown`.
pub fn serve(flags: &Flags, launcher: Arc<dyn Launcher>) -> Result<(), BootstrapError> {
    if flags.socket.is_empty() {
        return Err(BootstrapError::Usage("serving needs -socket".into()));
    }
    let sock = PathBuf::from(
        flags
            .socket
            .strip_prefix("unix://")
            .unwrap_or(&flags.socket),
    );
    if let Some(dir) = sock.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(dir)
            .map_err(io(format!("creating {}", dir.display())))?;
    }
    if std::fs::symlink_metadata(&sock).is_ok_and(|m| m.file_type().is_socket())
        && !connectable(&sock)
    {
        let _ = std::fs::remove_file(&sock);
    }
    let listener =
        UnixListener::bind(&sock).map_err(io(format!("listening on {}", sock.display())))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))
        .map_err(io(format!("chmod {}", sock.display())))?;
    let _ = std::fs::write("shim.pid", std::process::id().to_string());
    let publisher = match std::env::var("TTRPC_ADDRESS") {
        Ok(a) if !a.is_empty() => {
            Publisher::connect(&a, &flags.namespace).map_err(BootstrapError::Other)?
        }
        _ => {
            tracing::warn!("no TTRPC_ADDRESS: task events are not published to containerd");
            Publisher::none(&flags.namespace)
        }
    };
    let exit = Arc::new(ExitSignal::default());
    let service = Service::new(&flags.namespace, publisher, launcher, exit.clone(), None);
    let task = protos::create_task(Arc::new(service));
    let mut server = protos::ttrpc::Server::new()
        .add_listener(listener.into_raw_fd())
        .map_err(|e| BootstrapError::Other(format!("ttrpc listener: {e}")))?
        .register_service(task);
    server
        .start()
        .map_err(|e| BootstrapError::Other(format!("starting the ttrpc server: {e}")))?;
    // Tell `start` we listen: close our stdout (its pipe).
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        // SAFETY: dup2 onto fd 1 replaces the pipe; both fds are valid.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
    }
    tracing::info!(socket = %sock.display(), "veil shim serving");
    exit.wait();
    tracing::info!("shutting down");
    let _ = std::fs::remove_file(&sock);
    // ttrpc's shutdown waits for requests in flight (a Wait on a process
    // that will never end now); give them a moment, then exit regardless.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        server.shutdown();
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(std::time::Duration::from_secs(2));
    Ok(())
}

/// Logs go to the `log` FIFO containerd opened in the bundle (it copies
/// them into its own log), else to stderr.
pub fn init_logging(debug: bool) {
    let level = if debug { "debug" } else { "info" };
    let filter = tracing_subscriber::EnvFilter::try_from_env("VEIL_SHIM_LOG")
        .unwrap_or_else(|_| level.into());
    let fifo = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("log");
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    match fifo {
        Ok(f) => {
            // Blocking writes from here on (the reader is containerd).
            // SAFETY: fcntl on an fd we own.
            unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETFL, 0) };
            let f = std::sync::Mutex::new(f);
            let _ = b.with_writer(f).try_init();
        }
        Err(_) => {
            let _ = b.with_writer(std::io::stderr).try_init();
        }
    }
}

/// The whole binary: parse flags, dispatch, return the exit code.
pub fn main(launcher: Arc<dyn Launcher>) -> i32 {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args
        .iter()
        .any(|a| a == "-v" || a == "--version" || a == "-version")
    {
        println!(
            "containerd-shim-veil-v2 {} ({RUNTIME_NAME})",
            env!("CARGO_PKG_VERSION")
        );
        return 0;
    }
    let flags = match crate::args::parse(&args) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("containerd-shim-veil-v2: {e}");
            return 1;
        }
    };
    if flags.namespace.is_empty() {
        eprintln!(
            "containerd-shim-veil-v2: -namespace is required (this binary is started by containerd)"
        );
        return 1;
    }
    let result = match flags.action.as_str() {
        "start" => start(&flags).map(|addr| {
            print!("{addr}");
            let _ = std::io::stdout().flush();
        }),
        "delete" => delete(&flags, launcher.as_ref()).map(|bytes| {
            let _ = std::io::stdout().write_all(&bytes);
            let _ = std::io::stdout().flush();
        }),
        _ => {
            init_logging(flags.debug);
            serve(&flags, launcher)
        }
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!(error = %e, "shim failed");
            eprintln!("containerd-shim-veil-v2: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_lives_in_containerds_state_dir() {
        let b = Path::new("/tmp/x/state/io.containerd.runtime.v2.task/default/c1");
        assert_eq!(state_dir_of(b), Some(PathBuf::from("/tmp/x/state")));
        let s = socket_path(b, "/tmp/x/c.sock", "default", "c1");
        assert!(s.starts_with("/tmp/x/state/s/"));
        assert_eq!(
            s,
            socket_path(b, "/tmp/x/c.sock", "default", "c1"),
            "deterministic: pod containers find it"
        );
        assert_ne!(s, socket_path(b, "/tmp/x/c.sock", "default", "c2"));
        assert!(
            socket_path(Path::new("/elsewhere/b"), "a", "n", "g").starts_with(DEFAULT_SOCKET_DIR)
        );
    }
}
