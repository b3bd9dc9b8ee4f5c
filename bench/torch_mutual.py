"""PyTorch side of bench_mutual: the MCA notebook's MutualCrossAttention (eval mode) on the same
sizes, same thread count, printed as JSON lines {"name", "seconds", "threads", "torch"}.

    python bench/torch_mutual.py --threads 2 [--reps 7]
"""
import argparse
import json
import math
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class MutualCrossAttention(nn.Module):
    def __init__(self, dropout=0.1):
        super().__init__()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x1, x2):
        d = x1.shape[-1]
        s = torch.bmm(x1, x2.transpose(1, 2)) / math.sqrt(d)
        out_a = torch.bmm(self.dropout(F.softmax(s, dim=-1)), x2)
        s = torch.bmm(x2, x1.transpose(1, 2)) / math.sqrt(d)
        out_b = torch.bmm(self.dropout(F.softmax(s, dim=-1)), x1)
        return out_a + out_b


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
    m = MutualCrossAttention().eval()
    for B, N, D in [(128, 32, 128), (4, 1024, 64), (1, 4096, 64)]:
        x, y = (torch.rand(B, N, D) - 0.5) * 3, (torch.rand(B, N, D) - 0.5) * 3
        with torch.inference_mode():
            t = med_time(lambda: m(x, y), a.reps)
        print(json.dumps({"name": f"mutual B={B} N={N} D={D}", "seconds": t,
                          "gflops": 8.0 * B * N * N * D / t / 1e9, "threads": a.threads,
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main()
