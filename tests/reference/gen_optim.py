"""Fixtures for the optimizers: torch.optim.AdamW / torch.optim.SGD (float32, CPU, the default
single-tensor/foreach path), torch.nn.utils.clip_grad_norm_ and transformers'
get_cosine_schedule_with_warmup.

    python tests/reference/gen_optim.py
Writes tests/fixtures/optim_<case>.safetensors: p.<i> (the initial parameters), g.<t>.<i> (the
gradient of parameter i at step t), want.<t>.<i> (parameter i after step t), and, with clipping,
norm.<t> (the total norm clip_grad_norm_ returned before step t); __metadata__: kind, options
("name=value;..."), steps, params, max_norm. And tests/fixtures/optim_schedule.safetensors:
lr (the learning rates of 40 steps, 7 of warmup, base 3e-3, cosine).
"""
import os

import torch
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
STEPS = 6


def case(name, kind, options, max_norm=0.0):
    g = torch.Generator().manual_seed(len(name) * 31 + 7)
    shapes = [(5, 3), (7,), (2, 2, 3)]
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    t = {f"p.{i}": p.detach().clone() for i, p in enumerate(params)}
    kw = {}
    for item in options.split(";") if options else []:
        k, v = item.split("=")
        kw[k] = tuple(float(x) for x in v.split(",")) if k == "betas" else \
            (v == "True" if v in ("True", "False") else float(v))
    opt = (torch.optim.AdamW if kind == "adamw" else torch.optim.SGD)(params, **kw)
    for step in range(STEPS):
        for i, p in enumerate(params):
            p.grad = torch.randn(p.shape, generator=g) * (3.0 if step == 2 else 1.0)
            t[f"g.{step}.{i}"] = p.grad.clone()
        if max_norm:
            t[f"norm.{step}"] = torch.nn.utils.clip_grad_norm_(params, max_norm).reshape(1)
        opt.step()
        for i, p in enumerate(params):
            t[f"want.{step}.{i}"] = p.detach().clone()
    save_file(t, os.path.join(OUT, f"optim_{name}.safetensors"),
              metadata={"kind": kind, "options": options, "steps": str(STEPS),
                        "params": str(len(params)), "max_norm": repr(max_norm)})


case("adamw_default", "adamw", "")
case("adamw_amsgrad", "adamw", "lr=0.01;betas=0.8,0.99;eps=1e-6;weight_decay=0.1;amsgrad=True")
case("adamw_clip", "adamw", "lr=0.003;weight_decay=0", max_norm=2.0)
case("sgd_plain", "sgd", "lr=0.1")
case("sgd_momentum", "sgd", "lr=0.05;momentum=0.9;dampening=0.1;weight_decay=0.01")
case("sgd_nesterov", "sgd", "lr=0.05;momentum=0.8;nesterov=True", max_norm=1.5)

from transformers import get_cosine_schedule_with_warmup  # noqa: E402

p = torch.nn.Parameter(torch.zeros(1))
opt = torch.optim.SGD([p], lr=3e-3)
sch = get_cosine_schedule_with_warmup(opt, num_warmup_steps=7, num_training_steps=40)
lrs = []
for _ in range(40):
    lrs.append(opt.param_groups[0]["lr"])
    opt.step()
    sch.step()
save_file({"lr": torch.tensor(lrs, dtype=torch.float64)},
          os.path.join(OUT, "optim_schedule.safetensors"))
print("wrote the optimizer fixtures")
