"""PyTorch side of bench/bench_decoder.c: the same transformers BertModel decoder layer stack
(BertConfig(is_decoder=True, add_cross_attention=True, hidden_act="gelu"), hidden 256, heads 4,
intermediate 1024, 2 layers, memory 64; default attention implementation), same "name"
strings, same threads (torch.set_num_threads), medians, printed as JSON lines
{"name", "seconds", "threads", "torch", "transformers"}:
  full         B=4 T=128: model.encoder on the masks BertModel builds (all ones)
  incremental  B=1, 256 tokens one at a time through BertModel(inputs_embeds=..., use_cache=True,
               past_key_values=...) with encoder_hidden_states: transformers' own cached
               generation path (EncoderDecoderCache: cross K/V computed once, self K/V grows).
               BertModel also runs its embeddings (position + token type + LayerNorm) per step,
               a small extra the C side does not have.

    python bench/torch_decoder.py --threads 2 [--reps 5]
"""
import argparse
import json
import statistics
import time
import warnings

import torch
import transformers
from transformers import BertConfig, BertModel

FULL = "decoder full B=4 T=128 M=64 d=256 heads=4 ff=1024 layers=2"
INC = "decoder incremental 256 tokens B=1 M=64 d=256 heads=4 ff=1024 layers=2"


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
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    cfg = BertConfig(hidden_size=256, num_attention_heads=4, intermediate_size=1024,
                     num_hidden_layers=2, is_decoder=True, add_cross_attention=True,
                     hidden_act="gelu")
    model = BertModel(cfg, add_pooling_layer=False).eval()
    meta = {"threads": a.threads, "torch": torch.__version__,
            "transformers": transformers.__version__}

    B, T, M = 4, 128, 64
    x, mem = torch.randn(B, T, 256), torch.randn(B, M, 256)
    am = torch.ones(B, T, dtype=torch.long)
    with torch.inference_mode():
        sm, _ = model._create_attention_masks(am, None, x, mem, None)
        t = med_time(lambda: model.encoder(x, attention_mask=sm, encoder_hidden_states=mem), a.reps)
    print(json.dumps({"name": FULL, "seconds": t, **meta}))

    xs, mem1 = torch.randn(1, 256, 256), torch.randn(1, M, 256)

    def decode():
        past = None
        for i in range(256):
            o = model(inputs_embeds=xs[:, i:i + 1], encoder_hidden_states=mem1,
                      past_key_values=past, use_cache=True)
            past = o.past_key_values

    with torch.inference_mode():
        t = med_time(decode, a.reps)
    print(json.dumps({"name": INC, "seconds": t, **meta}))


if __name__ == "__main__":
    main()
