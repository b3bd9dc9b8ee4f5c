"""xattn.torch's operators against PyTorch in float64: scaled_dot_product_attention against
F.scaled_dot_product_attention (bool and float masks broadcast over every axis, fully masked
rows, causal, scale, broadcast batch axes, GQA; the float mask's gradient), its seeded dropout
against a float64 computation with the regenerated keep mask; bidirectional_attention against
a float64 transcription of bidirectional-cross-attention 0.1.0's attention core (masks with
fully masked rows and columns, rel_pos_bias broadcast forms, talking heads) with torch.autograd
for every gradient; torch.library.opcheck on the four operators; gradcheck through the float64
path; what autograd saves (nothing of size I x J); heads read in place; concurrent calls from
Python threads; errors."""
import threading

import pytest

torch = pytest.importorskip("torch")
xt = pytest.importorskip("xattn.torch")
import torch.nn.functional as F  # noqa: E402

from conftest import assert_close  # noqa: E402

GTOL = 1e-4  # gradients: 1e-4 (1 + |ref|)
TOL = 2e-5   # outputs


def leaf(*shape, scale=1.0):
    return (torch.randn(*shape) * scale).requires_grad_(True)


def grads_of(outs, inputs, seeds):
    loss = sum((o * s).sum() for o, s in zip(outs, seeds))
    return torch.autograd.grad(loss, [t for t in inputs if t is not None and t.requires_grad])


def as64(ts):
    return [None if t is None else
            (t.detach().double().requires_grad_(t.requires_grad) if t.dtype.is_floating_point
             else t) for t in ts]


# ---- scaled dot-product attention ---------------------------------------------------------------

SDPA_CASES = ["plain", "bool", "bool_keys", "bool_rows", "float", "float_keys_bcast", "float_inf",
              "causal", "causal_long", "scale", "batch", "lead3", "2d", "gqa"]


def sdpa_case(case):
    torch.manual_seed(hash(case) % 1000)
    q, k, v = leaf(2, 3, 17, 8), leaf(2, 3, 23, 8), leaf(2, 3, 23, 5)
    kw = {}
    if case == "bool":
        m = torch.rand(2, 3, 17, 23) > 0.4
        m[0, 1, 3] = False  # a fully masked row
        kw["attn_mask"] = m
    elif case == "bool_keys":
        m = torch.rand(2, 1, 1, 23) > 0.3
        m[1] = False  # batch item 1: nothing to attend to
        kw["attn_mask"] = m
    elif case == "bool_rows":
        kw["attn_mask"] = torch.rand(2, 1, 17, 1) > 0.3
    elif case == "float":
        kw["attn_mask"] = leaf(3, 17, 23)
    elif case == "float_keys_bcast":  # broadcast over keys: its gradient sums over them
        kw["attn_mask"] = leaf(17, 1)
    elif case == "float_inf":
        m = torch.where(torch.rand(1, 23) > 0.3, 0.0, float("-inf")).expand(17, 23).clone()
        m[4] = float("-inf")
        kw["attn_mask"] = m
    elif case == "causal":
        kw["is_causal"] = True
    elif case == "causal_long":
        q = leaf(2, 3, 30, 8)
        kw["is_causal"] = True
    elif case == "scale":
        kw["scale"] = 0.27
    elif case == "batch":
        k, v = leaf(1, 3, 23, 8), leaf(1, 3, 23, 5)
    elif case == "lead3":
        q = leaf(4, 2, 3, 17, 8)
    elif case == "2d":
        q, k, v = leaf(17, 8), leaf(23, 8), leaf(23, 5)
    elif case == "gqa":
        q = leaf(2, 6, 17, 8)
        kw["enable_gqa"] = True
    return q, k, v, kw


@pytest.mark.parametrize("case", SDPA_CASES)
def test_sdpa_against_torch(case):
    q, k, v, kw = sdpa_case(case)
    m = kw.pop("attn_mask", None)
    out = xt.scaled_dot_product_attention(q, k, v, attn_mask=m, **kw)
    q64, k64, v64, m64 = as64([q, k, v, m])
    ref = F.scaled_dot_product_attention(q64, k64, v64, attn_mask=m64, **kw)
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert_close(out.detach(), ref.detach(), TOL, case)
    seed = torch.randn(ref.shape, dtype=torch.float64)
    got = grads_of([out], [q, k, v, m], [seed.float()])
    want = grads_of([ref], [q64, k64, v64, m64], [seed])
    assert len(got) == len(want) == 3 + (m is not None and m.requires_grad)
    for name, g, w in zip(("dq", "dk", "dv", "dmask"), got, want):
        assert_close(g, w, GTOL, f"{case} {name}")


