//! Safe unpacking: real images unpack; malicious tar streams are refused or
//! contained inside the root; arbitrary bytes never escape or panic.

mod common;

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use veil_image::Digest;
use veil_image::crypt::jwe::{JweUnwrapper, JweWrapper};
use veil_image::crypt::keys::{PrivateKey, PublicKey};
use veil_image::crypt::{KeyUnwrapper, LayerSelection};
use veil_image::spec::{Compression, Platform};
use veil_image::unpack::{self, UnpackError, UnpackLimits, UnpackStats};

fn entry(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(kind);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut t: Vec<u8> = entries.concat();
    t.extend_from_slice(&[0u8; 1024]);
    t
}

/// Apply `bytes` as one uncompressed layer to `tmp/root`; `tmp/outside`
/// holds a sentinel that must never change.
fn apply(tmp: &Path, bytes: &[u8], limits: &UnpackLimits) -> Result<UnpackStats, UnpackError> {
    let root = tmp.join("root");
    fs::create_dir_all(&root).unwrap();
    fs::create_dir_all(tmp.join("outside")).unwrap();
    fs::write(tmp.join("outside/sentinel"), "untouched").unwrap();
    let mut stats = UnpackStats::default();
    unpack::apply_layer(
        Box::new(bytes),
        Compression::None,
        &Digest::sha256(bytes),
        &root,
        0,
        limits,
        &mut stats,
    )
    .map(|_| stats)
}

fn assert_contained(tmp: &Path) {
    let names: Vec<_> = fs::read_dir(tmp)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names.len(),
        2,
        "something was created next to the root: {names:?}"
    );
    let outside: Vec<_> = fs::read_dir(tmp.join("outside")).unwrap().collect();
    assert_eq!(outside.len(), 1);
    assert_eq!(
        fs::read_to_string(tmp.join("outside/sentinel")).unwrap(),
        "untouched"
    );
}

use tar::EntryType as T;

#[test]
fn dotdot_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tar(&[entry(b"../outside/sentinel", T::Regular, b"", b"pwned")]);
    let err = apply(tmp.path(), &t, &UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("`..`"), "{err}");
    assert_contained(tmp.path());
}

#[test]
fn absolute_paths_are_contained() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tar(&[entry(b"/etc/evil", T::Regular, b"", b"x")]);
    apply(tmp.path(), &t, &UnpackLimits::default()).unwrap();
    assert_eq!(
        fs::read_to_string(tmp.path().join("root/etc/evil")).unwrap(),
        "x"
    );
    assert_contained(tmp.path());
}

#[test]
fn file_through_escaping_symlinks_stays_inside() {
    for target in [&b"/"[..], b"../../..", b"../outside", b"/../../outside"] {
        let tmp = tempfile::tempdir().unwrap();
        let t = tar(&[
            entry(b"link", T::Symlink, target, b""),
            entry(b"link/sentinel", T::Regular, b"", b"pwned"),
        ]);
        apply(tmp.path(), &t, &UnpackLimits::default()).unwrap();
        assert_contained(tmp.path());
        // The symlink itself is kept verbatim (it is only dangerous if followed).
        assert_eq!(
            fs::read_link(tmp.path().join("root/link"))
                .unwrap()
                .as_os_str()
                .len(),
            target.len()
        );
    }
}

#[test]
fn hard_links_outside_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tar(&[entry(b"hl", T::Link, b"../outside/sentinel", b"")]);
    assert!(apply(tmp.path(), &t, &UnpackLimits::default()).is_err());
    // Absolute: resolved inside the root, where it does not exist.
    let t = tar(&[entry(b"hl", T::Link, b"/outside/sentinel", b"")]);
    let err = apply(tmp.path(), &t, &UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("missing"), "{err}");
    // Through a symlink pointing outside: also resolved inside.
    let t = tar(&[
        entry(b"out", T::Symlink, b"../outside", b""),
        entry(b"hl", T::Link, b"out/sentinel", b""),
    ]);
    assert!(apply(tmp.path(), &t, &UnpackLimits::default()).is_err());
    assert_contained(tmp.path());
    // A hard link inside works.
    let t = tar(&[
        entry(b"a", T::Regular, b"", b"data"),
        entry(b"b", T::Link, b"a", b""),
    ]);
    apply(tmp.path(), &t, &UnpackLimits::default()).unwrap();
    assert_eq!(
        fs::read_to_string(tmp.path().join("root/b")).unwrap(),
        "data"
    );
}

#[test]
fn whiteouts_and_opaque_dirs() {
    let tmp = tempfile::tempdir().unwrap();
    let base = tar(&[
        entry(b"d/", T::Directory, b"", b""),
        entry(b"d/old", T::Regular, b"", b"1"),
        entry(b"gone", T::Regular, b"", b"1"),
    ]);
    apply(tmp.path(), &base, &UnpackLimits::default()).unwrap();
    let upper = tar(&[
        entry(b".wh.gone", T::Regular, b"", b""),
        entry(b"d/.wh..wh..opq", T::Regular, b"", b""),
        entry(b"d/new", T::Regular, b"", b"2"),
    ]);
    let stats = apply(tmp.path(), &upper, &UnpackLimits::default()).unwrap();
    assert_eq!(stats.whiteouts, 1);
    let root = tmp.path().join("root");
    assert!(!root.join("gone").exists());
    assert!(!root.join("d/old").exists());
    assert!(root.join("d/new").exists());
    for bad in [&b".wh.."[..], b".wh..."] {
        let t = tar(&[entry(bad, T::Regular, b"", b"")]);
        assert!(apply(tmp.path(), &t, &UnpackLimits::default()).is_err());
    }
    // A whiteout of `..` through a path is refused as `..`.
    let t = tar(&[entry(b"d/../.wh.outside", T::Regular, b"", b"")]);
    assert!(apply(tmp.path(), &t, &UnpackLimits::default()).is_err());
    assert_contained(tmp.path());
}

