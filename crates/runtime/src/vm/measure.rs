//! The launch measurement of a VM sandbox under the sim platform: what the
//! sim platform records as MEASUREMENT, the way SNP's launch digest covers
//! firmware, kernel, initrd and command line.
//!
//! `SHA-384("veil vm sandbox launch v1\n" ‖ SHA-384(kernel) ‖ SHA-384(initrd) ‖ JSON(VmLaunchConfig))`
//!
//! The JSON has fixed field order (struct order). Only what determines the
//! guest's behaviour is measured: the images, the command line, the machine
//! shape and the TEE; not ports, paths or the init-data (bound separately,
//! like HOST_DATA).

use serde::Serialize;
use sha2::{Digest, Sha384};

const DOMAIN: &[u8] = b"veil vm sandbox launch v1\n";

/// The measured launch configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VmLaunchConfig {
    /// `q35`.
    pub machine: String,
    pub vcpus: u32,
    pub memory_mib: u32,
    /// The kernel command line, exactly as passed to QEMU's `-append`.
    pub cmdline: String,
    /// `sim`.
    pub tee: String,
    /// Launched with debugging enabled.
    pub debug: bool,
}

/// The measurement of a VM launch.
pub fn measurement(kernel: &[u8; 48], initrd: &[u8; 48], config: &VmLaunchConfig) -> [u8; 48] {
    let mut h = Sha384::new();
    h.update(DOMAIN);
    h.update(kernel);
    h.update(initrd);
    // Serializing a struct of strings, integers and bools cannot fail.
    h.update(serde_json::to_vec(config).unwrap_or_default());
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_initrd_cmdline_and_shape_each_change_it() {
        let c = VmLaunchConfig {
            machine: "q35".into(),
            vcpus: 1,
            memory_mib: 1024,
            cmdline: "console=ttyS0 veil.tee=sim".into(),
            tee: "sim".into(),
            debug: false,
        };
        let m = measurement(&[1; 48], &[2; 48], &c);
        assert_eq!(m, measurement(&[1; 48], &[2; 48], &c));
        assert_ne!(m, measurement(&[3; 48], &[2; 48], &c));
        assert_ne!(m, measurement(&[1; 48], &[3; 48], &c));
        // Swapping kernel and initrd is a different launch.
        assert_ne!(m, measurement(&[2; 48], &[1; 48], &c));
        for f in [
            |c: &mut VmLaunchConfig| c.cmdline.push_str(" init=/bin/sh"),
            |c: &mut VmLaunchConfig| c.vcpus = 2,
            |c: &mut VmLaunchConfig| c.memory_mib = 2048,
            |c: &mut VmLaunchConfig| c.debug = true,
            |c: &mut VmLaunchConfig| c.machine = "pc".into(),
        ] {
            let mut d = c.clone();
            f(&mut d);
            assert_ne!(m, measurement(&[1; 48], &[2; 48], &d));
        }
        // The process sandbox's domain differs: no measurement collides by construction.
        let golden = hex::encode(measurement(&[0; 48], &[0; 48], &c));
        assert_eq!(golden.len(), 96);
    }
}
