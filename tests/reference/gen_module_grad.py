"""Gradient fixtures for nn.MultiheadAttention, diffusers Attention, mutual, conv2d-cross and
joint (nn.TransformerEncoderLayer / TransformerEncoder), by torch.autograd in float64 on the real
reference modules (what each file holds: grad_fixture.py):
    python tests/reference/gen_module_grad.py
Writes tests/fixtures/grad_<kind>_<case>.safetensors and tests/fixtures/grad_list.inc.
"""
import torch
from torch import nn
from diffusers.models.attention_processor import Attention

from grad_fixture import f32, randn, randomize, save, write_list


def torch_case(case, E, H, B=2, I=5, J=7, kdim=None, vdim=None, bias=True, add_bias_kv=False,
               add_zero_attn=False, kpm=False, am=None, causal=False, self_attn=False,
               value_is_key=False):
    m = nn.MultiheadAttention(E, H, bias=bias, add_bias_kv=add_bias_kv,
                              add_zero_attn=add_zero_attn, kdim=kdim, vdim=vdim, batch_first=True)
    randomize(m)
    if self_attn:
        J = I
    x = f32(randn(B, I, E)).requires_grad_(True)
    inputs = {"query": x}
    k = v = x
    if not self_attn:
        k = f32(randn(B, J, kdim or E)).requires_grad_(True)
        inputs["key"] = k
        v = k
        if not value_is_key:
            v = f32(randn(B, J, vdim or E)).requires_grad_(True)
            inputs["value"] = v
    kpm_t = None
    if kpm:
        kpm_t = torch.zeros(B, J, dtype=torch.bool)
        kpm_t[0, -2:] = True  # True = masked (torch); never a whole row
        inputs["key_padding_mask"] = kpm_t
    am_t = None
    if am == "float2d":
        am_t = f32(randn(I, J))
        inputs["attn_mask"] = am_t
    elif am == "bool3d":
        am_t = torch.zeros(B * H, I, J, dtype=torch.bool)
        am_t[1, :, 0] = True
        am_t[2, 1, 1:3] = True
        inputs["attn_mask"] = am_t
    mask_arg = am_t
    if causal:
        mask_arg = torch.ones(I, J, dtype=torch.bool).triu(1)
    out = m(x, k, v, key_padding_mask=kpm_t, attn_mask=mask_arg, need_weights=False,
            is_causal=causal)[0]
    save("mha", case, m, inputs, out, {"heads": H, "add_zero_attn": add_zero_attn,
                                       "is_causal": causal})


def diff_case(case, qd, cd, H, dh, B=2, I=5, J=7, bias=False, out_bias=True, self_attn=False,
              mask=False, scale_qk=True, residual=False, rescale=1.0, out_dim=None):
    m = Attention(query_dim=qd, cross_attention_dim=cd, heads=H, dim_head=dh, bias=bias,
                  out_bias=out_bias, scale_qk=scale_qk, residual_connection=residual,
                  rescale_output_factor=rescale, out_dim=out_dim)
    randomize(m)
    if self_attn:
        J = I
    x = f32(randn(B, I, qd)).requires_grad_(True)
    inputs = {"hidden_states": x}
    ctx = None
    if not self_attn:
        ctx = f32(randn(B, J, cd)).requires_grad_(True)
        inputs["encoder_hidden_states"] = ctx
    am = None
    if mask:
        am = torch.ones(B, J, dtype=torch.bool)  # True = keep (diffusers / SDPA)
        am[1, :2] = False
        inputs["attention_mask"] = am
    out = m(x, encoder_hidden_states=ctx, attention_mask=am)
    save("attention", case, m, inputs, out, {"heads": m.heads, "scale_qk": scale_qk,
                                             "residual_connection": residual,
                                             "rescale_output_factor": rescale, "is_causal": False})


def mutual_case(case, shape):
    """Mutual cross-attention (ztony0712/MCA): softmax(a b^T / sqrt(D)) b + softmax(b a^T /
    sqrt(D)) a, written out (the reference is these two lines)."""
    a = f32(randn(*shape)).requires_grad_(True)
    b = f32(randn(*shape)).requires_grad_(True)
    D = shape[-1]
    out = torch.softmax(a @ b.transpose(-1, -2) / D ** 0.5, -1) @ b + \
        torch.softmax(b @ a.transpose(-1, -2) / D ** 0.5, -1) @ a
    save("mutual", case, nn.Module(), {"a": a, "b": b}, out, {"is_causal": False, "kind": "mutual"})


