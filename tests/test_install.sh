#!/usr/bin/env bash
# Installs the build into a temporary prefix and builds a program outside the tree against it,
# with pkg-config (shared and static) and with find_package(xattn).
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
libdir=$(find "$tmp/prefix" -name xattn.pc -printf "%h\n" | head -n1)
# the shared library's flags need no other .pc file (no libcjson.pc, no libpng.pc): search only a
# directory that holds xattn.pc and nothing else
mkdir "$tmp/pc_only"
cp "$libdir/xattn.pc" "$tmp/pc_only/"
PKG_CONFIG_LIBDIR="$tmp/pc_only" PKG_CONFIG_PATH="" pkg-config --cflags --libs xattn >/dev/null || {
  echo "install: pkg-config --cflags --libs xattn needs more than xattn.pc" >&2; exit 1; }
export PKG_CONFIG_LIBDIR="$libdir" PKG_CONFIG_PATH=""
[ "$(ls "$libdir")" = xattn.pc ] || { echo "install: $libdir holds more than xattn.pc" >&2; exit 1; }
cc -o "$tmp/pc_shared" "$src/tests/install/consumer.c" $(pkg-config --cflags --libs xattn) -lm
LD_LIBRARY_PATH="$tmp/prefix/lib:$(dirname "$libdir")" "$tmp/pc_shared"
unset PKG_CONFIG_LIBDIR
export PKG_CONFIG_PATH="$libdir"
cc -o "$tmp/pc_static" "$src/tests/install/consumer.c" -static-libgcc \
   $(pkg-config --cflags xattn) "$(dirname "$libdir")/libxattn.a" $(pkg-config --libs --static xattn | sed 's/-lxattn//') -lm
"$tmp/pc_static"
cmake -S "$src/tests/install" -B "$tmp/cm" -DCMAKE_PREFIX_PATH="$tmp/prefix" >/dev/null
cmake --build "$tmp/cm" >/dev/null
"$tmp/cm/consumer_static"
LD_LIBRARY_PATH="$(dirname "$libdir")" "$tmp/cm/consumer_shared"
echo "install: pkg-config and find_package consumers OK"
