"""`xattn init mha` / `xattn init attention` against the PyTorch references (run by hand):

    python tests/reference/check_init_mha.py [path/to/xattn]     (default: build/xattn)

For each case: `xattn init KIND --ARG VALUE ... --out F`; the reference built with the same
constructor arguments (torch.nn.MultiheadAttention(batch_first=True), diffusers Attention) loads F
with load_state_dict(strict=True); every parameter's distribution is compared with the
reference's own fresh initialisation (zeros stay zeros; uniform: the same bound; normal: the same
standard deviation); and `xattn run` on F equals the reference's forward on the loaded weights.
"""
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from diffusers.models.attention_processor import Attention
from safetensors.torch import load_file

XATTN = sys.argv[1] if len(sys.argv) > 1 else os.path.join("build", "xattn")

CASES = [  # (kind, xattn arguments, reference constructor)
    ("mha", {"embed_dim": 64, "num_heads": 4},
     lambda: torch.nn.MultiheadAttention(64, 4, batch_first=True)),
    ("mha", {"embed_dim": 32, "num_heads": 4, "kdim": 24, "vdim": 40, "bias": False,
             "add_bias_kv": True, "add_zero_attn": True},
     lambda: torch.nn.MultiheadAttention(32, 4, bias=False, add_bias_kv=True, add_zero_attn=True,
                                         kdim=24, vdim=40, batch_first=True)),
    ("mha", {"embed_dim": 256, "num_heads": 8, "add_bias_kv": True},
     lambda: torch.nn.MultiheadAttention(256, 8, add_bias_kv=True, batch_first=True)),
    ("attention", {"query_dim": 64},
     lambda: Attention(64)),
    ("attention", {"query_dim": 32, "cross_attention_dim": 48, "heads": 4, "dim_head": 16,
                   "bias": True, "out_bias": False},
     lambda: Attention(32, cross_attention_dim=48, heads=4, dim_head=16, bias=True,
                       out_bias=False)),
    ("attention", {"query_dim": 32, "heads": 2, "dim_head": 8, "out_dim": 24},
     lambda: Attention(32, heads=2, dim_head=8, out_dim=24)),
    ("attention", {"query_dim": 16, "heads": 2, "dim_head": 8, "scale_qk": False,
                   "residual_connection": True, "rescale_output_factor": 2.0},
     lambda: Attention(16, heads=2, dim_head=8, scale_qk=False, residual_connection=True,
                       rescale_output_factor=2.0)),
]


def flag(name, value):
    return ["--" + name.replace("_", "-"), str(value)]


def same_distribution(name, got, ref):
    """got: xattn's tensor; ref: the reference's fresh one (same shape)."""
    assert got.shape == ref.shape, (name, got.shape, ref.shape)
    g, r = got.double().flatten(), ref.double().flatten()
    n = g.numel()
    if not r.any():
        assert not g.any(), f"{name}: the reference initialises zeros"
        return "zeros"
    # uniform U(-b, b): both bounded by the reference's bound b (estimated from many draws)
    ref_many = torch.cat([r] + [ref_like(name, ref).flatten() for _ in range(7)])
    b = ref_many.abs().max().item()
    kurt = ((ref_many - ref_many.mean()) ** 4).mean() / ref_many.var() ** 2
    sd_ratio = g.std().item() / ref_many.std().item()
    tol = 5 * (0.8 / n) ** 0.5 if kurt < 2.2 else 5 * (2.0 / n) ** 0.5
    assert abs(sd_ratio - 1) < max(tol, 0.02), f"{name}: sd ratio {sd_ratio:.3f}"
    if kurt < 2.2:  # uniform: same bound
        # the largest of N fresh draws is within b (1 - 10 / N) of the bound but for e^-10
        assert g.abs().max().item() <= b * (1 + 10.0 / ref_many.numel()), \
            f"{name}: exceeds the bound {b}"
        assert g.abs().max().item() >= b * (1 - 20.0 / n), f"{name}: far below the bound {b}"
        return f"uniform b={b:.4g}"
    return f"normal sd={ref_many.std().item():.4g}"


_FRESH = {}


def ref_like(name, ref):
    """Another fresh draw of parameter `name` from the reference's constructor."""
    make = _FRESH["make"]
    return dict(make().named_parameters())[name].detach()


def forward_check(kind, args, m, path, tmp):
    torch.manual_seed(1)
    B, I, J = 2, 5, 7
    if kind == "mha":
        E = args["embed_dim"]
        x = torch.randn(B, I, E)
        k = torch.randn(B, J, args.get("kdim", E))
        v = torch.randn(B, J, args.get("vdim", E))
        with torch.no_grad():
            want, _ = m(x, k, v, need_weights=False)
        extra = ["--value", os.path.join(tmp, "v.npy")]
        np.save(os.path.join(tmp, "v.npy"), v.numpy())
    else:
        x = torch.randn(B, I, args["query_dim"])
        k = torch.randn(B, J, args.get("cross_attention_dim", args["query_dim"]))
        with torch.no_grad():
            want = m(x, encoder_hidden_states=k)
        extra = []
    np.save(os.path.join(tmp, "x.npy"), x.numpy())
    np.save(os.path.join(tmp, "k.npy"), k.numpy())
    subprocess.run([XATTN, "run", path, "--x", os.path.join(tmp, "x.npy"), "--context",
                    os.path.join(tmp, "k.npy"), *extra, "--out-dir", tmp], check=True,
                   capture_output=True)
    got = np.load(os.path.join(tmp, "out.npy"))
    err = np.abs(got - want.numpy()).max() / (1 + np.abs(want.numpy()).max())
    assert err < 2e-5, f"forward differs: {err}"
    return err


def main():
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, args, make in CASES:
            path = os.path.join(tmp, "init.safetensors")
            cmd = [XATTN, "init", kind, "--out", path, "--seed", "3"]
            for a, v in args.items():
                cmd += flag(a, v)
            subprocess.run(cmd, check=True, capture_output=True)
            sd = load_file(path)
            m = make().eval()
            fresh = {n: p.detach().clone() for n, p in m.named_parameters()}
            m.load_state_dict(sd, strict=True)
            _FRESH["make"] = make
            print(f"{kind} {args}")
            for name, p in fresh.items():
                print(f"  {name:18s} {tuple(p.shape)!s:14s} "
                      f"{same_distribution(name, sd[name], p)}")
            print(f"  forward: max rel err {forward_check(kind, args, m, path, tmp):.2e}")
    print("all cases load with strict=True and match the reference's initialisation")


if __name__ == "__main__":
    main()
