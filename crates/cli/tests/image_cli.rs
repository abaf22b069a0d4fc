//! `veil image` from the command line: what a user sees for each
//! subcommand. Exit 0 on success, 1 when a check refuses the input (the
//! message names the check), 2 for malformed input or usage; a failed
//! command leaves no new files behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use assert_cmd::Command;
use predicates::prelude::*;
use veil_image::builder::ImageBuilder;
use veil_image::spec::{Compression, ContainerConfig};
use veil_image::{Digest, OciLayout};
use veil_testkit::registry::DockerRegistry;

fn veil() -> Command {
    Command::cargo_bin("veil").unwrap()
}

/// A two-layer image tagged `v1` in `tmp/layout`; returns the layout dir
/// and the manifest digest.
fn image(tmp: &Path) -> (PathBuf, Digest) {
    let base = tmp.join("base");
    fs::create_dir_all(base.join("bin")).unwrap();
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::copy("/bin/busybox", base.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", base.join("bin/sh")).unwrap();
    fs::write(base.join("etc/hostname"), "veil-cli\n").unwrap();
    let app = tmp.join("app");
    fs::create_dir_all(app.join("app")).unwrap();
    fs::write(app.join("app/hello.txt"), "hello from veil\n").unwrap();

    let dir = tmp.join("layout");
    let layout = OciLayout::create(&dir).unwrap();
    let mut b = ImageBuilder::new(&layout);
    b.config(ContainerConfig {
        entrypoint: Some(vec!["/bin/sh".into(), "-c".into()]),
        cmd: Some(vec!["cat /app/hello.txt".into()]),
        env: Some(vec!["PATH=/bin".into()]),
        working_dir: Some("/app".into()),
        ..Default::default()
    });
    b.add_layer_dir(&base, Compression::Gzip).unwrap();
    b.add_layer_dir(&app, Compression::None).unwrap();
    let desc = b.finish("v1").unwrap();
    (dir, desc.digest)
}

fn oci(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

fn blob(dir: &Path, d: &Digest) -> PathBuf {
    dir.join("blobs").join("sha256").join(d.hex())
}

fn json_of(out: &[u8]) -> serde_json::Value {
    serde_json::from_slice(out).unwrap_or_else(|e| {
        panic!("not JSON ({e}): {}", String::from_utf8_lossy(out));
    })
}

fn inspect_json(reference: &str) -> serde_json::Value {
    json_of(&output_ok(inspect(reference).arg("--json")).stdout)
}

/// Run `cmd`, asserting success (with its stderr otherwise).
fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `veil image inspect REFERENCE`.
fn inspect(reference: &str) -> Command {
    let mut c = veil();
    c.args(["image", "inspect", reference]);
    c
}

/// `veil image encrypt SRC DST --recipient jwe:PK`.
fn encrypt_for(src: &str, dst: &str, pk: &Path) -> Command {
    let mut c = veil();
    c.args(["image", "encrypt", src, dst])
        .arg("--recipient")
        .arg(format!("jwe:{}", pk.display()));
    c
}

/// `veil image decrypt SRC DST --key KEY`.
fn decrypt_with(src: &str, dst: &str, key: &Path) -> Command {
    let mut c = veil();
    c.args(["image", "decrypt", src, dst]).arg("--key").arg(key);
    c
}

/// `veil image unpack REFERENCE ROOTFS`.
fn unpack(reference: &str, rootfs: &Path) -> Command {
    let mut c = veil();
    c.args(["image", "unpack", reference]).arg(rootfs);
    c
}

/// `veil image sign REFERENCE --identity IDENTITY`.
fn sign(reference: &str, identity: &str) -> Command {
    let mut c = veil();
    c.args(["image", "sign", reference, "--identity", identity]);
    c
}

fn rsa_keypair(dir: &Path) -> (PathBuf, PathBuf) {
    let (sk, pk) = (dir.join("rsa.key"), dir.join("rsa.pub"));
    let ok = Std::new("openssl")
        .args(["genrsa", "-out"])
        .arg(&sk)
        .arg("2048")
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    let ok = Std::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&sk)
        .arg("-out")
        .arg(&pk)
        .output()
        .unwrap()
        .status
        .success();
    assert!(ok);
    (sk, pk)
}

/// Every file below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    out.sort();
    out
}

