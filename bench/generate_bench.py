"""Generation: transformers' BertLMHeadModel.generate on PyTorch against `xattn generate` on the
same weights and memory, same thread count, in one run.

For each decoder (2 layers, hidden 256; 6 layers, hidden 768; BERT's vocabulary of 30522 tokens,
heads = hidden / 64, a memory of 32 tokens, batch 1, eos_token_id None so that every run
generates all 64 new tokens) and each search (greedy; beam search with 4 beams):
  - a fresh PyTorch process loads the model (fp32, attn_implementation="sdpa") and times
    generate(max_new_tokens=64) after a short warm-up (the median of three calls), with
    past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()) (transformers 5.24's
    default cache fails with encoder_hidden_states); its peak resident memory is reported for the
    whole process (interpreter, torch and the model included) and net of its baseline (after
    import torch and loading the model, before generating; /proc/self/clear_refs);
  - `xattn generate` runs as a fresh process for 64 tokens and for 1, five times each (then
    again with --weights int8): its tokens per second are 63 / (the difference of the median
    wall times) (the 1-token run pays the loading), and
    64 / the whole process's wall time is reported too; its peak is the process's ru_maxrss
    (whole process);
and the two sequences of ids are compared. Tokens per second = 64 / time (for beams: 64 steps
of 4 beams). Writes bench/results/generate.json and generate_summary.md; --quick (greedy only,
16 tokens) writes to bench/results/quick/.

    python bench/generate_bench.py [--threads 2] [--xattn build/xattn] [--quick] [--out DIR]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
VOCAB, MEM = 30522, 32

PREPARE = r"""
import sys, torch, numpy as np
from safetensors.torch import save_file
from transformers import BertConfig, BertLMHeadModel
d, layers, hidden = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.manual_seed(0)
cfg = BertConfig(vocab_size=30522, hidden_size=hidden, num_hidden_layers=layers,
                 num_attention_heads=hidden // 64, intermediate_size=4 * hidden,
                 is_decoder=True, add_cross_attention=True, pad_token_id=0, bos_token_id=101,
                 eos_token_id=None)
m = BertLMHeadModel(cfg)
sd, seen = {}, set()
for n, t in m.state_dict().items():
    if t.data_ptr() not in seen:
        seen.add(t.data_ptr())
        sd[n] = t.contiguous()
save_file(sd, f"{d}/model.safetensors", metadata={"num_attention_heads": str(hidden // 64),
          "layer_norm_eps": "1e-12", "hidden_act": "gelu", "pad_token_id": "0",
          "bos_token_id": "101", "eos_token_id": "None"})
cfg.save_pretrained(d)
np.save(f"{d}/memory.npy", torch.randn(1, 32, hidden).numpy())
"""

TORCH_RUN = r"""
import sys
d, threads, beams, new = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
sys.path.insert(0, sys.argv[5])
import time, json, torch, numpy as np
from safetensors.torch import load_file
from transformers import BertConfig, BertLMHeadModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from machine import status_mb, reset_peak
torch.set_num_threads(threads)
m = BertLMHeadModel(BertConfig.from_pretrained(d)).eval()
m.load_state_dict(load_file(f"{d}/model.safetensors"), strict=False)
m.tie_weights()
dtype = getattr(torch, sys.argv[6]) if len(sys.argv) > 6 else torch.float32  # the model's type
m = m.to(dtype)
base, hwm0 = status_mb("VmRSS"), status_mb("VmHWM")
restarted = base is not None and reset_peak()
mem = torch.from_numpy(np.load(f"{d}/memory.npy")).to(dtype)
def gen(n):
    return m.generate(input_ids=torch.tensor([[101]]), encoder_hidden_states=mem,
                      max_new_tokens=n, num_beams=beams, do_sample=False, pad_token_id=0,
                      eos_token_id=None,
                      past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()))
with torch.inference_mode():
    gen(4)  # warm-up
    secs = []
    for _ in range(3):  # the median of three
        t0 = time.perf_counter()
        seq = gen(new)
        secs.append(time.perf_counter() - t0)
    sec = sorted(secs)[1]
np.save(f"{d}/torch_ids.npy", seq.numpy())
hwm = status_mb("VmHWM")
print(json.dumps({"seconds": sec, "peak_rss_mb": max(hwm, hwm0) if restarted else hwm,
                  "net_peak_mb": hwm - base if restarted else None, "torch": torch.__version__}))
