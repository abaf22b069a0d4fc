//! Policy generation with images resolved through a real registry
//! (Debian's `docker-registry`, started on a free loopback port): the
//! digests pinned are the digests pushed, a mirror gives byte-identical
//! init-data to the OCI-layout path, indexes select linux/amd64, pinned
//! digests are enforced, credentials come from an auth.json, and images
//! that cannot be resolved are clear errors.

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_image::builder::ImageBuilder;
use veil_image::registry::{self, Registry};
use veil_image::spec::{Compression, ContainerConfig, Descriptor, Platform, media_type};
use veil_image::{Digest, OciLayout};
use veil_policy::generate::{GenerateError, LayoutResolver, RegistryResolver, generate};
use veil_policy::initdata::{INIT_DATA_ANNOTATION, ParsedInitData, decode_annotation};
use veil_policy::settings::Settings;
use veil_testkit::registry::{DockerRegistry, htpasswd_line};

const DATA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data");

/// A client for `repo_tag` in `reg`.
fn client(reg: &DockerRegistry, repo_tag: &str) -> Registry {
    Registry::new(
        &registry::parse_reference(&reg.reference(repo_tag)).unwrap(),
        None,
    )
}

/// Build a one-layer image for `platform` with `env` in `layout`, tagged `tag`.
fn build(layout: &OciLayout, tmp: &Path, tag: &str, platform: Platform, env: &str) -> Descriptor {
    let src = tmp.join(format!("src-{tag}"));
    std::fs::create_dir_all(src.join("app")).unwrap();
    std::fs::write(src.join("app/hello.txt"), format!("{tag}\n")).unwrap();
    let mut b = ImageBuilder::new(layout);
    b.platform(platform);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/app".into()]),
        cmd: Some(vec!["--serve".into()]),
        env: Some(vec!["PATH=/bin".into(), env.into()]),
        working_dir: Some("/app".into()),
        ..Default::default()
    });
    b.add_layer_dir(&src, Compression::Gzip).unwrap();
    b.finish(tag).unwrap()
}

/// Build a linux/amd64 image tagged `tag` with `env` and push it as
/// `veil/app:v1`; the pushed digest is the built one.
fn build_and_push(
    reg: &DockerRegistry,
    layout: &OciLayout,
    tmp: &Path,
    tag: &str,
    env: &str,
) -> Digest {
    let desc = build(layout, tmp, tag, Platform::linux_amd64(), env);
    let pushed = client(reg, "veil/app:v1").push(layout, Some(tag)).unwrap();
    assert_eq!(pushed, desc.digest);
    pushed
}

fn pod(image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: app\nspec:\n  containers:\n  - name: app\n    image: {image}\n"
    )
}

/// The one container's pinned digest and env rules of a generated pod.
fn pinned(yaml: &str, resolver: &RegistryResolver) -> Result<(String, Vec<String>), GenerateError> {
    let g = generate(&[yaml], resolver, &Settings::default())?;
    let c = &g.workloads[0].policy.containers[0];
    let env = c
        .env
        .iter()
        .map(|e| format!("{}={}", e.name, e.value))
        .collect();
    Ok((c.image.digest.clone(), env))
}

#[test]
fn pinned_digest_is_the_pushed_digest() {
    let reg = DockerRegistry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let layout = OciLayout::create(tmp.path().join("layout")).unwrap();
    let pushed = build_and_push(&reg, &layout, tmp.path(), "v1", "APP=one");

    let direct = RegistryResolver::new(None, None).unwrap();
    let image = reg.reference("veil/app:v1");
    let g = generate(&[&pod(&image)], &direct, &Settings::default()).unwrap();
    let w = &g.workloads[0];
    let c = &w.policy.containers[0];
    assert_eq!(c.image.digest, pushed.to_string());
    assert_eq!(c.image.reference, image);
    assert_eq!(c.args, ["/bin/app", "--serve"]);
    assert!(c.env.iter().any(|e| e.name == "APP" && e.value == "one"));
    // The annotation in the output YAML carries exactly this init-data.
    let out: serde_json::Value = yaml_value(&g.output_yaml);
    let ann = out["metadata"]["annotations"][INIT_DATA_ANNOTATION]
        .as_str()
        .unwrap();
    assert_eq!(decode_annotation(ann).unwrap(), w.init_data_toml.as_bytes());
    assert!(w.init_data_toml.contains(pushed.hex()));

    // Pinned by digest, and through a mirror (the reference names another
    // registry; the repository path is kept).
    let by_digest = format!("{}/veil/app@{pushed}", reg.addr());
    assert_eq!(
        pinned(&pod(&by_digest), &direct).unwrap().0,
        pushed.to_string()
    );
    let mirror = RegistryResolver::new(Some(reg.addr()), None).unwrap();
    assert_eq!(
        pinned(&pod("registry.example/veil/app:v1"), &mirror)
            .unwrap()
            .0,
        pushed.to_string()
    );

    // A new push under the same tag moves the pin.
    let pushed2 = build_and_push(&reg, &layout, tmp.path(), "v2", "APP=two");
    let fresh = RegistryResolver::new(None, None).unwrap();
    let (d, env) = pinned(&pod(&image), &fresh).unwrap();
    assert_eq!(d, pushed2.to_string());
    assert!(env.contains(&"APP=two".to_string()), "{env:?}");
}

