//! Untrusted layers: must never panic, write outside the root or change a
//! file outside it (content, mode, owner, mtime) — not even through
//! symlinks, hard links to symlinks, whiteouts or opaque directories, and
//! not in a layer that is refused afterwards.
//!
//! The first byte picks the input's shape: arbitrary bytes as an
//! uncompressed layer, or entries built from the data (kind, name, link
//! target, mode) with absolute, relative and `..` targets aimed at the
//! sentinel, applied as two layers.
#![no_main]

use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use veil_image::Digest;
use veil_image::spec::Compression;
use veil_image::unpack::{UnpackLimits, UnpackStats, apply_layer};

const NAMES: &[&[u8]] = &[
    b"a",
    b"d",
    b"d/x",
    b"d/d/x",
    b"e",
    b"e/x",
    b"a2",
    b"sentinel",
    b"@OUT/sentinel",
    b"d/.wh.x",
    b".wh.d",
    b"d/.wh..wh..opq",
    b"e/.wh.sentinel",
    b"e/.wh..wh..opq",
];
const LINKS: &[&[u8]] = &[
    b"@OUT",
    b"@OUT/sentinel",
    b"/",
    b"..",
    b"../..",
    b"../outside",
    b"../../outside/sentinel",
    b"/../outside/sentinel",
    b"d",
    b"a",
    b"e",
    b"d/..",
    b"/proc/self/root",
];
const KINDS: &[tar::EntryType] = &[
    tar::EntryType::Regular,
    tar::EntryType::Directory,
    tar::EntryType::Symlink,
    tar::EntryType::Link,
];

fn state(p: &Path) -> Option<(Vec<u8>, u32, u32, u32, i64, i64)> {
    let m = std::fs::symlink_metadata(p).ok()?;
    let content = if m.is_file() {
        std::fs::read(p).ok()?
    } else {
        Vec::new()
    };
    Some((
        content,
        m.mode(),
        m.uid(),
        m.gid(),
        m.mtime(),
        m.mtime_nsec(),
    ))
}

fn entries(data: &[u8], out: &[u8]) -> Vec<u8> {
    let expand = |s: &[u8]| match s.strip_prefix(b"@OUT") {
        Some(rest) => [out, rest].concat(),
        None => s.to_vec(),
    };
    let mut t = Vec::new();
    for c in data.chunks_exact(4).take(32) {
        let (name, link) = (
            expand(NAMES[c[1] as usize % NAMES.len()]),
            expand(LINKS[c[2] as usize % LINKS.len()]),
        );
        let mut h = tar::Header::new_old();
        let old = h.as_old_mut();
        if name.len() > old.name.len() || link.len() > old.linkname.len() {
            continue;
        }
        old.name[..name.len()].copy_from_slice(&name);
        old.linkname[..link.len()].copy_from_slice(&link);
        h.set_entry_type(KINDS[c[0] as usize % KINDS.len()]);
        h.set_mode(u32::from(c[3]) << 4 | 0o7);
        h.set_uid(65534);
        h.set_gid(65534);
        h.set_size(1);
        h.set_cksum();
        t.extend_from_slice(h.as_bytes());
        t.extend_from_slice(&[b'z'; 512]);
    }
    t
}

fn apply(root: &Path, layer: &[u8], limits: &UnpackLimits) {
    let mut tar = layer.to_vec();
    tar.extend_from_slice(&[0; 1024]);
    let mut stats = UnpackStats::default();
    let _ = apply_layer(
        Box::new(&tar[..]),
        Compression::None,
        &Digest::sha256(&tar),
        root,
        0,
        limits,
        &mut stats,
    );
}

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    if std::fs::create_dir(&root).is_err()
        || std::fs::create_dir(&outside).is_err()
        || std::fs::write(outside.join("sentinel"), "untouched").is_err()
    {
        return;
    }
    let before = (state(&outside), state(&outside.join("sentinel")));
    let limits = UnpackLimits {
        max_entries: 1000,
        max_bytes: 1 << 22,
        ratio_floor_bytes: 1 << 20,
        max_file_bytes: 1 << 21,
        ..UnpackLimits::default()
    };
    match data.split_first() {
        Some((0, rest)) => {
            let t = entries(rest, outside.as_os_str().as_bytes());
            let split = t.len() / 1024 / 2 * 1024;
            apply(&root, &t[..split], &limits);
            apply(&root, &t[split..], &limits);
        }
        _ => {
            let mut stats = UnpackStats::default();
            let _ = apply_layer(
                Box::new(data),
                Compression::None,
                &Digest::sha256(data),
                &root,
                0,
                &limits,
                &mut stats,
            );
        }
    }
    let entries = std::fs::read_dir(tmp.path())
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(entries, 2, "wrote next to the root");
    assert_eq!(
        (state(&outside), state(&outside.join("sentinel"))),
        before,
        "changed a file outside the root"
    );
});
