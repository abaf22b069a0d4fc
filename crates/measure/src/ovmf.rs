//! OVMF firmware images: the GUIDed table at the end of the image, the SEV
//! metadata it points to (pages the SEV-SNP launch measures besides the
//! firmware), and the TDX (TDVF) metadata.
//!
//! Layout (edk2 `OvmfPkg/ResetVector`): the last 32 bytes of the image are the
//! reset vector; just before them sits the footer entry `{u16 size, GUID
//! 96b582de-…}` whose `size` covers the whole table including itself. The
//! table's entries are read backwards from the footer: each ends with
//! `{u16 size, GUID}` and its data precedes that header.

use std::ops::Range;

use crate::error::Error;
use crate::guid::Guid;

/// Largest firmware image accepted (OVMF builds are 1-4 MiB; 64 MiB is ample).
pub const MAX_FIRMWARE_BYTES: u64 = 64 * 1024 * 1024;
/// Most entries accepted in the GUIDed table (real images have about six).
pub const MAX_TABLE_ENTRIES: usize = 64;
/// Most SEV or TDVF metadata sections accepted (real images have 5-7).
pub const MAX_SECTIONS: usize = 64;
/// Most pages all metadata sections together may describe (real images: ~100
/// for SEV, ~1100 for TDX; 16384 pages is 64 MiB). Bounds the hashing work a
/// hostile image can ask for.
pub const MAX_SECTION_PAGES: u64 = 1 << 14;
/// Page size of both SEV-SNP and TDX.
pub const PAGE_SIZE: u64 = 4096;

/// Bytes after the table footer: the reset vector.
const RESET_VECTOR_BYTES: usize = 32;
/// `{u16 size, GUID}` closing every table entry.
const ENTRY_HEADER: usize = 18;

/// The GUIDed table footer.
pub const TABLE_FOOTER_GUID: Guid = Guid::from_canonical("96b582de-1fb2-45f7-baea-a366c55a082d");
/// `SEV_ES_RESET_BLOCK`: `u32` reset IP of the application processors.
pub const SEV_ES_RESET_BLOCK_GUID: Guid =
    Guid::from_canonical("00f771de-1a7e-4fcb-890e-68c77e2fb44e");
/// `SEV_HASH_TABLE_RV`: `{u32 gpa, u32 size}` of the kernel hashes table.
pub const SEV_HASH_TABLE_RV_GUID: Guid =
    Guid::from_canonical("7255371f-3a3b-4b04-927b-1da6efa8d454");
/// `OVMF_SEV_METADATA`: `u32` offset, from the end, of the SEV metadata.
pub const SEV_METADATA_GUID: Guid = Guid::from_canonical("dc886566-984a-4798-a75e-5585a7bf67cc");
/// TDX metadata offset: `u32` offset, from the end, of the TDVF descriptor.
pub const TDX_METADATA_GUID: Guid = Guid::from_canonical("e47a6535-984a-4798-865e-4685a7bf8ec2");

/// A parsed OVMF image: the bytes and its GUIDed table.
#[derive(Debug)]
pub struct Firmware<'a> {
    data: &'a [u8],
    /// Entries in file order (GUID, data range within `data`).
    entries: Vec<(Guid, Range<usize>)>,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}
fn guid_at(b: &[u8], at: usize) -> Option<Guid> {
    Some(Guid(b.get(at..at + 16)?.try_into().ok()?))
}

