#!/usr/bin/env python3
"""A small captioning model trained on synthetic video/audio patterns: tests/fixtures/caption/.

Pinned versions (run by hand, the outputs are committed; under a minute on one CPU thread):
    torch==2.9.1  transformers==5.24.0  numpy  safetensors

    python tests/reference/gen_caption.py [--out tests/fixtures/caption] [--steps N]

The task. A clip has video features (1, FV frames, NV tokens, DV channels): an object of one of
4 colours and 3 shapes sits in the left or the right half of the picture (tokens 0-1 or 2-3 add
colour + shape patterns to their place codes, the others hold place codes and noise); and audio
features (1, FA frames, NA tokens, DA channels): a dog, a bell or a drum heard slowly or quickly
(sound and tempo patterns, on and off in blocks of 4 tokens or alternating). Each clip is described by one sentence,
    "a red circle on the left while a dog barks quickly."
with a WordPiece vocabulary of 28 tokens ("barks" is bark ##s).

The model, as VALOR's text decoder: memory = [mean_f(video) Wv^T + bv + tv; mean_f(audio) Wa^T +
ba + ta] (the projector xattn runs as bert.encoder.proj.* / type_embedding.*), then
transformers' BertLMHeadModel(BertConfig(is_decoder=True, add_cross_attention=True)) over the
caption, trained with teacher forcing and cross-entropy (AdamW) on fresh random clips.

Writes model.safetensors (the state dict with the projector, F32, and __metadata__ holding
BertConfig's num_attention_heads, layer_norm_eps, hidden_act and pad / bos / eos ids),
config.json, vocab.txt, and for test clips k = 0..3: video_k.npy, audio_k.npy,
expected_ids_k.npy (transformers' generate(), greedy, in float64 on the trained weights),
expected_k.txt (BertTokenizer.decode(ids, skip_special_tokens=True), checked equal to the
clip's true sentence); expected_beam_ids_0.npy (num_beams=4).
"""
import argparse
import os

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import BertConfig, BertLMHeadModel, BertTokenizer
from transformers.cache_utils import DynamicCache, EncoderDecoderCache

COLOURS = ["red", "green", "blue", "yellow"]
SHAPES = ["circle", "square", "star"]
SIDES = ["left", "right"]
SOUNDS = [("dog", "bark"), ("bell", "ring"), ("drum", "beat")]
RATES = ["slowly", "quickly"]
VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "on", "the", "while", "##s", "."]
         + COLOURS + SHAPES + SIDES + [w for s in SOUNDS for w in s] + RATES)
PAD, BOS, EOS = 0, 2, 3
FV, NV, DV = 6, 4, 16
FA, NA, DA = 4, 8, 12
HID, LAYERS, HEADS, FF, MAXPOS = 64, 2, 4, 128, 24
NOISE = 0.4
# the test clips: (colour, shape, side, sound, rate)
TESTS = [(0, 0, 0, 0, 1), (2, 2, 1, 1, 0), (3, 1, 0, 2, 1), (1, 2, 1, 0, 0)]


def words(c):
    colour, shape, side, sound, rate = c
    noun, verb = SOUNDS[sound]
    return ["a", COLOURS[colour], SHAPES[shape], "on", "the", SIDES[side], "while", "a", noun, verb,
            "##s", RATES[rate], "."]


def sentence(c):
    return " ".join(words(c)).replace(" ##", "").replace(" .", ".")


def caption_ids(c):
    return [BOS] + [VOCAB.index(w) for w in words(c)] + [EOS]


