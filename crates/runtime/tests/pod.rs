//! The sandbox lifecycle library (`veil_runtime::pod`) as the containerd
//! shim uses it, with the real `veil-agent` in a process sandbox under the
//! sim TEE: launch into a network namespace someone else made, a container
//! created, started, exec'd, killed, waited and deleted, its output to FIFO
//! paths and its stdin from one, a second client that finds the sandbox in
//! the record store, and teardown. Needs root (namespaces, mounts), as in CI.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use veil_runtime::net::NetworkMode;
use veil_runtime::pod::{
    self, PodClient, PodNet, Record, Sandbox, SandboxKind, SandboxSpec, Stdio, Tee, record,
};
use veil_runtime::requests;

/// A network namespace made the way CNI hands one to the shim (`ip netns
/// add`), with a veth pair inside to recognise it by; removed on drop.
struct GivenNetns {
    name: String,
    nic: String,
}

impl GivenNetns {
    fn new() -> Self {
        let pid = std::process::id();
        let n = GivenNetns {
            name: format!("veilt-pod-{pid}"),
            nic: format!("vtpod{}", pid % 100_000),
        };
        let ip = |args: &[&str]| {
            let s = Command::new("ip").args(args).status().unwrap();
            assert!(s.success(), "ip {args:?}");
        };
        ip(&["netns", "add", &n.name]);
        let peer = format!("{}p", n.nic);
        ip(&[
            "-n", &n.name, "link", "add", &n.nic, "type", "veth", "peer", "name", &peer,
        ]);
        n
    }
    fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }
}

impl Drop for GivenNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A FIFO at `path` (as containerd makes them for a task's stdio).
fn mkfifo(path: &Path) {
    let s = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(s.success(), "mkfifo {}", path.display());
}

/// Read a FIFO to its end on a thread (containerd's side of stdout).
fn read_fifo(path: PathBuf) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        std::fs::File::open(path)
            .unwrap()
            .read_to_string(&mut s)
            .unwrap();
        s
    })
}

const POD: &str = "apiVersion: v1
kind: Pod
metadata:
  name: shimpod
  namespace: default
  annotations:
    policy.veil.dev/exec.app: '[[\"cat\", \"/proc/net/dev\"], [\"sh\", \"-c\", \"echo exec-out; echo exec-err >&2; exit 5\"]]'
spec:
  containers:
  - name: app
    image: app:1
    stdin: true
";

