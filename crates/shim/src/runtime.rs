//! The [`Launcher`]/[`Sandbox`] seam implemented by veil-runtime's
//! sandbox lifecycle (`veil_runtime::pod`), the library `veil run` uses:
//! the same launch, agent requests and stdio pumps, here driven by
//! containerd's requests.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use sha2::Digest as _;
use veil_agent_api::resources::ResourceUsage;
use veil_agent_api::{CreateContainerRequest, ExecProcessRequest, User};
use veil_policy::model::{ContainerPolicy, PolicyData, VolumePolicy};
use veil_runtime::CallError;
use veil_runtime::net::NetworkMode;
use veil_runtime::pod::{self, PodClient, PodNet, Record, SandboxSpec, Stdio};

use crate::backend::{
    BackendError, ContainerRequest, ExecRequest, FailureKind, Launcher, ProcRef, ProcessIo,
    Sandbox, SandboxRequest, Waiter,
};
use crate::config::{Accel, HandlerConfig, SandboxKind, Tee};
use crate::spec::RawProcess;

/// How long the agent may take to come up (attestation included).
const READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a container's processes get between SIGTERM and SIGKILL on delete.
const REMOVE_GRACE_SECS: u32 = 10;

/// veil's sandbox id for containerd's `namespace`/`id`: ids name host
/// paths and networks, so they are `[a-z0-9]` only; containerd's are not.
pub fn sandbox_id(namespace: &str, id: &str) -> String {
    hex::encode(&sha2::Sha256::digest(format!("{namespace}/{id}"))[..8])
}

fn failure(denied: bool, what: &str, e: impl std::fmt::Display) -> BackendError {
    BackendError {
        kind: if denied {
            FailureKind::Denied
        } else {
            FailureKind::Failed
        },
        message: format!("{what}: {e}"),
    }
}

fn call_err(what: &str, e: CallError) -> BackendError {
    failure(e.is_denied(), what, e)
}

fn pod_err(what: &str, e: pod::PodError) -> BackendError {
    failure(e.is_denied(), what, e)
}

/// Launches veil sandboxes for the shim.
pub struct RuntimeLauncher;

/// The pod network of a sandbox spec: the CRI/CNI's namespace when the
/// spec names one (joined by the process sandbox's containers; a tap
/// mirrored to its interface for a VM), else loopback only.
fn pod_network(kind: &pod::SandboxKind, netns: Option<&PathBuf>) -> PodNet {
    match (kind, netns) {
        (pod::SandboxKind::Process, Some(ns)) => PodNet::Process {
            mode: NetworkMode::Join(ns.clone()),
            ports: Vec::new(),
        },
        (pod::SandboxKind::Process, None) => PodNet::Process {
            mode: NetworkMode::None,
            ports: Vec::new(),
        },
        (pod::SandboxKind::Vm(_), Some(ns)) => PodNet::VmJoin(ns.clone()),
        (pod::SandboxKind::Vm(_), None) => PodNet::Vm(None),
    }
}

/// The sandbox a handler launches for a pod with these volumes (its
/// policy's). The encrypted volumes the policy pins are looked up in the
/// volume store of the handler's data dir, as `veil run` does (`veil volume
/// create` as root puts them in `/var/lib/veil/volumes`): a volume that is
/// not there, has another UUID, or is named for a process sandbox is
/// refused here, before anything starts.
fn kind_of(
    h: &HandlerConfig,
    volumes: &[VolumePolicy],
) -> Result<pod::SandboxKind, veil_runtime::volume::VolumeError> {
    let volume_disks =
        veil_runtime::volume::disks_for(&h.data_dir, volumes, h.sandbox == SandboxKind::Vm)?;
    Ok(match h.sandbox {
        SandboxKind::Process => pod::SandboxKind::Process,
        SandboxKind::Vm => pod::SandboxKind::Vm(pod::VmOptions {
            qemu: h
                .qemu
                .clone()
                .unwrap_or_else(|| "qemu-system-x86_64".into()),
            accel: h.accel.map(|a| match a {
                Accel::Kvm => veil_runtime::vm::qemu::Accel::Kvm,
                Accel::Tcg => veil_runtime::vm::qemu::Accel::Tcg,
            }),
            guest_image: h.kernel.clone().zip(h.initrd.clone()),
            firmware: h.firmware.clone(),
            vcpus: h.vcpus.unwrap_or(1),
            memory_mib: h.memory_mib.unwrap_or(1024),
            boot_timeout: Duration::from_secs(300),
            relay_command: vec![
                relay_program().display().to_string(),
                "guest".into(),
                "relay".into(),
            ],
            // Attached as `veil run` attaches them (serial `veil-vol-<i>`,
            // in pod volume order); the guest opens each with the key the
            // KBS releases to it. The kubelet's mount of the claim (a host
            // directory in the container's OCI mounts) is never used:
            // container mounts come from the policy, not the OCI spec.
            volume_disks,
            // emptyDirs and container layers on an encrypted scratch disk
            // (sparse) of the default size plus the pod's emptyDir
            // sizeLimits, not in guest RAM.
            scratch_bytes: Some(pod::launch::scratch_bytes(None, volumes)),
            bench_disk_bytes: None,
        }),
    })
}

