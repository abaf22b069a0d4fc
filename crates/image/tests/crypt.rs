//! ocicrypt interop with the real `skopeo`: images encrypted by skopeo
//! decrypt with veil to the original layers and the other way round; a
//! tampered layer or a wrong key is refused with nothing committed.

mod common;

use std::path::Path;
use std::process::Command;

use veil_image::crypt::jwe::{JweUnwrapper, JweWrapper};
use veil_image::crypt::kbs::{KbsUnwrapper, KbsWrapper, LocalKeks, ResourceUri};
use veil_image::crypt::keys::{parse_private_key, parse_public_key};
use veil_image::crypt::{self, CryptError, KeyUnwrapper, KeyWrapper, LayerSelection};
use veil_image::source::BlobSource;
use veil_image::spec::{Compression, Platform};
use veil_image::{OciLayout, ResolvedImage};

fn resolve(layout: &Path, tag: &str) -> ResolvedImage {
    OciLayout::open(layout)
        .unwrap()
        .resolve(Some(tag), &Platform::linux_amd64())
        .unwrap()
}

fn wrapper(pk: &Path) -> JweWrapper {
    JweWrapper::new(vec![parse_public_key(&std::fs::read(pk).unwrap()).unwrap()])
}

/// `skopeo copy` of `oci:SRC:plain` to `oci:SRC:enc`, encrypted for `pk`.
fn skopeo_encrypt(tmp: &Path, pk: &Path, src: &Path) {
    common::run(
        common::skopeo(tmp)
            .args(["copy", "--quiet", "--encryption-key"])
            .arg(format!("jwe:{}", pk.display()))
            .arg(format!("oci:{}:plain", src.display()))
            .arg(format!("oci:{}:enc", src.display())),
    );
}

/// `skopeo copy` of `oci:SRC:TAG` to `oci:DST:dec`, decrypted with `sk`.
fn skopeo_decrypt(tmp: &Path, sk: &Path, src: &Path, tag: &str, dst: &Path) -> Command {
    let mut c = common::skopeo(tmp);
    c.args(["copy", "--quiet", "--decryption-key"])
        .arg(sk)
        .arg(format!("oci:{}:{tag}", src.display()))
        .arg(format!("oci:{}:dec", dst.display()));
    c
}

fn unwrapper(key: &Path) -> JweUnwrapper {
    JweUnwrapper::new(vec![
        parse_private_key(&std::fs::read(key).unwrap()).unwrap(),
    ])
}

fn assert_same_layers(a: &ResolvedImage, b: &ResolvedImage) {
    let da: Vec<_> = a
        .layers()
        .iter()
        .map(|l| (&l.digest, l.size, &l.media_type))
        .collect();
    let db: Vec<_> = b
        .layers()
        .iter()
        .map(|l| (&l.digest, l.size, &l.media_type))
        .collect();
    assert_eq!(da, db);
    assert_eq!(a.config_digest(), b.config_digest());
}

#[test]
fn skopeo_encrypted_images_decrypt_with_veil() {
    for kind in ["rsa", "p256", "p384"] {
        let tmp = tempfile::tempdir().unwrap();
        let (sk, pk) = common::keypair(tmp.path(), kind);
        common::busybox_image(tmp.path(), "plain", Compression::Gzip);
        let src = tmp.path().join("layout");
        skopeo_encrypt(tmp.path(), &pk, &src);
        let enc = resolve(&src, "enc");
        assert!(
            enc.layers()
                .iter()
                .all(|l| l.media_type.ends_with("+gzip+encrypted")),
            "{kind}"
        );

        let layout = OciLayout::open(&src).unwrap();
        let out = OciLayout::create(tmp.path().join("out")).unwrap();
        crypt::decrypt_image(&layout, Some("enc"), &out, "dec", &[&unwrapper(&sk)]).unwrap();
        assert_same_layers(
            &resolve(&tmp.path().join("out"), "dec"),
            &resolve(&src, "plain"),
        );
    }
}

