//! The QEMU command line of a VM sandbox, and the host checks that decide
//! which accelerator and which TEE can be used.
//!
//! Built as a plain argv (a pure function of [`QemuConfig`]) so that the
//! SNP and TDX launch configurations can be checked by unit tests on a host
//! without either.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use veil_agent_api::{SCRATCH_FW_CFG, SCRATCH_SERIAL, VOLUME_SERIAL_PREFIX, bench, workload_net};

use crate::net::PortMapping;
use base64::engine::general_purpose::STANDARD as B64;

/// The guest's address on QEMU's user-mode network.
pub const GUEST_IP: &str = "10.0.2.15";
/// The address guest-forwarded host services appear at inside the guest.
pub const HOST_SERVICES_IP: &str = "10.0.2.100";
/// The TCP port the agent listens on inside the guest.
pub const AGENT_PORT: u16 = 1024;
/// The virtio-serial port name of the sim platform channel.
pub const SIM_PORT_NAME: &str = "veil.sim";
/// The fw_cfg item carrying init-data.
pub const INIT_DATA_FW_CFG: &str = "opt/veil/init-data";

/// The accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The TEE a VM is launched with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmTee {
    /// No TEE and no attestation.
    None,
    /// The sim platform over a virtio-serial port (the inherited fd).
    Sim { channel_fd: i32 },
    /// AMD SEV-SNP: `host_data` = init-data digest (32 bytes), OVMF built for SEV.
    Snp {
        firmware: PathBuf,
        host_data: [u8; 32],
        cbitpos: u32,
        reduced_phys_bits: u32,
    },
    /// Intel TDX: `mrconfigid` = init-data digest (48 bytes), TDVF.
    Tdx {
        firmware: PathBuf,
        mrconfigid: [u8; 48],
    },
}

impl VmTee {
    /// `none`, `sim`, `snp`, `tdx`.
    pub fn name(&self) -> &'static str {
        match self {
            VmTee::None => "none",
            VmTee::Sim { .. } => "sim",
            VmTee::Snp { .. } => "snp",
            VmTee::Tdx { .. } => "tdx",
        }
    }
}

/// A host service the guest reaches at `HOST_SERVICES_IP:guest_port`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestForward {
    pub guest_port: u16,
    /// The command QEMU runs per guest connection, with the connection on
    /// its stdin/stdout (a relay to the host service).
    pub command: Vec<String>,
}

/// Everything the command line depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QemuConfig {
    pub accel: Accel,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// Host loopback port forwarded to the agent.
    pub agent_host_port: u16,
    pub forwards: Vec<GuestForward>,
    /// File with the init-data (fw_cfg).
    pub init_data_file: PathBuf,
    /// Read-only disk with the OCI layout archive.
    pub oci_disk: Option<PathBuf>,
    /// Encrypted volume files, in the policy's order (sorted by pod volume
    /// name): writable virtio-blk disks with serial `veil-vol-<index>`.
    /// The guest checks each one's LUKS2 UUID against the policy.
    pub volume_disks: Vec<PathBuf>,
    /// The scratch disk: a fresh sparse file of `bytes`, serial
    /// `veil-scratch`, its size announced in fw_cfg; the guest encrypts it
    /// with a key of its own (docs/storage.md).
    pub scratch: Option<ScratchDisk>,
    /// `veil bench volume`'s two disks, their size announced in fw_cfg.
    pub bench: Option<BenchDisks>,
    pub tee: VmTee,
    /// The pod's NIC and its published ports; `None`: the pod has
    /// loopback only (`--network none`).
    pub workload: Option<WorkloadNet>,
}

/// The VM's scratch disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScratchDisk {
    pub file: PathBuf,
    pub bytes: u64,
}