fn yaml_value(text: &str) -> serde_json::Value {
    // The output is a single document here; its keys are sorted JSON-compatible YAML.
    let d = yaml_serde::Deserializer::from_str(text).next().unwrap();
    serde::Deserialize::deserialize(d).unwrap()
}

#[test]
fn mirror_gives_the_same_init_data_as_the_layout() {
    let reg = DockerRegistry::start(None);
    let layout = OciLayout::open(format!("{DATA}/layout")).unwrap();
    // Push every image of the test layout under its repository path.
    for tag in [
        "registry.example/shop/api:1.4.2",
        "registry.example/shop/batch:3",
        "registry.example/shop/migrate:2",
        "registry.example/shop/worker:1.4.2",
    ] {
        let repo = tag.strip_prefix("registry.example/").unwrap();
        let d = client(&reg, repo).push(&layout, Some(tag)).unwrap();
        assert_eq!(d, layout.find(Some(tag)).unwrap().digest);
    }
    let from_layout = LayoutResolver::open(Path::new(&format!("{DATA}/layout"))).unwrap();
    let mirror = RegistryResolver::new(Some(reg.addr()), None).unwrap();
    for file in ["pod-multi.yaml", "deployment-configmap.yaml", "job.yaml"] {
        let text = std::fs::read_to_string(format!("{DATA}/manifests/{file}")).unwrap();
        let a = generate(&[&text], &from_layout, &Settings::default()).unwrap();
        let b = generate(&[&text], &mirror, &Settings::default()).unwrap();
        assert_eq!(a.output_yaml, b.output_yaml, "{file}");
        for (x, y) in a.workloads.iter().zip(&b.workloads) {
            assert_eq!(x.init_data_toml, y.init_data_toml, "{file}");
            assert_eq!(x.digest, y.digest);
            let parsed = ParsedInitData::parse(y.init_data_toml.as_bytes()).unwrap();
            assert_eq!(parsed.digest(), y.digest);
        }
    }
}

/// Write an index of `entries` into `layout`, tagged `tag`.
fn write_index(layout: &OciLayout, tag: &str, entries: &[(Descriptor, &str)]) -> Descriptor {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(d, arch)| {
            serde_json::json!({"mediaType": d.media_type, "digest": d.digest, "size": d.size,
                "platform": {"os": "linux", "architecture": arch}})
        })
        .collect();
    let bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": media_type::OCI_INDEX, "manifests": manifests,
    }))
    .unwrap();
    let desc = layout.write_blob(&bytes, media_type::OCI_INDEX).unwrap();
    layout.set_tag(tag, desc.clone()).unwrap();
    desc
}

