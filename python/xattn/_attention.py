"""The fused attention kernels as functions of numpy arrays.

    out = xattn.sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None)
    out, context_out = xattn.bidirectional_attention(qk, context_qk, v, context_v, mask=...)

`sdpa` has the semantics of torch.nn.functional.scaled_dot_product_attention (without dropout);
`bidirectional_attention` is the attention core of bidirectional-cross-attention 0.1.0's
BidirectionalCrossAttention (between its projections and its output linears). Neither builds an
I x J matrix unless the maps are asked for.

Float32 arrays whose last axis is contiguous (C-contiguous ones, and strided views such as heads
sliced out of a (B, N, H*dh) projection) are read in place; other float arrays (float64,
float16, non-contiguous) are converted to float32; anything else raises ValueError. Results are
float32. The GIL is released while the library runs.

The raw callers (_sdpa_call, _bidir_call and their backwards) take (pointer, strides) views and
serve the PyTorch operators of xattn.torch as well.
"""
import ctypes as C

import numpy as np

from . import _lib
from ._lib import SdpaGrads, SdpaParams, check, lib

# ---- the bidirectional core's structs (include/xattn.h) ---------------------------------------

_I64 = C.c_int64


class BidirParams(C.Structure):
    _fields_ = [("B", _I64), ("H", _I64), ("I", _I64), ("J", _I64), ("dh", _I64),
                ("qk", C.c_void_p), ("qk_sb", _I64), ("qk_sh", _I64), ("qk_si", _I64),
                ("cqk", C.c_void_p), ("cqk_sb", _I64), ("cqk_sh", _I64), ("cqk_sj", _I64),
                ("v", C.c_void_p), ("v_sb", _I64), ("v_sh", _I64), ("v_si", _I64),
                ("cv", C.c_void_p), ("cv_sb", _I64), ("cv_sh", _I64), ("cv_sj", _I64),
                ("out", C.c_void_p), ("o_sb", _I64), ("o_sh", _I64), ("o_si", _I64),
                ("cout", C.c_void_p), ("co_sb", _I64), ("co_sh", _I64), ("co_sj", _I64),
                ("has_scale", C.c_int), ("scale", C.c_float),
                ("mask", C.c_void_p), ("mask_sb", _I64),
                ("cmask", C.c_void_p), ("cmask_sb", _I64),
                ("bias", C.c_void_p), ("bias_sb", _I64), ("bias_sh", _I64),
                ("talk", C.c_void_p), ("ctalk", C.c_void_p),
                ("attn", C.c_void_p), ("cattn", C.c_void_p),
                ("lse", C.c_void_p), ("clse", C.c_void_p),
                ("reserved_", C.c_uint64 * 4)]


class BidirGrads(C.Structure):
    _fields_ = [("dout", C.c_void_p), ("do_sb", _I64), ("do_sh", _I64), ("do_si", _I64),
                ("dcout", C.c_void_p), ("dco_sb", _I64), ("dco_sh", _I64), ("dco_sj", _I64),
                ("dqk", C.c_void_p), ("dqk_sb", _I64), ("dqk_sh", _I64), ("dqk_si", _I64),
                ("dcqk", C.c_void_p), ("dcqk_sb", _I64), ("dcqk_sh", _I64), ("dcqk_sj", _I64),
                ("dv", C.c_void_p), ("dv_sb", _I64), ("dv_sh", _I64), ("dv_si", _I64),
                ("dcv", C.c_void_p), ("dcv_sb", _I64), ("dcv_sh", _I64), ("dcv_sj", _I64),
                ("dbias", C.c_void_p), ("dbias_sb", _I64), ("dbias_sh", _I64),
                ("dtalk", C.c_void_p), ("dctalk", C.c_void_p),
                ("accumulate", C.c_int), ("reserved_", C.c_uint64 * 4)]


