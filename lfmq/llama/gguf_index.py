"""A GGUF's metadata and tensor index read by llama.cpp's own parser (gguf_init_from_file in libggml-base), in
milliseconds. gguf.GGUFReader also builds Python objects for every token and merge of the vocabulary (about 2.3 s
for a 65,536-token model): `lfmq inspect` needs those; loading, evaluating, quantizing and benchmarking do not."""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import gguf

from lfmq.errors import GGUFFileError, ModelNotFoundError
from lfmq.llama.ggml import GGMLTensor, checked


class _InitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.POINTER(ctypes.c_void_p))]


@dataclass(frozen=True)
class TensorEntry:
    shape: tuple[int, ...]  # GGUF order: shape[0] is the row length
    type: str               # GGMLQuantizationType name
    nbytes: int


@dataclass(frozen=True)
class TensorIndex:
    tensors: dict[str, TensorEntry]
    data_offset: int        # where tensor data starts: the size of metadata and index, aligned
    meta: dict[str, Any]    # every key but the long arrays (tokens, merges): scalars, strings, short numeric arrays

    def get(self, key: str, default: Any = None) -> Any:
        return self.meta.get(key, default)

    @property
    def n_params(self) -> int:
        return sum(math.prod(t.shape) for t in self.tensors.values())

    @property
    def tensor_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())


@lru_cache(maxsize=1)
def _lib() -> Any:
    lib = checked()
    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, _InitParams]
    for name, res in (("gguf_get_n_tensors", ctypes.c_int64), ("gguf_get_data_offset", ctypes.c_size_t)):
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, [ctypes.c_void_p]
    lib.gguf_get_tensor_name.restype, lib.gguf_get_tensor_name.argtypes = ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_int64]
    lib.gguf_get_tensor_size.restype, lib.gguf_get_tensor_size.argtypes = ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_int64]
    lib.ggml_get_tensor.restype, lib.ggml_get_tensor.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_char_p]
    lib.gguf_free.argtypes = lib.ggml_free.argtypes = [ctypes.c_void_p]
    lib.gguf_get_n_kv.restype, lib.gguf_get_n_kv.argtypes = ctypes.c_int64, [ctypes.c_void_p]
    for name, res in (("gguf_get_key", ctypes.c_char_p), ("gguf_get_val_str", ctypes.c_char_p),
                      ("gguf_get_kv_type", ctypes.c_int), ("gguf_get_arr_type", ctypes.c_int),
                      ("gguf_get_arr_n", ctypes.c_size_t), ("gguf_get_val_data", ctypes.c_void_p),
                      ("gguf_get_arr_data", ctypes.c_void_p)):
        getattr(lib, name).restype, getattr(lib, name).argtypes = res, [ctypes.c_void_p, ctypes.c_int64]
    return lib


V = gguf.GGUFValueType
_CTYPES = {V.UINT8: ctypes.c_uint8, V.INT8: ctypes.c_int8, V.UINT16: ctypes.c_uint16, V.INT16: ctypes.c_int16,
           V.UINT32: ctypes.c_uint32, V.INT32: ctypes.c_int32, V.FLOAT32: ctypes.c_float, V.BOOL: ctypes.c_bool,
           V.UINT64: ctypes.c_uint64, V.INT64: ctypes.c_int64, V.FLOAT64: ctypes.c_double}
MAX_ARRAY = 4096  # numeric arrays up to this length are read (per-layer values); token lists are skipped


def _value(lib: Any, ctx: int, i: int) -> Any:
    """One key's value as Python data, or None for a long array."""
    vtype = V(lib.gguf_get_kv_type(ctx, i))
    if vtype == V.STRING:
        return lib.gguf_get_val_str(ctx, i).decode("utf-8", errors="replace")
    if vtype != V.ARRAY:
        return _CTYPES[vtype].from_address(lib.gguf_get_val_data(ctx, i)).value
    atype, n = V(lib.gguf_get_arr_type(ctx, i)), lib.gguf_get_arr_n(ctx, i)
    if atype not in _CTYPES or n > MAX_ARRAY:
        return None
    return list((_CTYPES[atype] * n).from_address(lib.gguf_get_arr_data(ctx, i)))


def tensor_index(path: str | Path) -> TensorIndex:
    """Metadata and tensor names, shapes, types and sizes of a GGUF, with clear errors for a missing, foreign or
    damaged file."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    with open(path, "rb") as f:
        if f.read(4) != b"GGUF":
            raise GGUFFileError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    lib = _lib()
    ggml_ctx = ctypes.c_void_p()
    ctx = lib.gguf_init_from_file(str(path).encode(), _InitParams(True, ctypes.pointer(ggml_ctx)))
    if not ctx:
        raise GGUFFileError(f"{path} is truncated or corrupt: re-create or re-download it")
    try:
        tensors = {}
        for i in range(lib.gguf_get_n_tensors(ctx)):
            name = lib.gguf_get_tensor_name(ctx, i)
            t = GGMLTensor.from_address(lib.ggml_get_tensor(ggml_ctx, name))
            n_dims = max([d + 1 for d in range(4) if t.ne[d] > 1] or [1])
            tensors[name.decode()] = TensorEntry(tuple(int(t.ne[d]) for d in range(n_dims)),
                                                 gguf.GGMLQuantizationType(t.type).name, int(lib.gguf_get_tensor_size(ctx, i)))
        offset = int(lib.gguf_get_data_offset(ctx))
        meta = {lib.gguf_get_key(ctx, i).decode(): _value(lib, ctx, i) for i in range(lib.gguf_get_n_kv(ctx))}
    finally:
        lib.gguf_free(ctx)
        lib.ggml_free(ggml_ctx)
    if offset + sum(-(-t.nbytes // 32) * 32 for t in tensors.values()) > path.stat().st_size + 32:
        raise GGUFFileError(f"{path} is truncated (its tensor data runs past the end of the file): re-create it")
    return TensorIndex(tensors, offset, {k: v for k, v in meta.items() if v is not None})
