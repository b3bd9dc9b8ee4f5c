"""Bidirectional cross-attention: the PyPI package under PyTorch against `xattn bench` on the same
weights and inputs, same thread count, in one run.

For each size: a fresh process builds BidirectionalCrossAttention(dim=512, context_dim=386,
heads=8, dim_head=64) (the package README's example), saves its state_dict and inputs, then
  - a fresh PyTorch process loads them and times the forward (median after a warm-up) and
    reports its own peak resident memory;
  - `xattn bench` loads the same files and does the same;
and the two outputs are compared. Writes bench/results/bidir.json, bidir_summary.md and
bidir_chart.png (time and peak memory against sequence length); --quick (smaller sizes) writes
them to bench/results/quick/ instead, never over the committed results.

    python bench/bidir_bench.py [--threads 2] [--xattn build/xattn] [--quick] [--out DIR]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))

PREPARE = r"""
import sys, torch, numpy as np
from safetensors.torch import save_file
from bidirectional_cross_attention import BidirectionalCrossAttention
d, I, J, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
torch.manual_seed(seed)
m = BidirectionalCrossAttention(dim=512, heads=8, dim_head=64, context_dim=386)
save_file(m.state_dict(), f"{d}/model.safetensors", metadata={"heads": "8"})
np.save(f"{d}/x.npy", torch.randn(1, I, 512).numpy())
np.save(f"{d}/context.npy", torch.randn(1, J, 386).numpy())
"""

TORCH_RUN = r"""
import sys, time, json, resource, statistics, torch, numpy as np
from safetensors.torch import load_file
from bidirectional_cross_attention import BidirectionalCrossAttention
d, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(threads)
m = BidirectionalCrossAttention(dim=512, heads=8, dim_head=64, context_dim=386).eval()
m.load_state_dict(load_file(f"{d}/model.safetensors"))
x = torch.from_numpy(np.load(f"{d}/x.npy"))
c = torch.from_numpy(np.load(f"{d}/context.npy"))
with torch.inference_mode():
    out, cout = m(x, c)  # warm-up
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out, cout = m(x, c)
        ts.append(time.perf_counter() - t0)
np.save(f"{d}/torch_out.npy", out.numpy())
np.save(f"{d}/torch_context_out.npy", cout.numpy())
try:  # this process's own peak; ru_maxrss (carried across exec from the parent) only without /proc
    with open("/proc/self/status") as f:
        hwm = [l for l in f if l.startswith("VmHWM:")]
    rss, src = int(hwm[0].split()[1]) / 1024.0, "VmHWM"
except (OSError, IndexError):
    rss, src = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"
print(json.dumps({"seconds": statistics.median(ts), "peak_rss_mb": rss, "peak_rss_source": src,
                  "torch": torch.__version__}))