/// `veil bench volume`'s disks: two fresh sparse files of `bytes` on the
/// same host file system, one left plain (serial `veil-bench-plain`), one
/// the guest encrypts (`veil-bench-crypt`); the size is announced in
/// fw_cfg, without which the guest touches neither.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchDisks {
    pub plain: PathBuf,
    pub crypt: PathBuf,
    pub bytes: u64,
}

/// The pod's own NIC (separate from the agent channel's): QEMU user-mode
/// networking with outbound NAT, each published port a `hostfwd` to the
/// pod's address ([`veil_agent_api::workload_net`]); or, with `tap_fd`, a
/// tap in a network namespace the host was handed (`crate::net::tap`),
/// whose descriptor QEMU inherits (no ports: that namespace's owner
/// publishes them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WorkloadNet {
    pub ports: Vec<PortMapping>,
    /// The joined namespace's tap, a descriptor QEMU inherits.
    pub tap_fd: Option<i32>,
}

impl WorkloadNet {
    /// The NIC's MAC, by which the guest tells which kind it is.
    pub fn mac(&self) -> &'static str {
        if self.tap_fd.is_some() {
            workload_net::JOIN_MAC
        } else {
            workload_net::MAC
        }
    }

    /// The `-netdev` value.
    pub fn netdev(&self) -> String {
        if let Some(fd) = self.tap_fd {
            // vhost=off: TCG cannot use vhost-net, and QEMU needs no
            // /dev/vhost-net rights.
            return format!("tap,id=net1,fd={fd},vhost=off");
        }
        let [a, b, c, d] = workload_net::GUEST_IP;
        let mut net = format!("user,id=net1,net={},ipv6=off", workload_net::SUBNET);
        for p in &self.ports {
            let host_ip = p.host_ip.map(|ip| ip.to_string()).unwrap_or_default();
            net.push_str(&format!(
                ",hostfwd={}:{host_ip}:{}-{a}.{b}.{c}.{d}:{}",
                p.protocol, p.host_port, p.container_port
            ));
        }
        net
    }
}

/// QEMU's option syntax: a `,` inside a value is written `,,`.
fn esc(s: &str) -> String {
    s.replace(',', ",,")
}

fn p(path: &Path) -> String {
    esc(&path.to_string_lossy())
}

/// The kernel command line (measured).
pub fn kernel_cmdline(tee: &str) -> String {
    format!("console=ttyS0 panic=-1 quiet loglevel=4 tsc=reliable no_timer_check veil.tee={tee}")
}