/// Replace the blob of layer `i` of `tag` with `bytes`, rewriting the
/// manifest and index so that every digest is consistent again: only the
/// layer's own checks (HMAC, diff_id, tar safety) can catch it.
fn replace_layer(dir: &Path, tag: &str, i: usize, bytes: &[u8], media_type: Option<&str>) {
    let layout = OciLayout::open(dir).unwrap();
    let index_path = dir.join("index.json");
    let mut index: serde_json::Value =
        serde_json::from_slice(&fs::read(&index_path).unwrap()).unwrap();
    let entry = index["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap();
    let mdigest: Digest = entry["digest"].as_str().unwrap().parse().unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blob(dir, &mdigest)).unwrap()).unwrap();
    let layer = &mut manifest["layers"][i];
    let mt = media_type
        .map(str::to_owned)
        .unwrap_or_else(|| layer["mediaType"].as_str().unwrap().to_owned());
    let d = layout.write_blob(bytes, &mt).unwrap();
    layer["digest"] = d.digest.to_string().into();
    layer["size"] = d.size.into();
    layer["mediaType"] = mt.into();
    let mbytes = serde_json::to_vec(&manifest).unwrap();
    let md = layout
        .write_blob(&mbytes, veil_image::spec::media_type::OCI_MANIFEST)
        .unwrap();
    entry["digest"] = md.digest.to_string().into();
    entry["size"] = md.size.into();
    fs::write(&index_path, serde_json::to_vec(&index).unwrap()).unwrap();
}

// ---------------------------------------------------------------- inspect

#[test]
fn inspect_prints_digest_config_and_layers() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    inspect(&oci(&dir, "v1"))
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("Digest:     {digest}")))
        .stdout(predicate::str::contains("Platform:   linux/amd64"))
        .stdout(predicate::str::contains(
            r#"Cmd:        ["cat /app/hello.txt"]"#,
        ))
        .stdout(predicate::str::contains(
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ));
    let j = inspect_json(&oci(&dir, "v1"));
    assert_eq!(j["manifestDigest"], digest.to_string());
    assert_eq!(j["platform"], "linux/amd64");
    assert_eq!(j["config"]["WorkingDir"], "/app");
    let layers = j["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    assert!(layers.iter().all(|l| l["encrypted"] == false));
    // Without a tag, the only image in the layout.
    let j = inspect_json(&format!("oci:{}", dir.display()));
    assert_eq!(j["manifestDigest"], digest.to_string());
}