"""


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def max_rel_err(a, b):
    import numpy as np
    a, b = np.load(a).astype(np.float64), np.load(b).astype(np.float64)
    return float(np.max(np.abs(a - b) / (1.0 + np.abs(b))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--xattn", default=os.path.join(HERE, "..", "build", "xattn"))
    ap.add_argument("--quick", action="store_true", help="smaller sizes, fewer repetitions")
    ap.add_argument("--out", help="where to write (default bench/results, or bench/results/quick "
                    "with --quick)")
    a = ap.parse_args()
    py = sys.executable
    committed = os.path.join(HERE, "results")
    sizes = [(512, 1024), (1024, 2048), (2048, 4096), (4096, 8192)]
    if a.quick:
        sizes = [(256, 512), (512, 1024)]
        a.out = a.out or os.path.join(committed, "quick")
        if os.path.realpath(a.out) == os.path.realpath(committed):
            sys.exit(f"bidir_bench: --quick does not write to {committed} (the committed results)")
        print(f"quick run: results go to {a.out} (the committed results in {committed} stay as "
              "they are)", flush=True)
    a.out = a.out or committed
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for I, J in sizes:
        reps = 3 if I >= 2048 else 5
        with tempfile.TemporaryDirectory() as d:
            run([py, "-c", PREPARE, d, str(I), str(J), "0"])
            t = json.loads(run([py, "-c", TORCH_RUN, d, str(a.threads), str(reps)]))
            x = json.loads(run([a.xattn, "bench", f"{d}/model.safetensors", "--x", f"{d}/x.npy",
                                "--context", f"{d}/context.npy", "--threads", str(a.threads),
                                "--reps", str(reps), "--out-dir", d, "--json"]))
            err = max(max_rel_err(f"{d}/out.npy", f"{d}/torch_out.npy"),
                      max_rel_err(f"{d}/context_out.npy", f"{d}/torch_context_out.npy"))
        r = {"I": I, "J": J, "threads": a.threads, "torch": t["torch"],
             "torch_seconds": t["seconds"], "torch_peak_rss_mb": t["peak_rss_mb"],
             "xattn_seconds": x["seconds"], "xattn_peak_rss_mb": x["peak_rss_mb"],
             "torch_peak_rss_source": t["peak_rss_source"],
             "xattn_peak_rss_source": x["peak_rss_source"],
             "speedup": t["seconds"] / x["seconds"],
             "memory_ratio": x["peak_rss_mb"] / t["peak_rss_mb"], "max_rel_err_vs_torch": err}
        rows.append(r)
        print(f"I={I:5d} J={J:5d}  torch {t['seconds']*1e3:9.1f} ms {t['peak_rss_mb']:8.0f} MB   "
              f"xattn {x['seconds']*1e3:8.1f} ms {x['peak_rss_mb']:6.0f} MB   "
              f"speed-up {r['speedup']:.2f}x  memory {100*r['memory_ratio']:.1f}%  "
              f"max rel err {err:.2g}", flush=True)
    with open(os.path.join(a.out, "bidir.json"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    lines = [f"| I (video) | J (audio) | PyTorch {rows[0]['torch'].split('+')[0]} | xattn | speed-up "
             f"| PyTorch peak RSS | xattn peak RSS | memory ratio | max rel. difference |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['I']} | {r['J']} | {r['torch_seconds']*1e3:.0f} ms | "
                     f"{r['xattn_seconds']*1e3:.0f} ms | {r['speedup']:.1f}x | "
                     f"{r['torch_peak_rss_mb']:.0f} MB | {r['xattn_peak_rss_mb']:.0f} MB | "
                     f"1/{1/r['memory_ratio']:.0f} | {r['max_rel_err_vs_torch']:.1g} |")
    with open(os.path.join(a.out, "bidir_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, os.path.join(a.out, "bidir_chart.png"), a.threads)
    print(f"wrote bidir.json, bidir_summary.md and bidir_chart.png to {a.out}")


def plot(rows, path, threads):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    n = [r["I"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    ax1.plot(n, [r["torch_seconds"] * 1e3 for r in rows], "o-", color="#ff7f0e", label="PyTorch package")
    ax1.plot(n, [r["xattn_seconds"] * 1e3 for r in rows], "o-", color="#1f77b4", label="xattn")
    ax2.plot(n, [r["torch_peak_rss_mb"] for r in rows], "o-", color="#ff7f0e", label="PyTorch package")
    ax2.plot(n, [r["xattn_peak_rss_mb"] for r in rows], "o-", color="#1f77b4", label="xattn")
    for ax, t in ((ax1, "forward time (ms)"), (ax2, "peak resident memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(n)
        ax.set_xticklabels([f"{r['I']}\n×{r['J']}" for r in rows], fontsize=8)
        ax.set_xlabel("video frames × audio frames")
        ax.set_title(t)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"BidirectionalCrossAttention(dim=512, context_dim=386, heads=8, dim_head=64), "
                 f"fp32, {threads} threads", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    print("wrote", path)


if __name__ == "__main__":
    main()
