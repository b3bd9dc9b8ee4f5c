#!/usr/bin/env bash
# Runs xattn's benchmarks and PyTorch's on the same work and thread count, in one run, and
# prints the ratios. Needs a Python with torch (PYTHON, default ~/.venvs/ref/bin/python).
#   bash bench/run.sh [--threads N] [--quick]
# --quick: reduced sizes (one GEMM, attention at length 1024), written to bench/results/quick/,
# never over the committed results in bench/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 quick=0
while [ $# -gt 0 ]; do
  case $1 in
    --threads) threads=$2; shift 2 ;;
    --quick) quick=1; shift ;;
    *) echo "usage: bash bench/run.sh [--threads N] [--quick]" >&2; exit 2 ;;
  esac
done
py=${PYTHON:-$HOME/.venvs/ref/bin/python}
build=${BUILD_DIR:-build}
out=bench/results gemm_args=() seq_args=()
if [ "$quick" = 1 ]; then
  out=bench/results/quick gemm_args=(--quick) seq_args=(--seq 1024)
  echo "quick run: results go to $out/ (the committed results in bench/results/ stay as they are)"
fi
mkdir -p "$out"
"$build/bench_gemm" --threads "$threads" "${gemm_args[@]}" --json "$out/gemm.json"
"$build/bench_attention" --threads "$threads" "${seq_args[@]}" --json "$out/attention.json"
"$build/bench_mha" --threads "$threads" --json "$out/mha.json"
"$py" bench/torch_ref.py --threads "$threads" "${seq_args[@]}" > "$out/torch.json"
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
echo "results in $out/"
