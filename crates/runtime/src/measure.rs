//! The launch measurement of a process sandbox: what the sim platform
//! records as MEASUREMENT, the way SNP measures the guest's initial memory.
//!
//! `SHA-384("veil process sandbox launch v1\n" ‖ SHA-384(agent binary) ‖ JSON(LaunchConfig))`
//!
//! Only what determines the guest's behaviour is measured (the agent binary,
//! the TEE, the isolation), not per-instance paths, so one reference value
//! admits every sandbox started the same way.

use std::io::Read;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha384};

/// The measured launch configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LaunchConfig {
    /// `process`.
    pub sandbox: &'static str,
    /// TEE the agent is told to use.
    pub tee: &'static str,
    /// Namespaces the agent is started in.
    pub namespaces: Vec<&'static str>,
    /// Launched with debugging enabled.
    pub debug: bool,
}

const DOMAIN: &[u8] = b"veil process sandbox launch v1\n";

/// SHA-384 of a file, streamed.
pub fn file_sha384(path: &Path) -> std::io::Result<[u8; 48]> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha384::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Entries kept in a digest cache.
const CACHE_MAX: usize = 64;
/// File name of the digest cache.
pub const DIGEST_CACHE: &str = "file-digests.json";

/// [`file_sha384`], remembered in `cache_dir/file-digests.json` under the
/// file's identity and change stamps (device, inode, size, mtime and ctime
/// in nanoseconds): any write to the file, or a rename over it, changes
/// its ctime or inode and so misses the cache. This spares re-hashing a
/// 50 MB agent binary on every launch (about 150 ms). A cache that cannot
/// be read or written is ignored: the digest is then computed.
pub fn file_sha384_cached(path: &Path, cache_dir: &Path) -> std::io::Result<[u8; 48]> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    let key = format!(
        "{}:{}:{}:{}.{}:{}.{}",
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    );
    let cache_path = cache_dir.join(DIGEST_CACHE);
    let mut cache: std::collections::BTreeMap<String, String> = std::fs::read(&cache_path)
        .ok()
        .filter(|b| b.len() < 64 * 1024)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(d) = cache
        .get(&key)
        .and_then(|h| hex::decode(h).ok())
        .and_then(|v| <[u8; 48]>::try_from(v).ok())
    {
        return Ok(d);
    }
    let d = file_sha384(path)?;
    if cache.len() >= CACHE_MAX {
        cache.clear();
    }
    cache.insert(key, hex::encode(d));
    if let Ok(bytes) = serde_json::to_vec(&cache) {
        let tmp = cache_dir.join(format!(".{DIGEST_CACHE}.{}", std::process::id()));
        if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, &cache_path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    Ok(d)
}

/// The measurement of a launch.
pub fn measurement(agent_digest: &[u8; 48], config: &LaunchConfig) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(DOMAIN);
    h.update(agent_digest);
    // Serializing a struct of strings and bools cannot fail.
    h.update(serde_json::to_vec(config).unwrap_or_default());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_digest_follows_the_file() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("agent");
        std::fs::write(&f, b"one").unwrap();
        let a = file_sha384_cached(&f, d.path()).unwrap();
        assert_eq!(a, file_sha384(&f).unwrap());
        assert!(d.path().join(DIGEST_CACHE).exists());
        assert_eq!(file_sha384_cached(&f, d.path()).unwrap(), a);
        // Rewritten in place (same size): ctime moves, the cache misses.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&f, b"two").unwrap();
        let b = file_sha384_cached(&f, d.path()).unwrap();
        assert_eq!(b, file_sha384(&f).unwrap());
        assert_ne!(a, b);
        // A corrupt cache is ignored.
        std::fs::write(d.path().join(DIGEST_CACHE), b"{not json").unwrap();
        assert_eq!(file_sha384_cached(&f, d.path()).unwrap(), b);
    }

    #[test]
    fn every_input_changes_the_measurement() {
        let c = LaunchConfig {
            sandbox: "process",
            tee: "sim",
            namespaces: vec!["mnt", "pid"],
            debug: false,
        };
        let a = measurement(&[1; 48], &c);
        assert_eq!(a, measurement(&[1; 48], &c));
        assert_ne!(a, measurement(&[2; 48], &c));
        let mut d = c.clone();
        d.debug = true;
        assert_ne!(a, measurement(&[1; 48], &d));
        let mut n = c.clone();
        n.namespaces.pop();
        assert_ne!(a, measurement(&[1; 48], &n));
    }
}
