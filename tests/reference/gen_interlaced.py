#!/usr/bin/env python3
"""Reference fixtures for M5 (interlaced two-stream cross-attention decoder, 2D-3D MIT, ICCV 2023):
tests/fixtures/interlaced_*.safetensors and tests/fixtures/interlaced_cli/*.

Reference: InterlanceDecoder in jimmy15923/mit, models/sem_transformer.py (with its
SkipClsDecoderBlock, Attention, CrossSkipClsAttention and timm's Mlp). That repository cannot be
pip-installed (no packaging; it also pulls MinkowskiEngine and timm), so this script carries a
faithful PyTorch transcription of those classes below, with the SAME module and parameter names
so the state_dict keys are exactly the reference's. Facts taken from the reference:
  * norm_layer defaults to nn.LayerNorm (eps 1e-5; InterlanceDecoder passes none);
  * qkv_bias=False by default for self_attn.qkv and attn.{q,k,v}_map; the proj layers have bias;
  * scale = qk_scale or head_dim ** -0.5;
  * timm Mlp: fc1 -> nn.GELU() (exact erf) -> dropout -> fc2 -> dropout; mlp_ratio default 0.2;
  * dropout / DropPath are identity at inference (eval, rates 0);
  * CrossSkipClsAttention returns the PRE-softmax logits over all keys (class tokens included)
    and takes the softmax over keys [num_classes:] only, with values [num_classes:];
  * InterlanceDecoder.forward(voxel, view): layer i even -> voxel = blk(q=voxel, v=view),
    i odd -> view = blk(q=view, v=voxel); returns voxel, view, [weights per layer].
  xattn's x is voxel and context is view.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  numpy  safetensors

    python tests/reference/gen_interlaced.py [--out tests/fixtures]

Every fixture holds the state_dict (F32, rounded from float64 random weights), input.x,
input.context, expected.out, expected.context_out, expected.logits.L (per layer) computed in
float64 from the stored values and stored as F32, and __metadata__ heads / n_cls / first (when the
file gives them), expected_heads, expected_n_cls, expected_first, description.
"""
import argparse
import os

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import save_file

torch.set_default_dtype(torch.float64)
GEN = torch.Generator().manual_seed(20240605)


# ------------------------------------------------------------------------------------------
# transcription of models/sem_transformer.py (inference path) and timm's Mlp
# ------------------------------------------------------------------------------------------
class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None):
        super().__init__()
        self.num_heads = num_heads
        self.scale = qk_scale or (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x), attn


