#!/usr/bin/env python3
"""Reference fixtures for M8 (BERT decoder layers with cross-attention): tests/fixtures/decoder_*.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  transformers==5.23.0  numpy  safetensors

    python tests/reference/gen_decoder.py [--out tests/fixtures]

The reference is the real transformers BertModel(BertConfig(is_decoder=True,
add_cross_attention=True, hidden_act="gelu"), attn_implementation="eager") in float64
(model.double().eval()), weights rounded to fp32 first. The masks are built by the model's own
code path (BertModel._create_attention_masks -> masking_utils.create_causal_mask for the causal +
padding self-attention mask, create_bidirectional_mask for encoder_attention_mask: additive
finfo.min), then the layer stack runs as BertModel does: model.encoder(x, attention_mask,
encoder_hidden_states=memory, encoder_attention_mask). (BertModel's embeddings are skipped: the
decoder layers see x itself.)

Every decoder_<case>.safetensors holds
  * the state_dict of model.encoder (layer.N.*) or of one BertLayer (case 'layer': no prefix),
    stored F32,
  * input.x (B, T, hidden), input.memory (B, M, hidden), optional input.attention_mask (B, T) and
    input.memory_mask (B, M) (U8, 1 = keep, as transformers' attention_mask),
  * expected.out (B, T, hidden),
  * case 'av' also the modality projector (proj.video.*, proj.audio.*, type_embedding.*), inputs
    input.video (B, Fv, Nv, Dv), input.audio (B, Fa, Na, Da) and expected.memory (B, Nv+Na, hidden)
    = cat([mean_f(video) Wv^T + bv + tv, mean_f(audio) Wa^T + ba + ta], dim=1); input.memory is
    expected.memory rounded to fp32.
  * __metadata__: heads, layer_norm_eps (omitted in case 'defaults': 1e-12), layers.
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertModel

G = torch.Generator().manual_seed(8)


def randn(*s, scale=1.0):
    return (torch.randn(*s, generator=G, dtype=torch.float64) * scale).float().double()


def build(hidden, heads, inter, layers, eps):
    cfg = BertConfig(hidden_size=hidden, num_attention_heads=heads, intermediate_size=inter,
                     num_hidden_layers=layers, is_decoder=True, add_cross_attention=True,
                     hidden_act="gelu", layer_norm_eps=eps, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False)
    with torch.no_grad():
        for n, p in model.named_parameters():  # non-trivial norms and biases, fp32 values
            p.copy_(torch.randn(p.shape, generator=G) * (0.3 if p.ndim == 2 else 0.2)
                    + (1.0 if n.endswith("LayerNorm.weight") else 0.0))
    model = model.double().eval()
    return model


def run(model, x, am, mem, em):
    with torch.no_grad():
        a, e = model._create_attention_masks(am, em, x, mem, None)
        return model.encoder(x, attention_mask=a, encoder_hidden_states=mem,
                             encoder_attention_mask=e).last_hidden_state


def case(out, name, *, hidden=16, heads=4, inter=32, layers=1, B=2, T=5, M=7, am=None, em=None,
         eps=1e-12, meta_eps=True, single=False, av=None):
    model = build(hidden, heads, inter, layers, eps)
    t = {}
    x = randn(B, T, hidden)
    if av is not None:
        Fv, Nv, Dv, Fa, Na, Da = av
        video = randn(B, Fv, Nv, Dv)
        audio = randn(B, Fa, Na, Da)
        pw = {"proj.video.weight": randn(hidden, Dv, scale=0.4), "proj.video.bias": randn(hidden, scale=0.2),
              "proj.audio.weight": randn(hidden, Da, scale=0.4), "proj.audio.bias": randn(hidden, scale=0.2),
              "type_embedding.video": randn(hidden, scale=0.2), "type_embedding.audio": randn(hidden, scale=0.2)}
        mv = video.mean(1) @ pw["proj.video.weight"].T + pw["proj.video.bias"] + pw["type_embedding.video"]
        ma = audio.mean(1) @ pw["proj.audio.weight"].T + pw["proj.audio.bias"] + pw["type_embedding.audio"]
        memory = torch.cat([mv, ma], 1)
        t.update({k: v.float() for k, v in pw.items()})
        t["input.video"] = video.float()
        t["input.audio"] = audio.float()
        t["expected.memory"] = memory.float()
        mem = memory.float().double()
        M = mem.shape[1]
    else:
        mem = randn(B, M, hidden)
    amt = torch.tensor(am, dtype=torch.long) if am is not None else None
    emt = torch.tensor(em, dtype=torch.long) if em is not None else None
    y = run(model, x, amt, mem, emt)
    assert torch.isfinite(y).all()
    sd = model.encoder.layer[0].state_dict() if single else model.encoder.state_dict()
    t.update({k: v.float().contiguous() for k, v in sd.items()})
    t["input.x"] = x.float()
    t["input.memory"] = mem.float()
    if amt is not None:
        t["input.attention_mask"] = amt.to(torch.uint8)
    if emt is not None:
        t["input.memory_mask"] = emt.to(torch.uint8)
    t["expected.out"] = y.float()
    meta = {"heads": str(heads), "layers": str(layers),
            "reference": "transformers BertEncoder (is_decoder, add_cross_attention), float64"}
    if meta_eps:
        meta["layer_norm_eps"] = repr(eps)
    save_file(t, os.path.join(out, f"decoder_{name}.safetensors"), metadata=meta)


def cli_case(out):
    """tests/fixtures/decoder_cli/: model.safetensors (2-layer BertEncoder + projector, metadata
    heads and layer_norm_eps), x.npy (2, 9, 16), memory.npy (2, 7, 16), attention_mask.npy
    (int64, 1 = keep), memory_mask.npy (bool), video.npy (2, 3, 4, 12), audio.npy (2, 5, 3, 10),
    expected_out.npy (memory + masks), expected_out_av.npy (projected T-AV memory, no masks),
    expected_out_v.npy (video only, no masks), x1.npy / memory1.npy / expected_out1.npy (unbatched)."""
    import numpy as np
    d = os.path.join(out, "decoder_cli")
    os.makedirs(d, exist_ok=True)
    H, hidden = 4, 16
    model = build(hidden, H, 32, 2, 1e-6)
    B, T, M = 2, 9, 7
    x = randn(B, T, hidden)
    mem = randn(B, M, hidden)
    am = torch.tensor([[1] * 9, [1] * 6 + [0] * 3])
    em = torch.tensor([[1] * 7, [1, 1, 1, 0, 0, 0, 0]])
    pw = {"proj.video.weight": randn(hidden, 12, scale=0.4), "proj.video.bias": randn(hidden, scale=0.2),
          "proj.audio.weight": randn(hidden, 10, scale=0.4), "proj.audio.bias": randn(hidden, scale=0.2),
          "type_embedding.video": randn(hidden, scale=0.2), "type_embedding.audio": randn(hidden, scale=0.2)}
    video, audio = randn(B, 3, 4, 12), randn(B, 5, 3, 10)
    mv = video.mean(1) @ pw["proj.video.weight"].T + pw["proj.video.bias"] + pw["type_embedding.video"]
    ma = audio.mean(1) @ pw["proj.audio.weight"].T + pw["proj.audio.bias"] + pw["type_embedding.audio"]
    sd = {k: v.float().contiguous() for k, v in model.encoder.state_dict().items()}
    sd.update({k: v.float() for k, v in pw.items()})
    save_file(sd, os.path.join(d, "model.safetensors"),
              metadata={"heads": str(H), "layer_norm_eps": "1e-06"})
    f32 = lambda t: t.float().numpy()
    np.save(os.path.join(d, "x.npy"), f32(x))
    np.save(os.path.join(d, "memory.npy"), f32(mem))
    np.save(os.path.join(d, "attention_mask.npy"), am.numpy().astype(np.int64))
    np.save(os.path.join(d, "memory_mask.npy"), em.numpy().astype(bool))
    np.save(os.path.join(d, "video.npy"), f32(video))
    np.save(os.path.join(d, "audio.npy"), f32(audio))
    np.save(os.path.join(d, "expected_out.npy"), f32(run(model, x, am, mem, em)))
    np.save(os.path.join(d, "expected_out_av.npy"), f32(run(model, x, None, torch.cat([mv, ma], 1), None)))
    np.save(os.path.join(d, "expected_out_v.npy"), f32(run(model, x, None, mv, None)))
    np.save(os.path.join(d, "x1.npy"), f32(x[0]))
    np.save(os.path.join(d, "memory1.npy"), f32(mem[0]))
    np.save(os.path.join(d, "expected_out1.npy"), f32(run(model, x[:1], None, mem[:1], None)[0]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    o = ap.parse_args().out
    case(o, "layer", layers=1, B=2, T=5, M=7, single=True,
         am=[[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], em=[[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    case(o, "l1", layers=1, B=1, T=1, M=1)
    case(o, "l2", layers=2, B=3, T=33, M=9, eps=1e-5,
         am=[[1] * 33, [1] * 20 + [0] * 13, [0] * 3 + [1] * 30],
         em=[[1] * 9, [0] * 9, [1, 0] * 4 + [1]])
    case(o, "l3", layers=3, B=2, T=17, M=5, heads=2, am=[[1] * 17, [1] * 11 + [0] * 6],
         em=[[1] * 5, [1, 1, 0, 0, 0]])
    case(o, "defaults", layers=1, B=2, T=65, M=3, heads=4, meta_eps=False)
    cli_case(o)
    case(o, "av", layers=2, B=2, T=6, av=(3, 4, 12, 5, 3, 10), em=[[1] * 7, [1] * 4 + [1, 0, 0]])


if __name__ == "__main__":
    main()
