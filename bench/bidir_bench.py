"""Bidirectional cross-attention: the PyPI package under PyTorch against `xattn bench` on the same
weights and inputs, same thread count, in one run.

For each size: a fresh process builds BidirectionalCrossAttention(dim=512, context_dim=386,
heads=8, dim_head=64) (the package README's example), saves its state_dict and inputs, then
  - a fresh PyTorch process loads them and times the forward (median after a warm-up) and
    reports its peak resident memory twice: for the whole process (the Python interpreter,
    torch and the model included) and net of its baseline, the resident size after
    `import torch` and building the model with its weights, before the inputs are read and the
    forward runs (the peak counter is restarted there, /proc/self/clear_refs);
  - `xattn bench` loads the same files and does the same; its peak is its whole process
    (program, weights, inputs and outputs);
and the two outputs are compared. The machine, the kernel set xattn picks and the fp32 FMA peak
its benchmarks measure (bench/machine.py) are recorded with the figures. Writes
bench/results/bidir.json, bidir_summary.md and bidir_chart.png (time and peak memory against
sequence length); --quick (smaller sizes) writes them to bench/results/quick/ instead, never over
the committed results.

    python bench/bidir_bench.py [--threads 2] [--xattn build/xattn] [--quick] [--out DIR]
    python bench/bidir_bench.py --report DIR      (redraws DIR's table and chart)
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
import sys
d, threads, reps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, sys.argv[4])
import time, json, resource, statistics, torch, numpy as np
from safetensors.torch import load_file
from bidirectional_cross_attention import BidirectionalCrossAttention
from machine import status_mb, reset_peak
torch.set_num_threads(threads)
m = BidirectionalCrossAttention(dim=512, heads=8, dim_head=64, context_dim=386).eval()
m.load_state_dict(load_file(f"{d}/model.safetensors"))
# baseline: interpreter + torch + the model with its weights, before the inputs and the forward
base, hwm0 = status_mb("VmRSS"), status_mb("VmHWM")
restarted = base is not None and reset_peak()
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
hwm = status_mb("VmHWM")
if hwm is not None:  # VmHWM since the restart: the work's peak; before it: the import's
    whole, src = max(hwm, hwm0) if restarted else hwm, "VmHWM"
    net = hwm - base if restarted else None
else:  # no /proc: ru_maxrss (whole process only)
    whole, src, net = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss", None
print(json.dumps({"seconds": statistics.median(ts), "peak_rss_mb": whole, "peak_rss_source": src,
                  "baseline_rss_mb": base, "net_peak_mb": net, "torch": torch.__version__,
                  "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}))
"""


