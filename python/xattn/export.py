"""xattn.export: a PyTorch module saved as a safetensors file that xattn runs without guessing.

    xattn.export(module, "model.safetensors")

writes the module's state dict (each tensor contiguous, in the dtype it is stored in) and, in
the file's __metadata__, every constructor argument that the tensor names and shapes cannot
tell (heads, norm_first, activation, eps, n_cls, ...), under the keys the C loader reads, plus
"xattn_kind". `xattn run`, `xattn inspect` and xattn.load then take every value from the file
and announce no assumed default.

Supported modules (the kind xattn runs them as in brackets):
  * bidirectional_cross_attention 0.1.0 BidirectionalCrossAttention [bidir] and
    BidirectionalCrossAttentionTransformer [bidir-transformer] (and modules with the same
    attributes, such as xattn.torch's drop-in modules);
  * torch.nn.MultiheadAttention with batch_first=True [mha];
  * diffusers Attention with its default processor [attention];
  * torch.nn.TransformerEncoderLayer / TransformerEncoder with batch_first=True [joint];
  * transformers BertLayer / BertEncoder with is_decoder=True, add_cross_attention=True, and
    whole BertLMHeadModel / BertModel (add_pooling_layer=False) for xattn.load_lm and
    `xattn generate`, with the pad / bos / eos ids of the model's generation_config
    [bert-decoder];
  * the reference modules of tests/reference, recognised by their attributes: the interlaced
    decoder of 2D-3D MIT (blocks.N with self_attn, attn, mlp) [interlaced], the multiscale
    multiview module (stages.S.views.V) [multiview], HALLO's audio path (attn2_0..2, zero convs)
    [hallo-audio] and the 2-D convolutional cross-attention (conv_query/key/value) [conv2d-cross].

Anything else, or an option xattn cannot represent (a custom activation, another norm epsilon
than the kind's, GQA, extra norms, ...), raises ValueError naming it. torch is imported only
when export is called.
"""
import json
import math
import re

__all__ = ["export"]

# metadata a caller may set through export(..., key=value) although the module cannot tell it
# (the interlaced decoder's first stream is an argument of its forward, not of its constructor)
_FORWARD_ARGS = {"interlaced": {"first": ("x", "context", "voxel", "view")}}


def export(module, path, **extra_metadata):
    """Saves `module` (a supported torch.nn.Module) to the safetensors file `path`.

    The metadata holds "xattn_kind" and every constructor argument the names and shapes cannot
    tell, as text ("8", "True", "gelu", "1e-05"). Further keyword arguments are stored as extra
    metadata (their values as str(value)); one that contradicts a value taken from the module is
    an error. Returns the metadata written (a dict of str).

    Raises ValueError when xattn cannot represent the module (its message names the class or
    the option), TypeError when `module` is not a torch.nn.Module.
    """
    import torch
    from safetensors.torch import save_file

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"xattn.export: {type(module).__name__} is not a torch.nn.Module")
    kind, meta, patterns = _describe(module)
    sd = module.state_dict()
    _check_names(kind, sd, patterns)
    meta = {k: _text(v) for k, v in meta.items()}
    allowed = _FORWARD_ARGS.get(kind, {})
    for key, value in extra_metadata.items():
        text = _text(value)
        if key in allowed and text not in allowed[key]:
            raise ValueError(f"xattn.export: {key}={text!r} is not one of "
                             f"{', '.join(allowed[key])}")
        if key in meta and meta[key] != text and key not in allowed:
            raise ValueError(f"xattn.export: metadata {key}={text!r} contradicts the module "
                             f"({key} = {meta[key]!r})")
        meta[key] = text
    tensors = {}
    tied = _tied(sd) if kind == "bert-lm" else set()
    for name, t in sd.items():
        if name in tied:
            continue
        if not isinstance(t, torch.Tensor):
            raise ValueError(f"xattn.export: state dict entry '{name}' is not a tensor")
        if t.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            raise ValueError(f"xattn.export: tensor '{name}' is {t.dtype}; xattn reads "
                             "float32, float64, float16 and bfloat16 weights")
        # a private contiguous copy: tied or overlapping tensors cannot be saved as views
        tensors[name] = t.detach().to("cpu").clone().contiguous()
    # written beside the destination, opened by the library (it must load as this kind and
    # assume no default), then moved into place: never a file xattn would misread
    import os
    from ._generate import load_lm
    from ._module import load
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file(tensors, tmp, metadata=meta)
    try:
        if kind == "bert-lm":  # a whole model: xattn.load_lm / xattn generate read it
            lm = load_lm(tmp)
            if lm.warnings:
                raise ValueError(f"xattn.export: the file does not load as a whole BERT model "
                                 f"without assumed defaults ({lm.warnings})")
            del lm
        else:
            m = load(tmp, kind=kind, prefix="")
            if m.kind != kind or m.warnings:
                raise ValueError(f"xattn.export: the file does not load as {kind} without "
                                 f"assumed defaults (loads as {m.kind}; "
                                 f"{'; '.join(m.warnings)})")
            m.close()
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return meta


