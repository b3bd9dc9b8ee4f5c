#!/usr/bin/env bash
# The whole test suite: builds (scripts/bootstrap.sh), runs the C library's and the CLI's tests
# (ctest), then installs the Python package into a virtual environment (pip install ., with its
# test dependencies from PyPI: pytest, safetensors, torch, the reference packages) and runs its
# tests (pytest tests/python).
#   bash scripts/test.sh                 # build/, build/venv
#   XATTN_VENV=~/venvs/x bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j2
# The test dependencies take about 4.7 GB (torch from PyPI brings its CUDA libraries). Where the
# build's file system has less free than that and no environment exists yet, the environment goes
# to the RAM-backed /dev/shm when that has room (said here, never silently); pip's temporary files
# follow it. XATTN_VENV names a place explicitly.
need_gib=6
free_gib() { df -P -B1G "$1" 2>/dev/null | awk 'NR == 2 {print $4}'; }
build=${BUILD_DIR:-build}
venv=${XATTN_VENV:-$build/venv}
if [ -z "${XATTN_VENV:-}" ] && [ ! -x "$venv/bin/python" ]; then
  here=$(free_gib "$build")
  if [ "${here:-0}" -lt "$need_gib" ]; then
    shm=/dev/shm/xattn-test-venv-$(id -u)
    if [ -d /dev/shm ] && [ -w /dev/shm ] && [ "$(free_gib /dev/shm)" -ge "$need_gib" ]; then
      echo "== only ${here} GiB free under $build (the test environment needs about ${need_gib}):" \
        "creating it in $shm (RAM-backed)"
      venv=$shm
      mkdir -p "$venv.tmp"
      export TMPDIR=$venv.tmp
    else
      echo "== warning: only ${here} GiB free under $build and no room in /dev/shm; the test" \
        "environment needs about ${need_gib} GiB (set XATTN_VENV to a place with room)" >&2
    fi
  fi
fi
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# the test dependencies one large wheel at a time, without pip's cache or triton: about 4.6 GB
# of disk at the peak instead of about 10 GB (scripts/pip_install_lean.py says why)
"$venv/bin/python" scripts/pip_install_lean.py ".[test]"
"$venv/bin/python" -m pytest -q tests/python
