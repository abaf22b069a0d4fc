//! Signature interop with the real `skopeo` and `gpg`: signatures skopeo
//! makes (`--sign-by-sigstore-private-key`, `--sign-by`) verify with veil
//! against a containers-policy.json; veil's signatures verify with skopeo;
//! a re-tagged or altered image, a wrong key, a tampered or missing
//! signature is refused with the reason.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use veil_image::sign::cosign::{self, PrivateKey};
use veil_image::sign::policy::{Policy, oci_scopes};
use veil_image::sign::reference::DockerReference;
use veil_image::sign::{self, SignError, StoredSignature, Subject};
use veil_image::spec::{Compression, Platform};
use veil_image::{Digest, OciLayout};

const IDENTITY: &str = "registry.example/team/app:v1";

/// A GnuPG home with one signing key; the agent is stopped on drop.
struct GpgHome {
    dir: tempfile::TempDir,
    fingerprint: String,
}

impl GpgHome {
    fn new(name: &str) -> Self {
        let dir = tempfile::Builder::new().prefix("gpg").tempdir().unwrap();
        let mut home = GpgHome {
            dir,
            fingerprint: String::new(),
        };
        common::run(home.gpg().args([
            "--passphrase",
            "",
            "--quick-gen-key",
            &format!("{name} <{name}@veil.invalid>"),
            "ed25519",
            "sign",
            "never",
        ]));
        let out = common::run(home.gpg().args(["--list-keys", "--with-colons"]));
        let fpr = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|r| r.trim_matches(':').to_owned())
            })
            .unwrap();
        home.fingerprint = fpr;
        home
    }

    fn gpg(&self) -> Command {
        let mut c = Command::new("gpg");
        c.env("GNUPGHOME", self.dir.path())
            .args(["--batch", "--yes"]);
        c
    }

    fn export(&self, to: &Path, armor: bool) {
        let mut c = self.gpg();
        if armor {
            c.arg("--armor");
        }
        common::run(
            c.arg("--output")
                .arg(to)
                .args(["--export", &self.fingerprint]),
        );
    }
}

impl Drop for GpgHome {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", self.dir.path())
            .args(["--kill", "all"])
            .output();
    }
}

struct Fixture {
    tmp: tempfile::TempDir,
    layout: OciLayout,
    digest: Digest,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let (layout, desc) = common::busybox_image(tmp.path(), "v1", Compression::Gzip);
    Fixture {
        digest: desc.digest,
        layout,
        tmp,
    }
}

impl Fixture {
    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn oci(&self) -> String {
        format!("oci:{}:v1", self.layout.root().display())
    }

    fn policy(&self, json: &str) -> Policy {
        Policy::parse(json.as_bytes(), self.tmp.path()).unwrap()
    }

    /// `skopeo copy` of the image to `dir:NAME` with extra args; checks the
    /// manifest was copied byte for byte (so signatures name our digest).
    fn skopeo_to_dir(&self, name: &str, args: &[&str], gnupg: Option<&GpgHome>) -> PathBuf {
        let dir = self.path(name);
        let mut c = common::skopeo(self.tmp.path());
        if let Some(g) = gnupg {
            c.env("GNUPGHOME", g.dir.path());
        }
        common::run(
            c.args(["copy", "--quiet"])
                .args(args)
                .arg(self.oci())
                .arg(format!("dir:{}", dir.display())),
        );
        let m = std::fs::read(dir.join("manifest.json")).unwrap();
        assert_eq!(Digest::sha256(&m), self.digest);
        dir
    }
}

fn subject(digest: &Digest, identity: &str) -> Subject {
    Subject {
        manifest_digest: digest.clone(),
        identity: Some(DockerReference::parse(identity).unwrap()),
    }
}

fn verify(
    policy: &Policy,
    subject: &Subject,
    sigs: &[StoredSignature],
) -> Result<sign::Acceptance, SignError> {
    let scopes = subject.identity.as_ref().unwrap().policy_scopes();
    sign::evaluate(policy, "docker", &scopes, subject, sigs)
}

fn refusal(r: Result<sign::Acceptance, SignError>) -> String {
    let e = r.expect_err("accepted");
    assert!(e.is_refusal(), "not a refusal: {e}");
    e.to_string()
}

fn sigstore_keys(f: &Fixture, name: &str) -> (PrivateKey, PathBuf, PathBuf) {
    let key = PrivateKey::generate();
    let enc = f.path(&format!("{name}.key"));
    std::fs::write(&enc, key.to_encrypted_pem(b"s3cret").unwrap()).unwrap();
    let public = f.path(&format!("{name}.pub"));
    std::fs::write(&public, key.public_key().to_pem().unwrap()).unwrap();
    (key, enc, public)
}

