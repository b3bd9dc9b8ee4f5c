"""Whole BERT decoders (transformers' BertLMHeadModel with cross-attention) and generation.

    lm = xattn.load_lm("model.safetensors")               # config from __metadata__
    lm = xattn.load_lm("model.safetensors", config="config.json", weights="int8")
    ids = lm.generate(memory, num_beams=4, max_new_tokens=20)   # int64 (B, T), prompt included

generate() takes the arguments of transformers' generate() that xattn implements, with the same
meaning and defaults (greedy and beam search give its ids; sampling draws from the same
distributions with xattn's own seeded generator).
"""
import ctypes as C
import os

import numpy as np

from . import _lib
from ._lib import P, as_float32, check, lib


class LmOpts(C.Structure):
    _fields_ = [("config_json", C.c_char_p), ("heads", C.c_int64), ("weights", C.c_int64),
                ("reserved_", C.c_uint64 * 4)]


class LmConfig(C.Structure):
    _fields_ = [("vocab_size", C.c_int64), ("hidden", C.c_int64), ("max_positions", C.c_int64),
                ("type_vocab_size", C.c_int64), ("layers", C.c_int64), ("heads", C.c_int64),
                ("pad_token_id", C.c_int64), ("bos_token_id", C.c_int64),
                ("eos_token_id", C.c_int64), ("n_eos", C.c_int64),
                ("eos_token_ids", C.c_int64 * 8), ("has_head", C.c_int), ("tied", C.c_int),
                ("layer_norm_eps", C.c_float), ("weights", C.c_int)]


class DecoderConfig(C.Structure):
    _fields_ = [("hidden", C.c_int64), ("heads", C.c_int64), ("head_dim", C.c_int64),
                ("intermediate", C.c_int64), ("layers", C.c_int64), ("memory_dim", C.c_int64),
                ("video_dim", C.c_int64), ("audio_dim", C.c_int64), ("video_type", C.c_int),
                ("audio_type", C.c_int), ("layer_norm_eps", C.c_float)]


class GenerateOpts(C.Structure):
    _fields_ = [("max_new_tokens", C.c_int64), ("num_beams", C.c_int64),
                ("has_length_penalty", C.c_int), ("length_penalty", C.c_double),
                ("early_stopping", C.c_int), ("no_repeat_ngram_size", C.c_int64),
                ("do_sample", C.c_int), ("temperature", C.c_double), ("top_k", C.c_int64),
                ("top_p", C.c_double), ("seed", C.c_uint64), ("n_eos", C.c_int64),
                ("eos_token_ids", C.c_int64 * 8), ("has_pad_token_id", C.c_int),
                ("has_bos_token_id", C.c_int), ("pad_token_id", C.c_int64),
                ("bos_token_id", C.c_int64), ("prompt_mask", C.POINTER(C.c_uint8)),
                ("reserved_", C.c_uint64 * 4)]


_lib._proto("xattn_lm_load", C.c_int, P, C.POINTER(LmOpts), C.POINTER(P))
_lib._proto("xattn_lm_free", None, P)
_lib._proto("xattn_lm_get_config", None, P, C.POINTER(LmConfig))
_lib._proto("xattn_lm_warnings", C.c_char_p, P)
_lib._proto("xattn_lm_decoder", P, P)
_lib._proto("xattn_decoder_get_config", None, P, C.POINTER(DecoderConfig))
_lib._proto("xattn_decoder_project", C.c_int, P, P, C.c_int64, C.POINTER(C.c_float), C.c_int64,
            C.c_int64, C.POINTER(C.c_float), C.c_int64, C.c_int64, C.POINTER(C.c_float))
_lib._proto("xattn_lm_generate", C.c_int, P, P, C.c_int64, C.c_int64, C.POINTER(C.c_float),
            C.POINTER(C.c_uint8), C.c_int64, C.POINTER(C.c_int64), C.POINTER(GenerateOpts),
            C.POINTER(C.c_int64), C.POINTER(C.c_int64))
_lib._proto("xattn_lm_generate_length", C.c_int64, C.POINTER(GenerateOpts), C.c_int64)

_EARLY = {False: 1, True: 2, "never": 3}


def _ids(label, a, B):
    """An integer prompt (B, P) or (P,) (the same for every item) as C-contiguous int64."""
    a = np.asarray(a)
    if a.dtype.kind not in "iu" or a.ndim not in (1, 2):
        raise ValueError(f"{label}: expected integer token ids (B, P) or (P,), got {a.dtype} "
                         f"{a.shape}")
    if a.ndim == 1:
        a = np.broadcast_to(a, (B, a.shape[0]))
    if a.shape[0] != B:
        raise ValueError(f"{label}: {a.shape[0]} rows for a memory of batch {B}")
    return np.ascontiguousarray(a, dtype=np.int64)


def _keep(label, a, shape, rows_alike=False):
    """A bool or integer keep mask of the given shape as C-contiguous uint8 (nonzero = 1); with
    rows_alike a 1-D mask is every row's."""
    a = np.asarray(a)
    if rows_alike and a.ndim == 1:
        a = np.broadcast_to(a, shape)
    if a.dtype.kind not in "biu" or a.shape != tuple(shape):
        raise ValueError(f"{label}: expected bool or integer {tuple(shape)}, got {a.dtype} "
                         f"{a.shape}")
    return np.ascontiguousarray(a != 0, dtype=np.uint8)


