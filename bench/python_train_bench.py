"""A training step in PyTorch (forward, MSE loss on both outputs, backward, AdamW) of a depth-2
BidirectionalCrossAttentionTransformer: the PyPI package (bidirectional-cross-attention 0.1.0)
against xattn.torch's drop-in module, same weights, data and threads (torch.set_num_threads and
xattn.set_threads), at the seed's shapes (video (1, 4096, 512) <-> audio (1, 8192, 386), 8 heads
x 64) and at 2x and 4x the lengths.

    python bench/python_train_bench.py [--threads 2] [--steps 3] [--scales 1,2,4] [--limit-gb 16]
    python bench/python_train_bench.py --quick      # lengths / 4, results in bench/results/quick/
    python bench/python_train_bench.py --rerun floor  # one variant again, the rest kept

Each (variant, lengths) runs in its own subprocess under an address-space limit
(resource.setrlimit(RLIMIT_AS), --limit-gb, 16 GB by default), so a variant that needs more
fails with an allocation error instead of pushing the machine into swap; once a variant fails
at some lengths, longer ones are not tried. Time: the median of --steps steps after one warm-up
step. Memory: the process's peak resident size (VmHWM, reset once the model exists and before
the data are made) as a whole -- interpreter, torch, libxattn and the model included -- and net
of that baseline.

Longest lengths within the limit: the lengths are doubled from the seed's; the package's is the
longest that ran. The drop-in's memory grows linearly with the lengths (its attention keeps no
I x J matrix) while its time grows with I x J, so past the last scale run its limit is an
estimate: a straight line through the measured peaks, extrapolated to the limit (labelled as
such in the results).

Writes bench/results/python_train.json (one JSON object per run, then a summary object) and
bench/results/python_train_summary.md (python_train_<tag>.* with --tag). The environment is
passed to every run: e.g. OMP_WAIT_POLICY=PASSIVE (recorded) stops idle OpenMP threads from
spinning, which matters on a machine shared with other work.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

BASE_I, BASE_J, DIM, CDIM = 4096, 8192, 512, 386
CFG = dict(dim=DIM, depth=2, context_dim=CDIM, heads=8, dim_head=64)


# ---- one run (a subprocess) -------------------------------------------------------------------

def child(a):
    resource.setrlimit(resource.RLIMIT_AS, (int(a.limit_gb * 2 ** 30),) * 2)
    from machine import reset_peak, status_mb
    res = {"variant": a.child, "I": a.I, "J": a.J, "threads": a.threads, "limit_gb": a.limit_gb,
           "load_average_start": os.getloadavg()[0],
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "")}
    try:
        import torch
        torch.set_num_threads(a.threads)
        if a.child == "package":
            from bidirectional_cross_attention import BidirectionalCrossAttentionTransformer as T
        else:
            sys.path.insert(0, os.path.join(ROOT, "python"))
            import xattn
            import xattn.torch
            xattn.set_threads(a.threads)
            T = xattn.torch.BidirectionalCrossAttentionTransformer
            res["xattn_kernels"] = xattn.kernel_set()
            if a.child == "floor":  # the torch layers alone: the attention core an addition
                import xattn.torch._modules as modules
                modules.bidirectional_attention = lambda qk, cqk, v, cv, **kw: (qk + v, cqk + cv)
        res["torch"] = torch.__version__
        torch.manual_seed(0)
        model = T(**CFG)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        base = status_mb("VmRSS")
        reset_peak()
        g = torch.Generator().manual_seed(1)
        x, c = torch.randn(1, a.I, DIM, generator=g), torch.randn(1, a.J, CDIM, generator=g)
        t, ct = torch.randn(1, a.I, DIM, generator=g), torch.randn(1, a.J, CDIM, generator=g)
        mse = torch.nn.functional.mse_loss

        def step():
            out, cout = model(x, c)
            loss = mse(out, t) + mse(cout, ct)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss.item()

        times, losses = [], []
        for n in range(a.steps + 1):  # the first is the warm-up
            t0 = time.perf_counter()
            losses.append(step())
            if n:
                times.append(time.perf_counter() - t0)
        res.update(ok=True, step_seconds=times, median_seconds=statistics.median(times),
                   losses=losses, baseline_rss_mb=base, peak_rss_mb=status_mb("VmHWM"))
        res["net_peak_mb"] = res["peak_rss_mb"] - base
    except (MemoryError, RuntimeError) as e:  # torch: "can't allocate memory"
        res.update(ok=False, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
    res["load_average_end"] = os.getloadavg()[0]  # others' work on a shared machine
    print("RESULT " + json.dumps(res), flush=True)


def run_one(a, variant, I, J):
    cmd = [sys.executable, os.path.abspath(__file__), "--child", variant, "--I", str(I), "--J",
           str(J), "--steps", str(a.steps), "--threads", str(a.threads), "--limit-gb",
           str(a.limit_gb)]
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in r.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line:
        res = json.loads(line[7:])
    else:  # killed, or a failure outside Python
        tail = (r.stderr.strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        res = {"variant": variant, "I": I, "J": J, "ok": False, "error": tail[:200]}
    res["wall_seconds"] = time.time() - t0
    print(json.dumps(res), flush=True)
    return res


# ---- the whole benchmark ----------------------------------------------------------------------

def estimate_limit(runs, limit_mb):
    """Longest doubling of the seed's lengths whose peak (whole process) stays under the limit,
    from a least-squares line through the drop-in's measured peaks against the scale."""
    pts = [(r["I"] / BASE_I, r["peak_rss_mb"]) for r in runs if r.get("ok")]
    if len(pts) < 2:
        return None
    n = len(pts)
    mx, my = sum(p[0] for p in pts) / n, sum(p[1] for p in pts) / n
    b = sum((p[0] - mx) * (p[1] - my) for p in pts) / sum((p[0] - mx) ** 2 for p in pts)
    a0 = my - b * mx
    s = max(p[0] for p in pts)
    while a0 + b * s * 2 <= limit_mb:
        s *= 2
    t_last = max((r for r in runs if r.get("ok")), key=lambda r: r["I"])
    return {"scale": s, "I": int(BASE_I * s), "J": int(BASE_J * s),
            "estimated_peak_mb": a0 + b * s, "mb_per_scale": b, "mb_at_scale_0": a0,
            "estimated_step_seconds": t_last["median_seconds"] * (s * BASE_I / t_last["I"]) ** 2}


