"""The C library through ctypes: loading it, its structs, and its errors as Python exceptions.

ctypes releases the GIL for the duration of every call into the library, so C runs while other
Python threads go on.
"""
import ctypes as C
import glob
import os

_HERE = os.path.dirname(os.path.abspath(__file__))


def _find_library():
    """XATTN_LIBRARY, else the library installed beside this file (pip install .), else a build
    tree's (a source checkout: build/libxattn.so)."""
    env = os.environ.get("XATTN_LIBRARY")
    if env:
        return env
    for pattern in ("libxattn.so*", "libxattn*.dylib", "xattn*.dll"):
        found = sorted(glob.glob(os.path.join(_HERE, pattern)))
        if found:
            return found[0]
    root = os.path.dirname(os.path.dirname(_HERE))
    found = sorted(glob.glob(os.path.join(root, "build", "libxattn.so*")))
    if found:
        return found[0]
    raise ImportError("xattn: the C library was not found beside the package (install with "
                      "'pip install .') nor in ./build; or set XATTN_LIBRARY to its path")


lib = C.CDLL(_find_library())

# ---- errors -----------------------------------------------------------------------------------

OK, ERR_ARG, ERR_NOMEM, ERR_IO, ERR_FORMAT, ERR_SHAPE, ERR_UNSUPPORTED, ERR_NOT_FOUND = range(8)


class Error(Exception):
    """An error of the xattn library (base class of FormatError)."""


class FormatError(Error, ValueError):
    """A file is malformed: truncated, a bad header, bad offsets, or a tensor of the wrong size."""


lib.xattn_last_error.restype = C.c_char_p
lib.xattn_version.restype = C.c_char_p
lib.xattn_isa.restype = C.c_char_p
lib.xattn_set_isa.argtypes = [C.c_char_p]
lib.xattn_set_threads.argtypes = [C.c_int]
lib.xattn_get_threads.restype = C.c_int
lib.xattn_set_compute.argtypes = [C.c_int]
lib.xattn_set_compute.restype = C.c_int
lib.xattn_get_compute.restype = C.c_int


def last_error():
    return (lib.xattn_last_error() or b"").decode("utf-8", "replace")


def check(status, what=None):
    """Raises the Python exception of a failed call, with the library's message."""
    if status == OK:
        return
    msg = last_error() or f"xattn call failed (status {status})"
    if what and what not in msg:
        msg = f"{what}: {msg}"
    if status == ERR_IO:
        low = msg.lower()
        if "no such file" in low or "not found" in low or "cannot open" in low:
            raise FileNotFoundError(msg)
        raise OSError(msg)
    if status == ERR_FORMAT:
        raise FormatError(msg)
    if status == ERR_NOMEM:
        raise MemoryError(msg)
    if status == ERR_NOT_FOUND:
        raise KeyError(msg)
    if status == ERR_UNSUPPORTED:
        raise NotImplementedError(msg)
    raise ValueError(msg)  # ERR_ARG, ERR_SHAPE: bad options, shapes or arguments

# ---- arrays -----------------------------------------------------------------------------------


def as_float32(label, a, strided=False):
    """a as float32, as it is (no copy) when it already is one laid out as the library reads it
    -- C-contiguous, or with strided=True any non-negative element strides and a contiguous last
    axis -- else converted from a float array; anything else raises ValueError naming label."""
    import numpy as np
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise ValueError(f"{label} is {a.dtype}; expected a float array (float32 is used in "
                         "place, other float types are converted)")
    if a.dtype == np.float32:
        if a.flags.c_contiguous:
            return a
        if (strided and a.ndim and (a.strides[-1] == 4 or a.shape[-1] <= 1)
                and all(s >= 0 and s % 4 == 0 for s in a.strides)):
            return a
    return np.ascontiguousarray(a, dtype=np.float32)

# ---- structs ----------------------------------------------------------------------------------

