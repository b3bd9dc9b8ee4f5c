#!/usr/bin/env bash
# Installs what xattn needs to build and test (Debian/Ubuntu, as root; python3 only for a test
# script) and builds it into build/
#   bash scripts/bootstrap.sh            # Release build with OpenMP
#   BUILD_DIR=b CMAKE_ARGS=-DXATTN_SANITIZE=ON bash scripts/bootstrap.sh
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(gcc make cmake pkg-config libcjson-dev libpng-dev libsimde-dev python3 python3-venv)
[ -n "${XATTN_EXTRA_PKGS:-}" ] && read -r -a extra <<<"$XATTN_EXTRA_PKGS" && pkgs+=("${extra[@]}")
. scripts/apt_need.sh
apt_need bootstrap "${pkgs[@]}"
build=${BUILD_DIR:-build}
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=${BUILD_TYPE:-Release} ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j"$(nproc)"
