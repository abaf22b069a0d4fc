//! `veil measure snp|tdx`: the launch measurement a confidential VM will
//! report, computed from the images the host boots, printed as a document
//! `veil kbs reference-value set --from-measure` loads into the KBS.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use sha2::{Digest, Sha256};
use veil_measure::ovmf::MAX_FIRMWARE_BYTES;
use veil_measure::report::MeasurementReport;
use veil_measure::snp::{self, SevHashes, SnpLaunch, VcpuType, VmmType};
use veil_measure::tdx::{self, PageAddOrder};
use veil_measure::{Error as MeasureError, Firmware};

use crate::out;
use crate::output;

/// Expected launch measurements.
#[derive(Subcommand)]
pub enum MeasureCommand {
    /// SEV-SNP launch digest of a QEMU/OVMF guest (the report's MEASUREMENT).
    Snp(SnpArgs),
    /// TDX MRTD of a TDVF guest (RTMRs are not computed: see docs/measure.md).
    Tdx(TdxArgs),
}

/// Output format.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// The document the KBS loads (`--from-measure`).
    Json,
    /// The 48-byte measurement in hex only.
    Hex,
}

/// Arguments of `veil measure snp`.
#[derive(Args)]
pub struct SnpArgs {
    /// OVMF image with SEV metadata, as given to QEMU's `-bios`.
    #[arg(long)]
    pub firmware: PathBuf,
    /// Directly booted kernel (QEMU `-kernel`, `kernel-hashes=on`).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Initrd (QEMU `-initrd`).
    #[arg(long, requires = "kernel")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (QEMU `-append`).
    #[arg(long, requires = "kernel", allow_hyphen_values = true)]
    pub append: Option<String>,
    /// Number of vCPUs (QEMU `-smp`).
    #[arg(long)]
    pub vcpus: u32,
    /// vCPU model (QEMU `-cpu`): EPYC, EPYC-v1..v4, EPYC-Rome, EPYC-Milan, EPYC-Genoa, EPYC-Turin…
    #[arg(long, conflicts_with = "vcpu_sig")]
    pub vcpu_type: Option<String>,
    /// vCPU CPUID signature instead of a model name (e.g. 0x00a00f11).
    #[arg(long, value_parser = parse_u32)]
    pub vcpu_sig: Option<u32>,
    /// SEV_FEATURES of the VMSAs (0x1 = SNP only; 0x21 adds DebugSwap, KVM's default since Linux 6.6).
    #[arg(long, default_value = "0x1", value_parser = parse_u64)]
    pub guest_features: u64,
    /// Hypervisor: qemu, ec2, gce.
    #[arg(long, default_value = "qemu")]
    pub vmm_type: VmmType,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub output: Format,
    /// Write the output to this file (atomically) instead of stdout.
    #[arg(long)]
    pub out_file: Option<PathBuf>,
}

/// Arguments of `veil measure tdx`.
#[derive(Args)]
pub struct TdxArgs {
    /// TDVF image (the whole OVMF.fd, as given to QEMU's `-bios`).
    #[arg(long)]
    pub firmware: PathBuf,
    /// Order of page adds and extends: single-pass (upstream KVM ≥ 6.16 / QEMU ≥ 10.1)
    /// or two-pass (some earlier TDX stacks).
    #[arg(long, default_value = "single-pass")]
    pub page_add_order: PageAddOrder,
    /// Refused: a direct-boot kernel lands in RTMR[1], which is not computed.
    #[arg(long, hide = true)]
    pub kernel: Option<PathBuf>,
    /// Refused: a direct-boot initrd lands in RTMR[2], which is not computed.
    #[arg(long, hide = true)]
    pub initrd: Option<PathBuf>,
    /// Refused: the command line lands in RTMR[2], which is not computed.
    #[arg(long, hide = true, allow_hyphen_values = true)]
    pub append: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "json")]
    pub output: Format,
    /// Write the output to this file (atomically) instead of stdout.
    #[arg(long)]
    pub out_file: Option<PathBuf>,
}