/// The QEMU arguments (without the binary).
pub fn argv(c: &QemuConfig) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |v: &[&str]| a.extend(v.iter().map(|s| s.to_string()));
    push(&[
        "-nodefaults",
        "-no-user-config",
        "-no-reboot",
        "-display",
        "none",
    ]);
    let mut machine = format!("q35,accel={}", c.accel.as_str());
    match &c.tee {
        VmTee::Snp { .. } => {
            machine.push_str(",confidential-guest-support=sev0,memory-backend=ram0")
        }
        VmTee::Tdx { .. } => {
            machine.push_str(",kernel-irqchip=split,confidential-guest-support=tdx0")
        }
        _ => {}
    }
    let cpu = match (&c.tee, c.accel) {
        (VmTee::Snp { .. }, _) => "EPYC-v4",
        (_, Accel::Kvm) => "host",
        (_, Accel::Tcg) => "max",
    };
    push(&["-machine", &machine, "-cpu", cpu]);
    push(&[
        "-smp",
        &c.vcpus.to_string(),
        "-m",
        &format!("{}M", c.memory_mib),
    ]);
    match &c.tee {
        VmTee::Snp {
            firmware,
            host_data,
            cbitpos,
            reduced_phys_bits,
        } => {
            push(&[
                "-object",
                &format!(
                    "memory-backend-memfd,id=ram0,size={}M,share=true,prealloc=false",
                    c.memory_mib
                ),
                "-object",
                &format!(
                    "sev-snp-guest,id=sev0,cbitpos={cbitpos},reduced-phys-bits={reduced_phys_bits},kernel-hashes=on,host-data={}",
                    B64.encode(host_data)
                ),
                "-bios",
                &p(firmware),
            ]);
        }
        VmTee::Tdx {
            firmware,
            mrconfigid,
        } => {
            push(&[
                "-object",
                &format!(
                    "{{\"qom-type\":\"tdx-guest\",\"id\":\"tdx0\",\"mrconfigid\":\"{}\"}}",
                    B64.encode(mrconfigid)
                ),
                "-bios",
                &p(firmware),
            ]);
        }
        _ => {}
    }
    push(&[
        "-kernel",
        &p(&c.kernel),
        "-initrd",
        &p(&c.initrd),
        "-append",
        &c.cmdline,
    ]);
    // Serial console on QEMU's stdout (captured by the launcher).
    push(&[
        "-chardev",
        "stdio,id=con0,signal=off",
        "-serial",
        "chardev:con0",
    ]);
    // User-mode network: no route out (restrict=on); the agent API is
    // forwarded from the host's loopback, host services into the guest.
    let mut net = format!(
        "user,id=net0,restrict=on,ipv6=off,hostfwd=tcp:127.0.0.1:{}-{GUEST_IP}:{AGENT_PORT}",
        c.agent_host_port
    );
    for f in &c.forwards {
        net.push_str(&format!(
            ",guestfwd=tcp:{HOST_SERVICES_IP}:{}-cmd:{}",
            f.guest_port,
            esc(&f.command.join(" "))
        ));
    }
    push(&[
        "-netdev",
        &net,
        "-device",
        "virtio-net-pci,netdev=net0,romfile=",
    ]);
    push(&[
        "-fw_cfg",
        &format!("name={INIT_DATA_FW_CFG},file={}", p(&c.init_data_file)),
    ]);
    if let Some(w) = &c.workload {
        push(&[
            "-netdev",
            &w.netdev(),
            "-device",
            &format!("virtio-net-pci,netdev=net1,mac={},romfile=", w.mac()),
        ]);
    }
    if let Some(d) = &c.oci_disk {
        push(&[
            "-drive",
            &format!("if=none,id=oci,file={},format=raw,readonly=on", p(d)),
            "-device",
            "virtio-blk-pci,drive=oci",
        ]);
    }
    for (i, d) in c.volume_disks.iter().enumerate() {
        push(&[
            "-drive",
            &format!("if=none,id=vol{i},file={},format=raw,discard=ignore", p(d)),
            "-device",
            &format!("virtio-blk-pci,drive=vol{i},serial={VOLUME_SERIAL_PREFIX}{i}"),
        ]);
    }
    if let Some(s) = &c.scratch {
        push(&[
            "-drive",
            &format!(
                "if=none,id=scratch,file={},format=raw,discard=ignore",
                p(&s.file)
            ),
            "-device",
            &format!("virtio-blk-pci,drive=scratch,serial={SCRATCH_SERIAL}"),
            "-fw_cfg",
            &format!("name={SCRATCH_FW_CFG},string={}", s.bytes),
        ]);
    }
    if let Some(b) = &c.bench {
        // The same drive options for both: only the guest's encryption differs.
        for (id, file, serial) in [
            ("benchplain", &b.plain, bench::PLAIN_SERIAL),
            ("benchcrypt", &b.crypt, bench::CRYPT_SERIAL),
        ] {
            push(&[
                "-drive",
                &format!("if=none,id={id},file={},format=raw,discard=ignore", p(file)),
                "-device",
                &format!("virtio-blk-pci,drive={id},serial={serial}"),
            ]);
        }
        push(&[
            "-fw_cfg",
            &format!("name={},string={}", bench::FW_CFG, b.bytes),
        ]);
    }
    if let VmTee::Sim { channel_fd } = &c.tee {
        push(&[
            "-device",
            "virtio-serial-pci,id=vser0",
            "-chardev",
            &format!("socket,id=sim0,fd={channel_fd}"),
            "-device",
            &format!("virtserialport,bus=vser0.0,chardev=sim0,name={SIM_PORT_NAME}"),
        ]);
    }
    a
}