def dropout_reference(q, k, v, keep, p):
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    return (s.softmax(-1) * keep / (1 - p)) @ v


def test_sdpa_dropout_is_seeded_and_regenerated_in_backward():
    torch.manual_seed(3)
    q, k, v = leaf(2, 2, 40, 16), leaf(2, 2, 50, 16), leaf(2, 2, 50, 16)
    p = 0.3
    out = xt.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=1234)
    again = xt.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=1234)
    other = xt.scaled_dot_product_attention(q, k, v, dropout_p=p, seed=1235)
    assert torch.equal(out, again) and not torch.equal(out, other)
    # the keep mask is a function of (seed, shape): the float64 computation with that mask gives
    # the same output and gradients
    from xattn.torch._ops import _dropout_keep
    keep = _dropout_keep(1234, p, (2, 2, 40, 50)).double()
    frac = 1 - keep.mean().item()  # dropped fraction, 8000 draws: sd 0.005
    assert abs(frac - p) < 0.03, frac
    q64, k64, v64 = as64([q, k, v])
    ref = dropout_reference(q64, k64, v64, keep, p)
    assert_close(out.detach(), ref.detach(), TOL, "dropout out")
    seed = torch.randn(ref.shape, dtype=torch.float64)
    for name, g, w in zip(("dq", "dk", "dv"), grads_of([out], [q, k, v], [seed.float()]),
                          grads_of([ref], [q64, k64, v64], [seed])):
        assert_close(g, w, GTOL, "dropout " + name)
    # seed=None draws from torch's generator: repeatable with torch.manual_seed
    torch.manual_seed(9)
    a = xt.scaled_dot_product_attention(q, k, v, dropout_p=p)
    torch.manual_seed(9)
    b = xt.scaled_dot_product_attention(q, k, v, dropout_p=p)
    assert torch.equal(a, b)
    assert torch.all(xt.scaled_dot_product_attention(q, k, v, dropout_p=1.0) == 0)


# ---- bidirectional attention --------------------------------------------------------------------


def bidir_reference(qk, cqk, v, cv, mask=None, cmask=None, bias=None, talk=None, ctalk=None,
                    scale=None):
    """The package's attention core, written out (float64 when given float64)."""
    B, H, I, dh = qk.shape
    J = cqk.shape[2]
    sim = qk @ cqk.transpose(-1, -2) * (dh ** -0.5 if scale is None else scale)
    if bias is not None:
        sim = sim + bias
    if mask is not None or cmask is not None:
        m = torch.ones(B, I, dtype=torch.bool) if mask is None else mask.expand(B, I)
        cm = torch.ones(B, J, dtype=torch.bool) if cmask is None else cmask.expand(B, J)
        keep = m[:, None, :, None] & cm[:, None, None, :]
        sim = sim.masked_fill(~keep, -torch.finfo(sim.dtype).max)
    a, c = sim.softmax(-1), sim.softmax(-2)
    if talk is not None:
        a = torch.einsum("gh,bhij->bgij", talk.reshape(H, H), a)
    if ctalk is not None:
        c = torch.einsum("gh,bhij->bgij", ctalk.reshape(H, H), c)
    return a @ cv, c.transpose(-1, -2) @ v


BIAS = {"none": None, "full": (2, 3, 13, 19), "heads": (3, 13, 19), "batch": (2, 1, 13, 19),
        "ij": (13, 19), "rows": (3, 13, 1), "cols": (1, 19)}


@pytest.mark.parametrize("bias", list(BIAS))
@pytest.mark.parametrize("masks,talk", [("none", "no"), ("both", "no"), ("x", "both"),
                                        ("context", "one"), ("both", "both")])
