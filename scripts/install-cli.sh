#!/usr/bin/env bash
# Installs the veil CLI for interactive use: the binary (and veil-agent, which
# `veil run` starts), bash/zsh/fish completion and one man page per command,
# into the standard places under PREFIX (default /usr/local). Idempotent:
# files are replaced only when their content changed.
#
#   ./scripts/install-cli.sh               # build (release) and install
#   PREFIX=$HOME/.local ./scripts/install-cli.sh
#   VEIL=path/to/veil ./scripts/install-cli.sh   # install a binary already built
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=${PREFIX:-/usr/local}

if [ -z "${VEIL:-}" ]; then
  cargo build --release --locked -q -p veil -p veil-agent
  target_dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
  VEIL="$target_dir/release/veil"
fi
AGENT=${VEIL_AGENT:-$(dirname "$VEIL")/veil-agent}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# install_file SRC DST MODE: copy unless DST already has SRC's content.
changed=0
install_file() {
  if [ -f "$2" ] && cmp -s "$1" "$2"; then return; fi
  install -D -m "$3" "$1" "$2"
  echo "install-cli: $2"
  changed=$((changed + 1))
}

install_file "$VEIL" "$PREFIX/bin/veil" 0755
if [ -x "$AGENT" ]; then install_file "$AGENT" "$PREFIX/bin/veil-agent" 0755; fi

"$VEIL" completion bash >"$work/veil.bash"
"$VEIL" completion zsh >"$work/_veil"
"$VEIL" completion fish >"$work/veil.fish"
install_file "$work/veil.bash" "$PREFIX/share/bash-completion/completions/veil" 0644
install_file "$work/_veil" "$PREFIX/share/zsh/site-functions/_veil" 0644
install_file "$work/veil.fish" "$PREFIX/share/fish/vendor_completions.d/veil.fish" 0644

"$VEIL" man -o "$work/man" 2>/dev/null
for page in "$work"/man/*.1; do
  install_file "$page" "$PREFIX/share/man/man1/$(basename "$page")" 0644
done
# Pages of commands that no longer exist.
for page in "$PREFIX"/share/man/man1/veil*.1; do
  [ -e "$page" ] || continue
  if [ ! -e "$work/man/$(basename "$page")" ]; then rm -f "$page"; echo "install-cli: removed $page"; changed=$((changed + 1)); fi
done
if [ "$changed" -gt 0 ] && command -v mandb >/dev/null 2>&1; then mandb -q "$PREFIX/share/man" 2>/dev/null || true; fi
echo "install-cli: veil in $PREFIX/bin ($changed files changed); try: man veil, veil <TAB>"
