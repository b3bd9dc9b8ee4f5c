#!/usr/bin/env python3
"""Fixtures for the bidirectional cases of tests/test_cli.sh: tests/fixtures/cli/bidir_*,
computed by the REAL PyPI package.

Pinned versions (run by hand, the outputs are committed):
    bidirectional-cross-attention==0.1.0  torch==2.9.1  numpy==2.4.6  safetensors==0.8.0
    (einops, a dependency of the package)

    python tests/reference/gen_cli_bidir.py [--out tests/fixtures/cli]

Model files (safetensors.torch.save_file(module.state_dict(), ...)):
  bidir_attn.safetensors        BidirectionalCrossAttention(dim=16, context_dim=12, heads=4,
                                dim_head=8, prenorm=True, talking_heads=True), F32, no
                                __metadata__ (heads come from the talking-heads weights)
  bidir_plain_bf16.safetensors  BidirectionalCrossAttention(dim=8, heads=2, dim_head=4), BF16
                                weights, __metadata__ {"heads": "2"}; run on rank-2 inputs
  bidir_ln_f16.safetensors      0.0.x-style prenorm nn.LayerNorm (weight and bias, eps 1e-5),
                                dim=10, context_dim=6, heads=2 (NOT in the file: --heads 2),
                                dim_head=5, F16 weights
  bidir_tr.safetensors          BidirectionalCrossAttentionTransformer(dim=16, depth=2,
                                context_dim=12, ff_expansion_factor=2, final_norms=True, heads=2,
                                dim_head=8), F32, __metadata__ {"heads": "2"}; its final
                                context_norm is nn.RMSNorm(context_dim) (the package builds
                                nn.RMSNorm(dim), which cannot run when context_dim != dim)
  bidir_missing.safetensors     bidir_attn without context_to_v.weight
  bidir_tr_missing.safetensors  bidir_tr without layers.1.2.3.bias
  bidir_w_nan.safetensors       bidir_attn with a NaN in context_to_out.bias[3]
Inputs (float32 unless said) and expected outputs (float32, computed in float64 from the stored,
rounded values):
  bidir_x.npy (2,5,16), bidir_x_f64.npy (float64), bidir_context.npy (2,7,12),
  bidir_mask.npy (2,5) bool (batch 1 fully masked), bidir_context_mask.npy (2,7) bool,
  bidir_bias.npy (2,4,5,7) rel_pos_bias for bidir_attn, bidir_tr_bias.npy (2,5,7) (heads, I, J)
  bidir_expected_{out,context_out}.npy                bidir_attn, no masks
  bidir_expected_masked_{out,context_out,attn,context_attn}.npy  masks + bias, return_attn
  bidir_plain_{x,context,mask,context_mask,bias}.npy  rank-2 inputs: (6,8), (4,8), (6,), (4,),
                                                      bias (6,4)
  bidir_plain_expected_{out,context_out,attn,context_attn}.npy  (batch axis dropped)
  bidir_ln_{x,context}.npy, bidir_ln_expected_{out,context_out}.npy
  bidir_tr_expected_{out,context_out}.npy             bidir_tr with masks + bidir_tr_bias
  bad inputs: bidir_bad_mask_shape.npy (2,6) bool, bidir_mask_float.npy (2,5) float32,
  bidir_mask_u8.npy (2,5) uint8, bidir_bad_bias_heads.npy (2,3,5,7), bidir_bias_rank1.npy (7,),
  bidir_context_b1.npy (1,7,12)

Deviations from running the package verbatim, each to reproduce float32 PyTorch exactly:
  * every nn.RMSNorm gets eps = FLT_EPSILON (nn.RMSNorm(eps=None) would use DBL_EPSILON in a
    float64 run, FLT_EPSILON in the float32 module);
  * masked similarities are -finfo(float64).max instead of -FLT_MAX: the same softmax (masked
    entries get weight 0, or all are equal in a fully masked row / column).
"""
import argparse
import os
from importlib.metadata import version

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

from bidirectional_cross_attention import (BidirectionalCrossAttention,
                                           BidirectionalCrossAttentionTransformer)