#[test]
fn veil_encrypted_images_decrypt_with_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let (rsa_sk, rsa_pk) = common::keypair(tmp.path(), "rsa");
    let (ec_sk, ec_pk) = common::keypair(tmp.path(), "p256-pkcs8");
    let (layout, _) = common::busybox_image(tmp.path(), "plain", Compression::Gzip);
    let wrapper = JweWrapper::new(vec![
        parse_public_key(&std::fs::read(&rsa_pk).unwrap()).unwrap(),
        parse_public_key(&std::fs::read(&ec_pk).unwrap()).unwrap(),
    ]);
    let enc = common::encrypt_plain(&layout, &wrapper, &LayerSelection::All);
    let src = tmp.path().join("layout");
    assert!(
        enc.layers()
            .iter()
            .all(|l| l.media_type.ends_with("+encrypted"))
    );
    // skopeo can't read them without a key…
    let no_key = common::skopeo(tmp.path())
        .args(["copy", "--quiet"])
        .arg(format!("oci:{}:enc", src.display()))
        .arg(format!("oci:{}:nokey", tmp.path().join("x").display()))
        .output()
        .unwrap();
    // (skopeo copies encrypted layers as-is without a key; they stay encrypted.)
    if no_key.status.success() {
        let copied = resolve(&tmp.path().join("x"), "nokey");
        assert!(
            copied
                .layers()
                .iter()
                .all(|l| l.media_type.ends_with("+encrypted"))
        );
    }
    // …and decrypts them with either key to the original layers.
    for (i, sk) in [rsa_sk, ec_sk].iter().enumerate() {
        let dst = tmp.path().join(format!("skopeo-dec-{i}"));
        common::run(&mut skopeo_decrypt(tmp.path(), sk, &src, "enc", &dst));
        assert_same_layers(&resolve(&dst, "dec"), &resolve(&src, "plain"));
    }
}

#[test]
fn selected_layers_only() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, pk) = common::keypair(tmp.path(), "p256");
    let (layout, _) = common::busybox_image(tmp.path(), "plain", Compression::None);
    let enc = common::encrypt_plain(&layout, &wrapper(&pk), &LayerSelection::Indexes(vec![-1]));
    let plain = resolve(&tmp.path().join("layout"), "plain");
    assert_eq!(enc.layers()[0], plain.layers()[0]);
    assert!(enc.layers()[1].media_type.ends_with("tar+encrypted"));
}

/// Replace layer `i` of `tag` by `bytes` (fixing the descriptor, as an
/// attacker who controls the registry can) and tag the result `evil`.
fn swap_layer_blob(layout: &OciLayout, tag: &str, i: usize, bytes: &[u8]) {
    let img = layout.resolve(Some(tag), &Platform::linux_amd64()).unwrap();
    let mut manifest = img.manifest.clone();
    let new = layout
        .write_blob(bytes, &manifest.layers[i].media_type)
        .unwrap();
    manifest.layers[i].digest = new.digest;
    manifest.layers[i].size = new.size;
    tag_manifest(layout, &manifest, "evil");
}

/// Write `manifest` into `layout` and tag it `tag`.
fn tag_manifest(layout: &OciLayout, manifest: &impl serde::Serialize, tag: &str) {
    let mbytes = serde_json::to_vec(manifest).unwrap();
    let desc = layout
        .write_blob(&mbytes, veil_image::spec::media_type::OCI_MANIFEST)
        .unwrap();
    layout.set_tag(tag, desc).unwrap();
}