# -------------------------------------------------------------------------------------------
# helpers
# -------------------------------------------------------------------------------------------
def _text(v):
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"xattn.export: metadata value {v!r} is not finite")
        return repr(v)
    if isinstance(v, (list, tuple)):
        return ",".join(_text(x) for x in v)
    return str(v)


def _refuse(what, why):
    raise ValueError(f"xattn.export: {what}: {why}")


def _check_names(kind, sd, patterns):
    rx = re.compile("|".join(f"(?:{p})" for p in patterns))
    bad = [n for n in sd if not rx.fullmatch(n)]
    if bad:
        more = f" (and {len(bad) - 3} more)" if len(bad) > 3 else ""
        _refuse(kind, f"tensor{'s' if len(bad) > 1 else ''} "
                      f"{', '.join(repr(b) for b in bad[:3])}{more} have no place in xattn's "
                      f"'{kind}' kind (a submodule or option it does not implement)")


def _cls(m):
    return type(m).__name__


def _from(m, package):
    return (type(m).__module__ or "").split(".")[0] == package


def _same(values, what, owner):
    vals = list(values)
    if any(v != vals[0] for v in vals[1:]):
        _refuse(owner, f"{what} differs between its layers ({sorted(set(map(str, vals)))}); "
                       "xattn's kind takes one value for all")
    return vals[0]


def _dropout_p(d):
    import torch.nn as nn
    if isinstance(d, nn.Dropout):
        return float(d.p)
    if isinstance(d, (int, float)):
        return float(d)
    return 0.0


def _layernorm_eps(norms, owner, want=None, affine=True):
    """eps of nn.LayerNorm modules that must share it (and `want`, when given)."""
    import torch.nn as nn
    eps = []
    for name, n in norms:
        if not isinstance(n, nn.LayerNorm):
            _refuse(owner, f"{name} is {_cls(n)}, not nn.LayerNorm")
        if affine and not n.elementwise_affine:
            _refuse(owner, f"{name} has elementwise_affine=False (xattn's kind reads its weight)")
        eps.append(float(n.eps))
    e = _same(eps, "the LayerNorm eps", owner)
    if want is not None and e != want:
        _refuse(owner, f"LayerNorm eps {e!r}: xattn's kind uses {want!r} (nn.LayerNorm's default)")
    return e


def _is_erf_gelu(f):
    """nn.GELU() / F.gelu / transformers' GELUActivation (the exact erf form)."""
    import torch.nn as nn
    import torch.nn.functional as F
    if f is F.gelu:
        return True
    if isinstance(f, nn.GELU):
        return f.approximate == "none"
    if _cls(f) == "GELUActivation":  # transformers: "gelu" and "gelu_python", both erf
        return True
    return False


def _is_relu(f):
    import torch.nn as nn
    import torch.nn.functional as F
    return f is F.relu or f is F.relu_ or isinstance(f, nn.ReLU)


def _act_name(f):
    return getattr(f, "__name__", None) or _cls(f)


# -------------------------------------------------------------------------------------------
# recognition
# -------------------------------------------------------------------------------------------
def _describe(m):
    """(kind, metadata, state-dict name patterns) of module m, or ValueError."""
    import torch.nn as nn
    name = _cls(m)
    if isinstance(m, nn.MultiheadAttention):
        return _mha(m)
    if isinstance(m, nn.TransformerEncoderLayer):
        return _joint([m], None, "nn.TransformerEncoderLayer")
    if isinstance(m, nn.TransformerEncoder):
        return _joint(list(m.layers), m.norm, "nn.TransformerEncoder")
    if _from(m, "transformers"):
        return _transformers(m)
    if _from(m, "diffusers") and name == "Attention":
        return _diffusers(m)
    if _has(m, "to_qk", "context_to_qk", "to_v", "context_to_v", "to_out", "context_to_out",
            "heads"):
        return _bidir(m)
    if _has(m, "layers") and len(m.layers) and _is_bidir_layer(m.layers[0]):
        return _bidir_transformer(m)
    if _has(m, "blocks") and len(m.blocks) and _has(m.blocks[0], "self_attn", "attn", "mlp",
                                                    "norm_q", "norm_v"):
        return _interlaced(m)
    if _has(m, "stages") and len(m.stages) and _has(m.stages[0], "views"):
        return _multiview(m)
    if _has(m, "zero_conv_full", "zero_conv_face", "zero_conv_lip", "attn2_0", "attn2_1",
            "attn2_2", "ff"):
        return _hallo(m)
    if _has(m, "conv_query", "conv_key", "conv_value"):
        return _conv2d(m)
    if "mutual" in name.lower() and not any(True for _ in m.parameters()):
        _refuse(name, "the mutual cross-attention has no weights: there is nothing to export; "
                      "run it with 'xattn run --module mutual' (or xattn.load(kind=\"mutual\"))")
    _refuse(name, "not a module xattn can represent (supported: the bidirectional-cross-"
                  "attention package's modules, nn.MultiheadAttention, diffusers Attention, "
                  "nn.TransformerEncoderLayer / TransformerEncoder, transformers BertLayer / "
                  "BertEncoder / BertModel / BertLMHeadModel (decoder), and the reference "
                  "modules of tests/reference)")