for _name, _args in (("xattn_bidir_attention", [C.POINTER(BidirParams)]),
                     ("xattn_bidir_attention_backward",
                      [C.POINTER(BidirParams), C.POINTER(BidirGrads)])):
    getattr(lib, _name).restype = C.c_int
    getattr(lib, _name).argtypes = _args

FILL_NEG_INF, FILL_MIN_FLOAT = 0, 1

# ---- views: (pointer, (stride_b, stride_h, stride_row)) in elements ------------------------------


def _set(struct, name, view, fields):
    """struct.<name> = the view's pointer, and its strides into `fields` (None: leaves NULL)."""
    if view is None:
        return
    ptr, strides = view
    setattr(struct, name, ptr)
    for f, s in zip(fields, strides):
        setattr(struct, f, int(s))


def _sdpa_params(B, H, L, S, E, Ev, q, k, v, out, mask=None, bias=None, causal=False,
                 scale=None, lse=None, probs=None, fill=FILL_NEG_INF):
    p = SdpaParams()
    p.B, p.H, p.I, p.J, p.dh, p.dv = B, H, L, S, E, Ev
    _set(p, "q", q, ("q_sb", "q_sh", "q_si"))
    _set(p, "k", k, ("k_sb", "k_sh", "k_sj"))
    _set(p, "v", v, ("v_sb", "v_sh", "v_sj"))
    _set(p, "out", out, ("o_sb", "o_sh", "o_si"))
    _set(p, "mask", mask, ("mask_sb", "mask_sh", "mask_si"))
    _set(p, "bias", bias, ("bias_sb", "bias_sh", "bias_si"))
    p.causal = 1 if causal else 0
    p.fill = fill
    if scale is not None:
        p.has_scale, p.scale = 1, float(scale)
    p.lse = lse
    p.probs = probs
    return p


def _sdpa_call(*args, **kw):
    """xattn_sdpa on views (see _sdpa_params); lse and probs are plain pointers."""
    p = _sdpa_params(*args, **kw)
    check(lib.xattn_sdpa(C.byref(p)), "sdpa")


def _sdpa_backward_call(params_args, params_kw, dout, dq=None, dk=None, dv=None, dbias=None):
    p = _sdpa_params(*params_args, **params_kw)
    p.probs = None
    g = SdpaGrads()
    _set(g, "dout", dout, ("do_sb", "do_sh", "do_si"))
    _set(g, "dq", dq, ("dq_sb", "dq_sh", "dq_si"))
    _set(g, "dk", dk, ("dk_sb", "dk_sh", "dk_sj"))
    _set(g, "dv", dv, ("dv_sb", "dv_sh", "dv_sj"))
    _set(g, "dbias", dbias, ("dbias_sb", "dbias_sh", "dbias_si"))
    check(lib.xattn_sdpa_backward(C.byref(p), C.byref(g)), "sdpa backward")


def _bidir_params(B, H, I, J, dh, qk, cqk, v, cv, out, cout, mask=None, cmask=None, bias=None,
                  talk=None, ctalk=None, scale=None, attn=None, cattn=None, lse=None, clse=None):
    """Masks are (pointer, batch stride); bias (pointer, (sb, sh)); the rest plain pointers."""
    p = BidirParams()
    p.B, p.H, p.I, p.J, p.dh = B, H, I, J, dh
    _set(p, "qk", qk, ("qk_sb", "qk_sh", "qk_si"))
    _set(p, "cqk", cqk, ("cqk_sb", "cqk_sh", "cqk_sj"))
    _set(p, "v", v, ("v_sb", "v_sh", "v_si"))
    _set(p, "cv", cv, ("cv_sb", "cv_sh", "cv_sj"))
    _set(p, "out", out, ("o_sb", "o_sh", "o_si"))
    _set(p, "cout", cout, ("co_sb", "co_sh", "co_sj"))
    _set(p, "mask", mask, ("mask_sb",))
    _set(p, "cmask", cmask, ("cmask_sb",))
    _set(p, "bias", bias, ("bias_sb", "bias_sh"))
    if scale is not None:
        p.has_scale, p.scale = 1, float(scale)
    p.talk, p.ctalk, p.attn, p.cattn, p.lse, p.clse = talk, ctalk, attn, cattn, lse, clse
    return p


