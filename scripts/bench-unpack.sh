#!/usr/bin/env bash
# Unpack benchmark: `veil image unpack` (confined: openat2 + *at calls,
# bounded) vs GNU tar extracting the same uncompressed layer, on a real tree
# (default /usr/lib, override with TREE=DIR), in the same run; best of RUNS.
# Reports seconds and the ratio; never fails on a number.
set -euo pipefail
cd "$(dirname "$0")/.."
TREE=${TREE:-/usr/lib}
RUNS=${RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
# VEIL=path/to/veil skips the release build (e.g. to time a debug build).
if [ -z "${VEIL:-}" ]; then
  cargo build --release --quiet -p veil
  VEIL="$CARGO_TARGET_DIR/release/veil"
fi
work=$(mktemp -d /var/tmp/veil-bench-unpack.XXXXXX)
trap 'rm -rf "$work"' EXIT
# An OCI layout with one uncompressed layer holding TREE.
mkdir -p "$work/layout/blobs/sha256"
tar -C "$(dirname "$TREE")" --numeric-owner -cf "$work/layer.tar" "$(basename "$TREE")"
put() { local d; d=$(sha256sum "$1" | cut -d' ' -f1); mv "$1" "$work/layout/blobs/sha256/$d"; echo "$d"; }
size() { stat -c %s "$work/layout/blobs/sha256/$1"; }
cp "$work/layer.tar" "$work/l"
L=$(put "$work/l")
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$L" > "$work/c"
C=$(put "$work/c")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' "$C" "$(size "$C")" "$L" "$(size "$L")" > "$work/m"
M=$(put "$work/m")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$M" "$(size "$M")" > "$work/layout/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' > "$work/layout/oci-layout"
entries=$(tar -tf "$work/layer.tar" | wc -l)
bytes=$(stat -c %s "$work/layer.tar")
best() {
  local b=999999 s e
  for _ in $(seq "$RUNS"); do
    rm -rf "$work/out"; sync
    s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N)
    b=$(awk -v s="$s" -v e="$e" -v b="$b" 'BEGIN { t = e - s; printf "%.3f", (t < b ? t : b) }')
  done
  echo "$b"
}
v=$(best "$VEIL" image unpack --max-image-size 64G "oci:$work/layout:bench" "$work/out")
t=$(best sh -c "mkdir -p '$work/out' && tar -C '$work/out' --numeric-owner -xpf '$work/layer.tar'")
echo "unpack of $TREE ($entries entries, $((bytes >> 20)) MiB tar), best of $RUNS:"
echo "  veil image unpack  ${v} s (digest check + confined *at calls)"
echo "  GNU tar -x         ${t} s"
echo "  ratio veil/tar     $(awk -v v="$v" -v t="$t" 'BEGIN { printf "%.2f", v / t }')"
