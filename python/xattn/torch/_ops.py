"""Custom operators (torch.library) over the library's fused attention and its backward.

    xattn::sdpa, xattn::sdpa_backward
    xattn::bidirectional_attention, xattn::bidirectional_attention_backward

Each forward saves its inputs, its output(s) and the per-row log-sum-exp(s); its backward is the
library's (FlashAttention-2's recomputation, and the two-softmax backward of the bidirectional
core), itself an operator so that the backward can be traced (torch.compile, opcheck).

Tensors must be on the CPU. float32 tensors are read in place (any strides with a contiguous last
axis: heads sliced out of a (B, N, H*dh) projection need no copy); float64 (and other float)
tensors are computed in float32 and the results converted back (float32 precision); other
dtypes and devices raise ValueError.
"""
import math
from typing import Optional, Tuple

import numpy as np
import torch
from torch import Tensor

from .. import _attention as _A

# ---- tensors as (pointer, strides) -------------------------------------------------------------


def _rowmajor(t):
    """t itself when its last axis is contiguous and no stride is negative, else a copy."""
    if t is None:
        return None
    if t.dim() and (t.stride(-1) == 1 or t.size(-1) <= 1) and min(t.stride()) >= 0:
        return t
    return t.contiguous()


def _tv(t, lead=3):
    """(data pointer, the strides of the `lead` axes before the last) of a row-major tensor."""
    st = tuple(t.stride()[:-1])
    return (t.data_ptr() if t.numel() else None, st[len(st) - lead:])


def _bcast_stride(t, d):
    """The stride of axis d, 0 where the axis has size 1 (broadcast)."""
    return t.stride(d) if t.size(d) > 1 else 0


def _like(t):
    """A new tensor of t's shape and (when its last axis is contiguous) t's layout, so that
    outputs and gradients of heads read in place from a (B, N, H*dh) projection come back in
    that layout. The same in the real and the fake implementations."""
    o = torch.empty_like(t, memory_format=torch.preserve_format)
    if o.dim() and o.size(-1) > 1 and o.stride(-1) != 1:
        o = t.new_empty(t.shape)
    return o


def _check_tensor(fn, name, t, allow_bool=False):
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{fn}: {name} is {type(t).__name__}; expected a torch.Tensor")
    if t.device.type != "cpu":
        raise ValueError(f"{fn}: {name} is on {t.device}; xattn's kernels run on the CPU (move "
                         "the tensors with .cpu(), or use torch's own attention on this device)")
    if allow_bool and t.dtype == torch.bool:
        return
    if not t.dtype.is_floating_point:
        raise ValueError(f"{fn}: {name} is {t.dtype}; expected float32 (float64 and other "
                         "float types are computed in float32 and converted back)")


# ---- scaled dot-product attention --------------------------------------------------------------


def _mask4(m, B, H, L, S):
    """A (B|1, H|1, L|1, S|1) mask or bias as a (B, H, L, S) view: broadcast axes get stride 0,
    the key axis is made contiguous (a copy only when it broadcasts or is strided)."""
    if m.size(-1) != S or (S > 1 and m.stride(-1) != 1) or min(m.stride()) < 0:
        m = m.expand(*m.shape[:-1], S).contiguous()
    return m.expand(B, H, L, S)


def _masks4(mask, bias, B, H, L, S):
    """Both as (B, H, L, S) views (or None). The caller keeps them alive while C reads them:
    a view may be the only reference to a copy made here."""
    return (None if mask is None else _mask4(mask, B, H, L, S),
            None if bias is None else _mask4(bias, B, H, L, S))


def _opt_tv(t):
    return None if t is None else _tv(t)


