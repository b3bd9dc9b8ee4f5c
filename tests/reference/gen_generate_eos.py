"""Generation with several end tokens, with the special ids given to generate(), and from
left-padded prompts: transformers' BertLMHeadModel.generate (5.24) on a random model built as
gen_generate.py builds its own, in float64 (weights rounded to fp32), with
past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()).

generate_eos.safetensors holds the model (state dict; __metadata__ eos_token_id "[e1, e2]", as
str() of a list writes it: two end tokens that greedy search emits for items 0 and 1 at their
4th new position or later), input.memory (B, M, hidden), input.memory_mask (B, M) U8 1 = keep,
input.prompt (B, P) I64 and, per case of CASES, expected.<case> (B, T) I64 with
__metadata__ gen.<case> = the generate() keyword arguments (JSON). The model's own eos list is
used where a case names none.

generate_ragged.safetensors holds the same model and memory, input.prompt (B, 4) left-padded
with pad tokens, input.prompt_mask (B, 4) U8 (generate()'s attention_mask: 0 at the pads; 0, 1
and 2 pads) and expected.<case> for RAGGED's cases.

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


RAGGED = {
    "greedy": dict(num_beams=1),
    "beam3": dict(num_beams=3, length_penalty=1.0, early_stopping=False),
    "beam4_es": dict(num_beams=4, length_penalty=0.7, early_stopping=True),
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

    # left-padded prompts of 4, 3 and 2 tokens
    rp = torch.randint(2, V, (B, 4), generator=G)
    rp[:, 0] = BOS
    rp[1] = torch.cat([torch.tensor([PAD]), rp[1, :3]])
    rp[1, 1] = BOS
    rp[2] = torch.cat([torch.tensor([PAD, PAD]), rp[2, :2]])
    rp[2, 2] = BOS
    pm = torch.ones(B, 4, dtype=torch.long)
    pm[1, 0] = 0
    pm[2, :2] = 0
    t = state(model)
    t.update({"input.memory": mem.float(), "input.memory_mask": mask.to(torch.uint8),
              "input.prompt": rp, "input.prompt_mask": pm.to(torch.uint8)})
    md = meta(model.config)
    for case, kw in RAGGED.items():
        with torch.no_grad():
            seq = model.generate(input_ids=rp, attention_mask=pm, encoder_hidden_states=mem,
                                 encoder_attention_mask=mask, max_new_tokens=MAX_NEW,
                                 do_sample=False, pad_token_id=PAD, bos_token_id=BOS,
                                 past_key_values=EncoderDecoderCache(DynamicCache(),
                                                                     DynamicCache()), **kw)
        t["expected." + case] = seq.contiguous()
        md["gen." + case] = json.dumps(kw)
        print("ragged", case, seq.tolist())
    md["gen.max_new_tokens"] = str(MAX_NEW)
    save_file(t, os.path.join(out, "generate_ragged.safetensors"), metadata=md)


if __name__ == "__main__":
    main()
