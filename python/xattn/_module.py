"""Modules of every kind, through the library's registry: load, run, gradients (numpy)."""
import ctypes as C
import os
from collections import namedtuple

import numpy as np

from . import _lib
from ._lib import check, lib

IoSpec = namedtuple("IoSpec", "name shape optional mask additive doc")
IoSpec.__doc__ = ("An input or output: its name, symbolic shape ('B,I,dim'), whether it is "
                  "optional, whether it is a mask (doc gives the polarity: 'True = KEEP' or "
                  "'True = masked'), whether a float mask is added, and its documentation.")

_NP_OF = {_lib.F32: np.float32, _lib.BOOL: np.bool_, _lib.U8: np.uint8}


def _value(text):
    """A configuration value as Python: int, float, bool, None or the text."""
    if text in ("True", "False"):
        return text == "True"
    if text == "None":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def _s(b):
    return b.decode() if b is not None else None


def _aliases(kind):
    """{alias: name} of a kind's inputs, options and outputs."""
    out, i = {}, 0
    while True:
        a = _lib.AliasDesc()
        if lib.xattn_kind_alias(kind.encode(), i, C.byref(a)) != _lib.OK:
            return out
        out[_s(a.alias)] = _s(a.name)
        i += 1


class _Arrays:
    """Keeps the arrays handed to C alive and builds their xattn_tensor descriptions."""

    def __init__(self):
        self.keep = []

    def tensor(self, name, arr, dtype):
        t = _lib.Tensor()
        b = name.encode()
        self.keep += [arr, b]
        t.name, t.dtype, t.ndim = b, dtype, arr.ndim
        for d in range(arr.ndim):
            t.shape[d] = arr.shape[d]
        t.data = arr.ctypes.data if arr.size else None
        return t


def _float32(name, a):
    """a as a C-contiguous float32 array (in place when it is one; float arrays converted)."""
    return _lib.as_float32(f"input '{name}'", a)


