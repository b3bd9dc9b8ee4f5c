#!/usr/bin/env python3
"""Reference fixtures for M1 (multi-head cross-attention): tests/fixtures/mha_*.safetensors and
tests/fixtures/cli/*.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  numpy  safetensors  diffusers==0.42.1

    python tests/reference/gen_mha.py [--out tests/fixtures]

Every fixture is one safetensors file holding
  * the module's state_dict under its own names (torch.nn.MultiheadAttention or the real
    diffusers.models.attention_processor.Attention), weights stored as F32 (one fixture per layout
    family also as F16 / BF16; the reference is then computed from the rounded weights),
  * inputs: input.query, input.key, input.value (absent when value is key),
    input.key_padding_mask, input.attn_mask (bool masks as BOOL, float masks as F32),
  * expected outputs computed in float64 from the stored (rounded) values, stored as F32:
    expected.out, expected.attn_weights_avg (B, I, J), expected.attn_weights_per_head (B, H, I, J),
  * __metadata__: heads (when the file should give it), expected_heads, heads_arg (when the caller
    must pass heads), layout, is_causal, attn_mask_per_head, need_weights, the module's
    constructor options and a description, all as strings.

Fully masked rows: PyTorch gives NaN for a query row whose every key is masked (softmax of all
-inf). xattn's documented convention is a ZERO attention row (zero weights, zero per-head output
before the output projection, so the output row is out_proj.bias when every head is masked).
Where torch returns NaN, this script recomputes the affected values with an explicit float64
transcription of the same forward pass using that convention (after checking that the
transcription reproduces torch on every row torch computed), and records how many values were
replaced in __metadata__ 'nan_replaced'.

The diffusers module does not return attention weights; the weights stored for diffusers fixtures
come from the same explicit transcription (softmax of the scaled logits plus mask), an xattn
extension checked against the diffusers output through the attention output itself.
"""
import argparse
import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from diffusers.models.attention_processor import Attention

torch.set_default_dtype(torch.float64)
warnings.filterwarnings("ignore")  # torch warns about mixing bool and float masks (deprecated)

GEN = torch.Generator().manual_seed(20240601)


def randn(*shape):
    return torch.randn(*shape, generator=GEN)


def rand(*shape):
    return torch.rand(*shape, generator=GEN)


def round_to(t, dtype):
    """Rounds a float64 tensor to `dtype` and back (what the stored file holds)."""
    return t.to(dtype).to(torch.float64)


