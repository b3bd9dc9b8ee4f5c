"""Gradient fixtures for hallo-audio (HALLO's AudioTemporalBasicTransformerBlock, audio path), by
torch.autograd in float64 on the reference block (what each file holds: grad_fixture.py):
    python tests/reference/gen_grad_hallo.py
Writes tests/fixtures/grad_hallo_<case>.safetensors and tests/fixtures/grad_hallo_list.inc.

The block is HalloAudioPath of gen_hallo.py (the transcription of hallo/models/attention.py's
attn2_0/1/2 branch over the real diffusers Attention and FeedForward), with the options HALLO's
constructor passes on: attention_bias (to_q/to_k/to_v biases) and the feed-forward's inner width.
Inputs use the kind's input names: hidden_states, encoder_hidden_states, masks (B|1, 3, N) at the
latent's size or region_masks (B|1, 3, Hm, Wm) / (3, Hm, Wm) at any size (resized by
F.interpolate(bilinear, antialias=True), so region_masks cases have square latents: the kind's
default grid), motion_scale (3). Masks carry no gradient except in the *_mask_grad cases, which
check the masks' (and through the pyramid, region_masks') gradient too. Cases with "regions" in
their name also give the gradient of the second output, regions (3, B, N, dim): dout.regions.
"""
import os

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import grad_fixture as gf
from gen_hallo import HalloAudioPath, soft_masks
from grad_fixture import f32, randn, randomize, save, write_list


class Block(HalloAudioPath):
    """HalloAudioPath with HALLO's attention_bias and a FeedForward of another inner width."""

    def __init__(self, dim, heads, dim_head, cross, bias=False, ff_inner=None):
        super().__init__(dim, heads, dim_head, cross)
        if bias:
            for k in range(3):
                setattr(self, f"attn2_{k}",
                        Attention(query_dim=dim, cross_attention_dim=cross, heads=heads,
                                  dim_head=dim_head, bias=True))
        if ff_inner:
            self.ff = FeedForward(dim, inner_dim=ff_inner, activation_fn="geglu")


def save_regions(case, m, inputs, out, regs, meta):
    """save() for both outputs: the gradients of <out, dout.out> + <regions, dout.regions> (save
    of the two flattened and concatenated, then its dout.out split back into the two)."""
    save("hallo", case, m, inputs, torch.cat([out.reshape(-1), regs.reshape(-1)]), meta)
    path = os.path.join(gf.OUT, gf.NAMES[-1])
    with safe_open(path, "pt") as f:
        saved_meta = f.metadata()
    t = load_file(path)
    d, n = t.pop("dout.out"), out.numel()
    t["dout.out"], t["dout.regions"] = d[:n].reshape(out.shape), d[n:].reshape(regs.shape)
    save_file(t, path, metadata=saved_meta)


def case(name, B, h, w, C, H, dh, Ca, T, mask_batch=1, bias=False, ff_inner=None, motion=None,
         full_res=None, region_3d=False, mask_grad=False, regions=False, zero_lip=False):
    m = Block(C, H, dh, Ca, bias=bias, ff_inner=ff_inner)
    randomize(m)
    N = h * w
    x = f32(randn(B, N, C)).requires_grad_(True)
    audio = f32(randn(B, T, Ca)).requires_grad_(True)
    inputs = {"hidden_states": x, "encoder_hidden_states": audio}
    if full_res is not None:
        big = f32(soft_masks(mask_batch, *full_res))
        if region_3d:
            big = big[0]
        big.requires_grad_(mask_grad)
        inputs["region_masks"] = big
        masks = F.interpolate(big if not region_3d else big[None], size=(h, w), mode="bilinear",
                              align_corners=False, antialias=True).reshape(mask_batch, 3, N)
    else:
        masks = f32(soft_masks(mask_batch, h, w).reshape(mask_batch, 3, N))
        if zero_lip:
            masks[:, 2] = 0.0
        masks.requires_grad_(mask_grad)
        inputs["masks"] = masks
    ms = None
    if motion is not None:
        ms = torch.tensor(motion).requires_grad_(True)
        inputs["motion_scale"] = ms
    mexp = masks.expand(B, 3, N)
    out, regs = m(x, audio, mexp[:, 0], mexp[:, 1], mexp[:, 2], h, w, ms)
    meta = {"heads": H, "latent_h": h, "latent_w": w}
    if regions:
        save_regions(name, m, inputs, out, regs, meta)
    else:
        save("hallo", name, m, inputs, out, meta)