/// The `veil` binary QEMU runs to relay a guest's connection to a KBS on
/// the host's loopback: the one installed next to the shim (`veil node
/// install` puts both in one dir), else `veil` from `PATH`.
fn relay_program() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|e| e.with_file_name("veil"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| "veil".into())
}

fn tee_of(t: Tee) -> pod::Tee {
    match t {
        Tee::Sim => pod::Tee::Sim,
        Tee::None => pod::Tee::None,
        Tee::Snp => pod::Tee::Snp,
        Tee::Tdx => pod::Tee::Tdx,
    }
}

impl Launcher for RuntimeLauncher {
    fn launch(&self, req: SandboxRequest) -> Result<Box<dyn Sandbox>, BackendError> {
        let h = &req.handler;
        let data = h.data_dir.clone();
        let id = sandbox_id(&req.namespace, &req.id);
        let agent = pod::launch::find_agent(h.agent.as_deref()).ok_or_else(|| {
            BackendError::failed(
                "veil-agent not found: set `agent` in the handler's shim.toml table, or install it next to containerd-shim-veil-v2 or on PATH",
            )
        })?;
        let policy_text = req
            .init_data
            .init_data
            .policy()
            .map_err(|e| BackendError::failed(format!("{}: {e}", req.init_data_source)))?;
        let policy = veil_policy::rego::extract_policy_data(policy_text)
            .map_err(|e| BackendError::failed(format!("{}: {e}", req.init_data_source)))?;
        let kind =
            kind_of(h, &policy.sandbox.volumes).map_err(|e| BackendError::failed(e.to_string()))?;
        let kbs = pod::kbs_url_of(&req.init_data).unwrap_or_default();
        let forwards = if kbs.is_empty() {
            Vec::new()
        } else {
            pod::launch::route_kbs(&kind, tee_of(h.tee), &kbs)
                .map_err(|e| BackendError::failed(e.to_string()))?
                .1
        };
        let network = pod_network(&kind, req.netns.as_ref());
        let dir = pod::record::dir_of(&data, &id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| BackendError::failed(format!("creating {}: {e}", dir.display())))?;
        let mut rec = Record {
            id: id.clone(),
            name: req.pod_name.clone().unwrap_or_else(|| req.id.clone()),
            policy_from: req.init_data_source.clone(),
            kbs_url: kbs.clone(),
            ..Default::default()
        };
        let spec = SandboxSpec {
            id: id.clone(),
            data: data.clone(),
            agent_binary: agent,
            kind,
            tee: tee_of(h.tee),
            init_data: req.init_data.raw().to_vec(),
            oci_layout: req.layout.clone(),
            forwards,
            network,
            log_filter: "info".into(),
            ready_timeout: READY_TIMEOUT,
        };
        let launched = pod::Sandbox::launch(spec, &mut rec, &mut |_| {});
        let (sandbox, note) = match launched {
            Ok(s) => s,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(pod_err("launching the sandbox", e));
            }
        };
        tracing::info!(
            sandbox = %id,
            kind = %sandbox.inner().label(),
            tee = %tee_of(h.tee),
            note = note.as_deref().unwrap_or(""),
            "pod sandbox launched"
        );
        if h.tee == Tee::Sim {
            tracing::warn!(
                sandbox = %id,
                "TEE: sim (simulated TEE): no hardware protection; the host can read and change this pod's memory; for development and CI only"
            );
        }
        let mut client = match sandbox.client() {
            Ok(c) => c,
            Err(e) => {
                let _ = sandbox.stop(Duration::from_secs(5));
                let _ = std::fs::remove_dir_all(&dir);
                return Err(call_err("connecting to the agent", e));
            }
        };
        // The pod name the policy admits: the CRI's, else the policy's own
        // (a literal), else one made to fit its pattern.
        let pod_name = req
            .pod_name
            .clone()
            .filter(|n| veil_runtime::requests::pod_name_fits(&policy.sandbox.pod_name, n))
            .or_else(|| veil_runtime::requests::pod_name(&policy))
            .or_else(|| veil_runtime::requests::fitting_pod_name(&policy.sandbox.pod_name, &id))
            .unwrap_or_else(|| req.pod_name.clone().unwrap_or_else(|| req.id.clone()));
        let mut csr = veil_runtime::requests::create_sandbox(&policy, &id, &pod_name);
        if let Some(h) = &req.hostname {
            csr.hostname = h.clone();
        }
        if let Err(e) = sandbox.create_pod(&mut client, csr) {
            let _ = sandbox.stop(Duration::from_secs(5));
            let _ = std::fs::remove_dir_all(&dir);
            return Err(pod_err("create_sandbox", e));
        }
        Ok(Box::new(RuntimeSandbox {
            id,
            data,
            sandbox: Some(sandbox),
            client,
            policy,
            io: BTreeMap::new(),
            execs: BTreeMap::new(),
            containers: BTreeMap::new(),
        }))
    }

    fn cleanup(&self, h: &HandlerConfig, namespace: &str, id: &str) -> Result<(), BackendError> {
        // The agent died with the shim (its death signal); what is left is
        // the pod network (if veil made one) and the record dir.
        let sid = sandbox_id(namespace, id);
        let _ = pod::reap_networks(&h.data_dir);
        let dir = pod::record::dir_of(&h.data_dir, &sid);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(BackendError::failed(format!(
                "removing {}: {e}",
                dir.display()
            ))),
        }
    }
}

