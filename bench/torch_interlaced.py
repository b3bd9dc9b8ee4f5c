"""PyTorch side of bench/bench_interlaced.c: the same InterlanceDecoder forward (the PyTorch
transcription of jimmy15923/mit in tests/reference/gen_interlaced.py, float32, eval,
inference_mode), same sizes and thread count, printed as JSON lines with the same "name" strings.

    python bench/torch_interlaced.py --threads 2 [--reps 7]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference"))
from gen_interlaced import InterlanceDecoder  # noqa: E402

torch.set_default_dtype(torch.float32)  # the generator switches to float64


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
    torch.manual_seed(0)
    for depth, D, H, n_cls, B, I, J in [(4, 192, 6, 20, 1, 1044, 532), (2, 96, 6, 20, 4, 148, 84)]:
        m = InterlanceDecoder(embed_dim=D, depth=depth, num_classes=n_cls, num_heads=H,
                              mlp_ratio=0.2).float().eval()
        x, c = torch.randn(B, I, D) * 1.2, torch.randn(B, J, D) * 1.2
        with torch.inference_mode():
            t = med_time(lambda: m(x, c), a.reps)
        print(json.dumps({"name": f"interlaced depth={depth} D={D} heads={H} n_cls={n_cls} B={B} "
                                  f"I={I} J={J}", "seconds": t, "threads": a.threads,
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main()