fn sigstore_policy(pub_path: &Path, identity: &str) -> String {
    format!(
        r#"{{"default":[{{"type":"reject"}}],
            "transports":{{"docker":{{"registry.example/team":[
              {{"type":"sigstoreSigned","keyPath":"{}"{identity}}}]}}}}}}"#,
        pub_path.display()
    )
}

/// Debian's skopeo is built with sigstore disabled and cosign is not
/// packaged, so the independent implementation here is OpenSSL: a P-256
/// PKCS#8 key from `openssl genpkey` (what `cosign import-key-pair` takes)
/// and a signature from `openssl dgst -sha256 -sign` over veil's payload
/// must verify, and veil's signatures must verify with `openssl dgst
/// -verify`.
#[test]
fn sigstore_signatures_interop_with_openssl_and_bad_ones_are_refused() {
    let f = fixture();
    let dir = f.tmp.path();
    let (private, public) = common::keypair(dir, "p256-pkcs8");
    let identity = DockerReference::parse(IDENTITY).unwrap();

    // openssl signs veil's payload; veil verifies.
    let payload = veil_image::sign::payload::Payload::build(
        veil_image::sign::payload::PayloadKind::Cosign,
        &identity,
        &f.digest,
        1_700_000_000,
    );
    std::fs::write(f.path("payload.json"), &payload).unwrap();
    common::openssl(
        &[
            "dgst",
            "-sha256",
            "-sign",
            "p256-pkcs8.key",
            "-out",
            "sig.der",
            "payload.json",
        ],
        dir,
    );
    use base64::Engine as _;
    let from_openssl = veil_image::sign::cosign::SigstoreSignature {
        payload,
        signature: base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(f.path("sig.der")).unwrap()),
        annotations: Default::default(),
    };
    // veil signs with the openssl key (PKCS#8 PEM); openssl verifies.
    let key = PrivateKey::from_pem(&std::fs::read(&private).unwrap(), None).unwrap();
    let ours = sign::sign_sigstore(&key, &identity, &f.digest);
    std::fs::write(f.path("ours.json"), &ours.payload).unwrap();
    std::fs::write(
        f.path("ours.der"),
        base64::engine::general_purpose::STANDARD
            .decode(&ours.signature)
            .unwrap(),
    )
    .unwrap();
    let out = common::openssl(
        &[
            "dgst",
            "-sha256",
            "-verify",
            "p256-pkcs8.pub",
            "-signature",
            "ours.der",
            "ours.json",
        ],
        dir,
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Verified OK"));
    // Stored as skopeo stores sigstore signatures in dir: (and read back).
    let signed = f.path("signed");
    std::fs::create_dir(&signed).unwrap();
    std::fs::write(signed.join("manifest.json"), b"{}").unwrap();
    std::fs::write(
        signed.join("signature-1"),
        StoredSignature::Sigstore(from_openssl.clone()).to_blob(),
    )
    .unwrap();
    let sigs = sign::read_dir_transport(&signed).unwrap();
    assert_eq!(sigs, vec![StoredSignature::Sigstore(from_openssl)]);
    // Both verify under a sigstoreSigned policy.
    verify(
        &f.policy(&sigstore_policy(&public, "")),
        &subject(&f.digest, IDENTITY),
        &[StoredSignature::Sigstore(ours)],
    )
    .unwrap();

    let policy = f.policy(&sigstore_policy(&public, ""));
    let ok = verify(&policy, &subject(&f.digest, IDENTITY), &sigs).unwrap();
    assert_eq!(ok.scope, "transports.docker[\"registry.example/team\"]");
    assert!(ok.reasons[0].contains(IDENTITY), "{ok:?}");
    // By digest: an image reference with the digest instead of a tag.
    let by_digest = format!("registry.example/team/app@{}", f.digest);
    verify(&policy, &subject(&f.digest, &by_digest), &sigs).unwrap();

    // Re-tagged: the signature says v1, the image is pulled as v2.
    let e = refusal(verify(
        &policy,
        &subject(&f.digest, "registry.example/team/app:v2"),
        &sigs,
    ));
    assert!(e.contains("signed identity check failed"), "{e}");
    assert!(e.contains("registry.example/team/app:v2"), "{e}");
    // Moved to another repository, under matchRepository.
    let policy_repo = f.policy(&sigstore_policy(
        &public,
        r#","signedIdentity":{"type":"matchRepository"}"#,
    ));
    verify(
        &policy_repo,
        &subject(&f.digest, "registry.example/team/app:v2"),
        &sigs,
    )
    .unwrap();
    let e = refusal(verify(
        &policy_repo,
        &subject(&f.digest, "registry.example/team/other:v1"),
        &sigs,
    ));
    assert!(e.contains("matchRepository"), "{e}");

    // Altered image: another manifest digest.
    let altered = Digest::sha256(b"another manifest");
    let e = refusal(verify(&policy, &subject(&altered, IDENTITY), &sigs));
    assert!(e.contains("signed manifest digest check failed"), "{e}");
    assert!(e.contains(&f.digest.to_string()) && e.contains(&altered.to_string()));

    // Wrong key.
    let (_, _, other_pub) = sigstore_keys(&f, "other");
    let e = refusal(verify(
        &f.policy(&sigstore_policy(&other_pub, "")),
        &subject(&f.digest, IDENTITY),
        &sigs,
    ));
    assert!(e.contains("sigstore signature check failed"), "{e}");

    // Tampered payload (signature kept).
    let mut tampered = sigs.clone();
    if let StoredSignature::Sigstore(s) = &mut tampered[0] {
        s.payload = String::from_utf8(s.payload.clone())
            .unwrap()
            .replace("team/app", "team/evil")
            .into_bytes();
    }
    let e = refusal(verify(&policy, &subject(&f.digest, IDENTITY), &tampered));
    assert!(e.contains("ECDSA P-256 verification"), "{e}");

    // No signature at all.
    let e = refusal(verify(&policy, &subject(&f.digest, IDENTITY), &[]));
    assert!(e.contains("no sigstore signature found"), "{e}");
}

