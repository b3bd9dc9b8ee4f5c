#!/usr/bin/env python3
"""Reference fixtures for M7 (HALLO region-masked audio-visual cross-attention):
tests/fixtures/hallo_*.safetensors.

Pinned versions (run by hand, the outputs are committed):
    torch==2.9.1  numpy  safetensors  diffusers==0.42.1

    python tests/reference/gen_hallo.py [--out tests/fixtures]

The reference is the audio path of HALLO's AudioTemporalBasicTransformerBlock
(fudan-generative-vision/hallo, hallo/models/attention.py, the attn2_0/1/2 branch). The hallo
package itself is not installable here (it pins an old diffusers), so `HalloAudioPath` below is a
faithful transcription of that branch built from the REAL diffusers 0.42.1 modules it uses
(diffusers.models.attention_processor.Attention for attn2_k, diffusers.models.attention.FeedForward
for ff, torch.nn.LayerNorm for norm2/norm3, torch.nn.Conv2d(dim, dim, 1) for the zero convs applied
to (B, C, h, w) maps reshaped from the tokens, exactly as HALLO does). HALLO zero-initialises the
zero convs; the fixtures use random values so the test sees them.

Mask pyramid: torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
antialias=True) on (B|1, 3, Hm, Wm), flattened to (B|1, 3, h*w).

Each file holds the module's state_dict under its own names (F32), inputs (input.x (B, N, C),
input.audio (B, T, Ca), input.masks (B|1, 3, N) at the block's level, optionally
input.region_masks (B|1, 3, Hm, Wm) at full resolution), expected.out (B, N, C) and
expected.regions (3, B, N, C) (the unscaled zero-conv outputs), computed in float64 and stored as
F32; __metadata__: heads, latent_h, latent_w, motion_scale ("p,f,l" or absent), description.
hallo_cli_*.npy: the inputs and outputs of hallo_fullres for the CLI test (motion 1,0.5,2).
hallo_pyramid.safetensors holds input.masks (2, 3, 40, 36) and expected.L_<h>x<w> for several
sizes (shrinking, enlarging and mixed).
"""
import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from diffusers.models.attention_processor import Attention
from diffusers.models.attention import FeedForward

torch.set_default_dtype(torch.float64)
GEN = torch.Generator().manual_seed(20240707)


def randn(*s):
    return torch.randn(*s, generator=GEN)


def rand(*s):
    return torch.rand(*s, generator=GEN)


class HalloAudioPath(torch.nn.Module):
    """The audio branch of AudioTemporalBasicTransformerBlock.forward (attn2_0 is not None)."""

    def __init__(self, dim, heads, dim_head, cross_dim):
        super().__init__()
        self.zero_conv_full = torch.nn.Conv2d(dim, dim, kernel_size=1)
        self.zero_conv_face = torch.nn.Conv2d(dim, dim, kernel_size=1)
        self.zero_conv_lip = torch.nn.Conv2d(dim, dim, kernel_size=1)
        for k in range(3):
            setattr(self, f"attn2_{k}", Attention(query_dim=dim, cross_attention_dim=cross_dim,
                                                  heads=heads, dim_head=dim_head, bias=False))
        self.norm2 = torch.nn.LayerNorm(dim)
        self.ff = FeedForward(dim, activation_fn="geglu")
        self.norm3 = torch.nn.LayerNorm(dim)

    def forward(self, hs, audio, full_mask, face_mask, lip_mask, h, w, motion_scale=None):
        n = self.norm2(hs)
        outs = []
        for attn, mask, conv in ((self.attn2_0, full_mask, self.zero_conv_full),
                                 (self.attn2_1, face_mask, self.zero_conv_face),
                                 (self.attn2_2, lip_mask, self.zero_conv_lip)):
            o = attn(n, encoder_hidden_states=audio) * mask[:, :, None]
            bz, sz, c = o.shape
            o = o.reshape(bz, h, w, c).permute(0, 3, 1, 2)
            o = conv(o).permute(0, 2, 3, 1).reshape(bz, -1, c)
            outs.append(o)
        if motion_scale is not None:
            hs = motion_scale[0] * outs[0] + motion_scale[1] * outs[1] + motion_scale[2] * outs[2] + hs
        else:
            hs = outs[0] + outs[1] + outs[2] + hs
        hs = self.ff(self.norm3(hs)) + hs
        return hs, torch.stack(outs)


