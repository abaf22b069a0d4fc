#!/usr/bin/env bash
# Installs the system packages veil's tests and tools need, idempotently.
# Safe to run repeatedly; does nothing when everything is present.
set -euo pipefail

# Debian packages, one group per capability. Keep each list minimal.
PACKAGES=(
  # build + tests
  ca-certificates pkg-config
  # attestation tests compare against openssl's view of certificates
  openssl
  # image interop (veil image): skopeo (ocicrypt, signatures), veritysetup,
  # gpg (simple signing), a local registry, busybox for test images
  skopeo cryptsetup-bin gnupg docker-registry busybox-static zstd
  # registry Basic-auth test: htpasswd -B
  apache2-utils
  # kbs tests decrypt JWEs with josekit (an independent JOSE implementation, OpenSSL-based)
  libssl-dev
  # veil run: runc is the baseline of `veil bench run`
  runc
  # veil measure: Debian's OVMF builds (SNP/TDX launch-measurement interop), python3-venv for
  # sev-snp-measure and NVIDIA's nv-local-gpu-verifier
  ovmf python3-venv
  # VM sandbox (veil run --sandbox vm, veil guest build): QEMU and Debian's kernel for the guest
  qemu-system-x86 linux-image-amd64
  # docs test (crates/cli/tests/docs_commands.rs): each doc block in its own network namespace (ip, unshare); man -l renders the man pages
  iproute2 util-linux man-db
  # policy / kbs / run: added by their work
  # pod networking (veil run -p, --network): Debian's CNI plugins (bridge, host-local,
  # portmap, loopback) and iptables, which the bridge/portmap plugins drive
  containernetworking-plugins iptables
  # service tests and `veil bench service`: redis-cli/redis-benchmark and the native
  # redis-server/nginx baselines, wrk, curl
  redis-server redis-tools nginx-light wrk curl
  # kbs on PostgreSQL (crates/kbs/tests/replicas.rs, the store suite): initdb, postgres, psql
  # from /usr/lib/postgresql/*/bin, run by crates/testkit's postgres helper (setpriv: util-linux)
  postgresql
  # Kubernetes (containerd-shim-veil-v2, veil node install): Debian's containerd (1.6.x) and ctr.
  # Debian enables a systemd unit; tests never use a system containerd: crates/testkit starts
  # a private one (own root, state, sockets) per test and stops it by PID.
  containerd
  # CRI tests (crates/shim/tests/cri.rs, veil-testkit's `cri` feature): the k8s-cri crate
  # compiles Kubernetes' CRI protos with protoc at build time
  protobuf-compiler
  # veil-tee's NVML transport tests compile a test double of the driver's libnvidia-ml.so.1
  # (crates/tee/testdata/nvml_test_double.c) with gcc; libc6-dev for its headers
  gcc libc6-dev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# veil measure interop: the reference SNP launch-digest tool, pinned, in its own
# venv (tests look for it here, or at $VEIL_SEV_SNP_MEASURE).
SEV_SNP_MEASURE_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/veil/sev-snp-measure-0.0.13"
if [ "$("$SEV_SNP_MEASURE_VENV/bin/sev-snp-measure" --version 2>/dev/null)" != "sev-snp-measure 0.0.13" ]; then
  echo "install-deps: installing sev-snp-measure 0.0.13 into $SEV_SNP_MEASURE_VENV" >&2
  rm -rf "$SEV_SNP_MEASURE_VENV"
  python3 -m venv "$SEV_SNP_MEASURE_VENV"
  "$SEV_SNP_MEASURE_VENV/bin/pip" install -q --disable-pip-version-check sev-snp-measure==0.0.13
fi

# GPU attestation interop (crates/attest/tests/nvidia_differential.rs, `veil
# bench attest --tee nvidia`): NVIDIA's own verifier, pinned, in its own venv
# (tests look for it here, or at $VEIL_NV_VERIFIER_PYTHON); driven offline by
# scripts/nvidia-verifier-oracle.py.
NV_VERIFIER_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/veil/nv-local-gpu-verifier-2.7.3"
if ! "$NV_VERIFIER_VENV/bin/python" -c 'import importlib.metadata as m, sys; sys.exit(m.version("nv-local-gpu-verifier") != "2.7.3")' 2>/dev/null; then
  echo "install-deps: installing nv-local-gpu-verifier 2.7.3 into $NV_VERIFIER_VENV" >&2
  rm -rf "$NV_VERIFIER_VENV"
  python3 -m venv "$NV_VERIFIER_VENV"
  "$NV_VERIFIER_VENV/bin/pip" install -q --disable-pip-version-check nv-local-gpu-verifier==2.7.3
fi

# Kubernetes manifests (deploy/, crates/cli/tests/node.rs): kubernetes-validate,
# pinned, with the OpenAPI schemas of Kubernetes 1.25–1.37, in its own venv (tests
# look for it here, or at $VEIL_KUBERNETES_VALIDATE).
K8S_VALIDATE_VENV="${XDG_CACHE_HOME:-$HOME/.cache}/veil/kubernetes-validate-1.37.0"
if [ "$("$K8S_VALIDATE_VENV/bin/kubernetes-validate" --version 2>/dev/null)" != "1.37.0" ]; then
  echo "install-deps: installing kubernetes-validate 1.37.0 into $K8S_VALIDATE_VENV" >&2
  rm -rf "$K8S_VALIDATE_VENV"
  python3 -m venv "$K8S_VALIDATE_VENV"
  "$K8S_VALIDATE_VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate==1.37.0
fi

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
