#!/usr/bin/env bash
# Builds the service test images from Debian packages (issue 14): Redis
# (redis-server), nginx (nginx-light) and Python (python3-minimal), each a
# rootfs made of the packages and their dependencies, unpacked with
# `dpkg-deb -x` (no maintainer scripts run) and imported with
# `veil image import` into one OCI layout.
#
#   scripts/test-images.sh [LAYOUT]     (default /var/tmp/veil-test-images/layout)
#
# Idempotent and cached: .debs are downloaded once into /var/tmp/veil-debs
# (`apt-get download`, dependencies resolved by apt for an empty system);
# an image is rebuilt only when its package list, this script or its
# files change. Env: VEIL (the veil binary; default target/debug/veil of
# $CARGO_TARGET_DIR or ./target), VEIL_DEBS (cache dir).
# Prints, for each image, `NAME oci:LAYOUT:NAME` on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

LAYOUT=${1:-/var/tmp/veil-test-images/layout}
WORK=$(dirname "$LAYOUT")
DEBS=${VEIL_DEBS:-/var/tmp/veil-debs}
VEIL=${VEIL:-${CARGO_TARGET_DIR:-target}/debug/veil}
[ -x "$VEIL" ] || { echo "test-images: $VEIL not built (cargo build -p veil --bin veil, or set VEIL)" >&2; exit 2; }
mkdir -p "$DEBS" "$WORK"
# One builder at a time (tests run in parallel and share the cache).
exec 9>"$WORK/.lock"
flock 9

# Packages only their maintainer scripts need (users, alternatives,
# debconf, perl): the images run the service binaries directly.
EXCLUDE='^(adduser|debconf|dpkg|tar|perl|perl-base|perl-modules-.*|libperl.*|lib.*-perl|init-system-helpers|usrmerge|sysvinit-utils|lsb-base|passwd|libpam.*|libsemanage.*|libsepol.*|libaudit.*|libcap-ng0|libdb5\.3|libgdbm.*|media-types|tzdata|readline-common)$'

# closure PKG...: the packages apt would install on an empty system.
closure() {
  apt-get -s install --no-install-recommends -o Dir::State::status=/dev/null "$@" 2>/dev/null \
    | awk '/^Inst /{print $2}' | grep -Ev "$EXCLUDE" | sort -u
}

# fetch PKG...: their .deb files in $DEBS (downloaded once).
fetch() {
  local missing=()
  for p in "$@"; do
    compgen -G "$DEBS/${p}_*.deb" >/dev/null || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "test-images: downloading ${missing[*]}" >&2
    (cd "$DEBS" && apt-get download -q "${missing[@]}" >&2)
  fi
}

# build NAME CONFIG_JSON EXTRA_FN PKG...
build() {
  local name=$1 config=$2 extra=$3; shift 3
  local pkgs; pkgs=$(closure "$@" busybox-static)
  [ -n "$pkgs" ] || { echo "test-images: apt resolved nothing for $* (run apt-get update)" >&2; exit 2; }
  local stamp_val; stamp_val=$( { echo "$pkgs"; echo "$config"; declare -f "$extra"; sha256sum "$0"; } | sha256sum | cut -c1-16)
  local stamp="$WORK/$name.stamp"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$stamp_val" ] && grep -q "\"$name\"" "$LAYOUT/index.json" 2>/dev/null; then
    echo "$name oci:$LAYOUT:$name"; return
  fi
  # shellcheck disable=SC2086
  fetch $pkgs
  local root="$WORK/$name.rootfs"
  rm -rf "$root"; mkdir -p "$root"
  for p in $pkgs; do
    local deb; deb=$(ls "$DEBS/${p}"_*.deb | sort -V | tail -1)
    dpkg-deb -x "$deb" "$root"
  done
  # A shell and the usual tools (busybox-static), without shadowing package binaries.
  mkdir -p "$root/bin" "$root/tmp" "$root/etc" "$root/root"
  chmod 1777 "$root/tmp"
  for a in $("$root/bin/busybox" --list); do
    [ -e "$root/bin/$a" ] || [ -e "$root/usr/bin/$a" ] || ln -s busybox "$root/bin/$a"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' >"$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
  "$extra" "$root"
  printf '%s' "$config" >"$WORK/$name.config.json"
  SOURCE_DATE_EPOCH=0 "$VEIL" image import "$root" "oci:$LAYOUT:$name" --config "$WORK/$name.config.json" >/dev/null
  echo "$stamp_val" >"$stamp"
  echo "$name oci:$LAYOUT:$name"
}

redis_extra() { :; }
nginx_extra() {
  local root=$1
  mkdir -p "$root/var/log/nginx" "$root/var/lib/nginx" "$root/usr/share/nginx/html"
  printf '<html><body><h1>veil nginx</h1><p>served from a Debian nginx-light image</p></body></html>\n' \
    >"$root/usr/share/nginx/html/index.html"
  cat >"$root/etc/nginx/veil.conf" <<'CONF'
user root;
worker_processes 1;
daemon off;
pid /tmp/nginx.pid;
error_log stderr;
events { worker_connections 256; }
http {
  include /etc/nginx/mime.types;
  access_log /var/log/nginx/access.log;
  client_body_temp_path /tmp/nginx-body;
  proxy_temp_path /tmp/nginx-proxy;
  fastcgi_temp_path /tmp/nginx-fastcgi;
  uwsgi_temp_path /tmp/nginx-uwsgi;
  scgi_temp_path /tmp/nginx-scgi;
  server {
    listen 80;
    root /usr/share/nginx/html;
  }
}
CONF
}
python_extra() {
  local root=$1
  mkdir -p "$root/app"
  cat >"$root/app/app.py" <<'PY'
# Answers every GET with the SHA-256 of the secret file named by
# VEIL_SECRET (default /run/veil/secrets/app-secret): proves the secret
# reached the container without ever sending the secret itself.
import hashlib, http.server, os, sys
PATH = os.environ.get("VEIL_SECRET", "/run/veil/secrets/app-secret")
PORT = int(os.environ.get("PORT", "8080"))
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            with open(PATH, "rb") as f:
                body = ("sha256:" + hashlib.sha256(f.read()).hexdigest() + "\n").encode()
            code = 200
        except OSError as e:
            body, code = (f"cannot read {PATH}: {e.strerror}\n").encode(), 500
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, fmt, *args):
        sys.stderr.write(fmt % args + "\n")
http.server.HTTPServer(("0.0.0.0", PORT), H).serve_forever()
PY
}

build redis '{"Entrypoint":["/usr/bin/redis-server"],"Cmd":["--protected-mode","no","--bind","0.0.0.0","--save","","--appendonly","no"],"ExposedPorts":{"6379/tcp":{}}}' \
  redis_extra redis-server
build nginx '{"Entrypoint":["/usr/sbin/nginx","-c","/etc/nginx/veil.conf"],"ExposedPorts":{"80/tcp":{}}}' \
  nginx_extra nginx-light
build python '{"Entrypoint":["/usr/bin/python3","/app/app.py"],"Env":["PATH=/usr/bin:/bin","PORT=8080"],"ExposedPorts":{"8080/tcp":{}}}' \
  python_extra python3-minimal libpython3-stdlib
