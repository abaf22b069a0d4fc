#!/usr/bin/env bash
# Attestation benchmark: veil's in-process figures (`veil bench attest`), then
# a process-per-verification comparison with AMD's reference tool
# `snpguest verify attestation` (crates.io snpguest) on the same SNP report.
# Installs snpguest when it can; without it, prints veil's figures only.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-200}
cargo build --release -q -p veil
VEIL="${CARGO_TARGET_DIR:-target}/release/veil"
FIX=../shared/fixtures
"$VEIL" bench attest

if ! command -v snpguest >/dev/null 2>&1; then
  echo "bench-attest: installing snpguest (baseline; needs libssl-dev)" >&2
  dpkg-query -W -f='${Status}' libssl-dev 2>/dev/null | grep -q "install ok installed" ||
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libssl-dev pkg-config; }
  cargo install --locked snpguest >/dev/null 2>&1 || { echo "bench-attest: snpguest unavailable; baseline skipped"; exit 0; }
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# snpguest wants ark.pem, ask.pem and vcek.pem in one folder.
awk -v d="$work" '/BEGIN/{n++} n==1{print > d"/ask.pem"} n==2{print > d"/ark.pem"}' "$FIX/snp/milan-ask-ark-asvk.pem"
openssl x509 -inform der -in "$FIX/snp/milan-vcek.der" -out "$work/vcek.pem"
REPORT="$FIX/snp/milan-vcek-report.bin"
snpguest verify attestation "$work" "$REPORT" >/dev/null

time_n() { local s e; s=$(date +%s.%N); for _ in $(seq "$N"); do "$@" >/dev/null 2>&1; done; e=$(date +%s.%N); echo "$s $e"; }
read -r s1 e1 < <(time_n "$VEIL" attest verify --tee snp --evidence "$REPORT" --cert "$FIX/snp/milan-vcek.der")
read -r s2 e2 < <(time_n snpguest verify attestation "$work" "$REPORT")
awk -v n="$N" -v a="$s1" -v b="$e1" -v c="$s2" -v d="$e2" 'BEGIN {
  v = n / (b - a); g = n / (d - c);
  printf "process per verification (%d runs): veil attest verify %.0f/s, snpguest verify attestation %.0f/s, ratio %.2fx\n", n, v, g, v / g }'
