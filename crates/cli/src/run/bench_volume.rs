//! `veil bench volume`: the throughput of an encrypted volume (LUKS2,
//! dm-crypt + dm-integrity, as `veil volume` makes them) against the same
//! kind of disk unencrypted, in one run of one VM (docs/storage.md).
//!
//! It boots one VM sandbox with two blank sparse disks of one size in its
//! sandbox dir and a policy generated here, with no container and
//! `sandbox.bench_volume: true` (the only policy that admits the
//! `bench_volume` request; it is in init-data, so measured). The agent
//! formats one disk as a volume with a key born in the guest and measures
//! both with the same I/O; this command prints each phase with the ratio
//! encrypted/plain. The disk files go with the sandbox dir. Reports, never
//! fails on a number.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use veil_agent_api::AgentRequest;
use veil_agent_api::bench::{self, BenchVolumeRequest, BenchVolumeResult};
use veil_policy::PolicyData;
use veil_policy::model::{POLICY_FORMAT_VERSION, SandboxPolicy};
use veil_policy::settings::Settings;
use veil_runtime::pod::{PodNet, Sandbox, SandboxKind, SandboxSpec, Tee, VmOptions};
use veil_runtime::vm::qemu::Accel;

use super::record::{self, Record};

/// Arguments of `veil bench volume`.
#[derive(Args, Debug)]
pub struct VolumeBench {
    /// Size of each of the two disks (sparse files in the sandbox dir,
    /// on the same host file system), with a unit: 64M to 64G.
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub size: u64,
    /// Seconds each phase runs on each disk.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=i64::from(bench::MAX_SECONDS)))]
    pub seconds: u32,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// The TEE: `sim`, `snp`, `tdx` or `none`.
    #[arg(long, default_value = "sim", value_parser = ["none", "sim", "snp", "tdx"])]
    pub tee: String,
    /// Firmware for --tee snp (AMD SEV OVMF) or tdx (TDVF).
    #[arg(long)]
    pub firmware: Option<PathBuf>,
    /// Accelerator: auto (KVM when usable, else TCG), kvm, tcg [default: $VEIL_VM_ACCEL, else auto].
    #[arg(long, value_parser = ["auto", "kvm", "tcg"])]
    pub accel: Option<String>,
    /// The QEMU binary [default: $VEIL_QEMU, else qemu-system-x86_64].
    #[arg(long)]
    pub qemu: Option<PathBuf>,
    /// Guest kernel (default: built by `veil guest build` into the data dir).
    #[arg(long, requires = "initrd")]
    pub kernel: Option<PathBuf>,
    /// Guest initrd (with --kernel).
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// vCPUs of the VM.
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    /// Memory of the VM, MiB or with a unit: 512M, 2G.
    #[arg(long, default_value = "1024", value_parser = super::vm::parse_memory_mib)]
    pub memory: u32,
    /// Seconds to wait for the VM's agent (boot and attestation).
    #[arg(long, default_value_t = 300)]
    pub boot_timeout: u64,
    /// The veil-agent binary (default: $VEIL_AGENT, then next to veil, then PATH).
    #[arg(long, env = "VEIL_AGENT")]
    pub agent: Option<PathBuf>,
}

/// `--size`: a size with a unit, within [`bench::MIN_BYTES`]..=[`bench::MAX_BYTES`],
/// a multiple of 1 MiB.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let b = crate::volume::parse_bytes_with_unit(s)?;
    if !(bench::MIN_BYTES..=bench::MAX_BYTES).contains(&b) || b % (1 << 20) != 0 {
        return Err(format!(
            "{s:?}: each benchmark disk takes {} MiB to {} GiB, in whole MiB (LUKS2 and dm-integrity take ~20 MiB of it)",
            bench::MIN_BYTES >> 20,
            bench::MAX_BYTES >> 30
        ));
    }
    Ok(b)
}

/// The policy `veil bench volume` generates for itself: no container, no
/// KBS, nothing the host may ask but `bench_volume`.
pub fn bench_policy() -> PolicyData {
    let s = Settings::default();
    let mut p = PolicyData {
        version: POLICY_FORMAT_VERSION,
        sandbox: SandboxPolicy {
            pod_name: "^veil-bench-volume$".into(),
            namespace: "default".into(),
            sandbox_pidns: false,
            kernel_modules: Vec::new(),
            copy_file: Vec::new(),
            allow_get_evidence: false,
            allow_stats: false,
            update_config: Vec::new(),
            unpack_limits: Default::default(),
            volumes: Vec::new(),
            bench_volume: true,
        },
        containers: Vec::new(),
        platform_env: s.platform_env,
        default_mounts: s.default_mounts,
    };
    p.canonicalize();
    p
}

