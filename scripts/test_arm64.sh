#!/usr/bin/env bash
# xattn for 64-bit Arm: cross-builds the library, the CLI and the C tests with Debian's cross
# compiler (gcc-aarch64-linux-gnu, the arm64 multiarch -dev packages) and runs the tests under
# qemu-user, where the kernel set chosen is "neon" and every test that loops over kernel sets
# checks it against the scalar one.
#   bash scripts/test_arm64.sh
# The emulated build is single-threaded (-DXATTN_OPENMP=OFF): qemu-user in this environment hangs
# creating a second thread (even a bare pthread_create), so threads are tested by the native
# builds, the NEON kernels here.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-arm64}
pkgs=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user cmake pkg-config)
arm_pkgs=(libcjson-dev:arm64 libpng-dev:arm64)
. scripts/apt_need.sh
apt_need test_arm64 "${pkgs[@]}" "${arm_pkgs[@]}"
cmake -S . -B "$build" -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
  -DCMAKE_BUILD_TYPE=Release -DXATTN_BUILD_BENCH=OFF -DXATTN_OPENMP=OFF >/dev/null
cmake --build "$build" -j"$(nproc)"
isa=$("$build/xattn-emu" --version | sed -n 's/.*kernels: \([a-z0-9]*\).*/\1/p')
echo "test_arm64: the tool under qemu-aarch64 chose kernel set '$isa'"
[ "$isa" = neon ] || { echo "test_arm64: expected the neon kernel set" >&2; exit 1; }
# Every C and CLI test but two that run for many minutes under emulation (they exercise the same
# kernels through whole modules and training runs; the native suite runs them): test_registry
# (every kind at its default sizes, over 15 min here) and cli_train (about 9 min); format needs
# no Arm build.
ctest --test-dir "$build" --output-on-failure -j2 -E '^(format|test_registry|cli_train)$'
