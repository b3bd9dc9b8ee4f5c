#!/usr/bin/env python3
"""Hand-run check of `xattn init hallo-audio` against the PyTorch reference.

The reference is the audio path of HALLO's AudioTemporalBasicTransformerBlock as transcribed in
tests/reference/gen_hallo.py (HalloAudioPath: diffusers 0.42.1 Attention and FeedForward,
nn.LayerNorm, 1x1 nn.Conv2d), with the block's own initialisation of the zero convolutions
(zero_module: weights and biases zero) and, for attention_bias=True, its attentions built with
bias=True as the block does. For each configuration the file written by `xattn init hallo-audio`
must load with load_state_dict(strict=True), and every parameter must look like the reference's
own fresh initialisation: constants exactly equal, random tensors with the largest magnitude and
the standard deviation inside the range that 20 fresh reference initialisations span (widened by
a small margin for the small tensors).

    python tests/reference/check_init_hallo.py build/xattn
"""
import os
import subprocess
import sys
import tempfile

import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_hallo import HalloAudioPath  # noqa: E402

CONFIGS = [
    # dim, heads, dim_head, cross_attention_dim, attention_bias
    (64, 8, 8, 48, False),
    (96, 4, 40, 80, True),
]
FRESH = 20


def reference(dim, heads, dim_head, cross, bias):
    blk = HalloAudioPath(dim, heads, dim_head, cross)
    if bias:
        for k in range(3):
            setattr(blk, f"attn2_{k}", Attention(query_dim=dim, cross_attention_dim=cross,
                                                 heads=heads, dim_head=dim_head, bias=True))
    for conv in (blk.zero_conv_full, blk.zero_conv_face, blk.zero_conv_lip):
        for p in conv.parameters():  # hallo.models.attention.zero_module
            torch.nn.init.zeros_(p)
    return blk


def envelope(fresh, name, n):
    """Range of (max |x|, std) of parameter `name` over fresh reference initialisations."""
    ps = [f[name].detach().double() for f in fresh]
    mx = [p.abs().max().item() for p in ps]
    sd = [p.std().item() for p in ps]
    margin = 1.0 + 4.0 / n ** 0.5
    return min(mx) / margin, max(mx) * margin, min(sd) / margin, max(sd) * margin


def check(xattn, dim, heads, dim_head, cross, bias):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hallo.safetensors")
        cmd = [xattn, "init", "hallo-audio", "--dim", str(dim), "--heads", str(heads),
               "--dim-head", str(dim_head), "--cross-attention-dim", str(cross),
               "--attention-bias", str(bias), "--seed", "5", "--out", path]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        sd = load_file(path)
    ref = reference(dim, heads, dim_head, cross, bias)
    ref.load_state_dict({k: v.double() for k, v in sd.items()}, strict=True)
    inits = []
    for seed in range(FRESH):
        torch.manual_seed(seed)
        inits.append(dict(reference(dim, heads, dim_head, cross, bias).named_parameters()))
    bad = 0
    for name, p in inits[0].items():
        got = sd[name].double()
        p = p.detach()
        if torch.all(p == p.flatten()[0]):
            ok = torch.equal(got, p)
            what = f"constant {p.flatten()[0].item():g}"
        else:
            lo_m, hi_m, lo_s, hi_s = envelope(inits, name, got.numel())
            m, s = got.abs().max().item(), got.std().item()
            ok = lo_m <= m <= hi_m and lo_s <= s <= hi_s
            what = f"max {m:.4g} in [{lo_m:.4g}, {hi_m:.4g}], std {s:.4g} in [{lo_s:.4g}, {hi_s:.4g}]"
        if not ok:
            bad += 1
            print(f"  MISMATCH {name}: {what}")
    print(f"hallo-audio dim={dim} heads={heads} dim_head={dim_head} cross={cross} bias={bias}: "
          f"{len(inits[0])} parameters, strict load ok, {bad} mismatches")
    return bad


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    bad = sum(check(sys.argv[1], *c) for c in CONFIGS)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
