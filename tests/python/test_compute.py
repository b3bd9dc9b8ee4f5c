"""xattn.set_compute("bf16") against torch.autocast("cpu", torch.bfloat16) on the same modules and
inputs: both against the module's float64 outputs, xattn's error is at most torch's (the same
rounding of every product's operands, without rounding the products' results), and within 32
bf16 unit roundoffs of the outputs' scale; float32 is exact again after set_compute("f32");
gradients refuse bf16."""
import copy

import numpy as np
import pytest

import xattn

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
from xattn.export import export  # noqa: E402

nn = torch.nn


def normwise(got, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref)) / np.max(np.abs(ref)))


@pytest.fixture
def bf16():
    xattn.set_compute("bf16")
    assert xattn.get_compute() == "bf16"
    yield
    xattn.set_compute("f32")


def randomize(m, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1 and "norm" in name.lower():
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif p.ndim == 1:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p[0].numel() ** 0.5)
    return m.eval()


def compare(tmp_path, m, args, names, run):
    """xattn in bf16 vs torch autocast bf16, both against float64; returns both errors."""
    path = tmp_path / "m.safetensors"
    export(m, path)
    x = xattn.load(path)
    with torch.no_grad():
        exact = run(copy.deepcopy(m).double(), {k: v.double() if v.is_floating_point() else v
                                                for k, v in args.items()})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = run(m, args)
    np_args = {k: v.numpy() for k, v in args.items()}
    f32 = x(**np_args)
    xattn.set_compute("bf16")
    try:
        got = x(**np_args)
        with pytest.raises(NotImplementedError, match="bf16"):
            x.grad(grad_outputs={names[0]: np.ones_like(got[names[0]])}, **np_args)
    finally:
        xattn.set_compute("f32")
    out = []
    for n, e, a in zip(names, exact, auto):
        e = e.numpy()
        ours, theirs = normwise(got[n], e), normwise(a.float().numpy(), e)
        print(f"{n}: xattn bf16 {ours:.2e}, torch autocast bf16 {theirs:.2e}, "
              f"xattn f32 {normwise(f32[n], e):.1e}")
        assert ours <= theirs and ours <= 2 ** -4
        assert normwise(f32[n], e) < 1e-5  # float32 again
        out.append((ours, theirs))
    return out


def test_mha(tmp_path):
    m = randomize(nn.MultiheadAttention(64, 8, batch_first=True), 1)
    g = torch.Generator().manual_seed(2)
    args = dict(query=torch.randn(2, 40, 64, generator=g),
                key=torch.randn(2, 50, 64, generator=g), value=torch.randn(2, 50, 64, generator=g))
    compare(tmp_path, m, args, ["out"],
            lambda mod, a: (mod(a["query"], a["key"], a["value"], need_weights=False)[0],))


def test_bidirectional_transformer(tmp_path):
    bca = pytest.importorskip("bidirectional_cross_attention")
    torch.manual_seed(0)
    m = randomize(bca.BidirectionalCrossAttentionTransformer(
        dim=48, depth=2, context_dim=32, heads=4, dim_head=12, talking_heads=True), 3)
    g = torch.Generator().manual_seed(4)
    args = dict(x=torch.randn(2, 30, 48, generator=g), context=torch.randn(2, 45, 32, generator=g))
    compare(tmp_path, m, args, ["out", "context_out"],
            lambda mod, a: mod(a["x"], a["context"]))


def test_set_compute_names():
    with pytest.raises(ValueError, match="bf16"):
        xattn.set_compute("fp8")
    assert xattn.get_compute() == "f32"
