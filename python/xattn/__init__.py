"""xattn: the cross-attention family of multimodal fusion, exact to PyTorch, from Python.

    import xattn
    m = xattn.load("model.safetensors")          # the module kind detected from the names
    y = m(x, context)                            # numpy in, a dict of numpy arrays out
"""
from ._lib import Error, FormatError, lib as _clib
from ._attention import bidirectional_attention, sdpa
from ._generate import LanguageModel, load_lm
from ._module import IoSpec, Module, create, load
from .export import export

__version__ = _clib.xattn_version().decode()


def set_threads(n):
    """Threads of the library's kernels (0: the default, OMP_NUM_THREADS or every core)."""
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"set_threads: {n!r} is not a non-negative integer")
    _clib.xattn_set_threads(n)


def get_threads():
    """Threads the kernels use."""
    return _clib.xattn_get_threads()


def set_compute(kind):
    """The type the modules' products compute in: "f32" (the default) or "bf16" (operands of
    the linear layers and of attention's queries, keys and values rounded to bfloat16, float32
    accumulation; softmax, norms and outputs float32; inference only: .grad() refuses it)."""
    codes = {"f32": 0, "bf16": 1}
    if kind not in codes:
        raise ValueError(f"set_compute: expected 'f32' or 'bf16', got {kind!r}")
    _clib.xattn_set_compute(codes[kind])


def get_compute():
    """"f32" or "bf16" (set_compute)."""
    return "bf16" if _clib.xattn_get_compute() == 1 else "f32"


def kernel_set():
    """The kernel set chosen for this CPU ("amx", "avx512bf16", "avx512", "avx2", "neon" or "scalar")."""
    return _clib.xattn_isa().decode()


def set_kernel_set(name):
    """Forces a kernel set ("auto", "scalar", "avx2", "avx512", "avx512bf16", "amx", "neon"); ValueError if the CPU lacks it."""
    from ._lib import check
    check(_clib.xattn_set_isa(name.encode()), "set_kernel_set")


__all__ = ["Error", "FormatError", "IoSpec", "LanguageModel", "Module",
           "bidirectional_attention", "create", "export", "load", "load_lm", "sdpa", "set_threads", "get_threads", "set_compute", "get_compute", "kernel_set",
           "set_kernel_set",
           "__version__"]
