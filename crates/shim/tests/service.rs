//! The Task service over ttrpc, as containerd drives it, with a recording
//! sandbox in place of veil-runtime: task states, exit statuses, pod
//! grouping, and the refusals containerd passes on to users.

use std::collections::BTreeMap;
use std::os::fd::IntoRawFd;
use std::path::Path;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use containerd_shim_protos as protos;
use protos::api::*;
use protos::ttrpc::context::Context;
use protos::ttrpc::{self, Code};
use veil_shim::backend::*;
use veil_shim::config::{HandlerConfig, ShimConfig};
use veil_shim::service::{ExitSignal, Service};

#[derive(Default)]
struct Log(Mutex<Vec<String>>);
impl Log {
    fn push(&self, s: impl Into<String>) {
        self.0.lock().unwrap().push(s.into());
    }
    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// Exits of started processes, sent by the test.
type Exits = Arc<Mutex<BTreeMap<ProcRef, mpsc::Sender<u32>>>>;

struct FakeSandbox {
    log: Arc<Log>,
    exits: Exits,
}

/// What the fake agent reports for container `id`: `oom-*` containers
/// were OOM-killed; `gone-*` have nothing left to measure.
fn fake_usage(id: &str) -> Option<veil_agent_api::resources::ResourceUsage> {
    use veil_agent_api::resources::{MemoryEvents, ResourceUsage};
    if id.starts_with("gone-") {
        return None;
    }
    Some(ResourceUsage {
        source: "cgroup".into(),
        enforced: true,
        memory_current: 3 << 20,
        memory_peak: 32 << 20,
        memory_max: Some(32 << 20),
        memory_events: MemoryEvents {
            max: 7,
            oom: u64::from(id.starts_with("oom-")),
            oom_kill: u64::from(id.starts_with("oom-")),
            ..Default::default()
        },
        cpu_usage_usec: 1500,
        cpu_user_usec: 1000,
        cpu_system_usec: 500,
        cpu_nr_periods: 10,
        cpu_nr_throttled: 2,
        cpu_throttled_usec: 300,
        pids_current: 2,
        pids_max: None,
    })
}

impl Sandbox for FakeSandbox {
    fn pid(&self) -> u32 {
        4242
    }
    fn create_container(&mut self, req: &ContainerRequest) -> Result<(), BackendError> {
        self.log.push(format!(
            "create {} {:?} {:?}",
            req.id, req.name, req.spec.process.args
        ));
        Ok(())
    }
    fn start(&mut self, p: &ProcRef) -> Result<Waiter, BackendError> {
        self.log
            .push(format!("start {} {:?}", p.container_id, p.exec_id));
        let (tx, rx) = mpsc::channel();
        self.exits.lock().unwrap().insert(p.clone(), tx);
        Ok(Box::new(move || {
            rx.recv().map_err(|_| BackendError::failed("gone"))
        }))
    }
    fn exec(&mut self, req: &ExecRequest) -> Result<(), BackendError> {
        if req.process.args.first().map(String::as_str) == Some("/bin/forbidden") {
            return Err(BackendError {
                kind: FailureKind::Denied,
                message: "exec_process: argv [\"/bin/forbidden\"] is not in the policy's exec list for container \"app\"".into(),
            });
        }
        self.log.push(format!(
            "exec {} {} {:?}",
            req.container_id, req.exec_id, req.process.args
        ));
        Ok(())
    }
    fn signal(&mut self, p: &ProcRef, signal: u32) -> Result<(), BackendError> {
        self.log.push(format!(
            "signal {} {:?} {signal}",
            p.container_id, p.exec_id
        ));
        if let Some(tx) = self.exits.lock().unwrap().get(p) {
            let _ = tx.send(128 + signal);
        }
        Ok(())
    }
    fn resize_pty(&mut self, p: &ProcRef, w: u32, h: u32) -> Result<(), BackendError> {
        self.log.push(format!("resize {} {w}x{h}", p.container_id));
        Ok(())
    }
    fn close_stdin(&mut self, p: &ProcRef) -> Result<(), BackendError> {
        self.log.push(format!("close-stdin {}", p.container_id));
        Ok(())
    }
    fn stats(
        &mut self,
        id: &str,
    ) -> Result<Option<veil_agent_api::resources::ResourceUsage>, BackendError> {
        Ok(fake_usage(id))
    }
    fn remove_container(&mut self, id: &str) -> Result<(), BackendError> {
        self.log.push(format!("remove {id}"));
        Ok(())
    }
    fn stop(self: Box<Self>) -> Result<(), BackendError> {
        self.log.push("stop");
        Ok(())
    }
}

struct FakeLauncher {
    log: Arc<Log>,
    exits: Exits,
}

impl Launcher for FakeLauncher {
    fn launch(&self, req: SandboxRequest) -> Result<Box<dyn Sandbox>, BackendError> {
        // Pulled on the host (the default): the layout is built before
        // launch; pulled in the guest (`pull = "guest"`): there is none.
        let host_pull = req.handler.pull == veil_shim::config::Pull::Host;
        assert_eq!(
            req.layout
                .as_ref()
                .is_some_and(|l| l.join("index.json").is_file()),
            host_pull,
            "a layout is built before launch exactly when the host pulls"
        );
        self.log.push(format!(
            "launch {} {} netns={:?}",
            req.id, req.init_data_source, req.netns
        ));
        Ok(Box::new(FakeSandbox {
            log: self.log.clone(),
            exits: self.exits.clone(),
        }))
    }
    fn cleanup(&self, _h: &HandlerConfig, _ns: &str, id: &str) -> Result<(), BackendError> {
        self.log.push(format!("cleanup {id}"));
        Ok(())
    }
}

/// containerd's Events service: records each forwarded event's topic.
struct Events(Arc<Log>);
impl protos::shim::events_ttrpc::Events for Events {
    fn forward(
        &self,
        _ctx: &ttrpc::TtrpcContext,
        req: protos::shim::events::ForwardRequest,
    ) -> ttrpc::Result<Empty> {
        let env = req.envelope.unwrap_or_default();
        self.0.push(format!(
            "{} {}",
            env.topic,
            env.event.map(|a| a.type_url).unwrap_or_default()
        ));
        Ok(Default::default())
    }
}

struct Harness {
    dir: tempfile::TempDir,
    client: protos::TaskClient,
    log: Arc<Log>,
    /// Topics (and event types) the service published to containerd.
    events: Arc<Log>,
    _events_server: ttrpc::Server,
    exits: Exits,
    exit: Arc<ExitSignal>,
    _server: ttrpc::Server,
    init_data_b64: String,
}

/// Init-data for a pod with one container `app` running image `app:1`
/// (`manifest_digest`), from veil's own policy generator.
fn policy_init_data(manifest_digest: &str) -> String {
    struct One(String);
    impl veil_policy::generate::ImageResolver for One {
        fn resolve(&self, _reference: &str) -> Result<veil_policy::generate::ImageInfo, String> {
            Ok(veil_policy::generate::ImageInfo {
                digest: self.0.clone(),
                entrypoint: vec!["/bin/app".into()],
                cmd: vec![],
                env: vec!["PATH=/bin".into()],
                working_dir: "/".into(),
                user: String::new(),
                stop_signal: None,
            })
        }
    }
    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  containers:\n  - name: app\n    image: app:1\n";
    let g =
        veil_policy::generate::generate(&[pod], &One(manifest_digest.into()), &Default::default())
            .unwrap();
    g.workloads[0].init_data_toml.clone()
}

impl Harness {
    fn new() -> Self {
        Self::with_handler("")
    }

