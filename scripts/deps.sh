#!/usr/bin/env bash
# Installs what Spur's commands need when it is missing.
#
#   scripts/deps.sh test    what `make test` needs
#   scripts/deps.sh demo    what `make demo` needs
#
# On Debian as root, missing packages are installed with apt-get (the package
# lists are refreshed once, only when something is missing). Elsewhere the
# script names what is missing and how to get it, and fails.
set -euo pipefail

want=${1:-test}
missing_cmds=()   # "command:debian-package"

need() { # need COMMAND DEBIAN_PACKAGE
  command -v "$1" >/dev/null 2>&1 || missing_cmds+=("$1:$2")
}

# The Rust toolchain comes from rustup, not from Debian (Debian's is too old).
for tool in cargo rustfmt cargo-clippy; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "deps: '$tool' is missing. Install Rust 1.89 or newer with rustup" >&2
    echo "      (https://rustup.rs), then: rustup component add rustfmt clippy" >&2
    exit 1
  fi
done

case "$want" in
  test)
    need kubectl kubectl          # the embedded API server's kubectl tests
    need ovsdb-server openvswitch-switch  # the OVSDB client's tests (node/tests/ovsdb.rs)
    ;;
  demo) ;;
  *) echo "deps: unknown group '$want' (expected test or demo)" >&2; exit 2 ;;
esac

[ ${#missing_cmds[@]} -eq 0 ] && exit 0

pkgs=()
for m in "${missing_cmds[@]}"; do pkgs+=("${m#*:}"); done
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing: ${missing_cmds[*]%%:*}" >&2
  echo "      On Debian, run as root: apt-get install -y ${pkgs[*]}" >&2
  exit 1
fi
echo "deps: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
