#!/usr/bin/env bash
# The whole test suite: installs what the tests need, builds once, runs
# every test with nextest. The README's second command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
cargo build --workspace --all-targets --locked
# The end-to-end tests run the veil-agent binary this build just made (rather
# than rebuilding it with a different feature set).
target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
export VEIL_AGENT="$target_dir/debug/veil-agent"
cargo nextest run --workspace --locked --no-fail-fast "$@"
