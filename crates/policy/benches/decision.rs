//! Decision latency of `create_container` and `exec_process` on a
//! 20-container policy, compiled once, over 10 000 evaluations each.
//!
//! Baseline in the same run: the same engine, input and state with an
//! allow-all policy (every `<kind>_errors` is the empty set, like Kata's
//! `allow-all.rego`): the cost of the Rego engine itself. The ratio is what
//! veil's rules add on top. Run: `cargo bench -p veil-policy --bench decision`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use veil_agent_api::AgentMessage;
use veil_policy::enforce::{ContainerState, GuestState, PolicyEngine};
use veil_policy::model::{
    CapabilityPolicy, ContainerPolicy, EnvRule, ImagePolicy, MountRule, POLICY_FORMAT_VERSION,
    PolicyData, SandboxPolicy, Strategy, UserPolicy,
};
use veil_policy::rego::{POLICY_DATA_MARKER, render_policy};
use veil_policy::settings::{SANDBOX_DIR_RE, Settings};

const CONTAINERS: usize = 20;
const ITERATIONS: usize = 10_000;

fn policy() -> PolicyData {
    let s = Settings::default();
    let containers = (0..CONTAINERS)
        .map(|i| {
            let mut env: Vec<EnvRule> = (0..8)
                .map(|j| EnvRule {
                    name: format!("VAR_{j}"),
                    value: format!("value-{i}-{j}"),
                    strategy: Strategy::Exact,
                    required: true,
                })
                .collect();
            env.push(EnvRule {
                name: "REQUEST_ID".into(),
                value: "^(?:[0-9a-f]{8})$".into(),
                strategy: Strategy::Regex,
                required: false,
            });
            ContainerPolicy {
                name: format!("app-{i}"),
                init: false,
                image: ImagePolicy {
                    reference: format!("registry.example/app-{i}:1"),
                    digest: format!("sha256:{:064x}", i + 1),
                },
                args: vec![format!("/bin/app-{i}"), "--port".into(), "8080".into()],
                env,
                cwd: "/app".into(),
                user: UserPolicy {
                    uid: 1000,
                    gid: 1000,
                    additional_gids: vec![],
                },
                capabilities: CapabilityPolicy {
                    bounding: vec!["CAP_NET_BIND_SERVICE".into()],
                    ..Default::default()
                },
                privileged: false,
                no_new_privileges: true,
                read_only_rootfs: true,
                mounts: (0..4)
                    .map(|m| MountRule {
                        destination: format!("/vol{m}"),
                        fs_type: "bind".into(),
                        source: format!("^{SANDBOX_DIR_RE}/volumes/vol{m}$"),
                        options: vec!["rbind".into(), "rprivate".into(), "ro".into()],
                    })
                    .collect(),
                sysctls: BTreeMap::new(),
                exec: vec![
                    vec!["/bin/health".into()],
                    vec!["sh".into(), "-c".into(), "cat /ready".into()],
                ],
                allow_stdio: true,
                allow_stdin: false,
                allow_tty: false,
                signals: vec![9, 15],
                ports: vec![],
                resources: None,
                gpus: 0,
            }
        })
        .collect();
    PolicyData {
        version: POLICY_FORMAT_VERSION,
        sandbox: SandboxPolicy {
            pod_name: "^bench$".into(),
            namespace: "default".into(),
            sandbox_pidns: false,
            kernel_modules: vec![],
            copy_file: s.sandbox.copy_file.clone(),
            allow_get_evidence: true,
            allow_stats: true,
            update_config: vec![],
            unpack_limits: Default::default(),
            volumes: vec![],
            bench_volume: false,
        },
        containers,
        platform_env: s.platform_env,
        default_mounts: s.default_mounts,
    }
}

fn state() -> GuestState {
    GuestState {
        sandbox_created: true,
        containers: (0..CONTAINERS)
            .map(|i| {
                (
                    format!("c{i}"),
                    ContainerState {
                        name: format!("app-{i}"),
                        started: true,
                        execs: BTreeMap::new(),
                        ports: Vec::new(),
                    },
                )
            })
            .collect(),
    }
}

fn create_request() -> AgentMessage {
    let i = 10;
    let mut env: Vec<String> = (0..8).map(|j| format!("VAR_{j}=value-{i}-{j}")).collect();
    env.extend(["REQUEST_ID=deadbeef".into(), "HOSTNAME=bench".into()]);
    let mounts: Vec<serde_json::Value> = (0..4)
        .map(|m| serde_json::json!({"destination": format!("/vol{m}"), "type": "bind",
            "source": format!("/run/veil/sandbox/sb-1/volumes/vol{m}"), "options": ["rbind", "rprivate", "ro"]}))
        .chain([serde_json::json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]})])
        .collect();
    AgentMessage::from_value(serde_json::json!({"api_version": 1, "kind": "create_container", "request": {
        "container_id": "c-new", "name": format!("app-{i}"),
        "image": {"reference": format!("registry.example/app-{i}:1"), "digest": format!("sha256:{:064x}", i + 1)},
        "process": {"args": [format!("/bin/app-{i}"), "--port", "8080"], "env": env, "cwd": "/app",
            "user": {"uid": 1000, "gid": 1000}, "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE"]},
            "no_new_privileges": true},
        "mounts": mounts, "read_only_rootfs": true}}))
    .expect("bench request")
}

