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
  # policy / kbs / run: added by their work
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

if ! command -v cargo-nextest >/dev/null 2>&1; then
  echo "install-deps: installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi
