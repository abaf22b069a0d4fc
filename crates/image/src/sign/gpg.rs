//! containers "simple signing" GPG signatures, verified with Debian's
//! `gpgv` and made with `gpg`.
//!
//! Why a subprocess and not a Rust OpenPGP crate: the pure-Rust
//! implementations (rPGP, Sequoia) each bring a large dependency tree of
//! their own crypto generations, while `gpgv` is the reference verifier
//! that `containers/image` (via gpgme) agrees with. The trust decision stays
//! in veil: `gpgv` runs with an empty home directory and a keyring holding
//! only the policy's keys, its `--status-fd` output is parsed strictly
//! (exactly one `VALIDSIG`, no bad / expired / revoked signature status),
//! and the signed payload it extracts is then checked by veil.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::SignError;
use super::payload::MAX_PAYLOAD_BYTES;

/// Largest keyring accepted from a policy.
pub const MAX_KEYRING_BYTES: usize = 4 << 20;

/// The `gpgv` to run (`VEIL_GPGV` overrides).
fn gpgv_program() -> PathBuf {
    std::env::var_os("VEIL_GPGV").map_or_else(|| PathBuf::from("gpgv"), PathBuf::from)
}

/// A keyring of trusted public keys (binary OpenPGP packets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyring(Vec<u8>);

impl Keyring {
    /// From binary or ASCII-armored public keys (several files may be
    /// concatenated by calling this for each and [`Keyring::extend`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, SignError> {
        if bytes.len() > MAX_KEYRING_BYTES {
            return Err(SignError::Key(format!(
                "GPG keyring larger than {MAX_KEYRING_BYTES} bytes"
            )));
        }
        let text = bytes.trim_ascii_start();
        if text.starts_with(b"-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            return dearmor(text).map(Keyring);
        }
        // Binary: an OpenPGP packet header has the high bit set.
        match bytes.first() {
            Some(b) if b & 0x80 != 0 => Ok(Keyring(bytes.to_vec())),
            _ => Err(SignError::Key(
                "GPG keyring is neither binary OpenPGP nor an armored PUBLIC KEY BLOCK".into(),
            )),
        }
    }

    /// Append another keyring's keys.
    pub fn extend(&mut self, other: Keyring) {
        self.0.extend(other.0);
    }

    /// Binary packets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

/// Decode ASCII armor (RFC 4880 §6): headers, base64 body, CRC-24 checked
/// when present. Several blocks may follow each other.
fn dearmor(text: &[u8]) -> Result<Vec<u8>, SignError> {
    let bad = |r: &str| SignError::Key(format!("armored GPG key: {r}"));
    let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8"))?;
    let mut out = Vec::new();
    let mut lines = text.lines().map(str::trim_end);
    let mut blocks = 0;
    while let Some(line) = lines.next() {
        if !line.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----") {
            continue;
        }
        // Armor headers end at the first empty line.
        let mut in_headers = true;
        let mut body = String::new();
        let mut crc: Option<&str> = None;
        let mut ended = false;
        for l in lines.by_ref() {
            if l.starts_with("-----END PGP PUBLIC KEY BLOCK-----") {
                ended = true;
                break;
            }
            if in_headers {
                if l.is_empty() {
                    in_headers = false;
                } else if !l.contains(": ") {
                    // No headers at all: this is already body.
                    in_headers = false;
                    body.push_str(l);
                }
                continue;
            }
            if let Some(c) = l.strip_prefix('=') {
                crc = Some(c);
            } else {
                body.push_str(l);
            }
        }
        if !ended {
            return Err(bad("missing END line"));
        }
        let data = B64
            .decode(body.as_bytes())
            .map_err(|e| bad(&format!("base64: {e}")))?;
        if let Some(c) = crc {
            let want = B64.decode(c).map_err(|_| bad("checksum is not base64"))?;
            let got = crc24(&data).to_be_bytes();
            if want.as_slice() != &got[1..] {
                return Err(bad("CRC-24 checksum mismatch"));
            }
        }
        out.extend(data);
        blocks += 1;
    }
    if blocks == 0 {
        return Err(bad("no PUBLIC KEY BLOCK"));
    }
    Ok(out)
}

fn crc24(data: &[u8]) -> u32 {
    let mut crc: u32 = 0xB7_04CE;
    for &b in data {
        crc ^= u32::from(b) << 16;
        for _ in 0..8 {
            crc <<= 1;
            if crc & 0x100_0000 != 0 {
                crc ^= 0x186_4CFB;
            }
        }
    }
    crc & 0xFF_FFFF
}

/// A verified GPG signature: who signed and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Fingerprint of the primary key that signed (upper-case hex).
    pub fingerprint: String,
    /// The signed payload (not yet interpreted).
    pub payload: Vec<u8>,
}

