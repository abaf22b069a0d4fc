//! The GPU ready state end to end (issue 18): a pod whose container asks
//! for `nvidia.com/gpu` gets a policy that says so, the agent attests (sim
//! TEE, process sandbox) and, with no GPU accepted by the KBS, refuses that
//! container naming the check, while a pod without GPUs runs as before.

mod common;

use std::path::PathBuf;

use common::{Env, image, ok, text, write_pod};

const GPU_POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: train\n  namespace: default\nspec:\n  containers:\n  - name: trainer\n    image: app:1\n    command: [\"/bin/sh\", \"-c\", \"ls /dev; echo trained\"]\n    resources:\n      limits:\n        nvidia.com/gpu: 1\n";

fn layout(env: &Env) -> PathBuf {
    let layout = env.layout();
    image(env, &layout, "app:1", "echo default");
    layout.root().to_path_buf()
}

#[test]
fn a_container_that_needs_a_gpu_is_refused_until_the_kbs_accepted_one() {
    let env = Env::new();
    let layout = layout(&env);
    let pod = write_pod(&env, GPU_POD);

    // The policy pins the GPU count.
    let init_data = env.dir.path().join("init.toml");
    ok(env
        .veil()
        .args(["policy", "generate", "--image-dir"])
        .arg(&layout)
        .arg(&pod)
        .arg("--init-data")
        .arg(&init_data)
        .output()
        .unwrap());
    let policy: String = std::fs::read_to_string(&init_data)
        .unwrap()
        .split_whitespace()
        .collect();
    assert!(policy.contains("\"gpus\":1"), "{policy}");

    // The guest attests its CPU to the run's KBS, has no GPU evidence to
    // send (this agent has no GPU transport), and the GPU container is
    // refused naming the check and why; the CPU's secret was still fetched.
    let secret_file = env.dir.path().join("secret.txt");
    std::fs::write(&secret_file, "s").unwrap();
    ok(env
        .veil()
        .args(["secret", "put", "default/secret/s"])
        .arg(&secret_file)
        .output()
        .unwrap());
    let out = env
        .veil()
        .args([
            "run",
            "--rm",
            "--secret",
            "s=kbs:///default/secret/s",
            "--pod",
        ])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(&layout)
        .output()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_ne!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stdout.contains("trained"), "{stdout}");
    assert!(stderr.contains("attestation  ok"), "{stderr}");
    assert!(
        stderr.contains("container \"trainer\": check nvidia.gpu_ready")
            && stderr.contains("nvidia.transport")
            && stderr.contains("feature nvml"),
        "{stderr}"
    );

    // The same pod without the GPU limit runs, and sees no GPU device.
    let pod = write_pod(
        &env,
        &GPU_POD.replace(
            "    resources:\n      limits:\n        nvidia.com/gpu: 1\n",
            "",
        ),
    );
    let out = ok(env
        .veil()
        .args(["run", "--rm", "--pod"])
        .arg(&pod)
        .arg("--oci-layout")
        .arg(&layout)
        .output()
        .unwrap());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("trained") && !stdout.contains("nvidia"),
        "{stdout}"
    );
}