def _bidir_call(*args, **kw):
    p = _bidir_params(*args, **kw)
    check(lib.xattn_bidir_attention(C.byref(p)), "bidirectional attention")


def _bidir_backward_call(params_args, params_kw, dout, dcout, dqk=None, dcqk=None, dv=None,
                         dcv=None, dbias=None, dtalk=None, dctalk=None):
    p = _bidir_params(*params_args, **params_kw)
    g = BidirGrads()
    _set(g, "dout", dout, ("do_sb", "do_sh", "do_si"))
    _set(g, "dcout", dcout, ("dco_sb", "dco_sh", "dco_sj"))
    _set(g, "dqk", dqk, ("dqk_sb", "dqk_sh", "dqk_si"))
    _set(g, "dcqk", dcqk, ("dcqk_sb", "dcqk_sh", "dcqk_sj"))
    _set(g, "dv", dv, ("dv_sb", "dv_sh", "dv_si"))
    _set(g, "dcv", dcv, ("dcv_sb", "dcv_sh", "dcv_sj"))
    _set(g, "dbias", dbias, ("dbias_sb", "dbias_sh"))
    g.dtalk, g.dctalk = dtalk, dctalk
    check(lib.xattn_bidir_attention_backward(C.byref(p), C.byref(g)),
          "bidirectional attention backward")

# ---- numpy ------------------------------------------------------------------------------------


def _f32(name, a):
    """a as float32 with a contiguous last axis and non-negative strides (read in place)."""
    return _lib.as_float32(name, a, strided=True)