class CrossSkipClsAttention(nn.Module):
    def __init__(self, dim, out_dim, num_classes=3, num_heads=8, qkv_bias=False, qk_scale=None):
        super().__init__()
        self.num_classes = num_classes
        self.num_heads = num_heads
        self.out_dim = out_dim
        self.scale = qk_scale or (out_dim // num_heads) ** -0.5
        self.q_map = nn.Linear(dim, out_dim, bias=qkv_bias)
        self.k_map = nn.Linear(dim, out_dim, bias=qkv_bias)
        self.v_map = nn.Linear(dim, out_dim, bias=qkv_bias)
        self.proj = nn.Linear(out_dim, out_dim)

    def forward(self, q, v):
        B, N, _ = q.shape
        C = self.out_dim
        k = v
        NK = k.size(1)
        H = self.num_heads
        q = self.q_map(q).view(B, N, H, C // H).permute(0, 2, 1, 3)
        k = self.k_map(k).view(B, NK, H, C // H).permute(0, 2, 1, 3)
        v = self.v_map(v).view(B, NK, H, C // H).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)) * self.scale
        weights = attn
        no_cls_attn = attn[..., self.num_classes:].softmax(dim=-1)
        no_cls_v = v[:, :, self.num_classes:, :]
        x = (no_cls_attn @ no_cls_v).transpose(1, 2).reshape(B, N, C)
        return self.proj(x), weights


class SkipClsDecoderBlock(nn.Module):
    def __init__(self, dim, num_heads, num_classes, mlp_ratio=4.0, qkv_bias=False, qk_scale=None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.norm_q = nn.LayerNorm(dim)
        self.norm_v = nn.LayerNorm(dim)
        self.attn = CrossSkipClsAttention(dim, dim, num_classes, num_heads=num_heads,
                                          qkv_bias=qkv_bias, qk_scale=qk_scale)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, q, v):
        q_1, _ = self.self_attn(self.norm1(q))
        q = q + q_1
        q_2, weights = self.attn(self.norm_q(q), self.norm_v(v))
        q = q + q_2
        q = q + self.mlp(self.norm2(q))
        return q, weights


class InterlanceDecoder(nn.Module):
    def __init__(self, embed_dim=384, depth=4, num_classes=20, num_heads=6, mlp_ratio=0.2,
                 qkv_bias=False, qk_scale=None):
        super().__init__()
        self.blocks = nn.ModuleList([
            SkipClsDecoderBlock(dim=embed_dim, num_classes=num_classes, num_heads=num_heads,
                                mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, qk_scale=qk_scale)
            for _ in range(depth)])

    def forward(self, voxel, view, context_first=False):
        attn_weights = []
        for i, blk in enumerate(self.blocks):
            if (i % 2) != bool(context_first):
                view, weights_i = blk(q=view, v=voxel)
            else:
                voxel, weights_i = blk(q=voxel, v=view)
            attn_weights.append(weights_i)
        return voxel, view, attn_weights


# ------------------------------------------------------------------------------------------
def rand(*shape):
    return torch.rand(*shape, generator=GEN)


def f32(t):
    return t.to(torch.float32).to(torch.float64)


def randomize(module):
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm1.weight") or ".norm" in name and name.endswith("weight"):
                p.copy_(f32(1.0 + (rand(*p.shape) * 2 - 1) * 0.3))
            else:
                fan_in = p.shape[-1] if p.dim() > 1 else p.shape[0]
                p.copy_(f32((rand(*p.shape) * 2 - 1) * (1.5 / fan_in ** 0.5)))


def make(out_dir, name, desc, *, D, depth, heads, n_cls, B, I, J, mlp_ratio=0.2, qkv_bias=False,
         context_first=False, meta_heads=True, meta_ncls=True, meta_first=False, cli=False):
    model = InterlanceDecoder(embed_dim=D, depth=depth, num_classes=n_cls, num_heads=heads,
                              mlp_ratio=mlp_ratio, qkv_bias=qkv_bias).eval()
    randomize(model)
    x = f32(rand(B, I, D) * 4 - 2)
    ctx = f32(rand(B, J, D) * 4 - 2)
    with torch.no_grad():
        vo, vi, ws = model(x, ctx, context_first=context_first)
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in model.state_dict().items()}
    meta = {"description": desc, "expected_heads": str(heads), "expected_n_cls": str(n_cls),
            "expected_first": "context" if context_first else "x", "depth": str(depth)}
    if meta_heads:
        meta["heads"] = str(heads)
    if meta_ncls:
        meta["n_cls"] = str(n_cls)
    if meta_first:
        meta["first"] = "context" if context_first else "x"
    if cli:
        d = os.path.join(out_dir, "interlaced_cli")
        os.makedirs(d, exist_ok=True)
        save_file(sd, os.path.join(d, "model.safetensors"), metadata=meta)
        np.save(os.path.join(d, "x.npy"), x.numpy().astype(np.float32))
        np.save(os.path.join(d, "context.npy"), ctx.numpy().astype(np.float32))
        np.save(os.path.join(d, "expected_out.npy"), vo.numpy().astype(np.float32))
        np.save(os.path.join(d, "expected_context_out.npy"), vi.numpy().astype(np.float32))
        for L, w in enumerate(ws):
            np.save(os.path.join(d, f"expected_logits_{L}.npy"), w.numpy().astype(np.float32))
        return
    t = dict(sd)
    t["input.x"] = x.to(torch.float32)
    t["input.context"] = ctx.to(torch.float32)
    t["expected.out"] = vo.to(torch.float32)
    t["expected.context_out"] = vi.to(torch.float32)
    for L, w in enumerate(ws):
        t[f"expected.logits.{L}"] = w.to(torch.float32)
    save_file({k: v.contiguous() for k, v in t.items()},
              os.path.join(out_dir, f"interlaced_{name}.safetensors"), metadata=meta)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    out = ap.parse_args().out
    make(out, "basic", "depth 2, n_cls 3, B 2, I 33, J 17, mlp_ratio 0.2 (hidden 3)",
         D=16, depth=2, heads=2, n_cls=3, B=2, I=33, J=17)
    make(out, "d1_ncls0_len1", "depth 1, n_cls 0, I 1, qkv_bias", D=8, depth=1, heads=4, n_cls=0,
         B=1, I=1, J=5, qkv_bias=True, mlp_ratio=4.0)
    make(out, "d3_ncls1_defaults", "depth 3, n_cls 1 from __metadata__, default heads 6 (no "
         "heads entry), B 3", D=12, depth=3, heads=6, n_cls=1, B=3, I=65, J=7, mlp_ratio=1.0,
         meta_heads=False)
    make(out, "default_ncls20", "depth 2, default n_cls 20 (no entry), J 23, I 21 (fewer than 20 "
         "keys left in layer 1: 1 key)", D=8, depth=2, heads=2, n_cls=20, B=2, I=21, J=23,
         meta_ncls=False)
    make(out, "empty_keys", "depth 2, n_cls 4 >= I 3: layer 1 (context queries x) has no keys",
         D=8, depth=2, heads=1, n_cls=4, B=2, I=3, J=9, qkv_bias=True)
    make(out, "context_first", "depth 3, __metadata__ first=context", D=16, depth=3, heads=4,
         n_cls=2, B=2, I=10, J=33, context_first=True, meta_first=True)
    make(out, "long", "depth 1, I 257, J 40, n_cls 5", D=32, depth=1, heads=4, n_cls=5, B=1,
         I=257, J=40, mlp_ratio=0.5)
    make(out, "cli", "CLI fixture", D=16, depth=2, heads=2, n_cls=2, B=2, I=9, J=6, cli=True)


if __name__ == "__main__":
    main()
