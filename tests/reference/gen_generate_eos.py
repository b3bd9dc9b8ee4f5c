"""Generation with several end tokens and with the special ids given to generate(): transformers'
BertLMHeadModel.generate (5.24) on a random model built as gen_generate.py builds its own, in
float64 (weights rounded to fp32), with
past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()).

generate_eos.safetensors holds the model (state dict; __metadata__ eos_token_id "[e1, e2]", as
str() of a list writes it: two end tokens that greedy search emits for items 0 and 1 at their
4th new position or later), input.memory (B, M, hidden), input.memory_mask (B, M) U8 1 = keep,
input.prompt (B, P) I64 and, per case of CASES, expected.<case> (B, T) I64 with
__metadata__ gen.<case> = the generate() keyword arguments (JSON). The model's own eos list is
used where a case names none.

    python tests/reference/gen_generate_eos.py [--out tests/fixtures]
"""
import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import BertLMHeadModel
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

from gen_generate import BOS, HID, PAD, V, config, meta, randomise, state

G = torch.Generator().manual_seed(23)
MAX_NEW = 12
# name: generate() keyword arguments (eos_token_id "model": the model's list)
CASES = {
    "greedy": dict(num_beams=1),
    "greedy_pad5": dict(num_beams=1, pad_token_id=5),
    "greedy_eos2": dict(num_beams=1, eos_token_id="second"),
    "beam3": dict(num_beams=3, length_penalty=1.0, early_stopping=False),
    "beam4_es": dict(num_beams=4, length_penalty=0.7, early_stopping=True),
    "beam3_never": dict(num_beams=3, length_penalty=1.3, early_stopping="never"),
}


def run(model, prompt, mem, mask, eos, kw):
    kw = dict(kw)
    e = kw.pop("eos_token_id", "model")
    pad = kw.pop("pad_token_id", PAD)
    with torch.no_grad():
        return model.generate(input_ids=prompt, encoder_hidden_states=mem,
                              encoder_attention_mask=mask, max_new_tokens=MAX_NEW,
                              do_sample=False, eos_token_id=eos if e == "model" else eos[1],
                              pad_token_id=pad, bos_token_id=BOS,
                              past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
                              **kw)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    out = ap.parse_args().out
    torch.manual_seed(0)
    model = randomise(BertLMHeadModel(config(True)))
    B, M, P = 3, 5, 2
    mem = torch.randn(B, M, HID, generator=G, dtype=torch.float64).float().double()
    mask = torch.ones(B, M, dtype=torch.long)
    mask[2, 2:] = 0
    prompt = torch.randint(2, V, (B, P), generator=G)
    prompt[:, 0] = BOS
    free = run(model, prompt, mem, mask, None, dict(num_beams=1)).tolist()

    def first_new(row, avoid):
        g = row[P:]
        return next(t for i, t in enumerate(g) if i >= 3 and t not in g[:i] and t not in avoid)

    e1 = first_new(free[0], ())
    e2 = first_new(free[1], (e1,))
    eos = [e1, e2]
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    t = state(model)
    t.update({"input.memory": mem.float(), "input.memory_mask": mask.to(torch.uint8),
              "input.prompt": prompt})
    md = meta(model.config)
    assert md["eos_token_id"] == str(eos)
    for case, kw in CASES.items():
        seq = run(model, prompt, mem, mask, eos, kw)
        t["expected." + case] = seq.contiguous()
        md["gen." + case] = json.dumps(kw)
        print(case, seq.tolist())
    md["gen.max_new_tokens"] = str(MAX_NEW)
    save_file(t, os.path.join(out, "generate_eos.safetensors"), metadata=md)


if __name__ == "__main__":
    main()