def soft_masks(b, hm, wm):
    """Soft masks in [0, 1], exactly zero in places (a blob clipped, with holes)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, hm), torch.linspace(-1, 1, wm), indexing="ij")
    out = torch.zeros(b, 3, hm, wm)
    for i in range(b):
        for k, rad in enumerate((1.2, 0.7, 0.35)):
            cy, cx = (rand(2) - 0.5) * 0.4
            d = torch.sqrt((yy - cy) ** 2 + ((xx - cx) * 1.3) ** 2)
            m = torch.clamp((rad - d) / (0.3 * rad), 0, 1) * (0.6 + 0.4 * rand(hm, wm))
            m[rand(hm, wm) < 0.1] = 0.0
            out[i, k] = m
    return out


def make_block(dim, heads, dim_head, cross):
    blk = HalloAudioPath(dim, heads, dim_head, cross)
    with torch.no_grad():
        for name, p in blk.named_parameters():
            if name.startswith("norm"):
                p.copy_((1.0 + 0.2 * randn(*p.shape)) if name.endswith("weight") else 0.1 * randn(*p.shape))
            else:
                fan_in = p.shape[1] if p.ndim >= 2 else p.shape[0]
                p.copy_(randn(*p.shape) / np.sqrt(fan_in) * (1.0 if p.ndim >= 2 else 0.3))
    return blk.eval()


def f32(t):
    return t.detach().to(torch.float32).contiguous()


def block_case(out, name, B, h, w, C, heads, dh, Ca, T, mask_batch, motion=None, full_res=None,
               desc=""):
    blk = make_block(C, heads, dh, Ca)
    N = h * w
    # round weights and inputs to fp32 first, so the reference sees what the file holds
    with torch.no_grad():
        for p in blk.parameters():
            p.copy_(p.to(torch.float32).to(torch.float64))
    x = randn(B, N, C).float().double()
    audio = randn(B, T, Ca).float().double()
    tensors = {k: f32(v) for k, v in blk.state_dict().items()}
    if full_res is not None:
        big = soft_masks(mask_batch, *full_res).float().double()
        masks = F.interpolate(big, size=(h, w), mode="bilinear", align_corners=False,
                              antialias=True).reshape(mask_batch, 3, N)
        tensors["input.region_masks"] = f32(big)
        masks = masks.float().double()  # what the C side sees after its own resize (fp32)
    else:
        masks = soft_masks(mask_batch, h, w).reshape(mask_batch, 3, N).float().double()
    mexp = masks.expand(B, 3, N)
    with torch.no_grad():
        y, regs = blk(x, audio, mexp[:, 0], mexp[:, 1], mexp[:, 2], h, w, motion)
    tensors.update({"input.x": f32(x), "input.audio": f32(audio), "input.masks": f32(masks),
                    "expected.out": f32(y), "expected.regions": f32(regs)})
    meta = {"heads": str(heads), "latent_h": str(h), "latent_w": str(w), "description": desc}
    if motion is not None:
        meta["motion_scale"] = ",".join(repr(float(v)) for v in motion)
    save_file(tensors, os.path.join(out, f"hallo_{name}.safetensors"), metadata=meta)
    return tensors


def pyramid_case(out):
    big = soft_masks(2, 40, 36)
    t = {"input.masks": f32(big)}
    sizes = [(20, 18), (10, 9), (5, 4), (1, 1), (7, 13), (21, 10), (40, 36), (57, 50), (3, 41),
             (41, 3)]
    for hh, ww in sizes:
        r = F.interpolate(big.float().double(), size=(hh, ww), mode="bilinear",
                          align_corners=False, antialias=True)
        t[f"expected.L_{hh}x{ww}"] = f32(r.reshape(2, 3, hh * ww))
    save_file(t, os.path.join(out, "hallo_pyramid.safetensors"),
              metadata={"sizes": ";".join(f"{a}x{b}" for a, b in sizes)})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures"))
    out = ap.parse_args().out
    os.makedirs(out, exist_ok=True)
    pyramid_case(out)
    block_case(out, "basic", 2, 5, 5, 32, 4, 8, 24, 7, 2, desc="B=2, 5x5 latent, per-batch masks")
    block_case(out, "len1", 1, 1, 1, 16, 2, 8, 8, 1, 1, desc="one token, one audio frame")
    block_case(out, "odd", 2, 3, 11, 40, 2, 12, 16, 65, 1, motion=(0.7, 1.3, -0.4),
               desc="N=33, T=65, inner 24 != dim, shared masks, motion scales")
    block_case(out, "tokens257", 1, 1, 257, 24, 3, 8, 12, 33, 1,
               desc="N=257 tokens (1x257), T=33")
    t = block_case(out, "fullres", 2, 8, 6, 32, 4, 8, 16, 9, 1, motion=(1.0, 0.5, 2.0),
               full_res=(40, 36), desc="masks at 40x36 resized to the 8x6 latent")
    # CLI inputs (the model is hallo_fullres.safetensors itself; extra tensors are ignored)
    for k, f in (("input.x", "x"), ("input.audio", "audio"), ("input.region_masks", "masks"),
                 ("expected.out", "out"), ("expected.regions", "regions")):
        np.save(os.path.join(out, f"hallo_cli_{f}.npy"), t[k].numpy())
    xn = t["input.x"].numpy().copy()
    xn[1, 3, 5] = np.nan
    np.save(os.path.join(out, "hallo_cli_x_nan.npy"), xn)


if __name__ == "__main__":
    main()
