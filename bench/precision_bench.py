"""Weights in 16 bits and int8, and bf16 compute, against float32 and against PyTorch, in one run
on one machine and thread count.

1. Decoding: a 6-layer BERT decoder (hidden 768, BERT's vocabulary of 30522, a memory of 32
   tokens, batch 1, greedy, 256 new tokens with the decoder's cache): `xattn generate` with
   --weights f32, bf16, f16 and int8 (tokens/s = 255 / (wall time of 256 tokens - wall time of
   1 token), medians of 3 processes each, loading cancelled out; peak = the process's ru_maxrss)
   against transformers' BertLMHeadModel.generate in float32 and in bfloat16 (model.to(dtype);
   the median of 3 calls after a warm-up; peak of the whole Python process).
2. A module's memory and speed: BidirectionalCrossAttentionTransformer(dim 1024, depth 4,
   context_dim 1024, heads 16 x 64) made by `xattn init`, run by `xattn bench` (B 1, I = J = 512)
   with each --weights (peak RSS of the process, forward median) and with --compute bf16,
   against the PyPI package's module on the same weights in float32 and under
   torch.autocast("cpu", torch.bfloat16) (medians of 5 after a warm-up).
The CPU's bf16 instructions (avx512_bf16, amx_bf16) are read from /proc/cpuinfo and reported.

    python bench/precision_bench.py [--threads 2] [--xattn build/xattn] [--out DIR]
writes DIR/precision.json and DIR/precision_summary.md (default bench/results).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import generate_bench as gb  # noqa: E402
import machine  # noqa: E402

TORCH_MODULE = r"""
import sys, time, json, torch
from safetensors.torch import load_file
import bidirectional_cross_attention as bca
path, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
m = bca.BidirectionalCrossAttentionTransformer(dim=1024, depth=4, context_dim=1024, heads=16,
                                               dim_head=64).eval()
m.load_state_dict(load_file(path), strict=True)
g = torch.Generator().manual_seed(0)
x, c = torch.randn(1, 512, 1024, generator=g), torch.randn(1, 512, 1024, generator=g)
out = {}
with torch.inference_mode():
    for name, auto in (("f32", False), ("bf16", True)):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=auto):
            m(x, c)
            ts = []
            for _ in range(5):
                t0 = time.perf_counter(); m(x, c); ts.append(time.perf_counter() - t0)
        out[name] = sorted(ts)[2]
