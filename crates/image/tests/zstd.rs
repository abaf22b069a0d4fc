//! zstd layers written by the real `skopeo` (`--dest-compress-format
//! zstd`) unpack to the same tree as the gzip original, encrypted or not.

mod common;

use std::path::Path;
use std::process::Command;

use veil_image::OciLayout;
use veil_image::crypt::KeyUnwrapper;
use veil_image::crypt::jwe::JweUnwrapper;
use veil_image::crypt::keys::parse_private_key;
use veil_image::spec::{Compression, Platform, layer_kind};
use veil_image::unpack::{self, UnpackLimits};

fn files(root: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if meta.is_dir() {
                stack.push(p);
                out.push((rel, Vec::new()));
            } else if meta.file_type().is_symlink() {
                out.push((
                    rel,
                    std::fs::read_link(&p)
                        .unwrap()
                        .display()
                        .to_string()
                        .into_bytes(),
                ));
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

fn unpack_tag(layout: &Path, tag: &str, to: &Path, keys: &[&dyn KeyUnwrapper]) {
    let l = OciLayout::open(layout).unwrap();
    let img = l.resolve(Some(tag), &Platform::linux_amd64()).unwrap();
    unpack::unpack_image(&l, &img, to, keys, &UnpackLimits::default()).unwrap();
}

#[test]
fn skopeo_zstd_layers_unpack_like_the_gzip_original() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = common::busybox_image(tmp.path(), "v1", Compression::Gzip);
    let src = format!("oci:{}:v1", layout.root().display());
    let zdir = tmp.path().join("zstd");
    common::run(common::skopeo(tmp.path()).args([
        "copy",
        "--quiet",
        "--dest-compress",
        "--dest-compress-format",
        "zstd",
        &src,
        &format!("oci:{}:z", zdir.display()),
    ]));
    let z = OciLayout::open(&zdir)
        .unwrap()
        .resolve(Some("z"), &Platform::linux_amd64())
        .unwrap();
    assert!(z.layers().iter().all(|l| {
        layer_kind(&l.media_type).is_some_and(|k| k.compression == Compression::Zstd)
    }));

    unpack_tag(layout.root(), "v1", &tmp.path().join("from-gzip"), &[]);
    unpack_tag(&zdir, "z", &tmp.path().join("from-zstd"), &[]);
    let a = files(&tmp.path().join("from-gzip"));
    assert!(a.iter().any(|(p, _)| p == "bin/busybox"));
    assert_eq!(a, files(&tmp.path().join("from-zstd")));

    // Encrypted zstd layers (tar+zstd+encrypted) from skopeo.
    common::run(
        Command::new("openssl")
            .args(["genrsa", "-out", "k.pem", "2048"])
            .current_dir(tmp.path()),
    );
    common::run(
        Command::new("openssl")
            .args(["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"])
            .current_dir(tmp.path()),
    );
    common::run(common::skopeo(tmp.path()).args([
        "copy",
        "--quiet",
        "--encryption-key",
        &format!("jwe:{}", tmp.path().join("k.pub").display()),
        &format!("oci:{}:z", zdir.display()),
        &format!("oci:{}:ze", zdir.display()),
    ]));
    let ze = OciLayout::open(&zdir)
        .unwrap()
        .resolve(Some("ze"), &Platform::linux_amd64())
        .unwrap();
    assert!(
        ze.layers()
            .iter()
            .all(|l| l.media_type.ends_with("+zstd+encrypted")),
        "{:?}",
        ze.layers()
    );
    let key = JweUnwrapper::new(vec![
        parse_private_key(&std::fs::read(tmp.path().join("k.pem")).unwrap()).unwrap(),
    ]);
    unpack_tag(&zdir, "ze", &tmp.path().join("from-zstd-enc"), &[&key]);
    assert_eq!(a, files(&tmp.path().join("from-zstd-enc")));
}