def _has(m, *attrs):
    return all(hasattr(m, a) for a in attrs)


def _is_bidir_layer(layer):
    try:
        return len(layer) == 3 and _has(layer[0], "to_qk", "context_to_qk", "heads")
    except TypeError:
        return False


# -------------------------------------------------------------------------------------------
# bidirectional-cross-attention 0.1.0
# -------------------------------------------------------------------------------------------
_BIDIR = (r"(?:context_)?to_(?:qk|v)\.weight", r"(?:context_)?to_out\.(?:weight|bias)",
          r"(?:context_)?norm\.(?:weight|bias)", r"(?:context_)?talking_heads\.weight")


def _rmsnorm_ok(n, what, owner):
    """An nn.RMSNorm with eps=None (float32's epsilon, as xattn computes) and a weight."""
    import torch
    import torch.nn as nn
    if not isinstance(n, nn.RMSNorm):
        _refuse(owner, f"{what} is {_cls(n)}, not nn.RMSNorm")
    if n.eps is not None and n.eps != torch.finfo(torch.float32).eps:
        _refuse(owner, f"{what} has eps={n.eps!r}; xattn's kind uses nn.RMSNorm(eps=None)")
    if not n.elementwise_affine:
        _refuse(owner, f"{what} has elementwise_affine=False (xattn's kind reads its weight)")


def _bidir_attn(a, owner, prenorm_required=False):
    """heads, dim_head, dropout of a BidirectionalCrossAttention (checked)."""
    import torch.nn as nn
    heads = int(a.heads)
    inner = a.to_qk.weight.shape[0]
    if heads < 1 or inner % heads:
        _refuse(owner, f"inner width {inner} is not a multiple of heads {heads}")
    dim_head = inner // heads
    scale = getattr(a, "scale", dim_head ** -0.5)
    if scale != dim_head ** -0.5:
        _refuse(owner, f"scale {scale!r} is not dim_head ** -0.5 (dim_head {dim_head})")
    for lin in ("to_qk", "context_to_qk", "to_v", "context_to_v"):
        if getattr(a, lin).bias is not None:
            _refuse(owner, f"{lin} has a bias (the package's projections have none)")
    for lin in ("to_out", "context_to_out"):
        if getattr(a, lin).bias is None:
            _refuse(owner, f"{lin} has no bias (the package's output projections have one)")
    kinds = set()
    for nm in ("norm", "context_norm"):
        n = getattr(a, nm, nn.Identity())
        if isinstance(n, nn.Identity):
            kinds.add("none")
        elif isinstance(n, nn.LayerNorm):  # the package's 0.0.x versions
            _layernorm_eps([(nm, n)], owner, want=1e-5)
            if n.bias is None:
                _refuse(owner, f"{nm} is nn.LayerNorm without bias")
            kinds.add("layernorm")
        else:
            _rmsnorm_ok(n, nm, owner)
            kinds.add("rmsnorm")
    if len(kinds) > 1:
        _refuse(owner, "norm and context_norm are of different kinds")
    if prenorm_required and kinds == {"none"}:
        _refuse(owner, "a layer's attention has no prenorm")
    for nm in ("talking_heads", "context_talking_heads"):
        t = getattr(a, nm, nn.Identity())
        if isinstance(t, nn.Identity):
            continue
        if not (isinstance(t, nn.Conv2d) and t.kernel_size == (1, 1) and t.bias is None
                and t.in_channels == heads == t.out_channels and t.groups == 1):
            _refuse(owner, f"{nm} is not nn.Conv2d(heads, heads, 1, bias=False)")
    return heads, dim_head, _dropout_p(getattr(a, "dropout", 0.0))


def _bidir(m):
    heads, dim_head, dropout = _bidir_attn(m, _cls(m))
    return "bidir", {"xattn_kind": "bidir", "heads": heads, "dim_head": dim_head,
                     "dropout": dropout}, _BIDIR