MAX_DIMS = 8
F32, F64, F16, BF16, BOOL, U8, I8, I16, I32, I64 = range(10)


class Tensor(C.Structure):
    _fields_ = [("name", C.c_char_p), ("dtype", C.c_int), ("ndim", C.c_int),
                ("shape", C.c_int64 * MAX_DIMS), ("data", C.c_void_p)]


class IoDesc(C.Structure):
    _fields_ = [("name", C.c_char_p), ("shape", C.c_char_p), ("optional", C.c_int),
                ("mask", C.c_int), ("additive", C.c_int), ("doc", C.c_char_p),
                ("parts", C.c_char_p), ("when_bound", C.c_int)]


class ParamDesc(C.Structure):
    _fields_ = [("name", C.c_char_p), ("ndim", C.c_int), ("shape", C.c_int64 * MAX_DIMS),
                ("data", C.POINTER(C.c_float)), ("stored_dtype", C.c_int)]


class ConfigEntry(C.Structure):
    _fields_ = [("name", C.c_char_p), ("value", C.c_char_p), ("source", C.c_char_p),
                ("detail", C.c_char_p), ("doc", C.c_char_p)]


class AliasDesc(C.Structure):
    _fields_ = [("alias", C.c_char_p), ("name", C.c_char_p), ("as_", C.c_char_p)]


class Option(C.Structure):
    _fields_ = [("name", C.c_char_p), ("value", C.c_char_p)]


class OpenOpts(C.Structure):
    _fields_ = [("kind", C.c_char_p), ("prefix", C.c_char_p), ("options", C.POINTER(Option)),
                ("n_options", C.c_size_t), ("weights", C.c_int64), ("reserved_", C.c_uint64 * 3)]


class SdpaParams(C.Structure):
    _fields_ = [("B", C.c_int64), ("H", C.c_int64), ("I", C.c_int64), ("J", C.c_int64),
                ("dh", C.c_int64), ("dv", C.c_int64),
                ("q", C.c_void_p), ("q_sb", C.c_int64), ("q_sh", C.c_int64), ("q_si", C.c_int64),
                ("k", C.c_void_p), ("k_sb", C.c_int64), ("k_sh", C.c_int64), ("k_sj", C.c_int64),
                ("v", C.c_void_p), ("v_sb", C.c_int64), ("v_sh", C.c_int64), ("v_sj", C.c_int64),
                ("out", C.c_void_p), ("o_sb", C.c_int64), ("o_sh", C.c_int64),
                ("o_si", C.c_int64),
                ("has_scale", C.c_int), ("scale", C.c_float),
                ("mask", C.c_void_p), ("mask_sb", C.c_int64), ("mask_sh", C.c_int64),
                ("mask_si", C.c_int64),
                ("bias", C.c_void_p), ("bias_sb", C.c_int64), ("bias_sh", C.c_int64),
                ("bias_si", C.c_int64),
                ("causal", C.c_int), ("fill", C.c_int), ("lse", C.c_void_p),
                ("probs", C.c_void_p), ("causal_offset", C.c_int64)]


class SdpaGrads(C.Structure):
    _fields_ = [("dout", C.c_void_p), ("do_sb", C.c_int64), ("do_sh", C.c_int64),
                ("do_si", C.c_int64),
                ("dq", C.c_void_p), ("dq_sb", C.c_int64), ("dq_sh", C.c_int64),
                ("dq_si", C.c_int64),
                ("dk", C.c_void_p), ("dk_sb", C.c_int64), ("dk_sh", C.c_int64),
                ("dk_sj", C.c_int64),
                ("dv", C.c_void_p), ("dv_sb", C.c_int64), ("dv_sh", C.c_int64),
                ("dv_sj", C.c_int64),
                ("dbias", C.c_void_p), ("dbias_sb", C.c_int64), ("dbias_sh", C.c_int64),
                ("dbias_si", C.c_int64),
                ("accumulate", C.c_int), ("reserved_", C.c_uint64 * 4)]


