#!/usr/bin/env bash
# Builds the node-installer image that deploy/node-installer.yaml runs: veil,
# containerd-shim-veil-v2, the shared libraries they need, and busybox (sh,
# nsenter, cut, sleep). crates/cli/tests/node.rs builds it and runs the
# DaemonSet's commands in it; see docs/kubernetes.md.
#
#   deploy/build-installer-image.sh oci:installer-layout:0.1.0 [BIN_DIR]
#
# BIN_DIR holds the built veil and containerd-shim-veil-v2 (default:
# target/release). Push the layout with e.g. `skopeo copy oci:installer-layout:0.1.0
# docker://REGISTRY/veil/node-installer:0.1.0` and set the DaemonSet's image.
set -euo pipefail
out=${1:?usage: $0 oci:LAYOUT:TAG [BIN_DIR]}
bin=${2:-target/release}
busybox=$(command -v busybox)
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/usr/local/bin" "$root/opt/veil/bin" "$root/host" "$root/tmp"
cp "$busybox" "$root/bin/busybox"
for a in sh nsenter cut sleep; do ln -s busybox "$root/bin/$a"; done
install -m 0755 "$bin/veil" "$root/usr/local/bin/veil"
install -m 0755 "$bin/containerd-shim-veil-v2" "$root/opt/veil/bin/containerd-shim-veil-v2"
# The dynamic loader and every library the two binaries link.
for b in "$bin/veil" "$bin/containerd-shim-veil-v2"; do
  ldd "$b" | awk '/=> \//{print $3} /^\t\/lib/{print $1}' | while read -r lib; do
    cp --parents -L -n "$lib" "$root/"
  done
done
"$bin/veil" image import "$root" "$out" --entrypoint /bin/sh -e PATH=/usr/local/bin:/bin
