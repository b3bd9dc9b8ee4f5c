"""PyTorch side of bench/bench_joint.c: nn.TransformerEncoder forward over [x; context] with
the same configurations and "name" strings, timed (median) with the same thread count, in
inference mode (torch's fast path where it applies), printed as JSON lines
{"name", "seconds", "gflops", "threads", "torch"}.

    python bench/torch_joint.py --threads 2 [--reps 7]
"""
import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn as nn

CFGS = [
    # name, B, K, N, d, H, ff, layers, norm_first, act, masks
    ("joint mmca B=8 K=36 N=32 d=512 heads=8 ff=2048 layers=2 post relu masks", 8, 36, 32, 512,
     8, 2048, 2, False, "relu", True),
    ("joint long B=1 K=1024 N=1024 d=256 heads=8 ff=1024 layers=1 pre gelu", 1, 1024, 1024, 256,
     8, 1024, 1, True, "gelu", False),
]


def med_time(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def main():
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    for name, B, K, N, d, H, ff, layers, nf, act, masks in CFGS:
        layer = nn.TransformerEncoderLayer(d, H, ff, dropout=0.0, activation=act,
                                           batch_first=True, norm_first=nf)
        model = nn.TransformerEncoder(layer, layers).eval()
        x, c = torch.randn(B, K, d), torch.randn(B, N, d)
        mask = None
        if masks:
            mask = torch.zeros(B, K + N, dtype=torch.bool)
            for b in range(B):
                if b % 4:
                    mask[b, K + N - b % 4:] = True
        L = K + N
        with torch.inference_mode():
            t = med_time(lambda: model(torch.cat([x, c], 1), src_key_padding_mask=mask).split(
                [K, N], 1), a.reps)
        flop = layers * (2.0 * B * L * (4 * d * d + 2 * d * ff) + 4.0 * B * L * L * d)
        print(json.dumps({"name": name, "seconds": t, "gflops": flop / t / 1e9,
                          "threads": a.threads, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
