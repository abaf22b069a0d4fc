//! A process's standard streams, wired between the agent and whatever the
//! front-end hands over: its own terminal (`veil run`, `veil exec`), files,
//! or containerd's FIFOs (the shim: `stdin`, `stdout`, `stderr` paths).
//!
//! Output is pulled from the agent with `read_stream` on a connection of
//! its own per stream, until the stream ends; the end carries the process's
//! exit code. Input is pushed with `write_stdin`; an empty write closes the
//! process's stdin. The policy decides each of these (`allow_stdio`,
//! `process.stdin`): a refusal reaches the caller with the policy's words.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use base64::Engine as _;
use veil_agent_api::proto::{ReadStreamResult, StatsContainerResult};
use veil_agent_api::{
    AgentRequest, Bytes, ReadStreamRequest, StatsContainerRequest, Stream, WriteStdinRequest,
};

use crate::{AgentClient, CallError};

/// Largest stdin chunk sent in one request.
pub const STDIN_CHUNK: usize = 64 * 1024;

/// How often the state of a container whose output the policy keeps from
/// the host is polled for its exit.
const EXIT_POLL: Duration = Duration::from_millis(100);

/// Where one output stream goes.
pub enum Sink {
    /// Read and dropped (the exit code is still learnt).
    Discard,
    /// A path opened for writing when the pump starts (a FIFO's open waits
    /// for its reader, so it happens on the pump's thread); a regular file
    /// is created (0600) or appended to.
    Path(PathBuf),
    /// Any writer; a descriptor the caller was handed is
    /// `Writer(Box::new(File::from(owned_fd)))`.
    Writer(Box<dyn Write + Send>),
}

/// Where a process's stdin comes from.
pub enum Source {
    /// A path opened for reading when forwarding starts (FIFO: on the
    /// forwarding thread, as its open waits for the writer).
    Path(PathBuf),
    /// Any reader (a descriptor: `Reader(Box::new(File::from(owned_fd)))`).
    Reader(Box<dyn Read + Send>),
}

/// The streams of one process. The process request must ask for stdin
/// (`Process::stdin`) when `stdin` is given, or the agent has no pipe for it.
pub struct Stdio {
    pub stdin: Option<Source>,
    pub stdout: Sink,
    pub stderr: Sink,
}

impl Stdio {
    /// Output dropped, no stdin.
    pub fn discard() -> Self {
        Stdio {
            stdin: None,
            stdout: Sink::Discard,
            stderr: Sink::Discard,
        }
    }

    /// containerd's FIFO paths (empty: not given).
    pub fn paths(stdin: &str, stdout: &str, stderr: &str) -> Self {
        let sink = |p: &str| {
            if p.is_empty() {
                Sink::Discard
            } else {
                Sink::Path(p.into())
            }
        };
        Stdio {
            stdin: (!stdin.is_empty()).then(|| Source::Path(stdin.into())),
            stdout: sink(stdout),
            stderr: sink(stderr),
        }
    }
}

fn open_sink(sink: Sink) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        Sink::Discard => Box::new(std::io::sink()),
        Sink::Writer(w) => w,
        // Workload output is the workload's data: a file made here is 0600.
        Sink::Path(p) => Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&p)?,
        ),
    })
}

/// How one output stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamEnd {
    /// The process's exit code (128+N for signal N), when the agent knew it.
    pub exit_code: Option<i32>,
    /// The policy refused reading this stream (its explanation); the exit
    /// code was then learnt from the container's state (init processes only).
    pub denied: Option<String>,
}

/// Copy one output stream of a process (`exec_id` empty: the container's
/// init) to `out` until it ends. `on_denied` hears at once when the policy
/// refuses reading it; an init process's exit is then polled from its
/// state, an exec's is unknown (`Err(Denied)`). Write errors on `out` (a
/// reader that went away) drop the bytes, not the stream: the exit code
/// still arrives.
pub fn pump(
    c: &mut AgentClient,
    container_id: &str,
    exec_id: &str,
    stream: Stream,
    out: &mut dyn Write,
    on_denied: &mut dyn FnMut(&str),
) -> Result<StreamEnd, CallError> {
    loop {
        let r: Result<ReadStreamResult, CallError> =
            c.call_typed(AgentRequest::ReadStream(ReadStreamRequest {
                container_id: container_id.into(),
                exec_id: exec_id.into(),
                stream,
                max_bytes: 0,
            }));
        match r {
            Ok(r) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(r.data)
                    .unwrap_or_default();
                if !bytes.is_empty() {
                    let _ = out.write_all(&bytes).and_then(|_| out.flush());
                }
                if r.eof {
                    return Ok(StreamEnd {
                        exit_code: r.exit_code,
                        denied: None,
                    });
                }
            }
            Err(e) if e.is_denied() && exec_id.is_empty() => {
                let msg = e.to_string();
                on_denied(&msg);
                let code = wait_init(c, container_id, EXIT_POLL)?;
                return Ok(StreamEnd {
                    exit_code: Some(code),
                    denied: Some(msg),
                });
            }
            Err(e) => return Err(e),
        }
    }
}

