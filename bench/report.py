"""Labelled tables from the JSON lines that bench/run.sh, bench/modules.sh and bench/bidir_bench.py
leave in a results directory: every table names the machine, the kernel set xattn ran with (as
the benchmarks print it) and the fp32 FMA peak they measured, beside PyTorch's figures from the
same run.

    python bench/report.py [DIR]             rewrites DIR/summary.md (kernels and M1) and
                                             DIR/modules_summary.md (the fusion modules)
    python bench/report.py --compare A B     prints A's and B's figures side by side (markdown),
                                             e.g. an AVX2 run beside the AVX-512 one
    python bench/report.py --repeats DIR...  medians and ranges over repeated runs, each DIR
                                             holding one run's JSON lines (markdown)

DIR defaults to bench/results. The machine comes from DIR/machine.json (bench/machine.py --json);
the kernel set and peak from the rows themselves.
"""
import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import machine  # noqa: E402

MODULES = ["mutual", "conv2d", "joint", "interlaced", "multiview", "hallo", "decoder"]


def load(d, f):
    p = os.path.join(d, f)
    if not os.path.exists(p):
        return []
    with open(p) as fh:
        return [json.loads(line) for line in fh if line.strip().startswith("{")]


def kernel_rows(d):
    """[(name, xattn row, torch row)] for the kernel/M1 work PyTorch also ran."""
    x = {r["name"]: r for r in load(d, "attention.json") + load(d, "mha.json") + load(d, "gemm.json")}
    return [(n, x[n], t) for n, t in ((r["name"], r) for r in load(d, "torch.json")) if n in x]


def module_rows(d):
    """[(module, name, xattn row, torch row)]."""
    out = []
    for m in MODULES:
        x = {r["name"]: r for r in load(d, f"mod_{m}.json")}
        for t in load(d, f"mod_torch_{m}.json"):
            if t["name"] in x:
                out.append((m, t["name"], x[t["name"]], t))
    return out


def where(d, rows):
    """The caption: machine.json, else what the rows say."""
    rec = dict(machine.load(d))
    if rows:
        xr, tr = rows[0][-2], rows[0][-1]
        rec.setdefault("isa", xr.get("isa"))
        rec.setdefault("peak_gflops", xr.get("peak_gflops"))
        rec.setdefault("threads", xr.get("threads"))
        torch = f"PyTorch {tr.get('torch', '?')}"
        if tr.get("torch_cpu_capability"):
            torch += f" (CPU capability {tr['torch_cpu_capability']})"
    else:
        torch = "PyTorch"
    note = f" Note: {rec['note']}." if rec.get("note") else ""
    return (f"Measured on {machine.describe(rec)}; {torch}; fp32, medians, xattn and PyTorch "
            f"in the same run.{note}")


def pct(xr):
    p = xr.get("peak_gflops")
    g = xr.get("gflops")
    return f"{100 * g / p:.0f}% of {p:.0f}" if p and g else "n/a"


def gf(r):
    return f"{r['gflops']:.0f}" if r.get("gflops") else "n/a"


def kernel_table(d):
    rows = kernel_rows(d)
    lines = [where(d, rows), "",
             "| work | xattn kernels | xattn GFLOP/s | % of measured FMA peak (GFLOP/s) | "
             "PyTorch GFLOP/s | speed-up |",
             "|---|---|---:|---:|---:|---:|"]
    for n, xr, tr in rows:
        lines.append(f"| {n} | {xr.get('isa', '?')} | {gf(xr)} | {pct(xr)} | {gf(tr)} | "
                     f"{tr['seconds'] / xr['seconds']:.2f}x |")
    return lines


def module_table(d):
    rows = module_rows(d)
    lines = [where(d, [r[1:] for r in rows]), "",
             "| module | work | xattn kernels | xattn | xattn GFLOP/s (% of measured FMA peak) | "
             "PyTorch | speed-up |",
             "|---|---|---|---:|---:|---:|---:|"]
    for m, n, xr, tr in rows:
        g = f"{gf(xr)} ({pct(xr)})" if xr.get("gflops") and xr.get("peak_gflops") else gf(xr)
        lines.append(f"| {m} | {n} | {xr.get('isa', '?')} | {xr['seconds'] * 1e3:.1f} ms | {g} | "
                     f"{tr['seconds'] * 1e3:.1f} ms | {tr['seconds'] / xr['seconds']:.2f}x |")
    return lines


