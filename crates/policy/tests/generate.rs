//! Policy generation: golden init-data for realistic manifests, determinism
//! (re-runs, document order, key order, whitespace), sensitivity (every
//! policy-relevant change moves the digest and shows in `diff`), malformed
//! input, and agreement between what is generated and what is enforced.

use std::path::Path;

use veil_agent_api::AgentMessage;
use veil_policy::diff::diff_init_data;
use veil_policy::enforce::PolicyEngine;
use veil_policy::generate::{
    GenerateError, Generated, LayoutResolver, generate, pod_volume_contents,
};
use veil_policy::initdata::{INIT_DATA_ANNOTATION, ParsedInitData, decode_annotation};
use veil_policy::model::VolumeKind;
use veil_policy::settings::Settings;

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

fn manifest(name: &str) -> String {
    std::fs::read_to_string(format!("{DATA}/manifests/{name}")).unwrap()
}

fn resolver() -> LayoutResolver {
    LayoutResolver::open(Path::new(&format!("{DATA}/layout"))).unwrap()
}

fn run(inputs: &[&str]) -> Result<Generated, GenerateError> {
    generate(inputs, &resolver(), &Settings::default())
}

fn settings_with_kbs() -> Settings {
    let mut s = Settings::default();
    s.kbs.url = "https://kbs.example:8080".into();
    s.kbs.cert = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n".into();
    s.image.security_policy_uri = "kbs:///default/security-policy/prod".into();
    s
}

/// Compare with (or, with VEIL_UPDATE_GOLDEN=1, rewrite) a golden file.
fn golden(name: &str, actual: &str) {
    let path = format!("{DATA}/golden/{name}");
    if std::env::var_os("VEIL_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("missing golden file {path}; run with VEIL_UPDATE_GOLDEN=1"));
    assert!(
        expected == actual,
        "{name} differs from its golden file (rerun with VEIL_UPDATE_GOLDEN=1 if the change is intended)"
    );
}

#[test]
fn golden_init_data() {
    for (file, settings) in [
        ("pod-multi.yaml", settings_with_kbs()),
        ("deployment-configmap.yaml", Settings::default()),
        ("job.yaml", Settings::default()),
    ] {
        let g = generate(&[&manifest(file)], &resolver(), &settings).unwrap();
        for w in &g.workloads {
            let stem = file.trim_end_matches(".yaml");
            golden(&format!("{stem}.{}.toml", w.name), &w.init_data_toml);
            // The digest printed is the digest of exactly these bytes.
            let parsed = ParsedInitData::parse(w.init_data_toml.as_bytes()).unwrap();
            assert_eq!(parsed.digest(), w.digest);
            assert!(parsed.is_canonical());
        }
    }
}

#[test]
fn pod_policy_content() {
    let g = generate(
        &[&manifest("pod-multi.yaml")],
        &resolver(),
        &settings_with_kbs(),
    )
    .unwrap();
    assert_eq!(g.workloads.len(), 1);
    let w = &g.workloads[0];
    assert_eq!(
        (w.kind.as_str(), w.name.as_str(), w.namespace.as_str()),
        ("Pod", "web", "prod")
    );
    let p = &w.policy;
    let names: Vec<&str> = p.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["api", "migrate", "worker"]);
    let api = p.container("api").unwrap();
    assert_eq!(
        api.image.digest,
        "sha256:b33d5f797a33f95164df0284b403e91987025642adf9fe880442caa323fdae22"
    );
    assert_eq!(api.args, ["/app/api", "--port", "8080"], "Entrypoint + Cmd");
    assert_eq!(api.cwd, "/app");
    assert_eq!((api.user.uid, api.user.gid), (1000, 1000));
    assert_eq!(api.user.additional_gids, [2000]);
    assert_eq!(api.capabilities.bounding, ["CAP_NET_BIND_SERVICE"]);
    assert!(
        api.capabilities.effective.is_empty(),
        "non-root: no effective caps"
    );
    assert!(api.no_new_privileges && api.read_only_rootfs && !api.privileged);
    let env = |n: &str| api.env.iter().find(|e| e.name == n).unwrap();
    assert_eq!(env("DB_HOST").value, "db.internal");
    assert_eq!(
        env("GREETING").value,
        "hello db.internal",
        "$(VAR) expanded"
    );
    assert_eq!(env("APP_MODE").value, "prod", "image env kept");
    assert_eq!(env("REQUEST_ID").value, "^(?:[0-9a-f]{8})$");
    assert!(
        !env("DB_PASSWORD").value.contains("not-in-the-policy"),
        "secret values never enter the policy"
    );
    assert!(!w.init_data_toml.contains("not-in-the-policy"));
    assert_eq!(
        api.exec,
        [
            vec!["/bin/healthcheck".to_string()],
            vec!["sh".into(), "-c".into(), "cat /tmp/ready".into()]
        ]
    );
    let worker = p.container("worker").unwrap();
    assert_eq!(worker.args, ["/worker", "--queue", "orders"]);
    assert!(!worker.allow_stdio && worker.allow_stdin);
    assert!(
        worker.signals.contains(&3),
        "image StopSignal SIGQUIT allowed"
    );
    assert!(
        worker
            .env
            .iter()
            .any(|e| e.name == "CFG_LOG_LEVEL" && e.value == "info")
    );
    assert!(p.container("migrate").unwrap().init);
    assert_eq!(p.sandbox.pod_name, "^web$");
    // Init-data carries the agent configuration.
    assert!(w.init_data.data.contains_key("aa.toml") && w.init_data.data.contains_key("cdh.toml"));
    assert!(w.init_data.data["cdh.toml"].contains("kbs:///default/security-policy/prod"));
    // The Service passes through and is said to.
    assert!(g.notes.iter().any(|n| n.contains("Service web")));
    assert!(g.notes.iter().any(|n| n.contains("DB_PASSWORD")));
    // The output YAML carries the init-data annotation, decodable to the same bytes.
    let docs = veil_policy::generate::parse_documents(&[&g.output_yaml]).unwrap();
    let pod = docs.iter().find(|d| d["kind"] == "Pod").unwrap();
    let ann = pod["metadata"]["annotations"][INIT_DATA_ANNOTATION]
        .as_str()
        .unwrap();
    assert_eq!(decode_annotation(ann).unwrap(), w.init_data_toml.as_bytes());
}

