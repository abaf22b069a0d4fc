//! The process sandbox end to end with the real `veil-agent`: init-data
//! binding, policy enforcement, image digest checks, exec, logs, teardown.
//! Needs root (namespaces, mounts), as in CI.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use veil_agent_api::proto::{ReadStreamResult, StatsContainerResult};
use veil_agent_api::{
    AgentRequest, ReadStreamRequest, RemoveContainerRequest, StartContainerRequest,
    StatsContainerRequest, Stream,
};
use veil_runtime::requests;
use veil_runtime::{AgentClient, CallError, SandboxError};

/// Read a process's stream until it ends; (bytes, exit code).
fn drain(
    c: &mut AgentClient,
    container: &str,
    exec_id: &str,
    stream: Stream,
) -> Result<(Vec<u8>, i32), CallError> {
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r: ReadStreamResult = c.call_typed(AgentRequest::ReadStream(ReadStreamRequest {
            container_id: container.into(),
            exec_id: exec_id.into(),
            stream,
            max_bytes: 0,
        }))?;
        out.extend(
            base64::engine::general_purpose::STANDARD
                .decode(r.data)
                .unwrap(),
        );
        if r.eof {
            return Ok((out, r.exit_code.unwrap()));
        }
        assert!(Instant::now() < deadline, "no end of stream within 30 s");
    }
}

fn start_app(c: &mut AgentClient, data: &veil_policy::PolicyData, sb: &str) {
    let pod = requests::pod_name(data).unwrap();
    c.call(AgentRequest::CreateSandbox(requests::create_sandbox(
        data, sb, &pod,
    )))
    .unwrap();
    let app = data.container("app").unwrap();
    c.set_timeout(Duration::from_secs(120)).unwrap();
    c.call(AgentRequest::CreateContainer(requests::create_container(
        data, app, sb, "c1",
    )))
    .unwrap();
    c.call(AgentRequest::StartContainer(StartContainerRequest {
        container_id: "c1".into(),
    }))
    .unwrap();
}

#[test]
fn container_runs_and_everything_is_torn_down() {
    let env = env();
    let digest = busybox_image(
        &env.layout,
        env.dir.path(),
        "app:1",
        "echo hello from $(hostname); exit 7",
    );
    let (init, data) = init_data_for(&pod("hello", "app:1", ""), env.layout.root(), "");
    let cfg = env.config("s1", init);
    let sb = env.launch(&cfg);
    assert_eq!(sb.hello().tee, "sim");
    assert_eq!(
        sb.hello().measurement,
        hex::encode(sb.launch_info().measurement)
    );
    assert_eq!(
        sb.hello().init_data_digest,
        sb.launch_info().init_data_digest.to_string()
    );
    assert_eq!(sb.hello().attestation.status, "not_configured");
    let mut c = sb.connect().unwrap();
    start_app(&mut c, &data, "s1");
    let (out, code) = drain(&mut c, "c1", "", Stream::Stdout).unwrap();
    assert_eq!(String::from_utf8_lossy(&out), "hello from hello\n");
    assert_eq!(code, 7);
    let st: StatsContainerResult = c
        .call_typed(AgentRequest::StatsContainer(StatsContainerRequest {
            container_id: "c1".into(),
        }))
        .unwrap();
    assert_eq!(
        (st.state.as_str(), st.exit_code, st.image_digest.as_str()),
        ("exited", Some(7), digest.as_str())
    );
    c.call(AgentRequest::RemoveContainer(RemoveContainerRequest {
        container_id: "c1".into(),
        timeout_secs: 1,
    }))
    .unwrap();
    let pid = sb.agent_pid().unwrap();
    sb.stop(Duration::from_secs(5)).unwrap();
    assert!(!cfg.dir.exists(), "sandbox dir left behind");
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "agent still running"
    );
    assert_eq!(
        processes_mentioning(&cfg.dir.to_string_lossy()),
        Vec::<String>::new()
    );
    assert_eq!(mounts_under(&cfg.dir), Vec::<String>::new());
}

