//! The uncompressed kernel inside a bzImage, for QEMU's PVH boot.
//!
//! Under TCG, a bzImage spends seconds decompressing itself before Linux's
//! clock even starts (Debian's 6.1 kernel: xz, ~8 MB → 66 MB; 3.3–4.3 s of
//! the 3.5 s "QEMU start" phase here). QEMU boots an uncompressed ELF
//! `vmlinux` directly when it carries the Xen PVH entry note
//! (`XEN_ELFNOTE_PHYS32_ENTRY`, Linux `CONFIG_PVH`), so `veil guest build`
//! extracts it once and the sim/none VM sandbox boots it (0.3–0.5 s).
//! SNP and TDX keep the bzImage: their firmware loads and measures it.
//!
//! Input is the host's own kernel file, but it is parsed like any outside
//! bytes: bounds-checked header fields, a cap on the decompressed size.

use std::io::Read;

/// Largest decompressed kernel accepted.
pub const MAX_VMLINUX_BYTES: u64 = 512 << 20;

/// `XEN_ELFNOTE_PHYS32_ENTRY`: the PVH entry point QEMU looks for.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Why no PVH kernel could be had from a bzImage.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PvhError {
    #[error("not a bzImage: {0}")]
    NotBzImage(String),
    #[error("the kernel payload is not xz-compressed (the only format extracted)")]
    NotXz,
    #[error("decompressing the kernel payload: {0}")]
    Xz(String),
    #[error("the decompressed kernel is larger than {MAX_VMLINUX_BYTES} bytes")]
    TooLarge,
    #[error("the decompressed kernel is not a PVH-bootable ELF: {0}")]
    NotPvh(String),
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The compressed payload of a bzImage (boot protocol ≥ 2.08:
/// `payload_offset`/`payload_length` after the setup sectors).
pub fn payload(bz: &[u8]) -> Result<&[u8], PvhError> {
    let bad = |s: &str| PvhError::NotBzImage(s.to_string());
    if bz.get(0x202..0x206) != Some(b"HdrS") {
        return Err(bad("no \"HdrS\" setup header at 0x202"));
    }
    let version = u16_at(bz, 0x206).ok_or_else(|| bad("truncated header"))?;
    if version < 0x208 {
        return Err(PvhError::NotBzImage(format!(
            "boot protocol {}.{:02} has no payload fields (needs 2.08)",
            version >> 8,
            version & 0xff
        )));
    }
    let setup_sects = match bz
        .get(0x1f1)
        .copied()
        .ok_or_else(|| bad("truncated header"))?
    {
        0 => 4,
        n => n as usize,
    };
    let offset = u32_at(bz, 0x248).ok_or_else(|| bad("truncated header"))? as usize;
    let length = u32_at(bz, 0x24c).ok_or_else(|| bad("truncated header"))? as usize;
    let start = (setup_sects + 1) * 512 + offset;
    bz.get(start..start.saturating_add(length)).ok_or_else(|| {
        PvhError::NotBzImage(format!(
            "payload {start}+{length} is beyond the file's {} bytes",
            bz.len()
        ))
    })
}

/// Whether `elf` is a 64-bit little-endian ELF with a Xen PVH entry note.
pub fn check_pvh_elf(elf: &[u8]) -> Result<(), PvhError> {
    let bad = |s: String| PvhError::NotPvh(s);
    if elf.get(..6) != Some(b"\x7fELF\x02\x01") {
        return Err(bad("no 64-bit little-endian ELF header".into()));
    }
    let phoff = u64_at(elf, 0x20).ok_or_else(|| bad("truncated".into()))? as usize;
    let phentsize = u16_at(elf, 0x36).ok_or_else(|| bad("truncated".into()))? as usize;
    let phnum = u16_at(elf, 0x38).ok_or_else(|| bad("truncated".into()))? as usize;
    if phentsize < 56 {
        return Err(bad(format!("program header size {phentsize}")));
    }
    for i in 0..phnum {
        let ph = phoff.saturating_add(i.saturating_mul(phentsize));
        let Some(ptype) = u32_at(elf, ph) else {
            return Err(bad(format!("program header {i} beyond the file")));
        };
        if ptype != 4 {
            continue; // PT_NOTE
        }
        let off = u64_at(elf, ph + 8).unwrap_or(u64::MAX) as usize;
        let size = u64_at(elf, ph + 32).unwrap_or(u64::MAX) as usize;
        let Some(notes) = elf.get(off..off.saturating_add(size)) else {
            return Err(bad(format!("note segment {i} beyond the file")));
        };
        let mut at = 0usize;
        while let (Some(namesz), Some(descsz), Some(ntype)) = (
            u32_at(notes, at),
            u32_at(notes, at + 4),
            u32_at(notes, at + 8),
        ) {
            let name_end = at + 12 + namesz as usize;
            if notes.get(at + 12..name_end) == Some(b"Xen\0") && ntype == XEN_ELFNOTE_PHYS32_ENTRY {
                return Ok(());
            }
            let align = |n: usize| n.div_ceil(4) * 4;
            at = at + 12 + align(namesz as usize) + align(descsz as usize);
        }
    }
    Err(bad(
        "no Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY; the kernel needs CONFIG_PVH)".into(),
    ))
}

/// The PVH-bootable `vmlinux` inside bzImage `bz`.
pub fn extract(bz: &[u8]) -> Result<Vec<u8>, PvhError> {
    let p = payload(bz)?;
    if !p.starts_with(b"\xfd7zXZ\x00") {
        return Err(PvhError::NotXz);
    }
    let mut out = Vec::new();
    // XzReader wants an owned reader: copy the (~8 MB) payload.
    xz4rust::XzReader::new(std::io::Cursor::new(p.to_vec()))
        .take(MAX_VMLINUX_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| PvhError::Xz(e.to_string()))?;
    if out.len() as u64 > MAX_VMLINUX_BYTES {
        return Err(PvhError::TooLarge);
    }
    check_pvh_elf(&out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ELF64 with one PT_NOTE segment holding `notes`.
    fn elf_with_notes(notes: &[u8]) -> Vec<u8> {
        let mut e = vec![0u8; 64 + 56];
        e[..6].copy_from_slice(b"\x7fELF\x02\x01");
        e[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        e[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        e[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes());
        e[64..68].copy_from_slice(&4u32.to_le_bytes());
        e[64 + 8..64 + 16].copy_from_slice(&(120u64).to_le_bytes());
        e[64 + 32..64 + 40].copy_from_slice(&(notes.len() as u64).to_le_bytes());
        e.extend_from_slice(notes);
        e
    }

    fn note(name: &[u8], ntype: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend((name.len() as u32).to_le_bytes());
        n.extend((desc.len() as u32).to_le_bytes());
        n.extend(ntype.to_le_bytes());
        n.extend(name);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n.extend(desc);
        n.resize(n.len().div_ceil(4) * 4, 0);
        n
    }

    #[test]
    fn finds_the_pvh_note_among_others() {
        let mut notes = note(b"GNU\0", 3, &[1; 20]);
        notes.extend(note(b"Xen\0", 5, b"linux\0"));
        notes.extend(note(b"Xen\0", 18, &0x100_0000u32.to_le_bytes()));
        assert_eq!(check_pvh_elf(&elf_with_notes(&notes)), Ok(()));
        let e = check_pvh_elf(&elf_with_notes(&note(b"Xen\0", 5, b"x"))).unwrap_err();
        assert!(e.to_string().contains("CONFIG_PVH"), "{e}");
        assert!(check_pvh_elf(b"MZ").is_err());
    }

    #[test]
    fn refuses_what_is_not_a_bzimage() {
        assert!(matches!(payload(&[0; 1024]), Err(PvhError::NotBzImage(_))));
        let mut bz = vec![0u8; 0x1000];
        bz[0x202..0x206].copy_from_slice(b"HdrS");
        bz[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        bz[0x1f1] = 1;
        bz[0x248..0x24c].copy_from_slice(&16u32.to_le_bytes());
        bz[0x24c..0x250].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(payload(&bz).unwrap_err().to_string().contains("beyond"));
        bz[0x24c..0x250].copy_from_slice(&8u32.to_le_bytes());
        assert_eq!(payload(&bz).unwrap().len(), 8);
        assert_eq!(extract(&bz), Err(PvhError::NotXz));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = payload(&data);
            let _ = check_pvh_elf(&data);
            let _ = extract(&data);
        }

        #[test]
        fn arbitrary_notes_never_panic(notes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = check_pvh_elf(&elf_with_notes(&notes));
        }
    }
}

/// The installed Debian kernel (scripts/install-deps.sh), extracted here
/// and by Python's `lzma` (liblzma, the reference implementation): the
/// same bytes, and a PVH entry note.
#[cfg(test)]
#[test]
fn debian_kernel_extracts_like_liblzma() {
    let kernel = super::guest::default_kernel().expect("linux-image-amd64 is installed");
    let bz = std::fs::read(&kernel).unwrap();
    let ours = extract(&bz).unwrap_or_else(|e| panic!("{}: {e}", kernel.display()));
    let p = payload(&bz).unwrap();
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import lzma,sys; sys.stdout.buffer.write(lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(sys.stdin.buffer.read()))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = p.to_vec();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        stdin.write_all(&input).unwrap();
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(out.status.success());
    assert_eq!(ours.len(), out.stdout.len());
    assert!(ours == out.stdout, "xz4rust and liblzma disagree");
}