def _dropout_keep(seed, p, shape):
    """The keep mask of dropout with probability p, a function of (seed, shape) only: the
    backward regenerates it."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float32) >= p


def _default_scale(E):
    return float(np.float32(1.0 / math.sqrt(E)))


def _sdpa_probs(q, k, v, mask, bias, is_causal, scale, out, lse):
    """The softmax probabilities (B, H, L, S) of the fused forward (dropout's path)."""
    B, H, L, E = q.shape
    S, Ev = v.shape[2], v.shape[3]
    probs = q.new_empty(B, H, L, S)
    m4, b4 = _masks4(mask, bias, B, H, L, S)  # held until the call returns
    _A._sdpa_call(B, H, L, S, E, Ev, _tv(q), _tv(k), _tv(v), _tv(out), mask=_opt_tv(m4),
                  bias=_opt_tv(b4), causal=is_causal, scale=scale,
                  lse=lse.data_ptr() if lse is not None else None, probs=probs.data_ptr())
    return probs


@torch.library.custom_op("xattn::sdpa", mutates_args=())
def _sdpa_op(q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor], bias: Optional[Tensor],
             is_causal: bool, scale: Optional[float], dropout_p: float,
             seed: int) -> Tuple[Tensor, Tensor]:
    """q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) float32; mask bool and bias float32
    (B|1, H|1, L|1, S|1). Returns out (B, H, L, Ev) and the log-sum-exp (B, H, L)."""
    B, H, L, E = q.shape
    S, Ev = v.shape[2], v.shape[3]
    q, k, v, mask, bias = map(_rowmajor, (q, k, v, mask, bias))
    out = q.new_empty(B, H, L, Ev)
    lse = q.new_empty(B, H, L)
    if out.numel() == 0 or S == 0:
        return out.zero_(), lse.fill_(-math.inf)
    if dropout_p > 0:
        probs = _sdpa_probs(q, k, v, mask, bias, is_causal, scale, out, lse)
        if dropout_p >= 1:
            return out.zero_(), lse
        probs.mul_(_dropout_keep(seed, dropout_p, probs.shape)).mul_(1.0 / (1.0 - dropout_p))
        torch.matmul(probs, v, out=out)
        return out, lse
    m4, b4 = _masks4(mask, bias, B, H, L, S)  # held until the call returns
    _A._sdpa_call(B, H, L, S, E, Ev, _tv(q), _tv(k), _tv(v), _tv(out), mask=_opt_tv(m4),
                  bias=_opt_tv(b4), causal=is_causal, scale=scale, lse=lse.data_ptr())
    return out, lse


@_sdpa_op.register_fake
def _sdpa_fake(q, k, v, mask, bias, is_causal, scale, dropout_p, seed):
    B, H, L, _ = q.shape
    return q.new_empty(B, H, L, v.shape[3]), q.new_empty(B, H, L)


def _reduce_to(g, shape):
    """g summed over the axes where `shape` has 1 (a broadcast operand's gradient)."""
    dims = [d for d in range(g.dim()) if shape[d] == 1 and g.size(d) != 1]
    return g.sum(dim=dims, keepdim=True) if dims else g


def _sdpa_dropout_backward(dout, q, k, v, mask, bias, is_causal, scale, dropout_p, seed):
    """Gradients with dropout: the probabilities recomputed by the fused forward, the keep mask
    regenerated from the seed (B*H*L*S floats while this runs)."""
    B, H, L, E = q.shape
    probs = _sdpa_probs(q, k, v, mask, bias, is_causal, scale, q.new_empty(B, H, L, v.shape[3]),
                        None)
    keep = _dropout_keep(seed, dropout_p, probs.shape).to(probs.dtype)
    keep.mul_(0.0 if dropout_p >= 1 else 1.0 / (1.0 - dropout_p))
    dv = torch.matmul((probs * keep).transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.transpose(-1, -2)).mul_(keep)
    ds = probs * (dp - (dp * probs).sum(-1, keepdim=True))
    s = _default_scale(E) if scale is None else scale
    dq = torch.matmul(ds, k).mul_(s)
    dk = torch.matmul(ds.transpose(-1, -2), q).mul_(s)
    return dq, dk, dv, ds