#[test]
fn swapped_init_data_is_refused_before_anything_runs() {
    let env = env();
    busybox_image(&env.layout, env.dir.path(), "app:1", "echo never");
    let (init, _) = init_data_for(&pod("hello", "app:1", ""), env.layout.root(), "");
    let (other, _) = init_data_for(
        &pod(
            "hello",
            "app:1",
            "    policy.veil.dev/exec.app: '[[\"sh\"]]'\n",
        ),
        env.layout.root(),
        "",
    );
    assert_ne!(init, other);
    let mut cfg = env.config("s2", init);
    cfg.handover_init_data = Some(other);
    let e = veil_runtime::ProcessSandbox::launch(&env.platform, &cfg).unwrap_err();
    let SandboxError::AgentExited { log, .. } = &e else {
        panic!("{e}")
    };
    assert!(
        log.contains("init-data binding check failed") && log.contains("sim launch binding"),
        "{e}"
    );
    assert!(
        !cfg.dir.exists(),
        "sandbox dir left behind after a refused launch"
    );
}

#[test]
fn image_with_another_digest_is_refused_before_unpacking() {
    let env = env();
    busybox_image(&env.layout, env.dir.path(), "app:1", "echo original");
    let (init, data) = init_data_for(&pod("hello", "app:1", ""), env.layout.root(), "");
    // The host now exposes different content under the same name.
    busybox_image(&env.layout, env.dir.path(), "app:1", "echo tampered");
    let cfg = env.config("s3", init);
    let sb = env.launch(&cfg);
    let mut c = sb.connect().unwrap();
    let pod = requests::pod_name(&data).unwrap();
    c.call(AgentRequest::CreateSandbox(requests::create_sandbox(
        &data, "s3", &pod,
    )))
    .unwrap();
    let app = data.container("app").unwrap();
    let e = c
        .call(AgentRequest::CreateContainer(requests::create_container(
            &data, app, "s3", "c1",
        )))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("image digest check")
            && msg.contains(&app.image.digest)
            && msg.contains("before unpacking any layer"),
        "{msg}"
    );
    // A request that names another digest is refused by the policy itself.
    let mut req = requests::create_container(&data, app, "s3", "c2");
    req.image.digest = format!("sha256:{}", "0".repeat(64));
    let e = c.call(AgentRequest::CreateContainer(req)).unwrap_err();
    assert!(
        e.is_denied() && e.to_string().contains("image digest"),
        "{e}"
    );
    // The failed create left no container behind in the policy state: c1 can be created later.
    let e = c
        .call(AgentRequest::StartContainer(StartContainerRequest {
            container_id: "c1".into(),
        }))
        .unwrap_err();
    assert!(
        e.is_denied() && e.to_string().contains("was not created"),
        "{e}"
    );
}

#[test]
fn exec_and_logs_follow_the_policy() {
    let env = env();
    busybox_image(
        &env.layout,
        env.dir.path(),
        "app:1",
        "echo started; sleep 31337",
    );
    let ann = "    policy.veil.dev/exec.app: '[[\"cat\", \"/etc/hostname\"]]'\n    policy.veil.dev/allow-stdio.app: \"false\"\n";
    let (init, data) = init_data_for(&pod("web", "app:1", ann), env.layout.root(), "");
    let cfg = env.config("s4", init);
    let sb = env.launch(&cfg);
    let mut c = sb.connect().unwrap();
    start_app(&mut c, &data, "s4");
    let app = data.container("app").unwrap();
    c.call(AgentRequest::ExecProcess(requests::exec_process(
        app,
        "c1",
        "e1",
        vec!["cat".into(), "/etc/hostname".into()],
    )))
    .unwrap();
    let (out, code) = drain(&mut c, "c1", "e1", Stream::Stdout).unwrap();
    assert_eq!((String::from_utf8_lossy(&out).as_ref(), code), ("web\n", 0));
    let e = c
        .call(AgentRequest::ExecProcess(requests::exec_process(
            app,
            "c1",
            "e2",
            vec!["sh".into()],
        )))
        .unwrap_err();
    let msg = e.to_string();
    assert!(
        e.is_denied() && msg.contains("exec_process: command [\"sh\"] is not allowed"),
        "{msg}"
    );
    let e = drain(&mut c, "c1", "", Stream::Stdout).unwrap_err();
    assert!(
        e.is_denied() && e.to_string().contains("allow_stdio = false"),
        "{e}"
    );
    // The denial was logged by the agent.
    assert!(log_of(&cfg).contains("request denied by policy"));
    let agent = sb.agent_pid().unwrap();
    drop(c);
    // Killing the agent takes every container process with it.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(agent as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let left = || {
        [
            processes_mentioning(&cfg.dir.to_string_lossy()),
            processes_mentioning("sleep 31337"),
        ]
        .concat()
    };
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(left(), Vec::<String>::new());
    drop(sb);
    assert!(!cfg.dir.exists());
}

