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
need_file() { # need_file PATH DEBIAN_PACKAGE
  [ -e "$1" ] || missing_cmds+=("$1:$2")
}
# What the hardware harness (spur-hil) runs: Open vSwitch in userspace, the
# reference CNI plugins as the primary CNI and as Multus delegates, and the
# tools it configures and probes with.
harness() {
  need ovsdb-server openvswitch-switch
  need ovs-vswitchd openvswitch-switch
  need ip iproute2
  need ping iputils-ping
  need ethtool ethtool
  need sysctl procps
  need_file /usr/lib/cni/ptp containernetworking-plugins
  need_file /usr/lib/cni/host-local containernetworking-plugins
  need_file /usr/lib/cni/macvlan containernetworking-plugins
}

# kubernetes-validate (PyPI), which `make validate-deploy` runs: installed
# with pip when the module is missing. Debian 12's python3 is "externally
# managed" (PEP 668): pip then needs --break-system-packages, and installs
# into /usr/local/lib/python3.*/dist-packages, apart from Debian's own
# packages. (A venv would need python3-venv as well and a path to activate
# in the Makefile; pip into the system Python keeps `python3` working as is.)
pip_deps() {
  python3 -c 'import kubernetes_validate' >/dev/null 2>&1 && return 0
  if [ "$(id -u)" -ne 0 ] && [ ! -w "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" ]; then
    echo "deps: missing: the Python module kubernetes_validate" >&2
    echo "      Install it: python3 -m pip install kubernetes-validate" >&2
    exit 1
  fi
  local flags=(--quiet --disable-pip-version-check --root-user-action=ignore)
  if [ -e "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')/EXTERNALLY-MANAGED" ]; then
    flags+=(--break-system-packages)
  fi
  echo "deps: installing kubernetes-validate (pip)"
  python3 -m pip install "${flags[@]}" "kubernetes-validate>=1.33"  # has schemas for 1.30-1.33
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
    need kubectl kubectl          # the embedded API server's kubectl tests; kustomize
    need python3 python3          # scripts/validate-deploy.py
    python3 -m pip --version >/dev/null 2>&1 || missing_cmds+=("pip:python3-pip")
    harness                       # OVSDB client tests, netlink tests, harness testbeds
    ;;
  demo)
    harness
    # kubectl is optional for the demo (to look at a lab kept with --keep).
    command -v kubectl >/dev/null 2>&1 || apt-cache show kubectl >/dev/null 2>&1 && need kubectl kubectl || true
    ;;
  *) echo "deps: unknown group '$want' (expected test or demo)" >&2; exit 2 ;;
esac

if [ ${#missing_cmds[@]} -eq 0 ]; then
  [ "$want" = test ] && pip_deps
  exit 0
fi

pkgs=()
for m in "${missing_cmds[@]}"; do pkgs+=("${m##*:}"); done
# One package may provide several missing commands.
mapfile -t pkgs < <(printf "%s\n" "${pkgs[@]}" | sort -u)
if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "deps: missing: ${missing_cmds[*]%%:*}" >&2
  echo "      On Debian, run as root: apt-get install -y ${pkgs[*]}" >&2
  exit 1
fi
echo "deps: installing ${pkgs[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
[ "$want" = test ] && pip_deps
exit 0