def _bidir_transformer(m):
    import torch.nn as nn
    owner = _cls(m)
    got = []
    for i, layer in enumerate(m.layers):
        if not _is_bidir_layer(layer):
            _refuse(owner, f"layers.{i} is not (attention, feed-forward, context feed-forward)")
        got.append(_bidir_attn(layer[0], owner, prenorm_required=True))
        for k in (1, 2):
            ff = layer[k]
            ok = (isinstance(ff, nn.Sequential) and len(ff) == 4
                  and isinstance(ff[1], nn.Linear) and isinstance(ff[3], nn.Linear))
            if not ok:
                _refuse(owner, f"layers.{i}.{k} is not Sequential(RMSNorm, Linear, GELU, Linear)")
            _rmsnorm_ok(ff[0], f"layers.{i}.{k}.0", owner)
            if not _is_erf_gelu(ff[2]):
                _refuse(owner, f"layers.{i}.{k}.2 is {_act_name(ff[2])}: the feed-forward "
                               "activation must be nn.GELU() (exact erf)")
    heads = _same([g[0] for g in got], "heads", owner)
    dim_head = _same([g[1] for g in got], "dim_head", owner)
    dropout = _same([g[2] for g in got], "dropout", owner)
    for nm in ("norm", "context_norm"):
        n = getattr(m, nm, nn.Identity())
        if not isinstance(n, nn.Identity):
            _rmsnorm_ok(n, nm, owner)
    pats = tuple(r"layers\.\d+\.0\." + p for p in _BIDIR) + (
        r"layers\.\d+\.[12]\.(?:0\.weight|[13]\.(?:weight|bias))", r"(?:context_)?norm\.weight")
    return "bidir-transformer", {"xattn_kind": "bidir-transformer", "heads": heads,
                                 "dim_head": dim_head, "dropout": dropout}, pats


# -------------------------------------------------------------------------------------------
# torch.nn.MultiheadAttention
# -------------------------------------------------------------------------------------------
_MHA = (r"in_proj_weight", r"in_proj_bias", r"[qkv]_proj_weight", r"out_proj\.(?:weight|bias)",
        r"bias_[kv]")


def _mha(m):
    if not m.batch_first:
        _refuse("nn.MultiheadAttention(batch_first=False)",
                "xattn's mha kind takes batch-first inputs (batch, sequence, features); the "
                "weights do not depend on batch_first: set module.batch_first = True (and pass "
                "batch-first arrays to xattn) before exporting")
    return "mha", {"xattn_kind": "mha", "heads": int(m.num_heads),
                   "add_zero_attn": bool(m.add_zero_attn)}, _MHA


# -------------------------------------------------------------------------------------------
# torch.nn.TransformerEncoderLayer / TransformerEncoder
# -------------------------------------------------------------------------------------------
def _joint(layers, final_norm, owner):
    import torch.nn as nn
    if not layers:
        _refuse(owner, "it has no layers")
    heads, nf, acts, eps = [], [], [], []
    for i, layer in enumerate(layers):
        where = owner if owner.endswith("Layer") else f"{owner} layers.{i}"
        if not isinstance(layer, nn.TransformerEncoderLayer):
            _refuse(where, f"{_cls(layer)} is not nn.TransformerEncoderLayer")
        sa = layer.self_attn
        if not sa.batch_first:
            _refuse(f"{where} (batch_first=False)",
                    "xattn's joint kind takes batch-first inputs (batch, sequence, d_model); the "
                    "weights do not depend on batch_first: build it with batch_first=True or set "
                    "self_attn.batch_first = True in every layer before exporting")
        if not sa._qkv_same_embed_dim or sa.bias_k is not None or sa.add_zero_attn:
            _refuse(where, "its self_attn has kdim/vdim, add_bias_kv or add_zero_attn; the "
                           "joint kind takes plain self-attention")
        act = layer.activation
        if _is_relu(act):
            acts.append("relu")
        elif _is_erf_gelu(act):
            acts.append("gelu")
        else:
            _refuse(where, f"activation {_act_name(act)} is not supported: xattn's joint kind "
                           "takes activation='relu' or 'gelu' (exact erf), not a custom callable")
        heads.append(int(sa.num_heads))
        nf.append(bool(layer.norm_first))
        eps.append(_layernorm_eps([("norm1", layer.norm1), ("norm2", layer.norm2)], where))
    meta = {"xattn_kind": "joint", "heads": _same(heads, "nhead", owner),
            "activation": _same(acts, "activation", owner),
            "layer_norm_eps": _same(eps, "layer_norm_eps", owner),
            "norm_first": _same(nf, "norm_first", owner)}
    if final_norm is not None:
        _layernorm_eps([("norm", final_norm)], owner, want=meta["layer_norm_eps"])
    body = (r"self_attn\.(?:in_proj_weight|in_proj_bias|out_proj\.(?:weight|bias))|"
            r"linear[12]\.(?:weight|bias)|norm[12]\.(?:weight|bias)")
    pats = (body,) if owner.endswith("Layer") else (r"layers\.\d+\.(?:" + body + ")",
                                                     r"norm\.(?:weight|bias)")
    return "joint", meta, pats