    /// With `settings` added to the `veil` handler's table.
    fn with_handler(settings: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // A content store holding one image.
        let store = veil_shim::content::store_dir(&dir.path().join("ctd"));
        std::fs::create_dir_all(&store).unwrap();
        let put = |b: &[u8]| {
            use sha2::Digest as _;
            let h = hex::encode(sha2::Sha256::digest(b));
            std::fs::write(store.join(&h), b).unwrap();
            format!("sha256:{h}")
        };
        let cfg = put(b"{}");
        let manifest = put(
            format!(r#"{{"schemaVersion":2,"config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cfg}","size":2}},"layers":[]}}"#)
                .as_bytes(),
        );
        let config = ShimConfig::parse(
            &format!(
                "[handlers.veil]\ncontainerd_root = {:?}\ndata_dir = {:?}\n{settings}",
                dir.path().join("ctd").display().to_string(),
                dir.path().join("data").display().to_string()
            ),
            "test",
        )
        .unwrap();
        let log = Arc::new(Log::default());
        let exits: Exits = Arc::default();
        let exit = Arc::new(ExitSignal::default());
        let events = Arc::new(Log::default());
        let events_sock = dir.path().join("events.sock");
        let events_listener = std::os::unix::net::UnixListener::bind(&events_sock).unwrap();
        let mut events_server = ttrpc::Server::new()
            .add_listener(events_listener.into_raw_fd())
            .unwrap()
            .register_service(protos::shim::events_ttrpc::create_events(Arc::new(Events(
                events.clone(),
            ))));
        events_server.start().unwrap();
        let service = Service::new(
            "default",
            veil_shim::events::Publisher::connect(&events_sock.display().to_string(), "default")
                .unwrap(),
            Arc::new(FakeLauncher {
                log: log.clone(),
                exits: exits.clone(),
            }),
            exit.clone(),
            Some(Arc::new(config)),
        );
        let sock = dir.path().join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let mut server = ttrpc::Server::new()
            .add_listener(listener.into_raw_fd())
            .unwrap()
            .register_service(protos::create_task(Arc::new(service)));
        server.start().unwrap();
        let client = protos::TaskClient::new(
            ttrpc::Client::connect(&format!("unix://{}", sock.display())).unwrap(),
        );
        let init_data_b64 =
            base64::engine::general_purpose::STANDARD.encode(policy_init_data(&manifest));
        Harness {
            dir,
            client,
            log,
            events,
            _events_server: events_server,
            exits,
            exit,
            _server: server,
            init_data_b64,
        }
    }

    fn bundle(&self, id: &str, annotations: serde_json::Value, args: &[&str]) -> String {
        self.bundle_in(id, annotations, args, Some("/var/run/netns/pod1"))
    }

    /// A bundle whose spec names the network namespace `netns`, if any.
    fn bundle_in(
        &self,
        id: &str,
        annotations: serde_json::Value,
        args: &[&str],
        netns: Option<&str>,
    ) -> String {
        let b = self.dir.path().join("bundles").join(id);
        std::fs::create_dir_all(&b).unwrap();
        let namespaces = match netns {
            Some(p) => serde_json::json!([{"type": "network", "path": p}]),
            None => serde_json::json!([{"type": "network"}]),
        };
        let spec = serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": args, "env": ["PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}},
            "annotations": annotations,
            "linux": {"namespaces": namespaces},
        });
        std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
        b.display().to_string()
    }

    fn create(&self, id: &str, bundle: &str) -> ttrpc::Result<CreateTaskResponse> {
        let mut r = CreateTaskRequest::new();
        r.id = id.into();
        r.bundle = bundle.into();
        r.stdout = self
            .dir
            .path()
            .join(format!("{id}.out"))
            .display()
            .to_string();
        self.client.create(ctx(), &r)
    }

    fn start(&self, id: &str, exec: &str) -> ttrpc::Result<StartResponse> {
        let mut r = StartRequest::new();
        r.id = id.into();
        r.exec_id = exec.into();
        self.client.start(ctx(), &r)
    }

    fn state(&self, id: &str, exec: &str) -> StateResponse {
        let mut r = StateRequest::new();
        r.id = id.into();
        r.exec_id = exec.into();
        self.client.state(ctx(), &r).unwrap()
    }

    fn exit_with(&self, id: &str, exec: Option<&str>, code: u32) {
        let p = ProcRef {
            container_id: id.into(),
            exec_id: exec.map(String::from),
        };
        self.exits.lock().unwrap()[&p].send(code).unwrap();
    }

    fn wait(&self, id: &str, exec: &str) -> u32 {
        let mut r = WaitRequest::new();
        r.id = id.into();
        r.exec_id = exec.into();
        self.client.wait(ctx(), &r).unwrap().exit_status
    }

    fn delete(&self, id: &str, exec: &str) -> ttrpc::Result<DeleteResponse> {
        let mut r = DeleteRequest::new();
        r.id = id.into();
        r.exec_id = exec.into();
        self.client.delete(ctx(), &r)
    }
}