#[test]
fn inspect_refuses_a_tampered_blob_naming_the_digest_check() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = image(tmp.path());
    let j = inspect_json(&oci(&dir, "v1"));
    let config: Digest = j["configDigest"].as_str().unwrap().parse().unwrap();
    let path = blob(&dir, &config);
    let mut bytes = fs::read(&path).unwrap();
    let pos = bytes.iter().position(|&b| b == b'/').unwrap();
    bytes[pos] = b'_'; // same size, different content
    fs::write(&path, bytes).unwrap();
    inspect(&oci(&dir, "v1"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused: digest check failed"))
        .stderr(predicate::str::contains(format!("expected {config}")));
    // A truncated blob: the size check.
    fs::write(&path, b"{}").unwrap();
    inspect(&oci(&dir, "v1"))
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused: size check failed"));
}

#[test]
fn inspect_malformed_input_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = image(tmp.path());
    inspect(&oci(&dir, "nope"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("tag \"nope\""))
        .stderr(predicate::str::contains("tags present: v1"));
    inspect("docker:/x")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid image reference"));
    inspect(&oci(&tmp.path().join("missing"), "v1"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("oci-layout marker"));
    fs::write(dir.join("index.json"), b"{\"schemaVersion\":2,").unwrap();
    inspect(&oci(&dir, "v1"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("malformed index.json"));
    veil().args(["image", "inspect"]).assert().code(2);
}

// ---------------------------------------------------------------- measure

fn veritysetup_root(data: &Path, hash: &Path, extra: &[&str]) -> String {
    let out = Std::new("veritysetup")
        .arg("format")
        .args(extra)
        .arg(data)
        .arg(hash)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn measure_matches_veritysetup() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.img");
    let bytes: Vec<u8> = (0..(3 * 4096 * 17 + 100) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    fs::write(&data, &bytes).unwrap();
    let salt = "00112233445566778899aabbccddeeff";
    let uuid = "12345678-1234-1234-1234-123456789abc";
    let expected = veritysetup_root(
        &data,
        &tmp.path().join("vs.hash"),
        &["--salt", salt, "--uuid", uuid],
    );

    let out = veil()
        .args(["image", "measure", "--json", "--salt", salt, "--uuid", uuid])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let j = json_of(&out.stdout);
    assert_eq!(j["rootHash"], expected);
    assert_eq!(j["dataBlocks"], 51);

    // The hash file is byte-identical to veritysetup's.
    let hash = tmp.path().join("veil.hash");
    veil()
        .args(["image", "measure", "--salt", salt, "--uuid", uuid])
        .arg(&data)
        .arg("--hash-file")
        .arg(&hash)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "Root hash:      \t{expected}"
        )))
        .stderr(predicate::str::contains("the last 100 bytes"));
    assert_eq!(
        fs::read(&hash).unwrap(),
        fs::read(tmp.path().join("vs.hash")).unwrap()
    );

    // Other parameters: sha512, 1024-byte blocks, no salt, no superblock.
    let extra = [
        "--hash",
        "sha512",
        "--data-block-size",
        "1024",
        "--hash-block-size",
        "1024",
        "--salt",
        "-",
        "--no-superblock",
    ];
    let expected = veritysetup_root(&data, &tmp.path().join("vs2.hash"), &extra);
    let out = veil()
        .args(["image", "measure", "--json"])
        .args(extra)
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(json_of(&out.stdout)["rootHash"], expected);
}

#[test]
fn measure_malformed_input_exits_2_and_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data.img");
    fs::write(&data, vec![7u8; 8192]).unwrap();
    let hash = tmp.path().join("out.hash");
    for (args, msg) in [
        (vec!["--hash", "md5"], "md5"),
        (vec!["--salt", "zz"], "--salt"),
        (
            vec!["--data-block-size", "1000"],
            "invalid dm-verity parameters",
        ),
        (vec!["--uuid", "not-a-uuid"], "uuid"),
        (vec!["--data-blocks", "3"], "data"),
    ] {
        veil()
            .args(["image", "measure"])
            .args(&args)
            .arg(&data)
            .arg("--hash-file")
            .arg(&hash)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(msg).or(predicate::str::contains(msg.to_uppercase())));
        assert!(!hash.exists(), "{args:?} left {}", hash.display());
    }
    veil()
        .args(["image", "measure"])
        .arg(tmp.path().join("missing.img"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("missing.img"));
}

// ------------------------------------------------------ encrypt / decrypt

#[test]
fn encrypt_then_decrypt_round_trips_and_inspect_shows_encryption() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    let (sk, pk) = rsa_keypair(tmp.path());
    let enc = tmp.path().join("enc");
    let out = output_ok(&mut encrypt_for(&oci(&dir, "v1"), &oci(&enc, "e"), &pk));
    let enc_digest = String::from_utf8(out.stdout).unwrap();
    let j = inspect_json(&oci(&enc, "e"));
    assert_eq!(j["manifestDigest"], enc_digest.trim());
    let layers = j["layers"].as_array().unwrap();
    assert!(layers.iter().all(|l| l["encrypted"] == true), "{j}");
    assert!(
        layers
            .iter()
            .all(|l| l["mediaType"].as_str().unwrap().ends_with("+encrypted"))
    );

    let dec = tmp.path().join("dec");
    decrypt_with(&oci(&enc, "e"), &oci(&dec, "d"), &sk)
        .assert()
        .success()
        .stdout(predicate::str::contains(digest.to_string()));
    // Decrypted layers are byte-identical: the manifest digest is the original's.
    assert_eq!(
        inspect_json(&oci(&dec, "d"))["manifestDigest"],
        digest.to_string()
    );

    // Encrypting only the top layer.
    output_ok(encrypt_for(&oci(&dir, "v1"), &oci(&enc, "top"), &pk).args(["--layer", "-1"]));
    let j = inspect_json(&oci(&enc, "top"));
    assert_eq!(j["layers"][0]["encrypted"], false);
    assert_eq!(j["layers"][1]["encrypted"], true);
}