impl<'a> Firmware<'a> {
    /// Parse the GUIDed table of an OVMF image. Fails if there is none or it
    /// is malformed (truncated, overlapping, duplicate entries).
    pub fn parse(data: &'a [u8]) -> Result<Self, Error> {
        let min = RESET_VECTOR_BYTES + ENTRY_HEADER;
        if data.len() < min {
            return Err(Error::FirmwareTooSmall {
                len: data.len(),
                min,
            });
        }
        if data.len() as u64 > MAX_FIRMWARE_BYTES {
            return Err(Error::FirmwareTooLarge {
                len: data.len() as u64,
                max: MAX_FIRMWARE_BYTES,
            });
        }
        // The footer entry's header ends where the reset vector starts.
        let footer_end = data.len() - RESET_VECTOR_BYTES;
        let footer_at = footer_end - ENTRY_HEADER;
        let found = guid_at(data, footer_at + 2).ok_or_else(|| truncated("footer GUID"))?;
        if found != TABLE_FOOTER_GUID {
            return Err(Error::NotOvmf {
                expected: TABLE_FOOTER_GUID,
                found,
                offset: footer_at,
            });
        }
        let table_size = usize::from(le_u16(data, footer_at).ok_or_else(|| truncated("size"))?);
        if table_size < ENTRY_HEADER {
            return Err(Error::FooterTable(format!(
                "footer size {table_size} is smaller than its own {ENTRY_HEADER}-byte header"
            )));
        }
        // Entries occupy [table_start, footer_at).
        let table_start = footer_end.checked_sub(table_size).ok_or_else(|| {
            Error::FooterTable(format!(
                "truncated table: the footer declares {table_size} bytes but only {footer_end} \
                 bytes precede the reset vector in the {}-byte image",
                data.len()
            ))
        })?;
        let mut entries = Vec::new();
        let mut end = footer_at;
        while end > table_start {
            if end - table_start < ENTRY_HEADER {
                return Err(Error::FooterTable(format!(
                    "{} stray bytes at offset {table_start:#x}, fewer than an {ENTRY_HEADER}-byte entry header",
                    end - table_start
                )));
            }
            let header = end - ENTRY_HEADER;
            let size = usize::from(le_u16(data, header).ok_or_else(|| truncated("entry size"))?);
            let guid = guid_at(data, header + 2).ok_or_else(|| truncated("entry GUID"))?;
            if size < ENTRY_HEADER {
                return Err(Error::FooterTable(format!(
                    "entry {guid} at offset {header:#x} has size {size}, smaller than its {ENTRY_HEADER}-byte header"
                )));
            }
            if size > end - table_start {
                return Err(Error::FooterTable(format!(
                    "entry {guid} at offset {header:#x} has size {size} but only {} bytes of table remain (truncated table)",
                    end - table_start
                )));
            }
            if entries.iter().any(|(g, _)| *g == guid) {
                return Err(Error::FooterTable(format!("entry {guid} appears twice")));
            }
            if entries.len() == MAX_TABLE_ENTRIES {
                return Err(Error::FooterTable(format!(
                    "more than {MAX_TABLE_ENTRIES} entries"
                )));
            }
            let start = end - size;
            entries.push((guid, start..header));
            end = start;
        }
        entries.reverse();
        Ok(Firmware { data, entries })
    }

    /// The whole image.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// Guest-physical address of the first byte: the image ends at 4 GiB.
    pub fn gpa(&self) -> u64 {
        (1u64 << 32) - self.data.len() as u64
    }