/// A running veil sandbox of one pod.
pub struct RuntimeSandbox {
    id: String,
    data: PathBuf,
    sandbox: Option<pod::Sandbox>,
    client: PodClient,
    policy: PolicyData,
    io: BTreeMap<ProcRef, ProcessIo>,
    execs: BTreeMap<ProcRef, ExecProcessRequest>,
    /// Each container's policy entry, by container id.
    containers: BTreeMap<String, ContainerPolicy>,
}

impl RuntimeSandbox {
    /// The policy's container for `name` (the CRI's container name), or
    /// its only container when the request names none (`ctr run`).
    fn container_policy(&self, name: Option<&str>) -> Result<&ContainerPolicy, BackendError> {
        let names: Vec<&str> = self
            .policy
            .containers
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let found = match name {
            Some(n) => self.policy.containers.iter().find(|c| c.name == n),
            None => {
                let mut apps = self.policy.containers.iter().filter(|c| !c.init);
                match (apps.next(), apps.next()) {
                    (Some(c), None) => Some(c),
                    _ => None,
                }
            }
        };
        found.ok_or_else(|| BackendError {
            kind: FailureKind::Denied,
            message: match name {
                Some(n) => format!("the pod's policy has no container named {n:?} (it has {names:?})"),
                None => format!(
                    "the container has no io.kubernetes.cri.container-name annotation and the policy has several containers ({names:?}): name the one to run"
                ),
            },
        })
    }
}

/// The host's request for a process, put into the agent's request: the
/// agent checks every field against the policy. `stdin`: whether to keep
/// the process's stdin open for the FIFO containerd gave.
fn apply_process(p: &RawProcess, io: &ProcessIo, stdin: bool, out: &mut veil_agent_api::Process) {
    if !p.args.is_empty() {
        out.args = p.args.clone();
    }
    out.env = p.env.clone();
    if !p.cwd.is_empty() {
        out.cwd = p.cwd.clone();
    }
    // containerd lists the primary group among the additional ones (`ctr`
    // does); the set of groups is the same without it.
    let mut additional_gids = p.user.additional_gids.clone();
    additional_gids.retain(|g| *g != p.user.gid);
    out.user = User {
        uid: p.user.uid,
        gid: p.user.gid,
        additional_gids,
    };
    out.terminal = io.terminal;
    out.stdin = stdin;
}

