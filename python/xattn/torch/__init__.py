"""PyTorch operators and drop-in modules on xattn's fused kernels (CPU).

    import xattn.torch as xt
    out = xt.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=False)
    out, context_out = xt.bidirectional_attention(qk, context_qk, v, context_v, mask=m)
    attn = xt.BidirectionalCrossAttention(dim=512, context_dim=386)   # the PyPI package's module

The operators are registered with torch.library (custom_op, register_autograd, register_fake),
so they work under autograd, torch.compile and torch.library.opcheck. Their backward is the
library's: only inputs, outputs and per-row log-sum-exps are saved, never an I x J matrix.
"""
try:
    import torch as _torch  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("xattn.torch needs PyTorch (pip install torch); the numpy API (import xattn) "
                      "works without it") from e

from ._ops import bidirectional_attention, scaled_dot_product_attention
from ._modules import BidirectionalCrossAttention, BidirectionalCrossAttentionTransformer

__all__ = ["scaled_dot_product_attention", "bidirectional_attention",
           "BidirectionalCrossAttention", "BidirectionalCrossAttentionTransformer"]
