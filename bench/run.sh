#!/usr/bin/env bash
# Runs xattn's benchmarks and PyTorch's on the same work and thread count, in one run, and
# prints the ratios. Needs a Python with torch (PYTHON, default ~/.venvs/ref/bin/python).
#   bash bench/run.sh [--threads N]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2
[ "${1:-}" = "--threads" ] && threads=$2
py=${PYTHON:-$HOME/.venvs/ref/bin/python}
build=${BUILD_DIR:-build}
out=bench/results
mkdir -p "$out"
"$build/bench_gemm" --threads "$threads" --json "$out/gemm.json"
"$build/bench_attention" --threads "$threads" --json "$out/attention.json"
"$build/bench_mha" --threads "$threads" --json "$out/mha.json"
"$py" bench/torch_ref.py --threads "$threads" > "$out/torch.json"
"$py" - "$out" <<'PY'
import json, sys, os
d = sys.argv[1]
def load(f):
    p = os.path.join(d, f)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []
x = {r["name"]: r for r in load("attention.json") + load("mha.json") + load("gemm.json")}
t = {r["name"]: r for r in load("torch.json")}
rows = []
for name, tr in t.items():
    xr = x.get(name)
    if not xr: continue
    peak = xr.get("peak_gflops")
    rows.append((name, xr["gflops"], 100 * xr["gflops"] / peak if peak else float("nan"),
                 tr["gflops"], tr["seconds"] / xr["seconds"]))
first = next(iter(t.values()))
lines = [f"| work (fp32, {first['threads']} threads) | xattn GFLOP/s | % of measured peak | PyTorch {first['torch']} GFLOP/s | speed-up |",
         "|---|---:|---:|---:|---:|"]
for n, g, pct, tg, sp in rows:
    lines.append(f"| {n} | {g:.0f} | {pct:.0f}% | {tg:.0f} | {sp:.2f}x |")
open(os.path.join(d, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
"$py" bench/plot.py "$out"
