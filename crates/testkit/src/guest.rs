//! The guest image VM tests boot: `veil guest build` of the test's agent
//! into one dir under the target dir (`CARGO_TARGET_TMPDIR/vm-guest`),
//! shared by every VM test (`veil run --sandbox vm`, the shim's VM
//! handler). Each test process rebuilds it once; the build is reproducible
//! and writes each file atomically, so concurrent tests see whole files.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// A built guest image and what `veil guest build --json` said about it.
#[derive(Debug)]
pub struct GuestImage {
    pub dir: PathBuf,
    pub build: serde_json::Value,
}

impl GuestImage {
    /// The kernel a sim/none VM boots: the extracted PVH `vmlinux`.
    pub fn kernel(&self) -> PathBuf {
        let pvh = self.build["pvh_kernel"]
            .as_str()
            .expect("the Debian kernel yields a PVH vmlinux");
        assert_eq!(self.build["boot_kernel"].as_str(), Some(pvh));
        PathBuf::from(pvh)
    }

    /// The initrd (`veil-agent` as `/init`).
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
}

/// `veil guest build --json -o dir` with the test's agent ([`crate::veil_agent`]).
pub fn build(veil: &Path, dir: &Path) -> serde_json::Value {
    let out = crate::run_ok(
        Command::new(veil)
            .args(["guest", "build", "--json", "-o"])
            .arg(dir)
            .env("VEIL_AGENT", crate::veil_agent()),
    );
    serde_json::from_slice(&out.stdout).expect("veil guest build --json prints JSON")
}

/// The shared guest image, built once per test process into
/// `<target_tmpdir>/vm-guest` (pass `env!("CARGO_TARGET_TMPDIR")`).
pub fn shared(veil: &Path, target_tmpdir: &Path) -> &'static GuestImage {
    static G: OnceLock<GuestImage> = OnceLock::new();
    G.get_or_init(|| {
        let dir = target_tmpdir.join("vm-guest");
        let build = build(veil, &dir);
        GuestImage { dir, build }
    })
}
