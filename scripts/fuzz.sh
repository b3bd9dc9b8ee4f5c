#!/usr/bin/env bash
# Builds the libFuzzer harnesses with clang and runs each for FUZZ_SECONDS (default 30).
set -euo pipefail
cd "$(dirname "$0")/.."
FUZZ_SECONDS=${FUZZ_SECONDS:-30}
CC=clang XATTN_EXTRA_PKGS="clang libclang-rt-14-dev" BUILD_DIR=build-fuzz BUILD_TYPE=Debug \
  CMAKE_ARGS="-DXATTN_FUZZ=ON -DXATTN_OPENMP=OFF -DXATTN_BUILD_TESTS=OFF -DXATTN_BUILD_BENCH=OFF -DXATTN_BUILD_CLI=OFF -DXATTN_BUILD_EXAMPLES=OFF" \
  bash scripts/bootstrap.sh
status=0
for f in build-fuzz/fuzz_*; do
  [ -x "$f" ] || continue
  name=$(basename "$f")
  corpus=$(mktemp -d)
  seeds="fuzz/corpus/${name#fuzz_}"
  [ -d "$seeds" ] && cp -r "$seeds/." "$corpus/"
  dict=()
  [ -f "fuzz/${name#fuzz_}.dict" ] && dict=("-dict=fuzz/${name#fuzz_}.dict")
  echo "-- $name (${FUZZ_SECONDS}s)"
  if ! "$f" -max_total_time="$FUZZ_SECONDS" -max_len=4096 -rss_limit_mb=1024 "${dict[@]}" "$corpus" >"$corpus.log" 2>&1; then
    tail -n 40 "$corpus.log"
    status=1
  else
    tail -n 1 "$corpus.log"
  fi
done
exit $status