def label(d, rows):
    rec = dict(machine.load(d))
    if rows:
        rec.setdefault("isa", rows[0][-2].get("isa"))
    return f"{rec.get('isa', '?')}, {rec.get('date', '?')}"


def compare(a, b):
    """Markdown: kernels, modules and the bidirectional benchmark of a and b side by side."""
    out = []
    ka, kb = {n: (x, t) for n, x, t in kernel_rows(a)}, {n: (x, t) for n, x, t in kernel_rows(b)}
    la, lb = label(a, kernel_rows(a)), label(b, kernel_rows(b))
    out += [f"A: {where(a, kernel_rows(a))}", f"B: {where(b, kernel_rows(b))}", "",
            f"| work | A ({la}): xattn GFLOP/s (% of peak) | PyTorch GFLOP/s | speed-up "
            f"| B ({lb}): xattn GFLOP/s (% of peak) | PyTorch GFLOP/s | speed-up |",
            "|---|---:|---:|---:|---:|---:|---:|"]

    def cells(p):
        if not p:
            return "n/a | n/a | n/a"
        x, t = p
        return f"{gf(x)} ({pct(x)}) | {gf(t)} | {t['seconds'] / x['seconds']:.2f}x"
    for n in list(ka) + [n for n in kb if n not in ka]:
        out.append(f"| {n} | {cells(ka.get(n))} | {cells(kb.get(n))} |")

    ma = {(m, n): (x, t) for m, n, x, t in module_rows(a)}
    mb = {(m, n): (x, t) for m, n, x, t in module_rows(b)}
    out += ["", f"| module | work | A ({la}): xattn | PyTorch | speed-up | B ({lb}): xattn | "
            "PyTorch | speed-up |", "|---|---|---:|---:|---:|---:|---:|---:|"]

    def mcells(p):
        if not p:
            return "n/a | n/a | n/a"
        x, t = p
        return f"{x['seconds'] * 1e3:.1f} ms | {t['seconds'] * 1e3:.1f} ms | {t['seconds'] / x['seconds']:.2f}x"
    for k in list(ma) + [k for k in mb if k not in ma]:
        out.append(f"| {k[0]} | {k[1]} | {mcells(ma.get(k))} | {mcells(mb.get(k))} |")

    ba, bb = {(r["I"], r["J"]): r for r in load(a, "bidir.json")}, {(r["I"], r["J"]): r for r in load(b, "bidir.json")}
    out += ["", f"| I (video) | J (audio) | A ({la}): PyTorch | xattn | speed-up | B ({lb}): PyTorch | "
            "xattn | speed-up |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]

    def bcells(r):
        if not r:
            return "n/a | n/a | n/a"
        return (f"{r['torch_seconds'] * 1e3:.0f} ms | {r['xattn_seconds'] * 1e3:.0f} ms | "
                f"{r['torch_seconds'] / r['xattn_seconds']:.1f}x")
    for k in list(ba) + [k for k in bb if k not in ba]:
        out.append(f"| {k[0]} | {k[1]} | {bcells(ba.get(k))} | {bcells(bb.get(k))} |")
    return out


def med(v):
    v = sorted(v)
    n = len(v)
    return v[n // 2] if n % 2 else 0.5 * (v[n // 2 - 1] + v[n // 2])


def spread(v, fmt, unit=""):
    """'median (min–max) unit' of the values v."""
    if len(v) == 1:
        return fmt(v[0]) + unit
    return f"{fmt(med(v))} ({fmt(min(v))}–{fmt(max(v))}){unit}"


def repeats(dirs):
    """Markdown: for each piece of work found in the runs in dirs, the median and the range."""
    out = []
    k = {}
    for d in dirs:
        for n, x, t in kernel_rows(d):
            k.setdefault(n, []).append((x, t))
    if k:
        out += ["| work | runs | xattn kernels | xattn GFLOP/s | % of measured FMA peak | "
                "measured peak GFLOP/s | PyTorch GFLOP/s | speed-up |",
                "|---|---:|---|---:|---:|---:|---:|---:|"]
        for n, v in k.items():
            out.append(
                f"| {n} | {len(v)} | {v[0][0].get('isa', '?')} | "
                f"{spread([x['gflops'] for x, _ in v], lambda g: f'{g:.0f}')} | "
                f"{spread([100 * x['gflops'] / x['peak_gflops'] for x, _ in v], lambda g: f'{g:.0f}', '%')} | "
                f"{spread([x['peak_gflops'] for x, _ in v], lambda g: f'{g:.0f}')} | "
                f"{spread([t['gflops'] for _, t in v], lambda g: f'{g:.0f}')} | "
                f"{spread([t['seconds'] / x['seconds'] for x, t in v], lambda r: f'{r:.2f}', 'x')} |")
        out.append("")
    m = {}
    for d in dirs:
        for mod, n, x, t in module_rows(d):
            m.setdefault((mod, n), []).append((x, t))
    if m:
        out += ["| module | work | runs | xattn kernels | xattn | PyTorch | speed-up |",
                "|---|---|---:|---|---:|---:|---:|"]
        for (mod, n), v in m.items():
            out.append(
                f"| {mod} | {n} | {len(v)} | {v[0][0].get('isa', '?')} | "
                f"{spread([x['seconds'] * 1e3 for x, _ in v], lambda t: f'{t:.1f}', ' ms')} | "
                f"{spread([t['seconds'] * 1e3 for _, t in v], lambda t: f'{t:.1f}', ' ms')} | "
                f"{spread([t['seconds'] / x['seconds'] for x, t in v], lambda r: f'{r:.2f}', 'x')} |")
        out.append("")
    b = {}
    for d in dirs:
        for r in load(d, "bidir.json"):
            b.setdefault((r["I"], r["J"]), []).append(r)
    if b:
        out += ["| I (video) | J (audio) | runs | PyTorch | xattn | speed-up | PyTorch peak, whole "
                "process | PyTorch peak, net of baseline | xattn peak, whole process |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for (I, J), v in b.items():
            net = [r["torch_net_peak_mb"] for r in v if r.get("torch_net_peak_mb") is not None]
            out.append(
                f"| {I} | {J} | {len(v)} | "
                f"{spread([r['torch_seconds'] * 1e3 for r in v], lambda t: f'{t:.0f}', ' ms')} | "
                f"{spread([r['xattn_seconds'] * 1e3 for r in v], lambda t: f'{t:.0f}', ' ms')} | "
                f"{spread([r['torch_seconds'] / r['xattn_seconds'] for r in v], lambda q: f'{q:.1f}', 'x')} | "
                f"{spread([r['torch_peak_rss_mb'] for r in v], lambda q: f'{q:.0f}', ' MB')} | "
                f"{spread(net, lambda q: f'{q:.0f}', ' MB') if net else 'n/a'} | "
                f"{spread([r['xattn_peak_rss_mb'] for r in v], lambda q: f'{q:.0f}', ' MB')} |")
        out.append("")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", nargs="?", default=os.path.join(HERE, "results"))
    ap.add_argument("--compare", nargs=2, metavar=("A", "B"))
    ap.add_argument("--repeats", nargs="+", metavar="DIR")
    a = ap.parse_args()
    if a.repeats:
        print("\n".join(repeats(a.repeats)))
        return
    if a.compare:
        print("\n".join(compare(*a.compare)))
        return
    for f, lines in (("summary.md", kernel_table(a.dir)), ("modules_summary.md", module_table(a.dir))):
        if len(lines) <= 4:
            continue
        with open(os.path.join(a.dir, f), "w") as fh:
            fh.write("\n".join(lines) + "\n")
        print("\n".join(lines) + "\n")
        print("wrote", os.path.join(a.dir, f))


if __name__ == "__main__":
    main()
