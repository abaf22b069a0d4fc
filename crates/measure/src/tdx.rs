//! TDX MRTD of a TDVF (TDX-capable OVMF) guest, as the TDX module computes it
//! while QEMU/KVM build the TD: MRTD is one SHA-384 over a stream of 128-byte
//! records, finalized by TDH.MR.FINALIZE.
//!
//! - TDH.MEM.PAGE.ADD of a page appends `"MEM.PAGE.ADD"` (zero-padded to 16
//!   bytes), the page's GPA (u64 LE) and zeros to 128 bytes.
//! - TDH.MR.EXTEND of a 256-byte chunk appends `"MR.EXTEND"` (padded to 16),
//!   the chunk's GPA, zeros to 128 bytes, then the chunk's 256 bytes.
//!
//! QEMU adds every TDVF section (BFV, CFV, TD_HOB, TEMP_MEM) page by page and
//! extends the pages of sections with the MR_EXTEND attribute. Upstream KVM
//! (Linux ≥ 6.16) extends each page right after adding it
//! ([`PageAddOrder::SinglePass`]); some earlier out-of-tree TDX stacks added
//! all pages of a section before extending any ([`PageAddOrder::TwoPass`]).
//!
//! RTMRs are not computed here: they are extended at run time by the firmware
//! and depend on inputs the firmware image does not determine (see
//! `docs/measure.md`).

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha384};

use crate::error::Error;
use crate::ovmf::{Firmware, PAGE_SIZE, TDVF_ATTR_MR_EXTEND, TdvfSection};

/// Granularity of TDH.MR.EXTEND.
const EXTEND_CHUNK: usize = 256;

/// Order of the TDH.MEM.PAGE.ADD and TDH.MR.EXTEND calls within a section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageAddOrder {
    /// Add a page, extend it, then the next page (upstream KVM/QEMU).
    #[default]
    SinglePass,
    /// Add all pages of a section, then extend them (older TDX stacks).
    TwoPass,
}

impl FromStr for PageAddOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "single-pass" => Ok(Self::SinglePass),
            "two-pass" => Ok(Self::TwoPass),
            _ => Err(format!(
                "unknown page-add order {s:?}; known: single-pass, two-pass"
            )),
        }
    }
}

impl fmt::Display for PageAddOrder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::SinglePass => "single-pass",
            Self::TwoPass => "two-pass",
        })
    }
}

/// The result.
#[derive(Debug, Clone)]
pub struct TdxMeasurement {
    /// The expected MRTD.
    pub mrtd: [u8; 48],
    /// The TDVF sections that were measured.
    pub sections: Vec<TdvfSection>,
}

fn record(tag: &[u8], gpa: u64) -> [u8; 128] {
    let mut r = [0u8; 128];
    r[..tag.len()].copy_from_slice(tag);
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

fn page_add(h: &mut Sha384, gpa: u64) {
    h.update(record(b"MEM.PAGE.ADD", gpa));
}

/// Extend one page: the section's raw data, zero beyond it.
fn extend_page(h: &mut Sha384, s: &TdvfSection, raw: &[u8], page: u64) {
    let page_start = (page * PAGE_SIZE) as usize;
    for c in 0..(PAGE_SIZE as usize / EXTEND_CHUNK) {
        let off = page_start + c * EXTEND_CHUNK;
        h.update(record(b"MR.EXTEND", s.gpa + off as u64));
        let mut chunk = [0u8; EXTEND_CHUNK];
        if let Some(src) = raw.get(off..) {
            let n = src.len().min(EXTEND_CHUNK);
            chunk[..n].copy_from_slice(&src[..n]);
        }
        h.update(chunk);
    }
}

/// Compute the MRTD of `fw`.
pub fn mrtd(fw: &Firmware<'_>, order: PageAddOrder) -> Result<TdxMeasurement, Error> {
    let sections = fw.tdvf_sections()?;
    let mut h = Sha384::new();
    for s in &sections {
        let pages = s.mem_size / PAGE_SIZE;
        let extend = s.attributes & TDVF_ATTR_MR_EXTEND != 0;
        let raw = s.raw(fw.data());
        match order {
            PageAddOrder::SinglePass => {
                for p in 0..pages {
                    page_add(&mut h, s.gpa + p * PAGE_SIZE);
                    if extend {
                        extend_page(&mut h, s, raw, p);
                    }
                }
            }
            PageAddOrder::TwoPass => {
                for p in 0..pages {
                    page_add(&mut h, s.gpa + p * PAGE_SIZE);
                }
                if extend {
                    for p in 0..pages {
                        extend_page(&mut h, s, raw, p);
                    }
                }
            }
        }
    }
    Ok(TdxMeasurement {
        mrtd: h.finalize().into(),
        sections,
    })
}
