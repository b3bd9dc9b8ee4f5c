"""How well float32 can do on a BERT decoder stack with large weights: the error against the
float64 reference of PyTorch's own float32 forward and of xattn's full and incremental
(generation-order) forwards, on random 3-layer stacks (hidden 32, 4 heads) whose matrices are
drawn with standard deviation STD (the fixtures use 0.3; 0.5 and more make the stack
ill-conditioned: softmax logits and LayerNorm inputs grow, and float32 rounding is amplified).

    python tests/reference/check_decoder_precision.py [--std 0.3 0.5 0.7] [--seeds 6]

Prints, per std, the largest and median error max |y - ref| / (1 + |ref|) over the seeds.
Needs xattn (build/libxattn.so or an installed package), torch and transformers.
"""
import argparse
import copy
import os
import statistics
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "python"))
import xattn  # noqa: E402


def one(std, seed, d):
    torch.manual_seed(seed)
    cfg = BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=48,
                     num_hidden_layers=3, is_decoder=True, add_cross_attention=True,
                     hidden_act="gelu", layer_norm_eps=1e-12, attn_implementation="eager")
    m = BertModel(cfg, add_pooling_layer=False).eval()
    with torch.no_grad():
        for n, p in m.encoder.named_parameters():
            p.copy_(torch.randn(p.shape) * (std if p.ndim == 2 else 0.2)
                    + (1.0 if n.endswith("LayerNorm.weight") else 0.0))
    sd = {k[len("encoder."):]: v.float().contiguous() for k, v in m.state_dict().items()
          if k.startswith("encoder.")}
    path = os.path.join(d, "dec.safetensors")
    save_file(sd, path, metadata={"heads": "4", "layer_norm_eps": "1e-12"})
    x, mem = torch.randn(2, 9, 32), torch.randn(2, 5, 32)

    def run(dt):
        mm = copy.deepcopy(m).to(dt).eval()
        with torch.no_grad():
            a, e = mm._create_attention_masks(None, None, x.to(dt), mem.to(dt), None)
            return mm.encoder(x.to(dt), attention_mask=a, encoder_hidden_states=mem.to(dt),
                              encoder_attention_mask=e).last_hidden_state.double()

    ref = run(torch.float64)
    xm = xattn.load(path, kind="bert-decoder")
    got = {"torch fp32": run(torch.float32),
           "xattn full": xm(x.numpy(), mem.numpy())["out"],
           "xattn incremental": xm(x.numpy(), mem.numpy(), incremental=np.float32(1))["out"]}
    return {k: ((torch.as_tensor(np.asarray(v, np.float64)) - ref).abs() / (1 + ref.abs()))
            .max().item() for k, v in got.items()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--std", type=float, nargs="+", default=[0.3, 0.5, 0.7])
    ap.add_argument("--seeds", type=int, default=6)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        for std in a.std:
            runs = [one(std, s, d) for s in range(a.seeds)]
            cols = "  ".join(f"{k}: max {max(r[k] for r in runs):.2e} median "
                             f"{statistics.median(r[k] for r in runs):.2e}" for k in runs[0])
            print(f"std {std}: {cols}")


if __name__ == "__main__":
    main()
