"""xattn's numpy attention functions (python/xattn/_attention.py) against float64 references
written out in numpy: sdpa as torch.nn.functional.scaled_dot_product_attention (bool and float
masks broadcast over every axis, fully masked rows, causal, scale, broadcast batch axes, GQA,
log-sum-exp) and bidirectional_attention as bidirectional-cross-attention 0.1.0's attention
core (-FLT_MAX masks with fully masked rows and columns, rel_pos_bias broadcast forms, talking
heads, maps, log-sum-exps); conversions, in-place reads and errors."""
import subprocess
import sys

import numpy as np
import pytest

from conftest import assert_close
from xattn._attention import _f32, bidirectional_attention, sdpa

TOL = 2e-5
rng = np.random.default_rng(7)


def sdpa_ref(q, k, v, mask=None, causal=False, scale=None):
    """float64 SDPA with PyTorch's semantics (fully masked rows give zeros); also the lse."""
    q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
    L, S = q.shape[-2], k.shape[-2]
    s = q @ np.swapaxes(k, -1, -2) * (q.shape[-1] ** -0.5 if scale is None else scale)
    if causal:
        s = np.where(np.tril(np.ones((L, S), bool)), s, -np.inf)
    if mask is not None:
        mask = np.asarray(mask)
        s = np.where(mask, s, -np.inf) if mask.dtype == bool else s + mask
    m = s.max(-1, keepdims=True)
    safe = np.where(np.isfinite(m), m, 0)
    e = np.exp(s - safe)
    den = e.sum(-1, keepdims=True)
    p = np.where(den > 0, e / np.where(den > 0, den, 1), 0)
    lse = np.where(den[..., 0] > 0, np.log(np.where(den > 0, den, 1))[..., 0] + safe[..., 0],
                   -np.inf)
    return p @ v, lse


def bidir_ref(qk, cqk, v, cv, mask=None, cmask=None, bias=None, talk=None, ctalk=None,
              scale=None):
    """float64 transcription of the package's attention core; out, context out, lse, context
    lse, attn, context_attn."""
    qk, cqk, v, cv = (np.asarray(t, np.float64) for t in (qk, cqk, v, cv))
    B, H, I, dh = qk.shape
    J = cqk.shape[2]
    sim = qk @ np.swapaxes(cqk, -1, -2) * (dh ** -0.5 if scale is None else scale)
    if bias is not None:
        sim = sim + bias
    sim = np.broadcast_to(sim, (B, H, I, J))
    if mask is not None or cmask is not None:
        m = np.ones((B, I), bool) if mask is None else np.broadcast_to(mask, (B, I))
        cm = np.ones((B, J), bool) if cmask is None else np.broadcast_to(cmask, (B, J))
        keep = m[:, None, :, None] & cm[:, None, None, :]
        # the package fills with -finfo(dtype).max: float32's for the float32 results checked here
        sim = np.where(keep, sim, -np.finfo(np.float32).max)

    def softmax(x, ax):
        e = np.exp(x - x.max(ax, keepdims=True))
        return e / e.sum(ax, keepdims=True)

    def lse(x, ax):
        m = x.max(ax, keepdims=True)
        return (np.log(np.exp(x - m).sum(ax, keepdims=True)) + m).squeeze(ax)

    a, c = softmax(sim, -1), softmax(sim, -2)
    if talk is not None:
        a = np.einsum("gh,bhij->bgij", np.reshape(talk, (H, H)), a)
    if ctalk is not None:
        c = np.einsum("gh,bhij->bgij", np.reshape(ctalk, (H, H)), c)
    return a @ cv, np.swapaxes(c, -1, -2) @ v, lse(sim, -1), lse(sim, -2), a, c


def randn(*shape):
    return rng.standard_normal(shape).astype(np.float32)


# ---- sdpa ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["plain", "bool", "bool_rows", "bool_keys", "float", "float_inf",
                                  "causal", "causal_long", "scale", "batch", "lead3", "2d"])
