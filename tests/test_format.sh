#!/usr/bin/env bash
# The tree follows .clang-format: clang-format leaves every tracked .c/.h file unchanged.
# The tree is formatted with clang-format 14 (Debian 12's); another major version may wrap
# differently, so the check is skipped (exit 77) when that version is not installed.
set -uo pipefail
cd "$1"
cf=""
for c in clang-format-14 clang-format; do
  if command -v "$c" >/dev/null && "$c" --version | grep -q 'version 14\.'; then cf=$c; break; fi
done
if [ -z "$cf" ]; then
  echo "format: clang-format 14 is not installed; check skipped (apt-get install clang-format)"
  exit 77
fi
if [ ! -d .git ] && ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "format: not a git checkout; check skipped"
  exit 77
fi
mapfile -t files < <(git ls-files '*.c' '*.h')
bad=0
for f in "${files[@]}"; do
  if ! "$cf" --dry-run --Werror "$f" >/dev/null 2>&1; then
    echo "format: $f differs from .clang-format (run: $cf -i $f)"
    bad=1
  fi
done
[ "$bad" = 0 ] && echo "format: ${#files[@]} files follow .clang-format"
exit $bad
