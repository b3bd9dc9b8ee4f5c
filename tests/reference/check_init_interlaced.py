#!/usr/bin/env python3
"""Hand-run check of `xattn init interlaced` against InterlanceDecoder of jimmy15923/mit (the
transcription in gen_interlaced.py, same module and parameter names; not part of ctest: it needs
PyTorch).

The reference has no initialisation of its own (no _init_weights; MIT's model applies none to
the decoder): nn.Linear (kaiming_uniform(a=sqrt(5)) weights = U(+-1/sqrt(fan_in)), biases
U(+-1/sqrt(fan_in))) and nn.LayerNorm (ones, zeros). For each case the reference is built with
the same constructor arguments, the file of `xattn init interlaced --ARG VALUE ...` is loaded
with load_state_dict(strict=True), constants must equal the reference's fresh ones, and random
parameters must lie within the bound, reach near it and have the standard deviation b / sqrt(3),
as the reference's own fresh values do.

    /root/.venvs/ref/bin/python tests/reference/check_init_interlaced.py [--xattn build/xattn]
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import torch
from safetensors import safe_open
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_interlaced import InterlanceDecoder  # noqa: E402

torch.set_default_dtype(torch.float32)  # gen_interlaced computes its fixtures in float64

CASES = [
    dict(),  # every default: embed_dim 384, depth 4, 20 classes, 6 heads, mlp_ratio 0.2
    dict(embed_dim=24, depth=3, num_heads=4, qkv_bias=True),
    dict(embed_dim=32, depth=2, num_classes=3, num_heads=2, mlp_ratio=4.0),
    dict(embed_dim=16, depth=1, num_heads=4, mlp_ratio=1.0, qk_scale=0.5),
]


def bound(name, p, sd):
    """The reference's init of parameter `name`: ('const', value) or ('uniform', b)."""
    if ".norm" in name:
        return ("const", 1.0 if name.endswith("weight") else 0.0)
    if name.endswith("weight"):
        return ("uniform", 1.0 / math.sqrt(p.shape[1]))
    w = sd[name[: -len("bias")] + "weight"]
    return ("uniform", 1.0 / math.sqrt(w.shape[1]))


def check_uniform(name, t, b, who, failures):
    n = t.numel()
    mx, sd = t.abs().max().item(), t.std().item()
    tol_sd = 5 * math.sqrt(0.8 / n) / 2
    low = b * (1 - 20.0 / n)  # P(max < low) = e^-20 per tensor
    if mx > b * (1 + 1e-6) or mx < low or abs(sd / (b / math.sqrt(3)) - 1) > tol_sd:
        failures.append(f"{who} {name}: max {mx:.6g} (bound {b:.6g}), sd {sd:.6g} "
                        f"(want {b / math.sqrt(3):.6g})")


def run_case(xattn, c, seed, failures):
    ref = InterlanceDecoder(**c)
    fresh = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    args = []
    for k, v in c.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "init.safetensors")
        subprocess.run([xattn, "init", "interlaced", "--seed", str(seed), "--out", path] + args,
                       check=True, stdout=subprocess.DEVNULL)
        sd = load_file(path)
        with safe_open(path, "pt") as f:
            meta = f.metadata()
    ref.load_state_dict(sd, strict=True)  # raises on a missing, unexpected or misshapen tensor
    want = {"heads": c.get("num_heads", 6), "n_cls": c.get("num_classes", 20)}
    for k, v in want.items():
        if meta.get(k) != str(v):
            failures.append(f"{c}: __metadata__ {k} is {meta.get(k)}, not {v}")
    if "qk_scale" in c and float(meta.get("qk_scale", "nan")) != c["qk_scale"]:
        failures.append(f"{c}: __metadata__ qk_scale is {meta.get('qk_scale')}")
    for name, t in sd.items():
        kind, val = bound(name, t, sd)
        if kind == "const":
            if not torch.equal(t, fresh[name].to(t.dtype)) or not torch.all(t == val):
                failures.append(f"{c} {name}: not the constant {val}")
            continue
        if t.numel() < 64:
            continue  # too few values for the moments; the bound still holds
        check_uniform(name, fresh[name], val, "reference", failures)
        check_uniform(name, t, val, f"xattn {c}", failures)
    print(f"ok: interlaced {c}: {len(sd)} tensors load with strict=True")


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--xattn", default=os.path.join(here, "..", "..", "build", "xattn"))
    xattn = ap.parse_args().xattn
    failures = []
    for i, c in enumerate(CASES):
        run_case(xattn, c, 200 + i, failures)
    for f in failures:
        print("FAIL:", f)
    print(f"check_init_interlaced: {len(CASES)} cases, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