#[test]
fn kbs_recipient_round_trips_with_an_offline_key_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    let kek = tmp.path().join("kek.b64");
    let key_b64 = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
    fs::write(&kek, key_b64).unwrap();
    let enc = tmp.path().join("enc");
    veil()
        .args(["image", "encrypt", &oci(&dir, "v1"), &oci(&enc, "e")])
        .args(["--recipient", "kbs:///default/image-key/app"])
        .arg("--kek")
        .arg(&kek)
        .assert()
        .success();
    let keys = tmp.path().join("keys.json");
    fs::write(&keys, format!(r#"{{"default/image-key/app":"{key_b64}"}}"#)).unwrap();
    let dec = tmp.path().join("dec");
    veil()
        .args(["image", "decrypt", &oci(&enc, "e"), &oci(&dec, "d")])
        .arg("--kbs-keys")
        .arg(&keys)
        .assert()
        .success()
        .stdout(predicate::str::contains(digest.to_string()));
    // The wrong KEK under the right name: refused by the key unwrap.
    let wrong = tmp.path().join("wrong.json");
    fs::write(
        &wrong,
        r#"{"default/image-key/app":"ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA="}"#,
    )
    .unwrap();
    veil()
        .args([
            "image",
            "decrypt",
            &oci(&enc, "e"),
            &oci(&tmp.path().join("d2"), "d"),
        ])
        .arg("--kbs-keys")
        .arg(&wrong)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused"));
    assert!(!tmp.path().join("d2").exists());
}

#[test]
fn decrypt_refusals_exit_1_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = image(tmp.path());
    let (_, pk) = rsa_keypair(tmp.path());
    let other = tmp.path().join("other");
    fs::create_dir(&other).unwrap();
    let (wrong_sk, _) = rsa_keypair(&other);
    let enc = tmp.path().join("enc");
    encrypt_for(&oci(&dir, "v1"), &oci(&enc, "e"), &pk)
        .assert()
        .success();

    // Wrong key: no matching key; the new destination does not appear.
    let dec = tmp.path().join("dec");
    decrypt_with(&oci(&enc, "e"), &oci(&dec, "d"), &wrong_sk)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused: no matching key"));
    assert!(!dec.exists());

    // Into an existing layout: the tag is not created.
    let before = tree(&dir);
    decrypt_with(&oci(&enc, "e"), &oci(&dir, "d"), &wrong_sk)
        .assert()
        .code(1);
    assert!(
        !fs::read_to_string(dir.join("index.json"))
            .unwrap()
            .contains("\"d\"")
    );
    let after = tree(&dir);
    assert!(
        after
            .iter()
            .all(|f| before.contains(f) || !f.contains(".tmp")),
        "temporary files left: {after:?}"
    );

    // Ciphertext altered with every digest recomputed: only the HMAC
    // catches it, and nothing decrypted is kept.
    let enc_j = inspect_json(&oci(&enc, "e"));
    let l1: Digest = enc_j["layers"][1]["digest"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut ct = fs::read(blob(&enc, &l1)).unwrap();
    ct[10] ^= 1;
    replace_layer(&enc, "e", 1, &ct, None);
    let (sk, _) = (tmp.path().join("rsa.key"), ());
    let dec = tmp.path().join("dec-hmac");
    decrypt_with(&oci(&enc, "e"), &oci(&dec, "d"), &sk)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused: layer HMAC check failed"));
    assert!(!dec.exists());
}

#[test]
fn encrypt_decrypt_malformed_input_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = image(tmp.path());
    let (sk, pk) = rsa_keypair(tmp.path());
    let dst = tmp.path().join("dst");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--recipient".into(), "pgp:someone".into()],
            "expected jwe:PUBLIC_KEY_FILE or kbs:///repo/type/tag",
        ),
        (
            vec!["--recipient".into(), "kbs:///default/key/a".into()],
            "needs --kek",
        ),
        (
            vec![
                "--recipient".into(),
                format!("jwe:{}-missing", sk.display()),
            ],
            "reading",
        ),
        (
            vec![
                "--recipient".into(),
                format!("jwe:{}", dir.join("index.json").display()),
            ],
            "public key",
        ),
    ];
    for (args, msg) in cases {
        veil()
            .args(["image", "encrypt", &oci(&dir, "v1"), &oci(&dst, "e")])
            .args(&args)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(msg));
        assert!(!dst.exists(), "{args:?}");
    }
    // Destination without a tag.
    veil()
        .args(["image", "encrypt", &oci(&dir, "v1")])
        .arg(format!("oci:{}", dst.display()))
        .arg("--recipient")
        .arg(format!("jwe:{}", pk.display()))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("needs a tag"));
    assert!(!dst.exists());
    // Decrypt without any key; with a key file that is not a key.
    veil()
        .args(["image", "decrypt", &oci(&dir, "v1"), &oci(&dst, "d")])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--key"));
    decrypt_with(&oci(&dir, "v1"), &oci(&dst, "d"), &pk)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("private key"));
    assert!(!dst.exists());
}

