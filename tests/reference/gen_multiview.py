#!/usr/bin/env python3
"""Reference fixtures for M6 (multiscale multiview cross-attention): tests/fixtures/multiview_*.

No public reference code exists for MMViT-style multiscale multiview cross-attention, so this
script defines the reference as a composition of standard PyTorch modules (class
MultiscaleMultiview below; docs/multiview.md documents the same composition and its state_dict
names), and xattn's module (src/modules/multiview.c) must match it.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  numpy==2.4.6  safetensors==0.8.0

    python tests/reference/gen_multiview.py [--out tests/fixtures]

The composition, for V >= 2 views x_v (B, N_v, C_0) and S >= 1 stages of widths C_s:
  for s in 0..S-1:
    if s > 0, for every view:  x_v = stages.s.views.v.expand( AvgPool1d(2, 2)(x_v over tokens) )
                               (floor: an odd last token is dropped; N -> N // 2; N = 1 is an error)
    for every view (self block, pre-LN, residual):
        h = norm1(x_v);  x_v = x_v + self_attn(h, h, h)
        x_v = x_v + mlp(norm2(x_v))                      mlp = Linear, GELU, Linear
    for every view, all reading the self-block outputs y_u of THIS stage (simultaneous update):
        kv = cat([y_u for u != v in increasing u], dim=1)         (B, sum_u N_u, C_s)
        z_v = y_v + cross_attn(cross_norm_q(y_v), cross_norm_kv(kv), cross_norm_kv(kv))
        z_v = z_v + cross_mlp(cross_norm2(z_v))
  returns the final-stage tokens of every view.
  self_attn / cross_attn are nn.MultiheadAttention(C_s, heads_s, batch_first=True); norms are
  nn.LayerNorm(C_s, eps); GELU is erf or tanh (__metadata__ "gelu").

Every fixture file holds the state_dict under these names (F32), inputs input.0 .. input.{V-1},
expected outputs expected.0 .. expected.{V-1} computed in float64 from the stored (rounded)
weights and inputs and stored as F32, and __metadata__: heads ("2,4": one per stage; a single
number means every stage), gelu ("erf"/"tanh"), eps, views, stages, description.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
GEN = torch.Generator().manual_seed(20240606)


class ViewStage(nn.Module):
    def __init__(self, cin, dim, heads, hidden, eps, gelu):
        super().__init__()
        if cin is not None:
            self.expand = nn.Linear(cin, dim)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate=gelu),
                                 nn.Linear(hidden, dim))
        self.cross_norm_q = nn.LayerNorm(dim, eps=eps)
        self.cross_norm_kv = nn.LayerNorm(dim, eps=eps)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_norm2 = nn.LayerNorm(dim, eps=eps)
        self.cross_mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate=gelu),
                                       nn.Linear(hidden, dim))

    def self_block(self, x):
        h = self.norm1(x)
        x = x + self.self_attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))

    def cross_block(self, y, kv):
        q = self.cross_norm_q(y)
        c = self.cross_norm_kv(kv)
        z = y + self.cross_attn(q, c, c, need_weights=False)[0]
        return z + self.cross_mlp(self.cross_norm2(z))


class Stage(nn.Module):
    def __init__(self, views, cin, dim, heads, hidden, eps, gelu):
        super().__init__()
        self.views = nn.ModuleList(ViewStage(cin, dim, heads, hidden, eps, gelu)
                                   for _ in range(views))
        self.pool = nn.AvgPool1d(2, stride=2) if cin is not None else None


class MultiscaleMultiview(nn.Module):
    def __init__(self, views, dims, heads, hiddens, eps=1e-5, gelu="none"):
        super().__init__()
        self.stages = nn.ModuleList(
            Stage(views, dims[s - 1] if s > 0 else None, dims[s], heads[s], hiddens[s], eps, gelu)
            for s in range(len(dims)))

    def forward(self, xs):
        xs = list(xs)
        for st in self.stages:
            if st.pool is not None:
                xs = [vs.expand(st.pool(x.transpose(1, 2)).transpose(1, 2))
                      for vs, x in zip(st.views, xs)]
            ys = [vs.self_block(x) for vs, x in zip(st.views, xs)]
            xs = [vs.cross_block(ys[v], torch.cat([ys[u] for u in range(len(ys)) if u != v], 1))
                  for v, vs in enumerate(st.views)]
        return xs


def randomise(model):
    """Non-trivial LayerNorm weights/biases and biases (defaults are 1 / 0)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_((1.0 if name.endswith("weight") else 0.0) +
                        0.3 * torch.randn(p.shape, generator=GEN))
            elif name.endswith("bias"):
                p.copy_(0.2 * torch.randn(p.shape, generator=GEN))
            else:
                p.copy_(torch.randn(p.shape, generator=GEN) / p.shape[-1] ** 0.5)


