//! `veil-agent`: the in-guest agent.
//!
//! ```text
//! veil-agent serve --init-data FILE --listen SOCKET --guest-root DIR
//!                  [--tee sim|snp|tdx|none] [--platform-fd N] [--oci-layout DIR]
//!                  [--sandbox-id ID] [--pid-namespace] [--no-seccomp]
//! veil-agent init SPEC      (internal: the container launcher)
//! ```

use std::os::fd::FromRawFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use nix::sys::signal::{SigSet, Signal};
use veil_agent::boot::boot;
use veil_agent::container::{Manager, ManagerConfig, write_private};
use veil_agent::guest::GuestPaths;
use veil_agent::kbs::{Kbs, secret_name, target_of};
use veil_agent::local_api::LocalApi;
use veil_agent::server::Agent;
use veil_agent::vm;
use veil_agent_api::proto::{AttestationStatus, Hello};
use veil_tee::{DetectRoots, TeeKind, detect};

/// `--tee`: detect, a named TEE, or none at all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum TeeArg {
    #[default]
    Detect,
    Named(TeeKind),
    /// No TEE (`none`): no binding, no evidence, no KBS.
    NoTee,
}

impl TeeArg {
    fn parse(s: &str) -> Result<Self, String> {
        if s == veil_agent::boot::NO_TEE {
            return Ok(TeeArg::NoTee);
        }
        TeeKind::parse(s)
            .map(TeeArg::Named)
            .map_err(|e| format!("{e}, none"))
    }
}

#[derive(Debug, Default)]
struct ServeArgs {
    init_data: PathBuf,
    listen: PathBuf,
    guest_root: PathBuf,
    tee: TeeArg,
    platform_fd: Option<i32>,
    oci_layout: Option<PathBuf>,
    sandbox_id: String,
    pid_namespace: bool,
    seccomp: bool,
    /// Listen on this TCP port instead of `listen` (VM sandbox).
    listen_tcp: Option<u16>,
    /// The sim platform channel, already open (VM sandbox: a virtio-serial port).
    platform_file: Option<std::fs::File>,
    /// The pod network namespace the host made (process sandbox).
    pod_netns: Option<PathBuf>,
    /// The VM's workload NIC, moved into the pod network namespace.
    workload_nic: Option<String>,
}

fn parse_serve(args: &[String]) -> Result<ServeArgs, String> {
    let mut a = ServeArgs {
        seccomp: true,
        ..Default::default()
    };
    let mut it = args.iter();
    let mut init = None;
    let mut listen = None;
    let mut root = None;
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--init-data" => init = Some(PathBuf::from(val()?)),
            "--listen" => listen = Some(PathBuf::from(val()?)),
            "--guest-root" => root = Some(PathBuf::from(val()?)),
            "--tee" => a.tee = TeeArg::parse(&val()?)?,
            "--platform-fd" => {
                a.platform_fd = Some(val()?.parse().map_err(|_| "--platform-fd: not a number")?)
            }
            "--oci-layout" => a.oci_layout = Some(PathBuf::from(val()?)),
            "--sandbox-id" => a.sandbox_id = val()?,
            "--pid-namespace" => a.pid_namespace = true,
            "--no-seccomp" => a.seccomp = false,
            "--pod-netns" => a.pod_netns = Some(PathBuf::from(val()?)),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    a.init_data = init.ok_or("--init-data is required")?;
    a.listen = listen.ok_or("--listen is required")?;
    a.guest_root = root.ok_or("--guest-root is required")?;
    Ok(a)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if std::process::id() == 1
        && (args.len() == 1 || args.get(1).map(String::as_str) == Some(vm::STAGE2_ARG))
    {
        pid1(&args);
    }
    match args.get(1).map(String::as_str) {
        Some("init") => match args.get(2) {
            Some(spec) => ExitCode::from(
                veil_agent::init::main(std::path::Path::new(spec)).clamp(0, 255) as u8,
            ),
            None => {
                eprintln!("usage: veil-agent init SPEC");
                ExitCode::from(2)
            }
        },
        Some("serve") => match parse_serve(&args[2..]) {
            Ok(a) => serve(a),
            Err(e) => {
                eprintln!("veil-agent: {e}");
                ExitCode::from(2)
            }
        },
        _ => {
            eprintln!(
                "usage: veil-agent serve --init-data FILE --listen SOCKET --guest-root DIR [--tee sim|snp|tdx|none] [--platform-fd N] [--oci-layout DIR] [--sandbox-id ID] [--pid-namespace] [--no-seccomp] [--pod-netns FILE]"
            );
            ExitCode::from(2)
        }
    }
}

