//! The node's store of encrypted persistent volumes (docs/storage.md), as
//! both front-ends find them: `veil run -v NAME:/p` / a pod's
//! `persistentVolumeClaim` under `veil run`, and a pod's claim through the
//! containerd shim.
//!
//! `veil volume create NAME` writes a record, `<data>/volumes/NAME.json`
//! (public facts: the volume file, its size, the LUKS2 UUID chosen for it
//! and the KBS path of its key), and the sparse volume file (by default
//! `<data>/volumes/NAME.img`). A policy pins each encrypted volume by name,
//! UUID and key path; before a VM sandbox starts, [`disks_for`] finds each
//! pinned volume in this store and checks the UUID, and [`VolumeLock`]
//! keeps a volume attached to one running sandbox at a time.
//!
//! The host is untrusted: these checks make a mistake fail early and
//! clearly; what protects the data is the guest, which opens the disk only
//! with the key the KBS releases after attestation and checks its LUKS2
//! header (UUID, integrity) against the measured policy.

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use veil_policy::model::{EncryptedVolume, VolumePolicy, check_volume_name};

/// Largest volume record read.
const MAX_RECORD_BYTES: u64 = 64 << 10;

/// Volume store errors: each names the check, the expected and the actual
/// value, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The process sandbox was asked to mount an encrypted volume.
    #[error(
        "volume {pod_volume} is the encrypted veil volume {volume}: encrypted volumes need the VM sandbox (veil run --sandbox vm, or a shim handler with sandbox = \"vm\"), whose guest kernel encrypts them; the process sandbox protects nothing from the host, so veil refuses to put the volume's key there"
    )]
    NeedsVm { pod_volume: String, volume: String },
    /// The policy names a volume this node's store does not have.
    #[error(
        "volume {pod_volume}: the policy names the veil volume {volume}, which this host does not have (expected a record {}, actual: none; veil volume ls); create it here with `veil volume create {volume} --size SIZE` (a new, empty volume: the policy must then be generated again, it pins the new UUID), or copy the volume's file and record here",
        record.display()
    )]
    NotHere {
        pod_volume: String,
        volume: String,
        record: PathBuf,
    },
    /// The local volume of that name is another one than the policy's.
    #[error(
        "volume {pod_volume}: the policy pins veil volume {volume} with LUKS2 UUID {expected}, this host's volume {volume} has UUID {actual} (made by another `veil volume create`); generate the policy again, or attach the volume it was made for"
    )]
    UuidMismatch {
        pod_volume: String,
        volume: String,
        expected: String,
        actual: String,
    },
    /// Two pod volumes of one policy name the same veil volume.
    #[error(
        "volumes {first} and {second} both name the veil volume {volume}: a volume is attached once per sandbox; mount one pod volume at several paths instead"
    )]
    Twice {
        first: String,
        second: String,
        volume: String,
    },
    /// The volume's file is not a regular file or block device.
    #[error(
        "volume {volume}: {} is not a regular file or block device (symbolic links are not followed)",
        file.display()
    )]
    NotAFile { volume: String, file: PathBuf },
    /// Another running sandbox has the volume attached.
    #[error(
        "volume file {} is attached to another running sandbox{holder} (check: one sandbox per volume, expected: unattached, actual: locked); stop that sandbox (veil stop, or delete its pod) and try again: two guests writing one LUKS2 volume would corrupt it",
        file.display()
    )]
    InUse {
        file: PathBuf,
        /// `: <who>`, or empty when no record says.
        holder: String,
    },
    /// A volume record that does not read or parse.
    #[error("volume record {}: {reason}", path.display())]
    BadRecord { path: PathBuf, reason: String },
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `veil volume create` recorded (`<data>/volumes/NAME.json`):
/// public facts only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    pub name: String,
    pub file: PathBuf,
    pub size: u64,
    pub uuid: String,
    /// `kbs:///repo/type/tag` of the key.
    pub key: String,
    /// The KBS URL, or `embedded`.
    pub kbs: String,
    /// RFC 3339.
    pub created: String,
}

