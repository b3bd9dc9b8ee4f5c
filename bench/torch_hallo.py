"""PyTorch side of bench_hallo: the audio path of HALLO's AudioTemporalBasicTransformerBlock
(tests/reference/gen_hallo.py, built from diffusers' Attention and FeedForward) and the mask
pyramid (F.interpolate bilinear antialias) on the same sizes and threads, printed as JSON lines
{"name", "seconds", "threads", "torch"}.

    python bench/torch_hallo.py --threads 2 [--reps 5]
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests",
                                "reference"))
from gen_hallo import HalloAudioPath  # noqa: E402


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
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.set_default_dtype(torch.float32)
    for B, hh, C, heads, T, Ca in [(1, 64, 320, 8, 32, 768), (2, 16, 1280, 8, 32, 768)]:
        m = HalloAudioPath(C, heads, C // heads, Ca).eval()
        N = hh * hh
        x, au = torch.randn(B, N, C), torch.randn(B, T, Ca)
        mk = torch.rand(1, 3, N).expand(B, 3, N)
        with torch.inference_mode():
            t = med_time(lambda: m(x, au, mk[:, 0], mk[:, 1], mk[:, 2], hh, hh), a.reps)
        inner, Fd = C, 4 * C
        flop = B * (3.0 * (2.0 * N * C * inner + 4.0 * T * Ca * inner + 4.0 * N * T * inner +
                           2.0 * N * inner * C + 2.0 * N * C * C) + 2.0 * N * C * 2 * Fd +
                    2.0 * N * Fd * C)
        print(json.dumps({"name": f"hallo-audio B={B} {hh}x{hh} C={C} heads={heads} T={T} Ca={Ca}",
                          "seconds": t, "gflops": flop / t / 1e9, "threads": a.threads,
                          "torch": torch.__version__}))
    big = torch.rand(1, 3, 512, 512)

    def pyr():
        for h in (64, 32, 16, 8):
            F.interpolate(big, size=(h, h), mode="bilinear", align_corners=False, antialias=True)
    with torch.inference_mode():
        t = med_time(pyr, a.reps)
    print(json.dumps({"name": "hallo mask pyramid 3x512x512 -> 64,32,16,8", "seconds": t,
                      "threads": a.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
