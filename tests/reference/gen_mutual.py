#!/usr/bin/env python3
"""Reference fixtures for M3 (mutual cross-attention): tests/fixtures/mutual_*.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  numpy  safetensors

    python tests/reference/gen_mutual.py [--out tests/fixtures]

The reference is the MutualCrossAttention module of the ztony0712/MCA notebook (Zhao & Gu
2024), transcribed below: parameter-free, dropout on both softmax matrices (identity in eval
mode, which is what xattn computes):
    A  = softmax(a b^T / sqrt(D)) b,   Bm = softmax(b a^T / sqrt(D)) a,   out = A + Bm
Everything is computed in float64 from the stored float32 inputs, and stored as F32.

Files:
  mutual_<case>.safetensors   input.a, input.b, expected.out (or expected.a_out /
                              expected.b_out for the 'terms' case where Na != Nb)
                              __metadata__: kind ("mutual", "terms" or "bands"), band_axis
  mutual_cli_{a,b,out}.npy    and mutual_cli_bands_{a,b,out}.npy for tests/test_cli_mutual.sh
"""
import argparse
import math
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
GEN = torch.Generator().manual_seed(20240603)


class MutualCrossAttention(nn.Module):
    """The MCA notebook's module (dropout p on each attention matrix)."""

    def __init__(self, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x1, x2):
        d = x1.shape[-1]
        s12 = torch.bmm(x1, x2.transpose(1, 2)) / math.sqrt(d)
        out_a = torch.bmm(self.dropout(F.softmax(s12, dim=-1)), x2)
        s21 = torch.bmm(x2, x1.transpose(1, 2)) / math.sqrt(d)
        out_b = torch.bmm(self.dropout(F.softmax(s21, dim=-1)), x1)
        return out_a + out_b


def terms(a, b):
    """The two terms separately (Na may differ from Nb)."""
    d = a.shape[-1]
    ta = torch.bmm(F.softmax(torch.bmm(a, b.transpose(1, 2)) / math.sqrt(d), -1), b)
    tb = torch.bmm(F.softmax(torch.bmm(b, a.transpose(1, 2)) / math.sqrt(d), -1), a)
    return ta, tb


def inputs(*shape, spread=1.5):
    x = (torch.rand(*shape, generator=GEN) * 2 - 1) * spread
    return x.to(torch.float32).to(torch.float64)  # what the stored F32 file holds


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def bands_ref(mod, a, b, axis):
    """Band by band: the slice of each band, with its last two axes as (N, D)."""
    outs = []
    for f in range(a.shape[axis]):
        sa = a.select(axis, f)
        sb = b.select(axis, f)
        shp = sa.shape
        o = mod(sa.reshape(-1, shp[-2], shp[-1]), sb.reshape(-1, shp[-2], shp[-1]))
        outs.append(o.reshape(shp))
    return torch.stack(outs, dim=axis)


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    mod = MutualCrossAttention(0.25).eval()

    def save(name, tensors, meta):
        save_file({k: f32(v) for k, v in tensors.items()},
                  os.path.join(args.out, f"mutual_{name}.safetensors"),
                  metadata={k: str(v) for k, v in meta.items()})

    with torch.no_grad():
        for name, (B, N, D) in {"len1": (1, 1, 1), "b2_n33_d17": (2, 33, 17),
                                "b3_n65_d8": (3, 65, 8), "n257_d32": (1, 257, 32),
                                "b2_n5_d64": (2, 5, 64)}.items():
            a, b = inputs(B, N, D), inputs(B, N, D)
            save(name, {"input.a": a, "input.b": b, "expected.out": mod(a, b)}, {"kind": "mutual"})
        for name, (B, Na, Nb, D) in {"terms_33_65": (2, 33, 65, 16),
                                     "terms_1_7": (1, 1, 7, 3)}.items():
            a, b = inputs(B, Na, D), inputs(B, Nb, D)
            ta, tb = terms(a, b)
            save(name, {"input.a": a, "input.b": b, "expected.a_out": ta, "expected.b_out": tb},
                 {"kind": "terms"})
        # EEG-like (trials, bands, channels, time) and other band axes
        for name, shape, axis in [("bands_ax1", (2, 4, 5, 33), 1),
                                  ("bands_ax3", (3, 6, 9, 4), 3),
                                  ("bands_axm2", (2, 7, 3, 5), -2)]:
            a, b = inputs(*shape), inputs(*shape)
            save(name, {"input.a": a, "input.b": b, "expected.out": bands_ref(mod, a, b, axis)},
                 {"kind": "bands", "band_axis": axis})
        # CLI
        a, b = inputs(2, 17, 12), inputs(2, 17, 12)
        np.save(os.path.join(args.out, "mutual_cli_a.npy"), f32(a).numpy())
        np.save(os.path.join(args.out, "mutual_cli_b.npy"), f32(b).numpy())
        np.save(os.path.join(args.out, "mutual_cli_out.npy"), f32(mod(a, b)).numpy())
        a, b = inputs(3, 4, 6, 10), inputs(3, 4, 6, 10)
        np.save(os.path.join(args.out, "mutual_cli_bands_a.npy"), f32(a).numpy())
        np.save(os.path.join(args.out, "mutual_cli_bands_b.npy"), f32(b).numpy())
        np.save(os.path.join(args.out, "mutual_cli_bands_out.npy"),
                f32(bands_ref(mod, a, b, 1)).numpy())
        # a band axis among the last two: the per-band (N, D) differ from the plain run
        np.save(os.path.join(args.out, "mutual_cli_bands_ax3_out.npy"),
                f32(bands_ref(mod, a, b, 3)).numpy())


if __name__ == "__main__":
    main()
