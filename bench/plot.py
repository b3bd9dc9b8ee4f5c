"""Draws bench/results/chart.png from the JSON lines that bench/run.sh collected:
xattn vs PyTorch GFLOP/s for each piece of work, with the measured FMA peak as a line, titled
with the machine (DIR/machine.json, when bench/machine.py wrote one), the kernel set and the
PyTorch version.

    python bench/plot.py [DIR]      (default bench/results)
"""
import json
import os
import sys
import textwrap

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import machine  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load(d, f):
    p = os.path.join(d, f)
    return [json.loads(l) for l in open(p) if l.strip()] if os.path.exists(p) else []


def main():
    d = sys.argv[1] if len(sys.argv) > 1 else "bench/results"
    x = {r["name"]: r for r in load(d, "attention.json") + load(d, "mha.json") + load(d, "gemm.json")}
    t = {r["name"]: r for r in load(d, "torch.json")}
    names = [n for n in t if n in x]
    if not names:
        sys.exit("plot: no matching results")
    peak = max(x[n].get("peak_gflops", 0) for n in names)
    thr = t[names[0]]["threads"]
    isa = x[names[0]].get("isa", "?")
    rec = dict(machine.load(d))
    rec.setdefault("isa", isa)
    rec["peak_gflops"] = peak
    rec.setdefault("threads", thr)
    fig, ax = plt.subplots(figsize=(9.5, 4.6), dpi=110)
    w = 0.38
    idx = range(len(names))
    xb = ax.bar([i - w / 2 for i in idx], [x[n]["gflops"] for n in names], w,
                label=f"xattn ({isa} kernels)", color="#1f77b4")
    cap = t[names[0]].get("torch_cpu_capability")
    tb = ax.bar([i + w / 2 for i in idx], [t[n]["gflops"] for n in names], w,
                label=f"PyTorch {t[names[0]]['torch'].split('+')[0]}" + (f" ({cap})" if cap else ""),
                color="#ff7f0e")
    for bars in (xb, tb):
        for b in bars:
            ax.annotate(f"{b.get_height():.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
    if peak:
        ax.axhline(peak, color="gray", ls="--", lw=1)
        ax.text(len(names) - 0.5, peak, f"measured fp32 FMA peak {peak:.0f} ({isa})", ha="right",
                va="bottom", fontsize=8, color="gray")
    ax.set_xticks(list(idx))
    ax.set_xticklabels([textwrap.fill(n, 22) for n in names], fontsize=8)
    ax.set_ylabel("GFLOP/s (higher is better)")
    ax.set_ylim(0, max(peak, max(b.get_height() for b in list(xb) + list(tb))) * 1.32)
    ax.set_title(f"fp32 on {thr} threads, xattn and PyTorch in the same run\n"
                 f"{machine.describe(rec)}", fontsize=9)
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    out = os.path.join(d, "chart.png")
    fig.savefig(out)
    print("wrote", out)


if __name__ == "__main__":
    main()
