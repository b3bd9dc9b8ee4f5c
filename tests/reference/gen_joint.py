#!/usr/bin/env python3
"""Reference fixtures for M4 (joint / stacked cross-attention, MMCA): tests/fixtures/joint_*.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  numpy  safetensors

    python tests/reference/gen_joint.py [--out tests/fixtures]

Every joint_<case>.safetensors holds
  * the state_dict of a real torch.nn.TransformerEncoderLayer(batch_first=True) (names
    self_attn.*, linear1.*, linear2.*, norm1.*, norm2.*) or nn.TransformerEncoder (layers.N.*,
    optional final norm.*), stored F32; the reference is computed from the stored (rounded)
    weights in float64,
  * input.x (B, K, d), input.context (B, N, d), optional input.x_padding_mask (B, K) and
    input.context_padding_mask (B, N) (BOOL, True = ignore, as src_key_padding_mask),
  * expected.out (B, K, d), expected.context_out (B, N, d): the module's output on
    cat([x, context], dim=1) with mask cat([xm, cm], dim=1), split back,
  * __metadata__: heads, norm_first, activation, layer_norm_eps (as the CLI reads them; the
    'defaults' fixture stores only heads), layers, final_norm, reference.

torch runs in float64 (torch.set_default_dtype), model.eval(), grad enabled and
torch.backends.mha.set_fastpath_enabled(False), enable_nested_tensor=False: so the regular
(non-fast) path computes everything, and padded positions get real outputs (the nested-tensor
fast path would zero them).

Fully masked rows: a batch item whose x AND context are fully padded has no key left for any
row; torch's encoder gives NaN there (or zeros on the nested fast path). xattn's documented
convention is a ZERO attention output for such a row (before out_proj, so the attention block
adds out_proj.bias). Fixtures with such rows ('full_row') take their expected values from an
explicit float64 transcription of the layer (`transcribe` below) with that convention; the
transcription is checked against the real torch modules on every fixture without such rows.

joint_mmca.safetensors: the MMCA matching head of examples/mmca_match.c (see its comment),
transcribed in PyTorch (float64): region average pooling; text Conv1d windows 1, 2, 3 (padding
0) + ReLU + max over time, concatenated, Linear; L2-normalised; S = <i0,c0> + alpha <i1,c1>,
where (i0, c0) come from the inputs and (i1, c1) from the joint layer's outputs.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
torch.backends.mha.set_fastpath_enabled(False)
GEN = torch.Generator().manual_seed(4242)


def randn(*s):
    return torch.randn(*s, generator=GEN)


def round_params(model):
    """Perturbs the LayerNorms (1/0 at init) so they matter, then rounds everything to fp32."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.2 * randn(*p.shape))
        for p in model.parameters():
            p.copy_(p.float().double())


def transcribe_layer(sd, pre, Y, keep, H, norm_first, act, eps):
    """One nn.TransformerEncoderLayer in float64 with the zero-row convention."""
    B, L, d = Y.shape
    dh = d // H

    def ln(z, w, b):
        return F.layer_norm(z, (d,), sd[pre + w], sd[pre + b], eps)

    def sa(z):
        qkv = z @ sd[pre + "self_attn.in_proj_weight"].T + sd[pre + "self_attn.in_proj_bias"]
        q, k, v = qkv.split(d, dim=-1)
        q = q.view(B, L, H, dh).transpose(1, 2)
        k = k.view(B, L, H, dh).transpose(1, 2)
        v = v.view(B, L, H, dh).transpose(1, 2)
        s = q @ k.transpose(-1, -2) / dh ** 0.5
        s = s.masked_fill(~keep[:, None, None, :], float("-inf"))
        mx = s.amax(-1, keepdim=True)
        mx = torch.where(torch.isfinite(mx), mx, torch.zeros_like(mx))
        e = torch.exp(s - mx)
        den = e.sum(-1, keepdim=True)
        p = torch.where(den > 0, e / den.clamp_min(1e-300), torch.zeros_like(e))
        o = (p @ v).transpose(1, 2).reshape(B, L, d)
        return o @ sd[pre + "self_attn.out_proj.weight"].T + sd[pre + "self_attn.out_proj.bias"]

    def ffn(z):
        h = z @ sd[pre + "linear1.weight"].T + sd[pre + "linear1.bias"]
        h = F.relu(h) if act == "relu" else F.gelu(h)
        return h @ sd[pre + "linear2.weight"].T + sd[pre + "linear2.bias"]

    if norm_first:
        Y = Y + sa(ln(Y, "norm1.weight", "norm1.bias"))
        Y = Y + ffn(ln(Y, "norm2.weight", "norm2.bias"))
    else:
        Y = ln(Y + sa(Y), "norm1.weight", "norm1.bias")
        Y = ln(Y + ffn(Y), "norm2.weight", "norm2.bias")
    return Y