fn log_of(cfg: &veil_runtime::SandboxConfig) -> String {
    std::fs::read_to_string(&cfg.log_path).unwrap_or_default()
}

/// When init-data names an image trust policy, the agent checks the image's
/// cosign signatures against it before unpacking: a signed image runs, an
/// unsigned one (or one signed by another key) is refused with the reason.
#[test]
fn image_signatures_are_checked_when_init_data_asks() {
    use veil_image::sign::{cosign, reference::DockerReference, sign_sigstore};
    let env = env();
    let signed = busybox_image(&env.layout, env.dir.path(), "app:1", "echo signed");
    let unsigned = busybox_image(&env.layout, env.dir.path(), "other:1", "echo unsigned");
    let rogue = busybox_image(&env.layout, env.dir.path(), "rogue:1", "echo rogue");
    let owner = cosign::PrivateKey::generate();
    let sign = |key: &cosign::PrivateKey, name: &str, digest: &str| {
        let id = DockerReference::parse(name).unwrap();
        let d = digest.parse().unwrap();
        cosign::attach_to_layout(&env.layout, &d, sign_sigstore(key, &id, &d)).unwrap();
    };
    sign(&owner, "app:1", &signed);
    sign(&cosign::PrivateKey::generate(), "rogue:1", &rogue);
    let _ = unsigned;

    let pod = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: signed\n  namespace: default\nspec:\n  containers:\n  - name: app\n    image: app:1\n  - name: other\n    image: other:1\n  - name: rogue\n    image: rogue:1\n";
    let (init, data) = init_data_for(pod, env.layout.root(), "");
    let key_data =
        base64::engine::general_purpose::STANDARD.encode(owner.public_key().to_pem().unwrap());
    let trust = format!(
        r#"{{"default":[{{"type":"sigstoreSigned","keyData":"{key_data}","signedIdentity":{{"type":"matchRepository"}}}}]}}"#
    );
    let mut parsed = veil_policy::ParsedInitData::parse(&init).unwrap().init_data;
    parsed.data.insert(
        veil_policy::initdata::CDH_KEY.into(),
        format!("[image]\nimage_security_policy = '{trust}'\n"),
    );
    let init = parsed.to_toml().unwrap().into_bytes();

    let cfg = env.config("s6", init);
    let sb = env.launch(&cfg);
    let mut c = sb.connect().unwrap();
    let pod_name = requests::pod_name(&data).unwrap();
    c.call(AgentRequest::CreateSandbox(requests::create_sandbox(
        &data, "s6", &pod_name,
    )))
    .unwrap();
    let app = data.container("app").unwrap();
    c.call(AgentRequest::CreateContainer(requests::create_container(
        &data, app, "s6", "c1",
    )))
    .unwrap();
    c.call(AgentRequest::StartContainer(StartContainerRequest {
        container_id: "c1".into(),
    }))
    .unwrap();
    let (out, code) = drain(&mut c, "c1", "", Stream::Stdout).unwrap();
    assert_eq!(
        (String::from_utf8_lossy(&out).as_ref(), code),
        ("signed\n", 0)
    );

    for (name, id, why) in [
        ("other", "c2", "no sigstore signature found"),
        ("rogue", "c3", "sigstoreSigned check failed"),
    ] {
        let ctr = data.container(name).unwrap();
        let msg = c
            .call(AgentRequest::CreateContainer(requests::create_container(
                &data, ctr, "s6", id,
            )))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("image signature check")
                && msg.contains(&ctr.image.digest)
                && msg.contains(why)
                && msg.contains("before unpacking any layer"),
            "{name}: {msg}"
        );
    }
    sb.stop(Duration::from_secs(5)).unwrap();
}
