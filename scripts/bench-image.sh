#!/usr/bin/env bash
# veil image benchmark (a wrapper around `veil bench image`): on the same
# random data, in one run, `veil image decrypt` vs `skopeo copy
# --decryption-key` and `veil image measure` vs `veritysetup format`, as
# throughput, ratios (>1 means veil is faster) and CPU seconds, plus the
# one-core throughput of SHA-256 / AES-256-CTR / HMAC-SHA256 (veil's crates
# and `openssl speed`). It reports; it never fails on a number.
#
# VEIL_BENCH_IMAGE_MIB (default 1024): size of the layer / data image.
# VEIL_BENCH_RUNS (default 3): runs per tool, alternating; the best is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
cargo build --release --quiet -p veil
exec "$CARGO_TARGET_DIR/release/veil" bench image \
  --size-mib "${VEIL_BENCH_IMAGE_MIB:-1024}" --runs "${VEIL_BENCH_RUNS:-3}" "$@"