/// How long the KVM probe's one-instruction guest may take.
const KVM_PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);

/// Run a one-instruction guest (`hlt` at address 0, real mode) on `kvm`
/// and expect it to stop with `KVM_EXIT_HLT`. Some hosts (nested
/// virtualization without support for it) accept every ioctl and then
/// never run a guest: answering the API version is not enough.
fn kvm_runs_a_guest(kvm: std::fs::File) -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const KVM_CREATE_VM: libc::c_ulong = 0xAE01;
    const KVM_GET_VCPU_MMAP_SIZE: libc::c_ulong = 0xAE04;
    const KVM_CREATE_VCPU: libc::c_ulong = 0xAE41;
    const KVM_SET_USER_MEMORY_REGION: libc::c_ulong = 0x4020_AE46;
    const KVM_SET_REGS: libc::c_ulong = 0x4090_AE82;
    const KVM_GET_SREGS: libc::c_ulong = 0x8138_AE83;
    const KVM_SET_SREGS: libc::c_ulong = 0x4138_AE84;
    const KVM_RUN: libc::c_ulong = 0xAE80;
    const KVM_EXIT_HLT: u32 = 5;
    let fail = |what: &str| format!("KVM probe: {what}: {}", std::io::Error::last_os_error());
    // SAFETY: each call below is a KVM ioctl or mmap on descriptors this
    // function owns, with buffers of the sizes the KVM ABI defines
    // (kvm_userspace_memory_region 32 bytes, kvm_regs 144, kvm_sregs 312);
    // the guest page and the kvm_run mapping stay mapped until unmapped
    // here, after the last use.
    unsafe {
        let vm = libc::ioctl(kvm.as_raw_fd(), KVM_CREATE_VM as _, 0);
        if vm < 0 {
            return Err(fail("KVM_CREATE_VM"));
        }
        let vm = OwnedFd::from_raw_fd(vm);
        let page = libc::mmap(
            std::ptr::null_mut(),
            0x1000,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if page == libc::MAP_FAILED {
            return Err(fail("mmap of the guest page"));
        }
        *(page as *mut u8) = 0xf4; // hlt
        let mut region = [0u64; 4]; // slot|flags, guest_phys_addr, memory_size, userspace_addr
        region[2] = 0x1000;
        region[3] = page as u64;
        let r = libc::ioctl(
            vm.as_raw_fd(),
            KVM_SET_USER_MEMORY_REGION as _,
            region.as_ptr(),
        );
        if r < 0 {
            libc::munmap(page, 0x1000);
            return Err(fail("KVM_SET_USER_MEMORY_REGION"));
        }
        let vcpu = libc::ioctl(vm.as_raw_fd(), KVM_CREATE_VCPU as _, 0);
        if vcpu < 0 {
            libc::munmap(page, 0x1000);
            return Err(fail("KVM_CREATE_VCPU"));
        }
        let vcpu = OwnedFd::from_raw_fd(vcpu);
        let mut sregs = [0u8; 312];
        if libc::ioctl(vcpu.as_raw_fd(), KVM_GET_SREGS as _, sregs.as_mut_ptr()) < 0 {
            libc::munmap(page, 0x1000);
            return Err(fail("KVM_GET_SREGS"));
        }
        // cs: base (offset 0, u64) and selector (offset 12, u16) to 0.
        sregs[0..8].fill(0);
        sregs[12..14].fill(0);
        if libc::ioctl(vcpu.as_raw_fd(), KVM_SET_SREGS as _, sregs.as_ptr()) < 0 {
            libc::munmap(page, 0x1000);
            return Err(fail("KVM_SET_SREGS"));
        }
        let mut regs = [0u64; 18]; // …, rip (16), rflags (17)
        regs[17] = 0x2;
        if libc::ioctl(vcpu.as_raw_fd(), KVM_SET_REGS as _, regs.as_ptr()) < 0 {
            libc::munmap(page, 0x1000);
            return Err(fail("KVM_SET_REGS"));
        }
        let size = libc::ioctl(kvm.as_raw_fd(), KVM_GET_VCPU_MMAP_SIZE as _, 0);
        if size < 16 {
            libc::munmap(page, 0x1000);
            return Err(fail("KVM_GET_VCPU_MMAP_SIZE"));
        }
        let run = libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            vcpu.as_raw_fd(),
            0,
        );
        if run == libc::MAP_FAILED {
            libc::munmap(page, 0x1000);
            return Err(fail("mmap of kvm_run"));
        }
        let r = libc::ioctl(vcpu.as_raw_fd(), KVM_RUN as _, 0);
        // kvm_run.exit_reason: u32 at offset 8.
        let exit = std::ptr::read_volatile((run as *const u8).add(8) as *const u32);
        let err = (r < 0).then(|| fail("KVM_RUN"));
        libc::munmap(run, size as usize);
        libc::munmap(page, 0x1000);
        if let Some(e) = err {
            return Err(e);
        }
        if exit != KVM_EXIT_HLT {
            return Err(format!(
                "KVM probe: a one-instruction guest (hlt) exited with reason {exit}, expected {KVM_EXIT_HLT} (KVM_EXIT_HLT)"
            ));
        }
    }
    Ok(())
}