def make(out_dir, name, views, dims, heads, hiddens, tokens, B, eps=1e-5, gelu="none",
         heads_meta=None, desc=""):
    model = MultiscaleMultiview(views, dims, heads, hiddens, eps, gelu)
    randomise(model)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    model.load_state_dict({k: v.to(torch.float64) for k, v in sd.items()})
    xs = [torch.randn(B, n, dims[0], generator=GEN).to(torch.float32) for n in tokens]
    model.eval()
    with torch.no_grad():
        outs = model([x.to(torch.float64) for x in xs])
    t = dict(sd)
    for v in range(views):
        t[f"input.{v}"] = xs[v].contiguous()
        t[f"expected.{v}"] = outs[v].to(torch.float32).contiguous()
    meta = {"heads": heads_meta if heads_meta is not None else ",".join(str(h) for h in heads),
            "gelu": "tanh" if gelu == "tanh" else "erf", "eps": repr(eps),
            "views": str(views), "stages": str(len(dims)),
            "tokens": ",".join(str(n) for n in tokens), "batch": str(B), "description": desc}
    save_file(t, os.path.join(out_dir, f"multiview_{name}.safetensors"), metadata=meta)
    return model, xs, outs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    a = ap.parse_args()
    o = a.out
    make(o, "v2_s1", 2, [16], [2], [32], [5, 7], 2, desc="V=2, one stage, different lengths")
    make(o, "v3_s2_odd", 3, [8, 16], [2, 4], [16, 24], [9, 4, 3], 2, gelu="tanh",
         desc="V=3, two stages, odd lengths, 3 -> 1 token after pooling, tanh GELU")
    make(o, "v2_s3", 2, [8, 12, 16], [1, 3, 4], [8, 20, 32], [33, 6], 3, eps=1e-6,
         desc="V=2, three stages, 33 -> 16 -> 8 and 6 -> 3 -> 1 tokens, eps 1e-6, batch 3")
    make(o, "v3_len1", 3, [12], [3], [24], [1, 1, 2], 2, heads_meta="3",
         desc="V=3, one stage, single-token views")
    make(o, "v2_s2_heads1", 2, [6, 10], [2, 2], [12, 20], [65, 2], 1, heads_meta="2",
         desc="V=2, two stages, one heads value for all stages, 65 and 2 -> 1 tokens")
    # CLI fixture: the model file (weights and metadata only) and .npy inputs / outputs
    model, xs, outs = make(o, "cli_full", 3, [8, 16], [2, 4], [16, 32], [7, 4, 5], 2,
                           desc="CLI fixture")
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(o, "multiview_cli.safetensors"),
              metadata={"heads": "2,4", "gelu": "erf", "eps": "1e-05"})
    save_file(sd, os.path.join(o, "multiview_cli_noheads.safetensors"))
    for v in range(3):
        np.save(os.path.join(o, f"multiview_cli_x{v}.npy"), xs[v].numpy())
        np.save(os.path.join(o, f"multiview_cli_expected_{v}.npy"), outs[v].to(torch.float32).numpy())
    os.remove(os.path.join(o, "multiview_cli_full.safetensors"))


if __name__ == "__main__":
    main()