    /// The GUIDs of the table, in file order.
    pub fn entry_guids(&self) -> impl Iterator<Item = Guid> + '_ {
        self.entries.iter().map(|(g, _)| *g)
    }

    /// The data of one table entry.
    pub fn entry(&self, guid: Guid) -> Option<&'a [u8]> {
        let data = self.data;
        self.entries
            .iter()
            .find(|(g, _)| *g == guid)
            .and_then(|(_, r)| data.get(r.clone()))
    }

    fn entry_u32(&self, guid: Guid, name: &'static str) -> Result<Option<u32>, Error> {
        match self.entry(guid) {
            None => Ok(None),
            Some(d) => le_u32(d, 0).map(Some).ok_or_else(|| {
                Error::FooterTable(format!(
                    "entry {name} ({guid}) holds {} bytes, expected at least 4",
                    d.len()
                ))
            }),
        }
    }

    /// Reset IP of the SEV-ES/SNP application processors.
    pub fn sev_es_reset_eip(&self) -> Result<u32, Error> {
        self.entry_u32(SEV_ES_RESET_BLOCK_GUID, "SEV_ES_RESET_BLOCK")?
            .ok_or(Error::MissingTableEntry {
                name: "SEV_ES_RESET_BLOCK",
                guid: SEV_ES_RESET_BLOCK_GUID,
                why: "SEV-ES/SNP needs the application processors' reset address",
            })
    }

    /// Guest-physical address of the SEV kernel hashes table, if the firmware
    /// reserves one (a zero address means it does not).
    pub fn sev_hashes_table_gpa(&self) -> Result<Option<u32>, Error> {
        Ok(self
            .entry_u32(SEV_HASH_TABLE_RV_GUID, "SEV_HASH_TABLE_RV")?
            .filter(|&gpa| gpa != 0))
    }

    /// The header both metadata blocks share (`ASEV` for SEV, `TDVF` for
    /// TDX): signature, total length, version 1, entry count, at `off` bytes
    /// from the end of the image; checks that `count` entries of
    /// `entry_size` bytes fit in the declared length and the image.
    /// Returns (offset of the header, entry count).
    fn metadata_header(
        &self,
        off: u32,
        signature: &[u8; 4],
        entry_size: usize,
        bad: fn(String) -> Error,
    ) -> Result<(usize, usize), Error> {
        let d = self.data;
        let start = self.offset_from_end(off).ok_or_else(|| {
            bad(format!(
                "offset {off:#x} from the end points outside the {}-byte image",
                d.len()
            ))
        })?;
        let sig = d
            .get(start..start + 4)
            .ok_or_else(|| bad(truncated_at(start)))?;
        if sig != signature {
            return Err(bad(format!(
                "signature at offset {start:#x} is {sig:02x?}, expected \"{}\"",
                String::from_utf8_lossy(signature)
            )));
        }
        let len = le_u32(d, start + 4).ok_or_else(|| bad(truncated_at(start)))? as usize;
        let version = le_u32(d, start + 8).ok_or_else(|| bad(truncated_at(start)))?;
        let count = le_u32(d, start + 12).ok_or_else(|| bad(truncated_at(start)))? as usize;
        if version != 1 {
            return Err(bad(format!("version {version}, expected 1")));
        }
        if count > MAX_SECTIONS {
            return Err(bad(format!(
                "{count} sections, more than the {MAX_SECTIONS} accepted"
            )));
        }
        let need = 16 + entry_size * count;
        if len < need || start.checked_add(len).is_none_or(|e| e > d.len()) {
            return Err(bad(format!(
                "header at {start:#x} declares {len} bytes for {count} sections \
                 (needs {need}) in a {}-byte image",
                d.len()
            )));
        }
        Ok((start, count))
    }

    /// The SEV metadata sections, or `Error::NoSevMetadata`.
    pub fn sev_sections(&self) -> Result<Vec<SevSection>, Error> {
        let off = self
            .entry_u32(SEV_METADATA_GUID, "OVMF_SEV_METADATA")?
            .ok_or(Error::NoSevMetadata {
                guid: SEV_METADATA_GUID,
            })?;
        let bad = |m: String| Error::SevMetadata(m);
        let d = self.data;
        let (start, count) = self.metadata_header(off, b"ASEV", 12, bad)?;
        let mut out = Vec::with_capacity(count);
        let mut pages = 0u64;
        for i in 0..count {
            let at = start + 16 + 12 * i;
            let (Some(gpa), Some(len), Some(kind)) =
                (le_u32(d, at), le_u32(d, at + 4), le_u32(d, at + 8))
            else {
                return Err(bad(truncated_at(at)));
            };
            let kind = SevSectionKind::from_u32(kind).ok_or_else(|| {
                bad(format!(
                    "section {i} has unknown type {kind:#x} (known: 1 SNP_SEC_MEMORY, 2 SNP_SECRETS, \
                     3 CPUID, 4 SVSM_CAA, 0x10 SNP_KERNEL_HASHES)"
                ))
            })?;
            if u64::from(gpa) % PAGE_SIZE != 0 || u64::from(len) % PAGE_SIZE != 0 || len == 0 {
                return Err(bad(format!(
                    "section {i} ({}) at {gpa:#x} size {len:#x}: address and size must be \
                     non-zero multiples of 4096",
                    kind.name()
                )));
            }
            pages += u64::from(len) / PAGE_SIZE;
            if pages > MAX_SECTION_PAGES {
                return Err(bad(format!(
                    "sections describe more than {MAX_SECTION_PAGES} pages"
                )));
            }
            out.push(SevSection {
                gpa,
                size: len,
                kind,
            });
        }
        Ok(out)
    }

    /// The TDVF sections, or `Error::NoTdvfMetadata`.
    pub fn tdvf_sections(&self) -> Result<Vec<TdvfSection>, Error> {
        let off = self
            .entry_u32(TDX_METADATA_GUID, "TDX_METADATA_OFFSET")?
            .ok_or(Error::NoTdvfMetadata {
                guid: TDX_METADATA_GUID,
            })?;
        let bad = |m: String| Error::TdvfMetadata(m);
        let d = self.data;
        let (start, count) = self.metadata_header(off, b"TDVF", 32, bad)?;
        let mut out = Vec::with_capacity(count);
        let mut pages = 0u64;
        for i in 0..count {
            let at = start + 16 + 32 * i;
            let (
                Some(data_offset),
                Some(raw_size),
                Some(gpa),
                Some(mem_size),
                Some(kind),
                Some(attributes),
            ) = (
                le_u32(d, at),
                le_u32(d, at + 4),
                le_u64(d, at + 8),
                le_u64(d, at + 16),
                le_u32(d, at + 24),
                le_u32(d, at + 28),
            )
            else {
                return Err(bad(truncated_at(at)));
            };
            let kind = TdvfSectionKind::from_u32(kind).ok_or_else(|| {
                bad(format!(
                    "section {i} has type {kind}, which QEMU does not load (supported: 0 BFV, \
                     1 CFV, 2 TD_HOB, 3 TEMP_MEM)"
                ))
            })?;
            let s = TdvfSection {
                data_offset,
                raw_size,
                gpa,
                mem_size,
                kind,
                attributes,
            };
            s.check(i, d.len())?;
            pages += mem_size / PAGE_SIZE;
            if pages > MAX_SECTION_PAGES {
                return Err(bad(format!(
                    "sections describe more than {MAX_SECTION_PAGES} pages"
                )));
            }
            out.push(s);
        }
        Ok(out)
    }

    fn offset_from_end(&self, off: u32) -> Option<usize> {
        let off = off as usize;
        if off == 0 || off > self.data.len() {
            None
        } else {
            Some(self.data.len() - off)
        }
    }
}

