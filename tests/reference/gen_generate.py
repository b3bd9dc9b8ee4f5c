#!/usr/bin/env python3
"""Reference fixtures for whole BERT decoder models and generation: tests/fixtures/generate_*.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  transformers==5.24.0  numpy  safetensors

    python tests/reference/gen_generate.py [--out tests/fixtures]

The reference is transformers' BertLMHeadModel / BertModel (BertConfig(is_decoder=True,
add_cross_attention=True), attn_implementation="eager") in float64, weights rounded to fp32 first.
Generation runs transformers' own generate() with
past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()) (the default cache of
BertLMHeadModel.generate fails with encoder_hidden_states in transformers 5.24).

generate_lm_tied.safetensors / generate_lm_untied.safetensors hold
  * the model's state_dict as safetensors' save_model writes it (tensors that share memory with
    another are left out: cls.predictions.decoder.weight when tied to the word embeddings, and
    cls.predictions.decoder.bias, which is cls.predictions.bias), stored F32,
  * __metadata__: BertConfig's num_attention_heads, layer_norm_eps, hidden_act, pad_token_id,
    bos_token_id, eos_token_id,
  * input.memory (B, M, hidden), input.memory_mask (B, M) (U8, 1 = keep), input.ids (B, T) I64 and
    expected.logits (B, T, vocab): the logits of every position for teacher-forced ids,
  * input.prompt (B, P) I64 and expected.<case> (B, P + n) I64: generate()'s sequences for the
    cases of CASES (greedy and beam search settings, written in the metadata as gen.<case>).
generate_bert.safetensors: a bare BertModel (embeddings.*, encoder.*): input.ids, input.memory,
  expected.hidden (B, T, hidden) (last_hidden_state).
generate_sampling.safetensors: input.logits (R, V) F32 and, per setting k of SAMPLING,
  expected.probs.k (R, V): softmax of the logits after transformers' TemperatureLogitsWarper,
  TopKLogitsWarper and TopPLogitsWarper, in that order (generate's order).
generate_cli/ (tests/test_cli_generate.sh): model.safetensors, a tied BertLMHeadModel with a
  video/audio projector beside its layers (bert.encoder.proj.{video,audio}.*,
  bert.encoder.type_embedding.{video,audio}: memory = [mean_f(video) Wv^T + bv + tv;
  mean_f(audio) Wa^T + ba + ta]) and __metadata__; config.json (transformers' own
  BertConfig.to_json_file); vocab.txt (V WordPiece tokens); memory.npy, memory_mask.npy, prompt.npy,
  video.npy, audio.npy; expected_<case>.npy: generate()'s sequences (int64) for CLI_CASES;
  expected_<case>.txt: BertTokenizer(vocab.txt).decode(row, skip_special_tokens=True), a line a row.
"""
import argparse
import json
import os

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertLMHeadModel, BertModel, BertTokenizer
from transformers.cache_utils import DynamicCache, EncoderDecoderCache
from transformers.generation.logits_process import (LogitsProcessorList, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

G = torch.Generator().manual_seed(11)
V, HID, HEADS, FF, LAYERS, MAXPOS = 40, 32, 4, 48, 2, 32
PAD, BOS = 0, 1

# name: generate() keyword arguments (eos_token_id is the model's)
CASES = {
    "greedy": dict(num_beams=1),
    "greedy_ngram": dict(num_beams=1, no_repeat_ngram_size=2),
    "beam3": dict(num_beams=3, length_penalty=1.0, early_stopping=False),
    "beam3_es": dict(num_beams=3, length_penalty=0.6, early_stopping=True),
    "beam4_never": dict(num_beams=4, length_penalty=1.5, early_stopping="never"),
    "beam4_ngram": dict(num_beams=4, length_penalty=-0.5, no_repeat_ngram_size=2),
}
MAX_NEW = 12
SAMPLING = [(0.7, 0, 1.0), (1.0, 5, 1.0), (1.0, 0, 0.9), (1.3, 10, 0.8), (0.5, 1, 0.5)]


def config(tie=True, eos=None):
    return BertConfig(vocab_size=V, hidden_size=HID, num_attention_heads=HEADS,
                      intermediate_size=FF, num_hidden_layers=LAYERS, max_position_embeddings=MAXPOS,
                      is_decoder=True, add_cross_attention=True, hidden_act="gelu",
                      layer_norm_eps=1e-12, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=eos,
                      tie_word_embeddings=tie, attn_implementation="eager")


def randomise(model):
    with torch.no_grad():
        for n, p in model.named_parameters():  # non-trivial norms and biases, fp32 values
            scale = 0.3
            p.copy_(torch.randn(p.shape, generator=G) * (scale if p.ndim == 2 else 0.2)
                    + (1.0 if n.endswith("LayerNorm.weight") else 0.0))
    return model.double().eval()


def state(model):
    """The state dict as save_model writes it: one tensor of each shared group, F32."""
    out, seen = {}, set()
    for n, t in model.state_dict().items():
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        out[n] = t.float().contiguous()
    return out


def meta(cfg):
    return {"num_attention_heads": str(cfg.num_attention_heads),
            "layer_norm_eps": repr(cfg.layer_norm_eps), "hidden_act": cfg.hidden_act,
            "pad_token_id": str(cfg.pad_token_id), "bos_token_id": str(cfg.bos_token_id),
            "eos_token_id": str(cfg.eos_token_id)}


def generate(model, prompt, mem, mask, eos, kw):
    with torch.no_grad():
        return model.generate(input_ids=prompt, encoder_hidden_states=mem,
                              encoder_attention_mask=mask, max_new_tokens=MAX_NEW, do_sample=False,
                              eos_token_id=eos, pad_token_id=PAD, bos_token_id=BOS,
                              past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
                              **kw)


def lm_case(out, name, tie):
    model = randomise(BertLMHeadModel(config(tie)))
    B, M, T, P = 2, 5, 9, 2
    mem = torch.randn(B, M, HID, generator=G, dtype=torch.float64).float().double()
    mask = torch.ones(B, M, dtype=torch.long)
    mask[1, 3:] = 0
    ids = torch.randint(2, V, (B, T), generator=G)
    ids[:, 0] = BOS
    prompt = ids[:, :P].clone()
    with torch.no_grad():
        logits = model(input_ids=ids, encoder_hidden_states=mem, encoder_attention_mask=mask).logits
    # eos: a token greedy search emits for item 0 at its 4th new position (not before)
    g = generate(model, prompt, mem, mask, None, CASES["greedy"])[0, P:].tolist()
    eos = next(t for i, t in enumerate(g) if i >= 3 and t not in g[:i])
    model.config.eos_token_id = eos
    model.generation_config.eos_token_id = eos
    t = state(model)
    t.update({"input.memory": mem.float(), "input.memory_mask": mask.to(torch.uint8),
              "input.ids": ids, "expected.logits": logits, "input.prompt": prompt})
    md = meta(model.config)
    for case, kw in CASES.items():
        seq = generate(model, prompt, mem, mask, eos, kw)
        t["expected." + case] = seq.contiguous()
        md["gen." + case] = json.dumps(kw)
        print(name, case, seq.tolist())
    md["gen.max_new_tokens"] = str(MAX_NEW)
    save_file(t, os.path.join(out, f"generate_{name}.safetensors"), metadata=md)
    return model


def bert_case(out):
    model = randomise(BertModel(config(), add_pooling_layer=False))
    B, M, T = 2, 4, 6
    mem = torch.randn(B, M, HID, generator=G, dtype=torch.float64).float().double()
    ids = torch.randint(0, V, (B, T), generator=G)
    with torch.no_grad():
        hidden = model(input_ids=ids, encoder_hidden_states=mem).last_hidden_state
    t = state(model)
    t.update({"input.memory": mem.float(), "input.ids": ids, "expected.hidden": hidden})
    save_file(t, os.path.join(out, "generate_bert.safetensors"), metadata=meta(model.config))


def sampling_case(out):
    R = 4
    logits = (torch.randn(R, V, generator=G) * 2).double()
    logits[1, 5] = logits[1, 6] = logits[1].max() + 0.5  # a tie at the top
    logits[2, :] = 0.25  # all equal
    t = {"input.logits": logits.float()}
    md = {}
    for k, (temp, top_k, top_p) in enumerate(SAMPLING):
        procs = LogitsProcessorList()
        if temp != 1.0:
            procs.append(TemperatureLogitsWarper(temp))
        if top_k:
            procs.append(TopKLogitsWarper(top_k))
        if top_p < 1.0:
            procs.append(TopPLogitsWarper(top_p))
        scores = procs(torch.zeros(R, 1, dtype=torch.long), logits.float().double().clone())
        t[f"expected.probs.{k}"] = torch.softmax(scores, dim=-1)
        md[f"sampling.{k}"] = json.dumps(dict(temperature=temp, top_k=top_k, top_p=top_p))
    save_file(t, os.path.join(out, "generate_sampling.safetensors"), metadata=md)


# the CLI fixture's vocabulary: BertTokenizer's special tokens, words, ## pieces, punctuation
VOCAB = (["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]", "a", "red", "ball", "##s", "##ing", "run",
          ".", ",", "?", "!", "'", "s", "t", "n", "don", "##'", "-", "(", ")", "the", "[unused0]",
          "\u00e9", "\u00dcber", "##ly", "'s", "n't", "'m", "dog", "cat", "blue", "##er", "jump",
          "over", "on", "green"])
DV, DA, FV, FA, NV, NA = 6, 5, 3, 2, 4, 3
# name: (inputs, generate() keyword arguments); inputs "memory" (memory, mask, prompt) or "av"
CLI_CASES = {
    "greedy": ("memory", dict(num_beams=1)),
    "beam": ("memory", dict(num_beams=3, length_penalty=0.6, early_stopping=True,
                            no_repeat_ngram_size=2)),
    "av": ("av", dict(num_beams=1)),
    "av_beam": ("av", dict(num_beams=4, length_penalty=1.5, early_stopping="never")),
}


def project(video, audio, p):
    """The projector: memory = [mean_f(video) Wv^T + bv + tv; mean_f(audio) Wa^T + ba + ta]."""
    v = video.mean(1) @ p["proj.video.weight"].T + p["proj.video.bias"] + p["type_embedding.video"]
    a = audio.mean(1) @ p["proj.audio.weight"].T + p["proj.audio.bias"] + p["type_embedding.audio"]
    return torch.cat([v, a], 1)


def cli_case(out):
    d = os.path.join(out, "generate_cli")
    os.makedirs(d, exist_ok=True)
    assert len(VOCAB) == V
    model = randomise(BertLMHeadModel(config(True)))
    p = {"proj.video.weight": (DV, HID), "proj.video.bias": (), "proj.audio.weight": (DA, HID),
         "proj.audio.bias": (), "type_embedding.video": (), "type_embedding.audio": ()}
    p = {k: (torch.randn(HID, v[0], generator=G) * 0.4 if v else torch.randn(HID, generator=G) * 0.3)
         .float().double() for k, v in p.items()}
    B, M, P = 3, 6, 2
    mem = torch.randn(B, M, HID, generator=G, dtype=torch.float64).float().double()
    mask = torch.ones(B, M, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 1:3] = 0
    prompt = torch.randint(5, V, (B, P), generator=G)
    prompt[:, 0] = BOS
    video = torch.randn(B, FV, NV, DV, generator=G, dtype=torch.float64).float().double()
    audio = torch.randn(B, FA, NA, DA, generator=G, dtype=torch.float64).float().double()
    av = project(video, audio, p)
    bos = torch.full((B, 1), BOS, dtype=torch.long)
    g = generate(model, prompt, mem, mask, None, CASES["greedy"])[0, P:].tolist()
    eos = next(t for i, t in enumerate(g) if i >= 3 and t not in g[:i])
    model.config.eos_token_id = model.generation_config.eos_token_id = eos
    t = state(model)
    t.update({"bert.encoder." + k: v.float() for k, v in p.items()})
    save_file(t, os.path.join(d, "model.safetensors"), metadata=meta(model.config))
    model.config.to_json_file(os.path.join(d, "config.json"))
    with open(os.path.join(d, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(os.path.join(d, "vocab.txt"))
    arrays = {"memory": mem.float(), "memory_mask": mask.bool(), "prompt": prompt,
              "video": video.float(), "audio": audio.float()}
    for case, (inputs, kw) in CLI_CASES.items():
        if inputs == "memory":
            seq = generate(model, prompt, mem, mask, eos, kw)
        else:
            seq = generate(model, bos, av, torch.ones(B, NV + NA, dtype=torch.long), eos, kw)
        arrays["expected_" + case] = seq
        with open(os.path.join(d, f"expected_{case}.txt"), "w", encoding="utf-8") as f:
            for row in seq.tolist():
                f.write(tok.decode(row, skip_special_tokens=True) + "\n")
        print("cli", case, seq.tolist())
    for k, v in arrays.items():
        np.save(os.path.join(d, k + ".npy"), v.numpy())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    a = ap.parse_args()
    lm_case(a.out, "lm_tied", True)
    lm_case(a.out, "lm_untied", False)
    bert_case(a.out)
    sampling_case(a.out)
    cli_case(a.out)


if __name__ == "__main__":
    main()
