#!/usr/bin/env python3
"""Hand-run check of `xattn init joint` against torch.nn.TransformerEncoderLayer /
nn.TransformerEncoder (not part of ctest: it needs PyTorch).

For each case the reference module is built with the same constructor arguments, the file that
`xattn init joint --ARG VALUE ...` writes is loaded into it with load_state_dict(strict=True),
and every parameter is compared with the reference's own fresh initialisation:
  * constant parameters (LayerNorm weights / biases, MultiheadAttention's zeroed in_proj_bias
    and out_proj.bias) must be equal to the reference's,
  * random ones must lie within the bound of the reference's init (xavier_uniform for
    in_proj_weight; kaiming_uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) for the nn.Linear weights
    and U(+-1/sqrt(fan_in)) for their biases), reach near it, and have the standard deviation
    b / sqrt(3) of U(-b, b) within sampling error, as the reference's fresh values do,
  * nn.TransformerEncoder deep-copies its layer, so every layer of a new stack equals layer 0:
    in the reference and in the xattn file.

    /root/.venvs/ref/bin/python tests/reference/check_init_joint.py [--xattn build/xattn]
"""
import argparse
import math
import os
import subprocess
import sys
import tempfile

import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import load_file

CASES = [
    dict(d_model=16, nhead=4),
    dict(d_model=32, nhead=4, dim_feedforward=96, activation="gelu", norm_first=True,
         layer_norm_eps=1e-6),
    dict(d_model=24, nhead=3, dim_feedforward=40, bias=False),
    dict(d_model=16, nhead=2, dim_feedforward=48, num_layers=3, norm=True),
    dict(d_model=16, nhead=2, dim_feedforward=32, num_layers=2, norm=True, bias=False),
    dict(d_model=64, nhead=8, num_layers=2),
]


def build_reference(c):
    layer = nn.TransformerEncoderLayer(
        c["d_model"], c["nhead"], dim_feedforward=c.get("dim_feedforward", 2048),
        activation=c.get("activation", "relu"), layer_norm_eps=c.get("layer_norm_eps", 1e-5),
        batch_first=True, norm_first=c.get("norm_first", False), bias=c.get("bias", True))
    if "num_layers" not in c:
        return layer
    norm = None
    if c.get("norm"):
        norm = nn.LayerNorm(c["d_model"], eps=c.get("layer_norm_eps", 1e-5),
                            bias=c.get("bias", True))
    return nn.TransformerEncoder(layer, c["num_layers"], norm=norm, enable_nested_tensor=False)


def bound(name, p, sd):
    """The reference's init of parameter `name`: ('const', value) or ('uniform', b)."""
    if "norm" in name:
        return ("const", 1.0 if name.endswith("weight") else 0.0)
    if name.endswith("in_proj_bias") or name.endswith("out_proj.bias"):
        return ("const", 0.0)
    if name.endswith("in_proj_weight"):
        return ("uniform", math.sqrt(6.0 / (p.shape[0] + p.shape[1])))
    if name.endswith("weight"):
        return ("uniform", 1.0 / math.sqrt(p.shape[1]))
    w = sd[name[: -len("bias")] + "weight"]
    return ("uniform", 1.0 / math.sqrt(w.shape[1]))


def check_uniform(name, t, b, who, failures):
    n = t.numel()
    mx, sd = t.abs().max().item(), t.std().item()
    tol_sd = 5 * math.sqrt(0.8 / n) / 2 + 1e-12  # relative sd of a sample sd of a uniform
    low = b * (1 - 20.0 / n)  # P(max < low) = e^-20 per tensor
    if mx > b * (1 + 1e-6) or mx < low or abs(sd / (b / math.sqrt(3)) - 1) > tol_sd:
        failures.append(f"{who} {name}: max {mx:.6g} (bound {b:.6g}), sd {sd:.6g} "
                        f"(want {b / math.sqrt(3):.6g})")


def run_case(xattn, c, seed, failures):
    ref = build_reference(c)
    fresh = {k: v.detach().clone() for k, v in ref.state_dict().items()}
    args = []
    for k, v in c.items():
        args += ["--" + k.replace("_", "-"), str(v)]
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "init.safetensors")
        subprocess.run([xattn, "init", "joint", "--seed", str(seed), "--out", path] + args,
                       check=True, stdout=subprocess.DEVNULL)
        sd = load_file(path)
        with safe_open(path, "pt") as f:
            meta = f.metadata()
    ref.load_state_dict(sd, strict=True)  # raises on a missing, unexpected or misshapen tensor
    if meta.get("heads") != str(c["nhead"]):
        failures.append(f"{c}: __metadata__ heads is {meta.get('heads')}")
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
    for name, t in sd.items():  # deep copies: layer l == layer 0
        if name.startswith("layers.") and not name.startswith("layers.0."):
            first = "layers.0." + name.split(".", 2)[2]
            if not torch.equal(t, sd[first]) or not torch.equal(fresh[name], fresh[first]):
                failures.append(f"{c} {name}: differs from {first}")
    print(f"ok: joint {c}: {len(sd)} tensors load with strict=True")


def main():
    ap = argparse.ArgumentParser()
    here = os.path.dirname(os.path.abspath(__file__))
    ap.add_argument("--xattn", default=os.path.join(here, "..", "..", "build", "xattn"))
    xattn = ap.parse_args().xattn
    failures = []
    for i, c in enumerate(CASES):
        run_case(xattn, c, 100 + i, failures)
    for f in failures:
        print("FAIL:", f)
    print(f"check_init_joint: {len(CASES)} cases, {len(failures)} failures")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