def ratio(a, b):
    """a / b as '1/18' when a is much smaller, else '0.71'."""
    if not a or not b:
        return "n/a"
    r = a / b
    return f"1/{1 / r:.0f}" if r <= 0.2 else f"{r:.2f}"


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
    ap.add_argument("--report", metavar="DIR", help="only redraw DIR's bidir_summary.md and "
                    "bidir_chart.png from its bidir.json (machine from DIR/machine.json)")
    a = ap.parse_args()
    if a.report:
        sys.path.insert(0, HERE)
        import machine
        with open(os.path.join(a.report, "bidir.json")) as f:
            rows = [json.loads(line) for line in f if line.strip()]
        report(rows, a.report, rows[0].get("machine") or machine.load(a.report))
        return
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
    sys.path.insert(0, HERE)
    import machine
    mach = machine.record(os.path.dirname(os.path.abspath(a.xattn)), a.threads)
    print(machine.describe(mach), flush=True)
    rows = []
    for I, J in sizes:
        reps = 3 if I >= 2048 else 5
        with tempfile.TemporaryDirectory() as d:
            run([py, "-c", PREPARE, d, str(I), str(J), "0"])
            t = json.loads(run([py, "-c", TORCH_RUN, d, str(a.threads), str(reps), HERE]))
            x = run([a.xattn, "bench", f"{d}/model.safetensors", "--x", f"{d}/x.npy",
                     "--context", f"{d}/context.npy", "--threads", str(a.threads),
                     "--reps", str(reps), "--out-dir", d, "--json"])
            x = json.loads(x.strip().splitlines()[-1])  # the JSON line (after "wrote ..." lines)
            err = max(max_rel_err(f"{d}/out.npy", f"{d}/torch_out.npy"),
                      max_rel_err(f"{d}/context_out.npy", f"{d}/torch_context_out.npy"))
        net = t.get("net_peak_mb")
        r = {"I": I, "J": J, "threads": a.threads, "torch": t["torch"],
             "torch_cpu_capability": t.get("torch_cpu_capability"), "xattn_isa": x.get("isa"),
             "torch_seconds": t["seconds"], "xattn_seconds": x["seconds"],
             "torch_peak_rss_mb": t["peak_rss_mb"],          # whole process, interpreter included
             "torch_baseline_rss_mb": t.get("baseline_rss_mb"),  # after import + model, before work
             "torch_net_peak_mb": net,                        # peak - baseline
             "xattn_peak_rss_mb": x["peak_rss_mb"],          # whole xattn process
             "torch_peak_rss_source": t["peak_rss_source"],
             "xattn_peak_rss_source": x["peak_rss_source"],
             "speedup": t["seconds"] / x["seconds"],
             "memory_ratio": x["peak_rss_mb"] / t["peak_rss_mb"],
             "memory_ratio_net": x["peak_rss_mb"] / net if net else None,
             "max_rel_err_vs_torch": err, "machine": mach}
        rows.append(r)
        print(f"I={I:5d} J={J:5d}  torch {t['seconds']*1e3:9.1f} ms, peak {t['peak_rss_mb']:6.0f} MB "
              f"whole / {net or float('nan'):6.0f} MB net   xattn {x['seconds']*1e3:8.1f} ms, "
              f"peak {x['peak_rss_mb']:5.0f} MB whole   speed-up {r['speedup']:.2f}x   "
              f"max rel err {err:.2g}", flush=True)
    with open(os.path.join(a.out, "bidir.json"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    report(rows, a.out, mach)


def report(rows, out, mach):
    """Writes out/bidir_summary.md and out/bidir_chart.png from the rows of bidir.json."""
    import machine
    tv = rows[0]["torch"].split("+")[0]
    cap = rows[0].get("torch_cpu_capability")
    src = rows[0].get("torch_peak_rss_source", "ru_maxrss")
    threads = rows[0]["threads"]
    lines = [f"Measured on {machine.describe(mach)}; PyTorch {rows[0]['torch']}"
             + (f" (CPU capability {cap})" if cap else "") + f", fp32, {threads} threads, medians.",
             "",
             f"Peak resident memory ({src}): *whole process* counts everything the process holds "
             "(for PyTorch the Python interpreter, torch and the model included); *net* is "
             "PyTorch's peak minus its resident size after `import torch` and building the model "
             "with its weights, before reading the inputs and running the forward. xattn's "
             "figure is always its whole process."
             + (" These figures come from ru_maxrss, which for a process started by fork and "
                "exec begins at its parent's resident size (here the benchmark's Python process), "
                "so a small figure may be the parent's size; no net figure was taken."
                if src == "ru_maxrss" else ""),
             "",
             f"| I (video) | J (audio) | PyTorch {tv} | xattn ({mach.get('isa', '?')}) | speed-up "
             "| PyTorch peak, whole process | PyTorch peak, net of baseline | xattn peak, whole "
             "process | xattn / PyTorch (whole) | xattn / PyTorch (net) | max rel. difference |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        net = r.get("torch_net_peak_mb")
        lines.append(f"| {r['I']} | {r['J']} | {r['torch_seconds']*1e3:.0f} ms | "
                     f"{r['xattn_seconds']*1e3:.0f} ms | {r['speedup']:.1f}x | "
                     f"{r['torch_peak_rss_mb']:.0f} MB | "
                     f"{f'{net:.0f} MB' if net is not None else 'n/a'} | "
                     f"{r['xattn_peak_rss_mb']:.0f} MB | "
                     f"{ratio(r['xattn_peak_rss_mb'], r['torch_peak_rss_mb'])} | "
                     f"{ratio(r['xattn_peak_rss_mb'], net)} | {r['max_rel_err_vs_torch']:.1g} |")
    with open(os.path.join(out, "bidir_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(rows, os.path.join(out, "bidir_chart.png"), threads, machine.describe(mach))
    print(f"wrote bidir_summary.md and bidir_chart.png to {out}")


def plot(rows, path, threads, where):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401
    n = [r["I"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    ax1.plot(n, [r["torch_seconds"] * 1e3 for r in rows], "o-", color="#ff7f0e", label="PyTorch package")
    ax1.plot(n, [r["xattn_seconds"] * 1e3 for r in rows], "o-", color="#1f77b4", label="xattn")
    ax2.plot(n, [r["torch_peak_rss_mb"] for r in rows], "o-", color="#ff7f0e",
             label="PyTorch package, whole process (interpreter included)")
    if all(r.get("torch_net_peak_mb") for r in rows):
        ax2.plot(n, [r["torch_net_peak_mb"] for r in rows], "o--", color="#ff7f0e", mfc="white",
                 label="PyTorch package, net of interpreter + torch + model baseline")
    ax2.plot(n, [r["xattn_peak_rss_mb"] for r in rows], "o-", color="#1f77b4",
             label="xattn, whole process")
    for ax, t in ((ax1, "forward time (ms), lower is better"), (ax2, "peak resident memory (MB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(n)
        ax.set_xticklabels([f"{r['I']}\n×{r['J']}" for r in rows], fontsize=8)
        ax.set_xlabel("video frames × audio frames")
        ax.set_ylabel(t.split(",")[0])
        ax.set_title(t, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * 6)  # room for the legend above the lines
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"BidirectionalCrossAttention(dim=512, context_dim=386, heads=8, dim_head=64), "
                 f"fp32, {threads} threads\n{where}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    print("wrote", path)


if __name__ == "__main__":
    main()