#[test]
fn generated_policy_allows_the_workload_it_describes() {
    let g = run(&[&manifest("pod-multi.yaml")]).unwrap();
    let w = &g.workloads[0];
    let mut engine = PolicyEngine::from_init_data(&w.init_data).unwrap();
    let sandbox = serde_json::json!({"api_version": 1, "kind": "create_sandbox", "request": {
        "sandbox_id": "sb-1", "hostname": "web", "pod_name": "web", "pod_namespace": "prod"}});
    assert!(
        engine
            .enforce(&AgentMessage::from_value(sandbox).unwrap())
            .unwrap()
            .allowed
    );
    let api = w.policy.container("api").unwrap();
    let env: Vec<String> = api
        .env
        .iter()
        .filter(|e| e.required)
        .map(|e| match e.name.as_str() {
            "POD_NAME" => "POD_NAME=web".to_string(),
            "POD_IP" => "POD_IP=10.244.1.7".to_string(),
            "DB_PASSWORD" => "DB_PASSWORD=s3cret".to_string(),
            n => format!("{n}={}", e.value),
        })
        .chain([
            "HOSTNAME=web".to_string(),
            "KUBERNETES_SERVICE_HOST=10.96.0.1".to_string(),
        ])
        .collect();
    let sb = "/run/veil/sandbox/sb-1";
    let create = serde_json::json!({"api_version": 1, "kind": "create_container", "request": {
        "container_id": "c1", "name": "api",
        "image": {"reference": api.image.reference, "digest": api.image.digest},
        "process": {"args": api.args, "env": env, "cwd": "/app",
            "user": {"uid": 1000, "gid": 1000, "additional_gids": [2000]},
            "capabilities": {"bounding": ["CAP_NET_BIND_SERVICE"]}, "no_new_privileges": true},
        "mounts": [
            {"destination": "/proc", "source": "proc", "type": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/config", "source": format!("{sb}/volumes/config"), "type": "bind", "options": ["rbind", "rprivate", "ro"]},
            {"destination": "/data", "source": format!("{sb}/volumes/data"), "type": "bind", "options": ["rbind", "rprivate", "rw"]},
            {"destination": "/var/run/secrets/kubernetes.io/serviceaccount", "source": format!("{sb}/serviceaccount"), "type": "bind", "options": ["rbind", "rprivate", "ro"]}],
        "read_only_rootfs": true,
        // The pod's resources.limits (cpu "1", memory 256Mi) bound the request.
        "resources": {"memory_max": 268435456u64, "cpu_quota": 100000, "cpu_period": 100000}}});
    // Without limits, or above the pod's, the container is refused by name.
    for (res, field) in [
        (serde_json::Value::Null, "resources.memory_max"),
        (
            serde_json::json!({"memory_max": 268435457u64, "cpu_quota": 100000, "cpu_period": 100000}),
            "resources.memory_max",
        ),
        (
            serde_json::json!({"memory_max": 268435456u64, "cpu_quota": 100001, "cpu_period": 100000}),
            "resources.cpu_quota",
        ),
    ] {
        let mut over = create.clone();
        over["request"]["resources"] = res.clone();
        let d = engine
            .evaluate(&AgentMessage::from_value(over).unwrap())
            .unwrap();
        assert!(!d.allowed, "{d}");
        let v = d
            .violations
            .iter()
            .find(|v| v.field == field)
            .unwrap_or_else(|| panic!("{field}: {d}"));
        if res.is_null() {
            assert_eq!(v.actual, "none", "{d}");
        }
    }
    let d = engine
        .enforce(&AgentMessage::from_value(create.clone()).unwrap())
        .unwrap();
    assert!(d.allowed, "{d}");
    // The same request with a swapped image is refused with the digests named.
    let mut swapped = create;
    swapped["request"]["container_id"] = "c2".into();
    swapped["request"]["image"]["digest"] =
        "sha256:4460f147cd0b7cfcb64fa1ed109698a10c74a69579927ba75f33aa6faefd69e6".into();
    let d = engine
        .evaluate(&AgentMessage::from_value(swapped).unwrap())
        .unwrap();
    assert!(!d.allowed);
    assert!(d.to_string().contains(&api.image.digest), "{d}");
}

#[test]
fn deterministic_across_runs_document_order_key_order_and_whitespace() {
    let text = manifest("pod-multi.yaml");
    let base = run(&[&text]).unwrap().workloads[0].init_data_toml.clone();
    assert_eq!(
        run(&[&text]).unwrap().workloads[0].init_data_toml,
        base,
        "re-run"
    );

    // Documents reversed.
    let docs = veil_policy::generate::parse_documents(&[&text]).unwrap();
    let reversed: Vec<String> = docs
        .iter()
        .rev()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    let reversed = reversed.join("\n---\n");
    assert_eq!(
        run(&[&reversed]).unwrap().workloads[0].init_data_toml,
        base,
        "document order"
    );

    // Keys in reverse order, flow style, odd whitespace (JSON is YAML).
    fn reverse_keys(v: &serde_json::Value) -> String {
        match v {
            serde_json::Value::Object(m) => {
                let items: Vec<String> = m
                    .iter()
                    .rev()
                    .map(|(k, v)| {
                        format!(
                            "{} :   {}",
                            serde_json::to_string(k).unwrap(),
                            reverse_keys(v)
                        )
                    })
                    .collect();
                format!("{{\n\t{}\n}}", items.join(" ,\n\n  "))
            }
            serde_json::Value::Array(a) => {
                format!(
                    "[ {} ]",
                    a.iter().map(reverse_keys).collect::<Vec<_>>().join(" , ")
                )
            }
            other => other.to_string(),
        }
    }
    let rekeyed: Vec<String> = docs.iter().map(reverse_keys).collect();
    let rekeyed = format!("# comment\n\n{}\n", rekeyed.join("\n---   \n"));
    assert_eq!(
        run(&[&rekeyed]).unwrap().workloads[0].init_data_toml,
        base,
        "key order and whitespace"
    );

    // Split across two inputs, ConfigMap in the other file.
    let (cm, rest): (Vec<_>, Vec<_>) = docs.iter().partition(|d| d["kind"] == "ConfigMap");
    let cm = serde_json::to_string(&cm[0]).unwrap();
    let rest: Vec<String> = rest
        .iter()
        .map(|d| serde_json::to_string(d).unwrap())
        .collect();
    let rest = rest.join("\n---\n");
    assert_eq!(
        run(&[&rest, &cm]).unwrap().workloads[0].init_data_toml,
        base,
        "files split"
    );
}

#[test]
fn every_policy_relevant_change_moves_the_digest_and_shows_in_diff() {
    let text = manifest("pod-multi.yaml");
    let base = run(&[&text]).unwrap().workloads.remove(0);
    let cases = [
        ("db.internal", "db2.internal", "env[\"DB_HOST\"].value"),
        (
            "[\"--once\"]",
            "[\"--once\", \"--force\"]",
            "containers[\"migrate\"].args",
        ),
        (
            "runAsUser: 1000",
            "runAsUser: 1001",
            "containers[\"api\"].user.uid",
        ),
        (
            "add: [NET_BIND_SERVICE]",
            "add: [NET_BIND_SERVICE, NET_ADMIN]",
            "capabilities.bounding",
        ),
        (
            "registry.example/shop/worker:1.4.2",
            "registry.example/shop/api:1.4.2",
            "containers[\"worker\"].image.digest",
        ),
        (
            "command: [\"/bin/healthcheck\"]",
            "command: [\"/bin/healthcheck\", \"-v\"]",
            "containers[\"api\"].exec",
        ),
        (
            "policy.veil.dev/allow-stdio.worker: \"false\"",
            "policy.veil.dev/allow-stdio.worker: \"true\"",
            "allow_stdio",
        ),
        (
            "{name: data, mountPath: /data}",
            "{name: data, mountPath: /state}",
            "mounts",
        ),
        ("stdin: true", "stdin: false", "allow_stdin"),
        (
            "shareProcessNamespace: false",
            "shareProcessNamespace: true",
            "sandbox.sandbox_pidns",
        ),
    ];
    for (from, to, path) in cases {
        assert!(text.contains(from), "fixture lacks {from:?}");
        let changed = text.replacen(from, to, 1);
        let g = match run(&[&changed]) {
            Ok(g) => g,
            Err(e) => panic!("{from} -> {to}: {e}"),
        };
        let w = &g.workloads[0];
        assert_ne!(w.digest, base.digest, "{from} -> {to} kept the digest");
        let changes = diff_init_data(&base.init_data, &w.init_data);
        assert!(
            changes.iter().any(|c| c.path().contains(path)),
            "{from} -> {to}: diff does not mention {path}: {:?}",
            changes.iter().map(|c| c.to_string()).collect::<Vec<_>>()
        );
    }
    assert!(diff_init_data(&base.init_data, &base.init_data).is_empty());
}

#[test]
fn deployment_job_and_cronjob() {
    let g = run(&[&manifest("deployment-configmap.yaml")]).unwrap();
    let p = &g.workloads[0].policy;
    assert_eq!(p.sandbox.pod_name, "^shop-[a-z0-9]{1,10}-[a-z0-9]{5}$");
    assert_eq!(p.sandbox.namespace, "default");
    let c = p.container("frontend").unwrap();
    assert_eq!(
        c.args,
        ["/app/api", "--port", "9090", "--mode", "production"]
    );
    assert_eq!(c.cwd, "/srv");
    assert!(
        c.env
            .iter()
            .any(|e| e.name == "TIER" && e.value == "frontend")
    );
    assert!(c.exec.contains(&vec![
        "/bin/sh".into(),
        "-c".into(),
        "nginx -s reload".into()
    ]));
    assert!(
        !c.mounts
            .iter()
            .any(|m| m.destination.contains("serviceaccount"))
    );

    let g = run(&[&manifest("job.yaml")]).unwrap();
    let names: Vec<(&str, &str)> = g
        .workloads
        .iter()
        .map(|w| (w.kind.as_str(), w.name.as_str()))
        .collect();
    assert_eq!(names, [("Job", "report"), ("CronJob", "nightly")]);
    let report = g.workloads[0].policy.container("report").unwrap();
    assert_eq!(report.args, ["/batch", "--since", "24h"]);
    assert_eq!((report.user.uid, report.user.gid), (65532, 65532));
    assert_eq!(
        g.workloads[1].policy.container("cleanup").unwrap().args,
        ["/batch", "cleanup"]
    );
    assert_eq!(
        g.workloads[1].policy.sandbox.pod_name,
        "^nightly-[0-9]{1,12}-[a-z0-9]{5}$"
    );
    assert_ne!(g.workloads[0].digest, g.workloads[1].digest);
}

#[test]
fn unsupported_fields_are_listed() {
    let text = manifest("pod-multi.yaml")
        .replace(
            "  runtimeClassName: veil\n",
            "  runtimeClassName: veil\n  hostIPC: true\n",
        )
        .replace(
            "        - {name: data, mountPath: /data}\n",
            "        - {name: data, mountPath: /data}\n        - {name: nfs, mountPath: /nfs}\n",
        )
        .replace(
            "    - name: data\n      emptyDir: {}\n",
            "    - name: data\n      emptyDir: {}\n    - name: nfs\n      nfs: {server: nas, path: /}\n",
        );
    let g = run(&[&text]).unwrap();
    let u = g.unsupported.join("\n");
    assert!(u.contains("hostIPC"), "{u}");
    assert!(u.contains("volume nfs of type nfs"), "{u}");
    assert!(
        !g.workloads[0]
            .policy
            .container("api")
            .unwrap()
            .mounts
            .iter()
            .any(|m| m.destination == "/nfs")
    );
}

fn with_host_path() -> String {
    manifest("pod-multi.yaml")
        .replace(
            "        - {name: data, mountPath: /data}\n",
            "        - {name: data, mountPath: /data}\n        - {name: host, mountPath: /host}\n",
        )
        .replace(
            "    - name: data\n      emptyDir: {}\n",
            "    - name: data\n      emptyDir: {}\n    - name: host\n      hostPath: {path: /srv/shared}\n",
        )
}

#[test]
fn host_path_is_refused_unless_the_settings_allow_it() {
    let e = run(&[&with_host_path()]).unwrap_err().to_string();
    assert!(e.contains("volumes[2].hostPath.path"), "{e}");
    assert!(e.contains("sandbox.allow_host_path = true"), "{e}");
    assert!(e.contains("--allow-host-path"), "{e}");
    let mut s = Settings::default();
    s.sandbox.allow_host_path = true;
    let g = generate(&[&with_host_path()], &resolver(), &s).unwrap();
    let p = &g.workloads[0].policy;
    let v = p.sandbox.volumes.iter().find(|v| v.name == "host").unwrap();
    assert_eq!(v.kind, VolumeKind::HostPath);
    assert_eq!(v.host_path, "/srv/shared");
    let m = p
        .container("api")
        .unwrap()
        .mounts
        .iter()
        .find(|m| m.destination == "/host")
        .unwrap();
    assert!(m.options.contains(&"rw".to_string()), "{m:?}");
}

fn with_claim() -> String {
    manifest("pod-multi.yaml")
        .replace(
            "        - {name: data, mountPath: /data}\n",
            "        - {name: data, mountPath: /data}\n        - {name: db, mountPath: /db}\n",
        )
        .replace(
            "    - name: data\n      emptyDir: {}\n",
            "    - name: data\n      emptyDir: {}\n    - name: db\n      persistentVolumeClaim: {claimName: pgdata}\n",
        )
}

/// A persistentVolumeClaim becomes an encrypted volume only when it names a
/// veil volume; the policy then pins its LUKS2 UUID and key path.
#[test]
fn claims_must_name_a_veil_encrypted_volume_and_pin_its_uuid_and_key() {
    let e = run(&[&with_claim()]).unwrap_err().to_string();
    assert!(e.contains("persistentVolumeClaim.claimName"), "{e}");
    assert!(e.contains("veil volume create pgdata"), "{e}");
    let mut s = Settings::default();
    let ev = veil_policy::model::EncryptedVolume {
        volume: "pgdata".into(),
        uuid: "0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c11".into(),
        key: "kbs:///veil-volume/key/pgdata".into(),
    };
    s.sandbox
        .encrypted_volumes
        .insert("pgdata".into(), ev.clone());
    let g = generate(&[&with_claim()], &resolver(), &s).unwrap();
    let p = &g.workloads[0].policy;
    let v = p.sandbox.volumes.iter().find(|v| v.name == "db").unwrap();
    assert_eq!(v.kind, VolumeKind::Encrypted);
    assert_eq!(v.encrypted.as_ref(), Some(&ev));
    let m = p
        .container("api")
        .unwrap()
        .mounts
        .iter()
        .find(|m| m.destination == "/db")
        .unwrap();
    assert!(m.options.contains(&"rw".to_string()), "{m:?}");
    // The UUID is measured: another volume gives another digest.
    let mut s2 = s.clone();
    s2.sandbox.encrypted_volumes.get_mut("pgdata").unwrap().uuid =
        "0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c12".into();
    let g2 = generate(&[&with_claim()], &resolver(), &s2).unwrap();
    assert_ne!(g.workloads[0].digest, g2.workloads[0].digest);
    // A malformed pin is refused.
    s2.sandbox.encrypted_volumes.get_mut("pgdata").unwrap().key = "kbs:///a/b".into();
    let e = generate(&[&with_claim()], &resolver(), &s2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("kbs:///repo/type/tag"), "{e}");
}

/// The kubelet mounts a claim on the host (a CSI or local directory) and
/// puts that directory in the container's OCI mounts. For a veil volume the
/// guest uses the decrypted disk instead: a create_container that binds the
/// host's directory (or anything but the sandbox's volume) at the claim's
/// path is refused, naming the mount and what the policy allows there.
#[test]
fn a_claims_host_directory_is_never_mounted_in_its_place() {
    let mut s = Settings::default();
    s.sandbox.encrypted_volumes.insert(
        "pgdata".into(),
        veil_policy::model::EncryptedVolume {
            volume: "pgdata".into(),
            uuid: "0b4f1c1e-8c53-4a43-9a61-3e2f0a7d9c11".into(),
            key: "kbs:///veil-volume/key/pgdata".into(),
        },
    );
    let g = generate(&[&with_claim()], &resolver(), &s).unwrap();
    let w = &g.workloads[0];
    let mut engine = PolicyEngine::from_init_data(&w.init_data).unwrap();
    let sandbox = serde_json::json!({"api_version": 1, "kind": "create_sandbox", "request": {
        "sandbox_id": "sb-1", "hostname": "web", "pod_name": "web", "pod_namespace": "prod"}});
    assert!(
        engine
            .enforce(&AgentMessage::from_value(sandbox).unwrap())
            .unwrap()
            .allowed
    );
    let api = w.policy.container("api").unwrap();
    let rule = api.mounts.iter().find(|m| m.destination == "/db").unwrap();
    let create = |source: &str| {
        let req = serde_json::json!({"api_version": 1, "kind": "create_container", "request": {
            "container_id": "c1", "name": "api",
            "image": {"reference": api.image.reference, "digest": api.image.digest},
            "process": {"args": api.args, "cwd": "/app"},
            "mounts": [{"destination": "/db", "source": source, "type": "bind",
                "options": rule.options}]}});
        AgentMessage::from_value(req).unwrap()
    };
    let mount_violations = |d: &veil_policy::enforce::Decision| {
        d.violations
            .iter()
            .filter(|v| v.field == "mounts[0]")
            .cloned()
            .collect::<Vec<_>>()
    };
    // The sandbox's own volume (the decrypted disk) is what the policy allows.
    let d = engine
        .evaluate(&create("/run/veil/sandbox/sb-1/volumes/db"))
        .unwrap();
    assert!(mount_violations(&d).is_empty(), "{d}");
    let kubelet = "/var/lib/kubelet/pods/uid-web/volumes/kubernetes.io~csi/pvc-1/mount";
    for source in [kubelet, "/run/veil/sandbox/sb-1/volumes/data"] {
        let d = engine.evaluate(&create(source)).unwrap();
        assert!(!d.allowed, "{d}");
        let v = mount_violations(&d);
        assert_eq!(v.len(), 1, "{d}");
        eprintln!("{}", v[0].message);
        assert!(
            v[0].actual.contains(source) && v[0].expected.contains("/db bind ^"),
            "{:?}",
            v[0]
        );
    }
}

fn sha256(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(b)))
}