// ---------------------------------------------------------------- unpack

#[test]
fn unpack_builds_the_rootfs() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    let rootfs = tmp.path().join("rootfs");
    unpack(&oci(&dir, "v1"), &rootfs)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "unpacked {digest} (2 layers"
        )));
    assert_eq!(
        fs::read_to_string(rootfs.join("app/hello.txt")).unwrap(),
        "hello from veil\n"
    );
    assert_eq!(
        fs::read_link(rootfs.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    // The target exists now: refused as usage, nothing changed.
    unpack(&oci(&dir, "v1"), &rootfs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already exists"));
}

#[test]
fn unpack_of_an_encrypted_image_needs_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = image(tmp.path());
    let (sk, pk) = rsa_keypair(tmp.path());
    encrypt_for(&oci(&dir, "v1"), &oci(&dir, "enc"), &pk)
        .assert()
        .success();
    let rootfs = tmp.path().join("rootfs");
    unpack(&oci(&dir, "enc"), &rootfs)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("refused: no matching key"));
    assert!(!rootfs.exists());
    assert!(
        !tree(tmp.path()).iter().any(|f| f.contains(".veil-unpack-")),
        "staging directory left behind"
    );
    unpack(&oci(&dir, "enc"), &rootfs)
        .arg("--key")
        .arg(&sk)
        .assert()
        .success();
    assert!(rootfs.join("bin/busybox").is_file());
}

fn tar_entry(name: &str, kind: tar::EntryType, link: &str, data: &[u8]) -> Vec<u8> {
    let mut h = tar::Header::new_old();
    {
        let old = h.as_old_mut();
        old.name[..name.len()].copy_from_slice(name.as_bytes());
        old.linkname[..link.len()].copy_from_slice(link.as_bytes());
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

/// An image whose second layer is `tar_bytes` (uncompressed), with a
/// config whose diff_id matches, so only the entry checks can refuse it.
fn image_with_layer(tmp: &Path, tar_bytes: &[u8]) -> PathBuf {
    let dir = tmp.join("evil");
    let layout = OciLayout::create(&dir).unwrap();
    let mut b = ImageBuilder::new(&layout);
    let base = tmp.join("evil-base");
    fs::create_dir_all(base.join("etc")).unwrap();
    fs::write(base.join("etc/hostname"), "x\n").unwrap();
    b.add_layer_dir(&base, Compression::None).unwrap();
    b.add_layer_tar(&mut &tar_bytes[..], Compression::None)
        .unwrap();
    b.finish("v1").unwrap();
    dir
}

#[test]
fn unpack_refuses_malicious_layers_and_writes_nothing() {
    let cases: Vec<(Vec<Vec<u8>>, &str)> = vec![
        (
            vec![tar_entry("../escape", tar::EntryType::Regular, "", b"x")],
            "..",
        ),
        (
            vec![tar_entry("dev", tar::EntryType::Char, "", b"")],
            "device",
        ),
        (
            vec![tar_entry(
                "link",
                tar::EntryType::Link,
                "../../etc/passwd",
                b"",
            )],
            "../../etc/passwd",
        ),
        (
            vec![tar_entry(".wh...", tar::EntryType::Regular, "", b"")],
            "whiteout",
        ),
    ];
    for (entries, msg) in cases {
        let tmp = tempfile::tempdir().unwrap();
        let mut t = entries.concat();
        t.extend_from_slice(&[0u8; 1024]);
        let dir = image_with_layer(tmp.path(), &t);
        let rootfs = tmp.path().join("rootfs");
        unpack(&oci(&dir, "v1"), &rootfs)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("refused"))
            .stderr(predicate::str::contains(msg));
        assert!(!rootfs.exists());
        assert!(!tree(tmp.path()).iter().any(|f| f.contains(".veil-unpack-")));
    }
}

#[test]
fn unpack_refuses_a_layer_that_differs_from_its_diff_id() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = image(tmp.path());
    // Swap the top layer for another valid tar: blob digests are
    // consistent again, the config's diff_id is not.
    let mut t = tar_entry("app/other.txt", tar::EntryType::Regular, "", b"other\n");
    t.extend_from_slice(&[0u8; 1024]);
    replace_layer(&dir, "v1", 1, &t, None);
    let rootfs = tmp.path().join("rootfs");
    unpack(&oci(&dir, "v1"), &rootfs)
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refused: diff_id check failed for layer 1",
        ));
    assert!(!rootfs.exists());
    // A layer whose media type is not a layer: malformed (2).
    replace_layer(&dir, "v1", 1, &t, Some("application/octet-stream"));
    unpack(&oci(&dir, "v1"), &rootfs)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("unsupported media type"));
    assert!(!rootfs.exists());
}

