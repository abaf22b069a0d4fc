//! Safe unpacking: real images unpack; malicious tar streams are refused or
//! contained inside the root; arbitrary bytes never escape or panic.

mod common;

use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use veil_image::builder::ImageBuilder;
use veil_image::crypt::jwe::{JweUnwrapper, JweWrapper};
use veil_image::crypt::keys::{PrivateKey, PublicKey};
use veil_image::crypt::{KeyUnwrapper, LayerSelection};
use veil_image::spec::{Compression, Platform};
use veil_image::unpack::{self, UnpackError, UnpackLimits, UnpackStats};
use veil_image::{Digest, OciLayout};

fn entry(name: &[u8], kind: tar::EntryType, link: &[u8], data: &[u8]) -> Vec<u8> {
    entry_with(name, kind, link, data, 0o644, 0)
}

/// A tar entry with a mode and an owner (uid = gid).
fn entry_with(
    name: &[u8],
    kind: tar::EntryType,
    link: &[u8],
    data: &[u8],
    mode: u32,
    owner: u64,
) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name);
        old.linkname[..link.len()].copy_from_slice(link);
    }
    h.set_size(data.len() as u64);
    h.set_mode(mode);
    h.set_uid(owner);
    h.set_gid(owner);
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
    if !tmp.join("outside/sentinel").exists() {
        fs::write(tmp.join("outside/sentinel"), "untouched").unwrap();
    }
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

/// What an escape could change on the host side, for `outside/` and its
/// sentinel.
#[derive(Debug, PartialEq)]
struct HostFile {
    path: &'static str,
    content: Vec<u8>,
    mode: u32,
    owner: (u32, u32),
    mtime: (i64, i64),
}

#[derive(Debug, PartialEq)]
struct HostState(Vec<HostFile>);

fn host_state(tmp: &Path) -> HostState {
    let files = ["outside", "outside/sentinel"].map(|path| {
        let p = tmp.join(path);
        let m = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("{path}: {e}"));
        HostFile {
            path,
            content: if m.is_file() {
                fs::read(&p).unwrap()
            } else {
                Vec::new()
            },
            mode: m.mode(),
            owner: (m.uid(), m.gid()),
            mtime: (m.mtime(), m.mtime_nsec()),
        }
    });
    HostState(files.into())
}