#[test]
fn devices_refused_unless_allowed_and_loops_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tar(&[entry(b"dev/null", T::Char, b"", b"")]);
    let err = apply(tmp.path(), &t, &UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("device"), "{err}");
    let limits = UnpackLimits {
        allow_devices: true,
        ..Default::default()
    };
    assert_eq!(apply(tmp.path(), &t, &limits).unwrap().skipped_devices, 1);
    let t = tar(&[
        entry(b"a", T::Symlink, b"b", b""),
        entry(b"b", T::Symlink, b"a", b""),
        entry(b"a/x", T::Regular, b"", b""),
    ]);
    let err = apply(tmp.path(), &t, &UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("symbolic links"), "{err}");
}

#[test]
fn entry_and_byte_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let many: Vec<_> = (0..50)
        .map(|i| entry(format!("f{i}").as_bytes(), T::Regular, b"", b""))
        .collect();
    let limits = UnpackLimits {
        max_entries: 10,
        ..Default::default()
    };
    let err = apply(tmp.path(), &tar(&many), &limits).unwrap_err();
    assert!(
        matches!(
            err,
            UnpackError::Limit {
                field: "max_entries",
                ..
            }
        ),
        "{err}"
    );
    let big = tar(&[entry(b"big", T::Regular, b"", &vec![7u8; 100_000])]);
    let limits = UnpackLimits {
        max_bytes: 10_000,
        ..Default::default()
    };
    let err = apply(tmp.path(), &big, &limits).unwrap_err();
    assert!(matches!(err, UnpackError::Limit { .. }), "{err}");
}

#[test]
fn wrong_diff_id_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let t = tar(&[entry(b"a", T::Regular, b"", b"x")]);
    let mut stats = UnpackStats::default();
    let err = unpack::apply_layer(
        Box::new(&t[..]),
        Compression::None,
        &Digest::sha256(b"something else"),
        &root,
        0,
        &UnpackLimits::default(),
        &mut stats,
    )
    .unwrap_err();
    assert!(
        matches!(err, UnpackError::DiffId { .. }) && err.is_refusal(),
        "{err}"
    );
}

#[test]
fn busybox_image_unpacks_plain_and_encrypted() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = common::busybox_image(tmp.path(), "plain", Compression::Gzip);
    let img = layout
        .resolve(Some("plain"), &Platform::linux_amd64())
        .unwrap();
    let rootfs = tmp.path().join("rootfs");
    let stats =
        unpack::unpack_image(&layout, &img, &rootfs, &[], &UnpackLimits::default()).unwrap();
    assert_eq!(stats.layers, 2);
    assert_eq!(
        fs::read(rootfs.join("bin/busybox")).unwrap(),
        fs::read(common::BUSYBOX).unwrap()
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello from veil\n"
    );
    // The unpacked busybox runs.
    let out =
        common::run(std::process::Command::new(rootfs.join("bin/busybox")).args(["echo", "ok"]));
    assert_eq!(out.stdout, b"ok\n");

    let sk = p256::SecretKey::random(&mut rand_core::OsRng);
    let w = JweWrapper::new(vec![PublicKey::P256(sk.public_key())]);
    let enc = common::encrypt_plain(&layout, &w, &LayerSelection::All);
    let u = JweUnwrapper::new(vec![PrivateKey::P256(sk)]);
    let rootfs2 = tmp.path().join("rootfs2");
    unpack::unpack_image(
        &layout,
        &enc,
        &rootfs2,
        &[&u as &dyn KeyUnwrapper],
        &UnpackLimits::default(),
    )
    .unwrap();
    assert_eq!(
        fs::read_to_string(rootfs2.join("app/hello.txt")).unwrap(),
        "hello from veil\n"
    );
    // Without the key: refused, and no rootfs appears.
    let rootfs3 = tmp.path().join("rootfs3");
    let err =
        unpack::unpack_image(&layout, &enc, &rootfs3, &[], &UnpackLimits::default()).unwrap_err();
    assert!(err.is_refusal(), "{err}");
    assert!(!rootfs3.exists());
    let leftovers: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".veil-unpack")
        })
        .collect();
    assert!(leftovers.is_empty());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_escape(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
        let tmp = tempfile::tempdir().unwrap();
        let _ = apply(tmp.path(), &bytes, &UnpackLimits { max_entries: 100, max_bytes: 1 << 20, ..UnpackLimits::default() });
        assert_contained(tmp.path());
    }

    #[test]
    fn arbitrary_entries_never_escape(
        names in proptest::collection::vec(proptest::sample::select(vec![
            &b"a"[..], b"a/b", b"../x", b"/a", b"l", b"l/x", b"l/../../x", b".wh.a", b"a/.wh..wh..opq", b"./a/./b",
        ]), 1..8),
        kinds in proptest::collection::vec(proptest::sample::select(vec![T::Regular, T::Directory, T::Symlink, T::Link]), 8),
        links in proptest::collection::vec(proptest::sample::select(vec![
            &b"/"[..], b"..", b"../outside", b"a", b"l", b"/outside/sentinel", b"../../outside/sentinel",
        ]), 8),
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let entries: Vec<_> = names.iter().enumerate().map(|(i, n)| entry(n, kinds[i], links[i], b"z")).collect();
        let _ = apply(tmp.path(), &tar(&entries), &UnpackLimits::default());
        assert_contained(tmp.path());
    }
}