/// Wait for a container's init process to exit, polling its state every
/// `every`; its exit code.
pub fn wait_init(
    c: &mut AgentClient,
    container_id: &str,
    every: Duration,
) -> Result<i32, CallError> {
    loop {
        let s: StatsContainerResult =
            c.call_typed(AgentRequest::StatsContainer(StatsContainerRequest {
                container_id: container_id.into(),
            }))?;
        if let Some(code) = s.exit_code {
            return Ok(code);
        }
        std::thread::sleep(every);
    }
}

/// Forward `input` to a process's stdin until either ends; the end of
/// `input` closes the process's stdin (an empty write).
pub fn forward_stdin(
    c: &mut AgentClient,
    container_id: &str,
    exec_id: &str,
    input: &mut dyn Read,
) -> Result<(), CallError> {
    let mut buf = vec![0u8; STDIN_CHUNK];
    loop {
        let n = match input.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => 0,
        };
        // n == 0 sends the empty write that closes the process's stdin.
        c.call(AgentRequest::WriteStdin(WriteStdinRequest {
            container_id: container_id.into(),
            exec_id: exec_id.into(),
            data: Bytes(buf[..n].to_vec()),
        }))?;
        if n == 0 {
            return Ok(());
        }
    }
}

/// The streams of one process being copied (see [`attach`]).
pub struct Attached {
    stdout: JoinHandle<Result<StreamEnd, CallError>>,
    stderr: JoinHandle<Result<StreamEnd, CallError>>,
}

/// How an attached process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exit {
    /// Its exit code (128+N for signal N); `None` if the agent never said.
    pub code: Option<i32>,
    /// Why the policy kept its output from the host, if it did.
    pub denied: Option<String>,
}

impl Attached {
    /// Wait until both output streams have ended (everything the process
    /// wrote was delivered) and return how it exited.
    pub fn wait(self) -> Result<Exit, CallError> {
        let join = |h: JoinHandle<Result<StreamEnd, CallError>>| {
            h.join()
                .unwrap_or_else(|_| Err(CallError::Failed("an output pump panicked".into())))
        };
        let out = join(self.stdout)?;
        let err = join(self.stderr)?;
        Ok(Exit {
            code: out.exit_code.or(err.exit_code),
            denied: out.denied.or(err.denied),
        })
    }
    /// Call `f` with how the process ended, on a thread of its own: the
    /// exit event a front-end publishes (containerd's `TaskExit`).
    pub fn on_exit(
        self,
        f: impl FnOnce(Result<Exit, CallError>) + Send + 'static,
    ) -> JoinHandle<()> {
        std::thread::spawn(move || f(self.wait()))
    }
}

/// Wire a process's streams: one connection and thread per output stream
/// (connected before this returns, so a dead agent fails here), and one for
/// stdin when given. Call it once the process exists (after `start` or
/// `exec`: the agent keeps what the process writes until it is read). The
/// caller waits for the exit with [`Attached::wait`].
pub fn attach(
    socket: &Path,
    container_id: &str,
    exec_id: &str,
    stdio: Stdio,
    timeout: Duration,
) -> Result<Attached, CallError> {
    let out_conn = AgentClient::connect(socket, timeout)?;
    let err_conn = AgentClient::connect(socket, timeout)?;
    let stdin_conn = match stdio.stdin {
        Some(_) => Some(AgentClient::connect(socket, timeout)?),
        None => None,
    };
    let spawn = |mut c: AgentClient, stream: Stream, sink: Sink| {
        let (cid, eid) = (container_id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            let mut out = open_sink(sink).map_err(CallError::Io)?;
            pump(&mut c, &cid, &eid, stream, &mut out, &mut |_| {})
        })
    };
    let stdout = spawn(out_conn, Stream::Stdout, stdio.stdout);
    let stderr = spawn(err_conn, Stream::Stderr, stdio.stderr);
    if let (Some(mut c), Some(src)) = (stdin_conn, stdio.stdin) {
        let (cid, eid) = (container_id.to_string(), exec_id.to_string());
        std::thread::spawn(move || {
            let mut input: Box<dyn Read + Send> = match src {
                Source::Reader(r) => r,
                Source::Path(p) => match std::fs::File::open(&p) {
                    Ok(f) => Box::new(f),
                    // Nothing to forward: close the process's stdin.
                    Err(_) => Box::new(std::io::empty()),
                },
            };
            let _ = forward_stdin(&mut c, &cid, &eid, &mut input);
        });
    }
    Ok(Attached { stdout, stderr })
}