print(json.dumps(out))
"""


def bf16_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    fl = set(line.split(":", 1)[1].split())
                    return sorted(x for x in fl if "bf16" in x or x.startswith("amx"))
    except OSError:
        pass
    return []


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--xattn", default=os.path.join(HERE, "..", "build", "xattn"))
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    mach = machine.record(os.path.dirname(os.path.abspath(a.xattn)), a.threads)
    flags = bf16_flags()
    print(machine.describe(mach), "bf16 instructions:", ", ".join(flags) or "none", flush=True)
    res = {"machine": mach, "bf16_instructions": flags, "threads": a.threads}
    new = 256
    with tempfile.TemporaryDirectory() as d:
        gb.run([sys.executable, "-c", gb.PREPARE, d, "6", "768"])
        dec = {}
        for dt in ("float32", "bfloat16"):
            t = json.loads(gb.run([sys.executable, "-c", gb.TORCH_RUN, d, str(a.threads), "1",
                                   str(new), HERE, dt]).strip().splitlines()[-1])
            dec["torch_" + dt] = {"tokens_per_s": new / t["seconds"],
                                  "peak_rss_mb": t["peak_rss_mb"]}
            print("torch", dt, dec["torch_" + dt], flush=True)
        for w in ("f32", "bf16", "f16", "int8"):
            cmd = [a.xattn, "generate", f"{d}/model.safetensors", "--memory", f"{d}/memory.npy",
                   "--threads", str(a.threads), "--weights", w, "--out", f"{d}/ids.npy"]
            sn, mn = gb.run_xattn(cmd + ["--max-new-tokens", str(new)], repeats=3)
            s1, _ = gb.run_xattn(cmd + ["--max-new-tokens", "1"], repeats=3)
            dec["xattn_" + w] = {"tokens_per_s": (new - 1) / max(sn - s1, 1e-9),
                                 "peak_rss_mb": mn}
            print("xattn", w, dec["xattn_" + w], flush=True)
        res["decode"] = dec
    with tempfile.TemporaryDirectory() as d:
        model = f"{d}/bt.safetensors"
        gb.run([a.xattn, "init", "bidir-transformer", "--dim", "1024", "--depth", "4",
                "--context-dim", "1024", "--heads", "16", "--dim-head", "64", "--out", model,
                "--seed", "1"])
        mod = {}
        for w, c in (("f32", "f32"), ("bf16", "f32"), ("f16", "f32"), ("int8", "f32"),
                     ("f32", "bf16")):
            r = json.loads(gb.run([a.xattn, "bench", model, "--len", "512", "--context-len",
                                   "512", "--reps", "5", "--threads", str(a.threads),
                                   "--weights", w, "--compute", c, "--json"]).strip()
                           .splitlines()[-1])
            mod[f"xattn_{w}_{c}"] = {"seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]}
            print("xattn module", w, c, mod[f"xattn_{w}_{c}"], flush=True)
        t = json.loads(gb.run([sys.executable, "-c", TORCH_MODULE, model, str(a.threads)])
                       .strip().splitlines()[-1])
        mod["torch_f32"], mod["torch_autocast_bf16"] = t["f32"], t["bf16"]
        print("torch module", t, flush=True)
        res["module"] = mod
    with open(os.path.join(a.out, "precision.json"), "w") as f:
        json.dump(res, f, indent=1)
    report(res, a.out)


def report(r, out):
    dec, mod = r["decode"], r["module"]
    f32 = dec["xattn_f32"]["tokens_per_s"]
    tf, tb = dec["torch_float32"]["tokens_per_s"], dec["torch_bfloat16"]["tokens_per_s"]
    lines = [f"Measured on {machine.describe(r['machine'])}; bf16 instructions: "
             f"{', '.join(r['bf16_instructions']) or 'none'}; {r['threads']} threads.", "",
             "Decoding 256 tokens (6 layers, hidden 768, vocabulary 30522, greedy, batch 1):", "",
             "| | tokens/s | against xattn f32 | against PyTorch f32 | against PyTorch bf16 | "
             "peak RSS (whole process) |", "|---|---:|---:|---:|---:|---:|"]
    for k, v in dec.items():
        t = v["tokens_per_s"]
        lines.append(f"| {k.replace('_', ' ')} | {t:.1f} | {t / f32:.2f}x | {t / tf:.2f}x | "
                     f"{t / tb:.2f}x | {v['peak_rss_mb']:.0f} MB |")
    base = mod["xattn_f32_f32"]
    lines += ["", "BidirectionalCrossAttentionTransformer (dim 1024, depth 4, 16 heads x 64), "
              "B 1, I = J = 512, forward:", "",
              "| | forward ms | against xattn f32 | peak RSS (whole process) | against f32 |",
              "|---|---:|---:|---:|---:|"]
    for k, v in mod.items():
        if not k.startswith("xattn"):
            continue
        _, w, c = k.split("_")
        lines.append(f"| xattn weights {w}, compute {c} | {v['seconds'] * 1e3:.1f} | "
                     f"{base['seconds'] / v['seconds']:.2f}x | {v['peak_rss_mb']:.0f} MB | "
                     f"{v['peak_rss_mb'] / base['peak_rss_mb']:.2f} |")
    lines.append(f"| PyTorch f32 | {mod['torch_f32'] * 1e3:.1f} | "
                 f"{base['seconds'] / mod['torch_f32']:.2f}x | | |")
    lines.append(f"| PyTorch autocast bf16 | {mod['torch_autocast_bf16'] * 1e3:.1f} | "
                 f"{base['seconds'] / mod['torch_autocast_bf16']:.2f}x | | |")
    with open(os.path.join(out, "precision_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