/// `tmp/root` next to `tmp/outside/sentinel`, mode 0640, owned by the test
/// user (root here, so a chown would really happen), with an old mtime on
/// both the file and its directory; their state before any layer.
fn host(tmp: &Path) -> HostState {
    apply(tmp, &tar(&[]), &UnpackLimits::default()).unwrap();
    let sentinel = tmp.join("outside/sentinel");
    fs::set_permissions(&sentinel, fs::Permissions::from_mode(0o640)).unwrap();
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let f = fs::File::options().write(true).open(&sentinel).unwrap();
    f.set_modified(old).unwrap();
    fs::File::open(tmp.join("outside"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    host_state(tmp)
}

fn assert_untouched(tmp: &Path, before: &HostState) {
    assert_contained(tmp);
    assert_eq!(&host_state(tmp), before, "the host side changed");
}

/// `tmp/REL` as an absolute host path, bytes.
fn host_path(tmp: &Path, rel: &str) -> Vec<u8> {
    tmp.join(rel).as_os_str().as_bytes().to_vec()
}

/// A symlink `link -> target` and a hard link `link2` to it owned by
/// nobody with mode 0777: what used to chown (and could chmod) the target.
fn link_to_symlink(link: &str, target: &[u8]) -> Vec<Vec<u8>> {
    vec![
        entry(link.as_bytes(), T::Symlink, target, b""),
        entry_with(
            format!("{link}2").as_bytes(),
            T::Link,
            link.as_bytes(),
            b"",
            0o777,
            65534,
        ),
    ]
}

fn assert_refused_link_to_symlink(r: Result<UnpackStats, UnpackError>) {
    let err = r.unwrap_err();
    assert!(
        matches!(err, UnpackError::Entry { .. }) && err.to_string().contains("symbolic link"),
        "{err}"
    );
}

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

#[test]
fn hard_link_to_a_symlink_cannot_chown_or_chmod_its_target() {
    let tmp = tempfile::tempdir().unwrap();
    let before = host(tmp.path());
    for target in [
        host_path(tmp.path(), "outside/sentinel"),
        b"../outside/sentinel".to_vec(),
        b"/../../outside/sentinel".to_vec(),
    ] {
        let t = tar(&link_to_symlink("evil", &target));
        assert_refused_link_to_symlink(apply(tmp.path(), &t, &UnpackLimits::default()));
        assert_untouched(tmp.path(), &before);
    }
    // Links to directories and missing files are refused too, naming why.
    let t = tar(&[
        entry(b"d/", T::Directory, b"", b""),
        entry(b"hd", T::Link, b"d", b""),
    ]);
    let err = apply(tmp.path(), &t, &UnpackLimits::default()).unwrap_err();
    assert!(err.to_string().contains("a directory"), "{err}");
}

#[test]
fn writes_through_a_directory_symlink_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let before = host(tmp.path());
    let abs = host_path(tmp.path(), "outside");
    for (dlink, lands) in [
        (
            abs.clone(),
            tmp.path()
                .join("root")
                .join(tmp.path().strip_prefix("/").unwrap())
                .join("outside"),
        ),
        (b"../../outside".to_vec(), tmp.path().join("root/outside")),
    ] {
        let mut entries = vec![
            entry(b"d", T::Symlink, &dlink, b""),
            entry_with(b"d/x", T::Regular, b"", b"new", 0o4777, 65534),
            entry_with(b"d/sentinel", T::Regular, b"", b"pwned", 0o777, 65534),
            entry_with(b"d/sub/", T::Directory, b"", b"", 0o777, 65534),
        ];
        // Inside the directory the symlink leads to: the chown-through-a-
        // hard-link attack.
        entries.extend(link_to_symlink(
            "d/evil",
            &host_path(tmp.path(), "outside/sentinel"),
        ));
        let r = apply(tmp.path(), &tar(&entries), &UnpackLimits::default());
        assert_refused_link_to_symlink(r);
        assert_untouched(tmp.path(), &before);
        // What went through the symlink landed inside the root.
        assert_eq!(fs::read(lands.join("sentinel")).unwrap(), b"pwned");
        let x = fs::symlink_metadata(lands.join("x")).unwrap();
        assert_eq!(x.mode() & 0o7777, 0o4777);
        if running_as_root() {
            assert_eq!((x.uid(), x.gid()), (65534, 65534));
        }
        assert!(lands.join("sub").is_dir());
        fs::remove_dir_all(tmp.path().join("root")).unwrap();
    }
}

/// Whether the tests run as root (so ownership is applied).
fn running_as_root() -> bool {
    fs::metadata("/proc/self").map(|m| m.uid()).unwrap_or(1) == 0
}

#[test]
fn symlinks_from_an_earlier_layer_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let before = host(tmp.path());
    let mut lower = vec![
        entry(b"d", T::Symlink, b"/usr", b""),
        entry(b"dout", T::Symlink, &host_path(tmp.path(), "outside"), b""),
        entry(b"up", T::Symlink, b"../../../outside", b""),
    ];
    lower.push(entry(
        b"evil",
        T::Symlink,
        &host_path(tmp.path(), "outside/sentinel"),
        b"",
    ));
    apply(tmp.path(), &tar(&lower), &UnpackLimits::default()).unwrap();
    let upper = tar(&[
        entry(b"d/x", T::Regular, b"", b"in usr"),
        entry_with(b"dout/sentinel", T::Regular, b"", b"pwned", 0o777, 65534),
        entry_with(b"dout/new/", T::Directory, b"", b"", 0o777, 65534),
        entry_with(b"up/sentinel", T::Regular, b"", b"pwned", 0o777, 65534),
        entry_with(b"evil2", T::Link, b"evil", b"", 0o777, 65534),
    ]);
    assert_refused_link_to_symlink(apply(tmp.path(), &upper, &UnpackLimits::default()));
    assert_untouched(tmp.path(), &before);
    let root = tmp.path().join("root");
    // An earlier layer's `d -> /usr` and then `d/x`: `root/usr/x`.
    assert_eq!(fs::read(root.join("usr/x")).unwrap(), b"in usr");
    assert_eq!(fs::read(root.join("outside/sentinel")).unwrap(), b"pwned");
}

