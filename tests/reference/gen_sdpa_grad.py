"""Gradient fixtures for the fused attention backward, computed by torch.autograd in float64.

Run from the repository root after gen_sdpa.py (same pinned versions):
    python tests/reference/gen_sdpa_grad.py
For every tests/fixtures/sdpa_<case>.safetensors (q, k, v, out, [mask], [bias]; metadata causal,
scale, fill) writes tests/fixtures/sdpa_grad_<case>.safetensors holding `dout` (a seeded random
gradient of out, float32) and the float64 gradients (stored as float32) `dq`, `dk`, `dv` and,
when the case has a bias, `dbias` (reduced over the axes the bias broadcasts over, as autograd
does).

fill = "neg_inf": torch.nn.functional.scaled_dot_product_attention itself (PyTorch >= 2.5: a fully
masked row gives zeros and zero gradients). fill = "min_float": masked_fill with -finfo.max and
softmax, as lucidrains' packages compute it.
"""
import glob
import os

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def forward(q, k, v, mask, bias, causal, scale, fill):
    I, J = q.shape[-2], k.shape[-2]
    sc = scale if scale is not None else q.shape[-1] ** -0.5
    if fill == "neg_inf":
        am = mask if mask is not None else bias
        if causal and am is not None:
            tri = torch.ones(I, J, dtype=torch.bool).tril()
            am = (am & tri) if am.dtype == torch.bool else am.masked_fill(~tri, float("-inf"))
            return F.scaled_dot_product_attention(q, k, v, attn_mask=am, scale=scale)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=am, is_causal=causal, scale=scale)
    s = (q @ k.transpose(-1, -2)) * sc
    if bias is not None:
        s = s + bias
    keep = torch.ones(s.shape, dtype=torch.bool)
    if mask is not None:
        keep = keep & mask
    if causal:
        keep = keep & torch.ones(I, J, dtype=torch.bool).tril()
    return s.masked_fill(~keep, -torch.finfo(s.dtype).max).softmax(-1) @ v


def main():
    n = 0
    for path in sorted(glob.glob(os.path.join(OUT, "sdpa_*.safetensors"))):
        name = os.path.basename(path)
        if name.startswith("sdpa_grad_"):
            continue
        t = load_file(path)
        meta = safe_open(path, "pt").metadata()
        torch.manual_seed(n + 1)
        q, k, v = (t[x].double().requires_grad_(True) for x in ("q", "k", "v"))
        bias = t["bias"].double().requires_grad_(True) if "bias" in t else None
        scale = None if meta["scale"] == "none" else float(meta["scale"])
        out = forward(q, k, v, t.get("mask"), bias, meta["causal"] == "1", scale, meta["fill"])
        dout = torch.randn(out.shape).float()
        wrt = [q, k, v] + ([bias] if bias is not None else [])
        grads = torch.autograd.grad(out, wrt, dout.double())
        assert all(torch.isfinite(g).all() for g in grads), name
        res = {"dout": dout, "dq": grads[0].float(), "dk": grads[1].float(), "dv": grads[2].float()}
        if bias is not None:
            res["dbias"] = grads[3].float()
        save_file({a: b.contiguous() for a, b in res.items()},
                  os.path.join(OUT, name.replace("sdpa_", "sdpa_grad_", 1)))
        n += 1
    print(f"wrote {n} gradient fixtures")


if __name__ == "__main__":
    main()
