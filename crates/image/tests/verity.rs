//! `veil image measure` against the real `veritysetup format`: same root
//! hash and byte-identical hash device for many sizes and parameter sets.

use std::fs::{self, File, OpenOptions};
use std::path::Path;
use std::process::Command;

use veil_image::verity::{self, VerityHash, VerityParams};

const UUID: &str = "12345678-9abc-4def-8123-456789abcdef";

fn veritysetup(data: &Path, hash: &Path, p: &VerityParams) -> String {
    let mut c = Command::new("veritysetup");
    c.arg("format").arg(data).arg(hash);
    c.arg(format!("--hash={}", p.hash.name()));
    c.arg(format!("--data-block-size={}", p.data_block_size));
    c.arg(format!("--hash-block-size={}", p.hash_block_size));
    c.arg(format!("--format={}", p.format));
    if p.salt.is_empty() {
        c.arg("--salt=-");
    } else {
        c.arg(format!("--salt={}", hex::encode(&p.salt)));
    }
    if let Some(n) = p.data_blocks {
        c.arg(format!("--data-blocks={n}"));
    }
    if p.superblock {
        c.arg(format!("--uuid={UUID}"));
    } else {
        c.arg("--no-superblock");
    }
    let out = c
        .output()
        .expect("veritysetup runs (scripts/install-deps.sh installs cryptsetup-bin)");
    assert!(
        out.status.success(),
        "veritysetup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .expect("veritysetup prints the root hash")
}

fn data_file(dir: &Path, size: usize, seed: u8) -> std::path::PathBuf {
    // Deterministic, non-repeating content (so block swaps change the hash).
    let mut bytes = Vec::with_capacity(size);
    let mut x: u32 = 0x9e37_79b9 ^ u32::from(seed);
    while bytes.len() < size {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    bytes.truncate(size);
    let path = dir.join(format!("data-{size}-{seed}"));
    fs::write(&path, bytes).unwrap();
    path
}

fn check(dir: &Path, size: usize, p: &VerityParams, threads: usize) {
    let data = data_file(dir, size, p.salt.len() as u8);
    let ours_path = dir.join("ours.hash");
    let theirs_path = dir.join("theirs.hash");
    let _ = fs::remove_file(&ours_path);
    let _ = fs::remove_file(&theirs_path);
    let expected = veritysetup(&data, &theirs_path, p);
    let out = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&ours_path)
        .unwrap();
    let tree = verity::format_with_threads(&File::open(&data).unwrap(), &out, p, threads).unwrap();
    assert_eq!(
        hex::encode(&tree.root_hash),
        expected,
        "root hash for size {size}, {p:?}"
    );
    let ours = fs::read(&ours_path).unwrap();
    let theirs = fs::read(&theirs_path).unwrap();
    assert_eq!(
        ours.len(),
        theirs.len(),
        "hash device size for size {size}, {p:?}"
    );
    assert!(
        ours == theirs,
        "hash device bytes differ for size {size}, {p:?}"
    );
    assert_eq!(tree.hash_device_size, theirs.len() as u64);
}

fn params(
    hash: VerityHash,
    dbs: u32,
    hbs: u32,
    salt: &[u8],
    format: u32,
    superblock: bool,
) -> VerityParams {
    VerityParams {
        hash,
        data_block_size: dbs,
        hash_block_size: hbs,
        salt: salt.to_vec(),
        format,
        data_blocks: None,
        superblock,
        uuid: verity::parse_uuid(UUID).unwrap(),
    }
}

#[test]
fn default_parameters_many_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let salt = [0x5a; 32];
    // One block, two, a partial trailing block, exactly one full hash block
    // of digests (128), one more (two levels), and a larger odd size.
    for size in [
        4096,
        8192,
        10_000,
        128 * 4096,
        129 * 4096,
        3 * 1024 * 1024 + 777,
    ] {
        check(
            dir.path(),
            size,
            &params(VerityHash::Sha256, 4096, 4096, &salt, 1, true),
            2,
        );
    }
}

#[test]
fn parameter_sets() {
    let dir = tempfile::tempdir().unwrap();
    let size = 700 * 1024 + 5;
    for hash in [VerityHash::Sha1, VerityHash::Sha256, VerityHash::Sha512] {
        for (dbs, hbs) in [(4096, 4096), (512, 1024), (1024, 4096), (4096, 512)] {
            for salt in [&[][..], &[1, 2, 3, 4, 5, 6, 7][..], &[0xab; 256][..]] {
                for superblock in [true, false] {
                    check(
                        dir.path(),
                        size,
                        &params(hash, dbs, hbs, salt, 1, superblock),
                        2,
                    );
                }
            }
        }
    }
}

#[test]
fn chrome_os_format_zero() {
    let dir = tempfile::tempdir().unwrap();
    for hash in [VerityHash::Sha1, VerityHash::Sha256] {
        check(
            dir.path(),
            300 * 1024,
            &params(hash, 4096, 4096, &[9; 16], 0, false),
            2,
        );
        check(
            dir.path(),
            300 * 1024,
            &params(hash, 4096, 4096, &[9; 16], 0, true),
            2,
        );
    }
}

#[test]
fn explicit_data_blocks_and_thread_counts_agree() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = params(VerityHash::Sha256, 4096, 4096, &[7; 32], 1, true);
    p.data_blocks = Some(200);
    check(dir.path(), 1024 * 1024, &p, 2);
    p.data_blocks = None;
    for threads in [1, 3, 7] {
        check(dir.path(), 2 * 1024 * 1024 + 4096, &p, threads);
    }
}

#[test]
fn changed_data_changes_root() {
    let dir = tempfile::tempdir().unwrap();
    let p = params(VerityHash::Sha256, 4096, 4096, &[], 1, false);
    let data = data_file(dir.path(), 64 * 4096, 1);
    let a = verity::root_hash(&File::open(&data).unwrap(), &p).unwrap();
    let mut bytes = fs::read(&data).unwrap();
    bytes[40 * 4096 + 17] ^= 0x80;
    fs::write(&data, bytes).unwrap();
    let b = verity::root_hash(&File::open(&data).unwrap(), &p).unwrap();
    assert_ne!(a.root_hash, b.root_hash);
}

#[test]
fn too_small_device_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_file(dir.path(), 100, 0);
    let p = params(VerityHash::Sha256, 4096, 4096, &[], 1, true);
    let err = verity::root_hash(&File::open(&data).unwrap(), &p).unwrap_err();
    assert!(
        err.to_string()
            .contains("less than one 4096-byte data block"),
        "{err}"
    );
}
