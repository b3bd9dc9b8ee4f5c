#!/usr/bin/env python3
"""Hand-run check of `xattn init multiview` against the PyTorch reference.

For each configuration, `xattn init multiview --views V --dims ... --heads ... --hiddens ...`
writes a file; the reference MultiscaleMultiview (tests/reference/gen_multiview.py) built with the
same constructor arguments must load it with load_state_dict(strict=True), and every parameter
must look like the reference's own fresh initialisation: constants (LayerNorm ones and zeros,
nn.MultiheadAttention's zero biases) exactly equal, random tensors with the largest magnitude and
the standard deviation inside the range that 20 fresh reference initialisations span (widened by
a small margin for the small tensors).

    python tests/reference/check_init_multiview.py build/xattn
"""
import os
import subprocess
import sys
import tempfile

import torch
from safetensors.torch import load_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gen_multiview import MultiscaleMultiview  # noqa: E402

CONFIGS = [
    # views, dims, heads, hiddens, extra xattn options, extra reference kwargs
    (2, [64], [4], [256], [], {}),
    (3, [32, 64, 96], [2, 4, 8], [128, 96, 384], ["--gelu", "tanh", "--eps", "1e-06"],
     {"gelu": "tanh", "eps": 1e-6}),
]
FRESH = 20


def envelope(fresh, name, n):
    """Range of (max |x|, std) of parameter `name` over fresh reference initialisations."""
    ps = [f[name].detach().double() for f in fresh]
    mx = [p.abs().max().item() for p in ps]
    sd = [p.std().item() for p in ps]
    margin = 1.0 + 4.0 / n ** 0.5
    return min(mx) / margin, max(mx) * margin, min(sd) / margin, max(sd) * margin


def check(xattn, views, dims, heads, hiddens, opts, kwargs):
    def build():
        return MultiscaleMultiview(views, dims, heads, hiddens, **kwargs)

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "mv.safetensors")
        cmd = [xattn, "init", "multiview", "--views", str(views),
               "--dims", ",".join(map(str, dims)), "--heads", ",".join(map(str, heads)),
               "--hiddens", ",".join(map(str, hiddens)), "--seed", "3", "--out", path] + opts
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        sd = load_file(path)
    ref = build()
    ref.load_state_dict({k: v.double() for k, v in sd.items()}, strict=True)
    inits = []
    for seed in range(FRESH):
        torch.manual_seed(seed)
        inits.append(dict(build().named_parameters()))
    fresh = inits[0]
    bad = 0
    for name, p in fresh.items():
        got = sd[name].double()
        p = p.detach()
        if torch.all(p == p.flatten()[0]):
            ok = torch.equal(got, p)
            what = f"constant {p.flatten()[0].item():g}"
        else:
            lo_m, hi_m, lo_s, hi_s = envelope(inits, name, got.numel())
            m, s = got.abs().max().item(), got.std().item()
            ok = lo_m <= m <= hi_m and lo_s <= s <= hi_s
            what = f"max {m:.4g} in [{lo_m:.4g}, {hi_m:.4g}], std {s:.4g} in [{lo_s:.4g}, {hi_s:.4g}]"
        if not ok:
            bad += 1
            print(f"  MISMATCH {name}: {what}")
    print(f"multiview views={views} dims={dims} heads={heads} hiddens={hiddens} {kwargs}: "
          f"{len(fresh)} parameters, strict load ok, {bad} mismatches")
    return bad


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    bad = sum(check(sys.argv[1], *c) for c in CONFIGS)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
