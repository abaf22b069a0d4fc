//! Small helpers for consistent human output and safe file writes.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};

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