fn truncated(what: &str) -> Error {
    Error::FooterTable(format!("truncated {what}"))
}
fn truncated_at(at: usize) -> String {
    format!("truncated structure at offset {at:#x}")
}

/// Kinds of SEV metadata sections (edk2 `OvmfSevMetadata.asm`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SevSectionKind {
    /// Pre-validated zeroed memory (`SNP_SEC_MEMORY`).
    SecMemory,
    /// The SNP secrets page the PSP fills (`SNP_SECRETS`).
    Secrets,
    /// The CPUID page the PSP checks (`CPUID`).
    Cpuid,
    /// The SVSM calling-area page (`SVSM_CAA`).
    SvsmCaa,
    /// The page holding QEMU's kernel/initrd/cmdline hashes table (`SNP_KERNEL_HASHES`).
    KernelHashes,
}

impl SevSectionKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SecMemory,
            2 => Self::Secrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::KernelHashes,
            _ => return None,
        })
    }

    /// The edk2 name.
    pub fn name(self) -> &'static str {
        match self {
            Self::SecMemory => "SNP_SEC_MEMORY",
            Self::Secrets => "SNP_SECRETS",
            Self::Cpuid => "CPUID",
            Self::SvsmCaa => "SVSM_CAA",
            Self::KernelHashes => "SNP_KERNEL_HASHES",
        }
    }
}