impl VolumeRecord {
    /// What the policy pins.
    pub fn pin(&self) -> EncryptedVolume {
        EncryptedVolume {
            volume: self.name.clone(),
            uuid: self.uuid.clone(),
            key: self.key.clone(),
        }
    }
}

/// Where volume records (and, by default, volume files) live.
pub fn volumes_dir(data: &Path) -> PathBuf {
    data.join("volumes")
}

/// The record of volume `name`.
pub fn record_path(data: &Path, name: &str) -> PathBuf {
    volumes_dir(data).join(format!("{name}.json"))
}

/// The record of volume `name`, if there is one.
pub fn find(data: &Path, name: &str) -> Result<Option<VolumeRecord>, VolumeError> {
    if check_volume_name(name).is_err() {
        return Ok(None);
    }
    let p = record_path(data, name);
    if std::fs::symlink_metadata(&p).is_err() {
        return Ok(None);
    }
    let bad = |reason: String| VolumeError::BadRecord {
        path: p.clone(),
        reason,
    };
    let mut bytes = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&p)
        .and_then(|f| f.take(MAX_RECORD_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| bad(e.to_string()))?;
    if bytes.len() as u64 > MAX_RECORD_BYTES {
        return Err(bad(format!("larger than {MAX_RECORD_BYTES} bytes")));
    }
    let r: VolumeRecord = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if r.name != name {
        return Err(bad(format!("names volume {:?}, expected {name:?}", r.name)));
    }
    r.pin().validate().map_err(bad)?;
    Ok(Some(r))
}

/// Every volume, by name.
pub fn all(data: &Path) -> Result<BTreeMap<String, VolumeRecord>, VolumeError> {
    let mut out = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(volumes_dir(data)) else {
        return Ok(out);
    };
    for e in rd.flatten() {
        let f = e.file_name();
        let Some(name) = f.to_str().and_then(|n| n.strip_suffix(".json")) else {
            continue;
        };
        if let Some(r) = find(data, name)? {
            out.insert(name.to_string(), r);
        }
    }
    Ok(out)
}

/// What generated policies may pin: every volume of `data`, by name (a
/// pod's `persistentVolumeClaim.claimName`, or `veil run -v NAME:/path`).
pub fn known(data: &Path) -> Result<BTreeMap<String, EncryptedVolume>, VolumeError> {
    Ok(all(data)?.into_iter().map(|(n, r)| (n, r.pin())).collect())
}

/// The volume files to attach for the encrypted volumes among a policy's
/// `volumes`, in the guest's order (sorted by pod volume name: disk `i`
/// gets serial `veil-vol-<i>`). Each must be a volume of `data`'s store
/// with the UUID the policy pins. In the process sandbox (`vm` false) any
/// encrypted volume is refused.
pub fn disks_for(
    data: &Path,
    volumes: &[VolumePolicy],
    vm: bool,
) -> Result<Vec<PathBuf>, VolumeError> {
    let mut enc: Vec<(&str, &EncryptedVolume)> = volumes
        .iter()
        .filter_map(|v| v.encrypted.as_ref().map(|e| (v.name.as_str(), e)))
        .collect();
    enc.sort_by(|a, b| a.0.cmp(b.0));
    if let (false, Some((pod_volume, e))) = (vm, enc.first()) {
        return Err(VolumeError::NeedsVm {
            pod_volume: pod_volume.to_string(),
            volume: e.volume.clone(),
        });
    }
    for (i, (pod_volume, e)) in enc.iter().enumerate() {
        if let Some((first, _)) = enc[..i].iter().find(|(_, o)| o.volume == e.volume) {
            return Err(VolumeError::Twice {
                first: first.to_string(),
                second: pod_volume.to_string(),
                volume: e.volume.clone(),
            });
        }
    }
    let mut out = Vec::new();
    for (pod_volume, e) in enc {
        let r = find(data, &e.volume)?.ok_or_else(|| VolumeError::NotHere {
            pod_volume: pod_volume.to_string(),
            volume: e.volume.clone(),
            record: record_path(data, &e.volume),
        })?;
        if r.uuid != e.uuid {
            return Err(VolumeError::UuidMismatch {
                pod_volume: pod_volume.to_string(),
                volume: e.volume.clone(),
                expected: e.uuid.clone(),
                actual: r.uuid,
            });
        }
        let meta = std::fs::symlink_metadata(&r.file).map_err(|source| VolumeError::Io {
            what: format!("volume {}: its file", r.name),
            path: r.file.clone(),
            source,
        })?;
        if !(meta.is_file() || meta.file_type().is_block_device()) {
            return Err(VolumeError::NotAFile {
                volume: r.name,
                file: r.file,
            });
        }
        out.push(r.file);
    }
    Ok(out)
}