def transcribe(sd, layers, Y, keep, H, norm_first, act, eps, final_norm):
    if layers == 0:  # a bare TransformerEncoderLayer
        return transcribe_layer(sd, "", Y, keep, H, norm_first, act, eps)
    for l in range(layers):
        Y = transcribe_layer(sd, f"layers.{l}.", Y, keep, H, norm_first, act, eps)
    if final_norm:
        Y = F.layer_norm(Y, (Y.shape[-1],), sd["norm.weight"], sd["norm.bias"], eps)
    return Y


def build(d, H, ff, norm_first, act, eps, layers, final_norm):
    layer = nn.TransformerEncoderLayer(d, H, ff, dropout=0.0, activation=act,
                                       layer_norm_eps=eps, batch_first=True,
                                       norm_first=norm_first)
    if layers == 0:
        model = layer
    else:
        norm = nn.LayerNorm(d, eps=eps) if final_norm else None
        model = nn.TransformerEncoder(layer, layers, norm=norm, enable_nested_tensor=False)
        # distinct weights per layer
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(randn(*p.shape) * (0.3 if p.dim() > 1 else 0.1))
    round_params(model)
    model.eval()
    return model


def make_case(out_dir, name, *, d=16, H=4, ff=32, B=2, K=5, N=7, norm_first=False, act="relu",
              eps=1e-5, layers=0, final_norm=False, xmask=None, cmask=None, full_row=False,
              meta_opts=True, scale=1.0):
    model = build(d, H, ff, norm_first, act, eps, layers, final_norm)
    x = (randn(B, K, d) * scale).float().double()
    c = (randn(B, N, d) * scale).float().double()
    Y = torch.cat([x, c], 1)
    xm = torch.zeros(B, K, dtype=torch.bool) if xmask is None else xmask
    cm = torch.zeros(B, N, dtype=torch.bool) if cmask is None else cmask
    mask = torch.cat([xm, cm], 1)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ref = transcribe(sd, layers, Y, ~mask, H, norm_first, act, eps, final_norm)
    has_full = bool((mask.all(1)).any())
    assert has_full == full_row, name
    if not has_full:
        use_mask = mask if (xmask is not None or cmask is not None) else None
        got = model(Y, src_key_padding_mask=use_mask).detach()
        err = (got - ref).abs().max().item()
        assert err < 1e-10, (name, err)
        ref = got
    assert torch.isfinite(ref).all()
    tensors = {k: v.float().contiguous() for k, v in sd.items()}
    tensors["input.x"] = x.float()
    tensors["input.context"] = c.float()
    if xmask is not None:
        tensors["input.x_padding_mask"] = xm.contiguous()
    if cmask is not None:
        tensors["input.context_padding_mask"] = cm.contiguous()
    tensors["expected.out"] = ref[:, :K].float().contiguous()
    tensors["expected.context_out"] = ref[:, K:].float().contiguous()
    meta = {"heads": str(H), "layers": str(max(layers, 1)), "final_norm": str(final_norm),
            "expected_norm_first": str(norm_first), "expected_activation": act,
            "expected_eps": repr(eps),
            "reference": "transcription (zero-row convention)" if has_full else
            ("nn.TransformerEncoderLayer" if layers == 0 else "nn.TransformerEncoder")}
    if meta_opts:
        meta.update({"norm_first": str(norm_first), "activation": act,
                     "layer_norm_eps": repr(eps)})
    save_file(tensors, os.path.join(out_dir, f"joint_{name}.safetensors"), metadata=meta)
    return model, sd


def rmask(B, n, p):
    return torch.rand(B, n, generator=GEN) < p


def mmca_case(out_dir):
    """MMCA matching head on top of a joint layer (see examples/mmca_match.c)."""
    d, H, ff, B, K, N, C, alpha = 16, 4, 32, 2, 6, 9, 8, 0.75
    E = d  # text embeddings are projected to the image width so <i, c> is defined
    model = build(d, H, ff, False, "relu", 1e-5, 0, False)
    convs = [nn.Conv1d(d, C, w) for w in (1, 2, 3)]
    proj = nn.Linear(3 * C, E)
    with torch.no_grad():
        for mod in convs + [proj]:
            for p in mod.parameters():
                p.copy_(p.float().double())
    x = randn(B, K, d).float().double()
    c = randn(B, N, d).float().double()
    Y = model(torch.cat([x, c], 1)).detach()
    xs, cs = Y[:, :K], Y[:, K:]

    def text(t):  # (B, N, d)
        z = t.transpose(1, 2)
        feats = [F.relu(conv(z)).amax(-1) for conv in convs]
        return F.normalize(proj(torch.cat(feats, -1)), dim=-1)

    def image(r):
        return F.normalize(r.mean(1), dim=-1)

    with torch.no_grad():
        i0, c0, i1, c1 = image(x), text(c), image(xs), text(cs)
        S = (i0 * c0).sum(-1) + alpha * (i1 * c1).sum(-1)
    tensors = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    for w, conv in zip((1, 2, 3), convs):
        tensors[f"text_conv{w}.weight"] = conv.weight.detach().float().contiguous()
        tensors[f"text_conv{w}.bias"] = conv.bias.detach().float().contiguous()
    tensors["text_proj.weight"] = proj.weight.detach().float().contiguous()
    tensors["text_proj.bias"] = proj.bias.detach().float().contiguous()
    tensors["input.x"] = x.float()
    tensors["input.context"] = c.float()
    tensors["expected.score"] = S.float().contiguous()
    tensors["expected.i0"] = i0.float().contiguous()
    tensors["expected.c0"] = c0.float().contiguous()
    tensors["expected.i1"] = i1.float().contiguous()
    tensors["expected.c1"] = c1.float().contiguous()
    meta = {"heads": str(H), "alpha": repr(alpha)}
    save_file(tensors, os.path.join(out_dir, "joint_mmca.safetensors"), metadata=meta)