@torch.library.custom_op("xattn::sdpa_backward", mutates_args=())
def _sdpa_backward_op(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor],
                      bias: Optional[Tensor], out: Tensor, lse: Tensor, is_causal: bool,
                      scale: Optional[float], dropout_p: float, seed: int,
                      bias_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of q, k, v (contiguous) and, with bias_grad, of the bias (its own shape)."""
    B, H, L, E = q.shape
    S, Ev = v.shape[2], v.shape[3]
    dq, dk, dv = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    dbias = q.new_empty(bias.shape) if bias_grad and bias is not None else q.new_empty(0)
    if q.numel() == 0 or k.numel() == 0 or S == 0 or L == 0:
        return dq.zero_(), dk.zero_(), dv.zero_(), dbias.zero_()
    dout, q, k, v, mask, bias, out = map(_rowmajor, (dout, q, k, v, mask, bias, out))
    lse = lse.contiguous()
    if dropout_p > 0:
        gq, gk, gv, ds = _sdpa_dropout_backward(dout, q, k, v, mask, bias, is_causal, scale,
                                                dropout_p, seed)
        dq.copy_(gq), dk.copy_(gk), dv.copy_(gv)
        if dbias.numel():
            dbias.copy_(_reduce_to(ds, dbias.shape))
        return dq, dk, dv, dbias
    db_view = None
    if dbias.numel():
        # a 0 stride sums over that axis; the key axis cannot be summed by the kernel
        full_keys = bias.size(3) == 1 and S > 1
        target = q.new_empty(*bias.shape[:3], S) if full_keys else dbias
        db_view = (target.data_ptr(), tuple(_bcast_stride(target, d) for d in range(3)))
    m4, b4 = _masks4(mask, bias, B, H, L, S)  # held until the call returns
    _A._sdpa_backward_call(
        (B, H, L, S, E, Ev, _tv(q), _tv(k), _tv(v), _tv(out)),
        dict(mask=_opt_tv(m4), bias=_opt_tv(b4), causal=is_causal, scale=scale,
             lse=lse.data_ptr()),
        _tv(dout), dq=_tv(dq), dk=_tv(dk), dv=_tv(dv), dbias=db_view)
    if dbias.numel() and bias.size(3) == 1 and S > 1:
        dbias.copy_(target.sum(3, keepdim=True))
    return dq, dk, dv, dbias


@_sdpa_backward_op.register_fake
def _sdpa_backward_fake(dout, q, k, v, mask, bias, out, lse, is_causal, scale, dropout_p, seed,
                        bias_grad):
    dbias = q.new_empty(bias.shape) if bias_grad and bias is not None else q.new_empty(0)
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dbias


def _sdpa_setup_context(ctx, inputs, output):
    q, k, v, mask, bias, is_causal, scale, dropout_p, seed = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.save_for_backward(q, k, v, mask, bias, out, lse)
    ctx.args = (is_causal, scale, dropout_p, seed)


def _sdpa_autograd(ctx, dout, dlse):
    q, k, v, mask, bias, out, lse = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[4]
    if dout is None:
        dout = torch.zeros_like(out)
    dq, dk, dv, dbias = torch.ops.xattn.sdpa_backward(dout, q, k, v, mask, bias, out, lse,
                                                      *ctx.args, bias_grad)
    return dq, dk, dv, None, dbias if bias_grad else None, None, None, None, None


torch.library.register_autograd("xattn::sdpa", _sdpa_autograd, setup_context=_sdpa_setup_context)


def _batch4(t, batch, rows):
    """t broadcast to batch + (rows, cols) and made 4-D (B, H, rows, cols): the leading batch
    axes are merged (a view when t's strides allow, else a copy)."""
    t = t.expand(*batch, rows, t.shape[-1])
    if len(batch) > 2:
        return t.reshape(-1, batch[-1], rows, t.shape[-1])
    return t.reshape((1,) * (2 - len(batch)) + tuple(t.shape))


def _mask_batch4(m, batch):
    """An attention mask broadcastable to batch + (L, S), kept small: as (B|1, H|1, L|1, S|1)."""
    m = m.reshape((1,) * (len(batch) + 2 - m.dim()) + tuple(m.shape))
    if len(batch) > 2:
        m = m.expand(*batch[:-1], *m.shape[-3:]).reshape(-1, *m.shape[-3:])
    return m


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False,
                                 scale=None, enable_gqa=False, *, seed=None):
    """torch.nn.functional.scaled_dot_product_attention on xattn's fused kernels (CPU).

    query (..., L, E), key (..., S, E), value (..., S, Ev), the leading axes broadcasting;
    attn_mask broadcastable to (..., L, S), bool (True = take part; a fully masked row gives a
    zero output row, as PyTorch) or float (added to the logits; it gets a gradient when it
    requires one); is_causal (upper-left aligned; not with attn_mask); scale (default E^-0.5);
    enable_gqa as PyTorch's.

    dropout_p > 0 drops attention probabilities with a counter-free, seeded generator: the keep
    mask is a function of (seed, shape), regenerated by the backward, so nothing of size L x S
    is saved between the passes (but the probabilities are materialised, B*H*L*S floats, while
    each pass runs). It cannot reproduce PyTorch's random stream. seed=None draws one from
    torch's default generator (torch.manual_seed makes runs repeatable).
    """
    fn = "scaled_dot_product_attention"
    for name, t in (("query", query), ("key", key), ("value", value)):
        _check_tensor(fn, name, t)
        if t.dim() < 2:
            raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}; expected (..., L, E)")
    L, E = query.shape[-2:]
    S, Ev = value.shape[-2:]
    if key.shape[-1] != E or key.shape[-2] != S:
        raise ValueError(f"{fn}: key has shape {tuple(key.shape)}; expected (..., {S}, {E}) to "
                         f"match query {tuple(query.shape)} and value {tuple(value.shape)}")
    if attn_mask is not None and is_causal:
        raise ValueError(f"{fn}: attn_mask cannot be combined with is_causal=True (as in "
                         "PyTorch)")
    if not 0.0 <= dropout_p <= 1.0:
        raise ValueError(f"{fn}: dropout_p {dropout_p} is not in [0, 1]")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"{fn}: scale {scale} is not finite")
    if E < 1 or Ev < 1:
        raise ValueError(f"{fn}: head sizes must be at least 1")
    out_dtype = query.dtype
    q, k, v = (t if t.dtype == torch.float32 else t.float() for t in (query, key, value))
    if enable_gqa:
        if q.dim() < 3 or k.dim() < 3 or q.shape[-3] % k.shape[-3] or q.shape[-3] % v.shape[-3]:
            raise ValueError(f"{fn}: enable_gqa needs query's heads {tuple(q.shape)} to be a "
                             f"multiple of key's {tuple(k.shape)} and value's {tuple(v.shape)}")
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], dim=-3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], dim=-3)
    mask = bias = None
    mshape = ()
    if attn_mask is not None:
        _check_tensor(fn, "attn_mask", attn_mask, allow_bool=True)
        m = attn_mask if attn_mask.dim() else attn_mask.reshape(1, 1)
        if m.dim() == 1:
            m = m.reshape(1, -1)
        try:
            torch.broadcast_shapes(tuple(m.shape[-2:]), (L, S))
        except RuntimeError:
            raise ValueError(f"{fn}: attn_mask of shape {tuple(attn_mask.shape)} does not "
                             f"broadcast to (..., {L}, {S})") from None
        mshape = tuple(m.shape[:-2])
        if m.dtype == torch.bool:
            mask = m
        else:
            bias = m if m.dtype == torch.float32 else m.float()
    try:
        batch = tuple(torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], mshape))
    except RuntimeError:
        raise ValueError(f"{fn}: the batch axes of query {tuple(q.shape)}, key {tuple(k.shape)}"
                         f", value {tuple(v.shape)} and attn_mask {mshape} do not broadcast") \
            from None
    if dropout_p > 0 and seed is None:
        seed = int(torch.randint(0, 2 ** 62, (1,)).item())
    q4, k4, v4 = _batch4(q, batch, L), _batch4(k, batch, S), _batch4(v, batch, S)
    m4 = _mask_batch4(mask, batch) if mask is not None else None
    b4 = _mask_batch4(bias, batch) if bias is not None else None
    out, _ = torch.ops.xattn.sdpa(q4, k4, v4, m4, b4, bool(is_causal),
                                  None if scale is None else float(scale), float(dropout_p),
                                  int(seed or 0))
    out = out.reshape(*batch, L, Ev)
    return out if out_dtype == torch.float32 else out.to(out_dtype)


