//! veil's data dir: `$VEIL_DATA_DIR`, else `/var/lib/veil` for root, else
//! `$XDG_DATA_HOME/veil` or `~/.local/share/veil`.

use std::path::PathBuf;

/// Environment variable that overrides the data dir.
pub const DATA_DIR_ENV: &str = "VEIL_DATA_DIR";

/// The data dir (not created).
pub fn data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(DATA_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/veil");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(x).join("veil");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/veil")
}

/// The sim platform's dir.
pub fn sim_dir(data: &std::path::Path) -> PathBuf {
    data.join("sim")
}

/// Where sandboxes keep their records.
pub fn run_dir(data: &std::path::Path) -> PathBuf {
    data.join("run")
}
