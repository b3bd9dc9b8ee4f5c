#!/usr/bin/env python3
"""Reference fixtures for M2 (bidirectional cross-attention): tests/fixtures/bidir_*.safetensors
and tests/fixtures/bidir_list.inc, computed by the REAL PyPI package.

Pinned versions (run by hand, the outputs are committed):
    bidirectional-cross-attention==0.1.0  torch==2.9.1  numpy  safetensors==0.8.0  (einops)

    python tests/reference/gen_bidir.py [--out tests/fixtures]

Every fixture is one safetensors file holding
  * the module's state_dict under the package's own names: BidirectionalCrossAttention
    (norm.weight, context_norm.weight, to_qk.weight, context_to_qk.weight, to_v.weight,
    context_to_v.weight, to_out.{weight,bias}, context_to_out.{weight,bias},
    talking_heads.weight, context_talking_heads.weight) or
    BidirectionalCrossAttentionTransformer (layers.L.0.*, layers.L.1.*, layers.L.2.*, norm.weight,
    context_norm.weight); weights are random (biases, talking-heads and norm weights included,
    all non-trivial), stored as F32, or as F16 / BF16 in the fixtures that say so,
  * inputs: input.x (B,I,dim), input.context (B,J,context_dim) as F32; input.mask (B,I) and
    input.context_mask (B,J) as BOOL (True = keep, the package's convention);
    input.rel_pos_bias (bias_b, bias_h, I, J) as F32 with bias_b in {1,B}, bias_h in {1,heads},
  * expected outputs computed by the package in float64 from the stored (float32- or
    F16/BF16-rounded) inputs and weights, stored as F32: expected.out, expected.context_out and,
    for return_attn fixtures, expected.attn, expected.context_attn (B,heads,I,J, after talking
    heads, as the package returns them),
  * __metadata__ (strings): heads (absent in the fixtures that test the loader's fallbacks),
    expected_heads, kind (attention | transformer), the constructor call, prenorm
    (none | rms | layer), talking_heads, return_attn, dim, context_dim, dim_head, depth,
    ff_hidden, context_ff_hidden, final_norms, context_norm_dim, weights_dtype, description.

Deviations from running the package verbatim, each to reproduce float32 PyTorch exactly:
  * nn.RMSNorm(eps=None) uses finfo(input dtype).eps; in a float64 run that would be DBL_EPSILON,
    so every RMSNorm's eps is set to FLT_EPSILON (what the float32 module uses).
  * masked_fill(-finfo(float64).max) instead of -FLT_MAX: identical softmax results (masked
    logits get weight exactly 0, or all equal in a fully masked row / column).
  * "layernorm" fixtures: version 0.0.x of the package used nn.LayerNorm (weight and bias, eps
    1e-5) for prenorm. 0.1.0 no longer builds it, so these fixtures take a 0.1.0 module with
    prenorm=True and replace module.norm / module.context_norm by nn.LayerNorm(dim) /
    nn.LayerNorm(context_dim) with random weight and bias (state_dict: norm.weight, norm.bias,
    context_norm.weight, context_norm.bias).
  * "final_norms_ctxdim": the package builds the transformer's final context_norm as
    nn.RMSNorm(dim) (only usable when context_dim == dim); this fixture replaces it by
    nn.RMSNorm(context_dim) (xattn accepts both sizes).
Each fixture is also run through the float32 package (weights and inputs as stored) as a sanity
check of the tolerance budget; the float32-vs-float64 error is printed.
"""
import argparse
import os
import warnings

import torch
from torch import nn
from safetensors.torch import save_file

from bidirectional_cross_attention import (BidirectionalCrossAttention,
                                           BidirectionalCrossAttentionTransformer)

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)

GEN = torch.Generator().manual_seed(20240703)
FLT_EPS = float(torch.finfo(torch.float32).eps)
NAMES = []
TOTAL_BYTES = [0]


def randn(*shape):
    return torch.randn(*shape, generator=GEN)


