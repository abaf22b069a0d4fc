//! The SNP launch digest as the PSP extends it on every SNP_LAUNCH_UPDATE:
//! `LD' = SHA-384(PAGE_INFO)`, where PAGE_INFO (SEV-SNP ABI spec, "PAGE_INFO
//! structure") is `{LD, CONTENTS, u16 LENGTH = 0x70, u8 PAGE_TYPE, u8 IMI_PAGE,
//! u8 VMPL3_PERMS, u8 VMPL2_PERMS, u8 VMPL1_PERMS, u8 reserved, u64 GPA}`.

use sha2::{Digest, Sha384};

/// Bytes of a launch digest.
pub const LD_BYTES: usize = 48;
/// `PAGE_INFO.LENGTH`.
const PAGE_INFO_LEN: u16 = 0x70;
/// The GPA the RMP records for VMSA pages: (u64)-1, page-aligned, bits above
/// 51 cleared.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// `PAGE_INFO.PAGE_TYPE` (SNP_LAUNCH_UPDATE page types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum PageType {
    /// Data page, measured by content.
    Normal = 0x01,
    /// A vCPU's initial VMSA.
    Vmsa = 0x02,
    /// Zero page.
    Zero = 0x03,
    /// Unmeasured page.
    Unmeasured = 0x04,
    /// The secrets page.
    Secrets = 0x05,
    /// The CPUID page.
    Cpuid = 0x06,
}

/// A launch digest being built, one page at a time.
#[derive(Debug, Clone)]
pub struct LaunchDigest {
    ld: [u8; LD_BYTES],
}

impl Default for LaunchDigest {
    fn default() -> Self {
        LaunchDigest { ld: [0; LD_BYTES] }
    }
}

impl LaunchDigest {
    /// The current value.
    pub fn value(&self) -> [u8; LD_BYTES] {
        self.ld
    }

    /// Extend with one page whose contents digest is `contents`.
    fn extend(&mut self, page_type: PageType, gpa: u64, contents: &[u8; LD_BYTES]) {
        let mut info = [0u8; PAGE_INFO_LEN as usize];
        info[..48].copy_from_slice(&self.ld);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&PAGE_INFO_LEN.to_le_bytes());
        info[98] = page_type as u8;
        // IMI_PAGE, VMPL3/2/1 permissions and the reserved byte stay 0.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.ld = Sha384::digest(info).into();
    }

    /// Normal pages: `data` is a whole number of pages starting at `gpa`.
    pub fn normal_pages(&mut self, gpa: u64, data: &[u8]) {
        debug_assert!(data.len() % 4096 == 0);
        for (i, page) in data.chunks_exact(4096).enumerate() {
            let contents: [u8; LD_BYTES] = Sha384::digest(page).into();
            self.extend(PageType::Normal, gpa + 4096 * i as u64, &contents);
        }
    }

    /// Pages whose contents the PSP does not hash (zero, unmeasured, secrets,
    /// CPUID): `size` bytes from `gpa`.
    pub fn contentless_pages(&mut self, page_type: PageType, gpa: u64, size: u64) {
        for i in 0..size / 4096 {
            self.extend(page_type, gpa + 4096 * i, &[0; LD_BYTES]);
        }
    }

    /// One VMSA page.
    pub fn vmsa_page(&mut self, page: &[u8; 4096]) {
        let contents: [u8; LD_BYTES] = Sha384::digest(page).into();
        self.extend(PageType::Vmsa, VMSA_GPA, &contents);
    }
}