#[test]
fn whiteouts_through_symlinks_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let before = host(tmp.path());
    let mut entries = vec![
        entry(b"dout", T::Symlink, &host_path(tmp.path(), "outside"), b""),
        entry(b"dout/.wh.sentinel", T::Regular, b"", b""),
        entry(b"rel", T::Symlink, b"../outside", b""),
        entry(b"rel/.wh.sentinel", T::Regular, b"", b""),
        // A whiteout of a symlink removes the link, not what it points at.
        entry(
            b"f",
            T::Symlink,
            &host_path(tmp.path(), "outside/sentinel"),
            b"",
        ),
        entry(b".wh.f", T::Regular, b"", b""),
        entry(b"dd", T::Symlink, &host_path(tmp.path(), "outside"), b""),
        entry(b".wh.dd", T::Regular, b"", b""),
    ];
    entries.extend(link_to_symlink(
        "evil",
        &host_path(tmp.path(), "outside/sentinel"),
    ));
    let r = apply(tmp.path(), &tar(&entries), &UnpackLimits::default());
    assert_refused_link_to_symlink(r);
    assert_untouched(tmp.path(), &before);
    let root = tmp.path().join("root");
    assert!(fs::symlink_metadata(root.join("f")).is_err());
    assert!(fs::symlink_metadata(root.join("dd")).is_err());
}

#[test]
fn opaque_directories_through_symlinks_stay_inside() {
    let tmp = tempfile::tempdir().unwrap();
    let before = host(tmp.path());
    let inside = format!("{}/outside", tmp.path().display());
    let lower = tar(&[
        entry(format!("{inside}/lower").as_bytes(), T::Regular, b"", b"1"),
        entry(b"outside/lower", T::Regular, b"", b"1"),
    ]);
    apply(tmp.path(), &lower, &UnpackLimits::default()).unwrap();
    let upper = tar(&[
        entry(b"dout", T::Symlink, &host_path(tmp.path(), "outside"), b""),
        entry(b"dout/.wh..wh..opq", T::Regular, b"", b""),
        entry(b"rel", T::Symlink, b"../../outside", b""),
        entry(b"rel/.wh..wh..opq", T::Regular, b"", b""),
    ]);
    apply(tmp.path(), &upper, &UnpackLimits::default()).unwrap();
    assert_untouched(tmp.path(), &before);
    // The opaque markers cleared the directories inside the root.
    let root = tmp.path().join("root");
    assert!(
        !root
            .join(inside.trim_start_matches('/'))
            .join("lower")
            .exists()
    );
    assert!(!root.join("outside/lower").exists());
    // And in an opaque directory, the hard-link attack still changes nothing.
    let mut entries = vec![
        entry(b"o/", T::Directory, b"", b""),
        entry(b"o/.wh..wh..opq", T::Regular, b"", b""),
    ];
    entries.extend(link_to_symlink(
        "o/evil",
        &host_path(tmp.path(), "outside/sentinel"),
    ));
    assert_refused_link_to_symlink(apply(tmp.path(), &tar(&entries), &UnpackLimits::default()));
    assert_untouched(tmp.path(), &before);
}

/// A one-layer uncompressed image of `tar` in `tmp/layout`.
fn image_of(tmp: &Path, tar: &[u8]) -> (OciLayout, veil_image::ResolvedImage) {
    let layout = OciLayout::create(tmp.join("layout")).unwrap();
    let mut b = ImageBuilder::new(&layout);
    b.add_layer_tar(&mut &tar[..], Compression::None).unwrap();
    b.finish("evil").unwrap();
    let img = layout
        .resolve(Some("evil"), &Platform::linux_amd64())
        .unwrap();
    (layout, img)
}

fn staging_dirs(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".veil-unpack"))
        .collect()
}