/// configMap (items, defaultMode), secret (data and stringData, optional),
/// downwardAPI and projected volumes: every file's digest and mode pinned,
/// and the host computes exactly the files the policy pins.
#[test]
fn content_volumes_pin_every_file_digest_and_mode() {
    let text = manifest("pod-multi.yaml")
        .replace(
            "  name: web\n  namespace: prod\n  annotations:\n",
            "  name: web\n  namespace: prod\n  labels: {app: web, tier: \"front\\\"end\"}\n  annotations:\n",
        )
        .replace(
            "    - name: config\n      configMap: {name: web-config}\n",
            "    - name: config\n      configMap:\n        name: web-config\n        defaultMode: 0o600\n        items:\n        - {key: app.yaml, path: conf/app.yaml}\n        - {key: LOG_LEVEL, path: level, mode: 0o640}\n    - name: creds\n      secret: {secretName: web-secrets}\n    - name: maybe\n      secret: {secretName: absent, optional: true}\n    - name: info\n      downwardAPI:\n        items:\n        - {path: name, fieldRef: {fieldPath: metadata.name}}\n        - {path: labels, fieldRef: {fieldPath: metadata.labels}}\n    - name: all\n      projected:\n        defaultMode: 420\n        sources:\n        - configMap: {name: web-config, items: [{key: DB_HOST, path: db}]}\n        - downwardAPI: {items: [{path: ns, fieldRef: {fieldPath: metadata.namespace}}]}\n",
        )
        .replace(
            "stringData:\n  DB_PASSWORD: not-in-the-policy\n",
            "data:\n  TOKEN: c2VjcmV0LXRva2Vu\nstringData:\n  DB_PASSWORD: not-in-the-policy\n",
        );
    let g = run(&[&text]).unwrap();
    let vols = &g.workloads[0].policy.sandbox.volumes;
    let vol = |n: &str| vols.iter().find(|v| v.name == n).unwrap();
    let files = |n: &str| -> Vec<(String, String, u32)> {
        vol(n)
            .files
            .iter()
            .map(|f| (f.path.clone(), f.digest.clone(), f.mode))
            .collect()
    };
    assert_eq!(
        files("config"),
        vec![
            ("conf/app.yaml".into(), sha256(b"listen: 8080\n"), 0o600),
            ("level".into(), sha256(b"info"), 0o640),
        ]
    );
    assert_eq!(
        files("creds"),
        vec![
            ("DB_PASSWORD".into(), sha256(b"not-in-the-policy"), 0o644),
            ("TOKEN".into(), sha256(b"secret-token"), 0o644),
        ]
    );
    assert_eq!(vol("maybe").kind, VolumeKind::Content);
    assert!(vol("maybe").files.is_empty());
    assert_eq!(
        files("info"),
        vec![
            (
                "labels".into(),
                sha256(b"app=\"web\"\ntier=\"front\\\"end\""),
                0o644
            ),
            ("name".into(), sha256(b"web"), 0o644),
        ]
    );
    assert_eq!(
        files("all"),
        vec![
            ("db".into(), sha256(b"db.internal"), 0o644),
            ("ns".into(), sha256(b"prod"), 0o644),
        ]
    );
    assert_eq!(vol("data").kind, VolumeKind::EmptyDir);
    // Secret values are in the policy only as digests.
    assert!(!g.workloads[0].init_data_toml.contains("secret-token"));
    // The host is never allowed to write pod volumes.
    assert!(
        !g.workloads[0]
            .policy
            .sandbox
            .copy_file
            .iter()
            .any(|r| r.contains("volumes")),
        "{:?}",
        g.workloads[0].policy.sandbox.copy_file
    );
    // What the host hands in is exactly what is pinned.
    let contents = pod_volume_contents(&[&text], &Settings::default()).unwrap();
    for c in &contents {
        let pinned: Vec<(String, String)> = vol(&c.name)
            .files
            .iter()
            .map(|f| (f.path.clone(), f.digest.clone()))
            .collect();
        let mut handed: Vec<(String, String)> = c
            .files
            .iter()
            .map(|f| (f.path.clone(), sha256(&f.data.0)))
            .collect();
        handed.sort();
        assert_eq!(handed, pinned, "volume {}", c.name);
    }
    let names: Vec<&str> = contents.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["config", "creds", "maybe", "info", "all"]);
    // A ConfigMap the pod needs and nobody gave: refused, naming it and --config.
    let e = run(&[&text.replace(
        "name: web-config\n        defaultMode",
        "name: other\n        defaultMode",
    )])
    .unwrap_err()
    .to_string();
    assert!(e.contains("ConfigMap \"other\""), "{e}");
    assert!(e.contains("--config"), "{e}");
}

