//! The configfs-tsm report interface (Linux ≥ 6.7):
//! `/sys/kernel/config/tsm/report/<entry>/{provider,inblob,outblob,auxblob,generation}`.
//!
//! One report: `mkdir` a fresh entry, check `provider`, write the 64-byte
//! report data to `inblob`, read `outblob` (and `auxblob` when the provider
//! has one), read `generation` and require that exactly our one write
//! happened (a concurrent writer on the same entry would make the outblob
//! someone else's), `rmdir` the entry. An empty outblob is an error: a
//! misconfigured TDX quoting service gives one without any error code.

use std::io;
use std::path::{Path, PathBuf};

use rand_core::{OsRng, RngCore};

use crate::{REPORT_DATA_LEN, TeeError};

/// Where configfs-tsm reports live.
pub const DEFAULT_ROOT: &str = "/sys/kernel/config/tsm/report";
/// Largest outblob / auxblob accepted (quotes with certificates are ~10 KiB).
pub const MAX_BLOB_BYTES: u64 = 1 << 20;

/// The file operations configfs-tsm needs, so a fake tree can stand in for
/// the kernel in tests.
pub trait ConfigFs: Send + Sync {
    /// Create a report entry directory.
    fn mkdir(&self, path: &Path) -> io::Result<()>;
    /// Read an attribute (bounded by `max` bytes).
    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>>;
    /// Write an attribute.
    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()>;
    /// Remove a report entry directory.
    fn rmdir(&self, path: &Path) -> io::Result<()>;
}

/// The real configfs (plain file operations: configfs entries are removed
/// with `rmdir` even though their attributes look like files).
#[derive(Debug, Clone, Copy, Default)]
pub struct KernelConfigFs;

impl ConfigFs for KernelConfigFs {
    fn mkdir(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir(path)
    }

    fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
        use std::io::Read;
        let mut out = Vec::new();
        std::fs::File::open(path)?
            .take(max + 1)
            .read_to_end(&mut out)?;
        if out.len() as u64 > max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} holds more than {max} bytes", path.display()),
            ));
        }
        Ok(out)
    }

    fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(data)
    }

    fn rmdir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }
}

/// One report's output.
#[derive(Debug, Clone)]
pub struct TsmOutput {
    /// The provider that produced it (`sev_guest`, `tdx_guest`).
    pub provider: String,
    /// The report (SNP) or quote (TDX).
    pub outblob: Vec<u8>,
    /// The certificate table (SNP extended reports), if any.
    pub auxblob: Option<Vec<u8>>,
}

/// A configfs-tsm report generator for one provider.
pub struct TsmReport {
    root: PathBuf,
    fs: Box<dyn ConfigFs>,
    provider: &'static str,
}

impl std::fmt::Debug for TsmReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsmReport")
            .field("root", &self.root)
            .field("provider", &self.provider)
            .finish()
    }
}

/// Removes the entry when dropped, whatever happened.
struct Entry<'a> {
    fs: &'a dyn ConfigFs,
    path: PathBuf,
}

impl Drop for Entry<'_> {
    fn drop(&mut self) {
        let _ = self.fs.rmdir(&self.path);
    }
}

fn trim(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_string()
}

impl TsmReport {
    /// A generator under `root` expecting `provider` (`sev_guest`, `tdx_guest`).
    pub fn new(root: impl Into<PathBuf>, fs: Box<dyn ConfigFs>, provider: &'static str) -> Self {
        TsmReport {
            root: root.into(),
            fs,
            provider,
        }
    }

    /// The kernel's configfs-tsm at [`DEFAULT_ROOT`].
    pub fn kernel(provider: &'static str) -> Self {
        Self::new(DEFAULT_ROOT, Box::new(KernelConfigFs), provider)
    }

