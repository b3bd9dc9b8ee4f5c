"""PyTorch side of the benchmarks: the same work as bench_attention / bench_mha / bench_gemm,
timed with the same thread count, printed as JSON lines {"name", "seconds", "gflops",
"peak_rss_mb", "baseline_rss_mb", "net_peak_mb", ...}.

Memory: peak_rss_mb is the whole process's peak resident size (VmHWM), the Python interpreter and
torch included (about 0.5 GB before any work); baseline_rss_mb is the resident size after
`import torch` and building the module of a group of work (sdpa, mha, gemm), before its inputs
are made and it runs; net_peak_mb is that group's peak minus its baseline (the peak counter is
restarted at the baseline, /proc/self/clear_refs), i.e. the growth of the process (memory that
an earlier group freed and this one reuses counts in the baseline). Without /proc only
peak_rss_mb is given (ru_maxrss).

    python bench/torch_ref.py --threads 2 [--reps 7] [--only sdpa|gemm]
"""
import argparse
import json
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from machine import reset_peak, status_mb


def peak_rss_mb():
    """VmHWM of /proc/self/status (this process's own peak; exec starts it afresh), else
    ru_maxrss, which Linux carries across exec from the parent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0, "VmHWM"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "ru_maxrss"


class Mem:
    """Whole-process peak across restarts of the peak counter, and the net peak of each group."""

    def __init__(self):
        self.whole = 0.0
        self.base = None
        self.restarted = False

    def start(self):
        """Baseline of a group: now; restarts the peak counter."""
        hwm = status_mb("VmHWM")
        self.whole = max(self.whole, hwm or 0.0)
        self.base = status_mb("VmRSS")
        self.restarted = self.base is not None and reset_peak()

    def net(self):
        """The group's peak minus its baseline (None if the counter could not be restarted)."""
        hwm = status_mb("VmHWM")
        self.whole = max(self.whole, hwm or 0.0)
        return hwm - self.base if self.restarted and hwm is not None else None


def med_time(fn, reps):
    fn()  # warm-up
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
    ap.add_argument("--only", default="")
    ap.add_argument("--seq", type=int, default=4096)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    res = []
    mem = Mem()

    def group_done(first):
        """Gives the rows res[first:] their group's baseline and net peak."""
        net = mem.net()
        for r in res[first:]:
            r["baseline_rss_mb"] = mem.base
            r["net_peak_mb"] = net

    if a.only in ("", "sdpa"):
        first = len(res)
        mem.start()
        B, H, N, dh = 1, 8, a.seq, 64
        q, k, v = (torch.randn(B, H, N, dh) for _ in range(3))
        with torch.inference_mode():
            t = med_time(lambda: F.scaled_dot_product_attention(q, k, v), a.reps)
        res.append({"name": f"sdpa B={B} H={H} I={N} J={N} dh={dh}", "seconds": t,
                    "gflops": 4.0 * B * H * N * N * dh / t / 1e9})
        with torch.inference_mode():
            t = med_time(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), a.reps)
        res.append({"name": f"sdpa causal B={B} H={H} I={N} J={N} dh={dh}", "seconds": t,
                    "gflops": 2.0 * B * H * N * N * dh / t / 1e9})
        q1 = torch.randn(B, H, 1, dh)
        with torch.inference_mode():
            t = med_time(lambda: F.scaled_dot_product_attention(q1, k, v), a.reps * 5)
        res.append({"name": f"sdpa decode I=1 B={B} H={H} I=1 J={N} dh={dh}", "seconds": t,
                    "gflops": 4.0 * B * H * N * dh / t / 1e9})
        # backward: dq, dk, dv of the same attention (the forward not timed; FLOPs counted as
        # FlashAttention-2's five matrix products, 10*B*H*I*J*dh, as bench_attention does)
        qg, kg, vg = (t.clone().requires_grad_(True) for t in (q, k, v))
        for causal in (False, True):
            o = F.scaled_dot_product_attention(qg, kg, vg, is_causal=causal)
            do = torch.randn_like(o)
            t = med_time(lambda: torch.autograd.grad(o, (qg, kg, vg), do, retain_graph=True),
                         a.reps)
            name = "sdpa causal backward" if causal else "sdpa backward"
            res.append({"name": f"{name} B={B} H={H} I={N} J={N} dh={dh}", "seconds": t,
                        "gflops": (5.0 if causal else 10.0) * B * H * N * N * dh / t / 1e9})
            del o, do
        group_done(first)
        del q, k, v, q1, qg, kg, vg
    if a.only in ("", "mha"):
        B, I, J, E, H = 1, 1024, 2048, 512, 8
        m = torch.nn.MultiheadAttention(E, H, batch_first=True).eval()
        first = len(res)
        mem.start()
        x, c = torch.randn(B, I, E), torch.randn(B, J, E)
        with torch.inference_mode():
            t = med_time(lambda: m(x, c, c, need_weights=False), a.reps)
        flop = 2.0 * B * (2 * I * E * E + 2 * J * E * E) + 4.0 * B * I * J * E
        res.append({"name": f"mha B={B} I={I} J={J} E={E} heads={H}", "seconds": t,
                    "gflops": flop / t / 1e9})
        group_done(first)
        del m, x, c
    if a.only in ("", "gemm"):
        n = 1024
        first = len(res)
        mem.start()
        x, y = torch.randn(n, n), torch.randn(n, n)
        with torch.inference_mode():
            t = med_time(lambda: x @ y, a.reps)
        res.append({"name": f"sgemm {n}^3", "seconds": t, "gflops": 2.0 * n ** 3 / t / 1e9})
        group_done(first)
    rss, src = peak_rss_mb()
    if src == "VmHWM":
        rss = max(rss, mem.whole)
    for r in res:
        r["peak_rss_mb"] = rss
        r["peak_rss_source"] = src
        r["threads"] = a.threads
        r["torch"] = torch.__version__
        r["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        print(json.dumps(r))


if __name__ == "__main__":
    main()
