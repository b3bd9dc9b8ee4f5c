"""xattn.load and Module over every kind: outputs equal the CLI's on the same files; gradients
(Module.grad) equal torch.autograd in float64 on the reference modules (the fixtures of
tests/test_module_grad.c); the options, errors and zero-copy inputs of the numpy API."""
import os
import re
import threading

import numpy as np
import pytest

import xattn
from conftest import FIXTURES, assert_close, fixture_path, run_cli

safetensors_numpy = pytest.importorskip("safetensors.numpy")
from safetensors import safe_open  # noqa: E402


def grad_fixtures():
    names = []
    for inc in sorted(os.listdir(FIXTURES)):
        if re.fullmatch(r"grad(_\w+)?_list\.inc", inc):
            with open(os.path.join(FIXTURES, inc)) as f:
                names += re.findall(r'"(grad_[^"]+\.safetensors)"', f.read())
    return names


def read_fixture(name):
    path = fixture_path(name)
    t = safetensors_numpy.load_file(path)
    with safe_open(path, "np") as f:
        meta = f.metadata() or {}
    inputs = {k[6:]: v for k, v in t.items() if k.startswith("input.")}
    if meta.get("is_causal") == "True":
        inputs["is_causal"] = True
    douts = {k[5:]: v for k, v in t.items() if k.startswith("dout.")}
    return path, meta, t, inputs, douts


FIX = grad_fixtures()
KINDS_SEEN = {re.match(r"grad_([a-z0-9]+)_", n).group(1) for n in FIX}


def test_every_kind_has_fixtures():
    assert {"mha", "attention", "mutual", "conv2d", "joint", "interlaced", "multiview", "hallo",
            "decoder"} <= KINDS_SEEN


@pytest.mark.parametrize("name", FIX)
def test_grad_against_torch(name):
    path, meta, t, inputs, douts = read_fixture(name)
    m = xattn.load(path, kind=meta.get("kind"), prefix="")
    g = m.grad(grad_outputs=douts, **inputs)
    checked = 0
    for k, ref in t.items():
        if k.startswith("grad.input."):
            assert_close(g["d_" + k[11:]], ref, 1e-4, f"{name} d_{k[11:]}")
            checked += 1
        elif k.startswith("grad."):
            assert_close(g[k[5:]], ref, 1e-4, f"{name} {k}")
            checked += 1
    assert checked > 0


def cli_flag(name):
    return "--" + name.replace("_", "-")


def first_and_last_of_each_kind():
    by_kind = {}
    for n in FIX:
        by_kind.setdefault(re.match(r"grad_([a-z0-9]+)_", n).group(1), []).append(n)
    return sorted({n for names in by_kind.values() for n in (names[0], names[-1])})


@pytest.mark.parametrize("name", first_and_last_of_each_kind())
def test_forward_equals_cli(name, tmp_path):
    path, meta, t, inputs, _ = read_fixture(name)
    m = xattn.load(path, kind=meta.get("kind"), prefix="")
    y = m(**inputs)
    args = ["run"] + ([path, "--prefix", ""] if m.state_dict() else []) + [
        "--module", m.kind, "--out-dir", tmp_path / "o"]
    for k, v in inputs.items():
        if k == "is_causal":
            args.append("--is-causal")
            continue
        f = tmp_path / f"{k}.npy"
        np.save(f, v)
        args += [cli_flag(k), f]
    run_cli(*args)
    for k, v in y.items():
        ref = np.load(tmp_path / "o" / (k.replace(".", "_") + ".npy"))
        assert np.array_equal(v, ref), f"{name}: output {k} differs from the CLI's"


def test_bidir_fixture_outputs_and_maps():
    path = fixture_path("bidir_basic.safetensors")
    t = safetensors_numpy.load_file(path)
    m = xattn.load(path)
    assert m.kind == "bidir" and m.config["heads"] == 2
    y = m(t["input.x"], t["input.context"], return_attn=True)
    assert set(y) == {"out", "context_out", "attn", "context_attn"}
    for k in y:
        assert_close(y[k], t["expected." + k], 2e-5, k)
    y2 = m(t["input.x"], t["input.context"], outputs=["context_out"])
    assert list(y2) == ["context_out"] and np.array_equal(y2["context_out"], y["context_out"])


