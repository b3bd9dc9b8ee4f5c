#!/usr/bin/env bash
# The fusion modules (M3 mutual, M4 joint, M5 interlaced, M6 multiview, M7 hallo, M8 decoder,
# M9 conv2d-cross) against
# their PyTorch references: for each, the C benchmark and the PyTorch script run one after the
# other on the same work and thread count; prints the ratios and writes
# bench/results/modules_summary.md.
#   bash bench/modules.sh [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2
[ "${1:-}" = "--threads" ] && threads=$2
py=${PYTHON:-$HOME/.venvs/ref/bin/python}
build=${BUILD_DIR:-build}
out=bench/results
mkdir -p "$out"
mods=()
for m in mutual conv2d joint interlaced multiview hallo decoder; do
  [ -x "$build/bench_$m" ] && [ -f "bench/torch_$m.py" ] || continue
  "$build/bench_$m" --threads "$threads" --json "$out/mod_$m.json" >/dev/null
  "$py" "bench/torch_$m.py" --threads "$threads" >"$out/mod_torch_$m.json"
  mods+=("$m")
done
"$py" - "$out" "${mods[@]}" <<'PY'
import json, os, sys
d, mods = sys.argv[1], sys.argv[2:]
def load(f):
    p = os.path.join(d, f)
    return [json.loads(l) for l in open(p) if l.strip().startswith("{")] if os.path.exists(p) else []
lines = ["| module | work | xattn | PyTorch | speed-up |", "|---|---|---:|---:|---:|"]
for m in mods:
    x = {r["name"]: r for r in load(f"mod_{m}.json")}
    t = {r["name"]: r for r in load(f"mod_torch_{m}.json")}
    for name, tr in t.items():
        if name not in x: continue
        xs, ts = x[name]["seconds"], tr["seconds"]
        lines.append(f"| {m} | {name} | {xs*1e3:.1f} ms | {ts*1e3:.1f} ms | {ts/xs:.2f}x |")
open(os.path.join(d, "modules_summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
