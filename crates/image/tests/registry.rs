//! The OCI distribution client against Debian's real `docker-registry`,
//! started on a free loopback port: push and pull round-trip with digests
//! intact (and agree with skopeo), the blob cache is reused and
//! re-verified, tampered registry storage is refused, Basic auth works.

mod common;

use std::path::{Path, PathBuf};

use veil_image::registry::{self, Credentials, Registry};
use veil_image::source::{BlobSource, SourceError};
use veil_image::spec::{Compression, Platform};
use veil_image::{Digest, OciLayout};
use veil_testkit::registry::{DockerRegistry, htpasswd_line};

/// Path of a blob's data file in the registry's storage.
fn blob_file(reg: &DockerRegistry, d: &Digest) -> PathBuf {
    reg.storage().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{}/data",
        &d.hex()[..2],
        d.hex()
    ))
}

fn client(reference: &str) -> Registry {
    Registry::new(&registry::parse_reference(reference).unwrap(), None)
}

fn skopeo_digest(tmp: &Path, reference: &str) -> String {
    let out = common::run(common::skopeo(tmp).args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{reference}"),
    ]));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
fn push_pull_round_trip_keeps_digests_and_agrees_with_skopeo() {
    let reg = DockerRegistry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (layout, desc) = common::busybox_image(tmp.path(), "v1", Compression::Gzip);
    let reference = reg.reference("veil/app:v1");

    let pushed = client(&reference).push(&layout, Some("v1")).unwrap();
    assert_eq!(pushed, desc.digest);
    assert_eq!(
        skopeo_digest(tmp.path(), &reference),
        desc.digest.to_string()
    );
    // Pushing again skips blobs the registry has and changes nothing.
    assert_eq!(
        client(&reference).push(&layout, Some("v1")).unwrap(),
        desc.digest
    );

    // Pull by tag and by digest into a fresh layout.
    let out = OciLayout::create(tmp.path().join("pulled")).unwrap();
    let got = client(&reference).pull_into(&out, "v1").unwrap();
    assert_eq!(got.digest, desc.digest);
    let by_digest = reg.reference(&format!("veil/app@{}", desc.digest));
    let got = client(&by_digest).pull_into(&out, "by-digest").unwrap();
    assert_eq!(got.digest, desc.digest);
    let a = layout
        .resolve(Some("v1"), &Platform::linux_amd64())
        .unwrap();
    let b = out.resolve(Some("v1"), &Platform::linux_amd64()).unwrap();
    assert_eq!(a.manifest_bytes, b.manifest_bytes);
    assert_eq!(a.config_bytes, b.config_bytes);
    assert_eq!(a.layers(), b.layers());

    // What skopeo pushes, veil pulls with the same digest.
    common::run(common::skopeo(tmp.path()).args([
        "copy",
        "--quiet",
        "--dest-tls-verify=false",
        &format!("oci:{}:v1", layout.root().display()),
        &format!("docker://{}", reg.reference("skopeo/app:v1")),
    ]));
    let r = client(&reg.reference("skopeo/app:v1"))
        .resolve(&Platform::linux_amd64())
        .unwrap();
    assert_eq!(
        r.manifest_digest().to_string(),
        skopeo_digest(tmp.path(), &reg.reference("skopeo/app:v1"))
    );

    // A tag that does not exist.
    let e = client(&reg.reference("veil/app:nope"))
        .resolve(&Platform::linux_amd64())
        .unwrap_err();
    assert!(matches!(e, SourceError::NotFound(_)), "{e}");
}

#[test]
fn cache_is_reused_and_tampered_blobs_are_refused() {
    let reg = DockerRegistry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (layout, desc) = common::busybox_image(tmp.path(), "v1", Compression::Gzip);
    let reference = reg.reference("veil/app:v1");
    client(&reference).push(&layout, Some("v1")).unwrap();

    let cache = tmp.path().join("cache");
    let c = client(&reference).with_cache(&cache).unwrap();
    let img = c.resolve(&Platform::linux_amd64()).unwrap();
    assert_eq!(img.manifest_digest(), &desc.digest);
    for l in img.layers() {
        let mut r = c.open_blob(l).unwrap();
        std::io::copy(&mut r, &mut std::io::sink()).unwrap();
        assert!(cache.join("blobs/sha256").join(l.digest.hex()).is_file());
    }

    // Tamper with the top layer in the registry's storage (same size).
    let top = img.layers()[1].clone();
    let f = blob_file(&reg, &top.digest);
    let mut bytes = std::fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&f, &bytes).unwrap();
    // Without the cache: refused, and nothing lands in a layout.
    let out = OciLayout::create(tmp.path().join("pulled")).unwrap();
    let e = client(&reference).pull_into(&out, "v1").unwrap_err();
    assert!(e.is_refusal(), "{e}");
    assert!(e.to_string().contains("digest check failed"), "{e}");
    assert!(!out.has_blob(&top.digest));
    assert!(out.find(Some("v1")).is_err());
    // With the cache: the verified copy is used.
    let c = client(&reference).with_cache(&cache).unwrap();
    let mut r = c.open_blob(&top).unwrap();
    std::io::copy(&mut r, &mut std::io::sink()).unwrap();
    // A corrupted cache entry is refused too (re-verified on every read).
    let cached = cache.join("blobs/sha256").join(top.digest.hex());
    std::fs::write(&cached, &bytes).unwrap();
    let mut r = c.open_blob(&top).unwrap();
    let e = std::io::copy(&mut r, &mut std::io::sink()).unwrap_err();
    assert!(e.to_string().contains("digest check failed"), "{e}");
}

#[test]
fn basic_auth_is_negotiated() {
    // A bcrypt htpasswd entry for veil:s3cret (Debian's apache2-utils).
    let reg = DockerRegistry::start(Some(&htpasswd_line("veil", "s3cret")));
    let tmp = tempfile::tempdir().unwrap();
    let (layout, desc) = common::busybox_image(tmp.path(), "v1", Compression::Gzip);
    let reference = registry::parse_reference(&reg.reference("veil/app:v1")).unwrap();

    // No credentials: refused with the reason.
    let e = Registry::new(&reference, None)
        .push(&layout, Some("v1"))
        .unwrap_err();
    assert!(e.to_string().contains("Basic credentials"), "{e}");
    // From a containers auth.json.
    let auth = tmp.path().join("auth.json");
    std::fs::write(&auth, reg.auth_json("dmVpbDpzM2NyZXQ=")).unwrap();
    let creds = Credentials::from_auth_file(&auth, reg.addr()).unwrap();
    assert!(creds.is_some());
    assert!(!format!("{creds:?}").contains("s3cret"));
    let c = Registry::new(&reference, creds);
    assert_eq!(c.push(&layout, Some("v1")).unwrap(), desc.digest);
    assert_eq!(
        c.resolve(&Platform::linux_amd64())
            .unwrap()
            .manifest_digest(),
        &desc.digest
    );
    // A wrong password.
    std::fs::write(&auth, reg.auth_json("dmVpbDp3cm9uZw==")).unwrap();
    let c = Registry::new(
        &reference,
        Credentials::from_auth_file(&auth, reg.addr()).unwrap(),
    );
    let e = c.resolve(&Platform::linux_amd64()).unwrap_err();
    assert!(e.to_string().contains("access denied"), "{e}");
}