#[test]
fn a_layer_refused_at_its_end_changes_nothing_outside() {
    let tmp = tempfile::tempdir().unwrap();
    let before = host(tmp.path());
    let sentinel = host_path(tmp.path(), "outside/sentinel");
    // Everything the confinement lets through (so the layer reaches its end)…
    let mut entries = vec![
        entry(b"dout", T::Symlink, &host_path(tmp.path(), "outside"), b""),
        entry_with(b"dout/sentinel", T::Regular, b"", b"pwned", 0o777, 65534),
        entry(b"rel", T::Symlink, b"../../outside", b""),
        entry(b"rel/.wh.sentinel", T::Regular, b"", b""),
        entry(b"rel/.wh..wh..opq", T::Regular, b"", b""),
        entry(b"evil", T::Symlink, &sentinel, b""),
        entry(b"filler", T::Regular, b"", &[b'x'; 4096]),
    ];
    // The layout and the rootfs (and so the staging directory) live in
    // `work`, away from the host side in `tmp`.
    let work = tempfile::tempdir().unwrap();
    let check = |layout: &OciLayout, img: &veil_image::ResolvedImage, name: &str| {
        let rootfs = work.path().join(name);
        let err =
            unpack::unpack_image(layout, img, &rootfs, &[], &UnpackLimits::default()).unwrap_err();
        assert!(err.is_refusal(), "{err}");
        assert!(!rootfs.exists());
        assert_eq!(staging_dirs(work.path()), Vec::<String>::new());
        assert_untouched(tmp.path(), &before);
        err
    };
    // … refused by its diff_id,
    let (layout, mut img) = image_of(work.path(), &tar(&entries));
    img.config.rootfs.diff_ids[0] = Digest::sha256(b"something else");
    let err = check(&layout, &img, "rootfs-diff-id");
    assert!(matches!(err, UnpackError::DiffId { .. }), "{err}");
    // … by its blob digest (same size, one byte changed),
    let (layout, img) = image_of(work.path(), &tar(&entries));
    let blob = layout.blob_path(&img.layers()[0].digest);
    let mut bytes = fs::read(&blob).unwrap();
    let at = bytes.windows(4096).position(|w| w == [b'x'; 4096]).unwrap();
    bytes[at] = b'y';
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&blob, &bytes).unwrap();
    let err = check(&layout, &img, "rootfs-digest");
    assert!(matches!(err, UnpackError::Source(_)), "{err}");
    // … and with the hard link that used to chown the host file before the
    // end of the layer was reached.
    entries.push(entry_with(b"evil2", T::Link, b"evil", b"", 0o777, 65534));
    fs::remove_dir_all(work.path().join("layout")).unwrap();
    let (layout, mut img) = image_of(work.path(), &tar(&entries));
    img.config.rootfs.diff_ids[0] = Digest::sha256(b"something else");
    check(&layout, &img, "rootfs-link");
}

/// A tar of one file `zeros` of `size` zero bytes, streamed.
fn zeros_tar(size: u64) -> impl Read {
    let mut h = tar::Header::new_gnu();
    h.set_path("zeros").unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(T::Regular);
    h.set_cksum();
    let pad = (512 - size % 512) % 512 + 1024;
    std::io::Cursor::new(h.as_bytes().to_vec()).chain(std::io::repeat(0).take(size + pad))
}

/// A zstd frame of [`zeros_tar`]: the header in a raw block, then the zeros
/// as RLE blocks of 128 KiB (4 bytes each), as zstd itself writes them.
fn zstd_zeros_tar(size: u64) -> Vec<u8> {
    const BLOCK: u64 = 128 << 10;
    let block_header = |last: bool, kind: u32, n: u64| -> [u8; 3] {
        let v = u32::from(last) | (kind << 1) | ((n as u32) << 3);
        [v as u8, (v >> 8) as u8, (v >> 16) as u8]
    };
    let mut header = [0u8; 512];
    zeros_tar(0).read_exact(&mut header).unwrap();
    let mut body = Vec::new();
    body.extend_from_slice(&header);
    // Magic, frame header: no content size, no checksum, a 128 KiB window.
    let mut out = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x38];
    out.extend_from_slice(&block_header(false, 0, 512));
    out.extend_from_slice(&body);
    let mut left = size + (512 - size % 512) % 512 + 1024;
    while left > 0 {
        let n = left.min(BLOCK);
        left -= n;
        out.extend_from_slice(&block_header(left == 0, 1, n));
        out.push(0);
    }
    // The header says `size` bytes: rewrite it.
    let mut h = tar::Header::new_gnu();
    h.as_mut_bytes().copy_from_slice(&header);
    h.set_size(size);
    h.set_cksum();
    out[9..9 + 512].copy_from_slice(h.as_bytes());
    out
}

