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
venv=${XATTN_VENV:-${BUILD_DIR:-build}/venv}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip
# the test dependencies one large wheel at a time, without pip's cache or triton: about 4.6 GB
# of disk at the peak instead of about 10 GB (scripts/pip_install_lean.py says why)
"$venv/bin/python" scripts/pip_install_lean.py ".[test]"
"$venv/bin/python" -m pytest -q tests/python
