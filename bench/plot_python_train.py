"""Draws bench/results/python_train_chart.png from bench/results/python_train.json (written by
bench/python_train_bench.py): for each length of the sequences, the training step's time and its
peak resident memory (whole process and net of the baseline) for the PyPI package and
xattn.torch's drop-in, with the memory limit the runs had as a line and the package's failed
lengths marked "out of memory".

    python bench/plot_python_train.py [results.json] [chart.png]
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

COLOURS = {"package": "#c0504d", "dropin": "#4f81bd"}
LABELS = {"package": "bidirectional-cross-attention 0.1.0",
          "dropin": "xattn.torch drop-in"}


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "results", "python_train.json")
    dst = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(src),
                                                             "python_train_chart.png")
    rows = [json.loads(l) for l in open(src) if l.strip()]
    summary = next((r for r in rows if r.get("summary")), {})
    runs = [r for r in rows if not r.get("summary") and r.get("variant") in COLOURS]
    lengths = sorted({(r["I"], r["J"]) for r in runs})
    labels = [f"{i} / {j}" for i, j in lengths]
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.8))
    width = 0.38
    limit_mb = None
    for k, v in enumerate(["package", "dropin"]):
        for n, (i, j) in enumerate(lengths):
            r = next((r for r in runs if r["variant"] == v and r["I"] == i), None)
            x = n + (k - 0.5) * width
            if r is None or not r.get("ok"):
                why = "out of memory" if r is not None else "not run (failed shorter)"
                for ax in (ax_t, ax_m):
                    ax.text(x, 0, why, rotation=90, ha="center", va="bottom", fontsize=8,
                            color=COLOURS[v])
                continue
            limit_mb = r["limit_gb"] * 1024
            ax_t.bar(x, r["median_seconds"], width, color=COLOURS[v],
                     label=LABELS[v] if n == 0 else None)
            ax_t.text(x, r["median_seconds"], f"{r['median_seconds']:.1f}", ha="center",
                      va="bottom", fontsize=8)
            ax_m.bar(x, r["peak_rss_mb"], width, color=COLOURS[v], alpha=0.45,
                     label=f"{LABELS[v]}, whole process" if n == 0 else None)
            ax_m.bar(x, r["net_peak_mb"], width, color=COLOURS[v],
                     label=f"{LABELS[v]}, net of the baseline" if n == 0 else None)
            ax_m.text(x, r["peak_rss_mb"], f"{r['peak_rss_mb']:.0f}", ha="center",
                      va="bottom", fontsize=8)
    if limit_mb:
        ax_m.axhline(limit_mb, color="grey", linestyle="--", linewidth=1)
        ax_m.text(len(lengths) - 0.5, limit_mb, f"limit {limit_mb / 1024:.0f} GB", ha="right",
                  va="bottom", fontsize=8, color="grey")
    for ax, title, unit in ((ax_t, "time of a training step (median)", "seconds"),
                            (ax_m, "peak resident memory", "MB")):
        ax.set_xticks(range(len(lengths)))
        ax.set_xticklabels(labels)
        ax.set_xlabel("lengths I / J (video / audio tokens)")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left")
    mach = summary.get("machine")
    where = machine.describe(mach) if mach else ""
    th = runs[0]["threads"] if runs else "?"
    fig.suptitle("Depth-2 BidirectionalCrossAttentionTransformer training step (forward, MSE, "
                 f"backward, AdamW), fp32, {th} threads, PyTorch {runs[0].get('torch', '?')}"
                 f"\n{where}", fontsize=9)
    fig.tight_layout()
    fig.savefig(dst, dpi=110)
    print(f"wrote {dst}")


if __name__ == "__main__":
    main()
