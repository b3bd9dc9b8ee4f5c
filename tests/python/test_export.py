"""xattn.export: every supported module type, exported and run by the CLI (`xattn run`), gives the
module's outputs (eval mode; torch in float64 from the float32 weights) within
2e-5 * (1 + |ref|), with no default assumed; modules and options xattn cannot represent are
refused with ValueError naming them."""
import copy
import importlib
import json
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")
nn = torch.nn

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
import xattn  # noqa: E402
from xattn.export import export  # noqa: E402

TOL = 2e-5


# -------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------
def _find_tool():
    """The xattn executable: $XATTN_CLI, the one installed in the package, or ./build/xattn."""
    env = os.environ.get("XATTN_CLI")
    cands = [env] if env else []
    try:
        import xattn
        cands.append(os.path.join(os.path.dirname(xattn.__file__), "bin", "xattn"))
    except Exception:  # the package's library may be missing; the CLI may still be built
        pass
    cands.append(os.path.join(ROOT, "build", "xattn"))
    for c in cands:
        if c and os.access(c, os.X_OK):
            return c
    pytest.skip("the xattn command-line tool is not built (cmake --build build --target xattn)")


@pytest.fixture(scope="module")
def tool():
    return _find_tool()


def ref_module(name):
    """A tests/reference generator module, imported without its global float64 default."""
    dt = torch.get_default_dtype()
    try:
        return importlib.import_module(name)
    finally:
        torch.set_default_dtype(dt)


G = torch.Generator().manual_seed(1234)


def randn(*s):
    return torch.randn(*s, generator=G)


def randomize(m):
    """Non-trivial weights in float32: norms near 1 / 0, other tensors ~ 1/sqrt(fan_in)."""
    with torch.no_grad():
        for name, p in m.named_parameters():
            if p.ndim == 1 and ("norm" in name.lower() or "LayerNorm" in name):
                p.copy_((1.0 if name.endswith("weight") else 0.0) + 0.2 * randn(*p.shape))
            elif p.ndim == 1:
                p.copy_(0.2 * randn(*p.shape))
            else:
                fan = p[0].numel() if p.ndim > 1 else p.shape[0]
                p.copy_(randn(*p.shape) / fan ** 0.5)
    return m.eval()


def f64(m):
    return copy.deepcopy(m).double().eval()


def x32(*s):
    return randn(*s).float()


def run_cli(tool, model, inputs, tmp_path, *flags):
    """xattn run MODEL --NAME FILE.npy ... : the outputs by name; no default may be assumed."""
    io = tmp_path / "io"
    out = tmp_path / "out"
    io.mkdir(exist_ok=True)
    args = [tool, "run", str(model)]
    for name, a in inputs.items():
        f = io / f"{name}.npy"
        np.save(f, a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a))
        args += ["--" + name.replace("_", "-"), str(f)]
    args += ["--out-dir", str(out), "--threads", "2", *flags]
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, f"xattn run failed: {r.stderr}"
    assert "assuming" not in r.stderr and "warning" not in r.stderr, r.stderr
    return {p.stem: np.load(p) for p in out.glob("*.npy")}