#[test]
fn skopeo_gpg_signatures_verify_and_bad_ones_are_refused() {
    let f = fixture();
    let signer = GpgHome::new("signer");
    let stranger = GpgHome::new("stranger");
    let dir = f.skopeo_to_dir(
        "signed",
        &[
            "--sign-by",
            &signer.fingerprint,
            "--sign-identity",
            IDENTITY,
        ],
        Some(&signer),
    );
    let sigs = sign::read_dir_transport(&dir).unwrap();
    assert_eq!(sigs.len(), 1);
    assert!(matches!(sigs[0], StoredSignature::Gpg(_)));

    signer.export(&f.path("signer.asc"), true);
    signer.export(&f.path("signer.gpg"), false);
    stranger.export(&f.path("stranger.asc"), true);
    let policy_for = |key: &str, extra: &str| {
        f.policy(&format!(
            r#"{{"default":[{{"type":"reject"}}],
                "transports":{{"docker":{{"":[
                  {{"type":"signedBy","keyType":"GPGKeys","keyPath":"{key}"{extra}}}]}}}}}}"#
        ))
    };
    // Armored and binary keyrings, relative to the policy's directory.
    for key in ["signer.asc", "signer.gpg"] {
        let ok = verify(&policy_for(key, ""), &subject(&f.digest, IDENTITY), &sigs).unwrap();
        assert!(ok.reasons[0].contains(&signer.fingerprint), "{ok:?}");
    }
    let policy = policy_for("signer.asc", "");

    // Wrong key.
    let e = refusal(verify(
        &policy_for("stranger.asc", ""),
        &subject(&f.digest, IDENTITY),
        &sigs,
    ));
    assert!(e.contains("GPG signature check failed"), "{e}");
    // Re-tagged.
    let e = refusal(verify(
        &policy,
        &subject(&f.digest, "registry.example/team/app:latest"),
        &sigs,
    ));
    assert!(e.contains("signed identity check failed"), "{e}");
    // exactReference pins the signed name whatever the image is called.
    let pinned = policy_for(
        "signer.asc",
        &format!(r#","signedIdentity":{{"type":"exactReference","dockerReference":"{IDENTITY}"}}"#),
    );
    verify(&pinned, &subject(&f.digest, "mirror.example/app:x"), &sigs).unwrap();
    // Altered image.
    let e = refusal(verify(
        &policy,
        &subject(&Digest::sha256(b"x"), IDENTITY),
        &sigs,
    ));
    assert!(e.contains("signed manifest digest check failed"), "{e}");
    // A corrupted signature.
    let StoredSignature::Gpg(blob) = &sigs[0] else {
        unreachable!()
    };
    let mut bad = blob.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x40;
    let e = refusal(verify(
        &policy,
        &subject(&f.digest, IDENTITY),
        &[StoredSignature::Gpg(bad)],
    ));
    assert!(e.contains("GPG signature check failed"), "{e}");
    // Missing signature under signedBy: a sigstore signature does not count.
    let e = refusal(verify(
        &policy,
        &subject(&f.digest, IDENTITY),
        &[StoredSignature::Sigstore(sign::sign_sigstore(
            &PrivateKey::generate(),
            &DockerReference::parse(IDENTITY).unwrap(),
            &f.digest,
        ))],
    ));
    assert!(
        e.contains("signedBy check failed: no GPG signature found"),
        "{e}"
    );
}

