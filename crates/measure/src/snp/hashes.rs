//! The SEV hashes table QEMU writes into the firmware's SNP_KERNEL_HASHES page
//! when it boots a kernel directly (`-kernel`, `kernel-hashes=on`); OVMF
//! checks the kernel, initrd and command line against it before running them.
//!
//! Layout (QEMU `target/i386/sev.c`, `SevHashTable`, packed): header `{GUID,
//! u16 length}` then three entries `{GUID, u16 length = 50, SHA-256}` for the
//! command line, initrd and kernel, zero-padded to a 16-byte multiple.

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::guid::Guid;

/// Table header.
pub const SEV_HASH_TABLE_HEADER_GUID: Guid =
    Guid::from_canonical("9438d606-4f22-4cc9-b479-a793d411fd21");
/// Kernel entry.
pub const SEV_KERNEL_ENTRY_GUID: Guid =
    Guid::from_canonical("4de79437-abd2-427f-b835-d5b172d2045b");
/// Initrd entry.
pub const SEV_INITRD_ENTRY_GUID: Guid =
    Guid::from_canonical("44baf731-3a2f-4bd7-9af1-41e29169781d");
/// Command-line entry.
pub const SEV_CMDLINE_ENTRY_GUID: Guid =
    Guid::from_canonical("97d02dd8-bd20-4c94-aa78-e7714d36ab2a");

const ENTRY_LEN: usize = 16 + 2 + 32;
const TABLE_LEN: usize = 16 + 2 + 3 * ENTRY_LEN;
/// The table padded to 16 bytes, as QEMU copies it.
pub const PADDED_TABLE_LEN: usize = TABLE_LEN.div_ceil(16) * 16;

/// The SHA-256 digests of what QEMU boots directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SevHashes {
    /// SHA-256 of the kernel image.
    pub kernel: [u8; 32],
    /// SHA-256 of the initrd (of nothing if there is none).
    pub initrd: [u8; 32],
    /// SHA-256 of the command line with its terminating NUL (QEMU hashes
    /// `append` + `\0`, or a lone `\0` without `-append`).
    pub cmdline: [u8; 32],
}

impl SevHashes {
    /// Digests from the kernel's and initrd's digests and the command line.
    pub fn new(kernel_sha256: [u8; 32], initrd_sha256: Option<[u8; 32]>, append: &str) -> Self {
        let mut cmd = Sha256::new();
        cmd.update(append.as_bytes());
        cmd.update([0u8]);
        SevHashes {
            kernel: kernel_sha256,
            initrd: initrd_sha256.unwrap_or_else(|| Sha256::digest([]).into()),
            cmdline: cmd.finalize().into(),
        }
    }

    /// The padded table bytes.
    pub fn table(&self) -> [u8; PADDED_TABLE_LEN] {
        let mut t = [0u8; PADDED_TABLE_LEN];
        t[..16].copy_from_slice(&SEV_HASH_TABLE_HEADER_GUID.0);
        t[16..18].copy_from_slice(&(TABLE_LEN as u16).to_le_bytes());
        let entries = [
            (SEV_CMDLINE_ENTRY_GUID, &self.cmdline),
            (SEV_INITRD_ENTRY_GUID, &self.initrd),
            (SEV_KERNEL_ENTRY_GUID, &self.kernel),
        ];
        for (i, (guid, digest)) in entries.iter().enumerate() {
            let at = 18 + i * ENTRY_LEN;
            t[at..at + 16].copy_from_slice(&guid.0);
            t[at + 16..at + 18].copy_from_slice(&(ENTRY_LEN as u16).to_le_bytes());
            t[at + 18..at + ENTRY_LEN].copy_from_slice(*digest);
        }
        t
    }

    /// The page QEMU measures: the table at `offset` within a zero page.
    pub fn page(&self, offset: usize) -> Result<Box<[u8; 4096]>, Error> {
        if offset + PADDED_TABLE_LEN > 4096 {
            return Err(Error::HashesTable(format!(
                "the {PADDED_TABLE_LEN}-byte table at page offset {offset:#x} would cross the page end"
            )));
        }
        let mut p = Box::new([0u8; 4096]);
        p[offset..offset + PADDED_TABLE_LEN].copy_from_slice(&self.table());
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_layout() {
        let h = SevHashes::new([0xaa; 32], None, "");
        let t = h.table();
        assert_eq!(TABLE_LEN, 168);
        assert_eq!(PADDED_TABLE_LEN, 176);
        assert_eq!(&t[16..18], &168u16.to_le_bytes());
        // cmdline "" hashes a lone NUL.
        assert_eq!(&t[36..68], &Sha256::digest([0u8])[..]);
        // initrd absent hashes nothing.
        assert_eq!(&t[86..118], &Sha256::digest([])[..]);
        assert_eq!(&t[136..168], &[0xaa; 32]);
        assert_eq!(&t[168..], &[0u8; 8]);
        assert!(h.page(4096 - 175).is_err());
        assert!(h.page(4096 - 176).is_ok());
    }
}