def randomize(module, wdtype):
    """Random weights (biases included, torch initialises them to zero) rounded to wdtype."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            fan_in = p.shape[-1] if p.dim() > 1 else p.shape[0]
            p.copy_(round_to((rand(*p.shape) * 2 - 1) * (1.5 / fan_in**0.5), wdtype))


def state_dict_as(module, wdtype):
    return {k: v.detach().to(wdtype).contiguous() for k, v in module.state_dict().items()}


# ------------------------------------------------------------------------------------------
# explicit float64 transcription (xattn convention for fully masked rows)
# ------------------------------------------------------------------------------------------
def explicit_attention(q, k, v, heads, bias):
    """q (B,I,inner) k,v (B,J,inner) projected; bias (B,H,I,J) additive (-inf = masked) or None.
    Returns per-head output merged (B,I,inner) and probabilities (B,H,I,J); a row whose logits
    are all -inf gives zero probabilities and a zero output."""
    B, I, inner = q.shape
    J = k.shape[1]
    dh = inner // heads
    qh = q.view(B, I, heads, dh).transpose(1, 2)
    kh = k.view(B, J, heads, dh).transpose(1, 2)
    vh = v.view(B, J, heads, dh).transpose(1, 2)
    s = (qh @ kh.transpose(-1, -2)) * dh**-0.5
    if bias is not None:
        s = s + bias
    m = s.amax(dim=-1, keepdim=True)
    dead = torch.isneginf(m)
    e = torch.exp(s - torch.where(dead, torch.zeros_like(m), m))
    p = e / e.sum(dim=-1, keepdim=True).clamp_min(1e-300)
    p = torch.where(dead, torch.zeros_like(p), p)
    o = (p @ vh).transpose(1, 2).reshape(B, I, inner)
    return o, p


def mha_bias(B, H, I, J, kpm, am, per_head, causal, keep_true):
    """Combined additive bias (B,H,I,J) with -inf for disallowed entries."""
    bias = torch.zeros(B, H, I, J)
    ninf = float("-inf")

    def add(t):
        nonlocal bias
        if t.dtype == torch.bool:
            masked = t if not keep_true else ~t
            bias = bias.masked_fill(masked, ninf)
        else:
            bias = bias + t

    if kpm is not None:
        add(kpm.view(B, 1, 1, J).expand(B, H, I, J))
    if am is not None:
        if per_head:
            add(am.view(B, H, I, J))
        else:
            add(am.view(1, 1, I, J).expand(B, H, I, J))
    if causal:
        tri = torch.ones(I, J, dtype=torch.bool).triu(1)  # True above the diagonal (j > i)
        bias = bias.masked_fill(tri.view(1, 1, I, J), ninf)
    return bias


def replace_nans(torch_val, explicit_val, what):
    """Where torch gave NaN take the explicit value; elsewhere check they agree."""
    nan = torch.isnan(torch_val)
    ok = ~nan
    if ok.any():
        err = (torch_val[ok] - explicit_val[ok]).abs().max().item()
        assert err < 1e-10, f"{what}: explicit transcription differs from torch by {err}"
    out = torch.where(nan, explicit_val, torch_val)
    assert not torch.isnan(out).any()
    return out, int(nan.sum().item())


# ------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------
def make_kpm(kind, B, J, full_row_batch=None):
    """torch-MHA polarity (True = ignore); float: additive with some -inf."""
    if kind is None:
        return None
    masked = rand(B, J) < 0.3
    masked[:, 0] = False  # at least one key kept in each row unless full_row_batch
    if full_row_batch is not None:
        masked[full_row_batch, :] = True
    if kind == "bool":
        return masked
    f = (rand(B, J) * 4 - 2)
    f = f.masked_fill(masked, float("-inf"))
    return f.to(torch.float32).to(torch.float64)


def make_am(kind, shape, dead_rows=()):
    if kind is None:
        return None
    masked = rand(*shape) < 0.3
    masked[..., 0] = False
    for idx in dead_rows:
        masked[idx] = True
    if kind == "bool":
        return masked
    f = rand(*shape) * 4 - 2
    f = f.masked_fill(masked, float("-inf"))
    return f.to(torch.float32).to(torch.float64)


# ------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention fixtures
# ------------------------------------------------------------------------------------------
def gen_torch(out_dir, name, E, H, kdim=None, vdim=None, bias=True, B=2, I=5, J=7,
              kpm=None, kpm_full_batch=None, am=None, am_3d=False, am_dead=(), causal=False,
              need_weights=True, wdtype=torch.float32, heads_in_meta=True, value_is_key=False,
              desc=""):
    kdim_ = kdim or E
    vdim_ = vdim or E
    mha = torch.nn.MultiheadAttention(E, H, bias=bias, kdim=kdim, vdim=vdim, batch_first=True)
    randomize(mha, wdtype)
    mha.eval()

    x = round_to(randn(B, I, E), torch.float32)
    ctx = round_to(randn(B, J, kdim_), torch.float32)
    val = ctx if value_is_key else round_to(randn(B, J, vdim_), torch.float32)
    kpm_t = make_kpm(kpm, B, J, kpm_full_batch)
    am_t = make_am(am, (B * H, I, J) if am_3d else (I, J), am_dead)

    # torch: is_causal is only a hint there and needs the causal attn_mask itself
    attn_mask_arg = am_t
    if causal:
        assert am_t is None
        attn_mask_arg = torch.ones(I, J, dtype=torch.bool).triu(1)
    # torch.nn.MultiheadAttention itself (grad stays enabled so the fast path is not taken)
    out_t, w_ph = mha(x, ctx, val, key_padding_mask=kpm_t, attn_mask=attn_mask_arg,
                      need_weights=need_weights, average_attn_weights=False, is_causal=causal)
    out_t = out_t.detach()
    if need_weights:
        w_ph = w_ph.detach()
        _, w_avg = mha(x, ctx, val, key_padding_mask=kpm_t, attn_mask=attn_mask_arg,
                       need_weights=True, average_attn_weights=True, is_causal=causal)
        w_avg = w_avg.detach()

    # explicit transcription
    with torch.no_grad():
        if mha.in_proj_weight is not None:
            wq, wk, wv = mha.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight
        bq = bk = bv = None
        if mha.in_proj_bias is not None:
            bq, bk, bv = mha.in_proj_bias.chunk(3)
        q = F.linear(x, wq, bq)
        k = F.linear(ctx, wk, bk)
        v = F.linear(val, wv, bv)
        bias_t = mha_bias(B, H, I, J, kpm_t, am_t, am_3d, causal, keep_true=False)
        o, p = explicit_attention(q, k, v, H, bias_t)
        out_e = mha.out_proj(o)

    n_rep = 0
    out, n = replace_nans(out_t, out_e, name + " out")
    n_rep += n
    tensors = state_dict_as(mha, wdtype)
    tensors["input.query"] = x.float()
    tensors["input.key"] = ctx.float()
    if not value_is_key:
        tensors["input.value"] = val.float()
    if kpm_t is not None:
        tensors["input.key_padding_mask"] = kpm_t if kpm_t.dtype == torch.bool else kpm_t.float()
    if am_t is not None:
        tensors["input.attn_mask"] = am_t if am_t.dtype == torch.bool else am_t.float()
    tensors["expected.out"] = out.float()
    if need_weights:
        w_ph, n = replace_nans(w_ph, p, name + " weights")
        n_rep += n
        w_avg_e = w_ph.mean(dim=1)
        w_avg, n = replace_nans(w_avg, w_avg_e, name + " averaged weights")
        n_rep += n
        tensors["expected.attn_weights_per_head"] = w_ph.float().contiguous()
        tensors["expected.attn_weights_avg"] = w_avg.float().contiguous()

    meta = {
        "layout": "torch_mha",
        "module": f"torch.nn.MultiheadAttention(embed_dim={E}, num_heads={H}, bias={bias}, "
                  f"kdim={kdim}, vdim={vdim}, batch_first=True)",
        "expected_heads": str(H),
        "is_causal": str(causal),
        "attn_mask_per_head": str(am_3d),
        "need_weights": str(need_weights),
        "key_padding_mask": str(kpm),
        "attn_mask": str(am),
        "weights_dtype": str(wdtype).replace("torch.", ""),
        "nan_replaced": str(n_rep),
        "description": desc,
    }
    if heads_in_meta:
        meta["heads"] = str(H)
    else:
        meta["heads_arg"] = str(H)
    path = os.path.join(out_dir, f"mha_{name}.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=meta)
    return mha, dict(x=x, ctx=ctx, val=val, kpm=kpm_t, out=out,
                     w_avg=w_avg if need_weights else None,
                     w_ph=w_ph if need_weights else None, n_rep=n_rep)


# ------------------------------------------------------------------------------------------
# diffusers Attention fixtures (the real module and its default AttnProcessor2_0)
# ------------------------------------------------------------------------------------------
def gen_diffusers(out_dir, name, query_dim, cross_dim, heads, dim_head, bias=False, out_bias=True,
                  out_dim=None, B=2, I=5, J=7, kpm=None, kpm_full_batch=None, am=None, am_3d=False,
                  am_dead=(), causal=False, wdtype=torch.float32, heads_in_meta=True, desc=""):
    att = Attention(query_dim=query_dim, cross_attention_dim=cross_dim, heads=heads,
                    dim_head=dim_head, bias=bias, out_bias=out_bias, out_dim=out_dim)
    randomize(att, wdtype)
    att.eval()
    H = att.heads

    x = round_to(randn(B, I, query_dim), torch.float32)
    ctx = round_to(randn(B, J, cross_dim), torch.float32)

    # SDPA polarity: bool True = keep
    kpm_t = make_kpm(kpm, B, J, kpm_full_batch)
    if kpm_t is not None and kpm_t.dtype == torch.bool:
        kpm_t = ~kpm_t
    am_t = make_am(am, (B * H, I, J) if am_3d else (I, J), am_dead)
    if am_t is not None and am_t.dtype == torch.bool:
        am_t = ~am_t

    # the mask diffusers is given: (B, J) key padding, (B*heads, I, J) per head (both native to
    # prepare_attention_mask); a 2-D (I, J) mask or the causal mask is expanded to (B*heads, I, J)
    keep_true = True
    dmask = None
    if kpm_t is not None:
        assert am_t is None and not causal
        dmask = kpm_t
    elif am_t is not None:
        assert not causal
        dmask = am_t if am_3d else am_t.view(1, I, J).expand(B * H, I, J).contiguous()
    elif causal:
        dmask = torch.ones(I, J, dtype=torch.bool).tril().view(1, I, J).expand(B * H, I, J)
        dmask = dmask.contiguous()
    with torch.no_grad():
        out_t = att(x, encoder_hidden_states=ctx, attention_mask=dmask)
        q = att.to_q(x)
        k = att.to_k(ctx)
        v = att.to_v(ctx)
        bias_t = mha_bias(B, H, I, J, kpm_t, am_t, am_3d, causal, keep_true)
        o, p = explicit_attention(q, k, v, H, bias_t)
        out_e = att.to_out[0](o)
    out, n_rep = replace_nans(out_t, out_e, name + " out")

    tensors = state_dict_as(att, wdtype)
    tensors["input.query"] = x.float()
    tensors["input.key"] = ctx.float()
    if kpm_t is not None:
        tensors["input.key_padding_mask"] = kpm_t if kpm_t.dtype == torch.bool else kpm_t.float()
    if am_t is not None:
        tensors["input.attn_mask"] = am_t if am_t.dtype == torch.bool else am_t.float()
    tensors["expected.out"] = out.float()
    tensors["expected.attn_weights_per_head"] = p.float().contiguous()
    tensors["expected.attn_weights_avg"] = p.mean(dim=1).float().contiguous()
    meta = {
        "layout": "diffusers",
        "module": f"diffusers Attention(query_dim={query_dim}, cross_attention_dim={cross_dim}, "
                  f"heads={heads}, dim_head={dim_head}, bias={bias}, out_bias={out_bias}, "
                  f"out_dim={out_dim})",
        "expected_heads": str(H),
        "is_causal": str(causal),
        "attn_mask_per_head": str(am_3d),
        "need_weights": "True",
        "key_padding_mask": str(kpm),
        "attn_mask": str(am),
        "weights_dtype": str(wdtype).replace("torch.", ""),
        "nan_replaced": str(n_rep),
        "description": desc,
    }
    if heads_in_meta:
        meta["heads"] = str(H)
    path = os.path.join(out_dir, f"mha_{name}.safetensors")
    save_file({k: v.contiguous() for k, v in tensors.items()}, path, metadata=meta)
    return att, dict(x=x, ctx=ctx, kpm=kpm_t, out=out, w_avg=p.mean(dim=1), w_ph=p, n_rep=n_rep)


# ------------------------------------------------------------------------------------------
def save_npy(path, t, dtype=np.float32):
    np.save(path, t.detach().numpy().astype(dtype) if t.dtype != torch.bool else t.numpy())


def gen_cli(out_dir, mha, r, att, rd):
    """Small model files, .npy inputs and expected outputs for tests/test_cli.sh."""
    d = os.path.join(out_dir, "cli")
    os.makedirs(d, exist_ok=True)
    H = mha.num_heads
    save_file(state_dict_as(mha, torch.float32), os.path.join(d, "mha.safetensors"),
              metadata={"heads": str(H)})
    save_file(state_dict_as(mha, torch.float32), os.path.join(d, "mha_noheads.safetensors"))
    save_npy(os.path.join(d, "x.npy"), r["x"])
    save_npy(os.path.join(d, "x_f64.npy"), r["x"], np.float64)
    save_npy(os.path.join(d, "context.npy"), r["ctx"])
    save_npy(os.path.join(d, "value.npy"), r["val"])
    save_npy(os.path.join(d, "kpm.npy"), r["kpm"])
    save_npy(os.path.join(d, "expected_out.npy"), r["out"])
    save_npy(os.path.join(d, "expected_attn.npy"), r["w_avg"])
    save_npy(os.path.join(d, "expected_attn_per_head.npy"), r["w_ph"])
    save_npy(os.path.join(d, "expected_out_perturbed.npy"), r["out"] + 1e-3)
    B, I, E = r["x"].shape
    J = r["ctx"].shape[1]
    # with a bool (I, J) attn_mask, and with is_causal (torch needs the causal mask itself);
    # key 0 is never masked, so no row is fully masked
    am = rand(I, J) < 0.4
    am[:, 0] = False
    save_npy(os.path.join(d, "attn_mask.npy"), am)
    out_am, _ = mha(r["x"], r["ctx"], r["val"], key_padding_mask=r["kpm"], attn_mask=am,
                    need_weights=False)
    causal = torch.ones(I, J, dtype=torch.bool).triu(1)
    out_c, _ = mha(r["x"], r["ctx"], r["val"], key_padding_mask=r["kpm"], attn_mask=causal,
                   is_causal=True, need_weights=False)
    assert not torch.isnan(out_am).any() and not torch.isnan(out_c).any()
    save_npy(os.path.join(d, "expected_out_attn_mask.npy"), out_am)
    save_npy(os.path.join(d, "expected_out_causal.npy"), out_c)
    # bad inputs
    save_npy(os.path.join(d, "bad_rank4.npy"), r["x"].view(1, B, I, E))
    save_npy(os.path.join(d, "bad_width.npy"), r["x"][:, :, : E - 1].contiguous())
    save_npy(os.path.join(d, "bad_kpm_shape.npy"), r["kpm"][:, : J - 1].contiguous())
    save_npy(os.path.join(d, "bad_attn_mask_shape.npy"), torch.zeros(I + 1, J, dtype=torch.bool))
    np.save(os.path.join(d, "bad_dtype.npy"), (r["x"] * 100).numpy().astype(np.int32))
    np.save(os.path.join(d, "bad_batch_context.npy"), r["ctx"][:1].numpy().astype(np.float32))

    # diffusers model with unbatched (I, E) inputs and the default heads (no metadata)
    save_file(state_dict_as(att, torch.float32), os.path.join(d, "attention.safetensors"))
    save_npy(os.path.join(d, "attention_x.npy"), rd["x"][0])
    save_npy(os.path.join(d, "attention_context.npy"), rd["ctx"][0])
    save_npy(os.path.join(d, "attention_expected_out.npy"), rd["out"][0])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    f16, bf16 = torch.float16, torch.bfloat16

    # ---- torch.nn.MultiheadAttention ----
    gen_torch(out, "packed_basic", 16, 4, desc="in_proj_weight packed, no mask")
    gen_torch(out, "kdim_vdim", 12, 3, kdim=5, vdim=7, I=4, J=9,
              desc="kdim != vdim != embed_dim, separate q/k/v_proj_weight")
    gen_torch(out, "nobias_kpm_bool", 8, 2, kdim=6, vdim=3, bias=False, I=3, J=4, kpm="bool",
              desc="bias=False, bool key_padding_mask")
    gen_torch(out, "h1_len1", 6, 1, kdim=3, vdim=4, I=1, J=1, desc="1 head, I = J = 1")
    gen_torch(out, "h16_dh1_long_kv", 16, 16, I=3, J=301, kpm="float",
              desc="16 heads of width 1, J = 301, float key_padding_mask with -inf")
    gen_torch(out, "h2_long_q_bool2d", 8, 2, kdim=10, vdim=6, I=300, J=5, am="bool",
              desc="I = 300, bool 2-D attn_mask")
    gen_torch(out, "kpm_full_row", 10, 5, I=6, J=8, kpm="bool", kpm_full_batch=1,
              desc="batch element 1 fully masked by key_padding_mask: output = out_proj.bias")
    gen_torch(out, "float2d_kpm_bool", 12, 4, kdim=7, vdim=7, I=5, J=6, am="float", kpm="bool",
              am_dead=((2,),), desc="float 2-D attn_mask (row 2 all -inf) + bool key_padding_mask")
    gen_torch(out, "bool3d_dead_head_row", 8, 2, I=4, J=5, am="bool", am_3d=True,
              am_dead=((1, 2), (2, 0)), desc="bool 3-D attn_mask, some (b,h,i) rows fully masked")
    gen_torch(out, "float3d_kpm_float", 12, 3, kdim=5, vdim=9, I=7, J=6, am="float", am_3d=True,
              kpm="float", desc="float 3-D attn_mask + float key_padding_mask")
    gen_torch(out, "causal_square_sdpa", 8, 2, I=6, J=6, causal=True, need_weights=False,
              desc="is_causal, need_weights=False (torch takes its SDPA path)")
    gen_torch(out, "causal_wide_kpm", 8, 4, kdim=5, vdim=5, I=5, J=8, causal=True, kpm="bool",
              desc="is_causal with I < J plus bool key_padding_mask")
    gen_torch(out, "causal_tall", 8, 2, kdim=3, vdim=4, I=9, J=4, causal=True,
              desc="is_causal with I > J")
    gen_torch(out, "noweights_full_row", 8, 2, I=4, J=5, kpm="bool", kpm_full_batch=0,
              need_weights=False, desc="need_weights=False, fully masked batch element 0")
    gen_torch(out, "dh128", 128, 1, I=3, J=4, desc="one head of width 128")
    gen_torch(out, "dh3_masks", 15, 5, I=11, J=13, am="bool", kpm="bool",
              desc="head width 3, bool attn_mask + bool key_padding_mask")
    gen_torch(out, "weights_f16", 16, 2, kdim=8, vdim=12, I=5, J=6, kpm="bool", wdtype=f16,
              desc="weights stored as F16")
    gen_torch(out, "weights_bf16", 16, 4, I=5, J=6, am="float", wdtype=bf16,
              desc="weights stored as BF16")
    gen_torch(out, "value_is_key", 8, 2, kdim=6, vdim=6, I=4, J=5, value_is_key=True,
              desc="value is key (input.value absent)")
    mha_cli, r_cli = gen_torch(out, "heads_arg", 9, 3, kdim=4, vdim=5, I=4, J=6, kpm="bool",
                               heads_in_meta=False,
                               desc="no heads in __metadata__: the caller passes heads_arg")

    # ---- diffusers Attention ----
    gen_diffusers(out, "diff_basic", 16, 10, 2, 8, desc="bias=False, out_bias=True")
    gen_diffusers(out, "diff_bias_kpm_full_row", 12, 12, 3, 5, bias=True, kpm="bool",
                  kpm_full_batch=1,
                  desc="inner 15 != query_dim, bool (keep) padding mask, batch 1 fully masked")
    att_cli, rd_cli = gen_diffusers(out, "diff_default_heads", 16, 6, 8, 4, out_bias=False, I=3,
                                    J=300, heads_in_meta=False,
                                    desc="heads from the default 8, out_bias=False, J = 300")
    gen_diffusers(out, "diff_kpm_float", 8, 6, 2, 4, I=4, J=11, kpm="float",
                  desc="float additive padding mask with -inf")
    gen_diffusers(out, "diff_perhead_float", 8, 5, 2, 6, am="float", am_3d=True,
                  am_dead=((3, 1),), desc="(B*heads, I, J) float mask with a dead row")
    gen_diffusers(out, "diff_2d_bool", 8, 5, 4, 2, am="bool", I=6, J=7,
                  desc="(I, J) bool keep mask")
    gen_diffusers(out, "diff_causal", 8, 8, 2, 4, I=6, J=9, causal=True, desc="is_causal")
    gen_diffusers(out, "diff_out_dim_bf16", 8, 5, 1, 4, out_dim=12, bias=True, wdtype=bf16,
                  desc="out_dim 12 (heads = out_dim / dim_head = 3), BF16 weights")
    gen_diffusers(out, "diff_f16", 16, 10, 4, 4, bias=True, wdtype=f16, kpm="bool",
                  desc="F16 weights")

    gen_cli(out, mha_cli, r_cli, att_cli, rd_cli)


if __name__ == "__main__":
    main()