def inspect_kind(tool, model):
    r = subprocess.run([tool, "inspect", str(model)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for line in r.stdout.splitlines():
        if line.endswith("at prefix '':"):
            return line.split()[0]
    raise AssertionError(r.stdout)


def close(got, ref, what):
    ref = ref.detach().double().numpy() if isinstance(ref, torch.Tensor) else ref
    assert got.shape == ref.shape, f"{what}: shape {got.shape} != {ref.shape}"
    err = np.abs(got.astype(np.float64) - ref) / (1 + np.abs(ref))
    assert err.max(initial=0) <= TOL, f"{what}: max rel error {err.max():.3g} > {TOL}"


def check(tool, tmp_path, module, inputs, refs, kind, *flags, **meta):
    """Exports module, checks the metadata kind and the detected kind, runs it, compares."""
    path = tmp_path / "model.safetensors"
    written = export(module, path, **meta)
    assert written["xattn_kind"] == kind
    assert inspect_kind(tool, path) == kind
    got = run_cli(tool, path, inputs, tmp_path, *flags)
    for name, ref in refs.items():
        close(got[name], ref, f"{kind} {name}")
    return written


def refused(module, *words, **meta):
    with pytest.raises(ValueError) as e:
        export(module, "/nonexistent/never-written.safetensors", **meta)
    msg = str(e.value)
    for w in words:
        assert w in msg, msg
    return msg


# -------------------------------------------------------------------------------------------
# bidirectional-cross-attention 0.1.0
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", [
    dict(dim=16, heads=2, dim_head=8),
    dict(dim=16, context_dim=12, heads=3, dim_head=4, talking_heads=True, prenorm=True,
         dropout=0.1),
])
def test_bidir(tool, tmp_path, opts):
    bca = pytest.importorskip("bidirectional_cross_attention")
    m = randomize(bca.BidirectionalCrossAttention(**opts))
    x, c = x32(2, 5, opts["dim"]), x32(2, 7, opts.get("context_dim", opts["dim"]))
    mask = torch.tensor([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    cmask = torch.tensor([[1] * 7, [1, 0, 1, 1, 0, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        o, co = f64(m)(x.double(), c.double(), mask=mask, context_mask=cmask)
    meta = check(tool, tmp_path, m, dict(x=x, context=c, mask=mask, context_mask=cmask),
                 dict(out=o, context_out=co), "bidir")
    assert meta["heads"] == str(opts["heads"]) and meta["dim_head"] == str(opts["dim_head"])
    assert float(meta["dropout"]) == opts.get("dropout", 0.0)


@pytest.mark.parametrize("opts", [
    dict(dim=16, depth=2, heads=2, dim_head=8),
    dict(dim=16, depth=2, context_dim=12, heads=2, dim_head=6, ff_expansion_factor=1.5,
         final_norms=True, talking_heads=True),
])
def test_bidir_transformer(tool, tmp_path, opts):
    bca = pytest.importorskip("bidirectional_cross_attention")
    if opts.get("final_norms") and opts.get("context_dim", opts["dim"]) != opts["dim"]:
        opts = dict(opts, context_dim=opts["dim"])  # the package's context norm is RMSNorm(dim)
    m = randomize(bca.BidirectionalCrossAttentionTransformer(**opts))
    x, c = x32(2, 5, opts["dim"]), x32(2, 6, opts.get("context_dim", opts["dim"]))
    with torch.no_grad():
        o, co = f64(m)(x.double(), c.double())
    check(tool, tmp_path, m, dict(x=x, context=c), dict(out=o, context_out=co),
          "bidir-transformer")


def test_bidir_refusals():
    bca = pytest.importorskip("bidirectional_cross_attention")
    m = bca.BidirectionalCrossAttention(dim=8, heads=2, dim_head=4, prenorm=True)
    m.norm = nn.RMSNorm(8, eps=1e-6)
    m.context_norm = nn.RMSNorm(8, eps=1e-6)
    refused(m, "eps=1e-06", "RMSNorm(eps=None)")
    t = bca.BidirectionalCrossAttentionTransformer(dim=8, depth=1, heads=2, dim_head=4)
    t.layers[0][1][2] = nn.SiLU()
    refused(t, "layers.0.1.2", "SiLU")


# -------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", [
    dict(),
    dict(kdim=12, vdim=10, dropout=0.2),
    dict(add_bias_kv=True, add_zero_attn=True),
    dict(bias=False, add_zero_attn=True),
])
def test_mha(tool, tmp_path, opts):
    m = randomize(nn.MultiheadAttention(16, 4, batch_first=True, **opts))
    q = x32(2, 5, 16)
    k, v = x32(2, 7, opts.get("kdim", 16)), x32(2, 7, opts.get("vdim", 16))
    kpm = torch.zeros(2, 7, dtype=torch.bool)
    kpm[1, 2] = True
    with torch.no_grad():
        o, _ = f64(m)(q.double(), k.double(), v.double(), key_padding_mask=kpm,
                      need_weights=False)
    meta = check(tool, tmp_path, m, dict(query=q, key=k, value=v, key_padding_mask=kpm),
                 dict(out=o), "mha")
    assert meta["heads"] == "4"
    assert meta["add_zero_attn"] == str(bool(opts.get("add_zero_attn", False)))


def test_mha_batch_first_false_refused():
    refused(nn.MultiheadAttention(16, 4), "batch_first=False", "batch_first = True")


# -------------------------------------------------------------------------------------------
# diffusers Attention
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts", [
    dict(query_dim=16, cross_attention_dim=12, heads=2, dim_head=8, bias=True),
    dict(query_dim=16, heads=4, dim_head=4, scale_qk=False, residual_connection=True,
         rescale_output_factor=2.0, out_bias=False),
    dict(query_dim=16, cross_attention_dim=10, dim_head=8, out_dim=24),
])
def test_diffusers_attention(tool, tmp_path, opts):
    ap = pytest.importorskip("diffusers.models.attention_processor")
    m = randomize(ap.Attention(**opts))
    x = x32(2, 5, 16)
    cross = opts.get("cross_attention_dim")
    inputs = dict(hidden_states=x)
    with torch.no_grad():
        if cross:
            c = x32(2, 7, cross)
            inputs["encoder_hidden_states"] = c
            o = f64(m)(x.double(), encoder_hidden_states=c.double())
        else:
            o = f64(m)(x.double())
    meta = check(tool, tmp_path, m, inputs, dict(out=o), "attention")
    assert meta["scale_qk"] == str(opts.get("scale_qk", True))
    assert meta["heads"] == str(m.heads)


def test_diffusers_refusals():
    ap = pytest.importorskip("diffusers.models.attention_processor")
    refused(ap.Attention(16, heads=2, dim_head=8, qk_norm="layer_norm"), "qk_norm")
    refused(ap.Attention(16, heads=4, kv_heads=2, dim_head=4), "kv_heads")
    refused(ap.Attention(16, heads=2, dim_head=8, norm_num_groups=4), "norm_num_groups")


# -------------------------------------------------------------------------------------------
# torch.nn.TransformerEncoderLayer / TransformerEncoder
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts,layers,final", [
    (dict(), 0, False),
    (dict(activation="gelu", norm_first=True, layer_norm_eps=1e-6, bias=False), 0, False),
    (dict(activation=torch.nn.functional.gelu, layer_norm_eps=1e-4), 2, True),
    (dict(norm_first=True), 2, False),
])
def test_joint(tool, tmp_path, opts, layers, final):
    layer = nn.TransformerEncoderLayer(16, 4, 24, dropout=0.1, batch_first=True, **opts)
    if layers:
        norm = nn.LayerNorm(16, eps=opts.get("layer_norm_eps", 1e-5)) if final else None
        m = nn.TransformerEncoder(layer, layers, norm=norm, enable_nested_tensor=False)
    else:
        m = layer
    randomize(m)
    x, c = x32(2, 5, 16), x32(2, 3, 16)
    with torch.no_grad():
        y = f64(m)(torch.cat([x, c], 1).double())
    meta = check(tool, tmp_path, m, dict(x=x, context=c),
                 dict(out=y[:, :5], context_out=y[:, 5:]), "joint")
    assert meta["norm_first"] == str(opts.get("norm_first", False))


