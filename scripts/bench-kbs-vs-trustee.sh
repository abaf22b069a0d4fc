#!/usr/bin/env bash
# veil's KBS side by side with Trustee's KBS (issue #19), on this machine.
#
# A manual benchmark, NOT part of the test suite: it needs a release build
# of Trustee's `kbs` (built-in CoCo AS with its `sample` verifier; how it was
# built here is in docs/kbs.md) and takes minutes. It prints figures; it
# asserts nothing about speed.
#
# Both servers run release builds with their production defaults except
# what the comparison needs (plain HTTP on loopback, CoCo `sample` evidence
# accepted, one 32-byte resource and a resource policy releasing it to
# sample evidence), each pinned to core 0; the load generator
# (`veil bench kbs --url`) runs pinned to core 1. RUST_BACKTRACE is unset
# for both. For each round the two servers are loaded one after the other
# (the order alternates), and the table gives the medians over the rounds.
#
# Usage:
#   scripts/bench-kbs-vs-trustee.sh [--trustee-kbs PATH] [--veil PATH]
#       [--seconds N] [--rounds N] [--client-counts 1,8,32] [--raw-dir DIR]
#       [TRUSTEE_KBS_PATH]
# Environment: TRUSTEE_KBS (Trustee's kbs binary), VEIL (veil's binary;
# default: `veil` on PATH).
set -euo pipefail

die() { printf 'bench-kbs-vs-trustee: %s\n' "$*" >&2; exit 1; }

trustee_kbs=${TRUSTEE_KBS:-}
veil_bin=${VEIL:-}
seconds=20
rounds=3
client_counts=1,8,32
raw_dir=
while [ $# -gt 0 ]; do
    case $1 in
        --trustee-kbs) trustee_kbs=${2:?}; shift 2 ;;
        --veil) veil_bin=${2:?}; shift 2 ;;
        --seconds) seconds=${2:?}; shift 2 ;;
        --rounds) rounds=${2:?}; shift 2 ;;
        --client-counts) client_counts=${2:?}; shift 2 ;;
        --raw-dir) raw_dir=${2:?}; shift 2 ;;
        -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
        -*) die "unknown option $1 (see --help)" ;;
        *) trustee_kbs=$1; shift ;;
    esac
done

[ -n "$trustee_kbs" ] || die "no Trustee kbs binary: pass its path (or set TRUSTEE_KBS); docs/kbs.md says how it was built"
[ -x "$trustee_kbs" ] || die "Trustee kbs binary $trustee_kbs is not an executable file"
if [ -z "$veil_bin" ]; then
    veil_bin=$(command -v veil) || die "no veil binary: set VEIL=PATH or pass --veil (a release build: cargo build --release -p veil)"
fi
[ -x "$veil_bin" ] || die "veil binary $veil_bin is not an executable file"
case $rounds in ''|*[!0-9]*|0) die "--rounds must be a positive integer, got '$rounds'" ;; esac
for tool in taskset openssl python3; do
    command -v "$tool" >/dev/null || die "$tool is needed (Debian: util-linux, openssl, python3)"
done
[ "$(nproc)" -ge 2 ] || die "needs 2 CPUs (server on core 0, load generator on core 1); this machine has $(nproc)"

unset RUST_BACKTRACE RUST_LIB_BACKTRACE RUST_LOG

work=$(mktemp -d "${TMPDIR:-/tmp}/veil-vs-trustee.XXXXXXXX")
chmod 700 "$work"
pids=()
cleanup() {
    local rc=$? pid
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_listening PORT PID LOG: until the server accepts connections.
wait_listening() {
    local port=$1 pid=$2 log=$3 _
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || { cat "$log" >&2; die "server (pid $pid) exited during start; its log is above"; }
        if python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), 0.2).close()' "$port" 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    cat "$log" >&2
    die "server (pid $pid) not listening on 127.0.0.1:$port after 30 s; its log is above"
}

resource=default/bench/key
head -c 32 /dev/urandom >"$work/resource.bin"