def main():
    # B > 1, per-item masks; attention_bias with motion scales (their gradient too)
    case("basic", 2, 5, 5, 32, 4, 8, 24, 7, mask_batch=2)
    case("bias_motion", 2, 4, 4, 24, 3, 8, 16, 9, bias=True, motion=(0.7, 1.3, -0.4))
    # one token, one audio frame
    case("len1", 1, 1, 1, 16, 2, 8, 8, 1)
    # token and frame counts that are not multiples of the kernels' tiles
    case("n70_t130", 2, 7, 10, 16, 2, 8, 12, 130, mask_batch=2)
    case("n130_t70", 1, 10, 13, 16, 3, 5, 12, 70, motion=(1.0, 0.5, 2.0))
    # heads and head widths: 1 x 1, 8 x 4, 2 x 64, 1 x 256 (inner != dim)
    case("h1_dh1", 2, 3, 3, 8, 1, 1, 8, 5, bias=True)
    case("h8_dh4", 1, 4, 4, 16, 8, 4, 8, 6, mask_batch=1)
    case("h2_dh64", 2, 3, 4, 16, 2, 64, 8, 5, mask_batch=2)
    case("h1_dh256", 1, 3, 3, 8, 1, 256, 8, 5)
    # the feed-forward's inner width (not 4 * dim)
    case("ff_inner24", 2, 3, 3, 16, 2, 8, 12, 4, ff_inner=24, bias=True)
    # a region with motion scale 0 (skipped by the forward, but its scale has a gradient); a lip
    # mask that is zero everywhere (with the soft masks' holes: tokens no region reaches)
    case("motion_zero", 2, 4, 4, 16, 2, 8, 12, 5, motion=(0.0, 1.5, -0.5), zero_lip=True)
    # the regions output's gradient with out's
    case("regions", 2, 4, 4, 16, 2, 8, 12, 5, mask_batch=2, bias=True, motion=(1.0, 0.5, 2.0),
         regions=True)
    case("regions_nomotion", 1, 3, 3, 16, 4, 4, 8, 3, regions=True)
    # the mask pyramid: region_masks at full resolution, shrunk (40x36 -> 8x8, one set of
    # (3, Hm, Wm) for the batch) and enlarged (3x3 -> 6x6, per item)
    case("pyramid_shrink", 2, 8, 8, 16, 2, 8, 12, 5, full_res=(40, 36), region_3d=True,
         motion=(1.0, 0.5, 2.0))
    case("pyramid_enlarge", 2, 6, 6, 16, 2, 8, 12, 5, mask_batch=2, full_res=(3, 3))
    case("pyramid_mixed", 1, 7, 7, 16, 2, 8, 12, 5, full_res=(4, 20))
    # the masks' gradients: at the latent's size (shared by the batch: summed over it) and
    # through the pyramid (per item, and shared)
    case("mask_grad", 2, 5, 5, 16, 2, 8, 12, 6, mask_grad=True, motion=(0.7, 1.3, -0.4))
    case("mask_grad_per_item", 2, 3, 5, 16, 2, 8, 12, 6, mask_batch=2, mask_grad=True)
    case("pyramid_mask_grad", 2, 5, 5, 16, 2, 8, 12, 6, mask_batch=2, full_res=(12, 10),
         mask_grad=True)
    case("pyramid_mask_grad_3d", 2, 6, 6, 16, 2, 8, 12, 4, full_res=(20, 4), region_3d=True,
         mask_grad=True, regions=True)
    write_list("grad_hallo_list.inc", "gen_grad_hallo.py")


if __name__ == "__main__":
    main()
