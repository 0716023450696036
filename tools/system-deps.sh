#!/usr/bin/env bash
# The system programs the test suite needs. Installs the missing ones with apt-get when run as
# root or with sudo; otherwise prints the one command to run and exits 1. Never skips silently.
set -euo pipefail
declare -A PKG=( [redis-server]=redis-server [chromium]=chromium [chromedriver]=chromium-driver
                 [ip]=iproute2 [wrk]=wrk [node]=nodejs [javac]=default-jdk-headless [gcc]=gcc
                 [unshare]=util-linux [curl]=curl )
missing=()
for prog in "${!PKG[@]}"; do
  command -v "$prog" >/dev/null 2>&1 || missing+=("${PKG[$prog]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
# Machines of this kind ship nodesource's nodejs; never replace a working node with Debian's.
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
cmd="apt-get install -y --no-install-recommends ${missing[*]}"
if [ "$(id -u)" -eq 0 ]; then SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then SUDO="sudo"
else
  echo "make test needs system packages that are missing: ${missing[*]}" >&2
  echo "run:  sudo apt-get update && sudo $cmd" >&2
  exit 1
fi
echo "installing system packages the tests need: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO $cmd -qq >/dev/null