    /// The expected provider name.
    pub fn provider(&self) -> &'static str {
        self.provider
    }

    /// Produce one report binding `report_data`.
    pub fn generate(&self, report_data: &[u8; REPORT_DATA_LEN]) -> Result<TsmOutput, TeeError> {
        let mut rnd = [0u8; 8];
        OsRng.fill_bytes(&mut rnd);
        let path = self.root.join(format!("veil-{}", hex::encode(rnd)));
        self.fs.mkdir(&path).map_err(|e| {
            TeeError::io(
                format!(
                    "creating configfs-tsm report entry {} (is configfs mounted and the {} driver loaded?)",
                    path.display(),
                    self.provider
                ),
                e,
            )
        })?;
        let entry = Entry {
            fs: self.fs.as_ref(),
            path,
        };
        let attr = |name: &str| entry.path.join(name);
        let read = |name: &str, max: u64| {
            self.fs
                .read(&attr(name), max)
                .map_err(|e| TeeError::io(format!("reading {}", attr(name).display()), e))
        };
        let provider = trim(&read("provider", 256)?);
        if provider != self.provider {
            return Err(TeeError::Check {
                check: "configfs-tsm provider",
                expected: self.provider.into(),
                actual: provider,
            });
        }
        let before = parse_generation(&read("generation", 64)?)?;
        self.fs
            .write(&attr("inblob"), report_data)
            .map_err(|e| TeeError::io(format!("writing {}", attr("inblob").display()), e))?;
        let outblob = read("outblob", MAX_BLOB_BYTES)?;
        let auxblob = match self.fs.read(&attr("auxblob"), MAX_BLOB_BYTES) {
            Ok(b) if !b.is_empty() => Some(b),
            Ok(_) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(TeeError::io(
                    format!("reading {}", attr("auxblob").display()),
                    e,
                ));
            }
        };
        let after = parse_generation(&read("generation", 64)?)?;
        if after != before + 1 {
            return Err(TeeError::Check {
                check: "configfs-tsm generation (another writer raced on the report entry)",
                expected: (before + 1).to_string(),
                actual: after.to_string(),
            });
        }
        if outblob.is_empty() {
            return Err(TeeError::Check {
                check: "configfs-tsm outblob",
                expected: "a non-empty report".into(),
                actual:
                    "an empty outblob (for TDX: is the host's quote generation service configured?)"
                        .into(),
            });
        }
        drop(entry);
        Ok(TsmOutput {
            provider,
            outblob,
            auxblob,
        })
    }
}

fn parse_generation(bytes: &[u8]) -> Result<u64, TeeError> {
    let s = trim(bytes);
    s.parse::<u64>().map_err(|_| {
        TeeError::malformed("configfs-tsm generation", format!("{s:?} is not a number"))
    })
}

/// A fake configfs-tsm for tests: a directory tree in which `mkdir` creates
/// an entry with `provider` and `generation`, and writing `inblob` runs a
/// caller-supplied "hardware" that produces the outblob (and auxblob).
pub mod fake {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::{fs, io};

    use super::ConfigFs;

    /// Produces (outblob, auxblob) from the report data written to inblob.
    pub type Hardware = dyn Fn(&[u8]) -> (Vec<u8>, Option<Vec<u8>>) + Send + Sync;

    /// The fake tree.
    pub struct FakeConfigFs {
        provider: String,
        hardware: Box<Hardware>,
        /// Extra generation bumps to apply on the next write (simulates a racing writer).
        pub race: Mutex<u64>,
        /// Entries created so far (tests check they were all removed).
        pub created: Mutex<Vec<PathBuf>>,
    }

    impl FakeConfigFs {
        /// A fake whose entries report `provider` and run `hardware`.
        pub fn new(provider: &str, hardware: Box<Hardware>) -> Self {
            FakeConfigFs {
                provider: provider.into(),
                hardware,
                race: Mutex::new(0),
                created: Mutex::new(Vec::new()),
            }
        }
    }

    impl ConfigFs for FakeConfigFs {
        fn mkdir(&self, path: &Path) -> io::Result<()> {
            fs::create_dir(path)?;
            fs::write(path.join("provider"), format!("{}\n", self.provider))?;
            fs::write(path.join("generation"), "0\n")?;
            fs::write(path.join("outblob"), b"")?;
            if let Ok(mut c) = self.created.lock() {
                c.push(path.to_path_buf());
            }
            Ok(())
        }