/// The init-data of [`bench_policy`] (no KBS: nothing to release).
pub fn bench_init_data() -> Result<Vec<u8>> {
    let mut settings = Settings::default();
    settings.kbs.url.clear();
    let toml = veil_policy::generate::build_init_data(&bench_policy(), &settings)
        .to_toml()
        .map_err(|e| anyhow!("{e}"))?;
    Ok(toml.into_bytes())
}

/// Removes the sandbox's record dir (with what the VM teardown left) when
/// dropped, after the sandbox itself has stopped.
struct RecordDir(PathBuf);

impl Drop for RecordDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The encrypted disk's figure over the plain one's, or `None` when the
/// plain one measured nothing.
fn ratio(enc: f64, plain: f64) -> Option<f64> {
    if plain > 0.0 { Some(enc / plain) } else { None }
}

fn fmt_ratio(r: Option<f64>) -> String {
    r.map(|r| format!("{r:.2}x")).unwrap_or_else(|| "-".into())
}

/// What the figures are worth under this accelerator.
fn caveat(accel: Accel) -> Option<String> {
    (accel == Accel::Tcg).then(|| {
        "TCG figures are indicative only: under software emulation the guest's AES-XTS and HMAC-SHA256 run without the CPU's AES/SHA instructions and every I/O request is emulated, so the ratios say little about a KVM or TEE host; run with --accel kvm where KVM works".to_string()
    })
}

/// The report, as `--json` prints it.
fn report(
    r: &BenchVolumeResult,
    accel: Accel,
    accel_reason: &str,
    files: &[PathBuf],
    a: &VolumeBench,
) -> serde_json::Value {
    let phases: Vec<serde_json::Value> = r
        .phases
        .iter()
        .map(|p| {
            serde_json::json!({
                "phase": p.name,
                "block_bytes": p.block_bytes,
                "plain": {"mb_per_s": p.plain.mb_per_s(), "iops": p.plain.iops(), "ops": p.plain.ops, "bytes": p.plain.bytes, "micros": p.plain.micros},
                "encrypted": {"mb_per_s": p.encrypted.mb_per_s(), "iops": p.encrypted.iops(), "ops": p.encrypted.ops, "bytes": p.encrypted.bytes, "micros": p.encrypted.micros},
                "ratio": ratio(p.encrypted.mb_per_s(), p.plain.mb_per_s()),
            })
        })
        .collect();
    serde_json::json!({
        "benchmark": "sequential (1 MiB) and random (4 KiB) read/write in the guest, O_DIRECT, one request in flight",
        "subject": format!("encrypted volume: {}", r.encryption),
        "baseline": "a disk of the same size, unencrypted, in the same VM and run",
        "accel": accel.as_str(),
        "accel_reason": accel_reason,
        "indicative_only": accel == Accel::Tcg,
        "caveat": caveat(accel),
        "tee": a.tee,
        "disk_bytes": r.disk_bytes,
        "area_bytes": r.area_bytes,
        "seconds_per_phase": a.seconds,
        "format_ms": r.format_ms,
        "fill_ms": r.fill_ms,
        "plain_device": r.plain_device,
        "encrypted_device": r.encrypted_device,
        "disk_files": files,
        "phases": phases,
    })
}

