#!/usr/bin/env bash
# veil's main example, end to end on a machine with only the Rust toolchain
# (and the packages scripts/install-deps.sh installs): build a workload as a
# static binary, package it as an OCI image, encrypt the image with a key
# held by the KBS, store a secret, and run it confidentially with veil run
# (policy generated from the image, embedded KBS, simulated TEE).
# Run as root (the process sandbox uses namespaces and mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -q -p veil -p veil-agent
VEIL=$PWD/target/release/veil
export VEIL_AGENT=$PWD/target/release/veil-agent
# Keep the demo's state apart from anything else on this machine.
export VEIL_DATA_DIR=${VEIL_DATA_DIR:-$PWD/target/veil-demo-data}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== 1. the workload: a statically linked program built here"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q \
  --manifest-path examples/hello-secret/Cargo.toml \
  --target x86_64-unknown-linux-gnu --target-dir target/examples
mkdir -p "$WORK/root"
cp target/examples/x86_64-unknown-linux-gnu/release/hello-secret "$WORK/root/hello-secret"
tar -C "$WORK/root" -cf "$WORK/layer.tar" .
skopeo copy -q tarball:"$WORK/layer.tar" "oci:$WORK/image:hello:plain"

echo "== 2. encrypt the image with a key held by the KBS"
head -c 32 /dev/urandom > "$WORK/image.key"
"$VEIL" secret put default/key/hello "$WORK/image.key"
"$VEIL" image encrypt --recipient kbs:///default/key/hello --kek "$WORK/image.key" \
  "oci:$WORK/image:hello:plain" "oci:$WORK/image:hello:1"

echo "== 3. store the workload's secret in the KBS"
head -c 24 /dev/urandom | base64 > "$WORK/api-key"
"$VEIL" secret put default/secret/api-key "$WORK/api-key"
rm -f "$WORK/api-key" "$WORK/image.key"

echo "== 4. run it: the policy is generated from the image, the agent attests and gets the secret"
"$VEIL" run --rm --secret api-key=kbs:///default/secret/api-key "oci:$WORK/image:hello:1" -- /hello-secret
