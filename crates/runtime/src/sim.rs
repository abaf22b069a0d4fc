//! The sim platform: the host-side stand-in for the AMD secure processor.
//!
//! It holds the sim platform key (in veil's data dir, created on first use,
//! mode 0600), records for each sandbox at launch the measurement and the
//! init-data digest, and answers report requests that arrive on that
//! sandbox's own channel — a unix socket pair whose other end only the
//! sandbox's agent holds, so no other process can ask for reports in its
//! name.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use veil_attest::sim::{SimPlatformKey, SimReportBody, SimRootKey};
use veil_tee::channel::{ChannelError, recv_json, send_json};
use veil_tee::sim::{MAX_PLATFORM_MESSAGE, PlatformRequest, PlatformResponse};

/// File name of the platform key inside the sim dir.
pub const KEY_FILE: &str = "platform-key.pem";

/// Sim platform errors.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("sim platform key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("sim platform channel: {0}")]
    Channel(#[from] ChannelError),
    #[error("sim platform: {0}")]
    Io(#[from] std::io::Error),
}

/// What the platform recorded when it launched one sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchRecord {
    /// Launch measurement (SHA-384 of the agent binary and launch config).
    pub measurement: [u8; 48],
    /// The init-data digest, zero-padded to 64 bytes.
    pub init_data: [u8; 64],
    /// Launched with debugging enabled.
    pub debug: bool,
}

/// The sim platform of this host.
pub struct SimPlatform {
    key: SimPlatformKey,
    key_path: PathBuf,
}

impl SimPlatform {
    /// The directory holding the platform key (and its digest cache).
    pub fn dir(&self) -> &Path {
        self.key_path.parent().unwrap_or(Path::new("."))
    }
}

impl std::fmt::Debug for SimPlatform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPlatform")
            .field("key_path", &self.key_path)
            .finish()
    }
}

impl SimPlatform {
    /// Load the key from `dir/platform-key.pem`, creating it (0600, written
    /// to a temporary file and renamed) if it does not exist.
    pub fn load_or_create(dir: &Path) -> Result<Self, SimError> {
        let path = dir.join(KEY_FILE);
        let err = |reason: String| SimError::Key {
            path: path.clone(),
            reason,
        };
        match std::fs::read_to_string(&path) {
            Ok(pem) => {
                let mode = std::fs::metadata(&path)
                    .map_err(|e| err(e.to_string()))?
                    .permissions()
                    .mode();
                if mode & 0o077 != 0 {
                    return Err(err(format!(
                        "permissions are {:o}; the key must be readable by its owner only (chmod 600)",
                        mode & 0o777
                    )));
                }
                let key = SimPlatformKey::from_pem(&pem).map_err(|e| err(e.to_string()))?;
                Ok(SimPlatform {
                    key,
                    key_path: path,
                })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| err(format!("creating {}: {e}", dir.display())))?;
                let key = SimPlatformKey::generate();
                let pem = key.to_pem().map_err(|e| err(e.to_string()))?;
                let tmp = dir.join(format!(".{KEY_FILE}.{}", std::process::id()));
                let write = || -> std::io::Result<()> {
                    let mut f = std::fs::OpenOptions::new()
                        .write(true)
                        .create_new(true)
                        .mode(0o600)
                        .open(&tmp)?;
                    f.write_all(pem.as_bytes())?;
                    f.sync_all()?;
                    // Another process may have created the key meanwhile: keep theirs.
                    match std::fs::hard_link(&tmp, &path) {
                        Ok(()) => Ok(()),
                        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                        Err(e) => Err(e),
                    }
                };
                let r = write();
                let _ = std::fs::remove_file(&tmp);
                r.map_err(|e| err(e.to_string()))?;
                Self::load_or_create(dir)
            }
            Err(e) => Err(err(e.to_string())),
        }
    }

    /// A platform with a given key (tests).
    pub fn with_key(key: SimPlatformKey) -> Self {
        SimPlatform {
            key,
            key_path: PathBuf::new(),
        }
    }

    /// The root public key verifiers must be told to trust.
    pub fn root(&self) -> SimRootKey {
        self.key.root()
    }

    /// Where the key lives.
    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    /// Sign one report for a sandbox.
    pub fn report(
        &self,
        launch: &LaunchRecord,
        report_data: &[u8],
    ) -> Result<serde_json::Value, String> {
        let mut body = SimReportBody::new(report_data, &launch.measurement, &launch.init_data)
            .map_err(|e| e.to_string())?;
        body.debug = launch.debug;
        serde_json::from_str(&self.key.evidence_json(&body)).map_err(|e| e.to_string())
    }

    /// Launch a sandbox's platform channel: returns the guest's end; a
    /// thread answers report requests on the host's end until the guest
    /// closes it.
    pub fn launch(
        self: &std::sync::Arc<Self>,
        launch: LaunchRecord,
    ) -> Result<(UnixStream, JoinHandle<()>), SimError> {
        let (host, guest) = UnixStream::pair()?;
        let platform = self.clone();
        let handle = std::thread::Builder::new()
            .name("veil-sim-platform".into())
            .spawn(move || {
                if let Err(e) = platform.serve(host, &launch) {
                    tracing::debug!(error = %e, "sim platform channel ended");
                }
            })?;
        Ok((guest, handle))
    }

    /// Answer requests on one channel until it closes.
    pub fn serve(&self, mut channel: UnixStream, launch: &LaunchRecord) -> Result<(), SimError> {
        while let Some(req) = recv_json::<PlatformRequest>(&mut channel, MAX_PLATFORM_MESSAGE)? {
            let resp = match req {
                PlatformRequest::Report { report_data } => match B64.decode(report_data.as_bytes())
                {
                    Ok(rd) if rd.len() == 64 => match self.report(launch, &rd) {
                        Ok(evidence) => PlatformResponse::Report { evidence },
                        Err(message) => PlatformResponse::Error { message },
                    },
                    Ok(rd) => PlatformResponse::Error {
                        message: format!("report_data must be 64 bytes, got {}", rd.len()),
                    },
                    Err(e) => PlatformResponse::Error {
                        message: format!("report_data is not base64: {e}"),
                    },
                },
            };
            send_json(&mut channel, &resp)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use veil_tee::Attester;

    #[test]
    fn key_is_created_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let a = SimPlatform::load_or_create(dir.path()).unwrap();
        let b = SimPlatform::load_or_create(dir.path()).unwrap();
        assert_eq!(a.root(), b.root());
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::set_permissions(
            dir.path().join(KEY_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let e = SimPlatform::load_or_create(dir.path())
            .unwrap_err()
            .to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn guest_gets_verifiable_reports_with_the_launch_record() {
        let p = Arc::new(SimPlatform::with_key(SimPlatformKey::generate()));
        let mut init = [0u8; 64];
        init[..48].copy_from_slice(&[0x42; 48]);
        let launch = LaunchRecord {
            measurement: [0x17; 48],
            init_data: init,
            debug: false,
        };
        let (guest, handle) = p.launch(launch).unwrap();
        let att = veil_tee::sim::SimAttester::new(guest);
        assert_eq!(att.init_data_binding().unwrap(), init.to_vec());
        assert_eq!(att.measurement().unwrap(), vec![0x17; 48]);
        let ev = att.evidence(&[3u8; 64]).unwrap();
        let claims =
            veil_attest::sim::verify(ev.json.to_string().as_bytes(), Some(&p.root())).unwrap();
        assert_eq!(claims.report_data, vec![3u8; 64]);
        drop(att);
        handle.join().unwrap();
    }
}
