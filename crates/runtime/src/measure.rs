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
