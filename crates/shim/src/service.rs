//! The ttrpc Task service containerd drives: containerd's bookkeeping
//! (task states, exit statuses, events) over a [`Sandbox`].
//!
//! Pods: the CRI's sandbox (pause) container creates the veil sandbox and
//! stands for it (it runs nothing: veil's sandbox is the agent, not a pause
//! process); the pod's other containers join it. A container without CRI
//! annotations (`ctr run`) is a sandbox of its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::SystemTime;

use containerd_shim_protos as protos;
use protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse, Status,
    WaitRequest, WaitResponse,
};
use protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskStart,
};
use protos::shim::shim::{CheckpointTaskRequest, UpdateTaskRequest};
use protos::ttrpc::{self, Code, TtrpcContext};

use crate::annotations::{self, Role};
use crate::backend::{
    BackendError, ContainerRequest, ExecRequest, FailureKind, Launcher, ProcRef, ProcessIo,
    Sandbox, SandboxRequest,
};
use crate::config::{self, ShimConfig};
use crate::content::{self, WantedImage};
use crate::events::{Publisher, timestamp, topic};
use crate::spec::{self, ContainerSpec};

/// Set once the shim should exit (after `Shutdown` with no task left).
#[derive(Default)]
pub struct ExitSignal(Mutex<bool>, Condvar);

impl ExitSignal {
    pub fn signal(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.1.notify_all();
    }
    pub fn wait(&self) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        while !*g {
            g = self.1.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// A process's exit, set once; `Wait` blocks on it.
#[derive(Default)]
struct ExitCell(Mutex<Option<(u32, SystemTime)>>, Condvar);

impl ExitCell {
    fn set(&self, code: u32) -> bool {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_some() {
            return false;
        }
        *g = Some((code, SystemTime::now()));
        self.1.notify_all();
        true
    }
    fn get(&self) -> Option<(u32, SystemTime)> {
        *self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn wait(&self) -> (u32, SystemTime) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if let Some(v) = *g {
                return v;
            }
            g = self.1.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }
}

#[derive(Clone)]
struct Proc {
    io: ProcessIo,
    started: bool,
    exit: Arc<ExitCell>,
    /// containerd asked for SIGKILL: a 137 is then its kill, not the OOM
    /// killer's, and the exit is reported without asking the sandbox.
    host_killed: Arc<std::sync::atomic::AtomicBool>,
}

impl Proc {
    fn new(io: ProcessIo) -> Self {
        Proc {
            io,
            started: false,
            exit: Arc::default(),
            host_killed: Arc::default(),
        }
    }
    fn status(&self) -> Status {
        match (self.started, self.exit.get()) {
            (_, Some(_)) => Status::STOPPED,
            (true, None) => Status::RUNNING,
            (false, None) => Status::CREATED,
        }
    }
}

struct Task {
    bundle: String,
    /// The pod's sandbox container: stands for the sandbox, runs nothing.
    pause: bool,
    /// This task created the sandbox (pause container or standalone).
    owns_sandbox: bool,
    init: Proc,
    execs: BTreeMap<String, Proc>,
}

#[derive(Default)]
struct State {
    sandbox: Option<Box<dyn Sandbox>>,
    /// The shim's own dir for the sandbox (its image layout); removed with it.
    sandbox_dir: Option<PathBuf>,
    tasks: BTreeMap<String, Task>,
}

/// Runs sandbox launches on one thread that lives as long as the shim:
/// the process sandbox dies with the thread that launched it, and ttrpc's
/// worker threads come and go.
struct Owner(Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>);

impl Owner {
    fn spawn() -> Self {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        std::thread::Builder::new()
            .name("sandbox-owner".into())
            .spawn(move || {
                for job in rx {
                    job();
                }
                // Keep the thread (and so the sandboxes' death signal)
                // until the process exits.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawning the sandbox-owner thread");
        Owner(Mutex::new(tx))
    }

    fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, BackendError> {
        let (rtx, rrx) = mpsc::channel();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(Box::new(move || {
                let _ = rtx.send(f());
            }))
            .map_err(|_| BackendError::failed("the sandbox-owner thread is gone"))?;
        rrx.recv()
            .map_err(|_| BackendError::failed("the sandbox-owner thread panicked"))
    }
}

/// The Task service of one shim (one pod, or one standalone container).
pub struct Service {
    namespace: String,
    publisher: Arc<Publisher>,
    launcher: Arc<dyn Launcher>,
    state: Arc<Mutex<State>>,
    exit: Arc<ExitSignal>,
    owner: Owner,
    /// Config override (tests); else [`ShimConfig::load`] at sandbox creation.
    config: Option<Arc<ShimConfig>>,
}

fn status(code: Code, msg: impl std::fmt::Display) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.to_string()))
}

fn backend_err(e: BackendError) -> ttrpc::Error {
    let code = match e.kind {
        FailureKind::Denied => Code::PERMISSION_DENIED,
        FailureKind::NotFound | FailureKind::Exited => Code::NOT_FOUND,
        FailureKind::Failed => Code::FAILED_PRECONDITION,
    };
    status(code, e.message)
}

fn task_exists(st: &State, id: &str) -> ttrpc::Result<()> {
    if st.tasks.contains_key(id) {
        Ok(())
    } else {
        Err(status(Code::NOT_FOUND, format!("task {id:?} not found")))
    }
}

/// Remove the shim's dir of a sandbox, and its namespace dir once empty.
fn remove_dir(dir: Option<&Path>) {
    let Some(dir) = dir else { return };
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::error!(dir = %dir.display(), error = %e, "removing the sandbox's layout dir");
        }
    }
    if let Some(ns) = dir.parent() {
        let _ = std::fs::remove_dir(ns);
    }
}