        fn read(&self, path: &Path, max: u64) -> io::Result<Vec<u8>> {
            let b = fs::read(path)?;
            if b.len() as u64 > max {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "too large"));
            }
            Ok(b)
        }

        fn write(&self, path: &Path, data: &[u8]) -> io::Result<()> {
            if path.file_name().and_then(|n| n.to_str()) != Some("inblob") {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "read-only attribute",
                ));
            }
            if data.len() != 64 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "inblob must be 64 bytes",
                ));
            }
            let dir = path.parent().unwrap_or(Path::new("."));
            let generation: u64 = fs::read_to_string(dir.join("generation"))?
                .trim()
                .parse()
                .unwrap_or(0);
            let race = self
                .race
                .lock()
                .map(|mut r| std::mem::take(&mut *r))
                .unwrap_or(0);
            let (out, aux) = (self.hardware)(data);
            fs::write(dir.join("inblob"), data)?;
            fs::write(dir.join("outblob"), out)?;
            if let Some(aux) = aux {
                fs::write(dir.join("auxblob"), aux)?;
            }
            fs::write(
                dir.join("generation"),
                format!("{}\n", generation + 1 + race),
            )
        }

        fn rmdir(&self, path: &Path) -> io::Result<()> {
            fs::remove_dir_all(path)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeConfigFs;
    use super::*;

    fn echo() -> Box<fake::Hardware> {
        Box::new(|rd: &[u8]| {
            let mut out = b"REPORT".to_vec();
            out.extend_from_slice(rd);
            (out, None)
        })
    }

    #[test]
    fn generates_and_removes_the_entry() {
        let dir = tempfile::tempdir().unwrap();
        let r = TsmReport::new(
            dir.path(),
            Box::new(FakeConfigFs::new("tdx_guest", echo())),
            "tdx_guest",
        );
        let out = r.generate(&[7u8; 64]).unwrap();
        assert_eq!(&out.outblob[..6], b"REPORT");
        assert_eq!(&out.outblob[6..], &[7u8; 64]);
        assert_eq!(out.provider, "tdx_guest");
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "entry left behind"
        );
    }

    #[test]
    fn wrong_provider_is_refused_and_cleaned_up() {
        let dir = tempfile::tempdir().unwrap();
        let r = TsmReport::new(
            dir.path(),
            Box::new(FakeConfigFs::new("sev_guest", echo())),
            "tdx_guest",
        );
        let e = r.generate(&[0u8; 64]).unwrap_err().to_string();
        assert!(
            e.contains("provider") && e.contains("tdx_guest") && e.contains("sev_guest"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn racing_writer_and_empty_outblob_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeConfigFs::new("tdx_guest", echo());
        *fake.race.lock().unwrap() = 1;
        let r = TsmReport::new(dir.path(), Box::new(fake), "tdx_guest");
        let e = r.generate(&[0u8; 64]).unwrap_err().to_string();
        assert!(
            e.contains("generation") && e.contains("expected 1, got 2"),
            "{e}"
        );

        let empty = FakeConfigFs::new("tdx_guest", Box::new(|_: &[u8]| (Vec::new(), None)));
        let r = TsmReport::new(dir.path(), Box::new(empty), "tdx_guest");
        let e = r.generate(&[0u8; 64]).unwrap_err().to_string();
        assert!(e.contains("empty outblob"), "{e}");
    }

    #[test]
    fn missing_configfs_says_so() {
        let r = TsmReport::new(
            "/nonexistent/tsm/report",
            Box::new(KernelConfigFs),
            "sev_guest",
        );
        let e = r.generate(&[0u8; 64]).unwrap_err().to_string();
        assert!(
            e.contains("configfs-tsm report entry") && e.contains("sev_guest"),
            "{e}"
        );
    }
}