def summarise(a, runs, mach):
    import machine
    limit_mb = a.limit_gb * 1024
    by = {(r["variant"], r["I"]): r for r in runs}
    fmt = lambda x, f: (f.format(x) if x is not None else "-")  # noqa: E731
    lines = [f"A training step of a depth-2 BidirectionalCrossAttentionTransformer (dim 512, "
             f"context_dim 386, 8 heads x 64): forward, MSE on both outputs, backward, AdamW, in "
             f"PyTorch {runs[0].get('torch', '?')}, fp32, {a.threads} threads (torch and xattn); "
             f"the package bidirectional-cross-attention 0.1.0 against xattn.torch's drop-in. "
             f"{machine.describe(mach)}. Each run in its own process under a {a.limit_gb:g} GB "
             f"address-space limit; time = median of {a.steps} steps after a warm-up; peak RSS "
             "= the whole process (interpreter, torch, libxattn, model) and, in brackets, net of "
             "the baseline after building the model.", "",
             "| lengths I / J | package step | drop-in step | time ratio | package peak RSS | "
             "drop-in peak RSS | memory ratio |", "|---|---:|---:|---:|---:|---:|---:|"]
    if os.environ.get("OMP_WAIT_POLICY"):
        lines[0] += f" OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']} for both."
    loads = [r[k] for r in runs for k in ("load_average_start", "load_average_end") if k in r]
    if loads:
        lines[0] += (f" The machine's 1-minute load average during the runs: {min(loads):.1f} to "
                     f"{max(loads):.1f} (for {a.threads} threads of ours on "
                     f"{mach.get('cores', '?')} cores).")
    summary = {"summary": True, "threads": a.threads, "limit_gb": a.limit_gb, "rows": []}
    for s in a.scales:
        I, J = int(a.base_i * s), int(a.base_j * s)
        p, d = by.get(("package", I)), by.get(("dropin", I))
        pok, dok = p is not None and p.get("ok"), d is not None and d.get("ok")
        ps = fmt(p["median_seconds"], "{:.2f} s") if pok else \
            ("out of memory" if p else "not run (failed shorter)")
        ds = fmt(d["median_seconds"], "{:.2f} s") if dok else ("failed" if d else "-")
        tr = f"1/{p['median_seconds'] / d['median_seconds']:.2f}" if pok and dok else "-"
        pm = f"{p['peak_rss_mb']:.0f} MB ({p['net_peak_mb']:.0f})" if pok else "-"
        dm = f"{d['peak_rss_mb']:.0f} MB ({d['net_peak_mb']:.0f})" if dok else "-"
        mr = (f"1/{p['peak_rss_mb'] / d['peak_rss_mb']:.1f} "
              f"(1/{p['net_peak_mb'] / d['net_peak_mb']:.1f})") if pok and dok else "-"
        lines.append(f"| {I} / {J} | {ps} | {ds} | {tr} | {pm} | {dm} | {mr} |")
        summary["rows"].append({"I": I, "J": J, "package": p, "dropin": d})
    pk = [r for r in runs if r["variant"] == "package" and r.get("ok")]
    longest_p = max(pk, key=lambda r: r["I"]) if pk else None
    failed_p = [r for r in runs if r["variant"] == "package" and not r.get("ok")]
    dr = [r for r in runs if r["variant"] == "dropin"]
    est = estimate_limit(dr, limit_mb)
    summary["package_longest"] = {"I": longest_p["I"], "J": longest_p["J"]} if longest_p else None
    summary["dropin_estimate"] = est
    lines += ["", f"Longest lengths that train within {a.limit_gb:g} GB (doubling the seed's):"]
    if longest_p:
        nxt = min(failed_p, key=lambda r: r["I"]) if failed_p else None
        lines.append(f"- package: I / J = {longest_p['I']} / {longest_p['J']} (peak "
                     f"{longest_p['peak_rss_mb']:.0f} MB)" +
                     (f"; {nxt['I']} / {nxt['J']} failed: {nxt['error']}" if nxt else ""))
    else:
        lines.append("- package: none of the lengths run")
    dok = [r for r in dr if r.get("ok")]
    if dok:
        last = max(dok, key=lambda r: r["I"])
        lines.append(f"- drop-in: ran up to I / J = {last['I']} / {last['J']} (peak "
                     f"{last['peak_rss_mb']:.0f} MB, {last['median_seconds']:.0f} s a step)" +
                     (f"; estimated (a line through the measured peaks: "
                      f"{est['mb_at_scale_0']:.0f} MB + {est['mb_per_scale']:.0f} MB per seed "
                      f"length) to fit up to I / J = {est['I']} / {est['J']} "
                      f"(~{est['estimated_peak_mb']:.0f} MB; ~{est['estimated_step_seconds']:.0f}"
                      " s a step at these threads)" if est else ""))
    return lines, summary


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--scales", default="1,2,4")
    ap.add_argument("--limit-gb", type=float, default=16.0)
    ap.add_argument("--quick", action="store_true", help="lengths / 4 (a check of the script)")
    ap.add_argument("--tag", default="", help="results in python_train_<tag>.json / _summary.md")
    ap.add_argument("--rerun", default="", help="comma-separated variants (package, dropin, "
                    "floor) to run again, keeping the others' results from the results file")
    ap.add_argument("--child", choices=["package", "dropin", "floor"])
    ap.add_argument("--I", type=int)
    ap.add_argument("--J", type=int)
    a = ap.parse_args()
    if a.child:
        return child(a)
    import machine
    a.scales = [float(s) for s in a.scales.split(",")]
    a.rerun = [v for v in a.rerun.split(",") if v]
    a.base_i, a.base_j = (BASE_I // 4, BASE_J // 4) if a.quick else (BASE_I, BASE_J)
    out = os.path.join(HERE, "results", "quick") if a.quick else os.path.join(HERE, "results")
    os.makedirs(out, exist_ok=True)
    name = "python_train" + (f"_{a.tag}" if a.tag else "")
    mach = machine.record(os.path.join(ROOT, "build"), a.threads)
    if a.rerun:  # the other runs from the results file
        with open(os.path.join(out, name + ".json")) as f:
            old = [json.loads(l) for l in f]
        runs = [r for r in old if not r.get("summary") and r["variant"] not in a.rerun]
        floor = next((r["floor"] for r in old if r.get("summary")), None)
        if "floor" in a.rerun:
            floor = run_one(a, "floor", a.base_i, a.base_j)
        for v in set(a.rerun) - {"floor"}:
            for s in a.scales:
                runs.append(run_one(a, v, int(a.base_i * s), int(a.base_j * s)))
                if not runs[-1].get("ok"):
                    break
        runs.sort(key=lambda r: (r["I"], r["variant"] != "dropin"))
    else:
        runs, package_failed = [], False
        for s in a.scales:
            I, J = int(a.base_i * s), int(a.base_j * s)
            runs.append(run_one(a, "dropin", I, J))
            if not package_failed:
                runs.append(run_one(a, "package", I, J))
                package_failed = not runs[-1].get("ok")
            if s == a.scales[0]:  # right after the first pair, under the same conditions
                floor = run_one(a, "floor", a.base_i, a.base_j)
    lines, summary = summarise(a, runs, mach)
    d = next((r for r in runs if r["variant"] == "dropin" and r["I"] == a.base_i), None)
    if floor.get("ok") and d and d.get("ok"):
        lines += ["", f"Where the drop-in's memory goes at {a.base_i} / {a.base_j}: the same model "
                  f"with its attention core replaced by an addition (the torch projections, norms "
                  f"and feed-forwards alone, which the package has as well) peaks at "
                  f"{floor['peak_rss_mb']:.0f} MB ({floor['net_peak_mb']:.0f} net) and takes "
                  f"{floor['median_seconds']:.2f} s a step; the drop-in adds "
                  f"{d['net_peak_mb'] - floor['net_peak_mb']:.0f} MB and "
                  f"{d['median_seconds'] - floor['median_seconds']:.2f} s for the fused attention "
                  f"core (forward and backward). The baseline (interpreter, torch, model) is "
                  f"{d['baseline_rss_mb']:.0f} MB."]
        p = next((r for r in runs if r["variant"] == "package" and r["I"] == a.base_i), None)
        if p and p.get("ok"):
            lines[-1] += (f" The package's attention core takes "
                          f"{p['net_peak_mb'] - floor['net_peak_mb']:.0f} MB and "
                          f"{p['median_seconds'] - floor['median_seconds']:.2f} s.")
    summary["floor"] = floor
    summary["machine"] = mach
    with open(os.path.join(out, name + ".json"), "w") as f:
        for r in runs + [summary]:
            f.write(json.dumps(r) + "\n")
    with open(os.path.join(out, name + "_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
