#!/usr/bin/env bash
# veil's main job, end to end on the embedded defaults.
#
# Today: verify real AMD SEV-SNP evidence against AMD's pinned roots, then
# create a simulated TEE platform, produce evidence bound to a nonce and an
# init-data digest, verify it, and show a refusal when the init-data differs.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p veil
veil() { "${CARGO_TARGET_DIR:-target}/release/veil" "$@"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== 1. Real SEV-SNP evidence (AMD EPYC Milan) against AMD's pinned roots"
veil attest verify --tee snp --evidence examples/attest/milan-vcek-report.bin \
  --cert examples/attest/milan-vcek.der

echo
echo "== 2. Simulated TEE: a software platform key, loudly labelled"
veil attest sim-keygen --key "$work/sim.key" --root "$work/sim-root.pub" >/dev/null 2>&1
nonce=$(head -c 32 /dev/urandom | sha384sum | cut -c1-96)
initdata=$(printf 'version = "0.1.0"\nalgorithm = "sha384"\n[data]\n' | sha384sum | cut -c1-96)
veil attest sim-report --key "$work/sim.key" --report-data "$nonce" \
  --init-data-digest "$initdata" --measurement "$(printf veil | sha384sum | cut -c1-96)" \
  -o "$work/evidence.json" 2>/dev/null
veil attest verify --tee sim --evidence "$work/evidence.json" --sim-root "$work/sim-root.pub" \
  --report-data "$nonce" --init-data-digest "$initdata"

echo
echo "== 3. The same evidence with another init-data digest is refused"
if veil attest verify --tee sim --evidence "$work/evidence.json" --sim-root "$work/sim-root.pub" \
  --init-data-digest "$(printf other | sha384sum | cut -c1-96)" 2>"$work/err"; then
  echo "unexpected: accepted" >&2
  exit 1
fi
sed 's/^/  /' "$work/err"
echo
echo "demo: ok"
