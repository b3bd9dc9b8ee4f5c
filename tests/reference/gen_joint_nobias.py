"""Fixture for nn.TransformerEncoder layers built with bias=False (torch >= 2.1: no biases in
the attention, the feed-forward or the LayerNorms), from the real modules in float64, in the
format of gen_joint.py (pinned versions in requirements.txt).

    python tests/reference/gen_joint_nobias.py   ->  tests/fixtures/joint_nobias*.safetensors
"""
import os

import torch
from safetensors.torch import save_file

torch.manual_seed(11)
torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def case(name, d, heads, ff, layers, norm_first, activation, final_norm, B=2, K=5, N=7):
    layer = torch.nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation=activation,
                                             batch_first=True, norm_first=norm_first, bias=False)
    enc = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False,
                                      norm=torch.nn.LayerNorm(d, bias=False) if final_norm else None)
    with torch.no_grad():
        for p in enc.parameters():
            p.copy_((torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0)).float().double())
    enc.eval()
    x = torch.randn(B, K, d).float().double()
    c = torch.randn(B, N, d).float().double()
    xm = torch.zeros(B, K, dtype=torch.bool)
    cm = torch.zeros(B, N, dtype=torch.bool)
    xm[1, -2:] = True
    cm[0, -3:] = True
    with torch.no_grad():
        y = enc(torch.cat([x, c], 1), src_key_padding_mask=torch.cat([xm, cm], 1))
    t = {k: v.float() for k, v in enc.state_dict().items()}
    t.update({"input.x": x.float(), "input.context": c.float(), "input.x_padding_mask": xm,
              "input.context_padding_mask": cm, "expected.out": y[:, :K].float().contiguous(),
              "expected.context_out": y[:, K:].float().contiguous()})
    meta = {"heads": str(heads), "layers": str(layers), "norm_first": str(norm_first),
            "expected_norm_first": str(norm_first), "activation": activation,
            "expected_activation": activation, "layer_norm_eps": "1e-05", "expected_eps": "1e-05",
            "final_norm": str(final_norm), "reference": "nn.TransformerEncoder(bias=False)"}
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, f"joint_{name}.safetensors"),
              metadata=meta)


case("nobias_post_relu", 16, 4, 32, 2, False, "relu", False)
case("nobias_pre_gelu_final", 12, 3, 24, 1, True, "gelu", True, K=1, N=33)
print("wrote 2 fixtures")
