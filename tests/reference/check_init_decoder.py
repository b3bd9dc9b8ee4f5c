#!/usr/bin/env python3
"""`xattn init bert-decoder` against the PyTorch reference (run by hand):

    python tests/reference/check_init_decoder.py [PATH/TO/xattn]

For each configuration, builds the reference with the same arguments, loads the file written by
`xattn init` with load_state_dict(strict=True), and compares every parameter's distribution with
the reference's own fresh initialisation:
  * transformers BertEncoder / BertLayer built directly from BertConfig(is_decoder=True,
    add_cross_attention=True) (no PreTrainedModel.post_init, so torch's defaults: nn.Linear
    weight and bias U(-1/sqrt(fan_in), 1/sqrt(fan_in)), nn.LayerNorm ones and zeros);
  * encoder_width != hidden_size as BLIP's med.py builds it: crossattention key/value
    nn.Linear(encoder_width, hidden_size);
  * the modality projector (our design): proj.video / proj.audio nn.Linear(D, encoder_width),
    type embeddings drawn N(0, 1) as nn.Embedding rows.
Checks: the same names and shapes (strict load), constant tensors equal, uniform tensors within
the reference's bound and reaching near it (max |x| >= 0.9 b for 100+ values), mean and standard
deviation within 5 standard errors of the reference's law, and the reference's own draw within
the same bound. For the transformers layouts (a BertEncoder with encoder_width = hidden_size)
also the forward: `xattn run` on random hidden states and memory against BertModel's encoder
with the same weights (float64, its own causal mask), within 1e-4 (1 + |ref|). Exits 1 on any
failure.
"""
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertEncoder, BertLayer

XATTN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "..",
                                                               "build", "xattn")


class Decoder(nn.Module):
    """BertEncoder's layers (or one BertLayer) plus the optional projector, named as xattn saves."""

    def __init__(self, a):
        super().__init__()
        cfg = BertConfig(hidden_size=a["hidden_size"], num_attention_heads=a["num_attention_heads"],
                         intermediate_size=a["intermediate_size"],
                         num_hidden_layers=a["num_hidden_layers"], layer_norm_eps=1e-12,
                         is_decoder=True, add_cross_attention=True)
        h, w = a["hidden_size"], a.get("encoder_width", a["hidden_size"])
        if a.get("bert_encoder", True):
            self.layer = BertEncoder(cfg).layer
            layers = list(self.layer)
        else:
            self.single = BertLayer(cfg)
            layers = [self.single]
        if w != h:  # BLIP (med.py): key/value read the encoder's width
            for y in layers:
                y.crossattention.self.key = nn.Linear(w, h)
                y.crossattention.self.value = nn.Linear(w, h)
        proj, types = {}, {}
        for mod in ("video", "audio"):
            if a.get(mod + "_dim"):
                proj[mod] = nn.Linear(a[mod + "_dim"], w)
            if a.get(mod + "_type_embedding"):
                types[mod] = nn.Parameter(nn.Embedding(1, w).weight.detach()[0].clone())
        if proj:
            self.proj = nn.ModuleDict(proj)
        if types:
            self.type_embedding = nn.ParameterDict(types)

    def load(self, sd):
        if hasattr(self, "single"):  # one BertLayer: names without a stem
            sd = {"single." + k if not k.startswith(("proj.", "type_embedding.")) else k: v
                  for k, v in sd.items()}
        self.load_state_dict(sd, strict=True)


def law(name, p):
    """('const', value) or ('uniform', bound) or ('normal', std): the reference's default init."""
    if "LayerNorm" in name:
        return ("const", 1.0 if name.endswith("weight") else 0.0)
    if name.startswith("type_embedding."):
        return ("normal", 1.0)
    return ("uniform", None)  # bound from the reference module's fan-in, below


def fan_in_of(model, name):
    mod = model.get_submodule(name.rsplit(".", 1)[0])
    return mod.in_features


def check_param(name, x, ref, b):
    """x: xattn's tensor, ref: the reference's fresh one, b: the bound (uniform)."""
    errs = []
    n = x.numel()
    x, ref = x.double().flatten(), ref.double().flatten()
    kind, v = law(name, x)
    if kind == "const":
        if not torch.all(x == v):
            errs.append(f"not all {v}")
        if not torch.all(ref == v):
            errs.append(f"reference not all {v}")
        return errs
    if kind == "normal":
        mean_tol, sd = 5 * v / math.sqrt(n), v
        if abs(x.mean()) > mean_tol:
            errs.append(f"mean {x.mean():.4g} (tol {mean_tol:.3g})")
        if abs(x.std() / sd - 1) > 5 * math.sqrt(0.5 / n) + 1e-9:
            errs.append(f"std {x.std():.4g} (want {sd})")
        return errs
    for t, who in ((x, "xattn"), (ref, "reference")):
        if t.abs().max() > b * (1 + 1e-6):
            errs.append(f"{who} max |x| {t.abs().max():.4g} > bound {b:.4g}")
    if n >= 100 and x.abs().max() < 0.9 * b:
        errs.append(f"max |x| {x.abs().max():.4g} far below the bound {b:.4g}")
    se_mean, sd = b / math.sqrt(3 * n), b / math.sqrt(3)
    if abs(x.mean()) > 5 * se_mean:
        errs.append(f"mean {x.mean():.4g} (tol {5 * se_mean:.3g})")
    if n > 1 and abs(x.std() / sd - 1) > 5 * math.sqrt(0.8 / n / 4) + 5 / n:
        errs.append(f"std {x.std():.4g} (want {sd:.4g})")
    return errs


