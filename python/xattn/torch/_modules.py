"""Drop-in replacements for bidirectional-cross-attention 0.1.0's modules.

    # from bidirectional_cross_attention import BidirectionalCrossAttentionTransformer
    from xattn.torch import BidirectionalCrossAttentionTransformer

The constructors, defaults, submodules (so parameter names, the state dict and, for a given
torch seed, the initial values), forward signatures and results are the package's; a checkpoint
of the package loads with load_state_dict(strict=True). Projections, norms and feed-forwards are
the same torch modules; the attention core runs through xattn.torch.bidirectional_attention,
which keeps no B*H*I*J matrix (the package keeps sim, attn and context_attn, and autograd saves
them for the backward).

Where the core cannot be fused, the package's own computation runs (same numbers, same memory
as the package):
  * dropout > 0 in training mode (dropout of the attention maps; the same torch random stream);
  * return_attn=True while autograd records (the maps are returned with their gradient).
return_attn=True without autograd (torch.no_grad(), or no input requiring a gradient) returns
the maps from the fused kernel: 2 B*H*I*J floats for the two maps, no similarity matrix.
"""
import torch
from torch import nn
from torch.nn import Module, ModuleList
from torch.utils.checkpoint import checkpoint

from ._ops import _bidir_maps, bidirectional_attention


class BidirectionalCrossAttention(nn.Module):
    """bidirectional_cross_attention.BidirectionalCrossAttention, with a fused attention core.

    forward(x (B, I, dim), context (B, J, context_dim), mask=None (B, I) bool, True = keep,
    context_mask=None (B, J), return_attn=False, rel_pos_bias=None (broadcastable to
    (B, heads, I, J))) -> (out, context_out[, attn, context_attn]).
    """

    def __init__(self, *, dim, heads=8, dim_head=64, context_dim=None, dropout=0.,
                 talking_heads=False, prenorm=False):
        super().__init__()
        if context_dim is None:
            context_dim = dim
        inner = heads * dim_head
        self.heads = heads
        self.scale = dim_head ** -0.5
        # the submodules in the package's order: the same names, and the same initial values
        # from the same torch seed
        self.norm = nn.RMSNorm(dim) if prenorm else nn.Identity()
        self.context_norm = nn.RMSNorm(context_dim) if prenorm else nn.Identity()
        self.dropout, self.context_dropout = nn.Dropout(dropout), nn.Dropout(dropout)
        self.to_qk = nn.Linear(dim, inner, bias=False)
        self.context_to_qk = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(dim, inner, bias=False)
        self.context_to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Linear(inner, dim)
        self.context_to_out = nn.Linear(inner, context_dim)
        mixing = (lambda: nn.Conv2d(heads, heads, 1, bias=False)) if talking_heads \
            else nn.Identity
        self.talking_heads = mixing()
        self.context_talking_heads = mixing()

    def _talk_weights(self):
        h = self.heads
        t = self.talking_heads.weight.view(h, h) \
            if isinstance(self.talking_heads, nn.Conv2d) else None
        ct = self.context_talking_heads.weight.view(h, h) \
            if isinstance(self.context_talking_heads, nn.Conv2d) else None
        return t, ct

    def _materialised(self, qk, context_qk, v, context_v, mask, context_mask, rel_pos_bias):
        """The attention core computed as the package computes it, keeping the similarity and
        both maps (B*H*I*J floats each): for dropout in training and for maps with gradients."""
        sim = torch.matmul(qk, context_qk.transpose(-1, -2)) * self.scale
        if rel_pos_bias is not None:
            sim = sim + rel_pos_bias
        if mask is not None or context_mask is not None:
            b, i, j = sim.shape[0], sim.shape[-2], sim.shape[-1]
            keep_i = mask if mask is not None else sim.new_ones(b, i, dtype=torch.bool)
            keep_j = context_mask if context_mask is not None \
                else sim.new_ones(b, j, dtype=torch.bool)
            keep = keep_i[:, None, :, None] & keep_j[:, None, None, :]
            sim = sim.masked_fill(~keep, -torch.finfo(sim.dtype).max)
        attn = self.talking_heads(self.dropout(sim.softmax(dim=-1)))
        context_attn = self.context_talking_heads(self.context_dropout(sim.softmax(dim=-2)))
        out = torch.matmul(attn, context_v)
        context_out = torch.matmul(context_attn.transpose(-1, -2), v)
        return out, context_out, attn, context_attn

    def forward(self, x, context, mask=None, context_mask=None, return_attn=False,
                rel_pos_bias=None):
        x, context = self.norm(x), self.context_norm(context)
        # (B, N, H*dh) projections seen as (B, H, N, dh) without copies
        heads = [t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                 for t in (self.to_qk(x), self.context_to_qk(context), self.to_v(x),
                           self.context_to_v(context))]
        talk, context_talk = self._talk_weights()
        recording = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in heads + [rel_pos_bias, talk, context_talk])
        maps = None
        if (self.training and self.dropout.p > 0) or (return_attn and recording):
            out, context_out, *maps = self._materialised(*heads, mask, context_mask, rel_pos_bias)
        elif return_attn:
            out, context_out, *maps = (t.to(heads[0].dtype) for t in _bidir_maps(
                *heads, mask, context_mask, rel_pos_bias, talk, context_talk, self.scale))
        else:
            out, context_out = bidirectional_attention(
                *heads, mask=mask, context_mask=context_mask, rel_pos_bias=rel_pos_bias,
                talking_heads=talk, context_talking_heads=context_talk, scale=self.scale)
        # back to (B, N, H*dh): a view when the heads came back in the projection's layout
        out = self.to_out(out.transpose(1, 2).flatten(2))
        context_out = self.context_to_out(context_out.transpose(1, 2).flatten(2))
        if return_attn:
            return out, context_out, maps[0], maps[1]
        return out, context_out


