#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds a program outside the tree against it,
# with pkg-config (shared and static) and with find_package(xattn).
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
libdir=$(find "$tmp/prefix" -name xattn.pc -printf "%h\n" | head -n1)
export PKG_CONFIG_PATH="$libdir"
cc -o "$tmp/pc_shared" "$src/tests/install/consumer.c" $(pkg-config --cflags --libs xattn) -lm
LD_LIBRARY_PATH="$tmp/prefix/lib:$(dirname "$libdir")" "$tmp/pc_shared"
cc -o "$tmp/pc_static" "$src/tests/install/consumer.c" -static-libgcc \
   $(pkg-config --cflags xattn) "$(dirname "$libdir")/libxattn.a" $(pkg-config --libs --static xattn | sed 's/-lxattn//') -lm
"$tmp/pc_static"
cmake -S "$src/tests/install" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
"$tmp/cm/consumer_static"
LD_LIBRARY_PATH="$(dirname "$libdir")" "$tmp/cm/consumer_shared"
echo "install: pkg-config and find_package consumers OK"