class LanguageModel:
    """A loaded BertLMHeadModel (or BertModel): .config, .warnings, .generate(...)."""

    def __init__(self, handle, path):
        self._h = handle
        self.path = path
        c = LmConfig()
        lib.xattn_lm_get_config(self._h, C.byref(c))
        none = lambda v: None if v < 0 else int(v)  # noqa: E731
        self.config = {
            "vocab_size": c.vocab_size, "hidden_size": c.hidden,
            "max_position_embeddings": c.max_positions, "type_vocab_size": c.type_vocab_size,
            "num_hidden_layers": c.layers, "num_attention_heads": c.heads,
            "pad_token_id": none(c.pad_token_id), "bos_token_id": none(c.bos_token_id),
            "eos_token_id": (list(c.eos_token_ids[:c.n_eos]) if c.n_eos > 1
                             else none(c.eos_token_id)),
            "layer_norm_eps": float(f"{c.layer_norm_eps:.7g}"),
            "has_head": bool(c.has_head), "tie_word_embeddings": bool(c.tied),
            "weights": "mixed" if c.weights == 0 else lib.xattn_weights_name(c.weights).decode()}
        self.warnings = (lib.xattn_lm_warnings(self._h) or b"").decode()
        d = DecoderConfig()
        lib.xattn_decoder_get_config(lib.xattn_lm_decoder(self._h), C.byref(d))
        self.config["video_dim"] = int(d.video_dim) or None  # the projector's inputs
        self.config["audio_dim"] = int(d.audio_dim) or None

    def __del__(self):
        if getattr(self, "_h", None):
            lib.xattn_lm_free(self._h)
            self._h = None

    def __repr__(self):
        c = self.config
        return (f"LanguageModel({self.path!r}, layers={c['num_hidden_layers']}, "
                f"hidden={c['hidden_size']}, vocab={c['vocab_size']}, weights={c['weights']})")

    def project(self, video=None, audio=None):
        """The memory (B, Nv + Na, hidden) that the model's projector (bert.encoder.proj.video
        / .audio, type_embedding.*) builds from video (B, Fv, Nv, video_dim) and / or audio
        (B, Fa, Na, audio_dim) features: mean over the frames, projected."""
        feats = []
        for name, a in (("video", video), ("audio", audio)):
            want = self.config[f"{name}_dim"]
            if a is None:
                feats.append((None, 0, 0))
                continue
            if want is None:
                raise ValueError(f"{name}: the model has no {name} projector (proj.{name})")
            a = as_float32(name, a)
            if a.ndim != 4 or a.shape[3] != want:
                raise ValueError(f"{name}: expected (B, frames, tokens, {want}), got {a.shape}")
            feats.append((a, a.shape[1], a.shape[2]))
        if feats[0][0] is None and feats[1][0] is None:
            raise ValueError("project: give video and / or audio features")
        bs = {a.shape[0] for a, _, _ in feats if a is not None}
        if len(bs) != 1:
            raise ValueError(f"project: video and audio batches differ ({sorted(bs)})")
        B = bs.pop()
        mem = np.empty((B, feats[0][2] + feats[1][2], self.config["hidden_size"]), np.float32)
        fp = lambda a: None if a is None else a.ctypes.data_as(C.POINTER(C.c_float))  # noqa
        check(lib.xattn_decoder_project(None, lib.xattn_lm_decoder(self._h), B,
                                        fp(feats[0][0]), feats[0][1], feats[0][2],
                                        fp(feats[1][0]), feats[1][1], feats[1][2], fp(mem)),
              "project")
        return mem

    def generate(self, memory=None, memory_mask=None, prompt=None, *, prompt_mask=None,
                 video=None, audio=None,
                 max_new_tokens=None, num_beams=1, length_penalty=None, early_stopping=False,
                 no_repeat_ngram_size=0, do_sample=False, temperature=None, top_k=None,
                 top_p=None, seed=0, eos_token_id=None, pad_token_id=None, bos_token_id=None):
        """Token ids (B, T) int64, prompt included, as BertLMHeadModel.generate(
        input_ids=prompt, encoder_hidden_states=memory, encoder_attention_mask=memory_mask,
        ...): memory float (B, M, hidden) or (M, hidden), or video / audio features through the
        projector (see project); memory_mask (B, M), nonzero / True = keep; prompt integer
        (B, P) or (P,), None: bos_token_id alone; prompt_mask (B, P) nonzero = keep:
        generate()'s attention_mask of prompts padded on the left. max_new_tokens None: up to 20
        tokens in all
        (transformers' max_length); top_k None: 50 when sampling, 0: no top-k filter.
        eos_token_id / pad_token_id / bos_token_id None: the model's; eos_token_id an id or a
        list of up to 8 ids (an empty list: none, generation runs to max_new_tokens)."""
        if (memory is None) == (video is None and audio is None):
            raise ValueError("generate: give the memory, or video / audio features (one)")
        if memory is None:
            memory = self.project(video, audio)
        mem = as_float32("memory", memory)
        if mem.ndim == 2:
            mem = mem[None]
        if mem.ndim != 3 or mem.shape[2] != self.config["hidden_size"]:
            raise ValueError(f"memory: expected (B, M, {self.config['hidden_size']}), got "
                             f"{mem.shape}")
        B, M = mem.shape[0], mem.shape[1]
        mask = None if memory_mask is None else _keep("memory_mask", memory_mask, (B, M))
        ids_in = None if prompt is None else _ids("prompt", prompt, B)
        Pn = 0 if ids_in is None else ids_in.shape[1]
        if early_stopping not in _EARLY:
            raise ValueError(f"early_stopping: expected True, False or 'never', got "
                             f"{early_stopping!r}")
        o = GenerateOpts()
        o.max_new_tokens = 0 if max_new_tokens is None else int(max_new_tokens)
        o.num_beams = int(num_beams)
        o.has_length_penalty = length_penalty is not None
        o.length_penalty = 1.0 if length_penalty is None else float(length_penalty)
        o.early_stopping = _EARLY[early_stopping]
        o.no_repeat_ngram_size = int(no_repeat_ngram_size)
        o.do_sample = bool(do_sample)
        o.temperature = 0.0 if temperature is None else float(temperature)
        o.top_k = 0 if top_k is None else int(top_k)
        o.top_p = 0.0 if top_p is None else float(top_p)
        o.seed = int(seed)
        if max_new_tokens is not None and o.max_new_tokens <= 0:
            raise ValueError(f"max_new_tokens: {max_new_tokens} (at least 1)")
        if temperature is not None and not temperature > 0:
            raise ValueError(f"temperature: {temperature} (must be > 0)")
        if top_p is not None and not 0 < top_p <= 1:
            raise ValueError(f"top_p: {top_p} (must be in (0, 1])")
        if top_k == 0 and do_sample:
            o.top_k = self.config["vocab_size"]  # transformers: top_k=0 is no filter
        if eos_token_id is not None:
            eos = [eos_token_id] if np.ndim(eos_token_id) == 0 else list(eos_token_id)
            if len(eos) > 8 or not all(isinstance(e, (int, np.integer)) for e in eos):
                raise ValueError(f"eos_token_id: expected a token id or a list of up to 8, got "
                                 f"{eos_token_id!r}")
            o.n_eos = len(eos) if eos else -1
            for i, e in enumerate(eos):
                o.eos_token_ids[i] = int(e)
        if pad_token_id is not None:
            o.has_pad_token_id, o.pad_token_id = 1, int(pad_token_id)
        if bos_token_id is not None:
            o.has_bos_token_id, o.bos_token_id = 1, int(bos_token_id)
        pmask = None
        if prompt_mask is not None:
            if ids_in is None:
                raise ValueError("prompt_mask: given without a prompt")
            pmask = _keep("prompt_mask", prompt_mask, ids_in.shape, rows_alike=True)
            o.prompt_mask = pmask.ctypes.data_as(C.POINTER(C.c_uint8))
        cap = lib.xattn_lm_generate_length(C.byref(o), Pn)
        out = np.empty((B, cap), dtype=np.int64)
        n = C.c_int64()
        st = lib.xattn_lm_generate(
            None, self._h, B, M, mem.ctypes.data_as(C.POINTER(C.c_float)),
            None if mask is None else mask.ctypes.data_as(C.POINTER(C.c_uint8)), Pn,
            None if ids_in is None else ids_in.ctypes.data_as(C.POINTER(C.c_int64)),
            C.byref(o), out.ctypes.data_as(C.POINTER(C.c_int64)), C.byref(n))
        check(st, "generate")
        return out.reshape(-1)[:B * n.value].reshape(B, n.value).copy()


def load_lm(path, config=None, heads=None, weights="auto"):
    """A whole BERT decoder from a safetensors state dict of BertLMHeadModel / BertModel
    (is_decoder=True, add_cross_attention=True). config: a transformers config.json for what
    the names and shapes cannot tell (heads, eps, special ids); else the file's __metadata__,
    else BertConfig's defaults, listed in .warnings. weights: how every linear layer keeps its
    weights: "auto" (as stored), "f32", "bf16", "f16" or "int8" (quantised at load, per output
    channel); see xattn.load."""
    path = os.fspath(path)
    wcode = _lib.weights_code(weights)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if config is not None and not os.path.exists(os.fspath(config)):
        raise FileNotFoundError(f"{os.fspath(config)}: no such file")
    st = C.c_void_p()
    check(lib.xattn_st_open(path.encode(), C.byref(st)), path)
    try:
        o = LmOpts()
        cj = os.fspath(config).encode() if config is not None else None
        o.config_json, o.heads, o.weights = cj, int(heads or 0), wcode
        h = C.c_void_p()
        check(lib.xattn_lm_load(st, C.byref(o), C.byref(h)), path)
    finally:
        lib.xattn_st_close(st)
    return LanguageModel(h.value, path)
