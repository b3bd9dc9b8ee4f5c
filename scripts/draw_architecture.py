#!/usr/bin/env python3
"""Draws docs/architecture.png: xattn's layers and its data flow in one picture.

    python3 scripts/draw_architecture.py [--out docs/architecture.png]

Needs matplotlib only. Solid boxes exist; dashed boxes are planned.
"""
import argparse
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

W, H = 14.0, 9.0  # figure units (inches); 100 dpi gives 1400 x 900 pixels

COLORS = {
    "consumer": "#e8eef7",
    "api": "#f2f2f2",
    "core": "#fff4d6",
    "sub": "#ffffff",
    "modules": "#e3f2e1",
    "kernels": "#fbe3e0",
    "backend": "#ece4f5",
    "files": "#e0f0f5",
    "planned": "#fafafa",
}
DATA = "#1f5fa8"  # data flow
CALL = "#555555"  # calls down the layers


def box(ax, x, y, w, h, title, body=None, color="#ffffff", planned=False, title_size=12,
        body_size=9.5, align="center", pad=0.12):
    """A rounded box with a bold title line and optional body lines below it."""
    patch = FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                           linewidth=1.4, edgecolor="#888888" if planned else "#333333",
                           facecolor=COLORS["planned"] if planned else color,
                           linestyle=(0, (4, 3)) if planned else "-", zorder=2)
    ax.add_patch(patch)
    if align == "center":
        tx, ha = x + w / 2, "center"
    else:
        tx, ha = x + pad, "left"
    if body:
        ax.text(tx, y + h - pad, title, ha=ha, va="top", fontsize=title_size,
                fontweight="bold", color="#777777" if planned else "#111111", zorder=3)
        ax.text(tx, y + h - pad - 0.30, body, ha=ha, va="top", fontsize=body_size,
                color="#777777" if planned else "#222222", linespacing=1.35, zorder=3)
    else:
        ax.text(tx, y + h / 2, title, ha=ha, va="center", fontsize=title_size,
                fontweight="bold", color="#777777" if planned else "#111111", zorder=3)
    return patch


def container(ax, x, y, w, h, title, color, size=12.5):
    """A layer that holds sub-boxes: its title sits at the top left."""
    ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.02,rounding_size=0.08",
                                linewidth=1.4, edgecolor="#333333", facecolor=color, zorder=1))
    ax.text(x + 0.12, y + h - 0.07, title, ha="left", va="top", fontsize=size,
            fontweight="bold", color="#111111", zorder=3)


def arrow(ax, x0, y0, x1, y1, color=CALL, label=None, label_xy=None, style="-|>", lw=1.6,
          ls="-", rad=0.0, label_ha="left"):
    a = FancyArrowPatch((x0, y0), (x1, y1), arrowstyle=style, mutation_scale=14, linewidth=lw,
                        color=color, linestyle=ls, connectionstyle=f"arc3,rad={rad}", zorder=4)
    ax.add_patch(a)
    if label:
        lx, ly = label_xy if label_xy else ((x0 + x1) / 2 + 0.08, (y0 + y1) / 2)
        ax.text(lx, ly, label, fontsize=9, color=color, ha=label_ha, va="center", zorder=5,
                style="italic",
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none",
                          alpha=0.9))