def rand(*shape):
    return torch.rand(*shape, generator=GEN)


def round_to(t, dtype):
    return t.to(dtype).to(torch.float64)


def fix_rmsnorm_eps(module):
    for mod in module.modules():
        if isinstance(mod, nn.RMSNorm):
            mod.eps = FLT_EPS


def randomize(module, wdtype):
    """Random weights, every parameter non-trivial, rounded to wdtype (kept in float64)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.split(".")[-1]
            is_norm = isinstance(module.get_submodule(name.rsplit(".", 1)[0]),
                                 (nn.RMSNorm, nn.LayerNorm)) if "." in name else False
            if is_norm and leaf == "weight":
                v = 1.0 + 0.4 * randn(*p.shape)
            elif is_norm and leaf == "bias":
                v = 0.3 * randn(*p.shape)
            elif leaf == "bias":
                v = 0.5 * randn(*p.shape)
            elif p.dim() == 4:  # talking heads (H, H, 1, 1): identity-ish plus mixing
                H = p.shape[0]
                v = torch.eye(H).view(H, H, 1, 1) * 0.8 + randn(*p.shape) * (0.6 / H**0.5)
            else:  # Linear (out, in)
                v = randn(*p.shape) * (1.3 / p.shape[-1] ** 0.5)
            p.copy_(round_to(v, wdtype))


def ragged_mask(B, N, lengths):
    m = torch.zeros(B, N, dtype=torch.bool)
    for b, n in enumerate(lengths):
        m[b, :n] = True
    return m


def gen(out_dir, name, *, kind="attention", dim=32, context_dim=None, heads=2, dim_head=16,
        talking_heads=False, prenorm="none", depth=1, ff=4.0, final_norms=False,
        ctx_final_norm_dim=False, B=2, I=7, J=11, mask=None, context_mask=None, bias=None,
        return_attn=False, wdtype=torch.float32, heads_in_meta=True, input_scale=1.0,
        out_scale=1.0, desc=""):
    """mask / context_mask: None, a list of per-batch prefix lengths (ragged padding), or
    'random' (random keep pattern, at least one True per batch element).
    bias: None or (bias_b, bias_h) given as 'B'/1 and 'H'/1."""
    cdim = context_dim if context_dim is not None else dim
    if kind == "attention":
        m = BidirectionalCrossAttention(dim=dim, heads=heads, dim_head=dim_head,
                                        context_dim=context_dim, talking_heads=talking_heads,
                                        prenorm=(prenorm != "none"))
        ctor = (f"BidirectionalCrossAttention(dim={dim}, heads={heads}, dim_head={dim_head}, "
                f"context_dim={context_dim}, talking_heads={talking_heads}, "
                f"prenorm={prenorm != 'none'})")
        if prenorm == "layer":
            m.norm = nn.LayerNorm(dim)
            m.context_norm = nn.LayerNorm(cdim)
            ctor += " with norm/context_norm replaced by nn.LayerNorm (0.0.x prenorm)"
    else:
        assert prenorm == "none" and not return_attn
        m = BidirectionalCrossAttentionTransformer(dim=dim, depth=depth, context_dim=context_dim,
                                                   ff_expansion_factor=ff,
                                                   final_norms=final_norms, heads=heads,
                                                   dim_head=dim_head, talking_heads=talking_heads)
        ctor = (f"BidirectionalCrossAttentionTransformer(dim={dim}, depth={depth}, "
                f"context_dim={context_dim}, ff_expansion_factor={ff}, final_norms={final_norms}, "
                f"heads={heads}, dim_head={dim_head}, talking_heads={talking_heads})")
        if ctx_final_norm_dim:
            assert final_norms
            m.context_norm = nn.RMSNorm(cdim)
            ctor += " with context_norm replaced by nn.RMSNorm(context_dim)"
    fix_rmsnorm_eps(m)
    randomize(m, wdtype)
    if out_scale != 1.0:
        # shrink what is added to the residual streams (attention output projections and the
        # feed-forwards' last Linear) so that they stay tiny and every norm's eps is visible
        with torch.no_grad():
            for pname, prm in m.named_parameters():
                if ("to_out." in pname or pname.rsplit(".", 2)[-2:-1] == ["3"]):
                    prm.copy_(round_to(prm * out_scale, wdtype))
    m.eval()

    x = round_to(randn(B, I, dim) * input_scale, torch.float32)
    ctx = round_to(randn(B, J, cdim) * input_scale, torch.float32)

    def make_mask(spec, N):
        if spec is None:
            return None
        if spec == "random":
            mm = rand(B, N) < 0.7
            mm[:, 0] = True
            return mm
        assert len(spec) == B
        return ragged_mask(B, N, spec)

    mk = make_mask(mask, I)
    cmk = make_mask(context_mask, J)
    rpb = None
    if bias is not None:
        bb = B if bias[0] == "B" else 1
        bh = heads if bias[1] == "H" else 1
        rpb = round_to(randn(bb, bh, I, J) * 1.5, torch.float32)

    kwargs = dict(mask=mk, context_mask=cmk, rel_pos_bias=rpb)
    with torch.no_grad():
        if return_attn:
            out, cout, attn, cattn = m(x, ctx, return_attn=True, **kwargs)
        else:
            out, cout = m(x, ctx, **kwargs)
            attn = cattn = None
        # float32 run of the same package as a sanity check of the tolerance budget
        m32 = m.float()
        fix_rmsnorm_eps(m32)
        r32 = m32(x.float(), ctx.float(), mask=mk, context_mask=cmk,
                  rel_pos_bias=None if rpb is None else rpb.float(), return_attn=return_attn)
        m.double()
    for t in (out, cout) + ((attn, cattn) if return_attn else ()):
        assert torch.isfinite(t).all(), name
    err32 = max(((a.double() - b) .abs() / (1 + b.abs())).max().item()
                for a, b in zip(r32, (out, cout) + ((attn, cattn) if return_attn else ())))

    tensors = {k: v.detach().to(wdtype).contiguous() for k, v in m.state_dict().items()}
    tensors["input.x"] = x.float()
    tensors["input.context"] = ctx.float()
    if mk is not None:
        tensors["input.mask"] = mk
    if cmk is not None:
        tensors["input.context_mask"] = cmk
    if rpb is not None:
        tensors["input.rel_pos_bias"] = rpb.float()
    tensors["expected.out"] = out.float()
    tensors["expected.context_out"] = cout.float()
    if return_attn:
        tensors["expected.attn"] = attn.float()
        tensors["expected.context_attn"] = cattn.float()

    hidden = int(dim * ff) if kind == "transformer" else 0
    chidden = int(cdim * ff) if kind == "transformer" else 0
    meta = {
        "kind": kind,
        "module": ctor,
        "expected_heads": str(heads),
        "dim": str(dim),
        "context_dim": str(cdim),
        "dim_head": str(dim_head),
        "prenorm": prenorm if kind == "attention" else "rms",
        "talking_heads": str(talking_heads),
        "return_attn": str(return_attn),
        "depth": str(depth if kind == "transformer" else 1),
        "ff_hidden": str(hidden),
        "context_ff_hidden": str(chidden),
        "final_norms": str(final_norms),
        "context_norm_dim": str((cdim if ctx_final_norm_dim else dim) if final_norms else 0),
        "mask": str(mask),
        "context_mask": str(context_mask),
        "rel_pos_bias_shape": "None" if rpb is None else str(tuple(rpb.shape)),
        "weights_dtype": str(wdtype).replace("torch.", ""),
        "input_scale": str(input_scale),
        "out_scale": str(out_scale),
        "description": desc,
    }
    if heads_in_meta:
        meta["heads"] = str(heads)
    fname = f"bidir_{name}.safetensors"
    path = os.path.join(out_dir, fname)
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=meta)
    NAMES.append(fname)
    size = os.path.getsize(path)
    TOTAL_BYTES[0] += size
    print(f"{fname:48s} {size:8d} B  fp32-vs-fp64 {err32:.2e}")
    assert err32 < 2e-5, f"{name}: float32 package differs from float64 by {err32}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    f16, bf16 = torch.float16, torch.bfloat16

    # ---- BidirectionalCrossAttention: one option at a time ----
    gen(out, "basic", dim=32, heads=2, dim_head=16, return_attn=True,
        desc="defaults otherwise: no prenorm, no talking heads, no masks")
    gen(out, "h1_dh64", dim=16, heads=1, dim_head=64, I=9, J=6, desc="1 head of width 64")
    gen(out, "h3_dh8", dim=24, heads=3, dim_head=8, I=6, J=13, desc="3 heads of width 8")
    gen(out, "h8_dh8", dim=32, heads=8, dim_head=8, I=5, J=9, return_attn=True,
        desc="8 heads of width 8, return_attn")
    gen(out, "h8_dh1", dim=16, heads=8, dim_head=1, I=10, J=7, desc="8 heads of width 1")
    gen(out, "h1_dh1", dim=20, heads=1, dim_head=1, I=4, J=5, return_attn=True,
        desc="1 head of width 1 (inner_dim 1)")
    gen(out, "h2_dh64", dim=40, heads=2, dim_head=64, I=8, J=12, desc="2 heads of width 64")
    gen(out, "ctxdim", dim=24, context_dim=40, heads=2, dim_head=8, I=6, J=10,
        desc="context_dim 40 != dim 24")
    gen(out, "prenorm_rms", dim=32, context_dim=20, heads=2, dim_head=16, I=7, J=9,
        prenorm="rms", desc="prenorm=True (RMSNorm, weight only, eps FLT_EPSILON)")
    gen(out, "prenorm_layernorm", dim=32, context_dim=20, heads=2, dim_head=16, I=7, J=9,
        prenorm="layer",
        desc="0.0.x prenorm: norm/context_norm replaced by nn.LayerNorm with random weight+bias")
    gen(out, "talking_heads", dim=24, heads=3, dim_head=8, I=6, J=8, talking_heads=True,
        desc="talking_heads=True (two (H,H,1,1) convs)")
    gen(out, "mask", B=3, I=9, J=7, mask=[9, 5, 2],
        desc="mask only, batch 3, ragged prefix lengths 9/5/2 (masked rows -> uniform)")
    gen(out, "context_mask", B=3, I=6, J=10, context_mask=[4, 10, 1],
        desc="context_mask only, batch 3, ragged prefix lengths 4/10/1")
    gen(out, "both_masks", B=3, I=8, J=10, mask=[8, 3, 6], context_mask=[5, 10, 2],
        return_attn=True, desc="mask and context_mask, batch 3 ragged in both")
    gen(out, "mask_full_row", B=3, I=6, J=9, mask=[6, 0, 3], return_attn=True,
        desc="mask all False for batch element 1 (every row fully masked -> uniform)")
    gen(out, "context_mask_full_col", B=3, I=7, J=8, context_mask=[0, 8, 5], return_attn=True,
        desc="context_mask all False for batch element 0 (every column fully masked)")
    gen(out, "both_masks_full", B=3, I=7, J=9, mask=[0, 7, 4], context_mask=[6, 3, 0],
        return_attn=True,
        desc="both masks; batch 0 has no kept row, batch 2 no kept column")
    gen(out, "random_masks", B=3, I=12, J=15, heads=3, dim_head=8, dim=24, mask="random",
        context_mask="random", desc="random (non-prefix) keep patterns in both masks")
    gen(out, "bias_bhij", B=2, heads=3, dim_head=8, dim=24, I=5, J=8, bias=("B", "H"),
        desc="rel_pos_bias (B,H,I,J)")
    gen(out, "bias_1hij", B=2, heads=3, dim_head=8, dim=24, I=5, J=8, bias=(1, "H"),
        desc="rel_pos_bias (1,H,I,J)")
    gen(out, "bias_b1ij", B=2, heads=3, dim_head=8, dim=24, I=5, J=8, bias=("B", 1),
        desc="rel_pos_bias (B,1,I,J)")
    gen(out, "bias_11ij", B=2, heads=3, dim_head=8, dim=24, I=5, J=8, bias=(1, 1),
        return_attn=True, desc="rel_pos_bias (1,1,I,J), return_attn")
    gen(out, "return_attn_talking", B=2, heads=3, dim_head=8, dim=24, I=6, J=7,
        talking_heads=True, return_attn=True, desc="return_attn with talking heads")
    gen(out, "len1", dim=16, heads=2, dim_head=8, B=2, I=1, J=1, return_attn=True,
        desc="I = J = 1")
    gen(out, "i1_j40", dim=16, heads=2, dim_head=8, B=2, I=1, J=40, context_mask=[40, 17],
        return_attn=True, desc="I = 1 (context_attn columns are all 1), context_mask")
    gen(out, "i40_j1", dim=16, heads=2, dim_head=8, B=2, I=40, J=1, mask=[40, 23],
        return_attn=True, desc="J = 1 (attn rows are all 1), mask")
    gen(out, "i33_j300", dim=16, heads=2, dim_head=8, B=2, I=33, J=300, mask=[33, 20],
        context_mask=[300, 129], desc="I = 33, J = 300, ragged masks")
    gen(out, "i257_j65", dim=16, context_dim=24, heads=1, dim_head=16, B=1, I=257, J=65,
        return_attn=True, bias=(1, 1), desc="I = 257, J = 65, bias, return_attn")
    gen(out, "i100_j97_talking", dim=16, heads=2, dim_head=8, B=1, I=100, J=97,
        talking_heads=True, mask=[77], context_mask=[90], bias=(1, "H"),
        desc="I = 100, J = 97, talking heads, masks, bias")

    # inputs so small that the norms' eps matter (mean square ~1e-6 vs FLT_EPSILON / 1e-5)
    gen(out, "prenorm_rms_tiny", dim=24, context_dim=16, heads=2, dim_head=8, I=5, J=6,
        prenorm="rms", input_scale=1e-3,
        desc="RMSNorm prenorm on inputs of scale 1e-3: eps = FLT_EPSILON is visible")
    gen(out, "prenorm_layernorm_tiny", dim=24, context_dim=16, heads=2, dim_head=8, I=5, J=6,
        prenorm="layer", input_scale=1e-3,
        desc="LayerNorm prenorm on inputs of scale 1e-3: eps = 1e-5 dominates the variance")

    # ---- combined ----
    gen(out, "all_rms", dim=24, context_dim=36, heads=3, dim_head=8, B=3, I=11, J=14,
        prenorm="rms", talking_heads=True, mask=[11, 0, 6], context_mask=[14, 9, 0],
        bias=("B", "H"), return_attn=True,
        desc="prenorm RMS + talking heads + both masks (fully masked rows/cols) + (B,H,I,J) bias "
             "+ context_dim != dim + return_attn")
    gen(out, "all_layernorm", dim=40, context_dim=28, heads=2, dim_head=16, B=3, I=10, J=13,
        prenorm="layer", talking_heads=True, mask=[10, 4, 7], context_mask=[0, 13, 5],
        bias=("B", 1), return_attn=True,
        desc="0.0.x LayerNorm prenorm + talking heads + both masks + (B,1,I,J) bias + "
             "context_dim != dim + return_attn")
    gen(out, "all_h8_dh64", dim=48, context_dim=32, heads=8, dim_head=64, B=2, I=5, J=6,
        prenorm="rms", talking_heads=True, mask=[5, 2], context_mask=[3, 6], bias=(1, 1),
        desc="8 heads of 64 with every option")
    gen(out, "w_f16", dim=32, context_dim=24, heads=2, dim_head=16, I=6, J=7, prenorm="rms",
        talking_heads=True, mask=[6, 3], return_attn=True, wdtype=f16,
        desc="weights stored as F16 (reference from the rounded weights)")
    gen(out, "w_bf16", dim=32, context_dim=24, heads=4, dim_head=8, I=6, J=7, prenorm="layer",
        context_mask=[7, 2], bias=(1, "H"), wdtype=bf16,
        desc="weights stored as BF16, LayerNorm prenorm (reference from the rounded weights)")
    gen(out, "default_heads", dim=16, heads=8, dim_head=4, I=5, J=6, heads_in_meta=False,
        desc="no heads in __metadata__: the package default 8")
    gen(out, "talking_nometa", dim=24, heads=3, dim_head=8, I=5, J=6, talking_heads=True,
        heads_in_meta=False, desc="no heads in __metadata__: from the talking-heads weight")

    # ---- BidirectionalCrossAttentionTransformer ----
    gen(out, "tf_depth1", kind="transformer", dim=32, context_dim=24, depth=1, heads=2,
        dim_head=16, I=7, J=9, desc="depth 1, ff_expansion_factor 4")
    gen(out, "tf_depth3_ff1p5", kind="transformer", dim=25, context_dim=19, depth=3, heads=2,
        dim_head=8, ff=1.5, I=6, J=8, mask=[6, 4], context_mask=[8, 5],
        desc="depth 3, ff_expansion_factor 1.5 (hidden int(25*1.5)=37, int(19*1.5)=28), masks")
    gen(out, "tf_final_norms", kind="transformer", dim=24, depth=2, heads=3, dim_head=8,
        final_norms=True, I=5, J=7, desc="final_norms with context_dim == dim")
    gen(out, "tf_final_norms_ctxdim", kind="transformer", dim=24, context_dim=16, depth=1,
        heads=2, dim_head=8, final_norms=True, ctx_final_norm_dim=True, I=5, J=7,
        desc="final_norms, context_dim != dim, context_norm replaced by nn.RMSNorm(context_dim)")
    gen(out, "tf_talking_masks_bias", kind="transformer", dim=16, context_dim=20, depth=2,
        heads=4, dim_head=4, talking_heads=True, B=3, I=8, J=9, mask=[8, 0, 5],
        context_mask=[9, 4, 0], bias=("B", "H"),
        desc="talking heads, masks with fully masked rows/cols, (B,H,I,J) bias to every layer")
    gen(out, "tf_tiny_inputs", kind="transformer", dim=16, context_dim=12, depth=2, heads=2,
        dim_head=8, final_norms=True, ctx_final_norm_dim=True, I=4, J=5, input_scale=1e-3,
        out_scale=1e-3, desc="inputs of scale 1e-3 and output projections / feed-forward last "
        "Linear scaled by 1e-3: the residual streams stay ~1e-3, so the eps (FLT_EPSILON) of "
        "every RMSNorm (prenorm, feed-forward, final) is visible")
    gen(out, "tf_long_bias", kind="transformer", dim=16, depth=1, heads=1, dim_head=16, B=1,
        I=70, J=130, bias=(1, 1), ff=2.0, final_norms=True,
        desc="I = 70, J = 130, (1,1,I,J) bias, final norms")
    gen(out, "tf_bf16", kind="transformer", dim=24, context_dim=16, depth=2, heads=2, dim_head=8,
        final_norms=True, ctx_final_norm_dim=True, ff=1.5, talking_heads=True, I=6, J=5,
        context_mask=[5, 3], wdtype=bf16, desc="weights stored as BF16")
    gen(out, "tf_f16", kind="transformer", dim=16, depth=1, heads=2, dim_head=8, I=4, J=5,
        mask=[4, 1], wdtype=f16, desc="weights stored as F16")

    with open(os.path.join(out, "bidir_list.inc"), "w") as f:
        f.write("/* generated by tests/reference/gen_bidir.py */\n")
        for n in NAMES:
            f.write(f'"{n}",\n')
    print(f"wrote {len(NAMES)} fixtures, {TOTAL_BYTES[0]} bytes")


if __name__ == "__main__":
    main()
