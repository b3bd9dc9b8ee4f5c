"""Fixtures of tests/test_cli_train.sh: the training that `xattn train` runs, done by PyTorch in
float64 on the PyPI package (bidirectional-cross-attention 0.1.0) with torch.optim:
    python tests/reference/gen_train.py   (after gen_cli_grad.py, whose model and data it uses)
BidirectionalCrossAttentionTransformer of tests/fixtures/cli/grad_tf.safetensors, inputs
grad_x.npy / grad_ctx.npy / grad_mask.npy, targets grad_t.npy / grad_ct.npy; 10 steps of
mini-batches of 1 taken in order (sample of step s: s mod 2), loss F.mse_loss(out, t) +
F.mse_loss(context_out, ct); clip_grad_norm_(0.5); transformers' cosine schedule with 3 warmup
steps; then
  train_adamw.safetensors, train_adamw_loss.txt: torch.optim.AdamW(lr=0.01) (defaults otherwise)
  train_sgd.safetensors, train_sgd_loss.txt: torch.optim.SGD(lr=0.05, momentum=0.9,
                                            nesterov=True, weight_decay=0.001)
(the weights after the 10 steps; the loss of every step, one per line).
"""
import os

import numpy as np
import torch
from torch import nn
from safetensors.torch import load_file, save_file
from transformers import get_cosine_schedule_with_warmup
from bidirectional_cross_attention import BidirectionalCrossAttentionTransformer

D = os.path.join(os.path.dirname(__file__), "..", "fixtures", "cli")
EPS = float(torch.finfo(torch.float32).eps)


def run(name, make_opt):
    m = BidirectionalCrossAttentionTransformer(dim=16, depth=2, context_dim=12, heads=2,
                                               dim_head=8, talking_heads=True).double()
    for mod in m.modules():
        if isinstance(mod, nn.RMSNorm):
            mod.eps = EPS
    m.load_state_dict({k: v.double() for k, v in load_file(os.path.join(D, "grad_tf.safetensors")).items()})
    x, c = (torch.from_numpy(np.load(os.path.join(D, f))).double() for f in ("grad_x.npy", "grad_ctx.npy"))
    t, ct = (torch.from_numpy(np.load(os.path.join(D, f))).double() for f in ("grad_t.npy", "grad_ct.npy"))
    mask = torch.from_numpy(np.load(os.path.join(D, "grad_mask.npy")))
    opt = make_opt(m.parameters())
    sch = get_cosine_schedule_with_warmup(opt, num_warmup_steps=3, num_training_steps=10)
    losses = []
    for s in range(10):
        i = s % 2
        o, co = m(x[i:i + 1], c[i:i + 1], mask=mask[i:i + 1])
        loss = nn.functional.mse_loss(o, t[i:i + 1]) + nn.functional.mse_loss(co, ct[i:i + 1])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
        opt.step()
        sch.step()
        losses.append(loss.item())
    save_file({k: v.float().contiguous() for k, v in m.state_dict().items()},
              os.path.join(D, f"train_{name}.safetensors"))
    with open(os.path.join(D, f"train_{name}_loss.txt"), "w") as f:
        f.write("".join(f"{v:.9g}\n" for v in losses))


run("adamw", lambda p: torch.optim.AdamW(p, lr=0.01))
run("sgd", lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.001))
print("wrote the training fixtures")