/// Apply a compressed layer; the result and the stats (bytes counted even
/// when refused).
fn apply_blob(
    tmp: &Path,
    blob: &[u8],
    compression: Compression,
    limits: &UnpackLimits,
) -> (Result<(), UnpackError>, UnpackStats) {
    let root = tmp.join("root");
    fs::create_dir_all(&root).unwrap();
    let mut stats = UnpackStats::default();
    let r = unpack::apply_layer(
        Box::new(blob),
        compression,
        &Digest::sha256(b"not checked: refused earlier"),
        &root,
        0,
        limits,
        &mut stats,
    );
    (r, stats)
}

fn assert_limit(err: &UnpackError, field: &str) {
    assert!(
        matches!(err, UnpackError::Limit { field: f, .. } if *f == field) && err.is_refusal(),
        "{err}"
    );
    let msg = err.to_string();
    let flag = match field {
        "max_bytes" => "--max-image-size",
        "max_entries" => "--max-image-entries",
        "max_ratio" => "--max-image-ratio",
        "max_file_bytes" => "--max-image-file-size",
        _ => "[sandbox.unpack_limits]",
    };
    for want in [field, &format!("`[sandbox.unpack_limits] {field}`"), flag] {
        assert!(msg.contains(want), "{msg} lacks {want}");
    }
}

#[test]
fn decompression_bombs_are_refused_early_by_max_ratio() {
    let limits = UnpackLimits::default();
    let slack = 1 << 20;
    // zstd: 1 GiB of zeros in 32 KiB.
    let zst = zstd_zeros_tar(1 << 30);
    assert!(zst.len() < 40_000, "{}", zst.len());
    let tmp = tempfile::tempdir().unwrap();
    let (r, stats) = apply_blob(tmp.path(), &zst, Compression::Zstd, &limits);
    let err = r.unwrap_err();
    assert_limit(&err, "max_ratio");
    assert!(err.to_string().contains("max_ratio = 100"), "{err}");
    // Refused once past the floor, not after the whole GiB.
    assert!(
        stats.bytes <= limits.ratio_floor_bytes + slack,
        "{} bytes decompressed",
        stats.bytes
    );
    // gzip: 256 MiB of zeros in about 256 KiB.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::copy(&mut zeros_tar(256 << 20), &mut gz).unwrap();
    let gz = gz.finish().unwrap();
    let (r, stats) = apply_blob(tmp.path(), &gz, Compression::Gzip, &limits);
    assert_limit(&r.unwrap_err(), "max_ratio");
    assert!(
        stats.bytes <= limits.ratio_floor_bytes + slack,
        "{}",
        stats.bytes
    );
    // A lower floor refuses sooner (beyond the decoder's 32 KiB read-ahead
    // times the ratio); a higher ratio lets the layer through (it is then
    // refused by its diff_id, which apply_blob does not know).
    let low = UnpackLimits {
        ratio_floor_bytes: 8 << 20,
        ..UnpackLimits::default()
    };
    let (r, stats) = apply_blob(tmp.path(), &gz, Compression::Gzip, &low);
    assert_limit(&r.unwrap_err(), "max_ratio");
    assert!(stats.bytes <= (8 << 20) + slack, "{}", stats.bytes);
    let high = UnpackLimits {
        max_ratio: 10_000,
        ..UnpackLimits::default()
    };
    let (r, stats) = apply_blob(tmp.path(), &gz, Compression::Gzip, &high);
    assert!(matches!(r, Err(UnpackError::DiffId { .. })), "{r:?}");
    assert!(stats.bytes > 256 << 20);
}

