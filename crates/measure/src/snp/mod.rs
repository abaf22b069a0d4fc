//! The SEV-SNP launch digest (the report's MEASUREMENT) of a QEMU/OVMF guest,
//! computed as the PSP computes it from the pages the hypervisor hands to
//! SNP_LAUNCH_UPDATE, in the same order:
//!
//! 1. every page of the firmware image (mapped to end at 4 GiB), as normal pages;
//! 2. each SEV metadata section, in metadata order: SNP_SEC_MEMORY and SVSM_CAA as
//!    zero pages (unmeasured on GCE), SNP_SECRETS as the secrets page, CPUID as
//!    the CPUID page (last, on EC2), SNP_KERNEL_HASHES as a normal page holding
//!    QEMU's hashes table when a kernel is booted directly, zero pages otherwise;
//! 3. one VMSA page per vCPU (the bootstrap processor's first).

pub mod digest;
pub mod hashes;
pub mod vcpu;
pub mod vmsa;

use std::fmt;
use std::str::FromStr;

use crate::error::Error;
use crate::ovmf::{Firmware, SevSection, SevSectionKind};
use digest::{LD_BYTES, LaunchDigest, PageType};
pub use hashes::SevHashes;
pub use vcpu::{VCPU_TYPES, VcpuType};

/// Most vCPUs accepted.
pub const MAX_VCPUS: u32 = 4096;
/// Default guest features (SEV_FEATURES in the VMSA): SNPActive only, as
/// sev-snp-measure assumes; 0x21 adds DebugSwap (Linux ≥ 6.6 KVM default).
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;

/// The hypervisor that creates the VMSAs (they differ in initial state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmType {
    /// QEMU/KVM.
    Qemu,
    /// AWS EC2.
    Ec2,
    /// Google Compute Engine.
    Gce,
}

impl FromStr for VmmType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "qemu" => Ok(Self::Qemu),
            "ec2" => Ok(Self::Ec2),
            "gce" => Ok(Self::Gce),
            _ => Err(format!("unknown VMM type {s:?}; known: qemu, ec2, gce")),
        }
    }
}

impl fmt::Display for VmmType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::Ec2 => "ec2",
            Self::Gce => "gce",
        })
    }
}

/// How the guest is launched.
#[derive(Debug, Clone)]
pub struct SnpLaunch {
    /// Number of vCPUs (one VMSA each).
    pub vcpus: u32,
    /// CPUID signature of the vCPU model (see [`VcpuType::signature`]).
    pub vcpu_sig: u32,
    /// SEV_FEATURES of every VMSA.
    pub guest_features: u64,
    /// The hypervisor.
    pub vmm: VmmType,
    /// Hashes of the directly booted kernel/initrd/cmdline, if any.
    pub kernel_hashes: Option<SevHashes>,
}

/// The result.
#[derive(Debug, Clone)]
pub struct SnpMeasurement {
    /// The expected launch digest (report MEASUREMENT).
    pub launch_digest: [u8; LD_BYTES],
    /// The digest after the firmware pages only (`sev-snp-measure --mode
    /// snp:ovmf-hash`): lets others finish the computation without the image.
    pub firmware_digest: [u8; LD_BYTES],
    /// The SEV metadata sections that were measured.
    pub sections: Vec<SevSection>,
    /// Where the kernel hashes table went, when a kernel was given.
    pub hashes_table_gpa: Option<u32>,
}

/// Compute the launch digest of `fw` launched as `launch`.
pub fn launch_digest(fw: &Firmware<'_>, launch: &SnpLaunch) -> Result<SnpMeasurement, Error> {
    if launch.vcpus == 0 || launch.vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount {
            actual: launch.vcpus,
            max: MAX_VCPUS,
        });
    }
    let image = fw.data();
    if image.len() % 4096 != 0 {
        return Err(Error::FirmwareNotPageAligned { len: image.len() });
    }
    let sections = fw.sev_sections()?;
    let ap_eip = fw.sev_es_reset_eip()?;
    if ap_eip == 0 && launch.vcpus > 1 {
        return Err(Error::SevMetadata(
            "SEV_ES_RESET_BLOCK gives reset address 0: the firmware cannot start application processors".into(),
        ));
    }
    let hashes_page = match &launch.kernel_hashes {
        None => None,
        Some(h) => {
            let section = sections
                .iter()
                .find(|s| s.kind == SevSectionKind::KernelHashes)
                .ok_or(Error::NoKernelHashesSection)?;
            if section.size != 4096 {
                return Err(Error::HashesTable(format!(
                    "SNP_KERNEL_HASHES section is {:#x} bytes, expected one page (0x1000)",
                    section.size
                )));
            }
            let gpa = fw.sev_hashes_table_gpa()?.ok_or(Error::MissingTableEntry {
                name: "SEV_HASH_TABLE_RV",
                guid: crate::ovmf::SEV_HASH_TABLE_RV_GUID,
                why: "the kernel hashes table needs its address",
            })?;
            Some((gpa, h.page((gpa & 0xfff) as usize)?))
        }
    };

    let mut ld = LaunchDigest::default();
    ld.normal_pages(fw.gpa(), image);
    let firmware_digest = ld.value();

    for s in &sections {
        let (gpa, size) = (u64::from(s.gpa), u64::from(s.size));
        match s.kind {
            SevSectionKind::SecMemory if launch.vmm == VmmType::Gce => {
                ld.contentless_pages(PageType::Unmeasured, gpa, size)
            }
            SevSectionKind::SecMemory | SevSectionKind::SvsmCaa => {
                ld.contentless_pages(PageType::Zero, gpa, size)
            }
            SevSectionKind::Secrets => ld.contentless_pages(PageType::Secrets, gpa, 4096),
            SevSectionKind::Cpuid => {
                if launch.vmm != VmmType::Ec2 {
                    ld.contentless_pages(PageType::Cpuid, gpa, 4096)
                }
            }
            SevSectionKind::KernelHashes => match &hashes_page {
                Some((_, page)) => ld.normal_pages(gpa, &page[..]),
                None => ld.contentless_pages(PageType::Zero, gpa, size),
            },
        }
    }
    // EC2 hands the CPUID page over last.
    if launch.vmm == VmmType::Ec2 {
        for s in sections.iter().filter(|s| s.kind == SevSectionKind::Cpuid) {
            ld.contentless_pages(PageType::Cpuid, u64::from(s.gpa), 4096);
        }
    }

    let bsp = vmsa::vmsa_page(
        vmsa::BSP_EIP,
        launch.guest_features,
        launch.vcpu_sig,
        launch.vmm,
    );
    let ap = vmsa::vmsa_page(ap_eip, launch.guest_features, launch.vcpu_sig, launch.vmm);
    for i in 0..launch.vcpus {
        ld.vmsa_page(if i == 0 { &bsp } else { &ap });
    }

    Ok(SnpMeasurement {
        launch_digest: ld.value(),
        firmware_digest,
        sections,
        hashes_table_gpa: hashes_page.map(|(gpa, _)| gpa),
    })
}