# -------------------------------------------------------------------------------------------
# transformers BERT decoder
# -------------------------------------------------------------------------------------------
_BERT_ATT = (r"(?:attention|crossattention)\.(?:self\.(?:query|key|value)|output\.(?:dense|LayerNorm))"
             r"\.(?:weight|bias)|intermediate\.dense\.(?:weight|bias)|"
             r"output\.(?:dense|LayerNorm)\.(?:weight|bias)")


def _transformers(m):
    name = _cls(m)
    if name == "BertLayer":
        return _bert([m], name, (_BERT_ATT,))
    if name == "BertEncoder":
        return _bert(list(m.layer), name, (r"layer\.\d+\.(?:" + _BERT_ATT + ")",))
    if name in ("BertLMHeadModel", "BertModel"):
        return _bert_lm(m, name)
    _refuse(name, "of the transformers models xattn takes BertLayer, BertEncoder, BertModel "
                  "and BertLMHeadModel (is_decoder=True, add_cross_attention=True)")


_BERT_EMB = r"embeddings\.(?:(?:word|position|token_type)_embeddings\.weight|LayerNorm\.(?:weight|bias))"
_BERT_HEAD = (r"cls\.predictions\.(?:transform\.(?:dense|LayerNorm)\.(?:weight|bias)|"
              r"decoder\.(?:weight|bias)|bias)")


def _bert_lm(m, name):
    """A whole BertLMHeadModel / BertModel (xattn.load_lm, xattn generate): the decoder layers
    as _bert checks them, the embeddings and the head, and the ids generate() uses (the
    model's generation_config)."""
    import torch.nn as nn
    base = m.bert if name == "BertLMHeadModel" else m
    if getattr(base, "pooler", None) is not None:
        _refuse(name, "it has a pooler (add_pooling_layer=True), which a decoder does not use "
                      "and xattn does not run; build it with add_pooling_layer=False")
    stem = "bert." if name == "BertLMHeadModel" else ""
    _, meta, _ = _bert(list(base.encoder.layer), f"{name} encoder",
                       (r"layer\.\d+\.(?:" + _BERT_ATT + ")",))
    eps = meta["layer_norm_eps"]
    norms = [("embeddings.LayerNorm", base.embeddings.LayerNorm)]
    if name == "BertLMHeadModel":
        tr = m.cls.predictions.transform
        norms.append(("cls.predictions.transform.LayerNorm", tr.LayerNorm))
        if not _is_erf_gelu(tr.transform_act_fn):
            _refuse(name, f"the head's activation {_act_name(tr.transform_act_fn)} is not "
                          "supported (hidden_act='gelu', exact erf)")
    if not all(isinstance(n, nn.LayerNorm) for _, n in norms):
        _refuse(name, "its LayerNorms are not nn.LayerNorm")
    _layernorm_eps(norms, name, want=eps)
    pet = getattr(m.config, "position_embedding_type", "absolute")
    if pet not in (None, "absolute"):
        _refuse(name, f"position_embedding_type={pet!r} is not supported (absolute only)")
    gc = getattr(m, "generation_config", None) or m.config
    ids = {}
    for k in ("pad_token_id", "bos_token_id", "eos_token_id"):
        v = getattr(gc, k, None)
        if v is None:
            v = getattr(m.config, k, None)
        if isinstance(v, (list, tuple)):
            v = list(v) if len(v) > 1 else (v[0] if v else None)
        ids[k] = json.dumps(v) if isinstance(v, list) else v
    meta = {"num_attention_heads": meta["heads"], "layer_norm_eps": eps, "hidden_act": "gelu",
            **ids}
    pats = (stem + _BERT_EMB, stem + r"encoder\.layer\.\d+\.(?:" + _BERT_ATT + ")")
    if name == "BertLMHeadModel":
        pats += (_BERT_HEAD,)
    return "bert-lm", meta, pats


def _tied(sd):
    """Names of the state dict whose tensor shares its storage with an earlier one (a tied
    output layer): written once, as transformers' save_pretrained writes them."""
    seen, drop = set(), set()
    for n, t in sd.items():
        key = (t.data_ptr(), t.dtype, tuple(t.shape))
        if key in seen:
            drop.add(n)
        seen.add(key)
    return drop


