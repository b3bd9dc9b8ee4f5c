"""Gradient fixtures for the interlaced two-stream decoder (InterlanceDecoder of jimmy15923/mit,
models/sem_transformer.py), by torch.autograd in float64 on the transcription of the reference
in gen_interlaced.py (same module and parameter names; what each file holds: grad_fixture.py):
    python tests/reference/gen_grad_interlaced.py
Writes tests/fixtures/grad_interlaced_<case>.safetensors and grad_interlaced_list.inc.

Both outputs take a gradient: out (voxel) and context_out (view) are stacked along the tokens
for save()'s two-output convention (dout.out, dout.context_out). The returned logits are a
diagnostic and take none. A block whose other stream has no token after the class tokens
(empty_keys) attends to nothing: a zero output whose gradient reaches no q/k/v map.
"""
import torch

from gen_interlaced import InterlanceDecoder
from grad_fixture import f32, randn, randomize, save, write_list


def case(name, D, depth, heads, n_cls, B, I, J, mlp_ratio=0.2, qkv_bias=False,
         context_first=False, qk_scale=None, meta_heads=True):
    m = InterlanceDecoder(embed_dim=D, depth=depth, num_classes=n_cls, num_heads=heads,
                          mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale)
    randomize(m)
    x = f32(randn(B, I, D)).requires_grad_(True)
    ctx = f32(randn(B, J, D)).requires_grad_(True)
    vo, vi, _ = m(x, ctx, context_first=context_first)
    meta = {"n_cls": n_cls, "first": "context" if context_first else "x",
            "two_outputs": True, "K": I}
    if meta_heads:
        meta["heads"] = heads
    if qk_scale is not None:
        meta["qk_scale"] = qk_scale
    save("interlaced", name, m, {"x": x, "context": ctx}, torch.cat([vo, vi], 1), meta)


case("basic", D=16, depth=2, heads=2, n_cls=3, B=2, I=9, J=7)
case("qkv_bias_len1", D=8, depth=1, heads=4, n_cls=0, B=1, I=1, J=5, mlp_ratio=4.0,
     qkv_bias=True)
case("context_first_d3", D=16, depth=3, heads=4, n_cls=2, B=2, I=10, J=13, qkv_bias=True,
     context_first=True)
case("qk_scale", D=12, depth=2, heads=3, n_cls=1, B=2, I=6, J=8, mlp_ratio=1.0, qk_scale=0.3)
case("long_i70_j130", D=16, depth=2, heads=2, n_cls=5, B=1, I=70, J=130, mlp_ratio=0.5)
case("long_ctx_first_i130_j70", D=8, depth=3, heads=2, n_cls=0, B=2, I=130, J=70,
     qkv_bias=True, context_first=True)
case("empty_keys", D=8, depth=2, heads=1, n_cls=4, B=2, I=3, J=9, qkv_bias=True)
case("one_key", D=8, depth=2, heads=2, n_cls=4, B=2, I=6, J=5)
case("len1_both_d3", D=8, depth=3, heads=2, n_cls=0, B=3, I=1, J=1, mlp_ratio=0.5)
case("dh1_b3", D=4, depth=2, heads=4, n_cls=1, B=3, I=5, J=4, mlp_ratio=1.0, qkv_bias=True,
     context_first=True, qk_scale=0.7)
case("default_heads", D=12, depth=1, heads=6, n_cls=2, B=2, I=7, J=11, meta_heads=False)
write_list("grad_interlaced_list.inc", "gen_grad_interlaced.py")
