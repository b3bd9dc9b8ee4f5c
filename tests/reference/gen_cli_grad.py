"""Fixtures of tests/test_cli_grad.sh (xattn grad), computed by torch.autograd in float64 on the
PyPI package bidirectional-cross-attention 0.1.0:
    python tests/reference/gen_cli_grad.py
Writes into tests/fixtures/cli/:
  grad_tf.safetensors         BidirectionalCrossAttentionTransformer(dim=16, depth=2,
                              context_dim=12, heads=2, dim_head=8, talking_heads=True), __metadata__
                              heads; grad_x.npy (2, 5, 16), grad_ctx.npy (2, 7, 12), grad_mask.npy
                              (2, 5) bool (a fully masked row), grad_t.npy, grad_ct.npy: targets
  grad_mse_dx.npy, grad_mse_dctx.npy, grad_mse.safetensors, grad_mse_loss.txt: the gradients and
                              the loss of F.mse_loss(out, t) + F.mse_loss(context_out, ct)
  grad_bca.safetensors        BidirectionalCrossAttention(dim=12, heads=3, dim_head=4, prenorm=True,
                              talking_heads=True), grad_bx.npy (1, 6, 12), grad_bctx.npy (1, 9, 12),
                              grad_bias.npy (3, 6, 9) rel_pos_bias, grad_dout.npy (1, 6, 12): the
                              gradient of out alone
  grad_vjp_dx.npy, grad_vjp_dctx.npy, grad_vjp_dbias.npy, grad_vjp.safetensors: its
                              vector-Jacobian product
"""
import os

import numpy as np
import torch
from torch import nn
from safetensors.torch import save_file
from bidirectional_cross_attention import (BidirectionalCrossAttention,
                                           BidirectionalCrossAttentionTransformer)

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "cli")
torch.manual_seed(7)
EPS = float(torch.finfo(torch.float32).eps)


def f64(m):
    m = m.double()
    for mod in m.modules():
        if isinstance(mod, nn.RMSNorm):
            mod.eps = EPS
    return m


def save_np(name, t):
    np.save(os.path.join(OUT, name), t.detach().float().numpy())


def grads_file(name, m):
    save_file({k: (v.grad if v.grad is not None else torch.zeros_like(v)).float().contiguous()
               for k, v in m.named_parameters()},
              os.path.join(OUT, name))


# the transformer, MSE targets
tf = BidirectionalCrossAttentionTransformer(dim=16, depth=2, context_dim=12, heads=2, dim_head=8,
                                            talking_heads=True)
save_file(tf.state_dict(), os.path.join(OUT, "grad_tf.safetensors"), metadata={"heads": "2"})
x, c = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
mask = torch.ones(2, 5, dtype=torch.bool)
mask[0, 1] = False
mask[1, 3:] = False
t, ct = torch.randn(2, 5, 16), torch.randn(2, 7, 12)
for n, v in (("grad_x.npy", x), ("grad_ctx.npy", c), ("grad_t.npy", t), ("grad_ct.npy", ct)):
    save_np(n, v)
np.save(os.path.join(OUT, "grad_mask.npy"), mask.numpy())
m = f64(tf)
xd, cd = x.double().requires_grad_(True), c.double().requires_grad_(True)
o, co = m(xd, cd, mask=mask)
loss = nn.functional.mse_loss(o, t.double()) + nn.functional.mse_loss(co, ct.double())
loss.backward()
save_np("grad_mse_dx.npy", xd.grad)
save_np("grad_mse_dctx.npy", cd.grad)
grads_file("grad_mse.safetensors", m)
with open(os.path.join(OUT, "grad_mse_loss.txt"), "w") as f:
    f.write(f"{loss.item():.9g}\n")

# one attention block with prenorm, talking heads and a per-head bias: a VJP of out alone
bca = BidirectionalCrossAttention(dim=12, heads=3, dim_head=4, prenorm=True, talking_heads=True)
with torch.no_grad():  # non-trivial talking heads and norms
    for p in bca.parameters():
        p.add_(0.1 * torch.randn(p.shape))
save_file(bca.state_dict(), os.path.join(OUT, "grad_bca.safetensors"), metadata={"heads": "3"})
bx, bc, bias = torch.randn(1, 6, 12), torch.randn(1, 9, 12), torch.randn(3, 6, 9)
dout = torch.randn(1, 6, 12)
for n, v in (("grad_bx.npy", bx), ("grad_bctx.npy", bc), ("grad_bias.npy", bias),
             ("grad_dout.npy", dout)):
    save_np(n, v)
m = f64(bca)
xd, cd = bx.double().requires_grad_(True), bc.double().requires_grad_(True)
bd = bias.double().requires_grad_(True)
o, co = m(xd, cd, rel_pos_bias=bd)
o.backward(dout.double())
save_np("grad_vjp_dx.npy", xd.grad)
save_np("grad_vjp_dctx.npy", cd.grad)
save_np("grad_vjp_dbias.npy", bd.grad)
grads_file("grad_vjp.safetensors", m)
print("wrote the xattn grad fixtures")