def test_bidirectional_against_reference(bias, masks, talk):
    torch.manual_seed(11)
    B, H, I, J, dh = 2, 3, 13, 19, 16
    qk, v, cqk, cv = leaf(B, H, I, dh), leaf(B, H, I, dh), leaf(B, H, J, dh), leaf(B, H, J, dh)
    m = cm = None
    if masks in ("both", "x"):
        m = torch.rand(B, I) > 0.3
        m[0, 2] = False  # a fully masked row
        m[1] = False     # batch item 1: every row masked
    if masks in ("both", "context"):
        cm = torch.rand(1, J) > 0.3  # shared by the batch
        cm[0, 5] = False             # a fully masked column
    b = leaf(*BIAS[bias]) if BIAS[bias] else None
    t = ct = None
    if talk in ("both", "one"):
        t = leaf(H, H, 1, 1, scale=0.5)  # nn.Conv2d's weight
    if talk == "both":
        ct = leaf(H, H, scale=0.5)
    scale = 0.3 if talk == "one" else None
    out = xt.bidirectional_attention(qk, cqk, v, cv, mask=m, context_mask=cm, rel_pos_bias=b,
                                     talking_heads=t, context_talking_heads=ct, scale=scale)
    ins64 = as64([qk, cqk, v, cv, b, t, ct])
    ref = bidir_reference(*ins64[:4], m, cm, *ins64[4:], scale=scale)
    what = f"bias={bias} masks={masks} talk={talk}"
    for name, o, r in zip(("out", "context_out"), out, ref):
        assert o.dtype == torch.float32
        assert_close(o.detach(), r.detach(), TOL, f"{what} {name}")
    seeds = [torch.randn(r.shape, dtype=torch.float64) for r in ref]
    got = grads_of(out, [qk, cqk, v, cv, b, t, ct], [s.float() for s in seeds])
    want = grads_of(ref, ins64, seeds)
    names = ["dqk", "dcqk", "dv", "dcv"] + ["dbias"] * (b is not None) + \
        ["dtalk"] * (t is not None) + ["dctalk"] * (ct is not None)
    assert len(got) == len(want) == len(names)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape
        assert_close(g, w, GTOL, f"{what} {name}")


def test_bidirectional_saves_nothing_of_size_i_by_j():
    B, H, I, J, dh = 1, 2, 200, 190, 8
    ins = [leaf(B, H, n, dh) for n in (I, J, I, J)]
    bias = leaf(1, H, 1, J)  # broadcast over rows: expanded to (1, H, I, J) before the op
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = xt.bidirectional_attention(*ins, mask=torch.rand(B, I) > 0.2)
        xt.scaled_dot_product_attention(*ins[:2], ins[3], attn_mask=torch.rand(B, 1, 1, J) > 0.2)
    assert saved and max(saved) < I * J / 4, saved
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        saved.clear()
        out = xt.bidirectional_attention(*ins, rel_pos_bias=bias)
    assert max(saved) == H * I * J  # the expanded bias itself, an input (and nothing else)
    sum(o.sum() for o in out).backward()


def test_heads_in_place_and_layout():
    B, I, J, H, dh = 2, 11, 7, 4, 8
    x, c = leaf(B, I, H * dh), leaf(B, J, H * dh)
    split = lambda t: t.unflatten(-1, (H, dh)).transpose(1, 2)  # noqa: E731
    out, cout = xt.bidirectional_attention(split(x), split(c), split(x), split(c))
    # the outputs come back in the projections' (B, N, H*dh) layout: merging heads is a view
    assert out.transpose(1, 2).is_contiguous() and cout.transpose(1, 2).is_contiguous()
    ref = bidir_reference(*(split(t.detach().double()) for t in (x, c, x, c)))
    assert_close(out.detach(), ref[0], TOL, "out")
    (out.sum() + cout.square().sum()).backward()
    xr, cr = x.detach().double().requires_grad_(), c.detach().double().requires_grad_()
    ref = bidir_reference(split(xr), split(cr), split(xr), split(cr))
    (ref[0].sum() + ref[1].square().sum()).backward()
    assert_close(x.grad, xr.grad, GTOL, "dx")
    assert_close(c.grad, cr.grad, GTOL, "dcontext")


def test_float64_inputs_are_computed_in_float32_and_converted_back():
    torch.manual_seed(5)
    q, k, v = (torch.randn(1, 2, 9, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    out = xt.scaled_dot_product_attention(q, k, v)
    assert out.dtype == torch.float64
    ref = F.scaled_dot_product_attention(q, k, v)
    assert_close(out.detach(), ref.detach(), TOL, "float64 sdpa")
    out.sum().backward()
    assert q.grad.dtype == torch.float64
    o, co = xt.bidirectional_attention(q, k, v, k)
    assert o.dtype == co.dtype == torch.float64


def test_gradcheck_through_the_float64_path():
    torch.manual_seed(2)
    B, H, I, J, dh = 1, 2, 5, 6, 4
    ins = [torch.randn(B, H, n, dh, dtype=torch.float64, requires_grad=True)
           for n in (I, J, I, J)]
    bias = torch.randn(H, I, J, dtype=torch.float64, requires_grad=True)
    talk = torch.randn(H, H, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[True, False, True, True, True]])

    def f(qk, cqk, v, cv, b, t):
        return xt.bidirectional_attention(qk, cqk, v, cv, mask=mask, rel_pos_bias=b,
                                          talking_heads=t, context_talking_heads=t)

    # float32 arithmetic underneath: finite differences with a matching step and tolerance
    assert torch.autograd.gradcheck(f, (*ins, bias, talk), eps=1e-2, atol=5e-3, rtol=5e-3)
    q, k, v = (torch.randn(2, 3, n, 4, dtype=torch.float64, requires_grad=True) for n in (4, 5, 5))
    am = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v, am: xt.scaled_dot_product_attention(q, k, v, attn_mask=am),
        (q, k, v, am), eps=1e-2, atol=5e-3, rtol=5e-3)


