//! Small helpers for consistent human output, bounded file reads and safe
//! file writes.

use std::fs;
use std::io::{Read, Write};
use std::path::Path;

use anyhow::{Context, Result, bail};

/// Print an aligned `key  value` line.
pub fn kv(key: &str, value: &str) {
    println!("  {key:<14}{value}");
}

/// Write a file atomically: a temporary file in the same directory, synced,
/// then renamed over the target. On error nothing is left behind.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let res = (|| -> Result<()> {
        let mut f =
            fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
    })();
    if res.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    res
}

/// Read `what` from `path`, refusing more than `limit` bytes (read no
/// further than that, whatever the file's size).
pub fn read_limited(path: &Path, what: &str, limit: usize) -> Result<Vec<u8>> {
    let file =
        fs::File::open(path).with_context(|| format!("opening {what} {}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {what} {}", path.display()))?;
    if bytes.len() > limit {
        let size = fs::metadata(path).map_or(bytes.len() as u64, |m| m.len());
        bail!(
            "{what} {} is {size} bytes; the limit is {limit}",
            path.display()
        );
    }
    Ok(bytes)
}
