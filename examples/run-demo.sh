#!/usr/bin/env bash
# veil's main example, end to end on a machine with only the Rust toolchain
# (and the packages scripts/install-deps.sh installs): build a workload as a
# static binary, package it as an OCI image, encrypt the image with a key
# held by the KBS, store a secret, and run it confidentially with veil run
# (policy generated from the image, embedded KBS, simulated TEE). Then show
# what the host may not do to the running sandbox, and that the host-side
# data dir holds neither the secret nor the image key in plaintext.
#
# Run as root (the process sandbox uses namespaces and mounts).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
  echo "run-demo: run as root (veil's process sandbox creates namespaces and mounts)" >&2
  exit 2
fi

TARGET=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release -q -p veil -p veil-agent
VEIL=$TARGET/release/veil
export VEIL_AGENT=$TARGET/release/veil-agent
# Keep the demo's state apart from anything else on this machine.
export VEIL_DATA_DIR=${VEIL_DATA_DIR:-$TARGET/veil-demo-data}

WORK=$(mktemp -d)
id=""
cleanup() {
  [ -n "$id" ] && "$VEIL" stop "$id" >/dev/null 2>&1 && "$VEIL" rm "$id" >/dev/null 2>&1
  rm -rf "$WORK"
}
trap cleanup EXIT
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1. the workload: a statically linked program built here"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -q \
  --manifest-path examples/hello-secret/Cargo.toml \
  --target x86_64-unknown-linux-gnu --target-dir "$TARGET/examples"
mkdir -p "$WORK/root"
cp "$TARGET/examples/x86_64-unknown-linux-gnu/release/hello-secret" "$WORK/root/hello-secret"
tar -C "$WORK/root" -cf "$WORK/layer.tar" .
skopeo copy -q tarball:"$WORK/layer.tar" "oci:$WORK/image:hello:plain"

step "2. encrypt the image with a key that only the KBS holds"
# 32 random printable bytes (~190 bits), so step 6 can grep for them.
image_key=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 || true) # tr ends on SIGPIPE
printf '%s' "$image_key" >"$WORK/image.key"
"$VEIL" secret put default/key/hello "$WORK/image.key"
"$VEIL" image encrypt --recipient kbs:///default/key/hello --kek "$WORK/image.key" \
  "oci:$WORK/image:hello:plain" "oci:$WORK/image:hello:1"

step "3. store the workload's secret in the KBS"
head -c 24 /dev/urandom | base64 >"$WORK/api-key"
"$VEIL" secret put default/secret/api-key "$WORK/api-key"
# Keep only what the last step needs to search the host's disk for them.
secret_text=$(cat "$WORK/api-key")
rm -f "$WORK/api-key" "$WORK/image.key"

step "4. run it: policy generated from the image, the agent attests, gets the key and the secret"
"$VEIL" run --rm --secret api-key=kbs:///default/secret/api-key \
  "oci:$WORK/image:hello:1" -- /hello-secret

step "5. the host may not do what the policy does not allow"
id=$("$VEIL" run -d --secret api-key=kbs:///default/secret/api-key \
  "oci:$WORK/image:hello:1" -- /hello-secret --stay 2>/dev/null)
"$VEIL" ps
echo "\$ veil exec $id -- /bin/sh    (a shell inside the sandbox)"
if "$VEIL" exec "$id" -- /bin/sh 2>"$WORK/err"; then
  echo "unexpected: the policy allowed a shell" >&2
  exit 1
fi
sed 's/^/  /' "$WORK/err"
"$VEIL" stop "$id" >/dev/null && "$VEIL" rm "$id" >/dev/null
echo "  stopped and removed $id: no process, mount or file of it is left"
id=""

step "6. the host-side data dir holds neither the secret nor the image key in plaintext"
leaks=$(grep -rlF -e "$secret_text" -e "$image_key" "$VEIL_DATA_DIR" || true)
if [ -n "$leaks" ]; then
  echo "LEAK: $leaks" >&2
  exit 1
fi
echo "  searched $VEIL_DATA_DIR for the secret and the image key: not found (sealed under the KBS key-encryption key)"

step "7. and on real hardware: a real AMD SEV-SNP report, checked against AMD's pinned roots"
"$VEIL" attest verify --tee snp --evidence examples/attest/milan-vcek-report.bin \
  --cert examples/attest/milan-vcek.der | head -n 6

printf '\ndemo: ok\n'
