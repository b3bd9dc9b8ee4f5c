#!/usr/bin/env python3
"""Reference fixtures for M9 (cross-attention over 2-D feature maps): tests/fixtures/conv2d_*.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  numpy  safetensors

    python tests/reference/gen_conv2d.py [--out tests/fixtures]

The reference is seed 004's CrossAttention (conv_query on x1, conv_key / conv_value on x2, each
an nn.Conv2d(kernel_size=1) with bias), CORRECTED: the seed computes
    attention = softmax(bmm(query^T, key))            (B, P1, P2), softmax over x2's positions
    out = bmm(value, attention)                       (B, Cv, P2) x (B, P1, P2)
which only runs when P1 == P2 and then sums over x1's positions. The module below computes
    out[:, :, p] = sum_q softmax_q(scale * Q[:, :, p] . K[:, :, q]) V[:, :, q]
i.e. out = bmm(value, attention^T), reshaped to (B, Cv, H1, W1); x1 and x2 may have different
spatial sizes and channel counts (in_channels2), query/key may have their own width
(qk_channels). scale is None (no scaling) as in the seed.

Fixture files conv2d_<case>.safetensors: the module's state_dict under its own names
(conv_query.weight (Ck, C1, 1, 1), conv_query.bias, conv_key.*, conv_value.*), input.x1,
input.x2, expected.out, all computed in float64 from the stored (rounded) values, stored F32
(weights of one case F16); __metadata__ scale ("none" or a number).
CLI files: conv2d_cli.safetensors (weights only), conv2d_cli_missing_value.safetensors (the
same without conv_value.weight), conv2d_cli_{x1,x2,out,out_scale}.npy.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
GEN = torch.Generator().manual_seed(20240609)


class CrossAttention(nn.Module):
    """Seed 004's module with the value/attention product corrected."""

    def __init__(self, in_channels, out_channels, in_channels2=None, qk_channels=None, bias=True,
                 scale=None):
        super().__init__()
        in2 = in_channels if in_channels2 is None else in_channels2
        qk = out_channels if qk_channels is None else qk_channels
        self.conv_query = nn.Conv2d(in_channels, qk, kernel_size=1, bias=bias)
        self.conv_key = nn.Conv2d(in2, qk, kernel_size=1, bias=bias)
        self.conv_value = nn.Conv2d(in2, out_channels, kernel_size=1, bias=bias)
        self.scale = scale

    def forward(self, x1, x2):
        B, _, H1, W1 = x1.shape
        q = self.conv_query(x1).flatten(2)  # (B, Ck, P1)
        k = self.conv_key(x2).flatten(2)    # (B, Ck, P2)
        v = self.conv_value(x2).flatten(2)  # (B, Cv, P2)
        logits = torch.bmm(q.transpose(1, 2), k)  # (B, P1, P2)
        if self.scale is not None:
            logits = logits * self.scale
        attn = F.softmax(logits, dim=-1)
        out = torch.bmm(v, attn.transpose(1, 2))  # (B, Cv, P1)
        return out.reshape(B, -1, H1, W1)


def rand(*shape):
    return torch.rand(*shape, generator=GEN)


def randomize(module, wdtype):
    with torch.no_grad():
        for p in module.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else p.shape[0]
            p.copy_(((rand(*p.shape) * 2 - 1) * (1.2 / fan_in**0.5)).to(wdtype).to(torch.float64))


def inputs(*shape):
    return ((rand(*shape) * 2 - 1) * 1.5).to(torch.float32).to(torch.float64)


CASES = {
    # name: (B, C1, C2, Ck, Cv, (H1, W1), (H2, W2), bias, scale, wdtype)
    "len1": (1, 3, 3, 3, 3, (1, 1), (1, 1), True, None, torch.float32),
    "seed_same": (2, 16, 16, 16, 16, (8, 8), (4, 4), True, None, torch.float32),
    "diff_33_65": (2, 8, 6, 5, 7, (3, 11), (5, 13), True, None, torch.float32),
    "p257_scale": (1, 4, 9, 12, 3, (1, 257), (3, 3), True, 0.125, torch.float32),
    "nobias_b3": (3, 5, 5, 8, 8, (7, 5), (2, 9), False, None, torch.float32),
    "f16": (2, 6, 4, 10, 6, (5, 5), (6, 3), True, None, torch.float16),
    "x2_len1": (2, 4, 4, 6, 5, (4, 9), (1, 1), True, None, torch.float32),
}


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--out", default=os.path.join(here, "..", "fixtures"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with torch.no_grad():
        for name, (B, C1, C2, Ck, Cv, s1, s2, bias, scale, wdt) in CASES.items():
            m = CrossAttention(C1, Cv, in_channels2=C2, qk_channels=Ck, bias=bias, scale=scale)
            randomize(m, wdt)
            x1, x2 = inputs(B, C1, *s1), inputs(B, C2, *s2)
            out = m(x1, x2)
            t = {k: v.to(wdt).contiguous() for k, v in m.state_dict().items()}
            t["input.x1"] = x1.to(torch.float32).contiguous()
            t["input.x2"] = x2.to(torch.float32).contiguous()
            t["expected.out"] = out.to(torch.float32).contiguous()
            save_file(t, os.path.join(args.out, f"conv2d_{name}.safetensors"),
                      metadata={"scale": "none" if scale is None else repr(scale),
                                "module": "CrossAttention (seed 004, corrected)"})
        # CLI: weights only + npy inputs
        m = CrossAttention(6, 5, in_channels2=4, qk_channels=7)
        randomize(m, torch.float32)
        x1, x2 = inputs(2, 6, 5, 7), inputs(2, 4, 3, 4)
        save_file({k: v.to(torch.float32).contiguous() for k, v in m.state_dict().items()},
                  os.path.join(args.out, "conv2d_cli.safetensors"))
        sd = {k: v.to(torch.float32).contiguous() for k, v in m.state_dict().items()}
        del sd["conv_value.weight"]
        save_file(sd, os.path.join(args.out, "conv2d_cli_missing_value.safetensors"))
        np.save(os.path.join(args.out, "conv2d_cli_x1.npy"), x1.to(torch.float32).numpy())
        np.save(os.path.join(args.out, "conv2d_cli_x2.npy"), x2.to(torch.float32).numpy())
        np.save(os.path.join(args.out, "conv2d_cli_out.npy"), m(x1, x2).to(torch.float32).numpy())
        m.scale = 0.5
        np.save(os.path.join(args.out, "conv2d_cli_out_scale.npy"),
                m(x1, x2).to(torch.float32).numpy())


if __name__ == "__main__":
    main()