/// Become PID 1 of a new PID namespace: fork; the parent relays signals and
/// the exit status; the child (PID 1) dies with it.
fn enter_pid_namespace() -> Result<(), String> {
    use nix::sched::{CloneFlags, unshare};
    use nix::sys::wait::{WaitStatus, waitpid};
    use nix::unistd::{ForkResult, fork};
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| format!("creating the PID namespace: {e}"))?;
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ] {
        set.add(s);
    }
    set.thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;
    // SAFETY: no threads have been started yet.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            set.thread_unblock()
                .map_err(|e| format!("sigprocmask: {e}"))?;
            // SAFETY: plain prctl.
            unsafe {
                libc::prctl(
                    libc::PR_SET_PDEATHSIG,
                    libc::SIGKILL as libc::c_ulong,
                    0,
                    0,
                    0,
                )
            };
            // Our own /proc, so PIDs we see are the sandbox's.
            nix::mount::mount(
                Some("proc"),
                "/proc",
                Some("proc"),
                nix::mount::MsFlags::MS_NOSUID
                    | nix::mount::MsFlags::MS_NODEV
                    | nix::mount::MsFlags::MS_NOEXEC,
                None::<&str>,
            )
            .map_err(|e| format!("mounting /proc for the sandbox: {e}"))?;
            Ok(())
        }
        ForkResult::Parent { child } => loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => {
                    match waitpid(child, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                        Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                        _ => continue,
                    }
                }
                Ok(sig) => {
                    let _ = nix::sys::signal::kill(child, sig);
                }
                Err(_) => continue,
            }
        },
    }
}

/// `/init` of a VM sandbox's guest: set the guest up, then serve; never returns.
fn pid1(args: &[String]) -> ! {
    if args.get(1).map(String::as_str) != Some(vm::STAGE2_ARG) {
        match vm::switch_root() {
            Ok(never) => match never {},
            Err(e) => vm::power_off(&format!("switching to a tmpfs root: {e}")),
        }
    }
    let setup = vm::setup().unwrap_or_else(|e| vm::power_off(&e));
    let tee = TeeArg::parse(&setup.tee).unwrap_or_else(|e| {
        vm::power_off(&format!(
            "veil.tee={:?} on the kernel command line: {e}",
            setup.tee
        ))
    });
    let a = ServeArgs {
        init_data: setup.init_data,
        listen: PathBuf::new(),
        guest_root: PathBuf::from(veil_agent::guest::GUEST_PREFIX),
        tee,
        platform_fd: None,
        oci_layout: setup.oci_layout,
        sandbox_id: String::new(),
        pid_namespace: false,
        seccomp: true,
        listen_tcp: Some(vm::AGENT_PORT),
        platform_file: setup.platform,
        pod_netns: None,
        workload_nic: setup.workload_nic,
    };
    let _ = serve(a);
    vm::power_off("the agent stopped serving")
}

fn serve(a: ServeArgs) -> ExitCode {
    if a.pid_namespace {
        if let Err(e) = enter_pid_namespace() {
            eprintln!("veil-agent: {e}");
            return ExitCode::from(3);
        }
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    match run(a) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("veil-agent: refusing to serve: {e}");
            ExitCode::from(3)
        }
    }
}

fn read_bounded(path: &std::path::Path, max: usize) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let mut out = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(max as u64 + 1).read_to_end(&mut out))
        .map_err(|e| format!("reading init-data {}: {e}", path.display()))?;
    if out.len() > max {
        return Err(format!(
            "init-data {} is larger than {max} bytes",
            path.display()
        ));
    }
    Ok(out)
}

