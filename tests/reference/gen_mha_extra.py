"""Fixtures for nn.MultiheadAttention(add_bias_kv=True) and (add_zero_attn=True), from the real
module in float64 (same format as gen_mha.py; pinned versions in requirements.txt).

    python tests/reference/gen_mha_extra.py   ->  tests/fixtures/mha_extra_*.safetensors

add_zero_attn leaves no trace in the state_dict; the files say it in __metadata__
("add_zero_attn": "True"), which the loader reads. The appended keys are never masked (torch
pads the masks with a kept column), so no row is fully masked here.
"""
import os

import numpy as np
import torch
from safetensors.torch import save_file

torch.manual_seed(7)
torch.set_default_dtype(torch.float64)
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures")


def case(name, E, H, bias_kv, zero_attn, kdim=None, vdim=None, B=2, I=5, J=7, kpm=False,
         am=None, bias=True, cli=False):
    m = torch.nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=bias_kv, add_zero_attn=zero_attn,
                                    kdim=kdim, vdim=vdim, batch_first=True)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p).float().double() * 0.5)
    m.eval()
    x = torch.randn(B, I, E).float().double()
    k = torch.randn(B, J, kdim or E).float().double()
    v = torch.randn(B, J, vdim or E).float().double()
    kpm_t = (torch.rand(B, J) < 0.3) if kpm else None
    if kpm:
        kpm_t[0, :] = True  # every real key of batch 0 ignored: only the appended keys remain
    am_t = None
    if am == "float3d":
        am_t = torch.randn(B * H, I, J)
    elif am == "bool2d":
        am_t = torch.rand(I, J) < 0.3
    with torch.no_grad():
        out, w_ph = m(x, k, v, key_padding_mask=kpm_t, attn_mask=am_t, need_weights=True,
                      average_attn_weights=False)
        _, w_avg = m(x, k, v, key_padding_mask=kpm_t, attn_mask=am_t, need_weights=True,
                     average_attn_weights=True)
    assert not torch.isnan(out).any()
    t = {kk: vv.float() for kk, vv in m.state_dict().items()}
    t["input.query"] = x.float()
    t["input.key"] = k.float()
    t["input.value"] = v.float()
    if kpm_t is not None:
        t["input.key_padding_mask"] = kpm_t
    if am_t is not None:
        t["input.attn_mask"] = am_t if am_t.dtype == torch.bool else am_t.float()
    t["expected.out"] = out.float()
    t["expected.attn_weights_per_head"] = w_ph.float().contiguous()
    t["expected.attn_weights_avg"] = w_avg.float().contiguous()
    meta = {"layout": "torch_mha", "heads": str(H), "expected_heads": str(H),
            "add_zero_attn": str(zero_attn),
            "attn_mask_per_head": str(am == "float3d"), "is_causal": "False",
            "module": f"torch.nn.MultiheadAttention({E}, {H}, bias={bias}, add_bias_kv={bias_kv}, "
                      f"add_zero_attn={zero_attn}, kdim={kdim}, vdim={vdim}, batch_first=True)"}
    save_file({kk: vv.contiguous() for kk, vv in t.items()},
              os.path.join(OUT, f"mha_extra_{name}.safetensors"), metadata=meta)
    if cli:  # a model file WITHOUT the add_zero_attn metadata (the CLI flag must say it) + .npy
        d = os.path.join(OUT, "cli")
        sd = {kk: vv.float().contiguous() for kk, vv in m.state_dict().items()}
        save_file(sd, os.path.join(d, f"extra_{name}.safetensors"), metadata={"heads": str(H)})
        np.save(os.path.join(d, f"extra_{name}_x.npy"), x.float().numpy())
        np.save(os.path.join(d, f"extra_{name}_k.npy"), k.float().numpy())
        np.save(os.path.join(d, f"extra_{name}_v.npy"), v.float().numpy())
        np.save(os.path.join(d, f"extra_{name}_out.npy"), out.float().numpy())
        np.save(os.path.join(d, f"extra_{name}_attn.npy"), w_avg.float().numpy())


case("bias_kv", 16, 4, True, False)
case("zero_attn", 16, 2, False, True, I=3, J=65)
case("both_masks", 12, 3, True, True, kdim=5, vdim=7, kpm=True, am="float3d")
case("both_bool_nobias", 8, 2, True, True, kpm=True, am="bool2d", bias=False, J=1)
case("cli_both", 8, 2, True, True, J=6, cli=True)


def diffusers_case(name, qdim, cdim, heads, dim_head, scale_qk=True, residual=False,
                   rescale=1.0, bias=False, B=2, I=6, J=9):
    """diffusers Attention options that leave no trace in the state_dict: in __metadata__."""
    from diffusers.models.attention_processor import Attention
    kw = dict(query_dim=qdim, cross_attention_dim=cdim, heads=heads, dim_head=dim_head, bias=bias,
              scale_qk=scale_qk, residual_connection=residual, rescale_output_factor=rescale)
    att = Attention(**kw).double()
    with torch.no_grad():
        for p in att.parameters():
            p.copy_(torch.randn_like(p).float().double() * 0.4)
    att.eval()
    x = torch.randn(B, I, qdim).float().double()
    c = torch.randn(B, J, cdim).float().double()
    with torch.no_grad():
        out = att(x, encoder_hidden_states=c)
    t = {k: v.float() for k, v in att.state_dict().items()}
    t.update({"input.query": x.float(), "input.key": c.float(), "expected.out": out.float()})
    meta = {"layout": "diffusers", "heads": str(heads), "expected_heads": str(heads),
            "scale_qk": str(scale_qk), "residual_connection": str(residual),
            "rescale_output_factor": repr(rescale), "attn_mask_per_head": "False",
            "is_causal": "False"}
    save_file({k: v.contiguous() for k, v in t.items()},
              os.path.join(OUT, f"mha_extra_{name}.safetensors"), metadata=meta)


diffusers_case("diff_noscale_residual", 16, 10, 2, 8, scale_qk=False, residual=True, rescale=2.0)
diffusers_case("diff_scale_rescale", 12, 7, 3, 4, rescale=0.7, bias=True)
print("wrote 7 fixtures and the CLI files of cli_both")