def cli_case(out_dir):
    """tests/fixtures/joint_cli/: a 2-layer nn.TransformerEncoder (norm_first, gelu, final norm)
    saved with only __metadata__ heads (the other options are given as flags by the CLI test),
    inputs and masks as .npy, expected outputs as .npy (from the real module), and a single
    nn.TransformerEncoderLayer with full metadata run on one unbatched pair (rank-2 inputs)."""
    d = os.path.join(out_dir, "joint_cli")
    os.makedirs(d, exist_ok=True)
    B, K, N, dm, H = 2, 5, 3, 16, 4
    model = build(dm, H, 24, True, "gelu", 1e-6, 2, True)
    x = randn(B, K, dm).float().double()
    c = randn(B, N, dm).float().double()
    xm = torch.tensor([[0, 0, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    cm = torch.tensor([[0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    Y = model(torch.cat([x, c], 1), src_key_padding_mask=torch.cat([xm, cm], 1)).detach()
    sd = {k: v.float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(d, "encoder.safetensors"), metadata={"heads": str(H)})
    np.save(os.path.join(d, "x.npy"), x.float().numpy())
    np.save(os.path.join(d, "context.npy"), c.numpy())  # float64 on purpose
    np.save(os.path.join(d, "x_mask.npy"), xm.numpy())
    np.save(os.path.join(d, "context_mask.npy"), cm.numpy())
    np.save(os.path.join(d, "expected_out.npy"), Y[:, :K].float().numpy())
    np.save(os.path.join(d, "expected_context_out.npy"), Y[:, K:].float().numpy())
    # one unbatched pair through a single layer, options from the metadata
    layer = build(8, 2, 16, False, "relu", 1e-5, 0, False)
    x1 = randn(4, 8).float().double()
    c1 = randn(2, 8).float().double()
    Y1 = layer(torch.cat([x1, c1], 0)[None]).detach()[0]
    sd = {k: v.float().contiguous() for k, v in layer.state_dict().items()}
    save_file(sd, os.path.join(d, "layer.safetensors"),
              metadata={"heads": "2", "norm_first": "False", "activation": "relu",
                        "layer_norm_eps": "1e-05"})
    np.save(os.path.join(d, "x1.npy"), x1.float().numpy())
    np.save(os.path.join(d, "context1.npy"), c1.float().numpy())
    np.save(os.path.join(d, "expected_out1.npy"), Y1[:4].float().numpy())
    np.save(os.path.join(d, "expected_context_out1.npy"), Y1[4:].float().numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    args = ap.parse_args()
    o = args.out
    make_case(o, "layer_post_relu")
    make_case(o, "layer_pre_gelu", norm_first=True, act="gelu", eps=1e-6, B=3, K=4, N=6,
              xmask=torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool),
              cmask=torch.tensor([[0, 1, 0, 0, 0, 1], [1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1]],
                                 dtype=torch.bool))
    make_case(o, "enc2_post_gelu_masks", layers=2, act="gelu", eps=1e-3, B=3, K=33, N=1,
              d=24, H=3, ff=40, xmask=rmask(3, 33, 0.3),
              cmask=torch.tensor([[False], [True], [False]]))
    make_case(o, "enc3_pre_relu_final", layers=3, norm_first=True, final_norm=True, K=1, N=65,
              d=12, H=2, ff=20, B=2, cmask=rmask(2, 65, 0.2))
    make_case(o, "enc1_defaults", layers=1, B=1, K=3, N=4, meta_opts=False)
    make_case(o, "enc2_long", layers=2, norm_first=True, act="gelu", B=2, K=65, N=64, d=16,
              H=2, ff=24, xmask=rmask(2, 65, 0.1), cmask=rmask(2, 64, 0.1))
    make_case(o, "len1", K=1, N=0 + 1, B=2, d=8, H=1, ff=8)
    make_case(o, "full_row", layers=2, B=3, K=4, N=5, full_row=True,
              xmask=torch.tensor([[0, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]], dtype=torch.bool),
              cmask=torch.tensor([[0, 0, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]],
                                 dtype=torch.bool))
    make_case(o, "full_row_pre", layers=1, norm_first=True, act="gelu", B=2, K=3, N=2,
              full_row=True, xmask=torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool),
              cmask=torch.tensor([[1, 1], [0, 1]], dtype=torch.bool))
    mmca_case(o)
    cli_case(o)


if __name__ == "__main__":
    main()
