//! `containerd-shim-veil-v2`: containerd's runtime `io.containerd.veil.v2`
//! (see docs/kubernetes.md). A thin front-end over `veil_shim`.

use std::sync::Arc;

fn main() {
    std::process::exit(veil_shim::bootstrap::main(Arc::new(
        veil_shim::runtime::RuntimeLauncher,
    )));
}