# The same resource policy for both: release to any token whose annotated
# evidence is CoCo `sample` evidence (Rego v1, Trustee's and veil's input).
cat >"$work/release-to-sample.rego" <<'EOF'
package policy

default allow := false

allow if {
	data.plugin == "resource"
	input.submods.cpu0["ear.veraison.annotated-evidence"].sample
}
EOF

# One admin key (Ed25519) for both servers: veil's CLI mints its admin
# tokens (iss veil-admin, aud veil-kbs, role admin), Trustee checks them
# against the same public key.
"$veil_bin" kbs admin-keygen --key "$work/admin.key" --pub "$work/admin.pub" >/dev/null

admin() { # admin URL ARGS...: a veil admin command against URL
    local url=$1; shift
    VEIL_KBS_URL=$url VEIL_KBS_ADMIN_KEY=$work/admin.key "$veil_bin" kbs "$@" --insecure-http
}

# --- veil ---------------------------------------------------------------
mkdir -m 700 "$work/veil"
"$veil_bin" kbs kek-generate --out "$work/veil/kek.hex" >/dev/null
veil_port=$(free_port)
taskset -c 0 "$veil_bin" kbs serve --data-dir "$work/veil/data" \
    --kek-file "$work/veil/kek.hex" --admin-pubkey "$work/admin.pub" \
    --insecure-http --insecure-allow-sample --listen "127.0.0.1:$veil_port" \
    >"$work/veil/log" 2>&1 &
veil_pid=$!
pids+=("$veil_pid")
wait_listening "$veil_port" "$veil_pid" "$work/veil/log"
veil_url=http://127.0.0.1:$veil_port
admin "$veil_url" resource put "$resource" "$work/resource.bin" >/dev/null
admin "$veil_url" policy set --file "$work/release-to-sample.rego" >/dev/null

# --- Trustee ------------------------------------------------------------
# Production-style token trust chain (as Trustee documents for a
# persistent built-in AS): the AS signs EAR tokens with a P-256 key whose
# certificate chain goes into the token header; the KBS verifies that chain
# against the CA (insecure_header_jwk stays false).
t=$work/trustee
mkdir -m 700 "$t" "$t/storage"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=bench token CA" -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=bench CoCo AS" -keyout "$t/token.p8" -out "$t/token.csr" 2>/dev/null
openssl ec -in "$t/token.p8" -out "$t/token.key" 2>/dev/null # SEC1, as the AS reads it
openssl x509 -req -in "$t/token.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" \
    -CAcreateserial -days 30 -out "$t/token.pem" 2>/dev/null
cat "$t/token.pem" "$t/ca.pem" >"$t/token-chain.pem"
trustee_port=$(free_port)
cat >"$t/kbs.toml" <<EOF
# written by scripts/bench-kbs-vs-trustee.sh
[http_server]
sockets = ["127.0.0.1:$trustee_port"]
insecure_http = true

[attestation_token]
trusted_certs_paths = ["$t/ca.pem"]

[attestation_service]
type = "coco_as_builtin"

[attestation_service.attestation_token_broker.signer]
key_path = "$t/token.key"
cert_path = "$t/token-chain.pem"

[attestation_service.rvps_config]
type = "BuiltIn"

[admin]
authorization_mode = "AuthenticatedAuthorization"

[admin.authentication.bearer_jwt]
identity_providers = [
    { issuer = "veil-admin", audience = "veil-kbs", public_key_uri = "$work/admin.pub" },
]

[admin.authorization.regex_acl]
acls = [{ role = "admin", allowed_endpoints = "^/kbs/v0/.+\$" }]

[storage_backend]
storage_type = "LocalFs"

[storage_backend.backends.local_fs]
dir_path = "$t/storage"

[[plugins]]
name = "resource"
storage_backend_type = "kvstorage"
EOF
taskset -c 0 "$trustee_kbs" --config-file "$t/kbs.toml" >"$t/log" 2>&1 &
trustee_pid=$!
pids+=("$trustee_pid")
wait_listening "$trustee_port" "$trustee_pid" "$t/log"
trustee_url=http://127.0.0.1:$trustee_port
admin "$trustee_url" resource put "$resource" "$work/resource.bin" >/dev/null
admin "$trustee_url" policy set --file "$work/release-to-sample.rego" >/dev/null