def _view(a, lead):
    """(pointer, strides in elements of the `lead` axes before the last) of a numpy array."""
    st = tuple(s // a.itemsize for s in a.strides[:-1])
    return (a.ctypes.data if a.size else None, st[-lead:] if lead else ())


def _keep_mask(name, m):
    """A keep mask (nonzero = keep) as uint8 without a copy when it is bool or uint8."""
    m = np.asarray(m)
    if m.dtype == np.bool_:
        return m.view(np.uint8)
    if m.dtype.kind in "ui":
        return (m != 0).view(np.uint8)
    raise ValueError(f"{name} is {m.dtype}; expected a bool array (True = take part)")


def _lead2(shape):
    """The last two axes of a batch shape as (B, H) (1 where absent), and the outer axes."""
    shape = tuple(shape)
    padded = (1,) * max(0, 2 - len(shape)) + shape
    return padded[:-2], padded[-2], padded[-1]


def sdpa(q, k, v, attn_mask=None, is_causal=False, scale=None, *, enable_gqa=False,
         return_lse=False):
    """torch.nn.functional.scaled_dot_product_attention (dropout_p = 0) on numpy arrays.

    q (..., L, E), k (..., S, E), v (..., S, Ev); the leading axes broadcast against each other
    and against attn_mask's. attn_mask broadcastable to (..., L, S): bool, True = take part
    (a fully masked row gives a zero output row, as PyTorch), or float, added to the logits
    (-inf excludes a key). is_causal keeps key j for query i when j <= i (upper-left aligned)
    and cannot be combined with attn_mask. scale defaults to E^-0.5. enable_gqa: q's heads
    (axis -3) are shared out over k's and v's in groups, as PyTorch does.

    Returns out (..., L, Ev) float32; with return_lse also the log-sum-exp of each row's
    logits (..., L) (-inf for a fully masked row).
    """
    q, k, v = _f32("q", q), _f32("k", k), _f32("v", v)
    for name, a in (("q", q), ("k", k), ("v", v)):
        if a.ndim < 2:
            raise ValueError(f"sdpa: {name} has shape {a.shape}; expected (..., L, E)")
    L, E = q.shape[-2:]
    S, Ev = v.shape[-2:]
    if k.shape[-1] != E or k.shape[-2] != S:
        raise ValueError(f"sdpa: k has shape {k.shape}; expected (..., {S}, {E}) to match q "
                         f"{q.shape} and v {v.shape}")
    if E < 1 or Ev < 1:
        raise ValueError("sdpa: head sizes must be at least 1")
    if attn_mask is not None and is_causal:
        raise ValueError("sdpa: attn_mask cannot be combined with is_causal=True (as in PyTorch)")
    if scale is not None and not np.isfinite(scale):
        raise ValueError(f"sdpa: scale {scale} is not finite")
    if enable_gqa:
        k, v = _gqa(q, k), _gqa(q, v)
    mask = bias = None
    mshape = ()
    if attn_mask is not None:
        m = np.asarray(attn_mask)
        if m.dtype == np.bool_:
            mask = m
        elif m.dtype.kind == "f":
            bias = _f32("attn_mask", m)
        else:
            raise ValueError(f"sdpa: attn_mask is {m.dtype}; expected bool (True = take part) "
                             "or float (added to the logits)")
        m = mask if mask is not None else bias
        if m.ndim == 0:
            m = m.reshape(1, 1)
        try:
            np.broadcast_shapes(m.shape[-2:] if m.ndim >= 2 else m.shape, (L, S))
        except ValueError:
            raise ValueError(f"sdpa: attn_mask of shape {m.shape} does not broadcast to "
                             f"(..., {L}, {S})") from None
        if m.ndim == 1:
            m = m.reshape(1, -1)
        mshape = m.shape[:-2]
        if m.shape[-1] != S or m.strides[-1] != m.itemsize:  # keys must be contiguous
            m = np.ascontiguousarray(np.broadcast_to(m, m.shape[:-1] + (S,)))
        if mask is not None:
            mask = m.view(np.uint8)
        else:
            bias = m
    try:
        batch = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2], mshape)
    except ValueError:
        raise ValueError(f"sdpa: the batch axes of q {q.shape}, k {k.shape}, v {v.shape}"
                         + (f" and attn_mask {mshape}" if mshape else "")
                         + " do not broadcast") from None
    out = np.empty(batch + (L, Ev), dtype=np.float32)
    lse = np.empty(batch + (L,), dtype=np.float32) if return_lse else None
    if out.size == 0 or S == 0:
        out[...] = 0
        if lse is not None:
            lse[...] = -np.inf
        return (out, lse) if return_lse else out
    outer, B, H = _lead2(batch)
    full = outer + (B, H)

    def bc(a, rows):  # (outer..., B, H, rows, cols), broadcast axes with stride 0
        return None if a is None else np.broadcast_to(a, full + (rows, a.shape[-1]))

    qb, kb, vb, ob = bc(q, L), bc(k, S), bc(v, S), out.reshape(full + (L, Ev))
    mb, bb = bc(mask, L), bc(bias, L)
    lb = lse.reshape(full + (L,)) if lse is not None else None
    for idx in np.ndindex(*outer):
        def vw(a):
            return None if a is None else _view(a[idx], 3)

        _sdpa_call(B, H, L, S, E, Ev, vw(qb), vw(kb), vw(vb), vw(ob), mask=vw(mb), bias=vw(bb),
                   causal=is_causal, scale=scale,
                   lse=lb[idx].ctypes.data if lb is not None else None)
    return (out, lse) if return_lse else out