class Module:
    """A module loaded from a safetensors state dict (xattn.load) or created (xattn.create).

    Call it with numpy arrays: `m(x, context, mask=..., ...)` returns a dict of numpy arrays
    named as the reference returns them. `m.grad(...)` gives the gradients of every parameter
    and float input, like `xattn grad`.
    """

    def __init__(self, handle, source):
        self._h = C.c_void_p(handle)
        self.source = source
        self.kind = _s(lib.xattn_module_kind(self._h))
        self.prefix = _s(lib.xattn_module_prefix(self._h))
        self.warnings = [w for w in (_s(lib.xattn_module_warnings(self._h)) or "").split("\n")
                         if w]
        self.config = {}
        self.config_sources = {}
        for i in range(lib.xattn_module_config_count(self._h)):
            e = _lib.ConfigEntry()
            check(lib.xattn_module_config(self._h, i, C.byref(e)))
            self.config[_s(e.name)] = _value(_s(e.value))
            self.config_sources[_s(e.name)] = _s(e.source)
        self.inputs = self._io(lib.xattn_module_input_count, lib.xattn_module_input)
        self.outputs = self._io(lib.xattn_module_output_count, lib.xattn_module_output)
        self._bound = {}
        for i in range(lib.xattn_module_output_count(self._h)):
            d = _lib.IoDesc()
            check(lib.xattn_module_output(self._h, i, C.byref(d)))
            self._bound[_s(d.name)] = bool(d.when_bound)
        self._alias = _aliases(self.kind)

    def _io(self, count, get):
        specs = []
        for i in range(count(self._h)):
            d = _lib.IoDesc()
            check(get(self._h, i, C.byref(d)))
            specs.append(IoSpec(_s(d.name), _s(d.shape), bool(d.optional), bool(d.mask),
                                bool(d.additive), _s(d.doc)))
        return specs

    def close(self):
        """Frees the module's memory now (also done when it is garbage-collected)."""
        if getattr(self, "_h", None) and self._h.value:
            lib.xattn_module_free(self._h)
            self._h = C.c_void_p(None)

    def __del__(self):
        self.close()

    def __repr__(self):
        cfg = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"xattn.Module({self.kind}: {cfg})"

    # ---- parameters ---------------------------------------------------------------------

    def _params(self):
        out = []
        for i in range(lib.xattn_module_param_count(self._h)):
            p = _lib.ParamDesc()
            check(lib.xattn_module_param(self._h, i, C.byref(p)))
            out.append(p)
        return out

    @property
    def weights(self):
        """How the linear layers keep their weights: 'f32', 'bf16', 'f16', 'int8', or 'mixed'
        (loaded as stored from a file whose linear weights have several types)."""
        w = lib.xattn_module_weights(self._h)
        return "mixed" if w == 0 else _s(lib.xattn_weights_name(w))

    def _kept(self, i):
        return lib.xattn_module_param_kept(self._h, i)

    def state_dict(self):
        """The parameters (copies, float32) under the reference's state_dict names; weights kept
        in 16 bits are their exact values, int8 ones q * scale."""
        sd = {}
        for i, p in enumerate(self._params()):
            if not p.data and self._kept(i) == _lib.F32:
                continue  # an optional parameter the module does not have
            shape = tuple(p.shape[d] for d in range(p.ndim))
            a = np.empty(shape, np.float32)
            check(lib.xattn_module_param_read(self._h, i, a.ctypes.data_as(C.POINTER(C.c_float))),
                  self.kind)
            sd[_s(p.name)] = a
        return sd

    def load_state_dict(self, sd, strict=True):
        """Copies arrays into the parameters of the same names (shapes must agree). The module
        must keep its weights in float32 (xattn.load(..., weights="f32"))."""
        if self.weights != "f32":
            raise ValueError(f"load_state_dict: the module keeps its linear weights as "
                             f"{self.weights}; load it with weights='f32' to assign them")
        params = {_s(p.name): p for p in self._params() if p.data}
        unknown = [k for k in sd if k not in params]
        missing = [k for k in params if k not in sd]
        if strict and (unknown or missing):
            raise KeyError(f"load_state_dict: unexpected {unknown}, missing {missing}")
        for k, v in sd.items():
            if k not in params:
                continue
            p = params[k]
            shape = tuple(p.shape[d] for d in range(p.ndim))
            v = np.asarray(v)
            if tuple(v.shape) != shape:
                raise ValueError(f"load_state_dict: '{k}' has shape {tuple(v.shape)}; the module "
                                 f"has {shape}")
            n = int(np.prod(shape)) if shape else 1
            np.ctypeslib.as_array(p.data, shape=(n,))[:] = v.reshape(-1).astype(np.float32)

    def save(self, path):
        """Saves the parameters and configuration (safetensors with __metadata__)."""
        check(lib.xattn_module_save(self._h, os.fspath(path).encode()), os.fspath(path))

    # ---- inputs -------------------------------------------------------------------------

    def _input_name(self, name):
        names = [s.name for s in self.inputs]
        if name in names:
            return name
        if name in self._alias and self._alias[name] in names:
            return self._alias[name]
        raise ValueError(f"{self.kind} has no input '{name}' (inputs: {', '.join(names)})")

    def _bind(self, x, context, named, arrays):
        given = {}
        if x is not None:
            given["x" if "x" in self._alias or any(s.name == "x" for s in self.inputs)
                  else self.inputs[0].name] = x
        if context is not None:
            given["context" if "context" in self._alias or
                  any(s.name == "context" for s in self.inputs) else self.inputs[1].name] = context
        for k, v in named.items():
            if v is None:
                continue
            if k in given:
                raise ValueError(f"input '{k}' is given twice")
            given[k] = v
        spec = {s.name: s for s in self.inputs}
        tensors, seen = [], set()
        for k, v in given.items():
            name = self._input_name(k)
            if name in seen:
                raise ValueError(f"input '{name}' is given twice (as '{k}')")
            seen.add(name)
            s = spec[name]
            if s.shape == "":  # a 0-dim switch (is_causal)
                a = np.asarray(bool(v), dtype=np.bool_).reshape(())
                tensors.append(arrays.tensor(name, a, _lib.BOOL))
            elif s.mask:
                a = np.asarray(v)
                if a.dtype == np.bool_ or a.dtype == np.uint8:
                    a = np.ascontiguousarray(a)
                    tensors.append(arrays.tensor(name, a, _lib.BOOL if a.dtype == np.bool_
                                                 else _lib.U8))
                elif s.additive and a.dtype.kind == "f":
                    tensors.append(arrays.tensor(name, _float32(name, a), _lib.F32))
                else:
                    raise ValueError(f"mask '{name}' is {a.dtype}; expected bool or uint8"
                                     + (" (or a float mask, added)" if s.additive else ""))
            else:
                tensors.append(arrays.tensor(name, _float32(name, v), _lib.F32))
        return tensors

    def _outputs(self, tensors, names, return_attn):
        if names is None:
            names = [s.name for s in self.outputs
                     if not s.optional or (return_attn and not self._bound[s.name])]
            for s in self.outputs:  # there whenever their sizes are (multiview's out.K)
                if s.optional and self._bound[s.name] and self._plans(tensors, s.name):
                    names.append(s.name)
        known = [s.name for s in self.outputs]
        for n in names:
            if n not in known:
                raise ValueError(f"{self.kind} has no output '{n}' (outputs: {', '.join(known)})")
        arr_in = (_lib.Tensor * max(len(tensors), 1))(*tensors)
        outs = (_lib.Tensor * len(names))()
        keep = [n.encode() for n in names]
        for t, b in zip(outs, keep):
            t.name = b
        check(lib.xattn_module_plan(self._h, arr_in, len(tensors), outs, len(names)), self.kind)
        result = {}
        for n, t in zip(names, outs):
            result[n] = np.empty(tuple(t.shape[d] for d in range(t.ndim)),
                                 dtype=_NP_OF.get(t.dtype, np.float32))
            t.data = result[n].ctypes.data if result[n].size else None
        return arr_in, outs, result, keep

    def _plans(self, tensors, name):
        arr_in = (_lib.Tensor * max(len(tensors), 1))(*tensors)
        t = _lib.Tensor()
        b = name.encode()
        t.name = b
        return lib.xattn_module_plan(self._h, arr_in, len(tensors), C.byref(t), 1) == _lib.OK

    # ---- running ------------------------------------------------------------------------

    def __call__(self, x=None, context=None, outputs=None, return_attn=False, **inputs):
        """Runs the forward. x and context are the kind's first two inputs (or those it names
        x and context); the others go by name (input names or their aliases). outputs lists
        the outputs wanted (default: the required ones, plus every optional map when
        return_attn). Returns {output name: numpy array}."""
        arrays = _Arrays()
        tensors = self._bind(x, context, inputs, arrays)
        arr_in, outs, result, _ = self._outputs(tensors, outputs, return_attn)
        check(lib.xattn_module_forward(None, self._h, arr_in, len(tensors), outs, len(outs)),
              self.kind)
        return result

    forward = __call__

    def grad(self, x=None, context=None, grad_outputs=None, targets=None, **inputs):
        """Gradients, as `xattn grad`: either grad_outputs ({output name: its gradient}, a
        vector-Jacobian product) or targets ({output name: target}: the loss
        sum F.mse_loss(output, target)). Returns {parameter name: gradient} for every
        parameter, {"d_" + input name: gradient} for every float input given, and "loss" when
        targets are given."""
        if (grad_outputs is None) == (targets is None):
            raise ValueError("grad: give grad_outputs or targets (one of them)")
        arrays = _Arrays()
        tensors = self._bind(x, context, inputs, arrays)
        spec = {s.name: s for s in self.inputs}
        dins, dres = [], {}
        for t in tensors:
            name = _s(t.name)
            if spec[name].mask or spec[name].shape == "":
                continue
            g = np.zeros(tuple(t.shape[d] for d in range(t.ndim)), dtype=np.float32)
            dres["d_" + name] = g
            dins.append(arrays.tensor(name, g, _lib.F32))
        given = grad_outputs if grad_outputs is not None else targets
        known = [s.name for s in self.outputs]
        douts = []
        for k, v in given.items():
            if k not in known:
                raise ValueError(f"{self.kind} has no output '{k}' (outputs: {', '.join(known)})")
            douts.append(arrays.tensor(k, _float32(k, v), _lib.F32))
        params = self._params()
        pres, ptrs = {}, (C.POINTER(C.c_float) * max(len(params), 1))()
        for i, p in enumerate(params):
            if not p.data:
                continue
            g = np.zeros(tuple(p.shape[d] for d in range(p.ndim)), dtype=np.float32)
            pres[_s(p.name)] = g
            ptrs[i] = g.ctypes.data_as(C.POINTER(C.c_float))
        arr_in = (_lib.Tensor * max(len(tensors), 1))(*tensors)
        arr_d = (_lib.Tensor * max(len(douts), 1))(*douts)
        arr_din = (_lib.Tensor * max(len(dins), 1))(*dins)
        if targets is not None:
            loss = C.c_double(0)
            check(lib.xattn_module_mse_grad(None, self._h, arr_in, len(tensors), arr_d,
                                            len(douts), C.byref(loss), arr_din, len(dins), ptrs),
                  self.kind)
            pres["loss"] = loss.value
        else:
            check(lib.xattn_module_grad(None, self._h, arr_in, len(tensors), None, 0, arr_d,
                                        len(douts), arr_din, len(dins), ptrs), self.kind)
        pres.update(dres)
        return pres