fn parse_u64(s: &str) -> Result<u64, String> {
    let r = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|e| format!("{s:?} is not a number (decimal or 0x-hex): {e}"))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    let v = parse_u64(s)?;
    u32::try_from(v).map_err(|_| format!("{s:?} does not fit in 32 bits"))
}

/// Run a `veil measure` subcommand.
pub fn run(cmd: MeasureCommand) -> Result<ExitCode> {
    match cmd {
        MeasureCommand::Snp(a) => measure_snp(a),
        MeasureCommand::Tdx(a) => measure_tdx(a),
    }
}

/// Read the firmware image, refusing anything larger than an OVMF could be.
fn read_firmware(path: &Path) -> Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("opening firmware {}", path.display()))?;
    let len = f.metadata()?.len();
    if len > MAX_FIRMWARE_BYTES {
        bail!(
            "firmware {}: {}",
            path.display(),
            MeasureError::FirmwareTooLarge {
                len,
                max: MAX_FIRMWARE_BYTES
            }
        );
    }
    let mut data = Vec::with_capacity(len as usize);
    f.take(MAX_FIRMWARE_BYTES + 1)
        .read_to_end(&mut data)
        .with_context(|| format!("reading firmware {}", path.display()))?;
    Ok(data)
}

/// SHA-256 and size of a file, streamed.
fn sha256_file(path: &Path, what: &str) -> Result<([u8; 32], u64)> {
    let mut f = File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = 0u64;
    loop {
        let k = f
            .read(&mut buf)
            .with_context(|| format!("reading {what} {}", path.display()))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((h.finalize().into(), n))
}

fn file_json(path: &Path, sha256: &[u8; 32], size: u64) -> serde_json::Value {
    serde_json::json!({"path": path.display().to_string(), "size": size, "sha256": hex::encode(sha256)})
}

fn emit(report: &MeasurementReport, format: Format, out: Option<&Path>) -> Result<ExitCode> {
    let text = match format {
        Format::Json => report.to_json(),
        Format::Hex => format!("{}\n", report.measurement),
    };
    match out {
        Some(p) => output::write_atomic(p, text.as_bytes())?,
        None => out!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

fn measure_snp(a: SnpArgs) -> Result<ExitCode> {
    let (vcpu_sig, vcpu_name) = match (&a.vcpu_type, a.vcpu_sig) {
        (Some(name), _) => {
            let t = VcpuType::from_name(name)?;
            (t.signature(), Some(t.name))
        }
        (None, Some(sig)) => (sig, None),
        (None, None) if a.vmm_type == VmmType::Qemu => {
            bail!(
                "--vcpu-type (or --vcpu-sig) is required with --vmm-type qemu: QEMU puts the model's CPUID signature in every VMSA"
            )
        }
        // EC2 and GCE put a fixed value in RDX.
        (None, None) => (0, None),
    };
    let image = read_firmware(&a.firmware)?;
    let fw =
        Firmware::parse(&image).with_context(|| format!("firmware {}", a.firmware.display()))?;

    let mut kernel_json = serde_json::Value::Null;
    let mut initrd_json = serde_json::Value::Null;
    let hashes = match &a.kernel {
        None => None,
        Some(k) => {
            let (ks, kn) = sha256_file(k, "kernel")?;
            kernel_json = file_json(k, &ks, kn);
            let initrd = match &a.initrd {
                Some(i) => {
                    let (is, n) = sha256_file(i, "initrd")?;
                    initrd_json = file_json(i, &is, n);
                    Some(is)
                }
                None => None,
            };
            Some(SevHashes::new(
                ks,
                initrd,
                a.append.as_deref().unwrap_or(""),
            ))
        }
    };
    let launch = SnpLaunch {
        vcpus: a.vcpus,
        vcpu_sig,
        guest_features: a.guest_features,
        vmm: a.vmm_type,
        kernel_hashes: hashes,
    };
    let m = snp::launch_digest(&fw, &launch)
        .with_context(|| format!("firmware {}", a.firmware.display()))?;
    let fw_sha: [u8; 32] = Sha256::digest(&image).into();
    let details = serde_json::json!({
        "firmware": file_json(&a.firmware, &fw_sha, image.len() as u64),
        "firmware_digest": hex::encode(m.firmware_digest),
        "kernel": kernel_json,
        "initrd": initrd_json,
        "append": a.kernel.as_ref().map(|_| a.append.clone().unwrap_or_default()),
        "kernel_hashes": m.hashes_table_gpa.is_some(),
        "hashes_table_gpa": m.hashes_table_gpa.map(|g| format!("{g:#x}")),
        "vcpus": a.vcpus,
        "vcpu_type": vcpu_name,
        "vcpu_sig": format!("{vcpu_sig:#010x}"),
        "guest_features": format!("{:#x}", a.guest_features),
        "vmm_type": a.vmm_type.to_string(),
        "sev_sections": m.sections.iter().map(|s| serde_json::json!({
            "type": s.kind.name(), "gpa": format!("{:#x}", s.gpa), "size": format!("{:#x}", s.size),
        })).collect::<Vec<_>>(),
    });
    let report = MeasurementReport::new("snp", &m.launch_digest, details);
    emit(&report, a.output, a.out_file.as_deref())
}

/// Why each RTMR is not computed (also in docs/measure.md).
const RTMR_NOT_COMPUTED: [(&str, &str); 4] = [
    (
        "rtmr0",
        "extended by TDVF at boot with the TD HOB (guest memory size and layout), the CFV \
         (UEFI variables), Secure Boot variables and QEMU's ACPI tables, which depend on the \
         QEMU version, machine type, vCPU count and devices: not determined by the firmware image",
    ),
    (
        "rtmr1",
        "extended by TDVF with the Authenticode hash of the booted kernel and the boot-path \
         events of the specific edk2 release",
    ),
    (
        "rtmr2",
        "extended by TDVF with the kernel command line (in the form that edk2 release passes, \
         e.g. with an added initrd=initrd) and the initrd",
    ),
    (
        "rtmr3",
        "reserved for the guest at run time; zero at launch",
    ),
];

fn measure_tdx(a: TdxArgs) -> Result<ExitCode> {
    if a.kernel.is_some() || a.initrd.is_some() || a.append.is_some() {
        bail!(
            "veil measure tdx: --kernel/--initrd/--append are measured by the firmware into \
             RTMR[1]/RTMR[2], which veil measure does not compute (see docs/measure.md); MRTD \
             alone does not bind a directly booted kernel, so it is not offered as if it did. \
             Measure the firmware alone and bind the rest through init-data (MRCONFIGID) or \
             RTMR reference values taken from a known-good boot"
        );
    }
    let image = read_firmware(&a.firmware)?;
    let fw =
        Firmware::parse(&image).with_context(|| format!("firmware {}", a.firmware.display()))?;
    let m = tdx::mrtd(&fw, a.page_add_order)
        .with_context(|| format!("firmware {}", a.firmware.display()))?;
    let fw_sha: [u8; 32] = Sha256::digest(&image).into();
    let details = serde_json::json!({
        "firmware": file_json(&a.firmware, &fw_sha, image.len() as u64),
        "mrtd": hex::encode(m.mrtd),
        "page_add_order": a.page_add_order.to_string(),
        "tdvf_sections": m.sections.iter().map(|s| serde_json::json!({
            "type": s.kind.name(),
            "gpa": format!("{:#x}", s.gpa),
            "size": format!("{:#x}", s.mem_size),
            "raw_offset": format!("{:#x}", s.data_offset),
            "raw_size": format!("{:#x}", s.raw_size),
            "mr_extend": s.attributes & veil_measure::ovmf::TDVF_ATTR_MR_EXTEND != 0,
        })).collect::<Vec<_>>(),
        "not_computed": RTMR_NOT_COMPUTED.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))).collect::<serde_json::Map<_, _>>(),
    });
    let report = MeasurementReport::new("tdx", &m.mrtd, details);
    emit(&report, a.output, a.out_file.as_deref())
}