def _gqa(q, kv):
    """k or v with each of its heads (axis -3) repeated for the group of q's heads sharing it."""
    if q.ndim < 3 or kv.ndim < 3 or q.shape[-3] % kv.shape[-3]:
        raise ValueError(f"sdpa: enable_gqa needs q's heads {q.shape} to be a multiple of k's "
                         f"and v's {kv.shape}")
    return np.repeat(kv, q.shape[-3] // kv.shape[-3], axis=-3)


def _heads(name, a, B, H, n, dh):
    a = _f32(name, a)
    if a.ndim != 4:
        raise ValueError(f"bidirectional_attention: {name} has shape {a.shape}; expected "
                         "(batch, heads, length, dim_head)")
    try:
        return np.broadcast_to(a, (B, H, n, dh))
    except ValueError:
        raise ValueError(f"bidirectional_attention: {name} has shape {a.shape}; expected "
                         f"({B}, {H}, {n}, {dh})") from None


def _token_mask(name, m, B, n):
    """A (B|1, n) keep mask as (uint8 array, batch stride)."""
    m = _keep_mask(name, m)
    if m.ndim == 1:
        m = m.reshape(1, -1)
    if m.ndim != 2 or m.shape[1] != n or m.shape[0] not in (1, B):
        raise ValueError(f"bidirectional_attention: {name} has shape {m.shape}; expected "
                         f"({B}, {n}) or (1, {n})")
    if m.strides[1] != 1:
        m = np.ascontiguousarray(m)
    return m, (m.strides[0] if m.shape[0] > 1 else 0)


def _rel_pos_bias(b, B, H, I, J):
    """rel_pos_bias broadcastable to (B, H, I, J) as a (B|1, H|1, I, J) array with rows of J
    contiguous (the I and J axes are expanded when they broadcast), and its (sb, sh)."""
    b = _f32("rel_pos_bias", b)
    if b.ndim > 4:
        raise ValueError(f"bidirectional_attention: rel_pos_bias has shape {b.shape}; expected "
                         f"at most 4 axes broadcastable to ({B}, {H}, {I}, {J})")
    b = b.reshape((1,) * (4 - b.ndim) + b.shape)
    try:
        np.broadcast_shapes(b.shape, (B, H, I, J))
    except ValueError:
        raise ValueError(f"bidirectional_attention: rel_pos_bias of shape {b.shape} does not "
                         f"broadcast to ({B}, {H}, {I}, {J})") from None
    shape = (b.shape[0], b.shape[1], I, J)
    b = np.broadcast_to(b, shape)
    if b.strides[3] != 4 or b.strides[2] != 4 * J:
        b = np.ascontiguousarray(b)
    sb = b.strides[0] // 4 if shape[0] > 1 else 0
    sh = b.strides[1] // 4 if shape[1] > 1 else 0
    return b, (sb, sh)


def _talking_heads(name, w, H):
    if w is None:
        return None
    w = np.asarray(w)
    if w.shape not in ((H, H), (H, H, 1, 1)):
        raise ValueError(f"bidirectional_attention: {name} has shape {w.shape}; expected "
                         f"({H}, {H}) or nn.Conv2d's ({H}, {H}, 1, 1)")
    return np.ascontiguousarray(_f32(name, w).reshape(H, H))


def bidirectional_attention(qk, context_qk, v, context_v, mask=None, context_mask=None,
                            rel_pos_bias=None, talking_heads=None, context_talking_heads=None,
                            scale=None, return_lse=False, return_attn=False):
    """The attention core of bidirectional-cross-attention 0.1.0 on numpy arrays.

    qk, v (B, H, I, dh) of the sequence x and context_qk, context_v (B, H, J, dh) of the context
    (heads split as the package's rearrange 'b n (h d) -> b h n d'; strided views are read in
    place). One similarity sim = scale * qk context_qk^T (+ rel_pos_bias, broadcastable to
    (B, H, I, J)); where mask[b, i] or context_mask[b, j] is False (bool (B|1, I), (B|1, J),
    True = keep) it is -FLT_MAX, so a fully masked row or column is a uniform average.
    attn = softmax over j, context_attn = softmax over i; talking heads ((H, H) or nn.Conv2d's
    (H, H, 1, 1) weights; a missing one is the identity) mix each map over heads;
    out = attn @ context_v (B, H, I, dh), context_out = context_attn^T @ v (B, H, J, dh).
    scale defaults to dh^-0.5 (the package's).

    Returns (out, context_out), then (lse, context_lse) ((B, H, I), (B, H, J): the log-sum-exp
    of sim over j and over i) with return_lse, then (attn, context_attn) (B, H, I, J) (after
    talking heads, as the package returns them; 2 B*H*I*J floats) with return_attn.
    """
    qk0, cqk0 = np.asarray(qk), np.asarray(context_qk)
    if qk0.ndim != 4 or cqk0.ndim != 4:
        raise ValueError(f"bidirectional_attention: qk {qk0.shape} and context_qk {cqk0.shape} "
                         "must be (batch, heads, length, dim_head)")
    I, J, dh = qk0.shape[2], cqk0.shape[2], qk0.shape[3]
    try:
        B, H = np.broadcast_shapes(qk0.shape[:2], cqk0.shape[:2], np.shape(v)[:2],
                                   np.shape(context_v)[:2])
    except ValueError:
        raise ValueError("bidirectional_attention: the batch and head axes of qk, context_qk, "
                         "v and context_v do not broadcast") from None
    qk, v = _heads("qk", qk, B, H, I, dh), _heads("v", v, B, H, I, dh)
    cqk, cv = _heads("context_qk", context_qk, B, H, J, dh), \
        _heads("context_v", context_v, B, H, J, dh)
    if dh < 1:
        raise ValueError("bidirectional_attention: dim_head must be at least 1")
    if scale is not None and not np.isfinite(scale):
        raise ValueError(f"bidirectional_attention: scale {scale} is not finite")
    keep = []
    m = cm = b = None
    if mask is not None:
        mm, sb = _token_mask("mask", mask, B, I)
        keep.append(mm)
        m = (mm.ctypes.data, (sb,))
    if context_mask is not None:
        mm, sb = _token_mask("context_mask", context_mask, B, J)
        keep.append(mm)
        cm = (mm.ctypes.data, (sb,))
    if rel_pos_bias is not None:
        bb, st = _rel_pos_bias(rel_pos_bias, B, H, I, J)
        keep.append(bb)
        b = (bb.ctypes.data if bb.size else None, st)
    t, ct = _talking_heads("talking_heads", talking_heads, H), \
        _talking_heads("context_talking_heads", context_talking_heads, H)
    if (t is None) != (ct is None):
        t = t if t is not None else np.eye(H, dtype=np.float32)
        ct = ct if ct is not None else np.eye(H, dtype=np.float32)
    out = np.empty((B, H, I, dh), np.float32)
    cout = np.empty((B, H, J, dh), np.float32)
    lse = np.empty((B, H, I), np.float32) if return_lse else None
    clse = np.empty((B, H, J), np.float32) if return_lse else None
    attn = np.empty((B, H, I, J), np.float32) if return_attn else None
    cattn = np.empty((B, H, I, J), np.float32) if return_attn else None

    def ptr(a):
        return a.ctypes.data if a is not None and a.size else None

    if B and H:
        _bidir_call(B, H, I, J, dh, _view(qk, 3), _view(cqk, 3), _view(v, 3), _view(cv, 3),
                    _view(out, 3), _view(cout, 3), mask=m, cmask=cm, bias=b, talk=ptr(t),
                    ctalk=ptr(ct), scale=scale, attn=ptr(attn), cattn=ptr(cattn), lse=ptr(lse),
                    clse=ptr(clse))
    res = (out, cout)
    if return_lse:
        res += (lse, clse)
    if return_attn:
        res += (attn, cattn)
    return res


__all__ = ["sdpa", "bidirectional_attention"]