// ------------------------------------------------------- sign / verify

const IDENTITY: &str = "registry.example/team/app:v1";

fn write_policy(tmp: &Path, name: &str, json: &str) -> PathBuf {
    let p = tmp.join(name);
    fs::write(&p, json).unwrap();
    p
}

fn verify_cmd(dir: &Path, tag: &str, policy: &Path) -> Command {
    verify_ref(&oci(dir, tag), policy)
}

/// `veil image verify REFERENCE --policy POLICY`.
fn verify_ref(reference: &str, policy: &Path) -> Command {
    let mut c = veil();
    c.args(["image", "verify", reference, "--policy"])
        .arg(policy);
    c
}

#[test]
fn sigstore_sign_then_verify_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    let key = veil_image::sign::cosign::PrivateKey::generate();
    let key_path = tmp.path().join("cosign.key");
    fs::write(&key_path, key.to_encrypted_pem(b"s3cret").unwrap()).unwrap();
    fs::write(
        tmp.path().join("cosign.pub"),
        key.public_key().to_pem().unwrap(),
    )
    .unwrap();
    fs::write(tmp.path().join("pass"), "s3cret\n").unwrap();
    fs::write(tmp.path().join("wrong-pass"), "nope\n").unwrap();

    // Wrong passphrase: malformed input (2), nothing attached.
    let before = tree(&dir);
    sign(&oci(&dir, "v1"), IDENTITY)
        .arg("--sigstore-key")
        .arg(&key_path)
        .arg("--passphrase-file")
        .arg(tmp.path().join("wrong-pass"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("wrong passphrase"));
    assert_eq!(tree(&dir), before);

    sign(&oci(&dir, "v1"), IDENTITY)
        .arg("--sigstore-key")
        .arg(&key_path)
        .arg("--passphrase-file")
        .arg(tmp.path().join("pass"))
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "signed {digest} as {IDENTITY} (sigstore): sha256-{}.sig",
            digest.hex()
        )));
    inspect(&oci(&dir, "v1"))
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "sigstore, claims {IDENTITY}"
        )));

    let policy = write_policy(
        tmp.path(),
        "policy.json",
        r#"{"default":[{"type":"reject"}],
            "transports":{"docker":{"registry.example/team":[
              {"type":"sigstoreSigned","keyPath":"cosign.pub"}]}}}"#,
    );
    verify_cmd(&dir, "v1", &policy)
        .args(["--identity", IDENTITY])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "accepted {digest} under transports.docker[\"registry.example/team\"]"
        )))
        .stdout(predicate::str::contains(format!(
            "sigstoreSigned: sigstore key 1 signed {IDENTITY}"
        )));
    let out = verify_cmd(&dir, "v1", &policy)
        .args(["--identity", IDENTITY, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(json_of(&out.stdout)["manifestDigest"], digest.to_string());

    // Re-tagged: pulled as :v2, signed as :v1.
    verify_cmd(&dir, "v1", &policy)
        .args(["--identity", "registry.example/team/app:v2"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "refused: sigstoreSigned check failed",
        ))
        .stderr(predicate::str::contains("signed identity check failed"));
    // Outside the policy's scope: the default rejects.
    verify_cmd(&dir, "v1", &policy)
        .args(["--identity", "other.example/app:v1"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("trust policy check failed"))
        .stderr(predicate::str::contains("(policy scope default)"));
    // Another image in the same layout has no signature.
    veil()
        .args(["image", "encrypt", &oci(&dir, "v1"), &oci(&dir, "v2")])
        .args(["--recipient", "kbs:///default/k/a", "--kek"])
        .arg({
            let k = tmp.path().join("kek");
            fs::write(&k, [7u8; 32]).unwrap();
            k
        })
        .assert()
        .success();
    verify_cmd(&dir, "v2", &policy)
        .args(["--identity", IDENTITY])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no sigstore signature found"));
    // A wrong key.
    let other = veil_image::sign::cosign::PrivateKey::generate();
    fs::write(
        tmp.path().join("cosign.pub"),
        other.public_key().to_pem().unwrap(),
    )
    .unwrap();
    verify_cmd(&dir, "v1", &policy)
        .args(["--identity", IDENTITY])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("sigstore signature check failed"));
}

#[test]
fn gpg_sign_then_verify_with_a_lookaside() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    let gpg_home = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
    let gpg = |args: &[&str]| {
        let out = Std::new("gpg")
            .env("GNUPGHOME", gpg_home.path())
            .args(["--batch", "--yes"])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    };
    gpg(&[
        "--passphrase",
        "",
        "--quick-gen-key",
        "CLI <cli@veil.invalid>",
        "ed25519",
        "sign",
        "never",
    ]);
    gpg(&[
        "--armor",
        "--output",
        tmp.path().join("signer.asc").to_str().unwrap(),
        "--export",
        "cli@veil.invalid",
    ]);
    let lookaside = tmp.path().join("lookaside");
    sign(&oci(&dir, "v1"), IDENTITY)
        .args(["--gpg-key", "cli@veil.invalid", "--gpg-home"])
        .arg(gpg_home.path())
        .arg("--lookaside")
        .arg(&lookaside)
        .assert()
        .success()
        .stdout(predicate::str::contains(format!(
            "team/app@sha256={}/signature-1",
            digest.hex()
        )));
    let policy = write_policy(
        tmp.path(),
        "policy.json",
        r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"signer.asc"}]}"#,
    );
    verify_cmd(&dir, "v1", &policy)
        .args(["--identity", IDENTITY, "--lookaside"])
        .arg(&lookaside)
        .assert()
        .success()
        .stdout(predicate::str::contains("signedBy: GPG key"));
    // Without the lookaside the signature is missing.
    verify_cmd(&dir, "v1", &policy)
        .args(["--identity", IDENTITY])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "signedBy check failed: no GPG signature found",
        ));
    // --lookaside without --identity: usage.
    verify_cmd(&dir, "v1", &policy)
        .arg("--lookaside")
        .arg(&lookaside)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("needs --identity"));
    let _ = Std::new("gpgconf")
        .env("GNUPGHOME", gpg_home.path())
        .args(["--kill", "all"])
        .output();
}