# ---- bidirectional attention -------------------------------------------------------------------


def _token_mask_view(m):
    return None if m is None else (m.data_ptr(), (_bcast_stride(m, 0),))


def _bias_view(b):
    return None if b is None else (b.data_ptr() if b.numel() else None,
                                   (_bcast_stride(b, 0), _bcast_stride(b, 1)))


def _bias_rows(b):
    """A (B|1, H|1, I, J) bias with rows of J contiguous (row stride J)."""
    if b is None:
        return None
    if b.stride(3) != 1 or b.stride(2) != b.size(3) or min(b.stride()) < 0:
        b = b.contiguous()
    return b


def _bidir_args(qk, cqk, v, cv, mask, cmask, bias, talk, ctalk, scale, out, cout, lse, clse,
                attn=None, cattn=None):
    B, H, I, dh = qk.shape
    J = cqk.shape[2]
    ptr = (lambda t: t.data_ptr() if t is not None and t.numel() else None)
    return ((B, H, I, J, dh, _tv(qk), _tv(cqk), _tv(v), _tv(cv), _tv(out), _tv(cout)),
            dict(mask=_token_mask_view(mask), cmask=_token_mask_view(cmask),
                 bias=_bias_view(bias), talk=ptr(talk), ctalk=ptr(ctalk), scale=scale,
                 attn=ptr(attn), cattn=ptr(cattn), lse=ptr(lse), clse=ptr(clse)))