fn path_opt(s: &str) -> Option<PathBuf> {
    (!s.is_empty()).then(|| PathBuf::from(s))
}

fn exec_opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Service {
    pub fn new(
        namespace: &str,
        publisher: Publisher,
        launcher: Arc<dyn Launcher>,
        exit: Arc<ExitSignal>,
        config: Option<Arc<ShimConfig>>,
    ) -> Self {
        Service {
            namespace: namespace.into(),
            publisher: Arc::new(publisher),
            launcher,
            state: Arc::default(),
            exit,
            owner: Owner::spawn(),
            config,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn pid(st: &State) -> u32 {
        st.sandbox.as_ref().map_or(std::process::id(), |s| s.pid())
    }

    /// Everything the sandbox of a pod needs, from the first container's spec.
    fn sandbox_request(
        &self,
        id: &str,
        spec: &ContainerSpec,
    ) -> Result<SandboxRequest, ttrpc::Error> {
        let pre = |m: String| status(Code::FAILED_PRECONDITION, m);
        let loaded;
        let cfg = match &self.config {
            Some(c) => c.as_ref(),
            None => {
                loaded = ShimConfig::load().map_err(|e| pre(e.to_string()))?;
                &loaded
            }
        };
        let handler_name =
            config::handler_name(&spec.annotations, std::env::args_os().next().as_deref());
        let handler = cfg
            .handler(&handler_name)
            .map_err(|e| pre(e.to_string()))?
            .clone();
        let pod = annotations::pod_init_data(&spec.annotations)
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let Some(pod) = pod else {
            return Err(pre(format!(
                "no init-data: the pod carries neither the {} nor the {} annotation, so there is no policy to run it under (runtime handler {handler_name:?}); \
                 annotate the pod with `veil policy generate pod.yaml` (or CoCo's/Kata's tooling) and, for the CRI, allow both in containerd's pod_annotations",
                annotations::INIT_DATA,
                annotations::AGENT_POLICY
            )));
        };
        handler
            .check_kbs(&handler_name, &pod.parsed)
            .map_err(|e| status(Code::FAILED_PRECONDITION, e))?;
        let policy = pod.parsed.init_data.policy().map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("annotation {}: {e}", pod.annotation),
            )
        })?;
        let data = veil_policy::rego::extract_policy_data(policy).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("annotation {}: the policy's data: {e}", pod.annotation),
            )
        })?;
        let mut images: Vec<WantedImage> = data
            .containers
            .iter()
            .map(|c| WantedImage {
                reference: c.image.reference.clone(),
                digest: c.image.digest.clone(),
            })
            .collect();
        images.sort();
        images.dedup();
        let dir = handler.shim_dir(&self.namespace, id);
        let layout = match handler.pull {
            // The guest pulls each image from its registry by the digest
            // its policy pins: what the kubelet pulled on the host is not
            // used, and no layout is built.
            config::Pull::Guest
                if handler.sandbox == config::SandboxKind::Vm && spec.netns.is_none() =>
            {
                return Err(pre(format!(
                    "runtime handler {handler_name:?} pulls images in the guest (pull = \"guest\"), but the pod's spec names no network namespace, so its VM has no network to reach a registry; run it through the CRI (which gives the pod a network), or set pull = \"host\" for this handler"
                )));
            }
            config::Pull::Guest => None,
            config::Pull::Host => {
                let layout = dir.join("layout");
                if layout.exists() {
                    std::fs::remove_dir_all(&layout).map_err(|e| {
                        pre(format!(
                            "removing the stale layout {}: {e}",
                            layout.display()
                        ))
                    })?;
                }
                content::layout_from_store(&handler.containerd_root, &images, &layout)
                    .map_err(|e| pre(e.to_string()))?;
                Some(layout)
            }
        };
        Ok(SandboxRequest {
            id: id.into(),
            namespace: self.namespace.clone(),
            handler_name,
            handler,
            init_data: pod.parsed,
            init_data_source: format!("the pod's {} annotation", pod.annotation),
            dir,
            layout,
            netns: spec.netns.clone(),
            pod_name: spec.annotations.get(annotations::SANDBOX_NAME).cloned(),
            pod_namespace: spec
                .annotations
                .get(annotations::SANDBOX_NAMESPACE)
                .cloned(),
            hostname: spec.hostname.clone(),
        })
    }

    /// Whether the OOM killer killed a process of container `id` (its
    /// cgroup's `oom_kill` count; never in the process sandbox, which has
    /// no cgroup of its own).
    fn oom_killed(state: &Mutex<State>, id: &str) -> bool {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        let Some(sandbox) = st.sandbox.as_mut() else {
            return false;
        };
        match sandbox.stats(id) {
            Ok(u) => u.is_some_and(|u| u.oom_killed()),
            Err(e) => {
                tracing::warn!(task = ?id, error = %e, "reading the container's OOM kills");
                false
            }
        }
    }

    fn publish_exit(publisher: &Publisher, container_id: &str, exec_id: &str, pid: u32, code: u32) {
        let mut ev = TaskExit::new();
        ev.container_id = container_id.into();
        ev.id = if exec_id.is_empty() {
            container_id.into()
        } else {
            exec_id.into()
        };
        ev.pid = pid;
        ev.exit_status = code;
        ev.exited_at = Some(timestamp(SystemTime::now())).into();
        publisher.publish(topic::EXIT, &ev);
    }

    /// Run `f` on the sandbox for a process that must exist.
    fn on_process<T>(
        &self,
        id: &str,
        exec_id: &str,
        f: impl FnOnce(&mut dyn Sandbox, &ProcRef) -> Result<T, BackendError>,
    ) -> ttrpc::Result<T> {
        let mut st = self.lock();
        Self::proc_mut(&mut st, id, exec_id)?;
        let pref = ProcRef {
            container_id: id.into(),
            exec_id: exec_opt(exec_id),
        };
        let sandbox = st
            .sandbox
            .as_mut()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox is gone"))?;
        f(sandbox.as_mut(), &pref).map_err(backend_err)
    }

    fn proc_mut<'a>(
        st: &'a mut State,
        id: &str,
        exec_id: &str,
    ) -> Result<&'a mut Proc, ttrpc::Error> {
        let task = st
            .tasks
            .get_mut(id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("task {id:?} not found")))?;
        if exec_id.is_empty() {
            return Ok(&mut task.init);
        }
        task.execs.get_mut(exec_id).ok_or_else(|| {
            status(
                Code::NOT_FOUND,
                format!("exec {exec_id:?} of task {id:?} not found"),
            )
        })
    }
}