#[test]
fn verify_and_sign_malformed_input_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let (dir, _) = image(tmp.path());
    for (json, msg) in [
        (r#"{"default":[]}"#, "empty requirement list"),
        (
            r#"{"default":[{"type":"rejectt"}]}"#,
            "malformed trust policy",
        ),
        (
            r#"{"default":[{"type":"sigstoreSigned","keyPath":"missing.pub"}]}"#,
            "missing.pub",
        ),
        (
            r#"{"default":[{"type":"sigstoreSigned","fulcio":{"caPath":"x"}}]}"#,
            "keyless",
        ),
    ] {
        let p = write_policy(tmp.path(), "bad.json", json);
        verify_cmd(&dir, "v1", &p)
            .assert()
            .code(2)
            .stderr(predicate::str::contains(msg));
    }
    let ok = write_policy(
        tmp.path(),
        "ok.json",
        r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    );
    verify_cmd(&dir, "v1", &ok)
        .assert()
        .success()
        .stdout(predicate::str::contains("insecureAcceptAnything"));
    verify_cmd(&dir, "v1", &ok)
        .args(["--identity", "Not A Reference"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid docker reference"));
    let reject = write_policy(
        tmp.path(),
        "reject.json",
        r#"{"default":[{"type":"reject"}]}"#,
    );
    verify_cmd(&dir, "v1", &reject)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("the policy rejects this image"));
    // sign without a key; with a key file that is not a key.
    sign(&oci(&dir, "v1"), IDENTITY)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--sigstore-key"));
    sign(&oci(&dir, "v1"), IDENTITY)
        .arg("--sigstore-key")
        .arg(dir.join("index.json"))
        .assert()
        .code(2)
        .stderr(predicate::str::contains("sigstore private key"));
    sign(&oci(&dir, "v1"), "x@y")
        .args(["--sigstore-key", "k"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("invalid docker reference"));
}

// ------------------------------------------------------- registry

#[test]
fn push_pull_inspect_sign_verify_through_a_registry() {
    let reg = DockerRegistry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    let remote = format!("docker://{}", reg.reference("veil/app:v1"));
    veil()
        .args(["image", "push", &oci(&dir, "v1"), &remote])
        .assert()
        .success()
        .stdout(predicate::str::contains(format!("pushed {digest}")));
    let j = inspect_json(&remote);
    assert_eq!(j["manifestDigest"], digest.to_string());
    assert_eq!(j["reference"], remote);

    let pulled = tmp.path().join("pulled");
    let cache = tmp.path().join("cache");
    veil()
        .args(["image", "pull", &remote, &oci(&pulled, "p")])
        .arg("--cache")
        .arg(&cache)
        .assert()
        .success()
        .stdout(predicate::str::contains(digest.to_string()));
    assert_eq!(
        inspect_json(&oci(&pulled, "p"))["manifestDigest"],
        digest.to_string()
    );
    assert!(cache.join("blobs/sha256").is_dir());

    // Sign in the registry (attachment), verify from the registry.
    let key = veil_image::sign::cosign::PrivateKey::generate();
    fs::write(
        tmp.path().join("k.pem"),
        key.to_pkcs8_pem().unwrap().as_bytes(),
    )
    .unwrap();
    fs::write(tmp.path().join("k.pub"), key.public_key().to_pem().unwrap()).unwrap();
    let identity = reg.reference("veil/app:v1");
    sign(&remote, &identity)
        .arg("--sigstore-key")
        .arg(tmp.path().join("k.pem"))
        .assert()
        .success();
    let policy = write_policy(
        tmp.path(),
        "policy.json",
        r#"{"default":[{"type":"sigstoreSigned","keyPath":"k.pub"}]}"#,
    );
    verify_ref(&remote, &policy)
        .assert()
        .success()
        .stdout(predicate::str::contains("1 sigstore attached to the image"));
    // Re-tagged in the registry: the same manifest under :v2 is refused.
    let v2 = format!("docker://{}", reg.reference("veil/app:v2"));
    veil()
        .args(["image", "push", &oci(&dir, "v1"), &v2])
        .assert()
        .success();
    verify_ref(&v2, &policy)
        .assert()
        .code(1)
        .stderr(predicate::str::contains("signed identity check failed"));

    // Errors: unknown tag (2), pull into nothing on failure.
    let missing = format!("docker://{}", reg.reference("veil/app:nope"));
    veil()
        .args([
            "image",
            "pull",
            &missing,
            &oci(&tmp.path().join("none"), "x"),
        ])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("not found"));
    assert!(!tmp.path().join("none").exists());
}

/// One key format everywhere: the hex file `veil kbs kek-generate` writes is
/// read as the 32-byte key by `image encrypt --kek` (not misread as base64);
/// the same key in base64 unwraps it; a length no encoding of 32 bytes has
/// is refused, saying what a key file holds.
#[test]
fn kek_generate_hex_is_a_valid_image_kek() {
    use base64::Engine as _;
    let tmp = tempfile::tempdir().unwrap();
    let (dir, digest) = image(tmp.path());
    let kek = tmp.path().join("kek.hex");
    veil()
        .args(["kbs", "kek-generate", "--out"])
        .arg(&kek)
        .assert()
        .success();
    let raw = hex::decode(fs::read_to_string(&kek).unwrap().trim()).unwrap();
    let enc = tmp.path().join("enc");
    veil()
        .args(["image", "encrypt", &oci(&dir, "v1"), &oci(&enc, "e")])
        .args(["--recipient", "kbs:///default/image-key/app", "--kek"])
        .arg(&kek)
        .assert()
        .success();
    let keys = tmp.path().join("keys.json");
    let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
    fs::write(&keys, format!(r#"{{"default/image-key/app":"{b64}"}}"#)).unwrap();
    veil()
        .args([
            "image",
            "decrypt",
            &oci(&enc, "e"),
            &oci(&tmp.path().join("dec"), "d"),
        ])
        .arg("--kbs-keys")
        .arg(&keys)
        .assert()
        .success()
        .stdout(predicate::str::contains(digest.to_string()));
    let short = tmp.path().join("short.hex");
    fs::write(&short, "ab".repeat(24)).unwrap();
    veil()
        .args([
            "image",
            "encrypt",
            &oci(&dir, "v1"),
            &oci(&tmp.path().join("e2"), "e"),
        ])
        .args(["--recipient", "kbs:///default/image-key/app", "--kek"])
        .arg(&short)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("48 hex characters (24 bytes)"))
        .stderr(predicate::str::contains("64 hex characters"));
}
