//! Arbitrary bytes as an uncompressed layer: must never panic or write
//! outside the root.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_image::Digest;
use veil_image::spec::Compression;
use veil_image::unpack::{UnpackLimits, UnpackStats, apply_layer};

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let root = tmp.path().join("root");
    if std::fs::create_dir(&root).is_err() {
        return;
    }
    let limits = UnpackLimits { max_entries: 1000, max_bytes: 1 << 22, allow_devices: false };
    let mut stats = UnpackStats::default();
    let _ = apply_layer(Box::new(data), Compression::None, &Digest::sha256(data), &root, 0, &limits, &mut stats);
    let entries = std::fs::read_dir(tmp.path()).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 1, "wrote outside the root");
});
