#!/usr/bin/env bash
# Before/after: every C benchmark of bench/ built at REV (default: the last commit before the
# module core) and at the working tree, run alternately on the same machine and thread count,
# ROUNDS times each (default 5; the order flips every round); prints and writes the median time
# of each entry and the ratio after/before to bench/results/before_after.md.
#   bash bench/before_after.sh [REV] [--threads N] [--rounds N]
set -euo pipefail
cd "$(dirname "$0")/.."
rev=929fa6d threads=2 rounds=5
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    -*) echo "usage: bash bench/before_after.sh [REV] [--threads N] [--rounds N]" >&2; exit 2 ;;
    *) rev=$1; shift ;;
  esac
done
py=${PYTHON:-python3}
after=${BUILD_DIR:-build}
wt=$(mktemp -d)
trap 'git worktree remove --force "$wt" >/dev/null 2>&1 || true' EXIT
git worktree add -q --detach "$wt" "$rev"
cmake -S "$wt" -B "$wt/build" -DCMAKE_BUILD_TYPE=Release -DXATTN_BUILD_TESTS=OFF >/dev/null
cmake --build "$wt/build" -j2 >/dev/null
cmake --build "$after" -j2 >/dev/null
res=$(mktemp -d)
for r in $(seq 1 "$rounds"); do
  for b in gemm attention mha mutual conv2d joint interlaced multiview hallo decoder; do
    [ -x "$wt/build/bench_$b" ] && [ -x "$after/bench_$b" ] || continue
    order=(before after)
    [ $((r % 2)) = 0 ] && order=(after before)
    for side in "${order[@]}"; do
      dir=$wt/build
      [ "$side" = after ] && dir=$after
      "$dir/bench_$b" --threads "$threads" --json "$res/$side.$b.$r.json" >/dev/null
    done
  done
  echo "round $r of $rounds done"
done
"$py" - "$res" "$rev" "$(git rev-parse --short HEAD)" "$threads" <<'PY'
import glob, json, os, statistics, sys
res, rev, head, threads = sys.argv[1:5]
t = {}
meta = {}
for f in sorted(glob.glob(os.path.join(res, "*.json"))):
    side = os.path.basename(f).split(".")[0]
    for line in open(f):
        if not line.strip().startswith("{"): continue
        r = json.loads(line)
        t.setdefault(r["name"], {}).setdefault(side, []).append(r["seconds"])
        meta = {"isa": r.get("isa", "?"), "peak": r.get("peak_gflops", 0)}
rows = ["| benchmark | before (median) | after (median) | after / before |", "|---|---:|---:|---:|"]
ratios = []
for name, v in t.items():
    if "before" not in v or "after" not in v: continue
    b, a = statistics.median(v["before"]), statistics.median(v["after"])
    ratios.append(a / b)
    rows.append(f"| {name} | {b*1e3:.2f} ms | {a*1e3:.2f} ms | {a/b:.3f} |")
head_txt = (f"Before: {rev}; after: {head} (working tree). {threads} threads, kernel set "
            f"{meta.get('isa')}, measured FMA peak {meta.get('peak')} GFLOP/s; medians of "
            f"{len(next(iter(t.values()))['after'])} alternating runs. Geometric mean of "
            f"after/before: {statistics.geometric_mean(ratios):.3f} (< 1: faster after).")
text = "# Before / after the module core\n\n" + head_txt + "\n\n" + "\n".join(rows) + "\n"
open("bench/results/before_after.md", "w").write(text)
print(text)
PY