#[test]
fn a_pod_lives_and_dies_through_the_library() {
    let env = env();
    // The init process echoes its stdin, then waits to be killed.
    busybox_image(
        &env.layout,
        env.dir.path(),
        "app:1",
        "read line; echo \"got $line\"; echo to-stderr >&2; exec sleep 31337",
    );
    let (init, policy) = init_data_for(POD, env.layout.root(), "");
    let netns = GivenNetns::new();
    let data = env.dir.path().join("data");
    let id = "podlib1";
    let mut rec = Record {
        id: id.into(),
        status: "starting".into(),
        owner_pid: std::process::id(),
        ..Default::default()
    };
    let spec = SandboxSpec {
        id: id.into(),
        data: data.clone(),
        agent_binary: agent_binary(),
        kind: SandboxKind::Process,
        tee: Tee::Sim,
        init_data: init,
        oci_layout: Some(env.layout.root().to_path_buf()),
        forwards: Vec::new(),
        network: PodNet::Process {
            mode: NetworkMode::Join(netns.path()),
            ports: Vec::new(),
        },
        log_filter: "info".into(),
        ready_timeout: Duration::from_secs(60),
    };
    let mut events = Vec::new();
    let (sb, note) = Sandbox::launch(spec, &mut rec, &mut |e| events.push(e)).unwrap();
    assert_eq!(
        (note, events),
        (None, Vec::new()),
        "a process sandbox has no VM events"
    );
    assert_eq!(sb.inner().hello().tee, "sim");
    use std::os::unix::fs::PermissionsExt;
    let dir_mode = std::fs::metadata(record::dir_of(&data, id))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(dir_mode & 0o777, 0o700, "the sandbox dir is private");
    rec.status = "running".into();
    rec.save(&data).unwrap();

    // The owner creates the pod and its container, stdio on FIFOs.
    let mut c = sb.client().unwrap();
    let pod_name = requests::pod_name(&policy).unwrap();
    sb.create_pod(&mut c, requests::create_sandbox(&policy, id, &pod_name))
        .unwrap();
    let app = policy.container("app").unwrap();
    let cid = "podlib1-app";
    let mut req = requests::create_container(&policy, app, id, cid);
    req.process.stdin = true;
    c.create_container(req).unwrap();
    let fifo = |n: &str| {
        let p = env.dir.path().join(n);
        mkfifo(&p);
        p
    };
    let (fin, fout, ferr) = (fifo("in"), fifo("out"), fifo("err"));
    let out = read_fifo(fout.clone());
    let err = read_fifo(ferr.clone());
    let writer = std::thread::spawn({
        let fin = fin.clone();
        move || std::fs::write(fin, b"hello shim\n").unwrap()
    });
    // The agent has the process's streams once it started (it keeps what
    // the process writes until it is read).
    let started = c.start(cid).unwrap();
    assert!(started.pid > 0);
    let (exits, exited) = std::sync::mpsc::channel();
    c.attach(
        cid,
        "",
        Stdio::paths(
            &fin.to_string_lossy(),
            &fout.to_string_lossy(),
            &ferr.to_string_lossy(),
        ),
    )
    .unwrap()
    .on_exit(move |e| exits.send(e).unwrap());
    writer.join().unwrap();

    // A second client finds the sandbox by name in the record store.
    let (found, mut other) = PodClient::reconnect(&data, id, Duration::from_secs(30)).unwrap();
    assert_eq!(found.network, format!("ns:{}", netns.path().display()));
    assert_eq!(found.kind, "process");
    // ... and the policy it enforces, to build requests with.
    let app = found.policy().unwrap().container("app").unwrap().clone();
    let app = &app;
    assert_eq!(other.hello(), sb.inner().hello());
    let deadline = Instant::now() + Duration::from_secs(30);
    while other.stats(cid).unwrap().state != "running" {
        assert!(Instant::now() < deadline, "container not running");
        std::thread::sleep(Duration::from_millis(50));
    }

    // exec (from the second client): the pod is in the namespace it was given.
    other
        .exec(requests::exec_process(
            app,
            cid,
            "e1",
            vec!["cat".into(), "/proc/net/dev".into()],
        ))
        .unwrap();
    let mut dev = Vec::new();
    let e1 = pod::stdio::pump(
        other.agent(),
        cid,
        "e1",
        veil_agent_api::Stream::Stdout,
        &mut dev,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(e1.exit_code, Some(0));
    assert!(
        String::from_utf8_lossy(&dev).contains(&netns.nic),
        "the container does not see {} of the given netns:\n{}",
        netns.nic,
        String::from_utf8_lossy(&dev)
    );
    // An exec attached to buffers: both streams and its exit code.
    let script = "echo exec-out; echo exec-err >&2; exit 5";
    other
        .exec(requests::exec_process(
            app,
            cid,
            "e2",
            vec!["sh".into(), "-c".into(), script.into()],
        ))
        .unwrap();
    let (eo, ee) = (env.dir.path().join("e2.out"), env.dir.path().join("e2.err"));
    let exit = other
        .attach(
            cid,
            "e2",
            Stdio::paths("", &eo.to_string_lossy(), &ee.to_string_lossy()),
        )
        .unwrap()
        .wait()
        .unwrap();
    assert_eq!((exit.code, exit.denied), (Some(5), None));
    assert_eq!(std::fs::read_to_string(&eo).unwrap(), "exec-out\n");
    assert_eq!(std::fs::read_to_string(&ee).unwrap(), "exec-err\n");
    let mode = std::fs::metadata(&eo).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "output files are the workload's data");
    // What the policy does not name is refused, with its reason.
    let refused = other
        .exec(requests::exec_process(app, cid, "e3", vec!["sh".into()]))
        .unwrap_err();
    assert!(
        refused.is_denied() && refused.to_string().contains("is not allowed"),
        "{refused}"
    );
    let pids = other.pids(cid).unwrap();
    assert_eq!(pids.init, started.pid);

    // kill, wait, and the FIFOs carry everything the init wrote.
    c.kill(cid, "", 9).unwrap();
    assert_eq!(c.wait(cid).unwrap(), 128 + 9);
    // The exit event, once everything the process wrote was delivered.
    let exit = exited
        .recv_timeout(Duration::from_secs(30))
        .unwrap()
        .unwrap();
    assert_eq!(exit.code, Some(128 + 9));
    assert_eq!(out.join().unwrap(), "got hello shim\n");
    assert_eq!(err.join().unwrap(), "to-stderr\n");
    assert_eq!(c.stats(cid).unwrap().state, "exited");
    c.delete(cid, 1).unwrap();
    assert!(c.stats(cid).is_err(), "the container is gone");

    // Teardown: the agent, its processes and mounts go; the netns it was
    // given stays (it belongs to whoever made it).
    let agent = rec.agent_pid;
    drop((c, other));
    assert_eq!(sb.stop(Duration::from_secs(5)).unwrap(), None);
    assert!(
        !Path::new(&format!("/proc/{agent}")).exists(),
        "agent still running"
    );
    assert_eq!(processes_mentioning("sleep 31337"), Vec::<String>::new());
    assert!(netns.path().exists(), "the given netns was removed");
    rec.status = "exited".into();
    rec.save(&data).unwrap();
    let e = PodClient::reconnect(&data, id, Duration::from_secs(5)).unwrap_err();
    assert_eq!(e.to_string(), format!("sandbox {id} is exited"));
}