def _proto(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


P = C.c_void_p
_proto("xattn_st_open", C.c_int, C.c_char_p, C.POINTER(P))
_proto("xattn_st_close", None, P)
_proto("xattn_st_meta_get", C.c_char_p, P, C.c_char_p)
_proto("xattn_module_open", C.c_int, P, C.POINTER(OpenOpts), C.POINTER(P))
_proto("xattn_module_create", C.c_int, C.c_char_p, C.POINTER(Option), C.c_size_t, C.c_uint64,
       C.POINTER(P))
_proto("xattn_module_save", C.c_int, P, C.c_char_p)
_proto("xattn_module_free", None, P)
_proto("xattn_module_kind", C.c_char_p, P)
_proto("xattn_module_prefix", C.c_char_p, P)
_proto("xattn_module_warnings", C.c_char_p, P)
_proto("xattn_module_config_count", C.c_size_t, P)
_proto("xattn_module_config", C.c_int, P, C.c_size_t, C.POINTER(ConfigEntry))
_proto("xattn_module_param_count", C.c_size_t, P)
_proto("xattn_module_param", C.c_int, P, C.c_size_t, C.POINTER(ParamDesc))
_proto("xattn_module_param_read", C.c_int, P, C.c_size_t, C.POINTER(C.c_float))
_proto("xattn_module_param_kept", C.c_int, P, C.c_size_t)
_proto("xattn_module_weights", C.c_int, P)
_proto("xattn_weights_name", C.c_char_p, C.c_int)
_proto("xattn_weights_parse", C.c_int, C.c_char_p)
_proto("xattn_module_input_count", C.c_size_t, P)
_proto("xattn_module_input", C.c_int, P, C.c_size_t, C.POINTER(IoDesc))
_proto("xattn_module_output_count", C.c_size_t, P)
_proto("xattn_module_output", C.c_int, P, C.c_size_t, C.POINTER(IoDesc))
_proto("xattn_module_plan", C.c_int, P, C.POINTER(Tensor), C.c_size_t, C.POINTER(Tensor),
       C.c_size_t)
_proto("xattn_module_forward", C.c_int, P, P, C.POINTER(Tensor), C.c_size_t, C.POINTER(Tensor),
       C.c_size_t)
_proto("xattn_module_grad", C.c_int, P, P, C.POINTER(Tensor), C.c_size_t, C.POINTER(Tensor),
       C.c_size_t, C.POINTER(Tensor), C.c_size_t, C.POINTER(Tensor), C.c_size_t,
       C.POINTER(C.POINTER(C.c_float)))
_proto("xattn_module_mse_grad", C.c_int, P, P, C.POINTER(Tensor), C.c_size_t, C.POINTER(Tensor),
       C.c_size_t, C.POINTER(C.c_double), C.POINTER(Tensor), C.c_size_t,
       C.POINTER(C.POINTER(C.c_float)))
_proto("xattn_kind_has_backward", C.c_int, C.c_char_p)
_proto("xattn_kind_alias", C.c_int, C.c_char_p, C.c_size_t, C.POINTER(AliasDesc))
_proto("xattn_sdpa", C.c_int, C.POINTER(SdpaParams))
_proto("xattn_sdpa_backward", C.c_int, C.POINTER(SdpaParams), C.POINTER(SdpaGrads))


def weights_code(weights):
    """The xattn_weights value of a name ("auto", "f32", "bf16", "f16", "int8"; "float32",
    "bfloat16", "float16" too); ValueError naming the choices otherwise."""
    if not isinstance(weights, str):
        raise ValueError(f"weights: expected 'auto', 'f32', 'bf16', 'f16' or 'int8', got "
                         f"{weights!r}")
    w = lib.xattn_weights_parse(weights.encode())
    if w < 0:
        raise ValueError(f"weights: expected 'auto', 'f32', 'bf16', 'f16' or 'int8', got "
                         f"{weights!r}")
    return w