def forward_error(a, sd, path, d):
    """Max |xattn - ref| / (1 + |ref|) of the decoder layers on random inputs."""
    cfg = BertConfig(hidden_size=a["hidden_size"], num_attention_heads=a["num_attention_heads"],
                     intermediate_size=a["intermediate_size"],
                     num_hidden_layers=a["num_hidden_layers"], is_decoder=True,
                     add_cross_attention=True, attn_implementation="eager")
    model = BertModel(cfg, add_pooling_layer=False)
    model.encoder.load_state_dict(sd, strict=True)
    model = model.double().eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 7, a["hidden_size"], generator=g, dtype=torch.float64).float()
    mem = torch.randn(2, 4, a["hidden_size"], generator=g, dtype=torch.float64).float()
    with torch.no_grad():
        am, em = model._create_attention_masks(None, None, x.double(), mem.double(), None)
        ref = model.encoder(x.double(), attention_mask=am, encoder_hidden_states=mem.double(),
                            encoder_attention_mask=em).last_hidden_state
    np.save(os.path.join(d, "x.npy"), x.numpy())
    np.save(os.path.join(d, "mem.npy"), mem.numpy())
    subprocess.run([XATTN, "run", "--module", "bert-decoder", path, "--x",
                    os.path.join(d, "x.npy"), "--memory", os.path.join(d, "mem.npy"), "--out-dir",
                    d], check=True, stdout=subprocess.DEVNULL)
    out = torch.from_numpy(np.load(os.path.join(d, "out.npy"))).double()
    return ((out - ref).abs() / (1 + ref.abs())).max().item()


def run_case(a, seed):
    err = None
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "init.safetensors")
        args = [XATTN, "init", "bert-decoder", "--out", path, "--seed", str(seed)]
        for k, v in a.items():
            args += ["--" + k.replace("_", "-"), str(v)]
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL)
        sd = load_file(path)
        plain = a.get("bert_encoder", True) and a.get("encoder_width", a["hidden_size"]) == \
            a["hidden_size"] and not any(k.startswith(("proj.", "type_")) for k in sd)
        if plain:
            err = forward_error(a, sd, path, d)
    torch.manual_seed(seed)
    model = Decoder(a)
    fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load(sd)  # strict: every name and shape
    failures = 0
    for name, x in sd.items():
        ref_name = name if hasattr(model, "layer") or name.startswith(("proj.", "type_")) \
            else "single." + name
        b = None
        if law(name, x)[0] == "uniform":
            b = 1 / math.sqrt(fan_in_of(model, ref_name))
        errs = check_param(name, x, fresh[ref_name], b)
        if errs:
            failures += 1
            print(f"  FAIL {name}: {'; '.join(errs)}")
    if err is not None and not err <= 1e-4:
        failures += 1
    fw = "" if err is None else f", forward error {err:.2e}"
    print(f"{'ok  ' if not failures else 'FAIL'} {a}: {len(sd)} tensors loaded strictly, "
          f"{failures} off the reference's init{fw}")
    return failures


def main():
    cases = [
        dict(hidden_size=64, num_attention_heads=4, intermediate_size=256, num_hidden_layers=2),
        dict(hidden_size=48, num_attention_heads=3, intermediate_size=96, num_hidden_layers=1,
             bert_encoder=False),
        dict(hidden_size=64, num_attention_heads=8, intermediate_size=128, num_hidden_layers=2,
             encoder_width=40, video_dim=24, audio_dim=20, video_type_embedding=True,
             audio_type_embedding=True),
        dict(hidden_size=128, num_attention_heads=2, intermediate_size=512, num_hidden_layers=1,
             audio_dim=300, audio_type_embedding=True),
        dict(hidden_size=96, num_attention_heads=12, intermediate_size=384, num_hidden_layers=3),
    ]
    fails = sum(run_case(a, seed) for seed, a in enumerate(cases))
    sys.exit(1 if fails else 0)


if __name__ == "__main__":
    main()
