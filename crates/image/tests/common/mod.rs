//! Helpers shared by the integration tests: test images built locally from
//! Debian's `busybox-static` (installed by scripts/install-deps.sh).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_image::builder::ImageBuilder;
use veil_image::crypt::{self, KeyWrapper, LayerSelection};
use veil_image::spec::{Compression, ContainerConfig, Platform};
use veil_image::{Descriptor, OciLayout, ResolvedImage};

/// Path of the static busybox binary.
pub const BUSYBOX: &str = "/bin/busybox";

/// Make a small root filesystem: busybox plus a few applet links and files.
pub fn busybox_rootfs(dir: &Path) {
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::create_dir_all(dir.join("etc")).unwrap();
    std::fs::copy(BUSYBOX, dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "ls", "cat", "echo"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    std::fs::write(dir.join("etc/hostname"), "veil-test\n").unwrap();
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
}

/// Build a two-layer busybox image tagged `tag` in a new layout under
/// `root`; returns the layout and manifest descriptor.
pub fn busybox_image(root: &Path, tag: &str, compression: Compression) -> (OciLayout, Descriptor) {
    let rootfs = root.join("rootfs-src");
    busybox_rootfs(&rootfs);
    let extra = root.join("extra-src");
    std::fs::create_dir_all(extra.join("app")).unwrap();
    std::fs::write(extra.join("app/hello.txt"), "hello from veil\n").unwrap();

    let layout = OciLayout::create(root.join("layout")).unwrap();
    let mut b = ImageBuilder::new(&layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["cat /app/hello.txt".into()]),
        env: Some(vec!["PATH=/bin".into(), "GREETING=hi".into()]),
        working_dir: Some("/app".into()),
        user: Some("0:0".into()),
        ..Default::default()
    });
    b.add_layer_dir(&rootfs, compression).unwrap();
    b.add_layer_dir(&extra, compression).unwrap();
    let desc = b.finish(tag).unwrap();
    (layout, desc)
}

/// Encrypt the `layers` of `plain` with `wrapper` into `enc` in the same
/// layout; returns `enc` resolved.
pub fn encrypt_plain(
    layout: &OciLayout,
    wrapper: &dyn KeyWrapper,
    layers: &LayerSelection,
) -> ResolvedImage {
    crypt::encrypt_image(layout, Some("plain"), layout, "enc", &[wrapper], layers).unwrap();
    layout
        .resolve(Some("enc"), &Platform::linux_amd64())
        .unwrap()
}

/// Run a command, panicking with its output on failure.
pub use veil_testkit::run_ok as run;

/// `openssl ARGS` in `dir`, which must succeed.
pub fn openssl(args: &[&str], dir: &Path) -> std::process::Output {
    run(Command::new("openssl").args(args).current_dir(dir))
}

/// (private, public) PEM paths for `kind`: rsa, p256, p256-pkcs8, p384.
pub fn keypair(dir: &Path, kind: &str) -> (PathBuf, PathBuf) {
    let (sk, pk) = (format!("{kind}.key"), format!("{kind}.pub"));
    match kind {
        "rsa" => openssl(&["genrsa", "-out", &sk, "2048"], dir),
        // With an "EC PARAMETERS" block first (veil skips it; skopeo can't).
        "p256" => openssl(
            &["ecparam", "-name", "prime256v1", "-genkey", "-out", &sk],
            dir,
        ),
        // PKCS#8: the only EC encoding skopeo's ocicrypt reads.
        "p256-pkcs8" => openssl(
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                &sk,
            ],
            dir,
        ),
        "p384" => openssl(
            &[
                "ecparam",
                "-name",
                "secp384r1",
                "-genkey",
                "-noout",
                "-out",
                &sk,
            ],
            dir,
        ),
        _ => unreachable!(),
    };
    openssl(&["pkey", "-in", &sk, "-pubout", "-out", &pk], dir);
    (dir.join(sk), dir.join(pk))
}

/// `skopeo` with a policy that accepts anything (tests use local images).
pub fn skopeo(tmp: &Path) -> Command {
    let policy = tmp.join("skopeo-policy.json");
    if !policy.exists() {
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .unwrap();
    }
    let mut c = Command::new("skopeo");
    c.arg("--policy").arg(policy);
    c
}

/// Path helper.
pub fn p(path: &Path) -> PathBuf {
    path.to_path_buf()
}