def FeedForward(dim, mult=4):
    """The package's feed-forward: RMSNorm, Linear to int(dim * mult), GELU (erf), Linear back."""
    hidden = int(dim * mult)
    return nn.Sequential(nn.RMSNorm(dim), nn.Linear(dim, hidden), nn.GELU(),
                         nn.Linear(hidden, dim))


class BidirectionalCrossAttentionTransformer(Module):
    """bidirectional_cross_attention.BidirectionalCrossAttentionTransformer, with fused attention.

    checkpoint_feedforward (not in the package; default True): in training, the feed-forwards'
    hidden layers are recomputed in the backward rather than kept (torch.utils.checkpoint), a
    piece of FF_CHUNK (1024) positions at a time, so that only one piece's hidden layer is alive
    at once; the results are the package's up to float32 rounding.

    As the package: each layer is BidirectionalCrossAttention(prenorm=True) then a feed-forward
    per stream, with residuals; final_norms builds `context_norm` as nn.RMSNorm(dim) (so
    checkpoints match; with final_norms and context_dim != dim the package's forward fails, and so
    does this one); return_attn is accepted and ignored, as the package does.
    """

    def __init__(self, *, dim, depth, context_dim=None, ff_expansion_factor=4., final_norms=False,
                 checkpoint_feedforward=True, **attn_kwargs):
        super().__init__()
        # the feed-forwards' hidden layers (the largest activations left once the attention
        # keeps no I x J matrix) are recomputed in the backward instead of kept, in pieces of
        # FF_CHUNK positions: one more feed-forward forward per step
        self.checkpoint_feedforward = checkpoint_feedforward
        if context_dim is None:
            context_dim = dim
        self.layers = ModuleList(
            ModuleList([BidirectionalCrossAttention(dim=dim, context_dim=context_dim, prenorm=True,
                                                    **attn_kwargs),
                        FeedForward(dim, ff_expansion_factor),
                        FeedForward(context_dim, ff_expansion_factor)])
            for _ in range(depth))
        self.norm = nn.RMSNorm(dim) if final_norms else nn.Identity()
        self.context_norm = nn.RMSNorm(dim) if final_norms else nn.Identity()  # sic: dim

    def forward(self, x, context, mask=None, context_mask=None, return_attn=False,
                rel_pos_bias=None):
        for attn, ff, context_ff in self.layers:
            dx, dc = attn(x, context, mask=mask, context_mask=context_mask,
                          rel_pos_bias=rel_pos_bias)
            x, context = x + dx, context + dc
            x, context = x + self._ff(ff, x), context + self._ff(context_ff, context)
        return self.norm(x), self.context_norm(context)

    # positions per recomputed piece of a checkpointed feed-forward
    FF_CHUNK = 1024

    def _ff(self, ff, t):
        if self.checkpoint_feedforward and torch.is_grad_enabled() and t.requires_grad:
            # position-wise: recomputed in the backward a piece of the sequence at a time, so
            # the hidden layer of only one piece is alive at once
            return torch.cat([checkpoint(ff, c, use_reentrant=False)
                              for c in t.split(self.FF_CHUNK, dim=-2)], dim=-2)
        return ff(t)