def draw(out):
    fig = plt.figure(figsize=(W, H), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, W)
    ax.set_ylim(0, H)
    ax.axis("off")

    ax.text(0.3, 8.72, "xattn: layers and data flow", fontsize=17, fontweight="bold",
            va="center")
    ax.text(13.7, 8.72, "solid: exists    dashed: planned    blue: data    grey: calls",
            fontsize=10, ha="right", va="center", color="#444444")

    # ---- consumers (top) ------------------------------------------------------------------
    X0, X1 = 3.1, 13.7  # the main column
    cw, cg = 2.5, 0.2
    cy, ch = 7.6, 0.8
    box(ax, X0, cy, cw, ch, "CLI  tools/xattn",
        "inspect, init, run, compare, bench", COLORS["consumer"])
    box(ax, X0 + (cw + cg), cy, cw, ch, "examples/",
        "mha, bidir, hallo_pyramid, mmca", COLORS["consumer"])
    box(ax, X0 + 2 * (cw + cg), cy, cw, ch, "Python package",
        "planned: numpy, torch ops", planned=True)
    box(ax, X0 + 3 * (cw + cg), cy, cw, ch, "MPI runner",
        "planned: sharded attention", planned=True)

    # ---- public header ----------------------------------------------------------------------
    ay, ah = 6.95, 0.4
    box(ax, X0, ay, X1 - X0, ah,
        "include/xattn.h   status + last error · xattn_ctx · registry (xattn_module_*) · "
        "typed module APIs · kernel entry points", color=COLORS["api"], title_size=10.5)

    # ---- module core ------------------------------------------------------------------------
    core_y, core_h = 4.85, 1.85
    container(ax, X0, core_y, X1 - X0, core_h, "module core   src/core", COLORS["core"])
    sw, sg, sy, sh = 3.33, 0.2, core_y + 0.15, 1.22
    sx = [X0 + 0.12 + i * (sw + sg) for i in range(3)]
    box(ax, sx[0], sy, sw, sh, "registry  (registry.c, run.c)",
        "xa_kinds[]: scan · open · create · save\ndescribe config / params / io\n"
        "plan + forward by named arrays", COLORS["sub"], title_size=10.5, body_size=9)
    box(ax, sx[1], sy, sw, sh, "parameter tables  (params.c)",
        "shape expressions over fields\nload · create (seeded init) · save\n"
        "enumerate · one aligned block", COLORS["sub"], title_size=10.5, body_size=9)
    box(ax, sx[2], sy, sw, sh, "config fields  (config.c)",
        "value + provenance per field:\nshape > option > __metadata__ > default\n"
        "warning for traceless defaults", COLORS["sub"], title_size=10.5, body_size=9)

    # ---- modules ----------------------------------------------------------------------------
    my, mh = 3.35, 0.95
    box(ax, X0, my, X1 - X0, mh, "modules   src/modules   (fields + parameter table + io + "
        "build / bind / forward)",
        "xa_kinds[]: bidir, bidir-transformer, mha, attention, mutual, joint, interlaced, "
        "multiview, hallo-audio, bert-decoder, conv2d-cross",
        COLORS["modules"], title_size=11, body_size=9.5)

    # ---- kernels ----------------------------------------------------------------------------
    ky, kh = 1.85, 1.2
    container(ax, X0, ky, X1 - X0, kh, "ops / kernels   src/kernels   (raw pointers, strides,"
              " caller-provided outputs)", COLORS["kernels"], size=11)
    kw, kg = 2.45, 0.18
    labels = [
        ("GEMM framework", "gemm.c: packing, blocking,\nthreads + per-ISA micro-kernel"),
        ("fused attention", "attention.c: online softmax,\nmasks, bias, lse (xattn_sdpa)"),
        ("bidirectional attn", "bidir.c: both directions of\none similarity, no I x J"),
        ("norms, activations", "ops.c: softmax, RMSNorm,\nLayerNorm, GELU"),
    ]
    for i, (t, b) in enumerate(labels):
        box(ax, X0 + 0.12 + i * (kw + kg), ky + 0.1, kw, 0.78, t, b, COLORS["sub"],
            title_size=10, body_size=8.8, pad=0.08)

    # ---- backend ----------------------------------------------------------------------------
    by, bh = 0.25, 1.2
    bw1 = 4.6
    box(ax, X0, by, bw1, bh, "CPU backend   (dispatch.c)",
        "kernel sets: scalar · avx2 · avx512\nchosen at run time from the CPU's features\n"
        "(per-ISA files, own compile flags)", COLORS["backend"], title_size=11, body_size=9)
    bw2 = 3.9
    box(ax, X0 + bw1 + 0.2, by, bw2, bh, "execution context   src/base/ctx.c",
        "xattn_ctx: threads · kernel set ·\nworkspace cache (limit, trim);\n"
        "current context per thread during a call", COLORS["backend"], title_size=11,
        body_size=9)
    box(ax, X0 + bw1 + bw2 + 0.4, by, X1 - (X0 + bw1 + bw2 + 0.4), bh, "CUDA backend",
        "planned: same seam\nas the CPU tables", planned=True, title_size=11, body_size=9)

    # ---- files and io (left column) --------------------------------------------------------
    fx, fw = 0.3, 2.1
    box(ax, fx, 7.35, fw, 1.05, "files",
        ".safetensors (weights,\n__metadata__), .npy arrays", COLORS["files"], title_size=12,
        body_size=9)
    box(ax, fx, 5.3, fw, 1.3, "io   src/io",
        "safetensors.c, npy.c:\nevery offset/size checked\npng.c: heat-maps",
        COLORS["files"], title_size=12, body_size=9)
    box(ax, fx, 3.35, fw, 0.95, "named arrays",
        "xattn_tensor {name,\ndtype, shape, data}", COLORS["files"], title_size=11,
        body_size=9)

    # data flow
    arrow(ax, fx + 0.7, 7.35, fx + 0.7, 6.6, DATA, "read", (fx + 0.8, 6.97))
    arrow(ax, fx + 1.5, 6.6, fx + 1.5, 7.35, DATA, "save", (fx + 1.6, 6.97))
    arrow(ax, fx + fw, 5.75, sx[0], 5.75, DATA)
    ax.text(fx + fw + 0.06, 5.52, "weights,\nmetadata", fontsize=8, color=DATA,
            style="italic", va="center", ha="left", zorder=5)
    arrow(ax, fx + 1.1, 5.3, fx + 1.1, 4.3, DATA, "inputs (.npy)", (fx + 1.2, 4.8))
    arrow(ax, fx + fw, 3.95, sx[0] + 0.5, sy, DATA, style="<|-|>")
    ax.text(fx + 0.05, 3.12, "in / out by name (xattn_module_forward)", fontsize=8.5,
            color=DATA, style="italic", va="center", ha="left", zorder=5)

    # calls down the layers
    for i in range(2):
        x = X0 + i * (cw + cg) + 1.25
        arrow(ax, x, cy, x, ay + ah, CALL)
    for i in range(2, 4):
        x = X0 + i * (cw + cg) + 1.25
        arrow(ax, x, cy, x, ay + ah, "#999999", ls=(0, (3, 2)))
    arrow(ax, X0 + 5.3, ay, X0 + 5.3, core_y + core_h, CALL)
    arrow(ax, sx[0] + 1.6, sy, sx[0] + 1.6, my + mh, CALL, "build · bind · forward(xa_run)",
          (sx[0] + 1.7, (sy + my + mh) / 2))
    arrow(ax, sx[1] + 1.6, sy, sx[1] + 1.6, my + mh, DATA, "parameter pointers",
          (sx[1] + 1.7, (sy + my + mh) / 2))
    arrow(ax, sx[2] + 1.6, sy, sx[2] + 1.6, my + mh, DATA, "resolved config",
          (sx[2] + 1.7, (sy + my + mh) / 2))
    arrow(ax, X0 + 5.3, my, X0 + 5.3, ky + kh, CALL, "op layer (ops.h): xa_op_linear · norms · xa_op_attention",
          (X0 + 5.4, (my + ky + kh) / 2))
    arrow(ax, X0 + 2.3, ky + 0.1, X0 + 2.3, by + bh, CALL, "kernel table",
          (X0 + 2.4, (ky + by + bh) / 2))
    arrow(ax, X0 + 6.9, ky + 0.1, X0 + 6.9, by + bh, CALL, "threads · scratch",
          (X0 + 7.0, (ky + by + bh) / 2))

    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(here, "..", "docs", "architecture.png"))
    draw(ap.parse_args().out)


if __name__ == "__main__":
    main()