def _bidir_inputs(qk, cqk, v, cv, mask, cmask, bias, talk, ctalk):
    return (tuple(map(_rowmajor, (qk, cqk, v, cv, mask, cmask))) + (_bias_rows(bias),)
            + tuple(t.contiguous() if t is not None else None for t in (talk, ctalk)))


@torch.library.custom_op("xattn::bidirectional_attention", mutates_args=())
def _bidir_op(qk: Tensor, cqk: Tensor, v: Tensor, cv: Tensor, mask: Optional[Tensor],
              cmask: Optional[Tensor], bias: Optional[Tensor], talk: Optional[Tensor],
              ctalk: Optional[Tensor], scale: float) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """qk, v (B, H, I, dh), cqk, cv (B, H, J, dh) float32; masks bool (B|1, I), (B|1, J); bias
    (B|1, H|1, I, J); talking heads (H, H) (both or neither). Returns out, context out and the
    log-sum-exps of sim over j (B, H, I) and over i (B, H, J)."""
    B, H, I, _ = qk.shape
    J = cqk.shape[2]
    out, cout = _like(qk), _like(cqk)
    lse, clse = qk.new_empty(B, H, I), qk.new_empty(B, H, J)
    args = _bidir_inputs(qk, cqk, v, cv, mask, cmask, bias, talk, ctalk)
    pa, kw = _bidir_args(*args, scale, out, cout, lse, clse)
    _A._bidir_call(*pa, **kw)
    return out, cout, lse, clse


@_bidir_op.register_fake
def _bidir_fake(qk, cqk, v, cv, mask, cmask, bias, talk, ctalk, scale):
    B, H, I, _ = qk.shape
    J = cqk.shape[2]
    return _like(qk), _like(cqk), qk.new_empty(B, H, I), qk.new_empty(B, H, J)