# --- load ---------------------------------------------------------------
raw=$work/raw
mkdir "$raw"
bench() { # bench NAME URL PID ROUND
    printf '  round %s: %s (%s s per row)\n' "$4" "$1" "$seconds" >&2
    taskset -c 1 "$veil_bin" bench kbs --url "$2" --insecure-http --tee sample \
        --resource "$resource" --server-pid "$3" --seconds "$seconds" \
        --client-counts "$client_counts" --json >"$raw/$1-$4.json" \
        || die "veil bench kbs against $1 ($2) failed in round $4; server log: $work/$1/log"
}
printf 'bench-kbs-vs-trustee: %s rounds, clients %s, %s s per row; load before: %s\n' \
    "$rounds" "$client_counts" "$seconds" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2
for round in $(seq 1 "$rounds"); do
    if [ $((round % 2)) -eq 1 ]; then
        bench veil "$veil_url" "$veil_pid" "$round"
        bench trustee "$trustee_url" "$trustee_pid" "$round"
    else
        bench trustee "$trustee_url" "$trustee_pid" "$round"
        bench veil "$veil_url" "$veil_pid" "$round"
    fi
done
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "$raw_dir" ]; then
    mkdir -p "$raw_dir"
    cp "$raw"/*.json "$raw_dir"/
fi

# --- medians ------------------------------------------------------------
python3 - "$raw" "$rounds" "$seconds" "$load_after" <<'EOF'
import json, pathlib, statistics, sys

raw, rounds, seconds, load = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = {}  # (server, workload, clients) -> [row, ...]
for f in sorted(raw.glob("*.json")):
    server = f.stem.rsplit("-", 1)[0]
    for r in json.loads(f.read_text()):
        rows.setdefault((server, r["workload"], r["clients"]), []).append(r)

def med(server, workload, clients, key):
    vals = [r[key] for r in rows.get((server, workload, clients), []) if r[key] is not None]
    return statistics.median(vals) if vals else float("nan")

def spread(server, workload, clients):
    vals = [r["ops_per_s"] for r in rows.get((server, workload, clients), [])]
    return f"{min(vals):.0f}–{max(vals):.0f}" if vals else "-"

names = {"handshake": "full handshake (auth + attest + GET + JWE decrypt)",
         "get": "resource GET on an attested session"}
print(f"medians of {rounds} alternating runs, {seconds} s per row, server on core 0, "
      f"load generator on core 1; load average after: {load}")
print()
print("| workload | clients | veil ops/s | Trustee ops/s | veil / Trustee | p99 ms veil vs Trustee | server CPU ms/op veil vs Trustee | errors veil / Trustee |")
print("|---|---|---|---|---|---|---|---|")
for workload in ("handshake", "get"):
    counts = sorted({c for (s, w, c) in rows if w == workload})
    for c in counts:
        v, t = med("veil", workload, c, "ops_per_s"), med("trustee", workload, c, "ops_per_s")
        errs = [sum(r["errors"] for r in rows.get((s, workload, c), [])) for s in ("veil", "trustee")]
        print(f"| {names[workload]} | {c} | {v:.0f} ({spread('veil', workload, c)}) | "
              f"{t:.0f} ({spread('trustee', workload, c)}) | **{v / t:.2f}×** | "
              f"{med('veil', workload, c, 'p99_ms'):.1f} vs {med('trustee', workload, c, 'p99_ms'):.1f} | "
              f"{med('veil', workload, c, 'server_cpu_ms_per_op'):.2f} vs "
              f"{med('trustee', workload, c, 'server_cpu_ms_per_op'):.2f} | {errs[0]} / {errs[1]} |")
print()
print("ops/s: median (min–max over the rounds).")
first = [r["first_error"] for rs in rows.values() for r in rs if r.get("first_error")]
if first:
    print(f"first error seen: {first[0]}")
EOF