#[test]
fn memory_empty_dirs_carry_their_size_limit() {
    let text = manifest("pod-multi.yaml").replace(
        "    - name: data\n      emptyDir: {}\n",
        "    - name: data\n      emptyDir: {medium: Memory, sizeLimit: 64Mi}\n",
    );
    let g = run(&[&text]).unwrap();
    let v = g.workloads[0]
        .policy
        .sandbox
        .volumes
        .iter()
        .find(|v| v.name == "data")
        .unwrap();
    assert!(v.memory);
    assert_eq!(v.size_limit, Some(64 << 20));
    let e = run(&[&text.replace("64Mi", "lots")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("sizeLimit") && e.contains("\"lots\""), "{e}");
}

#[test]
fn host_network_is_refused_naming_the_field() {
    let text = manifest("pod-multi.yaml").replace(
        "  runtimeClassName: veil\n",
        "  runtimeClassName: veil\n  hostNetwork: true\n",
    );
    let e = run(&[&text]).unwrap_err().to_string();
    assert!(e.contains("pod spec.hostNetwork"), "{e}");
    assert!(e.contains("host's network namespace"), "{e}");
    // false is the default and fine.
    let text = manifest("pod-multi.yaml").replace(
        "  runtimeClassName: veil\n",
        "  runtimeClassName: veil\n  hostNetwork: false\n",
    );
    assert!(run(&[&text]).is_ok());
}

#[test]
fn malformed_input_is_refused_with_a_reason() {
    let cases: Vec<(String, &str)> = vec![
        ("kind: Pod\nmetadata: {name: x\n".into(), "malformed YAML"),
        ("apiVersion: v1\nkind: Gadget\nmetadata: {name: g}\n".into(), "unknown kind \"Gadget\""),
        ("- just\n- a list\n".into(), "must be a mapping"),
        ("kind: ConfigMap\nmetadata: {name: c}\n".into(), "defines no workload"),
        (
            manifest("pod-multi.yaml").replace("registry.example/shop/api:1.4.2", "registry.example/shop/missing:9"),
            "image \"registry.example/shop/missing:9\" (container \"api\") cannot be resolved",
        ),
        (
            manifest("pod-multi.yaml").replace("registry.example/shop/api:1.4.2", "registry.example/shop/api@sha256:0000000000000000000000000000000000000000000000000000000000000000"),
            "cannot be resolved",
        ),
        (
            manifest("pod-multi.yaml").replace("configMapKeyRef: {name: web-config, key: DB_HOST}", "configMapKeyRef: {name: nope, key: DB_HOST}"),
            "ConfigMap \"nope\"",
        ),
        (
            manifest("pod-multi.yaml").replace("image: registry.example/shop/worker:1.4.2", "image: registry.example/tools/named-user:1"),
            "a name; veil does not read the image's /etc/passwd",
        ),
        (
            manifest("pod-multi.yaml").replace("'{\"REQUEST_ID\": \"[0-9a-f]{8}\"}'", "'{\"REQUEST_ID\": \"[0-9a-f\"}'"),
            "invalid regex",
        ),
    ];
    for (text, want) in cases {
        let e = run(&[&text]).unwrap_err().to_string();
        assert!(e.contains(want), "expected {want:?} in: {e}");
    }
}

#[test]
fn ports_are_pinned_per_container_with_their_host_port() {
    use veil_policy::model::PortRule;
    let ports = |text: &str, name: &str| {
        let g = run(&[text]).unwrap();
        g.workloads[0].policy.container(name).unwrap().ports.clone()
    };
    let rule = |container_port, protocol: &str, host_port| PortRule {
        container_port,
        protocol: protocol.into(),
        host_port,
    };
    // Declared without hostPort: pinned, and not publishable.
    assert_eq!(
        ports(&manifest("pod-multi.yaml"), "api"),
        [rule(8080, "tcp", 0)]
    );
    assert!(ports(&manifest("pod-multi.yaml"), "worker").is_empty());
    let text = manifest("pod-multi.yaml").replace(
        "ports: [{containerPort: 8080}]",
        "ports: [{containerPort: 8080, hostPort: 18080}, {containerPort: 53, protocol: UDP}]",
    );
    assert_eq!(
        ports(&text, "api"),
        [rule(53, "udp", 0), rule(8080, "tcp", 18080)]
    );
    // The pinned host port is part of the digest.
    let a = run(&[&text]).unwrap().workloads[0].init_data_toml.clone();
    let b = run(&[&text.replace("18080", "18081")]).unwrap().workloads[0]
        .init_data_toml
        .clone();
    assert_ne!(a, b);

    // One port, two containers of the pod: refused, naming both.
    let text = manifest("pod-multi.yaml").replace(
        "      image: registry.example/shop/worker:1.4.2\n",
        "      image: registry.example/shop/worker:1.4.2\n      ports: [{containerPort: 8080}]\n",
    );
    let e = run(&[&text]).unwrap_err().to_string();
    assert!(
        e.contains("containers \"api\" and \"worker\" both declare port 8080/tcp"),
        "{e}"
    );
    for (bad, why) in [
        (
            "{containerPort: 8080, protocol: SCTP}",
            "\"SCTP\" is not supported",
        ),
        ("{containerPort: 70000}", "70000 is not a port number"),
        ("{hostPort: 80}", "no containerPort"),
        (
            "[{containerPort: 80}, {containerPort: 80}]",
            "declared twice",
        ),
    ] {
        let list = if bad.starts_with('[') {
            bad.to_string()
        } else {
            format!("[{bad}]")
        };
        let text = manifest("pod-multi.yaml")
            .replace("ports: [{containerPort: 8080}]", &format!("ports: {list}"));
        let e = run(&[&text]).unwrap_err().to_string();
        assert!(e.contains(why), "{bad}: {e}");
    }
}

#[test]
fn privileged_containers_are_refused_unless_the_settings_allow_them() {
    let pod =
        manifest("pod-multi.yaml").replace("allowPrivilegeEscalation: false", "privileged: true");
    assert!(
        pod.contains("privileged: true"),
        "the manifest changed: {pod}"
    );
    let e = run(&[&pod]).unwrap_err().to_string();
    assert!(e.contains("securityContext.privileged"), "{e}");
    assert!(e.contains("sandbox.allow_privileged = true"), "{e}");
    assert!(e.contains("--allow-privileged"), "{e}");
    let mut s = Settings::default();
    s.sandbox.allow_privileged = true;
    let g = generate(&[&pod], &resolver(), &s).unwrap();
    assert!(
        g.workloads[0]
            .policy
            .containers
            .iter()
            .any(|c| c.privileged),
        "the admitted container is pinned privileged"
    );
}

#[test]
fn fs_group_owns_the_pods_managed_volumes_but_not_host_paths() {
    let pod = with_host_path().replace(
        "supplementalGroups: [2000]\n",
        "supplementalGroups: [2000]\n    fsGroup: 2000\n",
    );
    assert!(pod.contains("fsGroup: 2000"), "the manifest changed: {pod}");
    let mut s = Settings::default();
    s.sandbox.allow_host_path = true;
    let g = generate(&[&pod], &resolver(), &s).unwrap();
    let vols = &g.workloads[0].policy.sandbox.volumes;
    let data = vols.iter().find(|v| v.name == "data").unwrap();
    assert_eq!(data.fs_group, Some(2000));
    let host = vols.iter().find(|v| v.name == "host").unwrap();
    assert_eq!(host.fs_group, None);
    let bad = pod.replace("fsGroup: 2000", "fsGroup: -1");
    let e = generate(&[&bad], &resolver(), &s).unwrap_err().to_string();
    assert!(e.contains("securityContext.fsGroup"), "{e}");
}