assert version("bidirectional-cross-attention") == "0.1.0", "needs bidirectional-cross-attention==0.1.0"
torch.set_default_dtype(torch.float64)
GEN = torch.Generator().manual_seed(20240715)
FLT_EPS = float(torch.finfo(torch.float32).eps)


def randn(*shape):
    return torch.randn(*shape, generator=GEN)


def rand(*shape):
    return torch.rand(*shape, generator=GEN)


def f32(t):
    """float64 tensor rounded to float32 (what a float32 .npy holds)."""
    return t.float().double()


def randomize(module, wdtype):
    """Non-trivial random weights (norms around 1, biases nonzero) rounded to wdtype."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.dim() == 1 and ("norm" in name or name.endswith(".0.weight")):
                v = 1 + 0.3 * randn(*p.shape) if name.endswith("weight") else 0.2 * randn(*p.shape)
            elif p.dim() == 4:  # talking heads (H, H, 1, 1)
                v = 0.6 * randn(*p.shape)
            else:
                fan = p.shape[-1] if p.dim() > 1 else p.shape[0]
                v = randn(*p.shape) / fan**0.5
            p.copy_(v.to(wdtype).double())
    for mod in module.modules():
        if isinstance(mod, nn.RMSNorm):
            mod.eps = FLT_EPS
    module.eval()


def state_dict_as(module, wdtype):
    return {k: v.detach().to(wdtype).contiguous() for k, v in module.state_dict().items()}


def save_npy(d, name, t, dtype=np.float32):
    a = t.detach().numpy()
    np.save(os.path.join(d, name), a if a.dtype == np.bool_ else a.astype(dtype))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "cli"))
    d = os.path.abspath(ap.parse_args().out)
    os.makedirs(d, exist_ok=True)

    # ---- BidirectionalCrossAttention with prenorm and talking heads ----
    attn = BidirectionalCrossAttention(dim=16, context_dim=12, heads=4, dim_head=8, prenorm=True,
                                       talking_heads=True)
    randomize(attn, torch.float32)
    sd = state_dict_as(attn, torch.float32)
    save_file(sd, os.path.join(d, "bidir_attn.safetensors"))
    B, I, J = 2, 5, 7
    x, ctx = f32(randn(B, I, 16)), f32(randn(B, J, 12))
    mask = rand(B, I) > 0.3
    mask[0, 0] = True
    mask[1, :] = False  # batch 1: every row masked -> uniform averages
    cmask = rand(B, J) > 0.3
    cmask[:, 0] = True
    cmask[0, 3] = False
    bias = f32(randn(B, 4, I, J))
    with torch.no_grad():
        out, cout = attn(x, ctx)
        mo, mco, ma, mca = attn(x, ctx, mask=mask, context_mask=cmask, rel_pos_bias=bias,
                                return_attn=True)
    for t in (out, cout, mo, mco, ma, mca):
        assert not torch.isnan(t).any()
    save_npy(d, "bidir_x.npy", x)
    save_npy(d, "bidir_x_f64.npy", x, np.float64)
    save_npy(d, "bidir_context.npy", ctx)
    save_npy(d, "bidir_mask.npy", mask)
    save_npy(d, "bidir_context_mask.npy", cmask)
    save_npy(d, "bidir_bias.npy", bias)
    save_npy(d, "bidir_expected_out.npy", out)
    save_npy(d, "bidir_expected_context_out.npy", cout)
    save_npy(d, "bidir_expected_masked_out.npy", mo)
    save_npy(d, "bidir_expected_masked_context_out.npy", mco)
    save_npy(d, "bidir_expected_masked_attn.npy", ma)
    save_npy(d, "bidir_expected_masked_context_attn.npy", mca)

    # bad copies of the model
    bad = dict(sd)
    del bad["context_to_v.weight"]
    save_file(bad, os.path.join(d, "bidir_missing.safetensors"))
    bad = {k: v.clone() for k, v in sd.items()}
    bad["context_to_out.bias"][3] = float("nan")
    save_file(bad, os.path.join(d, "bidir_w_nan.safetensors"))

    # bad inputs
    save_npy(d, "bidir_bad_mask_shape.npy", torch.ones(B, I + 1, dtype=torch.bool))
    save_npy(d, "bidir_mask_float.npy", mask.double())
    np.save(os.path.join(d, "bidir_mask_u8.npy"), mask.numpy().astype(np.uint8))
    save_npy(d, "bidir_bad_bias_heads.npy", bias[:, :3])
    save_npy(d, "bidir_bias_rank1.npy", bias[0, 0, 0])
    save_npy(d, "bidir_context_b1.npy", ctx[:1])

    # ---- no prenorm, no talking heads, BF16 weights, one unbatched sequence ----
    plain = BidirectionalCrossAttention(dim=8, heads=2, dim_head=4)
    randomize(plain, torch.bfloat16)
    save_file(state_dict_as(plain, torch.bfloat16), os.path.join(d, "bidir_plain_bf16.safetensors"),
              metadata={"heads": "2"})
    I2, J2 = 6, 4
    px, pc = f32(randn(I2, 8)), f32(randn(J2, 8))
    pm = torch.tensor([True, False, True, True, False, True])
    pcm = torch.tensor([True, True, False, True])
    pb = f32(randn(I2, J2))
    with torch.no_grad():
        o, co, a, ca = plain(px[None], pc[None], mask=pm[None], context_mask=pcm[None],
                             rel_pos_bias=pb, return_attn=True)
    save_npy(d, "bidir_plain_x.npy", px)
    save_npy(d, "bidir_plain_context.npy", pc)
    save_npy(d, "bidir_plain_mask.npy", pm)
    save_npy(d, "bidir_plain_context_mask.npy", pcm)
    save_npy(d, "bidir_plain_bias.npy", pb)
    save_npy(d, "bidir_plain_expected_out.npy", o[0])
    save_npy(d, "bidir_plain_expected_context_out.npy", co[0])
    save_npy(d, "bidir_plain_expected_attn.npy", a[0])
    save_npy(d, "bidir_plain_expected_context_attn.npy", ca[0])

    # ---- 0.0.x: nn.LayerNorm prenorm, F16 weights, heads not in the file ----
    ln = BidirectionalCrossAttention(dim=10, context_dim=6, heads=2, dim_head=5, prenorm=True)
    ln.norm, ln.context_norm = nn.LayerNorm(10, eps=1e-5), nn.LayerNorm(6, eps=1e-5)
    randomize(ln, torch.float16)
    save_file(state_dict_as(ln, torch.float16), os.path.join(d, "bidir_ln_f16.safetensors"))
    lx, lc = f32(randn(2, 3, 10)), f32(randn(2, 4, 6))
    with torch.no_grad():
        o, co = ln(lx, lc)
    save_npy(d, "bidir_ln_x.npy", lx)
    save_npy(d, "bidir_ln_context.npy", lc)
    save_npy(d, "bidir_ln_expected_out.npy", o)
    save_npy(d, "bidir_ln_expected_context_out.npy", co)

    # ---- transformer: depth 2, final norms (context_norm of size context_dim) ----
    tr = BidirectionalCrossAttentionTransformer(dim=16, depth=2, context_dim=12,
                                                ff_expansion_factor=2, final_norms=True, heads=2,
                                                dim_head=8)
    tr.context_norm = nn.RMSNorm(12)
    randomize(tr, torch.float32)
    tsd = state_dict_as(tr, torch.float32)
    save_file(tsd, os.path.join(d, "bidir_tr.safetensors"), metadata={"heads": "2"})
    tb = f32(randn(2, I, J))
    with torch.no_grad():
        o, co = tr(x, ctx, mask=mask, context_mask=cmask, rel_pos_bias=tb)
    assert not torch.isnan(o).any() and not torch.isnan(co).any()
    save_npy(d, "bidir_tr_bias.npy", tb)
    save_npy(d, "bidir_tr_expected_out.npy", o)
    save_npy(d, "bidir_tr_expected_context_out.npy", co)
    bad = dict(tsd)
    del bad["layers.1.2.3.bias"]
    save_file(bad, os.path.join(d, "bidir_tr_missing.safetensors"), metadata={"heads": "2"})
    print("wrote", d)


if __name__ == "__main__":
    main()
