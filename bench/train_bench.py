"""One training step (forward, MSE loss, backward, AdamW update) of BidirectionalCrossAttention
and of a depth-2 BidirectionalCrossAttentionTransformer: the PyPI package under PyTorch against
`xattn train` on the same model, data and thread count, in the same run. The seed's shapes by
default: video (1, 4096, 512) <-> audio (1, 8192, 386), 8 heads x 64.

    python bench/train_bench.py [--threads 2] [--quick] [--xattn build/xattn] [--steps 3]

Time: the median step of --steps steps (after one warm-up step for PyTorch; xattn's median
includes none). Memory: PyTorch's peak resident size for the whole process (interpreter and
torch included) and net of its baseline (after `import torch` and building the module, before
the data exist); xattn's is its whole process (VmHWM), which starts without an interpreter.
Writes bench/results/train.json and train_summary.md (bench/results/quick/ with --quick).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from machine import reset_peak, status_mb  # noqa: E402
import machine  # noqa: E402


def torch_step(m, x, c, t, ct, opt):
    o, co = m(x, c)[:2]
    loss = nn.functional.mse_loss(o, t) + nn.functional.mse_loss(co, ct)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


def bench_one(name, make, a, I, J, dim, cdim, d):
    from bidirectional_cross_attention import (BidirectionalCrossAttention,  # noqa: F401
                                               BidirectionalCrossAttentionTransformer)
    torch.manual_seed(0)
    m = make()
    path = os.path.join(d, f"{name}.safetensors")
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, path, metadata={"heads": "8"})
    base = status_mb("VmRSS")
    reset_peak()
    x, c = torch.randn(1, I, dim), torch.randn(1, J, cdim)
    t, ct = torch.randn(1, I, dim), torch.randn(1, J, cdim)
    for n, v in (("x", x), ("c", c), ("t", t), ("ct", ct)):
        np.save(os.path.join(d, f"{n}.npy"), v.numpy())
    opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
    torch_step(m, x, c, t, ct, opt)  # warm-up
    ts = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        torch_step(m, x, c, t, ct, opt)
        ts.append(time.perf_counter() - t0)
    hwm = status_mb("VmHWM")
    del m, x, c, t, ct, opt
    cmd = [a.xattn, "train", path, "--x", f"{d}/x.npy", "--context", f"{d}/c.npy", "--target",
           f"{d}/t.npy", "--context-target", f"{d}/ct.npy", "--steps", str(a.steps), "--lr", "1e-4",
           "--out", f"{d}/out.safetensors", "--threads", str(a.threads)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"train_bench: xattn train failed: {r.stderr}")
    line = next(l for l in r.stdout.splitlines() if l.startswith("median step"))
    xs = float(line.split()[2])
    xr = float(line.split("peak RSS ")[1].split()[0])
    return {"name": f"{name} I={I} J={J} dim={dim} context_dim={cdim} heads=8 dim_head=64",
            "torch_seconds": statistics.median(ts), "xattn_seconds": xs,
            "torch_peak_rss_mb": hwm, "torch_baseline_rss_mb": base,
            "torch_net_peak_mb": hwm - base if hwm and base else None, "xattn_peak_rss_mb": xr,
            "threads": a.threads, "torch": torch.__version__}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default="")
    ap.add_argument("--xattn", default=os.path.join(HERE, "..", "build", "xattn"))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    I, J = (1024, 2048) if a.quick else (4096, 8192)
    dim, cdim = 512, 386
    out = os.path.join(HERE, "results", "quick" if a.quick else "")
    os.makedirs(out, exist_ok=True)
    mach = machine.record(os.path.dirname(os.path.abspath(a.xattn)), a.threads)
    from bidirectional_cross_attention import (BidirectionalCrossAttention,
                                               BidirectionalCrossAttentionTransformer)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        if a.only in ("", "bca"):
            rows.append(bench_one("BidirectionalCrossAttention", lambda: BidirectionalCrossAttention(
                dim=dim, heads=8, dim_head=64, context_dim=cdim), a, I, J, dim, cdim, d))
            print(json.dumps(rows[-1]), flush=True)
        if a.only in ("", "tf"):
            rows.append(bench_one("BidirectionalCrossAttentionTransformer depth=2",
                                  lambda: BidirectionalCrossAttentionTransformer(
                                      dim=dim, depth=2, context_dim=cdim, heads=8, dim_head=64),
                                  a, I, J, dim, cdim, d))
            print(json.dumps(rows[-1]), flush=True)
    with open(os.path.join(out, "train.json"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    lines = [f"One training step (forward + MSE + backward + AdamW), fp32, {a.threads} threads, "
             f"{mach.get('cpu', '?')}, xattn kernel set {mach.get('isa', '?')}, measured FMA peak "
             f"{mach.get('peak_gflops', '?')} GFLOP/s; PyTorch {torch.__version__}.", "",
             "| module | PyTorch step | xattn step | speed-up | PyTorch peak RSS (whole / net of "
             "baseline) | xattn peak RSS (whole) | ratio whole / net |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        net = r["torch_net_peak_mb"]
        lines.append(f"| {r['name']} | {r['torch_seconds']:.2f} s | {r['xattn_seconds']:.2f} s | "
                     f"{r['torch_seconds'] / r['xattn_seconds']:.2f}x | {r['torch_peak_rss_mb']:.0f} / "
                     f"{net:.0f} MB | {r['xattn_peak_rss_mb']:.0f} MB | "
                     f"1/{r['torch_peak_rss_mb'] / r['xattn_peak_rss_mb']:.1f} / "
                     f"1/{net / r['xattn_peak_rss_mb']:.1f} |")
    with open(os.path.join(out, "train_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