def test_sdpa_against_reference(case):
    q, k, v = randn(2, 3, 17, 8), randn(2, 3, 23, 8), randn(2, 3, 23, 5)
    kw, mask = {}, None
    if case == "bool":
        mask = rng.random((2, 3, 17, 23)) > 0.4
        mask[0, 1, 3] = False  # a fully masked row
    elif case == "bool_rows":  # (B, 1, L, 1): whole rows masked, broadcast over keys and heads
        mask = rng.random((2, 1, 17, 1)) > 0.3
    elif case == "bool_keys":  # a key padding mask (B, 1, 1, S)
        mask = rng.random((2, 1, 1, 23)) > 0.3
        mask[1] = False
    elif case == "float":
        mask = randn(3, 17, 23)
    elif case == "float_inf":
        mask = np.where(rng.random((1, 23)) > 0.3, 0.0, -np.inf).astype(np.float32)
        mask = np.broadcast_to(mask, (17, 23)).copy()
        mask[4] = -np.inf  # a row with every key excluded: zeros, as PyTorch
    elif case == "causal":
        kw["is_causal"] = True
    elif case == "causal_long":
        q = randn(2, 3, 30, 8)
        kw["is_causal"] = True
    elif case == "scale":
        kw["scale"] = 0.27
    elif case == "batch":  # k, v shared by the batch
        k, v = k[:1], v[:1]
    elif case == "lead3":
        q = randn(4, 2, 3, 17, 8)
    elif case == "2d":
        q, k, v = q[0, 0], k[0, 0], v[0, 0]
    if mask is not None:
        kw["attn_mask"] = mask
    out, lse = sdpa(q, k, v, return_lse=True, **kw)
    ref, ref_lse = sdpa_ref(q, k, v, mask, kw.get("is_causal", False), kw.get("scale"))
    assert out.dtype == np.float32 and out.shape == ref.shape
    assert_close(out, ref, TOL, case)
    finite = np.isfinite(ref_lse)
    assert np.all(lse[~finite] == -np.inf)
    assert_close(lse[finite], ref_lse[finite], TOL, case + " lse")
    if case in ("bool", "bool_keys", "float_inf"):
        assert np.any(~finite) and np.all(out[~finite] == 0)


def test_sdpa_gqa_and_conversions():
    q, k, v = randn(2, 6, 9, 16), randn(2, 2, 11, 16), randn(2, 2, 11, 16)
    ref, _ = sdpa_ref(q, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1))
    assert_close(sdpa(q, k, v, enable_gqa=True), ref, TOL, "gqa")
    # float64 and non-contiguous inputs are converted; a strided float32 view is read in place
    q64 = q.astype(np.float64)
    kt = np.ascontiguousarray(np.swapaxes(k, -1, -2)).swapaxes(-1, -2)  # last axis strided
    assert_close(sdpa(q64, kt, v, enable_gqa=True), ref, TOL, "float64 / strided")
    x = randn(2, 9, 6 * 16)
    heads = x.reshape(2, 9, 6, 16).transpose(0, 2, 1, 3)  # (B, H, L, dh) view of a projection
    assert _f32("q", heads) is heads
    assert _f32("q", q64) is not q64
    ref, _ = sdpa_ref(heads, np.repeat(k, 3, axis=1), np.repeat(v, 3, axis=1))
    assert_close(sdpa(heads, k, v, enable_gqa=True), ref, TOL, "heads in place")


def test_sdpa_empty_keys():
    out = sdpa(randn(1, 2, 4, 8), randn(1, 2, 0, 8), randn(1, 2, 0, 3))
    assert out.shape == (1, 2, 4, 3) and np.all(out == 0)