@torch.library.custom_op("xattn::bidirectional_attention_backward", mutates_args=())
def _bidir_backward_op(dout: Tensor, dcout: Tensor, qk: Tensor, cqk: Tensor, v: Tensor,
                       cv: Tensor, mask: Optional[Tensor], cmask: Optional[Tensor],
                       bias: Optional[Tensor], talk: Optional[Tensor], ctalk: Optional[Tensor],
                       out: Tensor, cout: Tensor, lse: Tensor, clse: Tensor, scale: float,
                       bias_grad: bool) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor,
                                                 Tensor]:
    """Gradients of qk, cqk, v, cv, the bias (with bias_grad; else empty) and both talking-heads
    weights (with talking heads; else empty)."""
    dqk, dcqk, dv, dcv = _like(qk), _like(cqk), _like(v), _like(cv)
    dbias = qk.new_empty(bias.shape) if bias_grad and bias is not None else qk.new_empty(0)
    H = qk.shape[1]
    dtalk = qk.new_empty(H, H) if talk is not None else qk.new_empty(0)
    dctalk = qk.new_empty(H, H) if talk is not None else qk.new_empty(0)
    args = _bidir_inputs(qk, cqk, v, cv, mask, cmask, bias, talk, ctalk)
    out, cout, dout, dcout = map(_rowmajor, (out, cout, dout, dcout))
    lse, clse = lse.contiguous(), clse.contiguous()
    pa, kw = _bidir_args(*args, scale, out, cout, lse, clse)
    _A._bidir_backward_call(pa, kw, _tv(dout), _tv(dcout), dqk=_tv(dqk), dcqk=_tv(dcqk),
                            dv=_tv(dv), dcv=_tv(dcv),
                            dbias=_bias_view(dbias) if dbias.numel() else None,
                            dtalk=dtalk.data_ptr() if dtalk.numel() else None,
                            dctalk=dctalk.data_ptr() if dctalk.numel() else None)
    return dqk, dcqk, dv, dcv, dbias, dtalk, dctalk


@_bidir_backward_op.register_fake
def _bidir_backward_fake(dout, dcout, qk, cqk, v, cv, mask, cmask, bias, talk, ctalk, out, cout,
                         lse, clse, scale, bias_grad):
    H = qk.shape[1]
    dbias = qk.new_empty(bias.shape) if bias_grad and bias is not None else qk.new_empty(0)
    dt = qk.new_empty(H, H) if talk is not None else qk.new_empty(0)
    dct = qk.new_empty(H, H) if talk is not None else qk.new_empty(0)
    return _like(qk), _like(cqk), _like(v), _like(cv), dbias, dt, dct


def _bidir_setup_context(ctx, inputs, output):
    qk, cqk, v, cv, mask, cmask, bias, talk, ctalk, scale = inputs
    out, cout, lse, clse = output
    ctx.mark_non_differentiable(lse, clse)
    ctx.save_for_backward(qk, cqk, v, cv, mask, cmask, bias, talk, ctalk, out, cout, lse, clse)
    ctx.scale = scale


def _bidir_autograd(ctx, dout, dcout, dlse, dclse):
    qk, cqk, v, cv, mask, cmask, bias, talk, ctalk, out, cout, lse, clse = ctx.saved_tensors
    bias_grad = bias is not None and ctx.needs_input_grad[6]
    if dout is None:
        dout = torch.zeros_like(out)
    if dcout is None:
        dcout = torch.zeros_like(cout)
    dqk, dcqk, dv, dcv, dbias, dtalk, dctalk = torch.ops.xattn.bidirectional_attention_backward(
        dout, dcout, qk, cqk, v, cv, mask, cmask, bias, talk, ctalk, out, cout, lse, clse,
        ctx.scale, bias_grad)
    return (dqk, dcqk, dv, dcv, None, None, dbias if bias_grad else None,
            dtalk if talk is not None else None, dctalk if ctalk is not None else None, None)