/// Verify an inline-signed OpenPGP message with `gpgv` against `keyring`
/// only; return the signer and the payload.
pub fn verify(signature: &[u8], keyring: &Keyring) -> Result<Verified, SignError> {
    let refused = |reason: String| SignError::Refused {
        check: "GPG signature",
        reason,
    };
    if signature.len() > MAX_PAYLOAD_BYTES + 64 * 1024 {
        return Err(refused(format!(
            "signature of {} bytes is larger than accepted",
            signature.len()
        )));
    }
    let tmp =
        tempfile::tempdir().map_err(|e| SignError::io("creating a temporary directory", e))?;
    let home = tmp.path().join("home");
    std::fs::create_dir(&home).map_err(|e| SignError::io("creating a GPG home", e))?;
    set_private(&home)?;
    let ring = tmp.path().join("keyring.gpg");
    write_file(&ring, keyring.as_bytes())?;
    let sig = tmp.path().join("signature");
    write_file(&sig, signature)?;
    let out_path = tmp.path().join("payload");
    let out = Command::new(gpgv_program())
        .arg("--homedir")
        .arg(&home)
        .arg("--keyring")
        .arg(&ring)
        .args(["--status-fd", "1", "--output"])
        .arg(&out_path)
        .arg(&sig)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| SignError::Tool(format!("running gpgv (install Debian's gpgv): {e}")))?;
    let status = String::from_utf8_lossy(&out.stdout);
    let mut validsig = Vec::new();
    for line in status.lines() {
        let Some(rest) = line.strip_prefix("[GNUPG:] ") else {
            continue;
        };
        let mut f = rest.split_ascii_whitespace();
        match f.next() {
            Some("VALIDSIG") => {
                // VALIDSIG <fpr> <date> <ts> <exp> <ver> <res> <pk> <hash> <class> <primary-fpr>
                let fields: Vec<&str> = f.collect();
                let primary = fields.get(9).or(fields.first()).copied().unwrap_or("");
                validsig.push(primary.to_owned());
            }
            Some(s @ ("BADSIG" | "ERRSIG" | "EXPSIG" | "EXPKEYSIG" | "REVKEYSIG")) => {
                let why = match s {
                    "BADSIG" => "the signature does not match the signed data",
                    "ERRSIG" => {
                        "the signature cannot be checked (no policy key made it, or an unsupported algorithm)"
                    }
                    "EXPSIG" => "the signature has expired",
                    "EXPKEYSIG" => "the signing key has expired",
                    _ => "the signing key is revoked",
                };
                return Err(refused(format!("{why} (gpgv: {s})")));
            }
            _ => {}
        }
    }
    if !out.status.success() || validsig.len() != 1 {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let hint = stderr
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no output")
            .chars()
            .take(300)
            .collect::<String>();
        return Err(refused(format!(
            "gpgv found {} valid signatures by the policy's keys, expected exactly one ({hint})",
            validsig.len()
        )));
    }
    // gpgv may have decompressed the payload: read no more than the limit.
    let mut payload = Vec::new();
    std::fs::File::open(&out_path)
        .and_then(|f| {
            f.take(MAX_PAYLOAD_BYTES as u64 + 1)
                .read_to_end(&mut payload)
        })
        .map_err(|e| SignError::io("reading the signed payload", e))?;
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(refused("signed payload larger than accepted".into()));
    }
    Ok(Verified {
        fingerprint: validsig.remove(0),
        payload,
    })
}

/// How to run `gpg` for signing.
#[derive(Debug, Clone, Default)]
pub struct GpgOptions {
    /// GnuPG home holding the secret key (default: `GNUPGHOME` / `~/.gnupg`).
    pub home: Option<PathBuf>,
    /// File holding the key's passphrase (loopback pinentry).
    pub passphrase_file: Option<PathBuf>,
}

/// Sign `payload` with the secret key `key_id`; returns the binary
/// inline-signed message.
pub fn sign(payload: &[u8], key_id: &str, opts: &GpgOptions) -> Result<Vec<u8>, SignError> {
    let mut cmd = Command::new(std::env::var_os("VEIL_GPG").unwrap_or_else(|| "gpg".into()));
    if let Some(h) = &opts.home {
        cmd.arg("--homedir").arg(h);
    }
    cmd.args([
        "--batch",
        "--no-tty",
        "--yes",
        "--sign",
        "--local-user",
        key_id,
    ]);
    if let Some(p) = &opts.passphrase_file {
        cmd.args(["--pinentry-mode", "loopback", "--passphrase-file"])
            .arg(p);
    }
    cmd.args(["--output", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| SignError::Tool(format!("running gpg (install Debian's gnupg): {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(payload)
            .map_err(|e| SignError::io("writing the payload to gpg", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| SignError::io("waiting for gpg", e))?;
    if !out.status.success() || out.stdout.is_empty() {
        return Err(SignError::Tool(format!(
            "gpg --sign --local-user {key_id} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out.stdout)
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    std::fs::write(path, bytes).map_err(|e| SignError::io(format!("writing {}", path.display()), e))
}

fn set_private(dir: &Path) -> Result<(), SignError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| SignError::io(format!("chmod {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc24_matches_rfc4880() {
        // The CRC of no data is the initial value.
        assert_eq!(crc24(b""), 0xB704CE);
        let armored = "-----BEGIN PGP PUBLIC KEY BLOCK-----\nComment: x\n\nAQID\n=";
        let crc = B64.encode(&crc24(&[1, 2, 3]).to_be_bytes()[1..]);
        let text = format!("{armored}{crc}\n-----END PGP PUBLIC KEY BLOCK-----\n");
        assert_eq!(dearmor(text.as_bytes()).unwrap(), vec![1, 2, 3]);
        let wrong = format!("{armored}AAAA\n-----END PGP PUBLIC KEY BLOCK-----\n");
        assert!(dearmor(wrong.as_bytes()).is_err());
    }
}
