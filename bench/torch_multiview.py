#!/usr/bin/env python3
"""The M6 benchmark of bench/bench_multiview.c in PyTorch: the reference composition
MultiscaleMultiview (tests/reference/gen_multiview.py) in float32, eval, no_grad, at the same
configuration and thread count. Prints JSON lines {"name", "seconds", "threads", "torch"}.

    python bench/torch_multiview.py [--threads N] [--reps N]
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from gen_multiview import MultiscaleMultiview  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    B, dims, heads, tokens = 2, [96, 192, 384], [2, 4, 8], [1024, 512, 768]
    model = MultiscaleMultiview(3, dims, heads, [4 * c for c in dims]).float().eval()
    xs = [torch.randn(B, n, dims[0]) for n in tokens]
    with torch.inference_mode():
        model(xs)
        ts = []
        for _ in range(a.reps):
            t0 = time.perf_counter()
            model(xs)
            ts.append(time.perf_counter() - t0)
    ts.sort()
    print(json.dumps({"name": "multiview V=3 B=2 N=1024,512,768 C=96,192,384 heads=2,4,8 mlp=4",
                      "seconds": ts[len(ts) // 2], "threads": a.threads,
                      "torch": torch.__version__}))


if __name__ == "__main__":
    main()