#[test]
fn tampered_ciphertext_is_refused_and_nothing_is_committed() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = common::keypair(tmp.path(), "rsa");
    let (layout, _) = common::busybox_image(tmp.path(), "plain", Compression::None);
    let enc = common::encrypt_plain(&layout, &wrapper(&pk), &LayerSelection::All);
    let mut blob = layout
        .read_blob(&enc.layers()[0], 64 << 20, "layer")
        .unwrap();
    let mid = blob.len() / 2;
    blob[mid] ^= 0x01;
    swap_layer_blob(&layout, "enc", 0, &blob);

    let out_dir = tmp.path().join("out");
    let out = OciLayout::create(&out_dir).unwrap();
    let err =
        crypt::decrypt_image(&layout, Some("evil"), &out, "dec", &[&unwrapper(&sk)]).unwrap_err();
    assert!(
        matches!(
            err,
            CryptError::Refused {
                check: "layer HMAC",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_refusal());
    // No tag, and no decrypted blob under any digest.
    assert!(out.index().unwrap().manifests.is_empty());
    let blobs: Vec<_> = std::fs::read_dir(out_dir.join("blobs/sha256"))
        .unwrap()
        .collect();
    assert!(blobs.is_empty(), "{blobs:?}");
    // skopeo agrees the layer is bad.
    let st = skopeo_decrypt(
        tmp.path(),
        &sk,
        &tmp.path().join("layout"),
        "evil",
        &tmp.path().join("sk"),
    )
    .output()
    .unwrap();
    assert!(!st.status.success());
}

#[test]
fn wrong_key_is_refused_with_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, pk) = common::keypair(tmp.path(), "p256");
    let (other_sk, _) = common::keypair(tmp.path(), "rsa");
    let (layout, _) = common::busybox_image(tmp.path(), "plain", Compression::None);
    common::encrypt_plain(&layout, &wrapper(&pk), &LayerSelection::All);
    let out = OciLayout::create(tmp.path().join("out")).unwrap();
    let err = crypt::decrypt_image(&layout, Some("enc"), &out, "dec", &[&unwrapper(&other_sk)])
        .unwrap_err();
    assert!(matches!(err, CryptError::NoKey(_)), "{err}");
    assert!(err.to_string().contains("jwe"), "{err}");
}

#[test]
fn kbs_key_provider_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, _) = common::busybox_image(tmp.path(), "plain", Compression::Gzip);
    let kid = ResourceUri::parse("kbs:///default/key/image-kek").unwrap();
    let kek = [0x42u8; 32];
    let w = KbsWrapper::new(kid.clone(), &kek).unwrap();
    let enc = common::encrypt_plain(&layout, &w, &LayerSelection::All);
    for l in enc.layers() {
        let v = &l.annotations[veil_image::crypt::kbs::ANNOTATION_PROVIDER_AA];
        use base64::Engine as _;
        let packet: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(v).unwrap())
                .unwrap();
        assert_eq!(packet["kid"], "kbs:///default/key/image-kek");
        assert_eq!(packet["wrap_type"], "A256GCM");
    }
    let keks = LocalKeks::from_json(
        format!(r#"{{"default/key/image-kek":"{}"}}"#, {
            use base64::Engine as _;
            base64::engine::general_purpose::STANDARD.encode(kek)
        })
        .as_bytes(),
    )
    .unwrap();
    let u = KbsUnwrapper::new(keks);
    let out = OciLayout::create(tmp.path().join("out")).unwrap();
    crypt::decrypt_image(
        &layout,
        Some("enc"),
        &out,
        "dec",
        &[&u as &dyn KeyUnwrapper],
    )
    .unwrap();
    assert_same_layers(
        &resolve(&tmp.path().join("out"), "dec"),
        &resolve(&tmp.path().join("layout"), "plain"),
    );
    // The KBS does not hold the key: refused, naming the resource.
    let u = KbsUnwrapper::new(LocalKeks::default());
    let err = crypt::decrypt_image(
        &layout,
        Some("enc"),
        &out,
        "dec2",
        &[&u as &dyn KeyUnwrapper],
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("kbs:///default/key/image-kek"),
        "{err}"
    );
}

