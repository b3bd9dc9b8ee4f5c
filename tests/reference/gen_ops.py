"""Fixture for the public row-wise operations, from torch in float64:
torch.softmax, nn.RMSNorm(eps=None) (eps = finfo(float32).eps as for fp32 inputs),
nn.LayerNorm (eps 1e-5, and 1e-12 as BERT), nn.GELU() and nn.GELU(approximate="tanh").

    python tests/reference/gen_ops.py   ->  tests/fixtures/ops.safetensors
"""
import os
import torch
from safetensors.torch import save_file

torch.manual_seed(1)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "ops.safetensors")
rows, n = 7, 333
x = (torch.randn(rows, n) * 3 + 0.5).float()
w = torch.randn(n).float()
b = torch.randn(n).float()
xd, wd, bd = x.double(), w.double(), b.double()
eps32 = torch.finfo(torch.float32).eps
rms = torch.nn.RMSNorm(n, eps=eps32, dtype=torch.float64)
with torch.no_grad():
    rms.weight.copy_(wd)
ln = torch.nn.LayerNorm(n, eps=1e-5, dtype=torch.float64)
ln12 = torch.nn.LayerNorm(n, eps=1e-12, dtype=torch.float64)
with torch.no_grad():
    for m in (ln, ln12):
        m.weight.copy_(wd)
        m.bias.copy_(bd)
g = torch.linspace(-12, 12, 2001, dtype=torch.float64).float()
t = {
    "x": x, "w": w, "b": b, "g": g,
    "softmax": torch.softmax(xd, -1).float(),
    "rmsnorm": rms(xd).detach().float(),
    "layernorm": ln(xd).detach().float(),
    "layernorm_eps12": ln12(xd).detach().float(),
    "gelu": torch.nn.GELU()(g.double()).float(),
    "gelu_tanh": torch.nn.GELU(approximate="tanh")(g.double()).float(),
}
save_file(t, OUT, metadata={"rms_eps": repr(eps32)})
print("wrote", OUT)