def test_module_description():
    m = xattn.load(fixture_path("bidir_basic.safetensors"))
    assert [s.name for s in m.inputs][:2] == ["x", "context"]
    mask = [s for s in m.inputs if s.name == "mask"][0]
    assert mask.mask and mask.optional and "KEEP" in mask.doc
    assert m.outputs[0].name == "out" and m.outputs[0].shape == "B,I,dim"
    sd = m.state_dict()
    t = safetensors_numpy.load_file(fixture_path("bidir_basic.safetensors"))
    assert set(sd) == {k for k in t if "." in k and not k.startswith(("input.", "expected."))}
    for k, v in sd.items():
        assert np.array_equal(v, t[k]), k


def test_state_dict_round_trip_and_save(tmp_path):
    m = xattn.load(fixture_path("bidir_basic.safetensors"))
    sd = m.state_dict()
    sd["to_out.bias"] = sd["to_out.bias"] + 1
    m.load_state_dict(sd)
    m.save(tmp_path / "m.safetensors")
    m2 = xattn.load(tmp_path / "m.safetensors")
    assert np.array_equal(m2.state_dict()["to_out.bias"], sd["to_out.bias"])
    with pytest.raises(KeyError):
        m.load_state_dict({"nope": np.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        m.load_state_dict({"to_out.bias": np.zeros(3)}, strict=False)


def test_inputs_converted_and_checked():
    t = safetensors_numpy.load_file(fixture_path("bidir_basic.safetensors"))
    m = xattn.load(fixture_path("bidir_basic.safetensors"))
    x, c = t["input.x"], t["input.context"]
    ref = m(x, c)["out"]
    assert np.array_equal(m(x.astype(np.float64), c)["out"], ref)  # converted
    xf = np.asfortranarray(x)
    assert np.array_equal(m(xf, c)["out"], ref)  # non-contiguous: copied
    with pytest.raises(ValueError, match="float"):
        m(x.astype(np.int32), c)
    with pytest.raises(ValueError, match="shape|has|expected"):
        m(x[:, :, :5], c)
    with pytest.raises(ValueError, match="no input 'nope'"):
        m(x, c, nope=x)
    with pytest.raises(ValueError, match="mask"):
        m(x, c, mask=np.ones(x.shape[:2], dtype=np.float32))


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        xattn.load(tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}    ")
    with pytest.raises(xattn.FormatError):
        xattn.load(bad)
    with pytest.raises(ValueError):
        xattn.load(fixture_path("bidir_basic.safetensors"), heads=3)  # contradicts the file
    with pytest.raises(ValueError):
        xattn.create("no-such-kind")
    with pytest.raises(ValueError):
        xattn.set_threads(-1)


def test_create_and_warnings():
    m = xattn.create("mutual")
    a = np.random.default_rng(0).standard_normal((2, 5, 8)).astype(np.float32)
    out = m(a, a)["out"]
    assert out.shape == a.shape
    m2 = xattn.create("bidir", seed=3, dim=16, heads=2, dim_head=8)
    assert m2.config["dim"] == 16 and len(m2.state_dict()) > 0


def test_threads_concurrent_calls_agree():
    t = safetensors_numpy.load_file(fixture_path("bidir_basic.safetensors"))
    m = xattn.load(fixture_path("bidir_basic.safetensors"))
    ref = m(t["input.x"], t["input.context"])["out"]
    results, errors = [], []

    def work():
        try:
            for _ in range(20):
                results.append(m(t["input.x"], t["input.context"])["out"])
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and len(results) == 80
    assert all(np.array_equal(r, ref) for r in results)


def test_version_threads_kernels():
    assert re.fullmatch(r"\d+\.\d+\.\d+", xattn.__version__)
    assert xattn.kernel_set() in ("scalar", "avx2", "avx512", "avx512bf16", "amx", "neon")
    n = xattn.get_threads()
    xattn.set_threads(1)
    assert xattn.get_threads() == 1
    xattn.set_threads(0)
    assert xattn.get_threads() == n
    r = run_cli("--version")
    assert xattn.__version__ in r.stdout