fn print_table(r: &BenchVolumeResult, accel_reason: &str, a: &VolumeBench) {
    println!(
        "veil bench volume: an encrypted volume vs the same disk unencrypted, one VM, one run ({} s per phase and disk)",
        a.seconds
    );
    println!("  accelerator  {accel_reason}");
    println!(
        "  encrypted    {} (journal on, integrity wiped at format)",
        r.encryption
    );
    println!(
        "  disks        2 x {} MiB sparse files in the sandbox dir; {} MiB of each measured; format {:.1} s, plain fill {:.1} s",
        r.disk_bytes >> 20,
        r.area_bytes >> 20,
        r.format_ms as f64 / 1000.0,
        r.fill_ms as f64 / 1000.0
    );
    println!(
        "  {:<11} {:>5} {:>11} {:>11} {:>15} {:>15} {:>16}",
        "phase",
        "block",
        "plain MB/s",
        "plain IOPS",
        "encrypted MB/s",
        "encrypted IOPS",
        "encrypted/plain"
    );
    for p in &r.phases {
        let block = if p.block_bytes >= 1 << 20 {
            format!("{}M", p.block_bytes >> 20)
        } else {
            format!("{}K", p.block_bytes >> 10)
        };
        println!(
            "  {:<11} {:>5} {:>11.1} {:>11.0} {:>15.1} {:>15.0} {:>16}",
            p.name,
            block,
            p.plain.mb_per_s(),
            p.plain.iops(),
            p.encrypted.mb_per_s(),
            p.encrypted.iops(),
            fmt_ratio(ratio(p.encrypted.mb_per_s(), p.plain.mb_per_s()))
        );
    }
}