/// An exclusive `flock` on a volume file, held by the process that owns
/// the sandbox (`veil run`, its `-d` monitor, or the pod's shim) for the
/// VM's lifetime: a second sandbox attaching the volume is refused before
/// it starts. Released when dropped (or when the owner dies). QEMU's own
/// image locking (an OFD write lock on the file while the VM runs) is a
/// second line, for a QEMU started by anything else.
#[derive(Debug)]
pub struct VolumeLock {
    file: PathBuf,
    _fd: std::fs::File,
}

impl VolumeLock {
    /// The locked file.
    pub fn file(&self) -> &Path {
        &self.file
    }
}

/// Lock every file of `disks` (see [`VolumeLock`]); `who` names the
/// holders of a lock already taken in the refusal (e.g. the records of the
/// running sandboxes that attached that file).
pub fn lock_all(
    disks: &[PathBuf],
    who: &dyn Fn(&Path) -> Vec<String>,
) -> Result<Vec<VolumeLock>, VolumeError> {
    let mut out = Vec::new();
    for f in disks {
        let fd = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(f)
            .map_err(|source| VolumeError::Io {
                what: "opening the volume file".into(),
                path: f.clone(),
                source,
            })?;
        // flock(2) (not `File::try_lock`, newer than the MSRV): per open
        // file description, so another process's lock refuses this one.
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let r = unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                libc::LOCK_EX | libc::LOCK_NB,
            )
        };
        if r == 0 {
            out.push(VolumeLock {
                file: f.clone(),
                _fd: fd,
            });
            continue;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            let holders = who(f);
            return Err(VolumeError::InUse {
                file: f.clone(),
                holder: if holders.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", holders.join(", "))
                },
            });
        }
        return Err(VolumeError::Io {
            what: "locking the volume file".into(),
            path: f.clone(),
            source: err,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use veil_policy::model::VolumeKind;

    const UUID: &str = "0f2c1b6e-3d4a-4b5c-8d6e-7f8091a2b3c4";
    const OTHER: &str = "11111111-2222-4333-8444-555555555555";

    fn store_with(data: &Path, name: &str, uuid: &str) -> VolumeRecord {
        std::fs::create_dir_all(volumes_dir(data)).unwrap();
        let file = volumes_dir(data).join(format!("{name}.img"));
        std::fs::write(&file, b"").unwrap();
        let r = VolumeRecord {
            name: name.into(),
            file,
            size: 64 << 20,
            uuid: uuid.into(),
            key: format!("kbs:///default/key/{name}"),
            kbs: "embedded".into(),
            created: "2026-12-04T09:00:00Z".into(),
        };
        std::fs::write(record_path(data, name), serde_json::to_vec(&r).unwrap()).unwrap();
        r
    }

    fn claim(pod_volume: &str, volume: &str, uuid: &str) -> VolumePolicy {
        VolumePolicy {
            name: pod_volume.into(),
            kind: VolumeKind::Encrypted,
            source: "persistentVolumeClaim".into(),
            memory: false,
            size_limit: None,
            host_path: String::new(),
            files: Vec::new(),
            fs_group: None,
            encrypted: Some(EncryptedVolume {
                volume: volume.into(),
                uuid: uuid.into(),
                key: format!("kbs:///default/key/{volume}"),
            }),
        }
    }

    #[test]
    fn records_round_trip_into_the_pins_policies_take() {
        let d = tempfile::tempdir().unwrap();
        let r = store_with(d.path(), "db", UUID);
        assert_eq!(find(d.path(), "db").unwrap(), Some(r.clone()));
        assert_eq!(known(d.path()).unwrap()["db"], r.pin());
        assert_eq!(find(d.path(), "other").unwrap(), None);
        assert_eq!(find(d.path(), "../db").unwrap(), None);
        // A record under another name than its own is refused, by name.
        std::fs::copy(record_path(d.path(), "db"), record_path(d.path(), "web")).unwrap();
        let e = find(d.path(), "web").unwrap_err().to_string();
        assert!(e.contains(r#"names volume "db", expected "web""#), "{e}");
    }

    /// The disks come in the guest's order (sorted by pod volume name),
    /// whatever the policy's order.
    #[test]
    fn disks_are_the_pinned_volumes_files_in_pod_volume_order() {
        let d = tempfile::tempdir().unwrap();
        let db = store_with(d.path(), "db", UUID);
        let logs = store_with(d.path(), "logs", OTHER);
        let disks = disks_for(
            d.path(),
            &[claim("zz-logs", "logs", OTHER), claim("aa-db", "db", UUID)],
            true,
        )
        .unwrap();
        assert_eq!(disks, vec![db.file, logs.file]);
        assert_eq!(
            disks_for(d.path(), &[], false).unwrap(),
            Vec::<PathBuf>::new()
        );
    }

    /// Each refusal names the check, the expected and the actual value, and
    /// the fix.
    #[test]
    fn missing_foreign_and_process_sandbox_volumes_are_refused_by_name() {
        let d = tempfile::tempdir().unwrap();
        let e = disks_for(d.path(), &[claim("data", "db", UUID)], true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(
                "volume data: the policy names the veil volume db, which this host does not have"
            ) && e.contains(&record_path(d.path(), "db").display().to_string())
                && e.contains("veil volume create db --size"),
            "{e}"
        );
        store_with(d.path(), "db", OTHER);
        let e = disks_for(d.path(), &[claim("data", "db", UUID)], true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("pins veil volume db with LUKS2 UUID {UUID}"))
                && e.contains(&format!("has UUID {OTHER}"))
                && e.contains("generate the policy again"),
            "{e}"
        );
        let e = disks_for(d.path(), &[claim("data", "db", OTHER)], false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("encrypted volumes need the VM sandbox") && e.contains("sandbox = \"vm\""),
            "{e}"
        );
        let e = disks_for(
            d.path(),
            &[claim("a", "db", OTHER), claim("b", "db", OTHER)],
            true,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("volumes a and b both name the veil volume db"),
            "{e}"
        );
        // A symbolic link in place of the file is not followed.
        let r = find(d.path(), "db").unwrap().unwrap();
        std::fs::remove_file(&r.file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &r.file).unwrap();
        let e = disks_for(d.path(), &[claim("data", "db", OTHER)], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not a regular file or block device"), "{e}");
    }

    /// One sandbox at a time: a second lock on the file (another open file
    /// description, as another process has) is refused while the first is
    /// held, naming the holder, and taken once it is released.
    #[test]
    fn a_volume_is_locked_to_one_sandbox_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let r = store_with(d.path(), "db", UUID);
        let disks = vec![r.file.clone()];
        let held = lock_all(&disks, &|_| Vec::new()).unwrap();
        assert_eq!(held[0].file(), r.file.as_path());
        let e = lock_all(&disks, &|_| vec!["sandbox 1a2b (pod web)".into()])
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&format!("volume file {}", r.file.display()))
                && e.contains("attached to another running sandbox (sandbox 1a2b (pod web))")
                && e.contains("expected: unattached, actual: locked"),
            "{e}"
        );
        drop(held);
        assert_eq!(lock_all(&disks, &|_| Vec::new()).unwrap().len(), 1);
    }
}