/// Whether KVM can be used: `/dev/kvm` opens read-write, answers
/// `KVM_GET_API_VERSION` with 12, and runs a one-instruction guest within
/// a few seconds. `Err` says why not.
pub fn kvm_usable() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    const KVM_GET_API_VERSION: libc::c_ulong = 0xAE00;
    // SAFETY: an ioctl without arguments on an fd we own.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), KVM_GET_API_VERSION as _, 0) };
    if v != 12 {
        return Err(format!(
            "/dev/kvm: KVM_GET_API_VERSION returned {v}, expected 12"
        ));
    }
    // A host where KVM_RUN never returns must not hang veil: the probe runs
    // on its own thread, abandoned (with its descriptors) on timeout.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(kvm_runs_a_guest(f));
    });
    match rx.recv_timeout(KVM_PROBE_TIMEOUT) {
        Ok(r) => r,
        Err(_) => Err(format!(
            "KVM probe: a one-instruction guest did not stop within {} s (nested virtualization without support for it?)",
            KVM_PROBE_TIMEOUT.as_secs()
        )),
    }
}

/// Choose the accelerator: `forced` if given, else KVM when usable, else
/// TCG; with the reason when KVM is not used.
pub fn choose_accel(forced: Option<Accel>) -> (Accel, String) {
    match forced {
        Some(a) => (a, format!("{} (requested)", a.as_str())),
        None => match kvm_usable() {
            Ok(()) => (Accel::Kvm, "kvm".into()),
            Err(why) => (Accel::Tcg, format!("tcg (software emulation, slow: {why})")),
        },
    }
}

/// Where the host checks look (tests point them at a fake tree).
#[derive(Debug, Clone)]
pub struct HostRoots {
    pub dev: PathBuf,
    pub sys: PathBuf,
}

impl Default for HostRoots {
    fn default() -> Self {
        HostRoots {
            dev: "/dev".into(),
            sys: "/sys".into(),
        }
    }
}

