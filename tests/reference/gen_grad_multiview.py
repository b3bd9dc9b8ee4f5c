"""Gradient fixtures for the multiscale multiview module (kind multiview): torch.autograd in
float64 on the reference composition MultiscaleMultiview of gen_multiview.py (docs/multiview.md),
with variants built from the same standard modules (no biases, norms without affine weights or
without bias, MLP widths that differ per view and block):
    python tests/reference/gen_grad_multiview.py
Writes tests/fixtures/grad_multiview_<case>.safetensors and grad_multiview_list.inc.

Each file holds what grad_fixture.py describes, under the kind's names: input.xs.V (the views),
grad.input.xs.V, grad.PARAM, and dout.out.V for every output (grads= can leave some out: an
output without a gradient counts as 0).
"""
import os

import torch
from torch import nn
from safetensors.torch import save_file

from gen_multiview import MultiscaleMultiview
from grad_fixture import NAMES, OUT, f32, randn, randomize, write_list


def mlp(dim, hidden, gelu, bias=True):
    return nn.Sequential(nn.Linear(dim, hidden, bias=bias), nn.GELU(approximate=gelu),
                         nn.Linear(hidden, dim, bias=bias))


def strip(vs, dim, heads, eps, gelu):
    """One view of one stage without biases: attention bias=False, mlp/expand without bias,
    norm1 and cross_norm_kv without affine weights, the other norms without bias."""
    vs.self_attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
    vs.cross_attn = nn.MultiheadAttention(dim, heads, bias=False, batch_first=True)
    vs.norm1 = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
    vs.cross_norm_kv = nn.LayerNorm(dim, eps=eps, elementwise_affine=False)
    for n in ("norm2", "cross_norm_q", "cross_norm2"):
        setattr(vs, n, nn.LayerNorm(dim, eps=eps, bias=False))
    vs.mlp = mlp(dim, vs.mlp[0].out_features, gelu, bias=False)
    vs.cross_mlp = mlp(dim, vs.cross_mlp[0].out_features, gelu, bias=False)
    if hasattr(vs, "expand"):
        vs.expand = nn.Linear(vs.expand.in_features, dim, bias=False)


def case(name, views, dims, heads, hiddens, tokens, B=2, eps=1e-5, gelu="none", grads=None,
         heads_meta=None, nobias=False, widths=None, desc=""):
    meta_gelu, gelu = gelu, "none" if gelu == "erf" else gelu  # nn.GELU says 'none' for erf
    m = MultiscaleMultiview(views, dims, heads, hiddens, eps, gelu)
    for s, st in enumerate(m.stages):
        for v, vs in enumerate(st.views):
            if nobias and (s + v) % 2 == 0:
                strip(vs, dims[s], heads[s], eps, gelu)
            if widths and (s, v) in widths:  # (mlp hidden, cross_mlp hidden)
                h, ch = widths[(s, v)]
                vs.mlp, vs.cross_mlp = mlp(dims[s], h, gelu), mlp(dims[s], ch, gelu)
    randomize(m)
    xs = [f32(randn(B, n, dims[0])).requires_grad_(True) for n in tokens]
    outs = m(xs)
    grads = range(len(outs)) if grads is None else grads
    douts = [f32(randn(*o.shape)) if v in grads else torch.zeros_like(o)
             for v, o in enumerate(outs)]
    params = dict(m.named_parameters())
    g = torch.autograd.grad(outs, xs + list(params.values()), douts)
    t = {k: v.detach().float() for k, v in m.state_dict().items()}
    for v in range(views):
        t[f"input.xs.{v}"] = xs[v].detach().float()
        t[f"grad.input.xs.{v}"] = g[v].float()
    for v in grads:
        t[f"dout.out.{v}"] = douts[v].float()
    for k, gk in zip(params, g[views:]):
        assert torch.isfinite(gk).all(), (name, k)
        t["grad." + k] = gk.float()
    meta = {"heads": heads_meta or ",".join(str(h) for h in heads), "gelu": meta_gelu,
            "eps": repr(eps), "description": desc}
    fn = f"grad_multiview_{name}.safetensors"
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, fn), metadata=meta)
    NAMES.append(fn)


def main():
    case("v2_s1", 2, [8], [2], [16], [5, 7], desc="V=2, one stage, erf GELU ('none')")
    case("v3_s2_odd_tanh", 3, [8, 12], [2, 3], [16, 24], [9, 4, 3], gelu="tanh",
         desc="V=3, two stages, 9 -> 4 and 3 -> 1 tokens (odd last dropped), tanh GELU, "
              "gradients of out.0 and out.2")
    case("v3_s2_len1", 3, [6, 8], [3, 2], [12, 8], [2, 3, 5], B=1,
         desc="V=3, two stages, 2 -> 1 token, batch 1, gradients of out.1 and out.2")
    case("v2_s3_eps", 2, [4, 8, 12], [1, 2, 3], [8, 20, 24], [33, 6], B=3, eps=1e-6,
         desc="V=2, three stages, 33 -> 16 -> 8 and 6 -> 3 -> 1 tokens, eps 1e-6, batch 3")
    case("v3_single", 3, [12], [3], [24], [1, 1, 2], heads_meta="3", gelu="erf",
         desc="V=3, one stage, single-token views, one heads value, __metadata__ gelu 'erf'")
    case("v2_long", 2, [8, 8, 16], [2, 1, 4], [16, 12, 32], [131, 70], B=2,
         desc="V=2, three stages, 131 -> 65 -> 32 and 70 -> 35 -> 17 tokens (not multiples "
              "of kernel tiles)")
    case("v2_s1_long", 2, [8], [4], [16], [70, 130], B=1, gelu="tanh",
         desc="V=2, one stage, 70 and 130 tokens, tanh GELU")
    case("nobias", 2, [8, 12], [2, 4], [16, 24], [7, 6], nobias=True,
         desc="V=2, two stages, views without biases (attention bias=False, mlp and expand "
              "without bias, norm1 and cross_norm_kv without affine, other norms bias=False)")
    case("nobias_v3", 3, [6], [2], [12], [4, 5, 3], gelu="tanh", nobias=True,
         desc="V=3, one stage, views 0 and 2 without biases, tanh GELU")
    case("widths", 3, [8, 8], [2, 8], [16, 16], [6, 9, 4],
         widths={(0, 0): (5, 24), (0, 2): (32, 3), (1, 1): (1, 40)},
         desc="V=3, two stages, MLP widths differing per view and block (1 .. 40), 8 heads "
              "of width 1")
    write_list("grad_multiview_list.inc", "gen_grad_multiview.py")


if __name__ == "__main__":
    main()