fn run(a: ServeArgs) -> Result<(), String> {
    // Signals are handled by a dedicated thread; block them everywhere else.
    let mut sigs = SigSet::empty();
    sigs.add(Signal::SIGTERM);
    sigs.add(Signal::SIGINT);
    sigs.thread_block()
        .map_err(|e| format!("sigprocmask: {e}"))?;

    let init_data = read_bounded(&a.init_data, veil_policy::initdata::MAX_INIT_DATA_BYTES)?;
    let channel: Option<std::fs::File> = match (a.platform_file, a.platform_fd) {
        (Some(f), _) => Some(f),
        (None, Some(fd)) => {
            // SAFETY: the host handed us this fd for exactly this purpose;
            // we take ownership and keep it out of container processes.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            Some(unsafe { std::fs::File::from_raw_fd(fd) })
        }
        (None, None) => None,
    };
    let attester: Option<Arc<dyn veil_tee::Attester>> = match a.tee {
        TeeArg::NoTee => {
            if channel.is_some() {
                return Err("--tee none with a sim platform channel: pick one".into());
            }
            tracing::warn!("{}", veil_agent::boot::NO_TEE_WARNING);
            None
        }
        TeeArg::Detect => Some(attester_for(None, channel)?),
        TeeArg::Named(k) => Some(attester_for(Some(k), channel)?),
    };
    let booted = boot(&init_data, attester.clone()).map_err(|e| e.to_string())?;
    if attester.is_some() {
        tracing::info!(tee = booted.tee_name(), digest = %booted.digest, "init-data matches the platform's launch binding");
    } else {
        tracing::warn!(digest = %booted.digest, "init-data loaded without a TEE: its policy is enforced, but nothing binds it to the launch");
    }

    // The agent's private tmpfs: unpacked images, secrets, sockets; sized
    // to the policy's unpack limits, so no image fills the memory.
    let unpack_limits =
        veil_agent::pull::unpack_limits(&booted.engine.data().sandbox.unpack_limits);
    let tmpfs_size =
        veil_agent::pull::tmpfs_bytes(&unpack_limits, booted.engine.data().containers.len());
    nix::mount::mount(
        Some("tmpfs"),
        &a.guest_root,
        Some("tmpfs"),
        // nodev; not nosuid: image rootfs live here and may hold setuid programs.
        nix::mount::MsFlags::MS_NODEV,
        Some(format!("mode=0711,size={tmpfs_size}").as_str()),
    )
    .map_err(|e| {
        format!(
            "mounting the agent's tmpfs on {}: {e} (the agent needs a private mount namespace)",
            a.guest_root.display()
        )
    })?;
    let paths = GuestPaths::new(&a.guest_root);
    // With an encrypted scratch disk (VM sandbox), the containers' rootfs
    // live there rather than in guest RAM; secrets stay on the tmpfs.
    let containers = paths.containers();
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&containers)
        .map_err(|e| format!("creating the containers dir: {e}"))?;
    if veil_agent::scratch::bind(std::path::Path::new("containers"), &containers)? {
        tracing::info!("container rootfs on the encrypted scratch disk");
    }
    std::fs::create_dir(paths.secrets()).map_err(|e| format!("creating the secrets dir: {e}"))?;
    let _ = std::fs::set_permissions(paths.secrets(), std::fs::Permissions::from_mode(0o755));

    let mut status = AttestationStatus {
        status: if attester.is_some() {
            "not_configured".into()
        } else {
            veil_agent::boot::NO_TEE.into()
        },
        kbs_url: String::new(),
        token_exp: 0,
        ear_status: String::new(),
        secrets: Vec::new(),
        error: String::new(),
    };
    let gpus = veil_agent::gpu::PodGpus::of_policy(
        booted.engine.data(),
        Box::new(veil_agent::gpu::default_transport),
    );
    let kbs = match target_of(&booted.init_data)? {
        None => {
            if let Some(g) = &gpus {
                g.gate.revoke("check nvidia.kbs: expected init-data to name a KBS (aa.toml) to attest the GPUs to, got none");
            }
            None
        }
        Some((target, credentials)) => {
            status.kbs_url = target.url.clone();
            // boot() refuses a KBS without a TEE.
            let attester = attester
                .clone()
                .ok_or("init-data names a KBS but there is no TEE")?;
            let kbs = Arc::new(Kbs::new(target, attester, &booted.init_data)?);
            if let Some(g) = &gpus {
                kbs.require_gpus(g.gate.clone())?;
            }
            let token = kbs.attest()?;
            status.status = "ok".into();
            status.token_exp = token.exp;
            status.ear_status = token.ear_status;
            tracing::info!(kbs = %kbs.url(), ear_status = %status.ear_status, "attested to the KBS");
            for c in &credentials {
                let name = secret_name(&c.path)?;
                let path = veil_kbs_client::ResourcePath::parse(&c.resource_uri)
                    .map_err(|e| e.to_string())?;
                let bytes = kbs.get_resource(&path)?;
                if bytes.len() > veil_agent::kbs::MAX_SECRET_BYTES {
                    return Err(format!(
                        "secret {name} is larger than {} bytes",
                        veil_agent::kbs::MAX_SECRET_BYTES
                    ));
                }
                write_private(&paths.secrets().join(name), &bytes)?;
                tracing::info!(secret = name, resource = %c.resource_uri, "secret placed on the tmpfs");
                status.secrets.push(name.to_string());
            }
            Some(kbs)
        }
    };
    open_encrypted_volumes(
        &booted.engine.data().sandbox.volumes,
        a.listen_tcp.is_some(),
        kbs.as_deref(),
    )?;

    let hello = Hello {
        agent_version: env!("CARGO_PKG_VERSION").into(),
        api_version: veil_agent_api::API_VERSION,
        tee: booted.tee_name().into(),
        init_data_digest: booted.digest.to_string(),
        measurement: hex::encode(&booted.measurement),
        attestation: status,
    };

    let api = Arc::new(LocalApi {
        attester: attester.clone(),
        kbs: kbs.clone(),
        info: serde_json::json!({
            "agent_version": hello.agent_version,
            "tee": hello.tee,
            "init_data_digest": hello.init_data_digest,
            "measurement": hello.measurement,
        }),
    });
    let api_listener = UnixListener::bind(paths.api_socket())
        .map_err(|e| format!("binding the workload API socket: {e}"))?;
    let _ = std::fs::set_permissions(paths.api_socket(), std::fs::Permissions::from_mode(0o666));
    std::thread::spawn(move || api.serve(api_listener));

    let pod_netns = match a.pod_netns.clone() {
        Some(p) => veil_agent::net::PodNetns::given(p)?,
        None => veil_agent::net::PodNetns::create(a.workload_nic.clone())?,
    };
    tracing::info!(netns = %pod_netns.path.display(), "pod network namespace");
    let agent_exe = std::fs::read_link("/proc/self/exe")
        .map_err(|e| format!("finding the agent binary: {e}"))?;
    let manager = Arc::new(Manager::new(
        ManagerConfig {
            paths,
            agent_exe,
            oci_layout: a.oci_layout.clone(),
            registry: veil_agent::registry::RegistryAccess {
                trust: veil_agent::registry::registry_trust_of(&booted.init_data)?,
                // A VM reaches registries over its workload NIC, which is
                // in the pod's namespace; a process sandbox from the host's.
                netns: a
                    .workload_nic
                    .as_ref()
                    .map(|_| pod_netns.path.clone()),
                loopback_is_gateway: a.listen_tcp.is_some(),
                unreachable: (a.listen_tcp.is_some() && a.workload_nic.is_none()).then(|| {
                    "the VM has no workload network (--network none), so the guest cannot reach a registry; run with a network, or let the host pull (--pull-in host)".to_string()
                }),
            },
            seccomp: a.seccomp,
            image_trust: veil_agent::kbs::image_trust_of(&booted.init_data)?,
            unpack_limits,
            pod_netns: Some(pod_netns.path.clone()),
            nic_awaits_config: pod_netns.awaiting_config,
            volumes: booted.engine.data().sandbox.volumes.clone(),
            // A VM's agent is PID 1 and owns the guest's cgroup2 tree; a
            // process sandbox runs on the host's, which it must not touch.
            cgroups: a.listen_tcp.is_some().then(veil_agent::cgroup::Cgroups::guest),
            gpus,
        },
        kbs,
    ));
    let agent = Arc::new(Agent {
        hello,
        engine: Mutex::new(booted.engine),
        manager: manager.clone(),
        attester,
        in_vm: a.listen_tcp.is_some(),
    });

    enum Listener {
        Unix(UnixListener),
        Tcp(std::net::TcpListener),
    }
    let listener = match a.listen_tcp {
        Some(port) => Listener::Tcp(
            std::net::TcpListener::bind(("0.0.0.0", port))
                .map_err(|e| format!("binding the agent port {port}: {e}"))?,
        ),
        None => {
            let _ = std::fs::remove_file(&a.listen);
            let l = UnixListener::bind(&a.listen)
                .map_err(|e| format!("binding the agent socket {}: {e}", a.listen.display()))?;
            let _ = std::fs::set_permissions(&a.listen, std::fs::Permissions::from_mode(0o600));
            Listener::Unix(l)
        }
    };
    let listen = a.listen.clone();
    std::thread::spawn(move || {
        if let Ok(sig) = sigs.wait() {
            tracing::info!(signal = %sig, "shutting down: stopping every container");
        }
        manager.kill_all();
        if !listen.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&listen);
        }
        std::process::exit(0);
    });
    tracing::info!(socket = %a.listen.display(), port = ?a.listen_tcp, sandbox = %a.sandbox_id, "agent ready");
    match listener {
        Listener::Unix(l) => agent.serve(l),
        Listener::Tcp(l) => agent.serve_tcp(l),
    }
    Ok(())
}

