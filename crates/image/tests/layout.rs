//! Reading OCI layouts: images built here and images written by skopeo
//! resolve to the same verified config; tampered blobs are refused.

mod common;

use std::fs;

use veil_image::source::{BlobSource, SourceError};
use veil_image::spec::{Compression, Index, Platform, media_type};
use veil_image::{Descriptor, Digest, OciLayout, OciRef};

#[test]
fn built_busybox_image_resolves_with_typed_config() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, desc) = common::busybox_image(tmp.path(), "v1", Compression::Gzip);
    let img = layout
        .resolve(Some("v1"), &Platform::linux_amd64())
        .unwrap();
    assert_eq!(img.manifest_digest(), &desc.digest);
    assert_eq!(img.config.entrypoint(), ["/bin/sh", "-c"]);
    assert_eq!(img.config.cmd(), ["cat /app/hello.txt"]);
    assert_eq!(img.config.env(), ["PATH=/bin", "GREETING=hi"]);
    assert_eq!(img.config.working_dir(), "/app");
    assert_eq!(img.config.user(), "0:0");
    assert_eq!(img.layers().len(), 2);
    assert_eq!(img.diff_ids().len(), 2);
    assert!(
        img.layers()
            .iter()
            .all(|l| l.media_type == media_type::OCI_LAYER_TAR_GZIP)
    );
    // The only image: no tag needed.
    let again = layout.resolve(None, &Platform::linux_amd64()).unwrap();
    assert_eq!(again.manifest_digest(), &desc.digest);
    // Whole layer blobs read back verified.
    for l in img.layers() {
        let bytes = layout.read_blob(l, 64 << 20, "layer").unwrap();
        assert!(l.digest.matches(&bytes));
    }
}

#[test]
fn deterministic_layers() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (_, da) = common::busybox_image(a.path(), "x", Compression::None);
    let (_, db) = common::busybox_image(b.path(), "x", Compression::None);
    assert_eq!(da.digest, db.digest);
}

#[test]
fn tampered_layer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = common::busybox_image(tmp.path(), "v1", Compression::None);
    let img = layout
        .resolve(Some("v1"), &Platform::linux_amd64())
        .unwrap();
    let layer = &img.layers()[1];
    let path = layout.blob_path(&layer.digest);
    let mut bytes = fs::read(&path).unwrap();
    bytes[600] ^= 1;
    fs::write(&path, &bytes).unwrap();
    let err = layout.read_blob(layer, 64 << 20, "layer").unwrap_err();
    assert!(matches!(err, SourceError::DigestMismatch { .. }), "{err}");
    assert!(err.is_refusal());
    assert!(err.to_string().contains(&layer.digest.to_string()), "{err}");

    // Appending a byte: size check.
    bytes[600] ^= 1;
    bytes.push(0);
    fs::write(&path, &bytes).unwrap();
    let err = layout.read_blob(layer, 64 << 20, "layer").unwrap_err();
    assert!(matches!(err, SourceError::SizeMismatch { .. }), "{err}");
}

#[test]
fn tampered_config_is_refused_on_resolve() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = common::busybox_image(tmp.path(), "v1", Compression::None);
    let img = layout
        .resolve(Some("v1"), &Platform::linux_amd64())
        .unwrap();
    let path = layout.blob_path(img.config_digest());
    let text = fs::read_to_string(&path)
        .unwrap()
        .replace("GREETING=hi", "GREETING=ho");
    fs::write(&path, text).unwrap();
    let err = layout
        .resolve(Some("v1"), &Platform::linux_amd64())
        .unwrap_err();
    assert!(matches!(err, SourceError::DigestMismatch { .. }), "{err}");
}

#[test]
fn oversized_manifest_descriptor_is_refused_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, desc) = common::busybox_image(tmp.path(), "v1", Compression::None);
    let mut huge = desc.clone();
    huge.size = 1 << 40;
    layout.set_tag("huge", huge).unwrap();
    let err = layout
        .resolve(Some("huge"), &Platform::linux_amd64())
        .unwrap_err();
    assert!(matches!(err, SourceError::TooLarge { .. }), "{err}");
}

#[test]
fn missing_tag_and_wrong_platform_explain() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = common::busybox_image(tmp.path(), "v1", Compression::None);
    let err = layout
        .resolve(Some("nope"), &Platform::linux_amd64())
        .unwrap_err();
    assert!(err.to_string().contains("v1"), "{err}");
    let arm = Platform {
        architecture: "arm64".into(),
        ..Platform::linux_amd64()
    };
    let err = layout.resolve(Some("v1"), &arm).unwrap_err();
    assert!(matches!(err, SourceError::PlatformMismatch { .. }), "{err}");
}

#[test]
fn index_selects_linux_amd64() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, desc) = common::busybox_image(tmp.path(), "v1", Compression::None);
    let other = Descriptor {
        platform: Some(Platform {
            architecture: "arm64".into(),
            ..Platform::linux_amd64()
        }),
        ..Descriptor::new(media_type::OCI_MANIFEST, Digest::sha256(b"missing"), 10)
    };
    let amd = Descriptor {
        platform: Some(Platform::linux_amd64()),
        ..desc.clone()
    };
    let index = Index {
        manifests: vec![other, amd],
        ..Index::default()
    };
    let bytes = serde_json::to_vec(&index).unwrap();
    let idx_desc = layout.write_blob(&bytes, media_type::OCI_INDEX).unwrap();
    layout.set_tag("multi", idx_desc.clone()).unwrap();
    let img = layout
        .resolve(Some("multi"), &Platform::linux_amd64())
        .unwrap();
    assert_eq!(img.manifest_digest(), &desc.digest);
    assert_eq!(img.index_digest.as_ref(), Some(&idx_desc.digest));
    let s390 = Platform {
        architecture: "s390x".into(),
        ..Platform::linux_amd64()
    };
    let err = layout.resolve(Some("multi"), &s390).unwrap_err();
    assert!(err.to_string().contains("linux/arm64"), "{err}");
}

#[test]
fn reads_layouts_written_by_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, desc) = common::busybox_image(tmp.path(), "v1", Compression::Gzip);
    let src = OciRef::parse(&format!("oci:{}:v1", tmp.path().join("layout").display())).unwrap();
    let dst = tmp.path().join("copied");
    common::run(
        common::skopeo(tmp.path())
            .args(["copy", "--quiet"])
            .arg(src.to_string())
            .arg(format!("oci:{}:copy", dst.display())),
    );
    let layout = OciLayout::open(&dst).unwrap();
    let img = layout
        .resolve(Some("copy"), &Platform::linux_amd64())
        .unwrap();
    // skopeo keeps OCI manifests byte-for-byte when nothing changes.
    assert_eq!(img.manifest_digest(), &desc.digest);
    assert_eq!(img.config.cmd(), ["cat /app/hello.txt"]);
    // And skopeo reads ours: its view of the digest matches.
    let out = common::run(
        common::skopeo(tmp.path())
            .args(["inspect", "--raw"])
            .arg(src.to_string()),
    );
    assert_eq!(Digest::sha256(&out.stdout), desc.digest);
}