def _options(kw):
    opts = [(k, "True" if v is True else "False" if v is False else "None" if v is None
             else str(v)) for k, v in kw.items()]
    arr = (_lib.Option * max(len(opts), 1))()
    keep = []
    for o, (k, v) in zip(arr, opts):
        kb, vb = k.encode(), v.encode()
        keep += [kb, vb]
        o.name, o.value = kb, vb
    return arr, len(opts), keep


def load(path, kind=None, heads=None, prefix=None, weights="auto", **options):
    """Opens the module in a safetensors file (its kind detected from the tensor names unless
    given; prefix selects one of several modules). Options are the reference constructor's
    keyword arguments that the file cannot tell (heads, ...); the file's __metadata__ gives
    them otherwise. A default assumed for one of them is listed in .warnings.

    weights: how the linear layers keep their weights: "auto" (as stored: BF16 / F16 tensors
    stay 16-bit, others float32), "f32", "bf16" or "f16" (half the memory; read exactly, so the
    outputs equal float32 weights of the same values), "int8" (a quarter; per output channel
    scales computed at load). Modules with weights in another type than float32 are for
    inference: .grad() and load_state_dict() need weights="f32"."""
    path = os.fspath(path)
    wcode = _lib.weights_code(weights)
    if heads is not None:
        options["heads"] = heads
    st = C.c_void_p()
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    check(lib.xattn_st_open(path.encode(), C.byref(st)), path)
    try:
        arr, n, keep = _options(options)
        o = _lib.OpenOpts()
        kb = kind.encode() if kind else None
        pb = prefix.encode() if prefix is not None else None
        o.kind, o.prefix, o.options, o.n_options = kb, pb, arr, n
        o.weights = wcode
        h = C.c_void_p()
        check(lib.xattn_module_open(st, C.byref(o), C.byref(h)), path)
        del keep
    finally:
        lib.xattn_st_close(st)
    return Module(h.value, path)


def create(kind, seed=0, **options):
    """A new module of `kind` with the reference's default initialisation (the constructor's
    keyword arguments as options), parameters drawn from a generator seeded by `seed`."""
    arr, n, keep = _options(options)
    h = C.c_void_p()
    check(lib.xattn_module_create(kind.encode(), arr, n, int(seed), C.byref(h)), kind)
    del keep
    return Module(h.value, None)