def test_joint_refusals():
    refused(nn.TransformerEncoderLayer(16, 4, 24, batch_first=True, activation=nn.SiLU()),
            "activation SiLU", "relu", "gelu")
    refused(nn.TransformerEncoderLayer(16, 4, 24, batch_first=True,
                                       activation=lambda t: t * 2), "<lambda>", "custom callable")
    refused(nn.TransformerEncoderLayer(16, 4, 24, batch_first=True,
                                       activation=nn.GELU(approximate="tanh")), "GELU")
    refused(nn.TransformerEncoderLayer(16, 4, 24), "batch_first=False")
    enc = nn.TransformerEncoder(nn.TransformerEncoderLayer(16, 4, 24, batch_first=True), 2,
                                norm=nn.LayerNorm(16, eps=1e-3), enable_nested_tensor=False)
    refused(enc, "eps 0.001")


# -------------------------------------------------------------------------------------------
# transformers BERT decoder
# -------------------------------------------------------------------------------------------
def _bert_config(**kw):
    tr = pytest.importorskip("transformers")
    base = dict(hidden_size=16, num_attention_heads=4, intermediate_size=24, num_hidden_layers=2,
                is_decoder=True, add_cross_attention=True, hidden_act="gelu",
                layer_norm_eps=1e-6, attn_implementation="eager")
    base.update(kw)
    return tr.BertConfig(**base)