#[test]
fn veil_signatures_verify_with_veil_and_with_skopeo() {
    let f = fixture();
    let identity = DockerReference::parse(IDENTITY).unwrap();
    // sigstore: attached to the layout under sha256-<hex>.sig.
    let (key, _, public) = sigstore_keys(&f, "cosign");
    let sig = sign::sign_sigstore(&key, &identity, &f.digest);
    cosign::attach_to_layout(&f.layout, &f.digest, sig.clone()).unwrap();
    // Attaching the same signature again does not duplicate it.
    let att = cosign::attach_to_layout(&f.layout, &f.digest, sig.clone()).unwrap();
    let found = cosign::read_attachment(&f.layout, &att).unwrap();
    assert_eq!(found, vec![sig.clone()]);
    let sigs: Vec<StoredSignature> = found.into_iter().map(StoredSignature::Sigstore).collect();
    verify(
        &f.policy(&sigstore_policy(&public, "")),
        &subject(&f.digest, IDENTITY),
        &sigs,
    )
    .unwrap();
    // The image itself still resolves (the attachment is another tag).
    OciLayout::open(f.layout.root())
        .unwrap()
        .resolve(Some("v1"), &Platform::linux_amd64())
        .unwrap();

    // GPG: made with gpg, stored in a lookaside directory.
    let signer = GpgHome::new("signer");
    let opts = veil_image::sign::gpg::GpgOptions {
        home: Some(signer.dir.path().to_path_buf()),
        passphrase_file: None,
    };
    let gsig = sign::sign_gpg(&signer.fingerprint, &identity, &f.digest, &opts).unwrap();
    let lookaside = f.path("lookaside");
    let path = sign::write_lookaside(&lookaside, &identity, &f.digest, &gsig).unwrap();
    assert_eq!(
        path,
        lookaside.join(format!("team/app@sha256={}/signature-1", f.digest.hex()))
    );
    let found = sign::read_lookaside(&lookaside, &identity, &f.digest).unwrap();
    signer.export(&f.path("signer.asc"), true);
    let gpg_policy =
        f.policy(r#"{"default":[{"type":"signedBy","keyType":"GPGKeys","keyPath":"signer.asc"}]}"#);
    verify(&gpg_policy, &subject(&f.digest, IDENTITY), &found).unwrap();

    // skopeo accepts veil's GPG signature stored as its dir: signature, and
    // refuses it under a key that did not sign (its sigstore support is
    // disabled in Debian's build).
    let stranger = GpgHome::new("stranger");
    stranger.export(&f.path("stranger.asc"), true);
    let dir = f.skopeo_to_dir("dir-gpg", &[], None);
    std::fs::write(dir.join("signature-1"), gsig.to_blob()).unwrap();
    let skopeo_verify = |key: &str| {
        let policy = f.path("skopeo-verify.json");
        std::fs::write(
            &policy,
            format!(
                r#"{{"default":[{{"type":"reject"}}],"transports":{{"dir":{{"":[
                  {{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}",
                    "signedIdentity":{{"type":"exactReference","dockerReference":"{IDENTITY}"}}}}]}}}}}}"#,
                f.path(key).display()
            ),
        )
        .unwrap();
        Command::new("skopeo")
            .arg("--policy")
            .arg(&policy)
            .args(["copy", "--quiet", "--remove-signatures"])
            .arg(format!("dir:{}", dir.display()))
            .arg(format!("oci:{}:{key}", f.path("accepted").display()))
            .output()
            .unwrap()
    };
    let out = skopeo_verify("signer.asc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = skopeo_verify("stranger.asc");
    assert!(
        !out.status.success(),
        "skopeo accepted a signature by another key"
    );
}

#[test]
fn oci_scopes_cover_the_layout_path() {
    let s = oci_scopes(Path::new("/a/b"), Some("v1"));
    assert_eq!(s, ["/a/b:v1", "/a/b", "/a", "/"]);
}