fn ctx() -> Context {
    Context::default()
}

fn code_and_message(e: ttrpc::Error) -> (Code, String) {
    match e {
        ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected an rpc status, got {other:?}"),
    }
}

#[test]
fn standalone_container_lifecycle() {
    let h = Harness::new();
    let ann = serde_json::json!({ veil_shim::annotations::INIT_DATA: h.init_data_b64 });
    let b = h.bundle("c1", ann, &["/bin/app"]);
    assert_eq!(h.create("c1", &b).unwrap().pid, 4242);
    assert_eq!(h.state("c1", "").status(), Status::CREATED);
    h.start("c1", "").unwrap();
    assert_eq!(h.state("c1", "").status(), Status::RUNNING);

    // An exec the policy allows, and one it refuses with its reason.
    let mut e = ExecProcessRequest::new();
    e.id = "c1".into();
    e.exec_id = "e1".into();
    e.spec = Some(protos::protobuf::well_known_types::any::Any {
        type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
        value: br#"{"args":["/bin/true"],"cwd":"/"}"#.to_vec(),
        ..Default::default()
    })
    .into();
    h.client.exec(ctx(), &e).unwrap();
    h.start("c1", "e1").unwrap();
    h.exit_with("c1", Some("e1"), 0);
    assert_eq!(h.wait("c1", "e1"), 0);
    h.delete("c1", "e1").unwrap();
    let mut denied = e.clone();
    denied.exec_id = "e2".into();
    denied.spec.as_mut().unwrap().value = br#"{"args":["/bin/forbidden"]}"#.to_vec();
    let (code, msg) = code_and_message(h.client.exec(ctx(), &denied).unwrap_err());
    assert_eq!(code, Code::PERMISSION_DENIED);
    assert!(msg.contains("not in the policy's exec list"), "{msg}");

    // Running tasks cannot be deleted; kill, then wait gives 128+9.
    let (code, _) = code_and_message(h.delete("c1", "").unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
    let mut k = KillRequest::new();
    k.id = "c1".into();
    k.signal = 9;
    h.client.kill(ctx(), &k).unwrap();
    assert_eq!(h.wait("c1", ""), 137);
    assert_eq!(h.state("c1", "").status(), Status::STOPPED);
    let (code, msg) = code_and_message(h.client.kill(ctx(), &k).unwrap_err());
    assert_eq!(
        (code, msg.contains("already finished")),
        (Code::NOT_FOUND, true)
    );
    assert_eq!(h.delete("c1", "").unwrap().exit_status, 137);

    let log = h.log.all();
    assert!(
        log[0].starts_with(
            "launch c1 the pod's io.katacontainers.config.hypervisor.cc_init_data annotation"
        ),
        "{log:?}"
    );
    assert!(
        log[0].ends_with("netns=Some(\"/var/run/netns/pod1\")"),
        "the pod netns is handed over: {log:?}"
    );
    assert_eq!(
        log.last().map(String::as_str),
        Some("stop"),
        "deleting the standalone task stops its sandbox: {log:?}"
    );
    assert!(log.contains(&"remove c1".to_string()));

    // Shutdown with no task left lets the shim exit.
    h.client.shutdown(ctx(), &ShutdownRequest::new()).unwrap();
    h.exit.wait();
}

#[test]
fn pod_grouping_pause_creates_the_sandbox_containers_join() {
    let h = Harness::new();
    use veil_shim::annotations::*;
    let pause = h.bundle(
        "pod1",
        serde_json::json!({ CONTAINER_TYPE: "sandbox", SANDBOX_ID: "pod1", INIT_DATA: h.init_data_b64, SANDBOX_NAME: "web" }),
        &["/pause"],
    );
    let app = h.bundle(
        "app1",
        serde_json::json!({ CONTAINER_TYPE: "container", SANDBOX_ID: "pod1", CONTAINER_NAME: "app" }),
        &["/bin/app"],
    );
    // A container before its pod's sandbox is refused.
    let (code, msg) = code_and_message(h.create("app1", &app).unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(msg.contains("pod1"), "{msg}");
    h.create("pod1", &pause).unwrap();
    h.start("pod1", "").unwrap();
    h.create("app1", &app).unwrap();
    h.start("app1", "").unwrap();
    // The pause container runs nothing: no exec, and killing it ends it.
    let mut e = ExecProcessRequest::new();
    e.id = "pod1".into();
    e.exec_id = "x".into();
    e.spec = Some(Default::default()).into();
    e.spec.as_mut().unwrap().value = br#"{"args":["/bin/sh"]}"#.to_vec();
    let (_, msg) = code_and_message(h.client.exec(ctx(), &e).unwrap_err());
    assert!(msg.contains("sandbox container"), "{msg}");
    h.exit_with("app1", None, 3);
    assert_eq!(h.wait("app1", ""), 3);
    h.delete("app1", "").unwrap();
    let mut k = KillRequest::new();
    k.id = "pod1".into();
    k.signal = 9;
    h.client.kill(ctx(), &k).unwrap();
    assert_eq!(h.wait("pod1", ""), 137);
    h.delete("pod1", "").unwrap();
    let log = h.log.all();
    assert_eq!(
        log.iter().filter(|l| l.starts_with("launch")).count(),
        1,
        "one sandbox per pod: {log:?}"
    );
    assert!(
        log.contains(&"create app1 Some(\"app\") [\"/bin/app\"]".to_string()),
        "{log:?}"
    );
    assert!(
        !log.iter().any(|l| l.starts_with("create pod1")),
        "the pause container is not created in the guest: {log:?}"
    );
    assert_eq!(log.last().map(String::as_str), Some("stop"));
}

/// `pull = "guest"`: the sandbox gets no layout (the guest pulls), and a
/// VM pod without a network namespace, which could not reach a registry,
/// is refused before anything launches, naming the setting.
#[test]
fn a_guest_pull_handler_builds_no_layout_and_needs_the_pods_network() {
    let h = Harness::with_handler("sandbox = \"vm\"\npull = \"guest\"\n");
    let ann = serde_json::json!({ veil_shim::annotations::INIT_DATA: h.init_data_b64 });
    let b = h.bundle_in("c3", ann.clone(), &["/bin/app"], None);
    let (code, msg) = code_and_message(h.create("c3", &b).unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(
        msg.contains("pull = \"guest\"")
            && msg.contains("no network namespace")
            && msg.contains("pull = \"host\""),
        "{msg}"
    );
    assert!(h.log.all().is_empty(), "nothing launched");
    let b = h.bundle("c4", ann, &["/bin/app"]);
    h.create("c4", &b).unwrap();
    let log = h.log.all();
    assert!(log[0].starts_with("launch c4"), "{log:?}");
    let host_pull_layout = h.dir.path().join("data/shim/default/c4/layout");
    assert!(!host_pull_layout.exists(), "no layout on the host");
    // The same pod with the default handler gets its layout there.
    let h = Harness::new();
    let ann = serde_json::json!({ veil_shim::annotations::INIT_DATA: h.init_data_b64 });
    h.create("c4", &h.bundle("c4", ann, &["/bin/app"])).unwrap();
    assert!(
        h.dir
            .path()
            .join("data/shim/default/c4/layout/index.json")
            .is_file()
    );
}

#[test]
fn no_init_data_is_refused_naming_the_annotations() {
    let h = Harness::new();
    let b = h.bundle("c2", serde_json::json!({}), &["/bin/app"]);
    let (code, msg) = code_and_message(h.create("c2", &b).unwrap_err());
    assert_eq!(code, Code::FAILED_PRECONDITION);
    assert!(
        msg.contains("io.katacontainers.config.hypervisor.cc_init_data")
            && msg.contains("io.katacontainers.config.agent.policy")
            && msg.contains("veil policy generate"),
        "{msg}"
    );
    assert!(h.log.all().is_empty(), "nothing launched");
    // Pause/Resume are refused, clearly.
    let mut p = PauseRequest::new();
    p.id = "c2".into();
    let (code, msg) = code_and_message(h.client.pause(ctx(), &p).unwrap_err());
    assert_eq!(code, Code::UNIMPLEMENTED);
    assert!(msg.contains("pause"), "{msg}");
    let _ = Path::new("");
}

/// Stats: the agent's cgroup figures reach containerd as cgroup v2
/// `Metrics` (what the CRI turns into the kubelet's container stats); an
/// OOM-killed container's exit (137) is preceded by `/tasks/oom`, which is
/// how containerd's CRI reports the reason OOMKilled; a plain SIGKILL is not.
#[test]
fn stats_are_cgroup_v2_metrics_and_oom_kills_are_published() {
    use protos::cgroups_v2::metrics::Metrics;
    use protos::protobuf::Message as _;
    use veil_shim::annotations::*;
    let h = Harness::new();
    let pause = h.bundle(
        "pod1",
        serde_json::json!({ CONTAINER_TYPE: "sandbox", SANDBOX_ID: "pod1", INIT_DATA: h.init_data_b64, SANDBOX_NAME: "web" }),
        &["/pause"],
    );
    h.create("pod1", &pause).unwrap();
    h.start("pod1", "").unwrap();
    for id in ["oom-1", "plain-1", "gone-1"] {
        let b = h.bundle(
            id,
            serde_json::json!({ CONTAINER_TYPE: "container", SANDBOX_ID: "pod1", CONTAINER_NAME: "app" }),
            &["/bin/app"],
        );
        h.create(id, &b).unwrap();
        h.start(id, "").unwrap();
    }
    let mut r = StatsRequest::new();
    // The pod's sandbox container runs nothing to measure.
    r.id = "pod1".into();
    assert_eq!(
        code_and_message(h.client.stats(ctx(), &r).unwrap_err()).0,
        Code::NOT_FOUND
    );
    r.id = "oom-1".into();
    let any = h.client.stats(ctx(), &r).unwrap().stats.unwrap();
    assert_eq!(any.type_url, "io.containerd.cgroups.v2.Metrics");
    let m = Metrics::parse_from_bytes(&any.value).unwrap();
    assert_eq!(m.memory.usage, 3 << 20);
    assert_eq!(m.memory.max_usage, 32 << 20);
    assert_eq!(m.memory.usage_limit, 32 << 20);
    assert_eq!(m.memory_events.oom_kill, 1);
    assert_eq!(m.memory_events.max, 7);
    assert_eq!((m.cpu.usage_usec, m.cpu.nr_throttled), (1500, 2));
    assert_eq!(m.pids.current, 2);
    assert_eq!(m.pids.limit, u64::MAX, "no pids limit is containerd's max");
    // Nothing to measure: NOT_FOUND, saying why.
    r.id = "gone-1".into();
    let (code, msg) = code_and_message(h.client.stats(ctx(), &r).unwrap_err());
    assert_eq!(code, Code::NOT_FOUND);
    assert!(msg.contains("not running"), "{msg}");
    r.id = "nope".into();
    assert_eq!(
        code_and_message(h.client.stats(ctx(), &r).unwrap_err()).0,
        Code::NOT_FOUND
    );

    h.exit_with("oom-1", None, 137);
    assert_eq!(h.wait("oom-1", ""), 137);
    h.exit_with("plain-1", None, 137);
    assert_eq!(h.wait("plain-1", ""), 137);
    let events = h.events.all();
    let oom = events
        .iter()
        .position(|e| e == "/tasks/oom containerd.events.TaskOOM")
        .unwrap_or_else(|| panic!("no OOM event in {events:?}"));
    let exit = events
        .iter()
        .position(|e| e == "/tasks/exit containerd.events.TaskExit")
        .unwrap();
    assert!(
        oom < exit,
        "the OOM event comes before the exit: {events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.starts_with("/tasks/oom"))
            .count(),
        1,
        "only the OOM-killed container: {events:?}"
    );
}