def test_opcheck():
    torch.manual_seed(1)
    q, k, v = leaf(2, 3, 5, 8), leaf(2, 3, 7, 8), leaf(2, 3, 7, 6)
    ops = torch.ops.xattn
    for args in [(q, k, v, torch.rand(1, 3, 5, 7) > 0.3, None, False, None, 0.0, 0),
                 (q, k, v, None, leaf(2, 1, 1, 7), False, 0.3, 0.0, 0),
                 (q, k, v, None, None, True, None, 0.25, 7)]:
        torch.library.opcheck(ops.sdpa.default, args)
    x = leaf(2, 5, 24)
    qk = x.unflatten(-1, (3, 8)).transpose(1, 2)  # heads in place
    cqk, cv = leaf(2, 3, 7, 8), leaf(2, 3, 7, 8)
    torch.library.opcheck(ops.bidirectional_attention.default,
                          (qk, cqk, qk, cv, torch.rand(2, 5) > 0.3, torch.rand(1, 7) > 0.3,
                           leaf(1, 3, 5, 7), leaf(3, 3), leaf(3, 3), 0.35))
    torch.library.opcheck(ops.bidirectional_attention.default,
                          (qk, cqk, qk, cv, None, None, None, None, None, 0.35))
    # the backward operators have no backward of their own (no double backward)
    qk, cqk, cv = qk.detach(), cqk.detach(), cv.detach()
    out, cout, lse, clse = ops.bidirectional_attention(qk, cqk, qk, cv, None, None, None, None,
                                                       None, 0.35)
    torch.library.opcheck(ops.bidirectional_attention_backward.default,
                          (torch.randn_like(out), torch.randn_like(cout), qk, cqk, qk, cv, None,
                           None, None, None, None, out, cout, lse, clse, 0.35, False))
    q, k, v = q.detach(), k.detach(), v.detach()
    out, lse = ops.sdpa(q, k, v, None, None, False, None, 0.0, 0)
    torch.library.opcheck(ops.sdpa_backward.default,
                          (torch.randn_like(out), q, k, v, None, None, out, lse, False, None, 0.0,
                           0, False))


def test_concurrent_calls_from_python_threads():
    torch.manual_seed(4)
    ins = [leaf(2, 4, n, 16) for n in (150, 170, 150, 170)]
    mask = torch.rand(2, 150) > 0.2

    def run():
        out, cout = xt.bidirectional_attention(*ins, mask=mask)
        g = torch.autograd.grad(out.sum() + cout.square().sum(), ins)
        s = xt.scaled_dot_product_attention(ins[0], ins[1], ins[3], is_causal=True)
        return [out.detach(), cout.detach(), s.detach(), *g]

    want = run()
    results, errors = [None] * 6, []

    def work(n):
        try:
            for _ in range(3):
                results[n] = run()
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for r in results:
        assert all(torch.equal(a, b) for a, b in zip(r, want))


def test_errors():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
    sdpa, bidir = xt.scaled_dot_product_attention, xt.bidirectional_attention
    with pytest.raises(ValueError, match="int64"):
        sdpa(q.long(), k, v)
    with pytest.raises(ValueError, match="meta"):
        sdpa(q.to("meta"), k, v)
    with pytest.raises(ValueError, match="key has shape"):
        sdpa(q, k[..., :4], v)
    with pytest.raises(ValueError, match="is_causal"):
        sdpa(q, k, v, attn_mask=torch.ones(4, 5, dtype=torch.bool), is_causal=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        sdpa(q, k, v, attn_mask=torch.ones(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p"):
        sdpa(q, k, v, dropout_p=1.5)
    with pytest.raises(ValueError, match="must be|expected"):
        bidir(q[0], k, q, k)
    with pytest.raises(ValueError, match="context_v"):
        bidir(q, k, q, k[:, :, :3])
    with pytest.raises(ValueError, match="bool"):
        bidir(q, k, q, k, mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="context_mask"):
        bidir(q, k, q, k, context_mask=torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="rel_pos_bias"):
        bidir(q, k, q, k, rel_pos_bias=torch.randn(3, 4, 5))
    with pytest.raises(ValueError, match="talking_heads"):
        bidir(q, k, q, k, talking_heads=torch.randn(3, 3))
