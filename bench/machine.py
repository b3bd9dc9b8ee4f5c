"""What a benchmark ran on, recorded beside its figures: the CPU, the vector extensions it has,
the kernel set xattn picks and the fp32 FMA peak that xattn's own benchmark programs measure
(bench/peak.h), the date; and the resident-memory counters of /proc/self/status that the PyTorch
scripts use to tell the interpreter's baseline from what the work itself needs.

    python bench/machine.py [--build build] [--threads 2] [--json FILE]
prints the record (JSON, then one line of text); --json also writes it to FILE (e.g.
bench/results/machine.json, which bench/report.py and bench/plot.py read).
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def cpu():
    """{"cpu": model name, "cores": logical CPUs, "vector": "avx512"|"avx2"|... (the widest
    x86 FMA extension the CPU reports)}."""
    model, flags = None, set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                k = k.strip()
                if k == "model name" and model is None:
                    model = v.strip()
                elif k in ("flags", "Features") and not flags:
                    flags = set(v.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    vector = ("avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else
              "neon" if "asimd" in flags else "none")
    return {"cpu": model, "cores": os.cpu_count(), "vector": vector}


def xattn_kernels(build, threads):
    """{"isa": the kernel set xattn picks, "peak_gflops": the fp32 FMA peak of `threads` threads}
    as bench_attention measures and prints them (a tiny attention problem, well under a
    second), or {} when that program is not built."""
    exe = os.path.join(build, "bench_attention")
    if not os.access(exe, os.X_OK):
        return {}
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "a.json")
        r = subprocess.run([exe, "--threads", str(threads), "--seq", "256", "--reps", "1",
                            "--json", out], capture_output=True, text=True)
        if r.returncode != 0 or not os.path.exists(out):
            return {}
        with open(out) as f:
            row = json.loads(f.readline())
    return {"isa": row.get("isa"), "peak_gflops": row.get("peak_gflops")}


def record(build=os.path.join(HERE, "..", "build"), threads=2):
    """The whole record: cpu(), xattn_kernels(), threads and today's date (UTC)."""
    rec = cpu()
    rec.update(xattn_kernels(build, threads))
    rec["threads"] = threads
    rec["date"] = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return rec


def load(d):
    """The record in d/machine.json, or {}."""
    p = os.path.join(d, "machine.json")
    if not os.path.exists(p):
        return {}
    with open(p) as f:
        return json.loads(f.read())


def describe(rec):
    """One line for a table's caption, e.g. 'AMD EPYC (2 cores, AVX2), xattn kernels avx2,
    measured fp32 FMA peak 190 GFLOP/s on 2 threads, 2026-12-01'."""
    vec = {"avx512": "AVX-512", "avx2": "AVX2 (no AVX-512)"}.get(rec.get("vector"),
                                                              str(rec.get("vector", "?")).upper())
    s = f"{rec.get('cpu', '?')} ({rec.get('cores', '?')} cores, {vec})"
    if rec.get("isa"):
        s += f", xattn kernels {rec['isa']}"
    if rec.get("peak_gflops"):
        s += f", measured fp32 FMA peak {rec['peak_gflops']:.0f} GFLOP/s on {rec.get('threads')} threads"
    if rec.get("date"):
        s += f", {rec['date']}"
    return s


# ---- resident memory of this process (Linux) ---------------------------------------------------

def status_mb(key):
    """VmRSS (now) or VmHWM (peak) of this process in MB, or None without /proc."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak():
    """Restarts VmHWM from the current resident size (writes 5 to /proc/self/clear_refs);
    False where the kernel does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="also write the record to this file")
    a = ap.parse_args()
    rec = record(a.build, a.threads)
    if a.json:
        with open(a.json, "w") as f:
            f.write(json.dumps(rec) + "\n")
    print(json.dumps(rec))
    print(describe(rec))
