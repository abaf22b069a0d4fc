//! `veil info` (alias `veil doctor`): what this host offers veil, probed
//! the way the commands that need it probe it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::Result;
use clap::Args;
use serde::Serialize;
use veil_runtime::vm::{guest, qemu};

/// Arguments of `veil info`.
#[derive(Args)]
pub struct InfoArgs {
    /// Print one JSON object (snake_case keys) instead of text.
    #[arg(long)]
    pub json: bool,
    /// The QEMU binary `veil run --sandbox vm` would use.
    #[arg(long, env = "VEIL_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
}

/// Everything `veil info` reports.
#[derive(Serialize)]
pub struct Info {
    pub version: &'static str,
    pub data_dir: PathBuf,
    pub kvm: Kvm,
    pub qemu: Qemu,
    pub tee_devices: Vec<TeeDevice>,
    pub sim: Sim,
    pub guest_image: GuestImage,
    pub containerd: Option<PathBuf>,
    pub shim: Option<PathBuf>,
}

/// KVM, as `veil run --sandbox vm` decides whether to use it.
#[derive(Serialize)]
pub struct Kvm {
    pub usable: bool,
    /// The accelerator a VM sandbox would get, and why.
    pub accel: String,
}

/// The QEMU binary and the confidential guests it can launch.
#[derive(Serialize)]
pub struct Qemu {
    pub path: Option<PathBuf>,
    pub version: Option<String>,
    /// `-object help` lists `sev-snp-guest`.
    pub sev_snp_guest: bool,
    /// `-object help` lists `tdx-guest`.
    pub tdx_guest: bool,
    pub error: Option<String>,
}

/// A TEE interface of this host or guest.
#[derive(Serialize)]
pub struct TeeDevice {
    pub path: PathBuf,
    pub what: &'static str,
    pub present: bool,
}

/// The sim platform `veil run` uses.
#[derive(Serialize)]
pub struct Sim {
    pub dir: PathBuf,
    pub key_path: PathBuf,
    /// False until the first `veil run` (or `veil attest sim-root`) creates it.
    pub key_exists: bool,
    /// The root public key (SPKI PEM) verifiers trust for this platform.
    pub root_public_key_pem: Option<String>,
    pub platform_id: Option<String>,
    pub error: Option<String>,
}

/// The guest image `veil guest build` writes and `veil run --sandbox vm` boots.
#[derive(Serialize)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub present: bool,
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub kernel_version: Option<String>,
    /// The sim launch measurement of a default VM sandbox booting it (hex).
    pub sim_measurement: Option<String>,
}

/// TEE interfaces worth reporting: (path, what it is).
const TEE_DEVICES: &[(&str, &str)] = &[
    (
        "/sys/kernel/config/tsm/report",
        "configfs-tsm attestation reports",
    ),
    ("/dev/sev-guest", "AMD SEV-SNP guest"),
    ("/dev/tdx_guest", "Intel TDX guest"),
    ("/dev/sev", "AMD SEV host (launch SNP guests)"),
    ("/dev/tpmrm0", "TPM 2.0 resource manager"),
];

/// The containerd shim binary veil installs.
pub const SHIM: &str = "containerd-shim-veil-v2";

/// Probe the host.
pub fn collect(qemu_bin: &Path) -> Info {
    let data = veil_runtime::paths::data_dir();
    let (accel, why) = qemu::choose_accel(None);
    Info {
        version: env!("CARGO_PKG_VERSION"),
        kvm: Kvm {
            usable: accel == qemu::Accel::Kvm,
            accel: why,
        },
        qemu: probe_qemu(qemu_bin),
        tee_devices: TEE_DEVICES
            .iter()
            .map(|(p, what)| TeeDevice {
                path: p.into(),
                what,
                present: Path::new(p).exists(),
            })
            .collect(),
        sim: sim(&veil_runtime::paths::sim_dir(&data)),
        guest_image: guest_image(&data.join("guest")),
        containerd: which("containerd"),
        shim: which(SHIM),
        data_dir: data,
    }
}

/// The first `name` on `PATH` (or `name` itself if it has a slash).
pub fn which(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let exec = |p: &Path| {
        p.metadata()
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if name.contains('/') {
        return exec(Path::new(name)).then(|| name.into());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|d| d.join(name))
        .find(|p| exec(p))
}

fn probe_qemu(bin: &Path) -> Qemu {
    let mut q = Qemu {
        path: which(&bin.to_string_lossy()),
        version: None,
        sev_snp_guest: false,
        tdx_guest: false,
        error: None,
    };
    let Some(path) = q.path.clone() else {
        q.error = Some(format!("{} not found on PATH", bin.display()));
        return q;
    };
    match Command::new(&path).arg("--version").output() {
        Ok(o) if o.status.success() => {
            q.version = String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string);
        }
        Ok(o) => q.error = Some(format!("--version exited with {}", o.status)),
        Err(e) => q.error = Some(format!("{}: {e}", path.display())),
    }
    match Command::new(&path)
        .args(["-machine", "none", "-object", "help"])
        .output()
    {
        Ok(o) => {
            let objects = String::from_utf8_lossy(&o.stdout);
            let has = |name: &str| objects.lines().any(|l| l.trim() == name);
            q.sev_snp_guest = has("sev-snp-guest");
            q.tdx_guest = has("tdx-guest");
        }
        Err(e) => q.error = Some(format!("{} -object help: {e}", path.display())),
    }
    q
}