def conv2d_case(case, B, C1, C2, Cv, Ck, H1, W1, H2, W2, bias=True, scale=None):
    """CrossAttention over 2-D maps (tests/reference/gen_conv2d.py): 1x1 convolutions for the
    queries (x1), keys and values (x2); out[b, :, p] = sum_q softmax_q(scale Q_p . K_q) V_q."""
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv_query = nn.Conv2d(C1, Ck, 1, bias=bias)
            self.conv_key = nn.Conv2d(C2, Ck, 1, bias=bias)
            self.conv_value = nn.Conv2d(C2, Cv, 1, bias=bias)

        def forward(self, x1, x2):
            q = self.conv_query(x1).flatten(2).transpose(1, 2)   # (B, P1, Ck)
            k = self.conv_key(x2).flatten(2)                      # (B, Ck, P2)
            v = self.conv_value(x2).flatten(2).transpose(1, 2)    # (B, P2, Cv)
            a = torch.softmax((q @ k) * (1.0 if scale is None else scale), -1)
            return (a @ v).transpose(1, 2).reshape(B, Cv, H1, W1)
    m = M()
    randomize(m)
    x1 = f32(randn(B, C1, H1, W1)).requires_grad_(True)
    x2 = f32(randn(B, C2, H2, W2)).requires_grad_(True)
    meta = {"is_causal": False}
    if scale is not None:
        meta["scale"] = scale
    save("conv2d", case, m, {"x1": x1, "x2": x2}, m(x1, x2), meta)


def joint_case(case, d, nhead, ff, layers=0, norm_first=False, activation="relu", eps=1e-5,
               final_norm=False, masks=False, B=2, K=5, N=7):
    """nn.TransformerEncoderLayer (layers = 0: a bare layer) or nn.TransformerEncoder over
    [x; context] (MMCA joint attention), the two halves split back."""
    layer = nn.TransformerEncoderLayer(d, nhead, dim_feedforward=ff, dropout=0.0,
                                       activation=activation, layer_norm_eps=eps, batch_first=True,
                                       norm_first=norm_first)
    if layers:
        m = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d, eps=eps) if final_norm else None,
                                  enable_nested_tensor=False)
    else:
        m = layer
    randomize(m)
    x = f32(randn(B, K, d)).requires_grad_(True)
    c = f32(randn(B, N, d)).requires_grad_(True)
    inputs = {"x": x, "context": c}
    pm = None
    if masks:
        xm = torch.zeros(B, K, dtype=torch.bool)
        cm = torch.zeros(B, N, dtype=torch.bool)
        xm[0, -1] = True  # True = ignore (torch); never every key of a row
        cm[1, :2] = True
        inputs["x_padding_mask"], inputs["context_padding_mask"] = xm, cm
        pm = torch.cat([xm, cm], 1)
    y = m(torch.cat([x, c], 1), src_key_padding_mask=pm)
    save("joint", case, m, inputs, y, {"nhead": nhead, "norm_first": norm_first,
                                      "activation": activation, "layer_norm_eps": eps,
                                      "is_causal": False, "two_outputs": True, "K": K})


torch_case("packed_kpm", 16, 4, kpm=True)
torch_case("kdim_vdim_float_mask", 8, 2, kdim=5, vdim=6, am="float2d")
torch_case("bias_kv_zero_attn_bool3d", 12, 3, add_bias_kv=True, add_zero_attn=True, am="bool3d")
torch_case("self_attention", 12, 2, self_attn=True)
torch_case("value_is_key_causal", 8, 4, I=6, J=6, kdim=6, vdim=6, value_is_key=True, causal=True,
           bias=False)
torch_case("long", 16, 2, B=1, I=70, J=130, kpm=True)
diff_case("basic", 16, 10, 2, 8)
diff_case("bias_self_mask", 12, 12, 3, 4, bias=True, self_attn=True, mask=True)
diff_case("noscale_residual_rescale", 12, 7, 2, 6, self_attn=False, scale_qk=False, residual=True,
          rescale=2.0)
diff_case("out_dim", 16, 9, 4, 8, out_dim=24, out_bias=False)
mutual_case("batched", (3, 33, 16))
mutual_case("single", (70, 8))
conv2d_case("basic", 2, 5, 3, 6, 4, 4, 5, 3, 3)
conv2d_case("nobias_scale", 1, 4, 4, 3, 8, 7, 9, 6, 5, bias=False, scale=0.125)
joint_case("layer_post_relu_masks", 16, 2, 24, masks=True)
joint_case("layer_pre_gelu", 12, 3, 20, norm_first=True, activation="gelu")
joint_case("stack2_final_norm_masks", 16, 4, 24, layers=2, activation="gelu", eps=1e-6,
           final_norm=True, masks=True)
joint_case("stack2_pre", 8, 2, 16, layers=2, norm_first=True)

write_list("grad_list.inc", "gen_module_grad.py")
