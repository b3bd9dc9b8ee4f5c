"""Draws bench/results/chart.png from the JSON lines that bench/run.sh collected:
xattn vs PyTorch GFLOP/s for each piece of work, with the measured FMA peak as a line.

    python bench/plot.py bench/results
"""
import json
import os
import sys
import textwrap

import matplotlib

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
    fig, ax = plt.subplots(figsize=(9.5, 4.6), dpi=110)
    w = 0.38
    idx = range(len(names))
    xb = ax.bar([i - w / 2 for i in idx], [x[n]["gflops"] for n in names], w, label="xattn",
                color="#1f77b4")
    tb = ax.bar([i + w / 2 for i in idx], [t[n]["gflops"] for n in names], w,
                label=f"PyTorch {t[names[0]]['torch'].split('+')[0]}", color="#ff7f0e")
    for bars in (xb, tb):
        for b in bars:
            ax.annotate(f"{b.get_height():.0f}", (b.get_x() + b.get_width() / 2, b.get_height()),
                        ha="center", va="bottom", fontsize=8)
    if peak:
        ax.axhline(peak, color="gray", ls="--", lw=1)
        ax.text(len(names) - 0.5, peak, f"measured fp32 FMA peak {peak:.0f}", ha="right",
                va="bottom", fontsize=8, color="gray")
    ax.set_xticks(list(idx))
    ax.set_xticklabels([textwrap.fill(n, 22) for n in names], fontsize=8)
    ax.set_ylabel("GFLOP/s (higher is better)")
    ax.set_title(f"fp32 on {thr} threads, same machine, same run")
    ax.legend(loc="upper left", fontsize=9)
    fig.tight_layout()
    out = os.path.join(d, "chart.png")
    fig.savefig(out)
    print("wrote", out)


if __name__ == "__main__":
    main()