def _bert(layers, owner, pats):
    import torch.nn as nn
    heads, eps = [], []
    for i, layer in enumerate(layers):
        where = owner if owner == "BertLayer" else f"{owner} layer.{i}"
        if not getattr(layer, "is_decoder", False):
            _refuse(where, "is_decoder=False: xattn's bert-decoder kind is the decoder (causal "
                           "self-attention); BertConfig(is_decoder=True, add_cross_attention=True)")
        if not getattr(layer, "add_cross_attention", False) or not hasattr(layer,
                                                                           "crossattention"):
            _refuse(where, "add_cross_attention=False: xattn's bert-decoder kind has a "
                           "cross-attention in every layer")
        cfg = getattr(layer.attention.self, "config", None)
        pet = getattr(cfg, "position_embedding_type", "absolute") if cfg is not None else \
            "absolute"
        if pet not in (None, "absolute"):
            _refuse(where, f"position_embedding_type={pet!r} is not supported (absolute only)")
        act = layer.intermediate.intermediate_act_fn
        if not _is_erf_gelu(act):
            hidden_act = getattr(cfg, "hidden_act", None)
            shown = hidden_act if isinstance(hidden_act, str) else _act_name(act)
            _refuse(where, f"hidden_act {shown!r} is not supported: xattn's bert-decoder kind "
                           "takes hidden_act='gelu' (exact erf)")
        for att in ("attention", "crossattention"):
            s = getattr(layer, att).self
            heads.append(int(s.num_attention_heads))
            hs = int(s.attention_head_size)
            if getattr(s, "scaling", hs ** -0.5) != hs ** -0.5:
                _refuse(where, f"{att} scaling {s.scaling!r} is not head_size ** -0.5")
        norms = [("attention.output.LayerNorm", layer.attention.output.LayerNorm),
                 ("crossattention.output.LayerNorm", layer.crossattention.output.LayerNorm),
                 ("output.LayerNorm", layer.output.LayerNorm)]
        if not all(isinstance(n, nn.LayerNorm) for _, n in norms):
            _refuse(where, "its LayerNorms are not nn.LayerNorm")
        eps.append(_layernorm_eps(norms, where))
    return "bert-decoder", {"xattn_kind": "bert-decoder",
                            "heads": _same(heads, "num_attention_heads", owner),
                            "layer_norm_eps": _same(eps, "layer_norm_eps", owner)}, pats


# -------------------------------------------------------------------------------------------
# diffusers Attention
# -------------------------------------------------------------------------------------------
# processors that compute softmax(q k^T * scale) v with the module's projections: those that
# scale by attn.scale, and AttnProcessor2_0, whose SDPA scales by head_dim ** -0.5 itself
_SCALE_ATTR = ("AttnProcessor", "SlicedAttnProcessor", "XFormersAttnProcessor")
_SCALE_SDPA = ("AttnProcessor2_0",)


def _diffusers_attn(a, owner):
    """(heads, dim_head, scale_qk) of a diffusers Attention, refusing what xattn lacks."""
    extras = (("group_norm", "norm_num_groups"), ("spatial_norm", "spatial_norm_dim"),
              ("norm_q", "qk_norm"), ("norm_k", "qk_norm"), ("norm_cross", "cross_attention_norm"),
              ("add_q_proj", "added_kv_proj_dim"), ("add_k_proj", "added_kv_proj_dim"),
              ("to_add_out", "context_pre_only=False"), ("norm_added_q", "qk_norm"),
              ("norm_added_k", "qk_norm"))
    for attr, option in extras:
        if getattr(a, attr, None) is not None:
            _refuse(owner, f"{option} ({attr}) is not supported: xattn's attention kind is "
                           "to_q, to_k, to_v and to_out.0 only")
    if getattr(a, "only_cross_attention", False) or a.to_k is None or a.to_v is None:
        _refuse(owner, "only_cross_attention is not supported")
    if getattr(a, "to_out", None) is None:
        _refuse(owner, "pre_only=True (no to_out) is not supported")
    if getattr(a, "fused_projections", False):
        _refuse(owner, "fused projections (fuse_projections()) are not supported: call "
                       "unfuse_projections() before exporting")
    heads = int(a.heads)
    inner = a.to_q.weight.shape[0]
    if a.to_k.weight.shape[0] != inner or a.to_v.weight.shape[0] != inner:
        _refuse(owner, "kv_heads (grouped keys and values) is not supported")
    if heads < 1 or inner % heads:
        _refuse(owner, f"inner width {inner} is not a multiple of heads {heads}")
    dim_head = inner // heads
    if (a.to_q.bias is None) != (a.to_k.bias is None) or \
            (a.to_q.bias is None) != (a.to_v.bias is None):
        _refuse(owner, "to_q, to_k and to_v must all have a bias or none")
    proc = _cls(getattr(a, "processor", None))
    if proc in _SCALE_SDPA:
        scale_qk = True
    elif proc in _SCALE_ATTR:
        if a.scale == 1.0:
            scale_qk = False
        elif a.scale == dim_head ** -0.5:
            scale_qk = True
        else:
            _refuse(owner, f"scale {a.scale!r} is neither 1 nor head width {dim_head} ** -0.5 "
                           "(dim_head does not divide out_dim)")
    else:
        _refuse(owner, f"attention processor {proc} is not supported (AttnProcessor2_0, "
                       "AttnProcessor, SlicedAttnProcessor, XFormersAttnProcessor)")
    return heads, dim_head, scale_qk