/// Run the benchmark.
pub fn bench(a: VolumeBench) -> Result<ExitCode> {
    let data = super::data_dir()?;
    let agent = super::find_agent(a.agent.as_deref())?;
    let tee: Tee = a.tee.parse().map_err(|e: String| anyhow!(e))?;
    let accel = match a
        .accel
        .clone()
        .or_else(|| {
            std::env::var("VEIL_VM_ACCEL")
                .ok()
                .filter(|v| !v.is_empty())
        })
        .as_deref()
    {
        Some("kvm") => Some(Accel::Kvm),
        Some("tcg") => Some(Accel::Tcg),
        _ => None,
    };
    let exe = std::env::current_exe()?;
    let kind = SandboxKind::Vm(VmOptions {
        qemu: a
            .qemu
            .clone()
            .or_else(|| std::env::var_os("VEIL_QEMU").map(PathBuf::from))
            .unwrap_or_else(|| "qemu-system-x86_64".into()),
        accel,
        guest_image: a.kernel.clone().zip(a.initrd.clone()),
        firmware: a.firmware.clone(),
        vcpus: a.vcpus,
        memory_mib: a.memory,
        boot_timeout: Duration::from_secs(a.boot_timeout),
        relay_command: vec![
            exe.to_string_lossy().into_owned(),
            "guest".into(),
            "relay".into(),
        ],
        volume_disks: Vec::new(),
        scratch_bytes: None,
        bench_disk_bytes: Some(a.size),
    });
    let init_data = bench_init_data()?;
    let id = super::new_id();
    let dir = record::dir_of(&data, &id);
    let _record_dir = RecordDir(dir.clone());
    let mut rec = Record {
        id: id.clone(),
        image: "veil bench volume".into(),
        created: super::now(),
        status: "starting".into(),
        owner_pid: std::process::id(),
        policy_generated: true,
        policy_from: "generated by veil bench volume (sandbox.bench_volume: true, no container)"
            .into(),
        ..Default::default()
    };
    let spec = SandboxSpec {
        id: id.clone(),
        data: data.clone(),
        agent_binary: agent,
        kind,
        tee,
        init_data,
        oci_layout: None,
        forwards: Vec::new(),
        network: PodNet::Vm(None),
        log_filter: std::env::var("VEIL_AGENT_LOG").unwrap_or_else(|_| "info".into()),
        ready_timeout: Duration::from_secs(120),
    };
    let mut shown = super::vm::LaunchOutput::new(a.json);
    let (sb, _note) =
        Sandbox::launch(spec, &mut rec, &mut |e| shown.event(e)).map_err(|e| anyhow!("{e}"))?;
    shown.launched(sb.inner());
    let (accel, accel_reason) = sb
        .inner()
        .vm()
        .map(|v| (v.launch_info().accel, v.launch_info().accel_reason.clone()))
        .unwrap_or((Accel::Tcg, "tcg".into()));
    let sandbox_dir = dir.join("sandbox");
    let files: Vec<PathBuf> = veil_runtime::vm::BENCH_FILES
        .iter()
        .map(|n| sandbox_dir.join(n))
        .collect();
    let result = measure(&sb, &a);
    let log = dir.join("agent.log");
    let stopped = sb.stop(Duration::from_secs(5));
    let r = result.with_context(|| {
        format!(
            "veil bench volume: the guest's console: {}",
            veil_runtime::sandbox::log_tail(&log, 15)
        )
    })?;
    if let Err(e) = stopped {
        eprintln!("veil: stopping the benchmark VM: {e}");
    }
    if let Some(f) = files.iter().find(|f| f.exists()) {
        bail!(
            "veil bench volume: {} is still there after the VM stopped",
            f.display()
        );
    }
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report(&r, accel, &accel_reason, &files, &a))?
        );
    } else {
        print_table(&r, &accel_reason, &a);
        match caveat(accel) {
            Some(c) => println!("veil: NOTE: accelerator {}: {c}", accel.as_str()),
            None => println!(
                "veil: accelerator {}: figures from a real CPU's AES/SHA instructions and virtio-blk; the host's page cache still serves both disks",
                accel.as_str()
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Ask the agent for the benchmark (its call may take the format, the
/// fill and 8 phases).
fn measure(sb: &Sandbox, a: &VolumeBench) -> Result<BenchVolumeResult> {
    let mut c = sb.client().map_err(|e| anyhow!("{e}"))?;
    let budget = Duration::from_secs(8 * u64::from(a.seconds) + 900);
    c.agent().set_timeout(budget).map_err(|e| anyhow!("{e}"))?;
    let v = c
        .agent()
        .call(AgentRequest::BenchVolume(BenchVolumeRequest {
            seconds: a.seconds,
            seed: bench::DEFAULT_SEED,
        }))
        .map_err(|e| anyhow!("request bench_volume: {e}"))?;
    let r: BenchVolumeResult =
        serde_json::from_value(v).context("the agent's bench_volume result")?;
    if r.phases.len() != bench::PHASES.len()
        || r.phases.iter().zip(bench::PHASES).any(|(p, n)| p.name != n)
    {
        bail!(
            "the agent's bench_volume result has phases {:?}, expected {:?}",
            r.phases.iter().map(|p| p.name.as_str()).collect::<Vec<_>>(),
            bench::PHASES
        );
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_takes_a_unit_within_bounds_in_whole_mib() {
        assert_eq!(parse_size("256M"), Ok(256 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        for s in ["32M", "65G", "100000K", "64Q", "", "-1M"] {
            assert!(parse_size(s).is_err(), "{s}");
        }
        assert!(parse_size("32M").unwrap_err().contains("64 MiB to 64 GiB"));
    }

    #[test]
    fn the_bench_policy_admits_bench_volume_and_nothing_else() {
        let init = bench_init_data().unwrap();
        let parsed = veil_policy::ParsedInitData::parse(&init).unwrap();
        let mut engine =
            veil_policy::PolicyEngine::new(parsed.init_data.policy().unwrap()).unwrap();
        assert!(engine.data().sandbox.bench_volume);
        assert!(engine.data().containers.is_empty());
        assert!(
            !String::from_utf8_lossy(&init).contains("aa.toml"),
            "no KBS"
        );
        let msg = |kind: &str, request: serde_json::Value| {
            veil_agent_api::AgentMessage::from_value(
                serde_json::json!({"api_version": 1, "kind": kind, "request": request}),
            )
            .unwrap()
        };
        let d = engine
            .evaluate(&msg("bench_volume", serde_json::json!({"seconds": 1})))
            .unwrap();
        assert!(d.allowed, "{d}");
        for (kind, req) in [
            ("get_evidence", serde_json::json!({})),
            (
                "copy_file",
                serde_json::json!({"path": "/etc/x", "file_type": "regular"}),
            ),
            (
                "create_sandbox",
                serde_json::json!({"sandbox_id": "s", "hostname": "h", "pod_name": "other"}),
            ),
        ] {
            let d = engine.evaluate(&msg(kind, req)).unwrap();
            assert!(!d.allowed, "{kind} allowed");
        }
        // Deterministic: the same init-data (so the same digest) every run.
        assert_eq!(init, bench_init_data().unwrap());
    }

    #[test]
    fn tables_show_ratios_and_tcg_is_flagged() {
        assert_eq!(fmt_ratio(ratio(5.0, 10.0)), "0.50x");
        assert_eq!(fmt_ratio(ratio(5.0, 0.0)), "-");
        assert!(caveat(Accel::Tcg).unwrap().contains("indicative only"));
        assert!(caveat(Accel::Kvm).is_none());
    }
}
