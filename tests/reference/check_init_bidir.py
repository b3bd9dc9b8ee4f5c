#!/usr/bin/env python3
"""Hand-run check of `xattn init bidir` / `xattn init bidir-transformer` against the PyPI package
bidirectional-cross-attention 0.1.0 (not part of ctest: it needs PyTorch).

For each case the reference module is built with the same constructor arguments (for the 0.0.x
LayerNorm prenorm, a 0.1.0 module with prenorm=True whose norm / context_norm are replaced by
nn.LayerNorm, as tests/reference/gen_bidir.py does), the file that
`xattn init KIND --ARG VALUE ...` writes is loaded into it with load_state_dict(strict=True),
and every parameter is compared with the reference's own fresh initialisation:
  * constant parameters (RMSNorm / LayerNorm weights, LayerNorm biases) must equal the
    reference's,
  * random ones (nn.Linear weights and biases, the talking-heads nn.Conv2d(heads, heads, 1)
    weights, all kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)), biases U(+-1/sqrt(fan_in)))
    must lie within the bound, reach near it, and have the standard deviation b / sqrt(3) of
    U(-b, b) within sampling error, as the reference's fresh values do,
  * the file runs in the reference: its forward on random inputs equals `xattn run` on them.

    /root/.venvs/ref/bin/python tests/reference/check_init_bidir.py [--xattn build/xattn]
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

from bidirectional_cross_attention import (BidirectionalCrossAttention,
                                           BidirectionalCrossAttentionTransformer)

CASES = [
    ("bidir", dict(dim=16)),
    ("bidir", dict(dim=32, context_dim=24, heads=4, dim_head=16, talking_heads=True,
                   prenorm=True)),
    ("bidir", dict(dim=16, context_dim=12, heads=2, dim_head=8, prenorm=True, layernorm=True)),
    ("bidir", dict(dim=8, heads=16, dim_head=4, talking_heads=True)),
    ("bidir-transformer", dict(dim=16, depth=2, context_dim=12, heads=2, dim_head=8)),
    ("bidir-transformer", dict(dim=24, depth=1, ff_expansion_factor=1.5, final_norms=True,
                               heads=3, dim_head=8, talking_heads=True)),
    ("bidir-transformer", dict(dim=20, depth=2, context_dim=14, ff_expansion_factor=2.5,
                               heads=4, dim_head=16)),
]


def build_reference(kind, c):
    c = dict(c)
    layernorm = c.pop("layernorm", False)
    if kind == "bidir-transformer":
        return BidirectionalCrossAttentionTransformer(**c)
    m = BidirectionalCrossAttention(**c)
    if layernorm:  # version 0.0.x: nn.LayerNorm prenorm
        m.norm = nn.LayerNorm(c["dim"])
        m.context_norm = nn.LayerNorm(c.get("context_dim", c["dim"]))
    return m


def bound(name, t, sd):
    """The reference's init of parameter `name`: ('const', value) or ('uniform', b)."""
    leaf = name.rsplit(".", 2)
    if "norm." in name or (len(leaf) == 3 and leaf[1] == "0" and name.startswith("layers.")
                           and name.split(".")[2] in ("1", "2")):
        return ("const", 1.0 if name.endswith("weight") else 0.0)
    if name.endswith("weight"):  # nn.Linear and the 1x1 nn.Conv2d: fan_in = shape[1] * kernel
        return ("uniform", 1.0 / math.sqrt(t[0].numel()))
    w = sd[name[: -len("bias")] + "weight"]
    return ("uniform", 1.0 / math.sqrt(w[0].numel()))


def check_uniform(name, t, b, who, failures):
    n = t.numel()
    mx, sd = t.abs().max().item(), t.std().item()
    tol_sd = 5 * math.sqrt(0.8 / n) / 2 + 1e-12  # relative sd of a sample sd of a uniform
    low = b * (1 - 20.0 / n)  # P(max < low) = e^-20 per tensor
    if mx > b * (1 + 1e-6) or mx < low or abs(sd / (b / math.sqrt(3)) - 1) > tol_sd:
        failures.append(f"{who} {name}: max {mx:.6g} (bound {b:.6g}), sd {sd:.6g} "
                        f"(want {b / math.sqrt(3):.6g})")


def forward_matches(xattn, kind, c, ref, path, d, failures):
    """The reference's forward on the file's weights equals `xattn run` (float32, 2e-5)."""
    g = torch.Generator().manual_seed(7)
    dim, cdim = c["dim"], c.get("context_dim", c["dim"])
    x = torch.randn(2, 5, dim, generator=g)
    ctx = torch.randn(2, 7, cdim, generator=g)
    np.save(os.path.join(d, "x.npy"), x.numpy())
    np.save(os.path.join(d, "c.npy"), ctx.numpy())
    subprocess.run([xattn, "run", path, "--x", os.path.join(d, "x.npy"), "--context",
                    os.path.join(d, "c.npy"), "--out-dir", d], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with torch.no_grad():
        out, cout = ref.eval()(x, ctx)
    for want, got in ((out, "out.npy"), (cout, "context_out.npy")):
        have = torch.from_numpy(np.load(os.path.join(d, got)))
        err = ((have - want).abs() / (1 + want.abs())).max().item()
        if err > 2e-5:
            failures.append(f"{kind} {c}: {got} differs from the reference by {err:.3g}")


def run_case(xattn, kind, c, seed, failures):
    ref = build_reference(kind, c)
    fresh = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    args = []
    for k, v in c.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "init.safetensors")
        subprocess.run([xattn, "init", kind, "--seed", str(seed), "--out", path] + args,
                       check=True, stdout=subprocess.DEVNULL)
        sd = load_file(path)
        with safe_open(path, "pt") as f:
            meta = f.metadata()
        ref.load_state_dict(sd, strict=True)  # raises on a missing, unexpected or misshapen tensor
        forward_matches(xattn, kind, c, ref, path, d, failures)
    for key in ("heads", "dim_head"):
        want = str(c.get(key, {"heads": 8, "dim_head": 64}[key]))
        if meta.get(key) != want:
            failures.append(f"{kind} {c}: __metadata__ {key} is {meta.get(key)}, not {want}")
    for name, t in sd.items():
        how, val = bound(name, t, sd)
        if how == "const":
            if not torch.equal(t, fresh[name].to(t.dtype)) or not torch.all(t == val):
                failures.append(f"{kind} {c} {name}: not the constant {val}")
            continue
        if t.numel() < 64:
            continue  # too few values for the moments; the bound still holds
        check_uniform(name, fresh[name], val, "reference", failures)
        check_uniform(name, t, val, f"xattn {kind} {c}", failures)
    print(f"ok: {kind} {c}: {len(sd)} tensors load with strict=True")


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--xattn", default=os.path.join(here, "..", "..", "build", "xattn"))
    xattn = ap.parse_args().xattn
    torch.manual_seed(0)
    failures = []
    for i, (kind, c) in enumerate(CASES):
        run_case(xattn, kind, c, 100 + i, failures)
    for f in failures:
        print("FAIL:", f)
    print(f"check_init_bidir: {len(CASES)} cases, {len(failures)} failures")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
