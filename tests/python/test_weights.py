"""xattn.load(..., weights=...): linear weights kept as bf16 / f16 hold exactly torch's rounding of
the float32 weights (.to(torch.bfloat16)), and the module gives torch's float64 outputs on those
rounded weights within 2e-5 * (1 + |ref|): more accurate than torch running the module in bf16.
int8 keeps q * scale with scale = max|w| / 127 per output row. 16-bit files stay 16-bit as
stored; inference-only modules refuse gradients and load_state_dict."""
import copy

import numpy as np
import pytest

import xattn

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
from xattn.export import export  # noqa: E402

nn = torch.nn
TOL = 2e-5
G = torch.Generator().manual_seed(99)


def err(got, ref):
    ref = np.asarray(ref, np.float64)
    return float(np.max(np.abs(np.asarray(got, np.float64) - ref) / (1 + np.abs(ref))))


def mha_and_inputs():
    m = nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=G) / (p.shape[-1] ** 0.5 if p.ndim > 1 else 5))
    q = torch.randn(2, 9, 32, generator=G)
    kv = torch.randn(2, 13, 32, generator=G)
    return m, q, kv


def torch_out(m, q, kv, dtype=torch.float64):
    with torch.no_grad():
        o, _ = copy.deepcopy(m).to(dtype)(q.to(dtype), kv.to(dtype), kv.to(dtype),
                                          need_weights=False)
    return o.double().numpy()


@pytest.mark.parametrize("weights,tdtype", [("bf16", torch.bfloat16), ("f16", torch.float16)])
def test_16bit_weights_are_torchs_rounding(tmp_path, weights, tdtype):
    m, q, kv = mha_and_inputs()
    path = tmp_path / "mha.safetensors"
    export(m, path)
    x = xattn.load(path, weights=weights)
    assert x.weights == weights
    sd = x.state_dict()
    for name in ("in_proj_weight", "out_proj.weight"):  # the linear weights
        want = getattr(m, name.split(".")[0]) if "." not in name else m.out_proj.weight
        want = want.detach().to(tdtype).float().numpy()
        assert np.array_equal(sd[name], want), name
    assert np.array_equal(sd["in_proj_bias"], m.in_proj_bias.detach().numpy())  # float32
    got = x(query=q.numpy(), key=kv.numpy(), value=kv.numpy())["out"]
    # torch in float64 on the rounded weights
    r = copy.deepcopy(m)
    with torch.no_grad():
        r.in_proj_weight.copy_(r.in_proj_weight.to(tdtype).float())
        r.out_proj.weight.copy_(r.out_proj.weight.to(tdtype).float())
    assert err(got, torch_out(r, q, kv)) <= TOL
    # against the float32 module's float64 outputs: at least as accurate as torch in that type
    exact = torch_out(m, q, kv)
    assert err(got, exact) <= err(torch_out(m, q, kv, tdtype), exact)
    # the float32 module given the same values: the same bits
    f = xattn.load(path, weights="f32")
    f.load_state_dict(sd)
    assert np.array_equal(f(query=q.numpy(), key=kv.numpy(), value=kv.numpy())["out"], got)


def test_int8_weights(tmp_path):
    m, q, kv = mha_and_inputs()
    path = tmp_path / "mha.safetensors"
    export(m, path)
    x = xattn.load(path, weights="int8")
    assert x.weights == "int8"
    w = m.in_proj_weight.detach().double().numpy()
    kept = x.state_dict()["in_proj_weight"].astype(np.float64)
    scale = np.abs(w).max(axis=1, keepdims=True) / 127
    steps = kept / scale
    assert np.allclose(steps, np.round(steps), atol=1e-3)  # q * scale, q an integer
    assert np.all(np.abs(steps) <= 127 + 1e-3)
    assert np.all(np.abs(kept - w) <= scale / 2 * (1 + 1e-5))
    got = x(query=q.numpy(), key=kv.numpy(), value=kv.numpy())["out"]
    exact = torch_out(m, q, kv)
    e = err(got, exact)
    print(f"int8 weights: max rel error {e:.2e} against float64")
    assert e <= 2 ** -3  # the weights' half step (about 2^-8 of a row's largest) carried along
    with pytest.raises(NotImplementedError, match="int8"):
        x.save(tmp_path / "q.safetensors")


def test_as_stored_and_refusals(tmp_path):
    m, q, kv = mha_and_inputs()
    path = tmp_path / "mha.safetensors"
    export(m.to(torch.bfloat16), path)  # stored as BF16
    x = xattn.load(path)
    assert x.weights == "bf16"
    f = xattn.load(path, weights="f32")
    assert f.weights == "f32"
    args = dict(query=q.numpy(), key=kv.numpy(), value=kv.numpy())
    assert np.array_equal(x(**args)["out"], f(**args)["out"])  # exact conversion either way
    dout = {"out": np.ones((2, 9, 32), np.float32)}
    with pytest.raises(NotImplementedError, match="float32 weights"):
        x.grad(grad_outputs=dout, **args)
    assert "in_proj_weight" in f.grad(grad_outputs=dout, **args)  # float32: as usual
    with pytest.raises(ValueError, match="weights='f32'"):
        x.load_state_dict(f.state_dict())
    with pytest.raises(ValueError, match="weights"):
        xattn.load(path, weights="int4")
    # saved as kept: the BF16 tensors come back bit for bit
    x.save(tmp_path / "again.safetensors")
    y = xattn.load(tmp_path / "again.safetensors")
    assert y.weights == "bf16"
    for k, v in x.state_dict().items():
        assert np.array_equal(y.state_dict()[k], v), k