@pytest.mark.parametrize("single", [True, False])
def test_bert(tool, tmp_path, single):
    from transformers.models.bert import modeling_bert as mb
    cfg = _bert_config()
    m = randomize(mb.BertLayer(cfg) if single else mb.BertEncoder(cfg))
    B, T, M = 2, 5, 7
    x, mem = x32(B, T, 16), x32(B, M, 16)
    causal = torch.full((T, T), torch.finfo(torch.float64).min, dtype=torch.float64).triu(1)
    with torch.no_grad():
        y = f64(m)(x.double(), attention_mask=causal[None, None],
                   encoder_hidden_states=mem.double())
    y = y[0] if isinstance(y, tuple) else getattr(y, "last_hidden_state", y)
    meta = check(tool, tmp_path, m, dict(hidden_states=x, encoder_hidden_states=mem),
                 dict(out=y), "bert-decoder")
    assert meta["heads"] == "4" and meta["layer_norm_eps"] == "1e-06"


def test_bert_refusals():
    tr = pytest.importorskip("transformers")
    from transformers.models.bert import modeling_bert as mb
    refused(mb.BertLayer(_bert_config(hidden_act="gelu_new")), "gelu_new")
    refused(mb.BertLayer(_bert_config(hidden_act="relu")), "relu", "hidden_act")
    refused(mb.BertEncoder(_bert_config(is_decoder=False, add_cross_attention=False)),
            "is_decoder=False")
    refused(tr.BertModel(_bert_config()), "pooler", "add_pooling_layer=False")
    refused(tr.BertLMHeadModel(_bert_config(position_embedding_type="relative_key")),
            "relative_key")
    refused(tr.BertLMHeadModel(_bert_config(hidden_act="relu")), "relu")


@pytest.mark.parametrize("tie,eos,pad", [(True, 7, 0), (False, [7, 9], 0), (True, None, 0),
                                         (True, 7, None)])
def test_bert_lm(tmp_path, tie, eos, pad):
    """A whole BertLMHeadModel: exported with the ids generate() uses, a tied output layer
    written once; xattn.load_lm assumes no default and generates transformers' ids."""
    tr = pytest.importorskip("transformers")
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache
    from safetensors import safe_open
    m = randomize(tr.BertLMHeadModel(_bert_config(vocab_size=30, pad_token_id=pad,
                                                  bos_token_id=1, eos_token_id=eos,
                                                  tie_word_embeddings=tie)))
    m.eval()
    path = tmp_path / "lm.safetensors"
    meta = xattn.export(m, path)
    assert meta["num_attention_heads"] == "4" and meta["hidden_act"] == "gelu"
    assert meta["eos_token_id"] == (json.dumps(eos) if isinstance(eos, list) else str(eos))
    with safe_open(path, "np") as f:
        assert ("cls.predictions.decoder.weight" in f.keys()) == (not tie)
    lm = xattn.load_lm(path)
    assert lm.warnings == "" and lm.config["eos_token_id"] == eos
    assert lm.config["pad_token_id"] == pad  # None: generate pads with the first end token
    mem = x32(2, 5, 16)
    prompt = torch.tensor([[1, 4], [1, 6]])
    for kw in (dict(num_beams=1), dict(num_beams=3, length_penalty=0.8)):
        with torch.no_grad():
            ref = m.double().generate(
                input_ids=prompt, encoder_hidden_states=mem.double(), max_new_tokens=8,
                do_sample=False, past_key_values=EncoderDecoderCache(DynamicCache(),
                                                                     DynamicCache()), **kw)
        np.testing.assert_array_equal(
            lm.generate(mem.numpy(), prompt=prompt.numpy(), max_new_tokens=8, **kw), ref.numpy())


def test_bert_model(tmp_path):
    tr = pytest.importorskip("transformers")
    m = randomize(tr.BertModel(_bert_config(pad_token_id=0), add_pooling_layer=False))
    xattn.export(m, tmp_path / "bert.safetensors")
    lm = xattn.load_lm(tmp_path / "bert.safetensors")
    assert lm.warnings == "" and not lm.config["has_head"]