class Patterns:
    """Fixed random patterns of colours, shapes, picture positions, sounds and tempi; clips
    drawn around them. Every video token carries the code of its place in the picture (as
    features with position embeddings do), every sounding audio token the code of its tempo."""

    def __init__(self, g):
        self.colour = torch.randn(len(COLOURS), DV, generator=g)
        self.shape = torch.randn(len(SHAPES), DV, generator=g)
        self.place = torch.randn(NV, DV, generator=g)
        self.sound = torch.randn(len(SOUNDS), DA, generator=g)
        self.tempo = torch.randn(len(RATES), DA, generator=g)

    def clip(self, c, g):
        colour, shape, side, sound, rate = c
        video = torch.randn(FV, NV, DV, generator=g) * NOISE + self.place
        obj = self.colour[colour] + self.shape[shape]
        video[:, 2 * side:2 * side + 2] += obj * (0.8 + 0.4 * torch.rand(FV, 2, 1, generator=g))
        on = torch.tensor([(n // (4 if rate == 0 else 1)) % 2 == 0 for n in range(NA)]).float()
        audio = torch.randn(FA, NA, DA, generator=g) * NOISE
        level = 0.8 + 0.4 * torch.rand(FA, 1, 1, generator=g)
        audio += on[:, None] * (self.sound[sound] + self.tempo[rate]) * level
        return video, audio


def random_clip(g):
    return tuple(int(torch.randint(0, n, (1,), generator=g)) for n in
                 (len(COLOURS), len(SHAPES), len(SIDES), len(SOUNDS), len(RATES)))


class Captioner(torch.nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.lm = BertLMHeadModel(cfg)
        self.proj_video = torch.nn.Linear(DV, HID)
        self.proj_audio = torch.nn.Linear(DA, HID)
        self.type_video = torch.nn.Parameter(torch.randn(HID) * 0.02)
        self.type_audio = torch.nn.Parameter(torch.randn(HID) * 0.02)

    def memory(self, video, audio):
        v = self.proj_video(video.mean(1)) + self.type_video
        a = self.proj_audio(audio.mean(1)) + self.type_audio
        return torch.cat([v, a], 1)

    def state(self):
        """BertLMHeadModel's state dict as save_model writes it, with the projector beside the
        layers under xattn's names."""
        out, seen = {}, set()
        for n, t in self.lm.state_dict().items():
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                out[n] = t.float().contiguous()
        out.update({"bert.encoder.proj.video.weight": self.proj_video.weight,
                    "bert.encoder.proj.video.bias": self.proj_video.bias,
                    "bert.encoder.proj.audio.weight": self.proj_audio.weight,
                    "bert.encoder.proj.audio.bias": self.proj_audio.bias,
                    "bert.encoder.type_embedding.video": self.type_video,
                    "bert.encoder.type_embedding.audio": self.type_audio})
        return {k: v.detach().float().contiguous() for k, v in out.items()}


def batch(pat, n, g):
    cs = [random_clip(g) for _ in range(n)]
    clips = [pat.clip(c, g) for c in cs]
    video = torch.stack([v for v, _ in clips])
    audio = torch.stack([a for _, a in clips])
    return cs, video, audio, torch.tensor([caption_ids(c) for c in cs])


def generate(model, video, audio, **kw):
    with torch.no_grad():
        mem = model.memory(video, audio)
        bos = torch.full((video.shape[0], 1), BOS, dtype=torch.long)
        return model.lm.generate(input_ids=bos, encoder_hidden_states=mem, do_sample=False,
                                 max_length=20, pad_token_id=PAD, bos_token_id=BOS,
                                 eos_token_id=EOS,
                                 past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
                                 **kw)


def train(model, pat, steps, g):
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    model.train()
    for step in range(steps):
        _, video, audio, ids = batch(pat, 64, g)
        out = model.lm(input_ids=ids, encoder_hidden_states=model.memory(video, audio), labels=ids)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step}: loss {out.loss.item():.4f}")
    model.eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures",
                                                  "caption"))
    ap.add_argument("--steps", type=int, default=600)
    a = ap.parse_args()
    torch.set_num_threads(1)  # a small model: one thread is the fastest, and shared machines stay calm
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(2024)
    cfg = BertConfig(vocab_size=len(VOCAB), hidden_size=HID, num_hidden_layers=LAYERS,
                     num_attention_heads=HEADS, intermediate_size=FF, max_position_embeddings=MAXPOS,
                     is_decoder=True, add_cross_attention=True, hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, pad_token_id=PAD, bos_token_id=BOS,
                     eos_token_id=EOS, tie_word_embeddings=True, attn_implementation="eager")
    pat = Patterns(g)
    model = Captioner(cfg)
    train(model, pat, a.steps, g)

    # accuracy on fresh clips
    cs, video, audio, ids = batch(pat, 256, g)
    seqs = generate(model, video, audio)
    right = sum(seqs[i, :ids.shape[1]].tolist() == ids[i].tolist() for i in range(len(cs)))
    print(f"greedy captions right on fresh clips: {right}/{len(cs)}")

    os.makedirs(a.out, exist_ok=True)
    st = model.state()
    md = {"num_attention_heads": str(HEADS), "layer_norm_eps": repr(cfg.layer_norm_eps),
          "hidden_act": cfg.hidden_act, "pad_token_id": str(PAD), "bos_token_id": str(BOS),
          "eos_token_id": str(EOS)}
    save_file(st, os.path.join(a.out, "model.safetensors"), metadata=md)
    cfg.to_json_file(os.path.join(a.out, "config.json"))
    with open(os.path.join(a.out, "vocab.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(VOCAB) + "\n")
    tok = BertTokenizer(os.path.join(a.out, "vocab.txt"))

    # the reference: the trained fp32 weights in float64
    model = model.double()
    for k, c in enumerate(TESTS):
        video, audio = pat.clip(c, g)
        video, audio = video[None].float(), audio[None].float()
        seq = generate(model, video.double(), audio.double())
        text = tok.decode(seq[0].tolist(), skip_special_tokens=True)
        print(k, seq.tolist(), text)
        assert text == sentence(c), (text, sentence(c))
        np.save(os.path.join(a.out, f"video_{k}.npy"), video.numpy())
        np.save(os.path.join(a.out, f"audio_{k}.npy"), audio.numpy())
        np.save(os.path.join(a.out, f"expected_ids_{k}.npy"), seq.numpy())
        with open(os.path.join(a.out, f"expected_{k}.txt"), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        if k == 0:
            beam = generate(model, video.double(), audio.double(), num_beams=4)
            print("beam", beam.tolist())
            np.save(os.path.join(a.out, "expected_beam_ids_0.npy"), beam.numpy())


if __name__ == "__main__":
    main()