#[test]
fn byte_entry_and_file_limits_name_their_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let layer = tar(&[entry(b"a", T::Regular, b"", &[1u8; 6000])]);
    // max_bytes counts over all layers: the second layer crosses it.
    let limits = UnpackLimits {
        max_bytes: 14_000,
        ..UnpackLimits::default()
    };
    let root = tmp.path().join("root");
    fs::create_dir_all(&root).unwrap();
    let mut stats = UnpackStats::default();
    let mut apply_again = || {
        unpack::apply_layer(
            Box::new(&layer[..]),
            Compression::None,
            &Digest::sha256(&layer),
            &root,
            0,
            &limits,
            &mut stats,
        )
    };
    apply_again().unwrap();
    let err = apply_again().unwrap_err();
    assert_limit(&err, "max_bytes");
    assert!(err.to_string().contains("14000"), "{err}");
    // max_entries.
    let many: Vec<_> = (0..20)
        .map(|i| entry(format!("f{i}").as_bytes(), T::Regular, b"", b""))
        .collect();
    let limits = UnpackLimits {
        max_entries: 10,
        ..UnpackLimits::default()
    };
    assert_limit(
        &apply(tmp.path(), &tar(&many), &limits).unwrap_err(),
        "max_entries",
    );
    // max_file_bytes: refused from the header, before the file exists.
    let limits = UnpackLimits {
        max_file_bytes: 1000,
        ..UnpackLimits::default()
    };
    let t = tar(&[entry(b"big", T::Regular, b"", &[1u8; 5000])]);
    assert_limit(
        &apply(tmp.path(), &t, &limits).unwrap_err(),
        "max_file_bytes",
    );
    assert!(!tmp.path().join("root/big").exists());
}

#[test]
fn real_layers_pass_the_ratio_limit_from_the_first_byte() {
    // A busybox root filesystem, gzip and zstd, with no ratio floor at all.
    let limits = UnpackLimits {
        ratio_floor_bytes: 0,
        ..UnpackLimits::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    common::busybox_rootfs(&tmp.path().join("src"));
    let mut layer = Vec::new();
    veil_image::builder::write_dir_tar(&tmp.path().join("src"), &mut layer).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::copy(&mut &layer[..], &mut gz).unwrap();
    let zst =
        ruzstd::encoding::compress_to_vec(&layer[..], ruzstd::encoding::CompressionLevel::Fastest);
    for (blob, compression) in [
        (gz.finish().unwrap(), Compression::Gzip),
        (zst, Compression::Zstd),
    ] {
        let root = tmp.path().join(format!("root-{compression:?}"));
        fs::create_dir(&root).unwrap();
        let mut stats = UnpackStats::default();
        unpack::apply_layer(
            Box::new(&blob[..]),
            compression,
            &Digest::sha256(&layer),
            &root,
            0,
            &limits,
            &mut stats,
        )
        .unwrap();
        assert_eq!(
            fs::read(root.join("bin/busybox")).unwrap(),
            fs::read(common::BUSYBOX).unwrap()
        );
    }
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

    #[test]
    fn link_and_symlink_sequences_never_touch_the_host(
        steps in proptest::collection::vec((
            proptest::sample::select(vec![T::Regular, T::Directory, T::Symlink, T::Link, T::Regular]),
            proptest::sample::select(vec![
                &b"a"[..], b"d", b"d/x", b"d/d", b"d/d/x", b"e", b"e/x", b"a2", b"sentinel",
                b"outside/sentinel", b"@OUT", b"@OUT/sentinel", b"d/.wh.x", b".wh.d", b"d/.wh..wh..opq",
                b".wh.e", b"e/.wh..wh..opq", b"e/.wh.sentinel",
            ]),
            proptest::sample::select(vec![
                &b"@OUT"[..], b"@OUT/sentinel", b"/", b"..", b"../..", b"../outside", b"../../outside/sentinel",
                b"/../outside/sentinel", b"d", b"d/x", b"a", b"e", b"e/x", b"d/..", b"/proc/self/root",
                b"outside/sentinel",
            ]),
            0u32..0o10000,
        ), 1..12),
        split in 0usize..12,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        let before = host(tmp.path());
        let out = host_path(tmp.path(), "outside");
        let expand = |s: &[u8]| -> Vec<u8> {
            match s.strip_prefix(b"@OUT") {
                Some(rest) => [&out[..], rest].concat(),
                None => s.to_vec(),
            }
        };
        let entries: Vec<_> = steps
            .iter()
            .map(|(kind, name, link, mode)| {
                entry_with(&expand(name), *kind, &expand(link), b"z", *mode, 65534)
            })
            .collect();
        // Two layers: symlinks of the first are met by the second.
        let (lower, upper) = entries.split_at(split.min(entries.len()));
        let _ = apply(tmp.path(), &tar(lower), &UnpackLimits::default());
        let _ = apply(tmp.path(), &tar(upper), &UnpackLimits::default());
        assert_untouched(tmp.path(), &before);
    }
}