/// Point the wrapped private options of layer `i` of `tag` at `digest`
/// (re-wrapped for `pk`, as someone holding the layer key could) and tag
/// the result `lying`.
fn rewrap_with_digest(
    layout: &OciLayout,
    tag: &str,
    i: usize,
    sk: &Path,
    pk: &Path,
    digest: &veil_image::Digest,
) {
    use base64::Engine as _;
    let img = layout.resolve(Some(tag), &Platform::linux_amd64()).unwrap();
    let mut manifest = img.manifest.clone();
    let layer = &mut manifest.layers[i];
    let mut opts = crypt::unwrap_options(layer, &[&unwrapper(sk)]).unwrap();
    opts.digest = digest.clone();
    let w = wrapper(pk);
    let blob = w.wrap(&opts.to_json()).unwrap();
    layer.annotations.insert(
        w.annotation_key(),
        base64::engine::general_purpose::STANDARD.encode(blob),
    );
    tag_manifest(layout, &manifest, "lying");
}

/// skopeo compresses an uncompressed layer before encrypting it and puts
/// the *uncompressed* digest in the private options (containers/image
/// behaviour): veil decrypts it to what skopeo decrypts it to, and
/// unpacks it; private options naming another digest are refused.
#[test]
fn skopeo_encrypted_uncompressed_layers_decrypt_like_skopeo() {
    let tmp = tempfile::tempdir().unwrap();
    let (sk, pk) = common::keypair(tmp.path(), "rsa");
    let (layout, _) = common::busybox_image(tmp.path(), "plain", Compression::None);
    let src = tmp.path().join("layout");
    skopeo_encrypt(tmp.path(), &pk, &src);
    let enc = resolve(&src, "enc");
    assert!(
        enc.layers()
            .iter()
            .all(|l| l.media_type.ends_with("tar+gzip+encrypted")),
        "skopeo compressed before encrypting: {:?}",
        enc.layers()
    );
    // The private options name the uncompressed layer (the diff_id).
    let opts = crypt::unwrap_options(&enc.layers()[0], &[&unwrapper(&sk)]).unwrap();
    assert_eq!(&opts.digest, &enc.diff_ids()[0]);

    let out = OciLayout::create(tmp.path().join("out")).unwrap();
    crypt::decrypt_image(&layout, Some("enc"), &out, "dec", &[&unwrapper(&sk)]).unwrap();
    common::run(&mut skopeo_decrypt(
        tmp.path(),
        &sk,
        &src,
        "enc",
        &tmp.path().join("sk"),
    ));
    assert_same_layers(
        &resolve(&tmp.path().join("out"), "dec"),
        &resolve(&tmp.path().join("sk"), "dec"),
    );
    // Unpacking the encrypted image directly works too.
    let rootfs = tmp.path().join("rootfs");
    veil_image::unpack::unpack_image(
        &layout,
        &enc,
        &rootfs,
        &[&unwrapper(&sk)],
        &veil_image::unpack::UnpackLimits::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello from veil\n"
    );

    // Private options that name neither the blob nor its content: refused,
    // by decrypt and by unpack, with nothing committed.
    let other = veil_image::Digest::sha256(b"something else");
    rewrap_with_digest(&layout, "enc", 0, &sk, &pk, &other);
    let out2_dir = tmp.path().join("out2");
    let out2 = OciLayout::create(&out2_dir).unwrap();
    let err =
        crypt::decrypt_image(&layout, Some("lying"), &out2, "dec", &[&unwrapper(&sk)]).unwrap_err();
    assert!(
        matches!(
            err,
            CryptError::Refused {
                check: "decrypted layer digest",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains(&other.to_string()), "{err}");
    assert!(out2.index().unwrap().manifests.is_empty());
    let lying = resolve(&src, "lying");
    let err = veil_image::unpack::unpack_image(
        &layout,
        &lying,
        &tmp.path().join("rootfs2"),
        &[&unwrapper(&sk)],
        &veil_image::unpack::UnpackLimits::default(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("decrypted layer digest"), "{err}");
    assert!(!tmp.path().join("rootfs2").exists());
}
