#!/usr/bin/env bash
# veil's main job, end to end on the embedded defaults: the README's first
# command. Installs what it needs (idempotently), then runs
# examples/run-demo.sh: a workload built here, packaged as an OCI image,
# encrypted with a key held by the KBS, run confidentially with `veil run`
# (policy generated from the image, embedded KBS, simulated TEE), with the
# attestation summary, a policy refusal and a check that the host's disk
# holds no plaintext secret; then a real SNP report verified against AMD's
# pinned roots.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
exec bash examples/run-demo.sh "$@"