def test_sdpa_errors():
    q, k, v = randn(1, 2, 4, 8), randn(1, 2, 5, 8), randn(1, 2, 5, 8)
    with pytest.raises(ValueError, match="int64"):
        sdpa(q.astype(np.int64), k, v)
    with pytest.raises(ValueError, match="k has shape"):
        sdpa(q, k[..., :4], v)
    with pytest.raises(ValueError, match="is_causal"):
        sdpa(q, k, v, attn_mask=np.ones((4, 5), bool), is_causal=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        sdpa(q, k, v, attn_mask=np.ones((4, 6), bool))
    with pytest.raises(ValueError, match="expected bool"):
        sdpa(q, k, v, attn_mask=np.ones((4, 5), np.int32))
    with pytest.raises(ValueError, match="do not broadcast"):
        sdpa(randn(2, 2, 4, 8), randn(3, 2, 5, 8), randn(3, 2, 5, 8))
    with pytest.raises(ValueError, match="not finite"):
        sdpa(q, k, v, scale=float("nan"))


# ---- bidirectional attention --------------------------------------------------------------------


BIAS_SHAPES = {"none": None, "full": (2, 3, 13, 19), "heads": (3, 13, 19), "batch": (2, 1, 13, 19),
               "ij": (13, 19), "rows": (3, 13, 1), "cols": (1, 19)}


@pytest.mark.parametrize("bias", list(BIAS_SHAPES))
@pytest.mark.parametrize("masks,talk", [("none", False), ("both", False), ("x", True),
                                        ("context", True), ("both", True)])
def test_bidirectional_against_reference(bias, masks, talk):
    B, H, I, J, dh = 2, 3, 13, 19, 16
    qk, v, cqk, cv = randn(B, H, I, dh), randn(B, H, I, dh), randn(B, H, J, dh), randn(B, H, J, dh)
    mask = cmask = None
    if masks in ("both", "x"):
        mask = rng.random((B, I)) > 0.3
        mask[0, 2] = False  # a fully masked row
        mask[1] = False     # batch item 1: every row masked
    if masks in ("both", "context"):
        cmask = rng.random((1, J)) > 0.3  # shared by the batch
        cmask[0, 5] = False               # a fully masked column
    b = randn(*BIAS_SHAPES[bias]) if BIAS_SHAPES[bias] else None
    t = ct = None
    if talk:
        t, ct = randn(H, H), randn(H, H, 1, 1)  # nn.Conv2d's weight shape accepted as well
    got = bidirectional_attention(qk, cqk, v, cv, mask=mask, context_mask=cmask, rel_pos_bias=b,
                                  talking_heads=t, context_talking_heads=ct, return_lse=True,
                                  return_attn=True)
    ref = bidir_ref(qk, cqk, v, cv, mask, cmask, b, t, ct)
    for name, g, r in zip(("out", "context_out", "lse", "context_lse", "attn", "context_attn"),
                          got, ref):
        assert g.dtype == np.float32
        assert_close(g, r, TOL, f"{name} bias={bias} masks={masks} talk={talk}")


def test_bidirectional_one_talking_head_weight_and_scale():
    qk, v, cqk, cv = randn(1, 4, 7, 8), randn(1, 4, 7, 8), randn(1, 4, 9, 8), randn(1, 4, 9, 8)
    t = randn(4, 4)
    out, cout = bidirectional_attention(qk, cqk, v, cv, talking_heads=t, scale=0.4)
    ref = bidir_ref(qk, cqk, v, cv, talk=t, scale=0.4)
    assert_close(out, ref[0], TOL, "out")
    assert_close(cout, ref[1], TOL, "context out")


def test_bidirectional_heads_in_place_and_lengths_one():
    B, H, dh = 2, 4, 8
    x = randn(B, 1, H * dh)  # I = 1
    c = randn(B, 5, H * dh)
    split = lambda a: a.reshape(a.shape[0], a.shape[1], H, dh).transpose(0, 2, 1, 3)  # noqa: E731
    out, cout = bidirectional_attention(split(x), split(c), split(x), split(c))
    ref = bidir_ref(split(x), split(c), split(x), split(c))
    assert_close(out, ref[0], TOL, "out")
    assert_close(cout, ref[1], TOL, "context out")


def test_bidirectional_errors():
    qk, cqk = randn(1, 2, 3, 4), randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="must be"):
        bidirectional_attention(qk[0], cqk, qk, cqk)
    with pytest.raises(ValueError, match="context_v"):
        bidirectional_attention(qk, cqk, qk, randn(1, 2, 6, 4))
    with pytest.raises(ValueError, match="mask"):
        bidirectional_attention(qk, cqk, qk, cqk, mask=np.ones((1, 4), bool))
    with pytest.raises(ValueError, match="bool"):
        bidirectional_attention(qk, cqk, qk, cqk, mask=np.ones((1, 3), np.float32))
    with pytest.raises(ValueError, match="rel_pos_bias"):
        bidirectional_attention(qk, cqk, qk, cqk, rel_pos_bias=randn(3, 3, 5))
    with pytest.raises(ValueError, match="talking_heads"):
        bidirectional_attention(qk, cqk, qk, cqk, talking_heads=randn(3, 3))
    with pytest.raises(ValueError, match="int32"):
        bidirectional_attention(qk.astype(np.int32), cqk, qk, cqk)


def test_xattn_torch_without_torch_says_so():
    code = ("import sys; sys.modules['torch'] = None\n"
            "try:\n    import xattn.torch\nexcept ImportError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "xattn.torch needs PyTorch" in r.stdout, r.stdout + r.stderr
    code = "import sys; sys.modules['torch'] = None; import xattn; print(xattn.__version__)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
