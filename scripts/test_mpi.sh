#!/usr/bin/env bash
# The MPI build and its tests: installs Open MPI if missing (Debian: libopenmpi-dev, openmpi-bin;
# as root), builds the library with -DXATTN_MPI=ON and the MPI test programs (build-mpi) and runs
# the tests labelled mpi (each program under mpirun with 1, 2, 3 and 4 ranks), then the same
# under ASan+UBSan (build-mpi-asan). Only the library, the command line and tests/mpi are built:
# the rest of the suite is the default build's (scripts/test.sh); `cmake --build build-mpi`
# builds it all.
#   bash scripts/test_mpi.sh
#   XATTN_MPI_ASAN=0 bash scripts/test_mpi.sh      # without the sanitizer build
set -euo pipefail
cd "$(dirname "$0")/.."
pkgs=(gcc make cmake pkg-config libcjson-dev libpng-dev libopenmpi-dev openmpi-bin python3)
. scripts/apt_need.sh
apt_need test_mpi "${pkgs[@]}"
# Open MPI refuses to start as root unless told (CI containers run as root)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
targets=(--target xattn) # the command line: xattn run, grad and train under mpirun (test_mpi_cli.sh)
for f in tests/mpi/test_mpi_*.c; do targets+=(--target "$(basename "$f" .c)"); done
opts=(-DXATTN_MPI=ON -DXATTN_BUILD_BENCH=OFF -DXATTN_BUILD_EXAMPLES=OFF)

cmake -S . -B build-mpi -DCMAKE_BUILD_TYPE=Release "${opts[@]}" >/dev/null
cmake --build build-mpi -j"$(nproc)" "${targets[@]}"
ctest --test-dir build-mpi -L mpi --output-on-failure -j2

if [ "${XATTN_MPI_ASAN:-1}" != 0 ]; then
  echo "== MPI tests under ASan+UBSan"
  cmake -S . -B build-mpi-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DXATTN_SANITIZE=ON "${opts[@]}" >/dev/null
  cmake --build build-mpi-asan -j"$(nproc)" "${targets[@]}"
  # leaks are not checked here: Open MPI keeps its own allocations until the process ends
  ASAN_OPTIONS=detect_leaks=0 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-mpi-asan -L mpi --output-on-failure -j2
fi
echo "MPI tests passed"