torch.library.register_autograd("xattn::bidirectional_attention", _bidir_autograd,
                                setup_context=_bidir_setup_context)


def _bidir_token_mask(fn, name, m, B, n):
    _check_tensor(fn, name, m, allow_bool=True)
    if m.dtype != torch.bool:
        if m.dtype.is_floating_point:
            raise ValueError(f"{fn}: {name} is {m.dtype}; expected a bool tensor (True = keep)")
        m = m != 0
    if m.dim() == 1:
        m = m.unsqueeze(0)
    if m.dim() != 2 or m.shape[1] != n or m.shape[0] not in (1, B):
        raise ValueError(f"{fn}: {name} has shape {tuple(m.shape)}; expected ({B}, {n}) or "
                         f"(1, {n})")
    return m


def _bidir_bias(fn, b, B, H, I, J):
    _check_tensor(fn, "rel_pos_bias", b)
    if b.dim() > 4:
        raise ValueError(f"{fn}: rel_pos_bias has shape {tuple(b.shape)}; expected at most 4 "
                         f"axes broadcastable to ({B}, {H}, {I}, {J})")
    b = b.reshape((1,) * (4 - b.dim()) + tuple(b.shape))
    try:
        torch.broadcast_shapes(tuple(b.shape), (B, H, I, J))
    except RuntimeError:
        raise ValueError(f"{fn}: rel_pos_bias of shape {tuple(b.shape)} does not broadcast to "
                         f"({B}, {H}, {I}, {J})") from None
    if b.dtype != torch.float32:
        b = b.float()
    if b.shape[2] != I or b.shape[3] != J:  # the kernel reads whole (I, J) rows
        b = b.expand(b.shape[0], b.shape[1], I, J).contiguous()
    return b


def _bidir_talk(fn, name, w, H):
    _check_tensor(fn, name, w)
    if tuple(w.shape) not in ((H, H), (H, H, 1, 1)):
        raise ValueError(f"{fn}: {name} has shape {tuple(w.shape)}; expected ({H}, {H}) or "
                         f"nn.Conv2d's ({H}, {H}, 1, 1)")
    w = w.reshape(H, H)
    return w if w.dtype == torch.float32 else w.float()


