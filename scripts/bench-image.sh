#!/usr/bin/env bash
# veil image benchmark: on the same image, in one run,
#   - `veil image decrypt` vs `skopeo copy --decryption-key` (ocicrypt JWE/RSA),
#   - `veil image measure` vs `veritysetup format` (dm-verity, sha256, 4 KiB),
# printed as throughput and ratios (>1 means veil is faster), plus the raw
# AES-256-CTR and SHA-256 throughput of this machine (openssl speed), which
# bound both. It reports; it never fails on a number.
#
# VEIL_BENCH_IMAGE_MIB (default 1024): size of the random layer / data image.
# VEIL_BENCH_RUNS (default 3): runs per tool; the best is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

MIB=${VEIL_BENCH_IMAGE_MIB:-1024}
RUNS=${VEIL_BENCH_RUNS:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target}
for tool in skopeo veritysetup openssl python3; do
  command -v "$tool" >/dev/null || { echo "bench-image: $tool is missing (scripts/install-deps.sh)" >&2; exit 2; }
done
cargo build --release --quiet -p veil
VEIL=$CARGO_TARGET_DIR/release/veil

tmp=$(mktemp -d "${TMPDIR:-/var/tmp}/veil-bench-image.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
policy=$tmp/policy.json
echo '{"default":[{"type":"insecureAcceptAnything"}]}' >"$policy"
skopeo() { command skopeo --policy "$policy" "$@"; }

echo "bench-image: building a ${MIB} MiB image of random data in $tmp" >&2
mkdir -p "$tmp/src"
head -c "$((MIB << 20))" /dev/urandom >"$tmp/src/data.bin"
tar -C "$tmp/src" -cf "$tmp/layer.tar" .
skopeo copy --quiet "tarball:$tmp/layer.tar" "oci:$tmp/img:plain"
openssl genrsa -out "$tmp/rsa.key" 2048 2>/dev/null
openssl pkey -in "$tmp/rsa.key" -pubout -out "$tmp/rsa.pub"
skopeo copy --quiet --encryption-key "jwe:$tmp/rsa.pub" "oci:$tmp/img:plain" "oci:$tmp/img:enc"
layer_bytes=$(python3 - "$tmp/img" <<'EOF'
import json, sys
d = sys.argv[1]
idx = json.load(open(f"{d}/index.json"))
m = next(x for x in idx["manifests"] if x.get("annotations", {}).get("org.opencontainers.image.ref.name") == "enc")
man = json.load(open(f"{d}/blobs/sha256/{m['digest'].split(':')[1]}"))
print(sum(l["size"] for l in man["layers"]))
EOF
)

# best_of CMD...: best wall time in seconds over $RUNS runs (after `prep`).
best_of() {
  local best="" t0 t1 dt
  for _ in $(seq "$RUNS"); do
    prep
    t0=$(date +%s.%N)
    "$@" >/dev/null 2>&1
    t1=$(date +%s.%N)
    dt=$(python3 -c "print($t1 - $t0)")
    if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if $dt < $best else 1)"; then best=$dt; fi
  done
  echo "$best"
}

prep() { rm -rf "$tmp/out-veil" "$tmp/out-skopeo"; }
t_veil_dec=$(best_of "$VEIL" image decrypt "oci:$tmp/img:enc" "oci:$tmp/out-veil:dec" --key "$tmp/rsa.key")
t_skopeo_dec=$(best_of skopeo copy --quiet --decryption-key "$tmp/rsa.key" "oci:$tmp/img:enc" "oci:$tmp/out-skopeo:dec")
# Both must produce the original layer (checked once, outside the timing).
prep
"$VEIL" image decrypt "oci:$tmp/img:enc" "oci:$tmp/out-veil:dec" --key "$tmp/rsa.key" >/dev/null
plain=$("$VEIL" image inspect --json "oci:$tmp/img:plain" | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifestDigest"])')
dec=$("$VEIL" image inspect --json "oci:$tmp/out-veil:dec" | python3 -c 'import json,sys; print(json.load(sys.stdin)["manifestDigest"])')
[ "$plain" = "$dec" ] || { echo "bench-image: veil's decrypted image differs from the original" >&2; exit 1; }

data=$tmp/src/data.bin
salt=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')
uuid=12345678-1234-1234-1234-123456789abc
prep() { rm -f "$tmp/h-veil" "$tmp/h-vs"; }
t_veil_measure=$(best_of "$VEIL" image measure "$data" --hash-file "$tmp/h-veil" --salt "$salt" --uuid "$uuid")
t_vs_format=$(best_of veritysetup format "$data" "$tmp/h-vs" --salt "$salt" --uuid "$uuid")
prep
"$VEIL" image measure "$data" --hash-file "$tmp/h-veil" --salt "$salt" --uuid "$uuid" >/dev/null
veritysetup format "$data" "$tmp/h-vs" --salt "$salt" --uuid "$uuid" >/dev/null
cmp -s "$tmp/h-veil" "$tmp/h-vs" || { echo "bench-image: hash trees differ from veritysetup's" >&2; exit 1; }

aes=$(openssl speed -evp aes-256-ctr -bytes 16384 -seconds 2 2>/dev/null | awk '/^aes-256-ctr/ {print $NF}')
sha=$(openssl speed -evp sha256 -bytes 16384 -seconds 2 2>/dev/null | awk '/^sha256/ {print $NF}')

python3 - "$MIB" "$layer_bytes" "$t_veil_dec" "$t_skopeo_dec" "$t_veil_measure" "$t_vs_format" "$aes" "$sha" "$(nproc)" <<'EOF'
import sys
mib, layer, vd, sd, vm, vf, aes, sha, cores = sys.argv[1:]
mib, layer = int(mib), int(layer)
vd, sd, vm, vf = map(float, (vd, sd, vm, vf))
def k(v):  # openssl prints e.g. 1234567.89k (1000 bytes)
    return float(v.rstrip("k")) * 1000 / 2**20
L = layer / 2**20
print(f"veil bench image: {mib} MiB random data, {cores} cores, best of runs")
print(f"  decrypt  veil {L/vd:8.1f} MiB/s  skopeo {L/sd:8.1f} MiB/s  ratio veil/skopeo      {sd/vd:5.2f}x")
print(f"  measure  veil {mib/vm:8.1f} MiB/s  veritysetup {mib/vf:8.1f} MiB/s  ratio veil/veritysetup {vf/vm:5.2f}x")
print(f"  limits (openssl speed, one core): AES-256-CTR {k(aes):8.1f} MiB/s, SHA-256 {k(sha):8.1f} MiB/s")
EOF