"""


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr}")
    return r.stdout


def run_xattn(cmd, repeats=5):
    """Median wall time and the largest ru_maxrss (MB) of `repeats` runs of a child process."""
    runs = [run_once(cmd) for _ in range(repeats)]
    return sorted(r[0] for r in runs)[repeats // 2], max(r[1] for r in runs)


def run_once(cmd):
    """Wall time and ru_maxrss (MB) of a child process."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    sec = time.perf_counter() - t0
    err = p.stderr.read()
    if status != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{err}")
    return sec, ru.ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--xattn", default=os.path.join(HERE, "..", "build", "xattn"))
    ap.add_argument("--quick", action="store_true", help="greedy only, 16 tokens")
    ap.add_argument("--out")
    a = ap.parse_args()
    committed = os.path.join(HERE, "results")
    a.out = a.out or (os.path.join(committed, "quick") if a.quick else committed)
    if a.quick and os.path.realpath(a.out) == os.path.realpath(committed):
        sys.exit("generate_bench: --quick does not write over the committed results")
    os.makedirs(a.out, exist_ok=True)
    sys.path.insert(0, HERE)
    import machine
    import numpy as np
    mach = machine.record(os.path.dirname(os.path.abspath(a.xattn)), a.threads)
    print(machine.describe(mach), flush=True)
    new = 16 if a.quick else 64
    rows = []
    for layers, hidden in [(2, 256), (6, 768)]:
        with tempfile.TemporaryDirectory() as d:
            run([sys.executable, "-c", PREPARE, d, str(layers), str(hidden)])
            for beams in [1] if a.quick else [1, 4]:
                t = json.loads(run([sys.executable, "-c", TORCH_RUN, d, str(a.threads), str(beams),
                                    str(new), HERE]).strip().splitlines()[-1])
                cmd = [a.xattn, "generate", f"{d}/model.safetensors", "--memory",
                       f"{d}/memory.npy", "--max-new-tokens", str(new), "--threads",
                       str(a.threads), "--out", f"{d}/ids.npy"]
                if beams > 1:
                    cmd += ["--num-beams", str(beams)]
                xs, xm = run_xattn(cmd)
                ids32 = np.load(f"{d}/ids.npy")
                same = bool(np.array_equal(ids32, np.load(f"{d}/torch_ids.npy")))
                # loading costs what a 1-token run costs: the rest is generation
                x1, _ = run_xattn(cmd[:5] + ["--max-new-tokens", "1"] + cmd[7:])
                # the same with the weights quantised to int8 at load
                q = cmd + ["--weights", "int8"]
                qs, qm = run_xattn(q)
                ids8 = np.load(f"{d}/ids.npy")
                q1, _ = run_xattn(q[:5] + ["--max-new-tokens", "1"] + q[7:])
                agree = ids8 == ids32
                prefix = int(np.argmin(agree[0])) if not agree[0].all() else agree.shape[1]
                r = {"layers": layers, "hidden": hidden, "vocab": VOCAB, "memory_tokens": MEM,
                     "batch": 1, "beams": beams, "new_tokens": new, "threads": a.threads,
                     "torch": t["torch"], "torch_cache": "EncoderDecoderCache(DynamicCache(), "
                     "DynamicCache())", "torch_seconds": t["seconds"],
                     "torch_tokens_per_s": new / t["seconds"],
                     "torch_peak_rss_mb": t["peak_rss_mb"], "torch_net_peak_mb": t["net_peak_mb"],
                     "xattn_seconds_whole_process": xs, "xattn_seconds_one_token": x1,
                     "xattn_tokens_per_s": (new - 1) / max(xs - x1, 1e-9),
                     "xattn_tokens_per_s_whole_process": new / xs, "xattn_peak_rss_mb": xm,
                     "speedup": (new - 1) / max(xs - x1, 1e-9) / (new / t["seconds"]),
                     "memory_ratio": xm / t["peak_rss_mb"], "same_ids": same,
                     "int8_seconds_whole_process": qs, "int8_seconds_one_token": q1,
                     "int8_tokens_per_s": (new - 1) / max(qs - q1, 1e-9), "int8_peak_rss_mb": qm,
                     "int8_speedup": (new - 1) / max(qs - q1, 1e-9) / (new / t["seconds"]),
                     "int8_memory_ratio": qm / t["peak_rss_mb"],
                     "int8_ids_equal_to_f32": float(agree.mean()),
                     "int8_common_prefix_tokens": prefix, "machine": mach}
                rows.append(r)
                print(f"{layers} layers, hidden {hidden}, beams {beams}: torch "
                      f"{r['torch_tokens_per_s']:.1f} tok/s, {t['peak_rss_mb']:.0f} MB "
                      f"(net {t['net_peak_mb'] or float('nan'):.0f}); xattn "
                      f"{r['xattn_tokens_per_s']:.1f} tok/s, {xm:.0f} MB; speed-up "
                      f"{r['speedup']:.1f}x, memory {r['memory_ratio']:.2f}, same ids {same}; "
                      f"int8 {r['int8_tokens_per_s']:.1f} tok/s, {qm:.0f} MB, speed-up "
                      f"{r['int8_speedup']:.1f}x, ids as f32 {r['int8_ids_equal_to_f32']:.2f}",
                      flush=True)
    with open(os.path.join(a.out, "generate.json"), "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    report(rows, a.out, mach)


def report(rows, out, mach):
    import machine
    lines = [f"Measured on {machine.describe(mach)}; PyTorch {rows[0]['torch']}, transformers' "
             f"BertLMHeadModel.generate with past_key_values=EncoderDecoderCache(DynamicCache(), "
             f"DynamicCache()), fp32, {rows[0]['threads']} threads, batch 1, "
             f"{rows[0]['new_tokens']} new tokens, vocabulary {VOCAB}, memory of {MEM} tokens, "
             "medians of 3 generate() calls (PyTorch) and of 5 processes (xattn).", "",
             "xattn's tokens/s: (N - 1) / (wall time of N tokens - wall time of 1 token), two "
             "processes, loading cancelled out (whole process, loading included, in "
             "generate.json); PyTorch's: N / the generate() call. Peak resident memory: PyTorch's whole process (interpreter, "
             "torch and the model included) and net of its baseline after loading the model; "
             "xattn's whole process (ru_maxrss).", "",
             "| layers | hidden | search | PyTorch tok/s | xattn tok/s | speed-up | PyTorch peak "
             "(whole / net) | xattn peak | xattn / PyTorch (whole) | same ids |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        net = r["torch_net_peak_mb"]
        lines.append(f"| {r['layers']} | {r['hidden']} | "
                     f"{'greedy' if r['beams'] == 1 else 'beam %d' % r['beams']} | "
                     f"{r['torch_tokens_per_s']:.1f} | {r['xattn_tokens_per_s']:.1f} | "
                     f"{r['speedup']:.1f}x | {r['torch_peak_rss_mb']:.0f} / "
                     f"{f'{net:.0f}' if net is not None else 'n/a'} MB | "
                     f"{r['xattn_peak_rss_mb']:.0f} MB | 1/{1 / r['memory_ratio']:.1f} | "
                     f"{'yes' if r['same_ids'] else 'no'} |")
    lines += ["", "The same runs with `--weights int8` (every linear layer quantised at load, per "
              "output channel; activations, norms, attention and softmax in float32): the ids "
              "are those of a slightly different model, so they follow the float32 ids only "
              "for a while (prefix: tokens equal before the first difference, first row).", "",
              "| layers | hidden | search | PyTorch tok/s | xattn int8 tok/s | speed-up | xattn "
              "int8 peak | int8 / PyTorch (whole) | ids as float32 (prefix) |",
              "|---:|---:|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['layers']} | {r['hidden']} | "
                     f"{'greedy' if r['beams'] == 1 else 'beam %d' % r['beams']} | "
                     f"{r['torch_tokens_per_s']:.1f} | {r['int8_tokens_per_s']:.1f} | "
                     f"{r['int8_speedup']:.1f}x | {r['int8_peak_rss_mb']:.0f} MB | "
                     f"1/{1 / r['int8_memory_ratio']:.1f} | "
                     f"{r['int8_ids_equal_to_f32']:.2f} ({r['int8_common_prefix_tokens']}) |")
    with open(os.path.join(out, "generate_summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