# -------------------------------------------------------------------------------------------
# reference modules of tests/reference
# -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("opts,first", [
    (dict(embed_dim=16, depth=3, num_classes=2, num_heads=2), "x"),
    (dict(embed_dim=12, depth=2, num_classes=1, num_heads=3, qkv_bias=True, qk_scale=0.3,
          mlp_ratio=0.5), "context"),
])
def test_interlaced(tool, tmp_path, opts, first):
    gen = ref_module("gen_interlaced")
    m = randomize(gen.InterlanceDecoder(**opts))
    D = opts["embed_dim"]
    x, c = x32(2, 6, D), x32(2, 5, D)
    with torch.no_grad():
        o, co, _ = f64(m)(x.double(), c.double(), context_first=first == "context")
    meta = check(tool, tmp_path, m, dict(x=x, context=c), dict(out=o, context_out=co),
                 "interlaced", **({"first": first} if first != "x" else {}))
    assert meta["n_cls"] == str(opts["num_classes"]) and meta["first"] == first
    assert meta["qk_scale"] == repr(opts.get("qk_scale"))


def test_multiview(tool, tmp_path):
    gen = ref_module("gen_multiview")
    m = randomize(gen.MultiscaleMultiview(3, [8, 12], [2, 3], [16, 20], eps=1e-6, gelu="tanh"))
    xs = [x32(2, n, 8) for n in (4, 6, 5)]
    with torch.no_grad():
        outs = f64(m)([x.double() for x in xs])
    meta = check(tool, tmp_path, m, {f"xs.{v}": x for v, x in enumerate(xs)},
                 {f"out_{v}": o for v, o in enumerate(outs)}, "multiview")
    assert meta == {"xattn_kind": "multiview", "heads": "2,3", "eps": "1e-06", "gelu": "tanh"}


def test_hallo(tool, tmp_path):
    pytest.importorskip("diffusers")
    gen = ref_module("gen_hallo")
    m = randomize(gen.HalloAudioPath(16, 2, 8, 12))
    B, h, w = 2, 3, 4
    x, audio = x32(B, h * w, 16), x32(B, 5, 12)
    masks = torch.rand(B, 3, h * w, generator=G).float()
    with torch.no_grad():
        y, _ = f64(m)(x.double(), audio.double(), *masks.double().unbind(1), h, w)
    check(tool, tmp_path, m, dict(hidden_states=x, encoder_hidden_states=audio, masks=masks),
          dict(out=y), "hallo-audio")


@pytest.mark.parametrize("opts", [dict(), dict(in_channels2=4, qk_channels=7, scale=0.5),
                                  dict(bias=False, scale=0.25)])
def test_conv2d(tool, tmp_path, opts):
    gen = ref_module("gen_conv2d")
    m = randomize(gen.CrossAttention(6, 5, **opts))
    x1, x2 = x32(2, 6, 3, 4), x32(2, opts.get("in_channels2", 6), 2, 5)
    with torch.no_grad():
        y = f64(m)(x1.double(), x2.double())
    meta = check(tool, tmp_path, m, dict(x1=x1, x2=x2), dict(out=y), "conv2d-cross")
    assert meta["scale"] == repr(opts.get("scale"))


# -------------------------------------------------------------------------------------------
# refusals and metadata
# -------------------------------------------------------------------------------------------
def test_unsupported_modules():
    refused(nn.Linear(4, 4), "Linear", "not a module xattn can represent")
    gen = ref_module("gen_mutual")
    refused(gen.MutualCrossAttention(), "no weights", "--module mutual")
    dec = ref_module("gen_interlaced").InterlanceDecoder(16, 1, 2, 2)
    dec.blocks[0].extra = nn.Linear(2, 2)
    refused(dec, "'blocks.0.extra.weight'", "no place in xattn's 'interlaced' kind")
    with pytest.raises(TypeError):
        export(object(), "/nonexistent/x.safetensors")


def test_extra_metadata(tmp_path):
    from safetensors import safe_open
    m = nn.MultiheadAttention(8, 2, batch_first=True)
    path = tmp_path / "m.safetensors"
    export(m, path, description="a test", heads=2)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        assert meta == {"xattn_kind": "mha", "heads": "2", "add_zero_attn": "False",
                        "description": "a test"}
        assert all(f.get_tensor(k).dtype == torch.float32 for k in f.keys())
    refused(m, "heads='4'", "contradicts", heads=4)
    gen = ref_module("gen_interlaced")
    refused(gen.InterlanceDecoder(16, 1, 2, 2), "first='both'", first="both")