def bidirectional_attention(qk, context_qk, v, context_v, mask=None, context_mask=None,
                            rel_pos_bias=None, talking_heads=None, context_talking_heads=None,
                            scale=None):
    """The attention core of bidirectional-cross-attention 0.1.0's BidirectionalCrossAttention,
    with autograd.

    qk, v (B, H, I, dh) of the sequence and context_qk, context_v (B, H, J, dh) of the context
    (the package's rearrange 'b n (h d) -> b h n d' views are read in place). One similarity
    sim = scale * qk context_qk^T (+ rel_pos_bias, broadcastable to (B, H, I, J)); where
    mask[b, i] or context_mask[b, j] is False (bool (B|1, I) and (B|1, J), True = keep) it is
    -FLT_MAX, so a fully masked row or column becomes a uniform average, as in the package.
    attn = softmax over j, context_attn = softmax over i, each mixed over heads by its
    talking-heads weight ((H, H) or nn.Conv2d's (H, H, 1, 1); a missing one is the identity);
    out = attn @ context_v (B, H, I, dh), context_out = context_attn^T @ v (B, H, J, dh).
    scale defaults to dh^-0.5.

    Gradients reach qk, context_qk, v, context_v, rel_pos_bias (summed over the axes it
    broadcasts over) and both talking-heads weights. Saved for the backward: the inputs, the
    outputs and the log-sum-exps of sim over j and over i (B*H*(I+J) floats); never I x J.
    """
    fn = "bidirectional_attention"
    for name, t in (("qk", qk), ("context_qk", context_qk), ("v", v), ("context_v", context_v)):
        _check_tensor(fn, name, t)
        if t.dim() != 4:
            raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}; expected (batch, heads, "
                             "length, dim_head)")
    B, H, I, dh = qk.shape
    J = context_qk.shape[2]
    for name, t, n in (("v", v, I), ("context_qk", context_qk, J), ("context_v", context_v, J)):
        if tuple(t.shape) != (B, H, n, dh):
            raise ValueError(f"{fn}: {name} has shape {tuple(t.shape)}; expected "
                             f"({B}, {H}, {n}, {dh}) to match qk {tuple(qk.shape)}")
    if dh < 1 or H < 1:
        raise ValueError(f"{fn}: heads and dim_head must be at least 1")
    if scale is not None and not math.isfinite(scale):
        raise ValueError(f"{fn}: scale {scale} is not finite")
    out_dtype = qk.dtype
    qk, cqk, v, cv = (t if t.dtype == torch.float32 else t.float()
                      for t in (qk, context_qk, v, context_v))
    m = _bidir_token_mask(fn, "mask", mask, B, I) if mask is not None else None
    cm = _bidir_token_mask(fn, "context_mask", context_mask, B, J) \
        if context_mask is not None else None
    b = _bidir_bias(fn, rel_pos_bias, B, H, I, J) if rel_pos_bias is not None else None
    t = _bidir_talk(fn, "talking_heads", talking_heads, H) if talking_heads is not None else None
    ct = _bidir_talk(fn, "context_talking_heads", context_talking_heads, H) \
        if context_talking_heads is not None else None
    if (t is None) != (ct is None):
        eye = torch.eye(H, dtype=torch.float32)
        t, ct = (t if t is not None else eye), (ct if ct is not None else eye)
    s = float(dh ** -0.5 if scale is None else scale)
    if B == 0 or I == 0 or J == 0:  # nothing to attend to: zero outputs (the package's einsum)
        out = qk.new_zeros(B, H, I, dh) + 0 * (qk.sum() + cv.sum())
        cout = cqk.new_zeros(B, H, J, dh) + 0 * (cqk.sum() + v.sum())
    else:
        out, cout, _, _ = torch.ops.xattn.bidirectional_attention(qk, cqk, v, cv, m, cm, b, t,
                                                                  ct, s)
    if out_dtype != torch.float32:
        out, cout = out.to(out_dtype), cout.to(out_dtype)
    return out, cout


def _bidir_maps(qk, cqk, v, cv, mask=None, cmask=None, bias=None, talk=None, ctalk=None,
                scale=None):
    """Forward only (no autograd), with the maps: out, context out, attn, context_attn as the
    package returns them (after talking heads); 2 B*H*I*J floats for the maps."""
    B, H, I, dh = qk.shape
    J = cqk.shape[2]
    fn = "bidirectional_attention"
    m = _bidir_token_mask(fn, "mask", mask, B, I) if mask is not None else None
    cm = _bidir_token_mask(fn, "context_mask", cmask, B, J) if cmask is not None else None
    b = _bidir_bias(fn, bias, B, H, I, J) if bias is not None else None
    with torch.no_grad():
        qk, cqk, v, cv = (x.detach().float() for x in (qk, cqk, v, cv))
        out, cout = _like(qk), _like(cqk)
        attn, cattn = qk.new_empty(B, H, I, J), qk.new_empty(B, H, I, J)
        t = talk.detach().reshape(H, H).float() if talk is not None else None
        ct = ctalk.detach().reshape(H, H).float() if ctalk is not None else None
        args = _bidir_inputs(qk, cqk, v, cv, m, cm, b, t, ct)
        pa, kw = _bidir_args(*args, float(dh ** -0.5 if scale is None else scale), out, cout,
                             None, None, attn, cattn)
        if B and I and J:
            _A._bidir_call(*pa, **kw)
        else:
            out.zero_(), cout.zero_()
    return out, cout, attn, cattn