fn skopeo_push_all(tmp: &Path, layout: &Path, tag: &str, dest: &str) {
    let policy = tmp.join("skopeo-policy.json");
    std::fs::write(
        &policy,
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )
    .unwrap();
    let out = Command::new("skopeo")
        .arg("--policy")
        .arg(&policy)
        .args([
            "copy",
            "--quiet",
            "--all",
            "--preserve-digests",
            "--dest-tls-verify=false",
        ])
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{dest}"))
        .output()
        .expect("skopeo (scripts/install-deps.sh)");
    assert!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn index_selects_linux_amd64_and_digest_pins_are_enforced() {
    let reg = DockerRegistry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let dir: PathBuf = tmp.path().join("layout");
    let layout = OciLayout::create(&dir).unwrap();
    let arm = build(
        &layout,
        tmp.path(),
        "arm64",
        Platform {
            architecture: "arm64".into(),
            ..Platform::linux_amd64()
        },
        "ARCH=arm64",
    );
    let amd = build(
        &layout,
        tmp.path(),
        "amd64",
        Platform::linux_amd64(),
        "ARCH=amd64",
    );
    // arm64 first: the resolver must pick by platform, not by position.
    let index = write_index(
        &layout,
        "multi",
        &[(arm.clone(), "arm64"), (amd.clone(), "amd64")],
    );
    skopeo_push_all(tmp.path(), &dir, "multi", &reg.reference("veil/multi:v1"));
    let (served, _) = client(&reg, "veil/multi:v1").manifest("v1").unwrap();
    assert_eq!(served.digest, index.digest, "skopeo kept the index digest");

    let resolver = RegistryResolver::new(None, None).unwrap();
    let (d, env) = pinned(&pod(&reg.reference("veil/multi:v1")), &resolver).unwrap();
    assert_eq!(d, amd.digest.to_string());
    assert!(env.contains(&"ARCH=amd64".to_string()), "{env:?}");
    // Pinning the index or the amd64 manifest resolves to the amd64 manifest.
    for pin in [&index.digest, &amd.digest] {
        let r = format!("{}/veil/multi@{pin}", reg.addr());
        assert_eq!(
            pinned(&pod(&r), &resolver).unwrap().0,
            amd.digest.to_string()
        );
    }
    // Pinning the arm64 manifest: the platform check refuses it.
    let r = format!("{}/veil/multi@{}", reg.addr(), arm.digest);
    let e = pinned(&pod(&r), &resolver).unwrap_err().to_string();
    assert!(e.contains("platform check failed"), "{e}");
    assert!(e.contains("linux/arm64"), "{e}");
    // A digest the registry does not hold.
    let absent = Digest::sha256(b"not pushed");
    let r = format!("{}/veil/multi:v1@{absent}", reg.addr());
    let e = pinned(&pod(&r), &resolver).unwrap_err().to_string();
    assert!(e.contains("cannot be resolved"), "{e}");
    assert!(e.contains(&absent.to_string()), "{e}");
}

#[test]
fn unresolvable_images_are_clear_errors() {
    let reg = DockerRegistry::start(None);
    let resolver = RegistryResolver::new(None, None).unwrap();
    // An unknown tag: names the container, the reference and the registry's answer.
    let image = reg.reference("veil/absent:v1");
    let e = generate(&[&pod(&image)], &resolver, &Settings::default()).unwrap_err();
    match &e {
        GenerateError::Image {
            container,
            reference,
            reason,
        } => {
            assert_eq!(container, "app");
            assert_eq!(reference, &image);
            assert!(reason.contains("not found"), "{reason}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // No registry listening.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let image = format!("127.0.0.1:{port}/veil/app:v1");
    let e = generate(&[&pod(&image)], &resolver, &Settings::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot be resolved") && e.contains(&image),
        "{e}"
    );
    // Not a reference at all.
    let e = generate(&[&pod("Not/A Reference")], &resolver, &Settings::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid image reference"), "{e}");
}

#[test]
fn credentials_come_from_an_auth_file() {
    // A bcrypt htpasswd entry for veil:s3cret (Debian's apache2-utils).
    let reg = DockerRegistry::start(Some(&htpasswd_line("veil", "s3cret")));
    let tmp = tempfile::tempdir().unwrap();
    let auth = tmp.path().join("auth.json");
    // base64("veil:s3cret")
    std::fs::write(&auth, reg.auth_json("dmVpbDpzM2NyZXQ=")).unwrap();
    let layout = OciLayout::create(tmp.path().join("layout")).unwrap();
    let desc = build(
        &layout,
        tmp.path(),
        "v1",
        Platform::linux_amd64(),
        "APP=one",
    );
    let r = registry::parse_reference(&reg.reference("veil/app:v1")).unwrap();
    let creds = veil_image::registry::Credentials::from_auth_file(&auth, reg.addr()).unwrap();
    Registry::new(&r, creds).push(&layout, Some("v1")).unwrap();

    let image = reg.reference("veil/app:v1");
    let without = RegistryResolver::new(None, None).unwrap();
    let e = pinned(&pod(&image), &without).unwrap_err().to_string();
    assert!(e.contains("Basic credentials"), "{e}");
    let with = RegistryResolver::new(None, Some(&auth)).unwrap();
    assert_eq!(
        pinned(&pod(&image), &with).unwrap().0,
        desc.digest.to_string()
    );
    // Through a mirror, the mirror's entry is used.
    let mirror = RegistryResolver::new(Some(reg.addr()), Some(&auth)).unwrap();
    assert_eq!(
        pinned(&pod("registry.example/veil/app:v1"), &mirror)
            .unwrap()
            .0,
        desc.digest.to_string()
    );
}