/// Open the policy's encrypted volumes (before any container exists), or
/// refuse: they need the VM sandbox (`in_vm`) and a KBS for their keys.
fn open_encrypted_volumes(
    volumes: &[veil_policy::model::VolumePolicy],
    in_vm: bool,
    kbs: Option<&Kbs>,
) -> Result<(), String> {
    let enc = veil_agent::storage::encrypted(volumes);
    let Some((first, _)) = enc.first() else {
        return Ok(());
    };
    if !in_vm {
        return Err(format!(
            "volume {}: encrypted volumes need the VM sandbox (veil run --sandbox vm), where the guest kernel encrypts them; the process sandbox would give the host every byte",
            first.name
        ));
    }
    let kbs = kbs.ok_or_else(|| {
        format!(
            "volume {}: encrypted volumes need a KBS to release their keys, and init-data names none (a TEE other than none, and the KBS in aa.toml)",
            first.name
        )
    })?;
    let lines = veil_agent::storage::open_all(volumes, |uri| {
        let path = veil_kbs_client::ResourcePath::parse(uri).map_err(|e| e.to_string())?;
        kbs.get_resource(&path)
    })?;
    for l in lines {
        tracing::info!("{l}");
    }
    Ok(())
}

/// The attester of `tee` (detected when `None`), warning when it is not
/// hardware-backed.
fn attester_for(
    tee: Option<TeeKind>,
    channel: Option<std::fs::File>,
) -> Result<Arc<dyn veil_tee::Attester>, String> {
    let at: Arc<dyn veil_tee::Attester> =
        Arc::from(detect(tee, &DetectRoots::default(), channel).map_err(|e| e.to_string())?);
    if !at.tee().hardware_backed() {
        tracing::warn!("{}", veil_attest_warning());
    }
    Ok(at)
}

fn veil_attest_warning() -> &'static str {
    "simulated TEE: evidence is signed by a software key, not by hardware; it gives NO confidentiality or integrity protection"
}