fn stdio_of(io: &ProcessIo) -> Stdio {
    let s = |p: &Option<PathBuf>| {
        p.as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    Stdio::paths(&s(&io.stdin), &s(&io.stdout), &s(&io.stderr))
}

impl Sandbox for RuntimeSandbox {
    fn pid(&self) -> u32 {
        self.sandbox
            .as_ref()
            .and_then(|s| s.inner().agent_pid())
            .unwrap_or_else(std::process::id)
    }

    fn create_container(&mut self, req: &ContainerRequest) -> Result<(), BackendError> {
        let c = self.container_policy(req.name.as_deref())?.clone();
        let mut creq: CreateContainerRequest =
            veil_runtime::requests::create_container(&self.policy, &c, &self.id, &req.id);
        // containerd hands every task a stdin FIFO (`ctr run` does, even
        // without -i); a container whose policy does not allow stdin gets
        // none (it reads end-of-file), as in Kubernetes without `stdin: true`.
        let stdin = req.io.stdin.is_some() && c.allow_stdin;
        apply_process(&req.spec.process, &req.io, stdin, &mut creq.process);
        // The image the CRI asked for, not the policy's: the guest decides.
        let image = crate::annotations::image_name(&req.spec.annotations);
        if let Some(image) = image {
            creq.image = veil_runtime::requests::requested_image(&self.policy, image);
        }
        // The limits containerd asks for (the kubelet's, from the pod's
        // resources), not the policy's: the agent checks them against its
        // bounds and refuses, naming the check, what exceeds them.
        creq.resources = req.spec.resources.clone().map(Box::new);
        let created = self.client.create_container(creq).map_err(|e| {
            let mut err = call_err("create_container", e);
            if let Some(image) = image {
                err.message = format!("{} (the CRI asked for image {image})", err.message);
            }
            err
        })?;
        for w in &created.warnings {
            // Once per container, in the shim's log (containerd's journal).
            // Debug-formatted: control characters escaped.
            tracing::warn!(container = %req.id, warning = ?w, "the agent warns");
        }
        let mut io = req.io.clone();
        if !stdin {
            io.stdin = None;
        }
        self.io.insert(
            ProcRef {
                container_id: req.id.clone(),
                exec_id: None,
            },
            io,
        );
        self.containers.insert(req.id.clone(), c);
        Ok(())
    }

    fn start(&mut self, p: &ProcRef) -> Result<Waiter, BackendError> {
        let io = self.io.get(p).cloned().ok_or_else(|| BackendError {
            kind: FailureKind::NotFound,
            message: format!("no process {p:?}"),
        })?;
        let exec_id = p.exec_id.clone().unwrap_or_default();
        match &p.exec_id {
            None => {
                self.client
                    .start(&p.container_id)
                    .map_err(|e| call_err("start_container", e))?;
            }
            Some(_) => {
                let req = self.execs.remove(p).ok_or_else(|| BackendError {
                    kind: FailureKind::NotFound,
                    message: format!("no exec {exec_id:?}"),
                })?;
                self.client
                    .exec(req)
                    .map_err(|e| call_err("exec_process", e))?;
            }
        }
        let attached = self
            .client
            .attach(&p.container_id, &exec_id, stdio_of(&io))
            .map_err(|e| call_err("attaching to the process's output", e))?;
        let what = format!("{} {exec_id}", p.container_id);
        Ok(Box::new(move || {
            let exit = attached
                .wait()
                .map_err(|e| call_err(&format!("waiting for {what}"), e))?;
            if let Some(why) = exit.denied {
                tracing::warn!(process = %what, reason = %why, "the policy keeps this process's output from the host");
            }
            exit.code.map(|c| c as u32).ok_or_else(|| {
                BackendError::failed(format!("the agent did not report how {what} exited"))
            })
        }))
    }

    fn exec(&mut self, req: &ExecRequest) -> Result<(), BackendError> {
        // The agent creates and starts an exec in one request: build it now
        // (refusing what cannot be an exec of this container), send it at Start.
        let c = self
            .containers
            .get(&req.container_id)
            .ok_or_else(|| BackendError {
                kind: FailureKind::NotFound,
                message: format!("no container {:?} in this sandbox", req.container_id),
            })?;
        let mut ereq = veil_runtime::requests::exec_process(
            c,
            &req.container_id,
            &req.exec_id,
            req.process.args.clone(),
        );
        apply_process(
            &req.process,
            &req.io,
            req.io.stdin.is_some(),
            &mut ereq.process,
        );
        let p = ProcRef {
            container_id: req.container_id.clone(),
            exec_id: Some(req.exec_id.clone()),
        };
        self.execs.insert(p.clone(), ereq);
        self.io.insert(p, req.io.clone());
        Ok(())
    }

    fn signal(&mut self, p: &ProcRef, signal: u32) -> Result<(), BackendError> {
        self.client
            .kill(&p.container_id, p.exec_id.as_deref().unwrap_or(""), signal)
            .map_err(|e| call_err("signal_process", e))
    }

    fn resize_pty(&mut self, p: &ProcRef, width: u32, height: u32) -> Result<(), BackendError> {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        self.client
            .resize_pty(
                &p.container_id,
                p.exec_id.as_deref().unwrap_or(""),
                clamp(height),
                clamp(width),
            )
            .map_err(|e| call_err("resize_terminal", e))
    }

    fn close_stdin(&mut self, p: &ProcRef) -> Result<(), BackendError> {
        self.client
            .close_stdin(&p.container_id, p.exec_id.as_deref().unwrap_or(""))
            .map_err(|e| call_err("write_stdin (close)", e))
    }

    fn stats(&mut self, container_id: &str) -> Result<Option<ResourceUsage>, BackendError> {
        self.client
            .stats(container_id)
            .map(|s| s.resources)
            .map_err(|e| call_err("stats_container", e))
    }

    fn remove_container(&mut self, id: &str) -> Result<(), BackendError> {
        self.io.retain(|p, _| p.container_id != id);
        self.execs.retain(|p, _| p.container_id != id);
        self.containers.remove(id);
        self.client
            .delete(id, REMOVE_GRACE_SECS)
            .map_err(|e| call_err("remove_container", e))
    }

    fn stop(mut self: Box<Self>) -> Result<(), BackendError> {
        let dir = pod::record::dir_of(&self.data, &self.id);
        let result = match self.sandbox.take() {
            Some(s) => s.stop(Duration::from_secs(5)).map(|warn| {
                if let Some(w) = warn {
                    tracing::warn!(sandbox = %self.id, "{w}");
                }
            }),
            None => Ok(()),
        };
        // containerd owns the lifecycle: no record outlives the task.
        let _ = std::fs::remove_dir_all(&dir);
        result.map_err(|e| pod_err("stopping the sandbox", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A VM handler's scratch disk holds the pod's disk-backed emptyDirs:
    /// the default size plus their sizeLimits; the handler's QEMU, guest
    /// image and accelerator reach the launch.
    #[test]
    fn a_vm_handler_sizes_the_scratch_for_the_pods_empty_dirs() {
        use veil_policy::model::VolumeKind;
        let vol = |memory, size_limit| VolumePolicy {
            name: "cache".into(),
            kind: VolumeKind::EmptyDir,
            source: "emptyDir".into(),
            memory,
            size_limit,
            host_path: String::new(),
            files: Vec::new(),
            fs_group: None,
            encrypted: None,
        };
        let h = HandlerConfig {
            sandbox: SandboxKind::Vm,
            qemu: Some("/opt/qemu".into()),
            accel: Some(Accel::Tcg),
            kernel: Some("/g/vmlinux".into()),
            initrd: Some("/g/initrd.img".into()),
            ..Default::default()
        };
        let pod::SandboxKind::Vm(v) =
            kind_of(&h, &[vol(false, Some(3 << 30)), vol(true, Some(1 << 30))]).unwrap()
        else {
            panic!("a VM handler launches a VM");
        };
        assert_eq!(
            v.scratch_bytes,
            Some(veil_runtime::vm::DEFAULT_SCRATCH_BYTES + (3 << 30))
        );
        assert_eq!(v.qemu, PathBuf::from("/opt/qemu"));
        assert_eq!(v.accel, Some(veil_runtime::vm::qemu::Accel::Tcg));
        assert_eq!(
            v.guest_image,
            Some(("/g/vmlinux".into(), "/g/initrd.img".into()))
        );
    }

    /// A pod's claims of veil volumes: a VM handler attaches the volume
    /// files of its data dir's store, in pod volume order (the serials the
    /// guest looks for); a volume that is not on the node, one with another
    /// UUID, or any encrypted volume under a process handler is refused
    /// before anything starts, naming the check and the fix.
    #[test]
    fn a_vm_handler_attaches_the_pods_veil_volumes_from_its_data_dir() {
        use veil_policy::model::{EncryptedVolume, VolumeKind};
        use veil_runtime::volume::{VolumeRecord, record_path, volumes_dir};
        const UUID: &str = "0f2c1b6e-3d4a-4b5c-8d6e-7f8091a2b3c4";
        let d = tempfile::tempdir().unwrap();
        let data = d.path().to_path_buf();
        let claim = |pod_volume: &str, volume: &str, uuid: &str| VolumePolicy {
            name: pod_volume.into(),
            kind: VolumeKind::Encrypted,
            source: "persistentVolumeClaim".into(),
            memory: false,
            size_limit: None,
            host_path: String::new(),
            files: Vec::new(),
            fs_group: None,
            encrypted: Some(EncryptedVolume {
                volume: volume.into(),
                uuid: uuid.into(),
                key: format!("kbs:///default/key/{volume}"),
            }),
        };
        let vm = HandlerConfig {
            sandbox: SandboxKind::Vm,
            data_dir: data.clone(),
            ..Default::default()
        };
        let e = kind_of(&vm, &[claim("data", "db", UUID)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the policy names the veil volume db, which this host does not have")
                && e.contains(&record_path(&data, "db").display().to_string())
                && e.contains("veil volume create db --size"),
            "{e}"
        );
        std::fs::create_dir_all(volumes_dir(&data)).unwrap();
        let mut files = Vec::new();
        for name in ["db", "logs"] {
            let file = volumes_dir(&data).join(format!("{name}.img"));
            std::fs::write(&file, b"").unwrap();
            let r = VolumeRecord {
                name: name.into(),
                file: file.clone(),
                size: 64 << 20,
                uuid: UUID.into(),
                key: format!("kbs:///default/key/{name}"),
                kbs: "embedded".into(),
                created: "2026-12-04T09:00:00Z".into(),
            };
            std::fs::write(record_path(&data, name), serde_json::to_vec(&r).unwrap()).unwrap();
            files.push(file);
        }
        let pod::SandboxKind::Vm(v) =
            kind_of(&vm, &[claim("zz", "logs", UUID), claim("data", "db", UUID)]).unwrap()
        else {
            panic!("a VM handler launches a VM");
        };
        assert_eq!(v.volume_disks, files, "sorted by pod volume name");
        let other = "11111111-2222-4333-8444-555555555555";
        let e = kind_of(&vm, &[claim("data", "db", other)])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("pins veil volume db with LUKS2 UUID {other}"))
                && e.contains(&format!("has UUID {UUID}")),
            "{e}"
        );
        let process = HandlerConfig {
            data_dir: data.clone(),
            ..Default::default()
        };
        let e = kind_of(&process, &[claim("data", "db", UUID)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("encrypted volumes need the VM sandbox"), "{e}");
    }

    /// The CRI's pod netns reaches the sandbox in both kinds: joined by a
    /// process sandbox, a tap mirrored to it for a VM (`veil-vm-*`).
    #[test]
    fn the_cri_netns_is_the_pod_network_of_both_sandbox_kinds() {
        let ns = PathBuf::from("/var/run/netns/cni-1");
        let vm = kind_of(
            &HandlerConfig {
                sandbox: SandboxKind::Vm,
                ..Default::default()
            },
            &[],
        )
        .unwrap();
        let process = kind_of(&HandlerConfig::default(), &[]).unwrap();
        assert_eq!(pod_network(&vm, Some(&ns)), PodNet::VmJoin(ns.clone()));
        assert_eq!(pod_network(&vm, None), PodNet::Vm(None));
        assert_eq!(
            pod_network(&process, Some(&ns)),
            PodNet::Process {
                mode: NetworkMode::Join(ns.clone()),
                ports: Vec::new(),
            }
        );
        assert_eq!(
            pod_network(&process, None),
            PodNet::Process {
                mode: NetworkMode::None,
                ports: Vec::new(),
            }
        );
    }
}