fn exec_request() -> AgentMessage {
    AgentMessage::from_value(
        serde_json::json!({"api_version": 1, "kind": "exec_process", "request": {
        "container_id": "c10", "exec_id": "e1",
        "process": {"args": ["sh", "-c", "cat /ready"], "env": ["VAR_0=value-10-0"], "cwd": "/app",
            "user": {"uid": 1000, "gid": 1000}, "capabilities": {}, "no_new_privileges": true}}}),
    )
    .expect("bench request")
}

struct Stats {
    p50: Duration,
    p99: Duration,
    mean: Duration,
    /// Samples during which the thread waited for a CPU (Linux schedstat).
    preempted: Option<usize>,
    /// p99 over the samples that never waited for a CPU.
    p99_on_cpu: Option<Duration>,
}

/// Nanoseconds this thread has spent waiting on a run queue, if the kernel
/// says (`/proc/thread-self/schedstat`: on-CPU time, run-queue wait, slices).
fn runqueue_wait_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().nth(1)?.parse().ok()
}

fn measure(engine: &mut PolicyEngine, msg: &AgentMessage, expect_allowed: bool) -> Stats {
    for _ in 0..200 {
        let _ = engine.evaluate(msg);
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    let mut on_cpu = Vec::with_capacity(ITERATIONS);
    let mut preempted = 0usize;
    let mut schedstat = runqueue_wait_ns().is_some();
    for _ in 0..ITERATIONS {
        let w0 = if schedstat { runqueue_wait_ns() } else { None };
        let t = Instant::now();
        let d = engine.evaluate(msg).expect("evaluation");
        let dt = t.elapsed();
        let w1 = if schedstat { runqueue_wait_ns() } else { None };
        samples.push(dt);
        match (w0, w1) {
            (Some(a), Some(b)) if b > a => preempted += 1,
            (Some(_), Some(_)) => on_cpu.push(dt),
            _ => schedstat = false,
        }
        assert_eq!(d.allowed, expect_allowed, "{d}");
    }
    samples.sort();
    on_cpu.sort();
    let total: Duration = samples.iter().sum();
    Stats {
        p50: samples[ITERATIONS / 2],
        p99: samples[ITERATIONS * 99 / 100],
        mean: total / ITERATIONS as u32,
        preempted: schedstat.then_some(preempted),
        p99_on_cpu: (schedstat && !on_cpu.is_empty()).then(|| on_cpu[on_cpu.len() * 99 / 100]),
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo test --benches` runs this with --bench absent: keep it quick then.
    if !std::env::args().any(|a| a == "--bench") {
        println!("decision bench: run with `cargo bench -p veil-policy --bench decision`");
        return;
    }
    let data = policy();
    let text = render_policy(&data);
    let t = Instant::now();
    let mut veil = PolicyEngine::new(&text).expect("policy compiles");
    let compile = t.elapsed();
    veil.set_state(state());
    // Baseline: allow-all rules over the same data.
    let allow_all: String = veil_agent_api::RequestKind::ALL
        .iter()
        .map(|k| format!("{}_errors := set()\n", k.as_str()))
        .collect();
    let baseline_text = format!(
        "package agent_policy\n\n{allow_all}{}",
        &text[text.rfind(POLICY_DATA_MARKER).expect("marker")..]
    );
    let mut baseline = PolicyEngine::new(&baseline_text).expect("baseline compiles");
    baseline.set_state(state());

    println!(
        "policy: {CONTAINERS} containers, {} bytes of policy.rego, compiled once in {:.1} ms; {ITERATIONS} evaluations each",
        text.len(),
        compile.as_secs_f64() * 1e3
    );
    println!(
        "{:<18} {:>10} {:>10} {:>10}   {:>22}",
        "request", "p50 µs", "p99 µs", "mean µs", "baseline p50/p99 µs"
    );
    let mut notes = Vec::new();
    for (name, msg) in [
        ("create_container", create_request()),
        ("exec_process", exec_request()),
    ] {
        let v = measure(&mut veil, &msg, true);
        let b = measure(&mut baseline, &msg, true);
        println!(
            "{name:<18} {:>10.1} {:>10.1} {:>10.1}   {:>10.1} / {:<10.1} ratio p50 {:.1}x, p99 {:.1}x; p99 target 1000 µs: {}",
            us(v.p50),
            us(v.p99),
            us(v.mean),
            us(b.p50),
            us(b.p99),
            us(v.p50) / us(b.p50),
            us(v.p99) / us(b.p99),
            if v.p99 < Duration::from_millis(1) {
                "met"
            } else {
                "MISSED"
            }
        );
        if let (Some(n), Some(p99)) = (v.preempted, v.p99_on_cpu) {
            notes.push(format!(
                "{name}: {n} of {ITERATIONS} samples waited for a CPU (other load on the machine); p99 of the others {:.1} µs",
                us(p99)
            ));
        }
    }
    for n in notes {
        println!("  {n}");
    }
}