fn param_on(path: &Path) -> Result<(), String> {
    match std::fs::read_to_string(path) {
        Ok(v) if matches!(v.trim(), "Y" | "y" | "1") => Ok(()),
        Ok(v) => Err(format!("{} is {:?}, expected Y", path.display(), v.trim())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Check that this host can launch an SNP (`snp`) or TDX (`tdx`) guest;
/// the error names what is missing.
pub fn check_host_tee(tee: &str, roots: &HostRoots) -> Result<(), String> {
    match tee {
        "snp" => {
            let sev = roots.dev.join("sev");
            if !sev.exists() {
                return Err(format!(
                    "this host cannot launch SEV-SNP guests: {} does not exist (an AMD EPYC host with SEV-SNP enabled in the BIOS and kvm_amd loaded with sev_snp=1 is needed)",
                    sev.display()
                ));
            }
            param_on(&roots.sys.join("module/kvm_amd/parameters/sev_snp"))
                .map_err(|e| format!("this host cannot launch SEV-SNP guests: {e}"))
        }
        "tdx" => param_on(&roots.sys.join("module/kvm_intel/parameters/tdx")).map_err(|e| {
            format!(
                "this host cannot launch TDX guests: {e} (an Intel host with TDX enabled and kvm_intel loaded with tdx=1 is needed)"
            )
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_detection_answers_quickly_whatever_the_host() {
        let t = std::time::Instant::now();
        let r = kvm_usable();
        eprintln!("kvm_usable: {r:?}");
        assert!(
            t.elapsed() < KVM_PROBE_TIMEOUT + std::time::Duration::from_secs(2),
            "{r:?}"
        );
        if let Err(why) = r {
            assert!(
                why.contains("/dev/kvm") || why.contains("KVM probe"),
                "{why}"
            );
        }
    }

    fn base(tee: VmTee) -> QemuConfig {
        QemuConfig {
            accel: Accel::Tcg,
            kernel: "/g/vmlinuz".into(),
            initrd: "/g/initrd.img".into(),
            cmdline: kernel_cmdline(tee.name()),
            vcpus: 1,
            memory_mib: 1024,
            agent_host_port: 40001,
            forwards: vec![GuestForward {
                guest_port: 8080,
                command: vec![
                    "/usr/bin/veil".into(),
                    "guest".into(),
                    "relay".into(),
                    "127.0.0.1:8080".into(),
                ],
            }],
            init_data_file: "/s/init-data.toml".into(),
            oci_disk: Some("/s/oci.tar".into()),
            volume_disks: vec![],
            scratch: None,
            bench: None,
            tee,
            workload: None,
        }
    }

    #[test]
    fn published_ports_are_forwards_on_a_second_nic_only() {
        let mut c = base(VmTee::Sim { channel_fd: 3 });
        assert_eq!(
            after(&argv(&c), "-netdev").len(),
            1,
            "--network none: no pod NIC"
        );
        c.workload = Some(WorkloadNet {
            ports: vec![
                "127.0.0.1:16379:6379".parse().unwrap(),
                "5353:53/udp".parse().unwrap(),
            ],
            tap_fd: None,
        });
        let a = argv(&c);
        let nets = after(&a, "-netdev");
        assert_eq!(nets.len(), 2);
        assert!(!nets[0].contains("6379"), "agent NIC: {}", nets[0]);
        assert_eq!(
            nets[1],
            "user,id=net1,net=10.0.3.0/24,ipv6=off,hostfwd=tcp:127.0.0.1:16379-10.0.3.15:6379,\
             hostfwd=udp::5353-10.0.3.15:53"
        );
        assert!(
            after(&a, "-device")
                .contains(&"virtio-net-pci,netdev=net1,mac=52:54:00:76:65:01,romfile="),
            "{a:?}"
        );
    }

    #[test]
    fn a_joined_namespace_is_a_tap_descriptor_with_the_join_mac() {
        let mut c = base(VmTee::Sim { channel_fd: 3 });
        c.workload = Some(WorkloadNet {
            ports: vec![],
            tap_fd: Some(9),
        });
        let a = argv(&c);
        assert_eq!(after(&a, "-netdev")[1], "tap,id=net1,fd=9,vhost=off");
        assert!(
            after(&a, "-device")
                .contains(&"virtio-net-pci,netdev=net1,mac=52:54:00:76:65:02,romfile="),
            "{a:?}"
        );
    }

    fn after<'a>(a: &'a [String], flag: &str) -> Vec<&'a str> {
        a.windows(2)
            .filter(|w| w[0] == flag)
            .map(|w| w[1].as_str())
            .collect()
    }

    #[test]
    fn sim_launch_has_the_agent_channels_and_a_read_only_image() {
        let a = argv(&base(VmTee::Sim { channel_fd: 3 }));
        assert_eq!(after(&a, "-machine"), ["q35,accel=tcg"]);
        assert_eq!(after(&a, "-cpu"), ["max"]);
        let net = after(&a, "-netdev")[0];
        assert!(net.contains("restrict=on"), "{net}");
        assert!(
            net.contains("hostfwd=tcp:127.0.0.1:40001-10.0.2.15:1024"),
            "{net}"
        );
        assert!(
            net.contains(
                "guestfwd=tcp:10.0.2.100:8080-cmd:/usr/bin/veil guest relay 127.0.0.1:8080"
            ),
            "{net}"
        );
        assert!(after(&a, "-drive")[0].contains("readonly=on"));
        assert!(after(&a, "-chardev").contains(&"socket,id=sim0,fd=3"));
        assert!(
            after(&a, "-device").contains(&"virtserialport,bus=vser0.0,chardev=sim0,name=veil.sim")
        );
        assert_eq!(
            after(&a, "-fw_cfg"),
            ["name=opt/veil/init-data,file=/s/init-data.toml"]
        );
        assert!(a.contains(&"-no-reboot".to_string()));
        assert!(after(&a, "-append")[0].contains("veil.tee=sim"));
    }

    #[test]
    fn snp_launch_binds_host_data_and_kernel_hashes() {
        let mut hd = [0u8; 32];
        hd[0] = 0xAB;
        let mut c = base(VmTee::Snp {
            firmware: "/usr/share/ovmf/OVMF.amdsev.fd".into(),
            host_data: hd,
            cbitpos: 51,
            reduced_phys_bits: 1,
        });
        c.accel = Accel::Kvm;
        let a = argv(&c);
        assert_eq!(
            after(&a, "-machine"),
            ["q35,accel=kvm,confidential-guest-support=sev0,memory-backend=ram0"]
        );
        assert_eq!(after(&a, "-cpu"), ["EPYC-v4"]);
        let objs = after(&a, "-object");
        assert_eq!(
            objs[0],
            "memory-backend-memfd,id=ram0,size=1024M,share=true,prealloc=false"
        );
        assert_eq!(
            objs[1],
            format!(
                "sev-snp-guest,id=sev0,cbitpos=51,reduced-phys-bits=1,kernel-hashes=on,host-data={}",
                B64.encode(hd)
            )
        );
        assert_eq!(after(&a, "-bios"), ["/usr/share/ovmf/OVMF.amdsev.fd"]);
        // No sim channel on hardware.
        assert!(!a.iter().any(|x| x.contains("veil.sim")));
    }

    #[test]
    fn tdx_launch_binds_mrconfigid() {
        let mut c = base(VmTee::Tdx {
            firmware: "/usr/share/ovmf/OVMF.inteltdx.fd".into(),
            mrconfigid: [7u8; 48],
        });
        c.accel = Accel::Kvm;
        let a = argv(&c);
        assert_eq!(
            after(&a, "-machine"),
            ["q35,accel=kvm,kernel-irqchip=split,confidential-guest-support=tdx0"]
        );
        let obj = after(&a, "-object")[0];
        let v: serde_json::Value = serde_json::from_str(obj).unwrap();
        assert_eq!(v["qom-type"], "tdx-guest");
        assert_eq!(
            B64.decode(v["mrconfigid"].as_str().unwrap()).unwrap(),
            vec![7u8; 48]
        );
        assert_eq!(after(&a, "-bios"), ["/usr/share/ovmf/OVMF.inteltdx.fd"]);
    }

    #[test]
    fn the_scratch_disk_has_its_serial_and_its_size_in_fw_cfg() {
        let mut c = base(VmTee::Sim { channel_fd: 3 });
        c.volume_disks = vec!["/v/db.img".into()];
        c.scratch = Some(ScratchDisk {
            file: "/s/scratch.img".into(),
            bytes: 4 << 30,
        });
        let a = argv(&c);
        let drives = after(&a, "-drive");
        // The layout disk stays first (the guest's /dev/vda).
        assert!(drives[0].contains("id=oci"), "{drives:?}");
        assert_eq!(
            drives[2],
            "if=none,id=scratch,file=/s/scratch.img,format=raw,discard=ignore"
        );
        assert!(after(&a, "-device").contains(&"virtio-blk-pci,drive=scratch,serial=veil-scratch"));
        assert!(
            after(&a, "-fw_cfg").contains(&"name=opt/veil/scratch-bytes,string=4294967296"),
            "{a:?}"
        );
        c.scratch = None;
        assert!(!argv(&c).iter().any(|x| x.contains("scratch")));
    }

    #[test]
    fn bench_disks_have_their_serials_and_their_size_in_fw_cfg() {
        let mut c = base(VmTee::Sim { channel_fd: 3 });
        c.oci_disk = None;
        c.bench = Some(BenchDisks {
            plain: "/s/bench-plain.img".into(),
            crypt: "/s/bench-crypt.img".into(),
            bytes: 256 << 20,
        });
        let a = argv(&c);
        assert_eq!(
            after(&a, "-drive"),
            [
                "if=none,id=benchplain,file=/s/bench-plain.img,format=raw,discard=ignore",
                "if=none,id=benchcrypt,file=/s/bench-crypt.img,format=raw,discard=ignore"
            ]
        );
        let dev = after(&a, "-device");
        assert!(dev.contains(&"virtio-blk-pci,drive=benchplain,serial=veil-bench-plain"));
        assert!(dev.contains(&"virtio-blk-pci,drive=benchcrypt,serial=veil-bench-crypt"));
        assert!(
            after(&a, "-fw_cfg").contains(&"name=opt/veil/bench-volume-bytes,string=268435456"),
            "{a:?}"
        );
        c.bench = None;
        assert!(!argv(&c).iter().any(|x| x.contains("bench")));
    }

    #[test]
    fn commas_in_paths_are_escaped() {
        let mut c = base(VmTee::None);
        c.init_data_file = "/a,b/init".into();
        let a = argv(&c);
        assert_eq!(
            after(&a, "-fw_cfg"),
            ["name=opt/veil/init-data,file=/a,,b/init"]
        );
    }

    #[test]
    fn host_tee_checks_name_what_is_missing() {
        let d = tempfile::tempdir().unwrap();
        let roots = HostRoots {
            dev: d.path().join("dev"),
            sys: d.path().join("sys"),
        };
        let e = check_host_tee("snp", &roots).unwrap_err();
        assert!(e.contains("/dev/sev") || e.contains("dev/sev"), "{e}");
        std::fs::create_dir_all(&roots.dev).unwrap();
        std::fs::write(roots.dev.join("sev"), "").unwrap();
        let pdir = roots.sys.join("module/kvm_amd/parameters");
        std::fs::create_dir_all(&pdir).unwrap();
        std::fs::write(pdir.join("sev_snp"), "N\n").unwrap();
        let e = check_host_tee("snp", &roots).unwrap_err();
        assert!(e.contains("sev_snp") && e.contains("\"N\""), "{e}");
        std::fs::write(pdir.join("sev_snp"), "Y\n").unwrap();
        check_host_tee("snp", &roots).unwrap();
        let e = check_host_tee("tdx", &roots).unwrap_err();
        assert!(e.contains("kvm_intel/parameters/tdx"), "{e}");
        check_host_tee("sim", &roots).unwrap();
    }
}