impl protos::Task for Service {
    fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> ttrpc::Result<CreateTaskResponse> {
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(status(
                Code::UNIMPLEMENTED,
                "veil sandboxes cannot be restored from checkpoints",
            ));
        }
        let spec = spec::read_bundle(Path::new(&req.bundle))
            .map_err(|e| status(Code::INVALID_ARGUMENT, e))?;
        let role = annotations::role(&spec.annotations);
        let io = ProcessIo {
            stdin: path_opt(&req.stdin),
            stdout: path_opt(&req.stdout),
            stderr: path_opt(&req.stderr),
            terminal: req.terminal,
        };
        let mut st = self.lock();
        if st.tasks.contains_key(&req.id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("task {:?} already exists", req.id),
            ));
        }
        let owns_sandbox = match (&role, st.sandbox.is_some()) {
            (Role::PodContainer { .. }, true) => false,
            (Role::PodContainer { sandbox_id }, false) => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "container {:?} belongs to pod sandbox {sandbox_id:?}, which this shim does not run (create the pod sandbox first)",
                        req.id
                    ),
                ));
            }
            (_, true) => {
                return Err(status(
                    Code::FAILED_PRECONDITION,
                    format!(
                        "this shim already runs a sandbox; container {:?} has no {} annotation naming it",
                        req.id,
                        annotations::SANDBOX_ID
                    ),
                ));
            }
            (_, false) => {
                let sreq = self.sandbox_request(&req.id, &spec)?;
                let dir = Some(sreq.dir.clone());
                let launcher = self.launcher.clone();
                let launched = self
                    .owner
                    .run(move || launcher.launch(sreq))
                    .and_then(|r| r);
                match launched {
                    Ok(sandbox) => {
                        st.sandbox = Some(sandbox);
                        st.sandbox_dir = dir;
                    }
                    Err(e) => {
                        remove_dir(dir.as_deref());
                        return Err(backend_err(e));
                    }
                }
                true
            }
        };
        let pause = role == Role::PodSandbox;
        if !pause {
            let creq = ContainerRequest {
                id: req.id.clone(),
                name: spec.annotations.get(annotations::CONTAINER_NAME).cloned(),
                spec: spec.clone(),
                io: io.clone(),
            };
            let sandbox = st.sandbox.as_mut().expect("sandbox set above");
            if let Err(e) = sandbox.create_container(&creq) {
                if owns_sandbox {
                    if let Some(s) = st.sandbox.take() {
                        if let Err(se) = s.stop() {
                            tracing::error!(error = %se, "stopping the sandbox after a failed create");
                        }
                    }
                    remove_dir(st.sandbox_dir.take().as_deref());
                }
                return Err(backend_err(e));
            }
        }
        st.tasks.insert(
            req.id.clone(),
            Task {
                bundle: req.bundle.clone(),
                pause,
                owns_sandbox,
                init: Proc::new(io.clone()),
                execs: BTreeMap::new(),
            },
        );
        let pid = Self::pid(&st);
        drop(st);
        let mut ev = TaskCreate::new();
        ev.container_id = req.id.clone();
        ev.bundle = req.bundle.clone();
        ev.rootfs = req.rootfs.clone();
        let mut tio = TaskIO::new();
        tio.stdin = req.stdin.clone();
        tio.stdout = req.stdout.clone();
        tio.stderr = req.stderr.clone();
        tio.terminal = req.terminal;
        ev.io = Some(tio).into();
        ev.pid = pid;
        self.publisher.publish(topic::CREATE, &ev);
        let mut resp = CreateTaskResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> ttrpc::Result<StartResponse> {
        let mut st = self.lock();
        let pid = Self::pid(&st);
        let pause = st.tasks.get(&req.id).is_some_and(|t| t.pause) && req.exec_id.is_empty();
        let p = Self::proc_mut(&mut st, &req.id, &req.exec_id)?;
        if p.started {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("{:?} was already started", req.id),
            ));
        }
        let exit = p.exit.clone();
        let host_killed = p.host_killed.clone();
        let waiter = if pause {
            None
        } else {
            let pref = ProcRef {
                container_id: req.id.clone(),
                exec_id: exec_opt(&req.exec_id),
            };
            let sandbox = st
                .sandbox
                .as_mut()
                .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox is gone"))?;
            match sandbox.start(&pref) {
                Ok(w) => Some(w),
                Err(e) => {
                    // An exec that could not start (refused by the policy, a
                    // command that does not exist) has ended: a Wait on it
                    // returns, as for runc, with 126 ("cannot execute").
                    if !req.exec_id.is_empty() {
                        exit.set(126);
                    }
                    return Err(backend_err(e));
                }
            }
        };
        Self::proc_mut(&mut st, &req.id, &req.exec_id)?.started = true;
        drop(st);
        if req.exec_id.is_empty() {
            let mut ev = TaskStart::new();
            ev.container_id = req.id.clone();
            ev.pid = pid;
            self.publisher.publish(topic::START, &ev);
        } else {
            let mut ev = TaskExecStarted::new();
            ev.container_id = req.id.clone();
            ev.exec_id = req.exec_id.clone();
            ev.pid = pid;
            self.publisher.publish(topic::EXEC_STARTED, &ev);
        }
        if let Some(waiter) = waiter {
            let publisher = self.publisher.clone();
            let state = self.state.clone();
            let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
            std::thread::spawn(move || {
                let code = match waiter() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(task = ?id, exec = ?exec_id, error = %e, "waiting for the process; reporting exit 255");
                        255
                    }
                };
                // An out-of-memory kill is a SIGKILL (137) the container's
                // cgroup counted: containerd hears of it before the exit,
                // which is how the CRI reports the reason OOMKilled.
                if exec_id.is_empty()
                    && code == 137
                    && !host_killed.load(std::sync::atomic::Ordering::SeqCst)
                    && Self::oom_killed(&state, &id)
                {
                    let mut ev = TaskOOM::new();
                    ev.container_id = id.clone();
                    publisher.publish(topic::OOM, &ev);
                }
                if exit.set(code) {
                    Self::publish_exit(&publisher, &id, &exec_id, pid, code);
                }
            });
        }
        let mut resp = StartResponse::new();
        resp.pid = pid;
        Ok(resp)
    }

    fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> ttrpc::Result<DeleteResponse> {
        let mut st = self.lock();
        let pid = Self::pid(&st);
        let p = Self::proc_mut(&mut st, &req.id, &req.exec_id)?.clone();
        if p.status() == Status::RUNNING {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!("task {:?} is running: kill it before deleting it", req.id),
            ));
        }
        // A process created but never started is reported as exited with 0.
        let (code, at) = p.exit.get().unwrap_or((0, SystemTime::now()));
        let mut resp = DeleteResponse::new();
        resp.pid = pid;
        resp.exit_status = code;
        resp.exited_at = Some(timestamp(at)).into();
        if !req.exec_id.is_empty() {
            if let Some(t) = st.tasks.get_mut(&req.id) {
                t.execs.remove(&req.exec_id);
            }
            return Ok(resp);
        }
        let task = st.tasks.remove(&req.id).expect("looked up above");
        // Execs that never ran or whose end was not seen end with the task.
        for e in task.execs.values() {
            e.exit.set(137);
        }
        let mut result = Ok(());
        if !task.pause {
            if let Some(s) = st.sandbox.as_mut() {
                result = s.remove_container(&req.id);
            }
        }
        if task.owns_sandbox {
            // The pod is going: containers the CRI did not delete go with it.
            let others: Vec<String> = st.tasks.keys().cloned().collect();
            for other in others {
                if let Some(s) = st.sandbox.as_mut() {
                    let _ = s.remove_container(&other);
                }
                if let Some(t) = st.tasks.remove(&other) {
                    for p in std::iter::once(&t.init).chain(t.execs.values()) {
                        p.exit.set(137);
                    }
                }
            }
            if let Some(s) = st.sandbox.take() {
                let stopped = s.stop();
                if result.is_ok() {
                    result = stopped;
                }
            }
            remove_dir(st.sandbox_dir.take().as_deref());
        }
        drop(st);
        let mut ev = TaskDelete::new();
        ev.container_id = req.id.clone();
        ev.id = req.id.clone();
        ev.pid = pid;
        ev.exit_status = code;
        ev.exited_at = Some(timestamp(at)).into();
        self.publisher.publish(topic::DELETE, &ev);
        result.map_err(backend_err)?;
        Ok(resp)
    }

    fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> ttrpc::Result<Empty> {
        let process = spec::parse_process(&req.spec.value).map_err(|e| {
            status(
                Code::INVALID_ARGUMENT,
                format!("exec {:?}: the process spec: {e}", req.exec_id),
            )
        })?;
        let io = ProcessIo {
            stdin: path_opt(&req.stdin),
            stdout: path_opt(&req.stdout),
            stderr: path_opt(&req.stderr),
            terminal: req.terminal,
        };
        let mut st = self.lock();
        let task = st
            .tasks
            .get(&req.id)
            .ok_or_else(|| status(Code::NOT_FOUND, format!("task {:?} not found", req.id)))?;
        if task.pause {
            return Err(status(
                Code::FAILED_PRECONDITION,
                format!(
                    "{:?} is the pod's sandbox container, which runs nothing in veil: exec into one of the pod's containers",
                    req.id
                ),
            ));
        }
        if task.execs.contains_key(&req.exec_id) {
            return Err(status(
                Code::ALREADY_EXISTS,
                format!("exec {:?} already exists", req.exec_id),
            ));
        }
        let ereq = ExecRequest {
            container_id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            process,
            io: io.clone(),
        };
        st.sandbox
            .as_mut()
            .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox is gone"))?
            .exec(&ereq)
            .map_err(backend_err)?;
        st.tasks
            .get_mut(&req.id)
            .expect("looked up above")
            .execs
            .insert(req.exec_id.clone(), Proc::new(io));
        drop(st);
        let mut ev = TaskExecAdded::new();
        ev.container_id = req.id.clone();
        ev.exec_id = req.exec_id.clone();
        self.publisher.publish(topic::EXEC_ADDED, &ev);
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> ttrpc::Result<Empty> {
        self.on_process(&req.id, &req.exec_id, |s, p| {
            s.resize_pty(p, req.width, req.height)
        })?;
        Ok(Empty::new())
    }

    fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> ttrpc::Result<StateResponse> {
        let mut st = self.lock();
        let pid = Self::pid(&st);
        let bundle = st
            .tasks
            .get(&req.id)
            .map(|t| t.bundle.clone())
            .unwrap_or_default();
        let p = Self::proc_mut(&mut st, &req.id, &req.exec_id)?;
        let mut resp = StateResponse::new();
        resp.id = req.id.clone();
        resp.exec_id = req.exec_id.clone();
        resp.bundle = bundle;
        resp.pid = pid;
        resp.status = p.status().into();
        resp.stdin =
            p.io.stdin
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
        resp.stdout =
            p.io.stdout
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
        resp.stderr =
            p.io.stderr
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
        resp.terminal = p.io.terminal;
        if let Some((code, at)) = p.exit.get() {
            resp.exit_status = code;
            resp.exited_at = Some(timestamp(at)).into();
        }
        Ok(resp)
    }

    fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> ttrpc::Result<PidsResponse> {
        let st = self.lock();
        task_exists(&st, &req.id)?;
        let mut info = ProcessInfo::new();
        info.pid = Self::pid(&st);
        let mut resp = PidsResponse::new();
        resp.processes.push(info);
        Ok(resp)
    }

    fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> ttrpc::Result<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!(
                "cannot pause {:?}: veil sandboxes do not support pause/resume (the guest's processes keep running); stop the task instead",
                req.id
            ),
        ))
    }

    fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> ttrpc::Result<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!(
                "cannot resume {:?}: veil sandboxes do not support pause/resume",
                req.id
            ),
        ))
    }

    fn checkpoint(&self, _ctx: &TtrpcContext, req: CheckpointTaskRequest) -> ttrpc::Result<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!(
                "cannot checkpoint {:?}: a confidential sandbox's memory never leaves the TEE",
                req.id
            ),
        ))
    }

    fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> ttrpc::Result<Empty> {
        Err(status(
            Code::UNIMPLEMENTED,
            format!(
                "cannot update the resources of {:?}: veil applies the limits a container is \
                 created with (bounded by its policy); changing them while it runs is not \
                 supported: recreate the container",
                req.id
            ),
        ))
    }

    fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> ttrpc::Result<Empty> {
        let mut st = self.lock();
        let pid = Self::pid(&st);
        let pause = st.tasks.get(&req.id).is_some_and(|t| t.pause) && req.exec_id.is_empty();
        let p = Self::proc_mut(&mut st, &req.id, &req.exec_id)?.clone();
        if p.exit.get().is_some() {
            return Err(status(
                Code::NOT_FOUND,
                format!("process {:?} already finished", req.id),
            ));
        }
        if pause || !p.started {
            // The pause container (or a process never started) has nothing
            // to signal: it ends now, as killed.
            drop(st);
            let code = 128 + req.signal;
            if p.exit.set(code) {
                Self::publish_exit(&self.publisher, &req.id, &req.exec_id, pid, code);
            }
            return Ok(Empty::new());
        }
        if req.signal == 9 {
            p.host_killed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        drop(st);
        self.on_process(&req.id, &req.exec_id, |s, p| s.signal(p, req.signal))?;
        Ok(Empty::new())
    }

    fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> ttrpc::Result<Empty> {
        if req.stdin {
            self.on_process(&req.id, &req.exec_id, |s, p| s.close_stdin(p))?;
        }
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> ttrpc::Result<WaitResponse> {
        let exit = {
            let mut st = self.lock();
            Self::proc_mut(&mut st, &req.id, &req.exec_id)?.exit.clone()
        };
        let (code, at) = exit.wait();
        let mut resp = WaitResponse::new();
        resp.exit_status = code;
        resp.exited_at = Some(timestamp(at)).into();
        Ok(resp)
    }

    fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> ttrpc::Result<StatsResponse> {
        let mut st = self.lock();
        task_exists(&st, &req.id)?;
        let pause = st.tasks.get(&req.id).is_some_and(|t| t.pause);
        let usage = if pause {
            None
        } else {
            let sandbox = st
                .sandbox
                .as_mut()
                .ok_or_else(|| status(Code::FAILED_PRECONDITION, "the sandbox is gone"))?;
            sandbox.stats(&req.id).map_err(backend_err)?
        };
        drop(st);
        let usage = usage.ok_or_else(|| {
            status(
                Code::NOT_FOUND,
                format!(
                    "no stats for {:?}: it is not running (the pod's sandbox container runs \
                     nothing; a process sandbox's container that exited has no processes left \
                     to measure)",
                    req.id
                ),
            )
        })?;
        let mut resp = StatsResponse::new();
        resp.stats =
            Some(crate::metrics::stats_any(&usage).map_err(|e| status(Code::INTERNAL, e))?).into();
        Ok(resp)
    }

    fn connect(&self, _ctx: &TtrpcContext, req: ConnectRequest) -> ttrpc::Result<ConnectResponse> {
        let st = self.lock();
        task_exists(&st, &req.id)?;
        let mut resp = ConnectResponse::new();
        resp.shim_pid = std::process::id();
        resp.task_pid = Self::pid(&st);
        resp.version = env!("CARGO_PKG_VERSION").into();
        Ok(resp)
    }

    fn shutdown(&self, _ctx: &TtrpcContext, _req: ShutdownRequest) -> ttrpc::Result<Empty> {
        let st = self.lock();
        if st.tasks.is_empty() {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
