#!/usr/bin/env bash
# Installs what xattn needs to build and test (Debian/Ubuntu, as root; python3 only for a test
# script) and builds it into build/
#   bash scripts/bootstrap.sh            # Release build with OpenMP
#   BUILD_DIR=b CMAKE_ARGS=-DXATTN_SANITIZE=ON bash scripts/bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(gcc make cmake pkg-config libcjson-dev libpng-dev python3 python3-venv)
[ -n "${XATTN_EXTRA_PKGS:-}" ] && read -r -a extra <<<"$XATTN_EXTRA_PKGS" && pkgs+=("${extra[@]}")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "bootstrap: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
build=${BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
