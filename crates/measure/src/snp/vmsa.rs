//! The initial VMSA (VM save area) of each vCPU, as QEMU/KVM create it and the
//! PSP measures it: a 4 KiB page laid out per AMD APM vol. 2 table B-4
//! (`struct sev_es_save_area` in Linux). Fields not listed are zero.

use super::VmmType;

/// A VMSA page.
pub type VmsaPage = [u8; 4096];

/// Segment registers: `{u16 selector, u16 attrib, u32 limit, u64 base}`.
mod seg {
    pub const ES: usize = 0x000;
    pub const CS: usize = 0x010;
    pub const SS: usize = 0x020;
    pub const DS: usize = 0x030;
    pub const FS: usize = 0x040;
    pub const GS: usize = 0x050;
    pub const GDTR: usize = 0x060;
    pub const LDTR: usize = 0x070;
    pub const IDTR: usize = 0x080;
    pub const TR: usize = 0x090;
}
const EFER: usize = 0x0d0;
const CR4: usize = 0x148;
const CR0: usize = 0x158;
const DR7: usize = 0x160;
const DR6: usize = 0x168;
const RFLAGS: usize = 0x170;
const RIP: usize = 0x178;
const G_PAT: usize = 0x268;
const RDX: usize = 0x310;
const SEV_FEATURES: usize = 0x3b0;
const XCR0: usize = 0x3e8;
const MXCSR: usize = 0x408;
const X87_FCW: usize = 0x410;

/// Reset IP of the bootstrap processor.
pub const BSP_EIP: u32 = 0xffff_fff0;

fn put(page: &mut VmsaPage, at: usize, bytes: &[u8]) {
    page[at..at + bytes.len()].copy_from_slice(bytes);
}

fn segment(page: &mut VmsaPage, at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    put(page, at, &selector.to_le_bytes());
    put(page, at + 2, &attrib.to_le_bytes());
    put(page, at + 4, &limit.to_le_bytes());
    put(page, at + 8, &base.to_le_bytes());
}

/// Build the VMSA of a vCPU starting at `eip`.
pub fn vmsa_page(eip: u32, sev_features: u64, vcpu_sig: u32, vmm: VmmType) -> Box<VmsaPage> {
    // The hypervisors differ slightly in the initial register state.
    let (cs_attr, ss_attr, tr_attr, rdx, mxcsr, fcw, g_pat) = match vmm {
        VmmType::Qemu => (
            0x9b,
            0x93,
            0x8b,
            u64::from(vcpu_sig),
            0x1f80u32,
            0x37fu16,
            0x0007_0406_0007_0406u64,
        ),
        VmmType::Ec2 => {
            let cs = if eip == BSP_EIP { 0x9a } else { 0x9b };
            (cs, 0x92, 0x83, 0x600, 0, 0, 0x0007_0406_0007_0406)
        }
        VmmType::Gce => (0x9b, 0x93, 0x8b, 0x600, 0, 0, 0x0007_0106),
    };
    let mut p = Box::new([0u8; 4096]);
    segment(&mut p, seg::ES, 0, 0x93, 0xffff, 0);
    segment(
        &mut p,
        seg::CS,
        0xf000,
        cs_attr,
        0xffff,
        u64::from(eip & 0xffff_0000),
    );
    segment(&mut p, seg::SS, 0, ss_attr, 0xffff, 0);
    segment(&mut p, seg::DS, 0, 0x93, 0xffff, 0);
    segment(&mut p, seg::FS, 0, 0x93, 0xffff, 0);
    segment(&mut p, seg::GS, 0, 0x93, 0xffff, 0);
    segment(&mut p, seg::GDTR, 0, 0, 0xffff, 0);
    segment(&mut p, seg::LDTR, 0, 0x82, 0xffff, 0);
    segment(&mut p, seg::IDTR, 0, 0, 0xffff, 0);
    segment(&mut p, seg::TR, 0, tr_attr, 0xffff, 0);
    put(&mut p, EFER, &0x1000u64.to_le_bytes()); // KVM sets EFER.SVME
    put(&mut p, CR4, &0x40u64.to_le_bytes()); // CR4.MCE
    put(&mut p, CR0, &0x10u64.to_le_bytes()); // CR0.ET
    put(&mut p, DR7, &0x400u64.to_le_bytes());
    put(&mut p, DR6, &0xffff_0ff0u64.to_le_bytes());
    put(&mut p, RFLAGS, &0x2u64.to_le_bytes());
    put(&mut p, RIP, &u64::from(eip & 0xffff).to_le_bytes());
    put(&mut p, G_PAT, &g_pat.to_le_bytes());
    put(&mut p, RDX, &rdx.to_le_bytes());
    put(&mut p, SEV_FEATURES, &sev_features.to_le_bytes());
    put(&mut p, XCR0, &1u64.to_le_bytes());
    put(&mut p, MXCSR, &mxcsr.to_le_bytes());
    put(&mut p, X87_FCW, &fcw.to_le_bytes());
    p
}
