"""PyTorch side of bench_conv2d: the corrected seed-004 CrossAttention (see
tests/reference/gen_conv2d.py) on the same sizes, same thread count, printed as JSON lines
{"name", "seconds", "threads", "torch"}.

    python bench/torch_conv2d.py --threads 2 [--reps 7]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from gen_conv2d import CrossAttention  # noqa: E402


def med_time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    for B, C, H1, W1, H2, W2 in [(2, 64, 32, 32, 16, 16), (1, 128, 64, 64, 64, 64)]:
        m = CrossAttention(C, C).eval()
        x1, x2 = torch.randn(B, C, H1, W1), torch.randn(B, C, H2, W2)
        with torch.inference_mode():
            t = med_time(lambda: m(x1, x2), a.reps)
        P1, P2 = H1 * W1, H2 * W2
        flop = 2.0 * B * (P1 + 2.0 * P2) * C * C + 4.0 * B * P1 * P2 * C
        print(json.dumps({"name": f"conv2d-cross B={B} C={C} x1={H1}x{W1} x2={H2}x{W2}",
                          "seconds": t, "gflops": flop / t / 1e9, "threads": a.threads,
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main()
