//! Progress bars appear on stderr only when it is a terminal; piped output
//! (scripts, CI logs) carries no escape sequences, and stdout never does.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use veil_image::OciLayout;
use veil_image::builder::ImageBuilder;
use veil_image::spec::Compression;

/// A layout with a one-layer image `app:1` of incompressible bytes and an
/// EC key pair (private, public).
fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let root = dir.join("root");
    std::fs::create_dir_all(&root).unwrap();
    let mut data = vec![0u8; 4 << 20];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    std::fs::write(root.join("blob"), &data).unwrap();
    let layout = OciLayout::create(dir.join("layout")).unwrap();
    let mut b = ImageBuilder::new(&layout);
    b.add_layer_dir(&root, Compression::Gzip).unwrap();
    b.finish("app:1").unwrap();
    let (key, public) = (dir.join("key.pem"), dir.join("pub.pem"));
    let ok = |c: &mut Command| assert!(c.status().unwrap().success());
    ok(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key));
    ok(Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&key)
        .arg("-out")
        .arg(&public));
    (key, public)
}

fn encrypt(dir: &Path, public: &Path, tag: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_veil"));
    c.env("VEIL_DATA_DIR", dir.join("data"))
        .env_remove("VEIL_NO_PROGRESS")
        .args(["image", "encrypt"])
        .arg(format!("oci:{}:app:1", dir.join("layout").display()))
        .arg(format!("oci:{}:{tag}", dir.join("layout").display()))
        .arg("--recipient")
        .arg(format!("jwe:{}", public.display()));
    c
}

fn is_digest_line(s: &str) -> bool {
    s.strip_prefix("sha256:")
        .and_then(|h| h.strip_suffix('\n'))
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

#[test]
fn piped_output_has_no_escape_sequences() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = setup(tmp.path());
    let out = encrypt(tmp.path(), &public, "enc").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(is_digest_line(&stdout), "{stdout:?}");
    assert!(
        !stderr.contains('\x1b') && !stderr.contains('\r'),
        "{stderr:?}"
    );

    let layout = tmp.path().join("layout");
    let out = Command::new(env!("CARGO_BIN_EXE_veil"))
        .args(["image", "decrypt"])
        .arg(format!("oci:{}:enc", layout.display()))
        .arg(format!("oci:{}:dec", layout.display()))
        .arg("--key")
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_digest_line(&String::from_utf8_lossy(&out.stdout)));
    assert!(!out.stderr.contains(&0x1b) && !out.stderr.contains(&b'\r'));
}

#[test]
fn a_terminal_gets_a_progress_bar_on_stderr_and_stdout_stays_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, public) = setup(tmp.path());
    let ws = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 100,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(Some(&ws), None).unwrap();
    let mut child = encrypt(tmp.path(), &public, "enc-tty")
        .stdout(Stdio::piped())
        .stderr(Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    let mut master = std::fs::File::from(pty.master);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        // EIO once the child (the only holder of the slave) has exited.
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        got
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(child.wait().unwrap().success());
    let stderr = String::from_utf8_lossy(&reader.join().unwrap()).into_owned();
    assert!(is_digest_line(&stdout), "{stdout:?}");
    assert!(stderr.contains("encrypting"), "{stderr:?}");
    assert!(stderr.contains("layer 1/1"), "{stderr:?}");
    assert!(stderr.contains('\x1b'), "{stderr:?}");
}