/// One SEV metadata section: memory the launch measures besides the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SevSection {
    /// Guest-physical address (page-aligned).
    pub gpa: u32,
    /// Size in bytes (a non-zero multiple of 4096).
    pub size: u32,
    /// What the pages hold.
    pub kind: SevSectionKind,
}

/// Kinds of TDVF sections QEMU loads (TDVF design guide, table 1.1-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TdvfSectionKind {
    /// Boot firmware volume (code), copied from the image.
    Bfv,
    /// Configuration firmware volume (variables), copied from the image.
    Cfv,
    /// The TD hand-off block QEMU writes (zero at measurement time).
    TdHob,
    /// Temporary memory (zero pages).
    TempMem,
}

impl TdvfSectionKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            0 => Self::Bfv,
            1 => Self::Cfv,
            2 => Self::TdHob,
            3 => Self::TempMem,
            _ => return None,
        })
    }

    /// The TDVF name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bfv => "BFV",
            Self::Cfv => "CFV",
            Self::TdHob => "TD_HOB",
            Self::TempMem => "TEMP_MEM",
        }
    }
}

/// `MR_EXTEND` attribute: the section's contents are measured into MRTD.
pub const TDVF_ATTR_MR_EXTEND: u32 = 1;

/// One TDVF section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TdvfSection {
    /// Offset of the raw data in the image.
    pub data_offset: u32,
    /// Bytes of raw data in the image.
    pub raw_size: u32,
    /// Guest-physical address (page-aligned).
    pub gpa: u64,
    /// Bytes of guest memory (page multiple, ≥ raw size).
    pub mem_size: u64,
    /// Section type.
    pub kind: TdvfSectionKind,
    /// Attributes (`TDVF_ATTR_MR_EXTEND`).
    pub attributes: u32,
}

impl TdvfSection {
    /// The checks QEMU's TDVF loader makes, plus bounds on the image.
    fn check(&self, i: usize, image_len: usize) -> Result<(), Error> {
        let name = self.kind.name();
        let bad = |m: String| Err(Error::TdvfMetadata(format!("section {i} ({name}): {m}")));
        if self.attributes & !TDVF_ATTR_MR_EXTEND != 0 {
            return bad(format!(
                "attributes {:#x}: only MR_EXTEND (0x1) is supported (PAGE_AUG sections are not \
                 added at build time by QEMU)",
                self.attributes
            ));
        }
        if self.gpa % PAGE_SIZE != 0 || self.mem_size % PAGE_SIZE != 0 || self.mem_size == 0 {
            return bad(format!(
                "memory {:#x} size {:#x}: must be page-aligned and non-empty",
                self.gpa, self.mem_size
            ));
        }
        if self.gpa.checked_add(self.mem_size).is_none() {
            return bad("memory range wraps the address space".into());
        }
        if u64::from(self.raw_size) > self.mem_size {
            return bad(format!(
                "raw data size {:#x} exceeds memory size {:#x}",
                self.raw_size, self.mem_size
            ));
        }
        match self.kind {
            TdvfSectionKind::Bfv | TdvfSectionKind::Cfv => {
                if self.raw_size == 0 {
                    return bad("firmware volume with no raw data".into());
                }
            }
            TdvfSectionKind::TdHob | TdvfSectionKind::TempMem => {
                if self.raw_size != 0 {
                    return bad(format!(
                        "raw data size {:#x}, expected 0 for a memory-only section",
                        self.raw_size
                    ));
                }
            }
        }
        let end = u64::from(self.data_offset) + u64::from(self.raw_size);
        if end > image_len as u64 {
            return bad(format!(
                "raw data {:#x}..{end:#x} lies outside the {image_len}-byte image \
                 (TDX boots the whole OVMF.fd, not OVMF_CODE.fd)",
                self.data_offset
            ));
        }
        Ok(())
    }

    /// The section's raw data in the image (checked at parse time).
    pub fn raw<'a>(&self, image: &'a [u8]) -> &'a [u8] {
        let start = self.data_offset as usize;
        image
            .get(start..start + self.raw_size as usize)
            .unwrap_or_default()
    }
}