_DIFF = (r"to_[qkv]\.(?:weight|bias)", r"to_out\.0\.(?:weight|bias)")


def _diffusers(a):
    heads, dim_head, scale_qk = _diffusers_attn(a, "diffusers Attention")
    meta = {"xattn_kind": "attention", "heads": heads, "dim_head": dim_head,
            "scale_qk": scale_qk, "residual_connection": bool(a.residual_connection),
            "rescale_output_factor": float(a.rescale_output_factor)}
    return "attention", meta, _DIFF


# -------------------------------------------------------------------------------------------
# reference modules (tests/reference), recognised by their attributes
# -------------------------------------------------------------------------------------------
def _linear(l, what, owner, bias=None):
    import torch.nn as nn
    if not isinstance(l, nn.Linear):
        _refuse(owner, f"{what} is {_cls(l)}, not nn.Linear")
    if bias is not None and (l.bias is not None) != bias:
        _refuse(owner, f"{what} {'has no' if bias else 'has a'} bias")


def _interlaced(m):
    owner = _cls(m)
    heads, ncls, scales, qkvb = [], [], [], []
    D = None
    for i, b in enumerate(m.blocks):
        w = f"{owner} blocks.{i}"
        if not _has(b, "norm1", "self_attn", "norm_q", "norm_v", "attn", "norm2", "mlp"):
            _refuse(w, "not a SkipClsDecoderBlock (norm1, self_attn, norm_q, norm_v, attn, "
                       "norm2, mlp)")
        sa, ca = b.self_attn, b.attn
        D = sa.qkv.weight.shape[1]
        _layernorm_eps([(n, getattr(b, n)) for n in ("norm1", "norm_q", "norm_v", "norm2")], w,
                       want=1e-5)
        if int(sa.num_heads) != int(ca.num_heads):
            _refuse(w, "self_attn and attn have different num_heads")
        heads.append(int(sa.num_heads))
        ncls.append(int(ca.num_classes))
        if getattr(ca, "out_dim", D) != D:
            _refuse(w, f"attn.out_dim {ca.out_dim} differs from embed_dim {D}")
        if sa.scale != ca.scale:
            _refuse(w, "self_attn and attn have different scales")
        scales.append(float(sa.scale))
        qb = [sa.qkv.bias is not None] + [getattr(ca, n).bias is not None
                                          for n in ("q_map", "k_map", "v_map")]
        if len(set(qb)) > 1:
            _refuse(w, "self_attn.qkv and attn.{q,k,v}_map must all have biases or none")
        qkvb.append(qb[0])
        _linear(sa.proj, "self_attn.proj", w, bias=True)
        _linear(ca.proj, "attn.proj", w, bias=True)
        act = getattr(b.mlp, "act", None)
        if act is None or not _is_erf_gelu(act):
            _refuse(w, f"mlp.act is {_act_name(act)}: the interlaced kind takes nn.GELU() "
                       "(exact erf)")
    H = _same(heads, "num_heads", owner)
    scale = _same(scales, "qk_scale", owner)
    _same(qkvb, "qkv_bias", owner)
    meta = {"xattn_kind": "interlaced", "heads": H, "n_cls": _same(ncls, "num_classes", owner),
            "qk_scale": None if scale == (D // H) ** -0.5 else scale, "first": "x"}
    pats = (r"blocks\.\d+\.(?:norm1|norm_q|norm_v|norm2|self_attn\.(?:qkv|proj)|"
            r"attn\.(?:q_map|k_map|v_map|proj)|mlp\.fc[12])\.(?:weight|bias)",)
    return "interlaced", meta, pats


def _plain_mha(a, what, owner):
    import torch.nn as nn
    if not isinstance(a, nn.MultiheadAttention):
        _refuse(owner, f"{what} is {_cls(a)}, not nn.MultiheadAttention")
    if not a._qkv_same_embed_dim or a.bias_k is not None or a.add_zero_attn or \
            a.in_proj_bias is None:
        _refuse(owner, f"{what}: kdim/vdim, bias=False, add_bias_kv and add_zero_attn are not "
                       "supported here")
    return int(a.num_heads)


def _multiview(m):
    import torch.nn as nn
    owner = _cls(m)
    heads, gelus, norms = [], [], []
    for s, st in enumerate(m.stages):
        hs = []
        for v, vs in enumerate(st.views):
            w = f"stages.{s}.views.{v}"
            for nm in ("self_attn", "cross_attn"):
                hs.append(_plain_mha(getattr(vs, nm), f"{w}.{nm}", owner))
            for nm in ("norm1", "norm2", "cross_norm_q", "cross_norm_kv", "cross_norm2"):
                norms.append((f"{w}.{nm}", getattr(vs, nm)))
            for nm in ("mlp", "cross_mlp"):
                seq = getattr(vs, nm)
                if not (isinstance(seq, nn.Sequential) and len(seq) == 3
                        and isinstance(seq[1], nn.GELU)):
                    _refuse(owner, f"{w}.{nm} is not Sequential(Linear, nn.GELU, Linear)")
                gelus.append(seq[1].approximate)
        heads.append(_same(hs, f"heads of stage {s}", owner))
    eps = _layernorm_eps(norms, owner)
    gelu = _same(gelus, "the GELU form", owner)
    meta = {"xattn_kind": "multiview", "heads": heads, "eps": eps,
            "gelu": "tanh" if gelu == "tanh" else "erf"}
    pats = (r"stages\.\d+\.views\.\d+\.(?:(?:expand|norm1|norm2|cross_norm_q|cross_norm_kv|"
            r"cross_norm2)\.(?:weight|bias)|(?:self_attn|cross_attn)\.(?:in_proj_weight|"
            r"in_proj_bias|out_proj\.(?:weight|bias))|(?:mlp|cross_mlp)\.[02]\.(?:weight|bias))",)
    return "multiview", meta, pats


def _hallo(m):
    import torch.nn as nn
    owner = _cls(m)
    heads = []
    dim = m.norm2.weight.shape[0]
    for k in range(3):
        a = getattr(m, f"attn2_{k}")
        if not (_from(a, "diffusers") and _cls(a) == "Attention"):
            _refuse(owner, f"attn2_{k} is {_cls(a)}, not diffusers Attention")
        h, _, scale_qk = _diffusers_attn(a, f"{owner} attn2_{k}")
        if not scale_qk or a.residual_connection or a.rescale_output_factor != 1.0:
            _refuse(owner, f"attn2_{k}: scale_qk=False, residual_connection and "
                           "rescale_output_factor are not part of HALLO's block")
        if a.to_out[0].weight.shape[0] != dim or a.to_out[0].bias is None:
            _refuse(owner, f"attn2_{k}.to_out.0 must map to dim {dim} with a bias")
        heads.append(h)
    for nm in ("zero_conv_full", "zero_conv_face", "zero_conv_lip"):
        c = getattr(m, nm)
        if not (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.bias is not None):
            _refuse(owner, f"{nm} is not nn.Conv2d(dim, dim, 1) with a bias")
    _layernorm_eps([("norm2", m.norm2), ("norm3", m.norm3)], owner, want=1e-5)
    net = getattr(m.ff, "net", None)
    if net is None or len(net) < 3 or _cls(net[0]) != "GEGLU" or \
            getattr(net[0], "approximate", "none") != "none":
        _refuse(owner, "ff is not diffusers FeedForward(dim, activation_fn='geglu')")
    extra = [n for n, p in m.ff.named_parameters()
             if not re.fullmatch(r"net\.0\.proj\.(?:weight|bias)|net\.2\.(?:weight|bias)", n)]
    if extra:
        _refuse(owner, f"ff has parameters {extra[:3]} beyond net.0.proj and net.2")
    meta = {"xattn_kind": "hallo-audio", "heads": _same(heads, "heads", owner)}
    pats = (r"zero_conv_(?:full|face|lip)\.(?:weight|bias)",
            r"attn2_[012]\.(?:to_[qkv]|to_out\.0)\.(?:weight|bias)",
            r"norm[23]\.(?:weight|bias)", r"ff\.net\.0\.proj\.(?:weight|bias)",
            r"ff\.net\.2\.(?:weight|bias)")
    return "hallo-audio", meta, pats


def _conv2d(m):
    import torch.nn as nn
    owner = _cls(m)
    bias = []
    for nm in ("conv_query", "conv_key", "conv_value"):
        c = getattr(m, nm)
        if not (isinstance(c, nn.Conv2d) and c.kernel_size == (1, 1) and c.stride == (1, 1)
                and c.padding in ((0, 0), "valid") and c.dilation == (1, 1) and c.groups == 1):
            _refuse(owner, f"{nm} is not a 1x1 nn.Conv2d (stride 1, no padding, groups 1)")
        bias.append(c.bias is not None)
    if len(set(bias)) > 1:
        _refuse(owner, "conv_query, conv_key and conv_value must all have biases or none")
    scale = getattr(m, "scale", None)
    if scale is not None:
        scale = float(scale)
    meta = {"xattn_kind": "conv2d-cross", "scale": scale}
    return "conv2d-cross", meta, (r"conv_(?:query|key|value)\.(?:weight|bias)",)
