"""Gradient fixtures for the bidirectional modules, computed by torch.autograd in float64 on the
REAL PyPI package (bidirectional-cross-attention 0.1.0).

Run from the repository root after gen_bidir.py (same pinned versions):
    python tests/reference/gen_bidir_grad.py
For every tests/fixtures/bidir_<case>.safetensors (the module's state_dict, input.*, metadata
'module' with the constructor call) writes tests/fixtures/bidir_grad_<case>.safetensors holding
  * dout.out, dout.context_out: seeded random gradients of the two outputs (float32),
  * grad.<name> for every parameter of the state dict (float64 autograd, stored as float32),
  * grad.input.x, grad.input.context and, when the case has one, grad.input.rel_pos_bias.
  * __metadata__ torch_fp32_err: the largest error, max |g - ref| / (1 + |ref|), of the same
    gradients taken by the package in float32 (weights and inputs as stored): the float32
    accuracy the work allows. Above 1e-4 only where the fixture is ill-conditioned on purpose
    (tf_tiny_inputs: streams of scale 1e-3 make every RMSNorm's eps visible).
The module is rebuilt from the constructor call with the same deviations as gen_bidir.py
(RMSNorm eps = FLT_EPSILON in float64; the 0.0.x LayerNorm prenorm; the final context_norm of
size context_dim); the stored weights and inputs (whatever their dtype) are used in float64.
"""
import glob
import os
import warnings

import torch
from torch import nn
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from bidirectional_cross_attention import (BidirectionalCrossAttention,  # noqa: F401 (eval)
                                           BidirectionalCrossAttentionTransformer)

warnings.filterwarnings("ignore")
torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
FLT_EPS = float(torch.finfo(torch.float32).eps)


def build(meta):
    call = meta["module"].split(" with ")[0]
    m = eval(call)
    if meta["prenorm"] == "layer":
        m.norm = nn.LayerNorm(int(meta["dim"]))
        m.context_norm = nn.LayerNorm(int(meta["context_dim"]))
    if meta["kind"] == "transformer" and meta["final_norms"] == "True" and \
            int(meta["context_norm_dim"]) != int(meta["dim"]):
        m.context_norm = nn.RMSNorm(int(meta["context_norm_dim"]))
    for mod in m.modules():
        if isinstance(mod, nn.RMSNorm):
            mod.eps = FLT_EPS
    return m


def fp32_error(meta, t, sd, res):
    """The package's own float32 gradients against the float64 ones in res."""
    torch.set_default_dtype(torch.float32)
    try:
        m = build(meta).float()
        m.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        x = t["input.x"].float().requires_grad_(True)
        c = t["input.context"].float().requires_grad_(True)
        b = t["input.rel_pos_bias"].float().requires_grad_(True) if "input.rel_pos_bias" in t else None
        out, cout = m(x, c, mask=t.get("input.mask"), context_mask=t.get("input.context_mask"),
                      rel_pos_bias=b)[:2]
        params = dict(m.named_parameters())
        names = ["input.x", "input.context"] + (["input.rel_pos_bias"] if b is not None else []) + \
            list(params)
        wrt = [x, c] + ([b] if b is not None else []) + list(params.values())
        grads = torch.autograd.grad([out, cout], wrt, [res["dout.out"], res["dout.context_out"]],
                                    allow_unused=True)
        err = 0.0
        for n, g in zip(names, grads):
            ref = res["grad." + n]
            g = torch.zeros_like(ref) if g is None else g
            err = max(err, ((g - ref).abs() / (1 + ref.abs())).max().item())
        return err
    finally:
        torch.set_default_dtype(torch.float64)


def main():
    n = 0
    for path in sorted(glob.glob(os.path.join(OUT, "bidir_*.safetensors"))):
        name = os.path.basename(path)
        if name.startswith("bidir_grad_"):
            continue
        meta = safe_open(path, "pt").metadata()
        t = {k: v for k, v in load_file(path).items()}
        m = build(meta)
        sd = {k: v.double() for k, v in t.items() if not k.startswith(("input.", "expected."))}
        m.load_state_dict(sd, strict=True)
        x = t["input.x"].double().requires_grad_(True)
        c = t["input.context"].double().requires_grad_(True)
        bias = t["input.rel_pos_bias"].double().requires_grad_(True) if "input.rel_pos_bias" in t else None
        out, cout = m(x, c, mask=t.get("input.mask"), context_mask=t.get("input.context_mask"),
                      rel_pos_bias=bias)[:2]
        g = torch.Generator().manual_seed(1000 + n)
        dout = torch.randn(out.shape, generator=g).float()
        dcout = torch.randn(cout.shape, generator=g).float()
        params = dict(m.named_parameters())
        wrt = [x, c] + ([bias] if bias is not None else []) + list(params.values())
        grads = torch.autograd.grad([out, cout], wrt, [dout.double(), dcout.double()],
                                    allow_unused=True)
        res = {"dout.out": dout, "dout.context_out": dcout,
               "grad.input.x": grads[0].float(), "grad.input.context": grads[1].float()}
        k = 2
        if bias is not None:
            res["grad.input.rel_pos_bias"] = grads[2].float()
            k = 3
        for (pname, p), gr in zip(params.items(), grads[k:]):
            res["grad." + pname] = (gr if gr is not None else torch.zeros_like(p)).float()
        assert all(torch.isfinite(v).all() for v in res.values()), name
        err = fp32_error(meta, t, sd, res)
        save_file({a: b.contiguous() for a, b in res.items()},
                  os.path.join(OUT, name.replace("bidir_", "bidir_grad_", 1)),
                  metadata={"torch_fp32_err": f"{err:.3e}"})
        print(f"{name}: torch float32 gradients within {err:.2e}")
        n += 1
    print(f"wrote {n} gradient fixtures")


if __name__ == "__main__":
    main()