fn sim(dir: &Path) -> Sim {
    let key_path = dir.join(veil_runtime::sim::KEY_FILE);
    let mut s = Sim {
        dir: dir.into(),
        key_exists: key_path.exists(),
        key_path,
        root_public_key_pem: None,
        platform_id: None,
        error: None,
    };
    // Reporting must not create the key: only load an existing one.
    if s.key_exists {
        match crate::sim_root::root(dir) {
            Ok((root, pem)) => {
                s.platform_id = Some(hex::encode(root.platform_id()));
                s.root_public_key_pem = Some(pem);
            }
            Err(e) => s.error = Some(format!("{e:#}")),
        }
    }
    s
}

fn guest_image(dir: &Path) -> GuestImage {
    let img: Option<guest::GuestImage> = std::fs::read(dir.join("guest.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .filter(|i: &guest::GuestImage| i.kernel.exists() && i.initrd.exists());
    let sim_measurement = img.as_ref().and_then(|i| {
        crate::guest::default_measurement(i.boot_kernel("sim").1, &i.initrd_sha384).ok()
    });
    GuestImage {
        dir: dir.into(),
        present: img.is_some(),
        kernel: img.as_ref().map(|i| i.kernel.clone()),
        initrd: img.as_ref().map(|i| i.initrd.clone()),
        kernel_version: img.as_ref().map(|i| i.kernel_version.clone()),
        sim_measurement,
    }
}

/// `veil info`.
pub fn run(a: InfoArgs) -> Result<ExitCode> {
    let info = collect(&a.qemu);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    print_text(&info);
    Ok(ExitCode::SUCCESS)
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn opt_path(p: &Option<PathBuf>, missing: &str) -> String {
    p.as_ref()
        .map_or_else(|| missing.to_string(), |p| p.display().to_string())
}

fn print_text(i: &Info) {
    use crate::output::kv;
    kv("veil", i.version);
    kv("data dir", &i.data_dir.display().to_string());
    kv(
        "kvm",
        &format!(
            "{} (VM sandboxes use {})",
            yes_no(i.kvm.usable),
            i.kvm.accel
        ),
    );
    match (&i.qemu.path, &i.qemu.version) {
        (Some(p), v) => kv(
            "qemu",
            &format!(
                "{} ({}); SNP guests: {}, TDX guests: {}",
                p.display(),
                v.as_deref().unwrap_or("version unknown"),
                yes_no(i.qemu.sev_snp_guest),
                yes_no(i.qemu.tdx_guest)
            ),
        ),
        (None, _) => kv(
            "qemu",
            &format!(
                "not found ({}); --sandbox vm unavailable",
                i.qemu.error.as_deref().unwrap_or("")
            ),
        ),
    }
    for d in &i.tee_devices {
        kv(
            "tee device",
            &format!(
                "{:<32} {:<8} {}",
                d.path.display(),
                if d.present { "present" } else { "absent" },
                d.what
            ),
        );
    }
    let s = &i.sim;
    match (&s.root_public_key_pem, &s.error) {
        (Some(_), _) => kv(
            "sim platform",
            &format!(
                "{} (platform id {}; root key: veil attest sim-root)",
                s.key_path.display(),
                s.platform_id.as_deref().unwrap_or("?")
            ),
        ),
        (None, Some(e)) => kv("sim platform", &format!("unusable: {e}")),
        (None, None) => kv(
            "sim platform",
            &format!(
                "{} not created yet (first veil run or veil attest sim-root creates it)",
                s.key_path.display()
            ),
        ),
    }
    let g = &i.guest_image;
    if g.present {
        kv(
            "guest image",
            &format!(
                "{} (kernel {})",
                g.dir.display(),
                g.kernel_version.as_deref().unwrap_or("?")
            ),
        );
        if let Some(m) = &g.sim_measurement {
            kv("  sim measurement", m);
        }
    } else {
        kv(
            "guest image",
            &format!(
                "none in {} (veil guest build, or built on the first veil run --sandbox vm)",
                g.dir.display()
            ),
        );
    }
    kv("containerd", &opt_path(&i.containerd, "not installed"));
    kv(
        "veil shim",
        &opt_path(&i.shim, &format!("{SHIM} not installed")),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_image_reports_the_sim_measurement_run_would_boot() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!guest_image(dir.path()).present);
        let (k, i) = (dir.path().join("vmlinuz"), dir.path().join("initrd.img"));
        std::fs::write(&k, b"k").unwrap();
        std::fs::write(&i, b"i").unwrap();
        let img = guest::GuestImage {
            kernel: k.clone(),
            initrd: i,
            kernel_version: "6.1.0-test".into(),
            kernel_sha384: "11".repeat(48),
            initrd_sha384: "22".repeat(48),
            agent_sha384: "33".repeat(48),
            modules: vec![],
            tools: vec![],
            pvh_kernel: None,
            pvh_kernel_sha384: None,
            pvh_unavailable: Some("test".into()),
        };
        std::fs::write(
            dir.path().join("guest.json"),
            serde_json::to_vec(&img).unwrap(),
        )
        .unwrap();
        let g = guest_image(dir.path());
        assert!(g.present);
        assert_eq!(g.kernel.as_deref(), Some(k.as_path()));
        assert_eq!(
            g.sim_measurement.unwrap(),
            crate::guest::default_measurement(&"11".repeat(48), &"22".repeat(48)).unwrap()
        );
        // A missing file means no usable image.
        std::fs::remove_file(&k).unwrap();
        assert!(!guest_image(dir.path()).present);
    }
}
