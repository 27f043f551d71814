"""Checked access to ggml's tensor struct, which the binding does not declare: lfmq reads it in the evaluation
callback (importance matrices) and in the GGUF index. The layout below is the vendored ggml's; on first use it is
checked against the library itself (the struct's size, the offsets of its name and dims, a tensor made by ggml)
and a mismatch is a clear LibraryMismatchError instead of a crash inside a C callback."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from typing import Any, Callable

from lfmq.errors import LibraryMismatchError
from lfmq.llama.binding import ggml_lib, lib
from lfmq.llama.settings import BINDING_VERSION

GGML_OBJECT_SIZE = 32  # struct ggml_object: offs, size, next, type + padding; ggml_tensor_overhead adds it


class GGMLTensor(ctypes.Structure):
    """struct ggml_tensor of the vendored ggml (GGML_MAX_DIMS 4, GGML_MAX_SRC 10, op params 64 B, name 64 B)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4),
        ("nb", ctypes.c_size_t * 4),
        ("op", ctypes.c_int),
        ("op_params", ctypes.c_int32 * 16),
        ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10),
        ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t),
        ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64),
        ("extra", ctypes.c_void_p),
        ("padding", ctypes.c_char * 8),
    ]


class _InitParams(ctypes.Structure):
    _fields_ = [("mem_size", ctypes.c_size_t), ("mem_buffer", ctypes.c_void_p), ("no_alloc", ctypes.c_bool)]


def _declare(g: Any) -> None:
    g.ggml_tensor_overhead.restype, g.ggml_tensor_overhead.argtypes = ctypes.c_size_t, []
    g.ggml_init.restype, g.ggml_init.argtypes = ctypes.c_void_p, [_InitParams]
    g.ggml_free.restype, g.ggml_free.argtypes = None, [ctypes.c_void_p]
    g.ggml_new_tensor_2d.restype = ctypes.c_void_p
    g.ggml_new_tensor_2d.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    g.ggml_set_name.restype, g.ggml_set_name.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]
    g.ggml_get_name.restype, g.ggml_get_name.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
    g.ggml_op_name.restype, g.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]


def layout_problems(g: Any) -> list[str]:
    """What disagrees between GGMLTensor and the library's struct ggml_tensor (empty when they agree)."""
    problems = []
    size = int(g.ggml_tensor_overhead()) - GGML_OBJECT_SIZE
    if size != ctypes.sizeof(GGMLTensor):
        problems.append(f"sizeof(ggml_tensor) is {size} bytes, lfmq expects {ctypes.sizeof(GGMLTensor)}")
    ctx = g.ggml_init(_InitParams(1 << 16, None, True))
    if not ctx:
        return problems + ["ggml_init failed"]
    try:
        ptr = g.ggml_new_tensor_2d(ctx, 0, 7, 5)  # GGML_TYPE_F32, ne = [7, 5]
        g.ggml_set_name(ptr, b"lfmq-probe")
        t = GGMLTensor.from_address(ptr)
        if g.ggml_get_name(ptr) - ptr != GGMLTensor.name.offset:
            problems.append(f"ggml_tensor.name is at offset {g.ggml_get_name(ptr) - ptr}, lfmq expects "
                            f"{GGMLTensor.name.offset}")
        elif t.name != b"lfmq-probe" or list(t.ne) != [7, 5, 1, 1] or list(t.nb)[:2] != [4, 28] or t.type != 0:
            problems.append(f"a probe tensor reads back as name={t.name!r} ne={list(t.ne)} nb={list(t.nb)}")
    finally:
        g.ggml_free(ctx)
    return problems


@lru_cache(maxsize=1)
def checked() -> Any:
    """The ggml library, once its tensor struct has been checked against GGMLTensor."""
    lib()  # the binding's version check comes first
    g = ggml_lib()
    _declare(g)
    problems = layout_problems(g)
    if problems:
        raise LibraryMismatchError(f"this ggml's tensor struct is not the one lfmq reads ({'; '.join(problems)}): "
                                   f"install llama-cpp-python {BINDING_VERSION} with scripts/install-llama-cpp-python.sh")
    return g


def tensor_at(ptr: int) -> GGMLTensor:
    """The ggml tensor at a C address, read through the checked layout."""
    checked()
    return GGMLTensor.from_address(ptr)


def op_namer() -> Callable[[int], str]:
    """ggml_op_name from the library, cached per op value (no hard-coded enum numbers)."""
    g = checked()
    cache: dict[int, str] = {}
    return lambda op: cache.setdefault(op, g.ggml_op_name(op).decode())


def eval_callback(fn: Callable[[int, bool, Any], bool]) -> Any:
    """Wrap `fn(tensor_ptr, ask, user_data) -> bool` as llama.cpp's scheduler evaluation callback (cb_eval).
    The struct is checked before the callback can ever be called."""
    checked()
    return lib().ggml_backend_sched_eval_callback(fn)
