"""llama.cpp's quantizer, in process: the ftype and tensor-type tables from the binding's enums, the parameter
struct with the C arrays it points to, and the call itself with llama.cpp's log captured."""

from __future__ import annotations

import ctypes
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable

from lfmq.llama import log as llama_log
from lfmq.llama.binding import lib


@lru_cache(maxsize=1)
def ftypes() -> dict[str, int]:
    """Every llama_ftype the binding exposes, by llama-quantize's name (Q4_K_M ...), in the binding's spelling."""
    L = lib()
    out = {}
    for attr in dir(L):
        if attr.startswith("LLAMA_FTYPE_"):
            out[attr.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")] = int(getattr(L, attr))
    return out


@lru_cache(maxsize=1)
def ggml_types() -> dict[str, int]:
    """ggml tensor types by upper-case name (F32, Q8_0 ...), for per-tensor type choices."""
    L = lib()
    return {a.removeprefix("GGML_TYPE_"): int(getattr(L, a)) for a in dir(L)
            if a.startswith("GGML_TYPE_") and a != "GGML_TYPE_COUNT"}


class QuantizeParams:
    """llama_model_quantize_params plus the C arrays it points to, kept alive for the call."""

    def __init__(self, threads: int | None, allow_requantize: bool, pure: bool, dry_run: bool):
        self.c = lib().llama_model_quantize_default_params()
        self.c.nthread = threads or 0
        self.c.allow_requantize = allow_requantize
        self.c.pure = pure
        self.c.dry_run = dry_run
        self._keep: list[Any] = []
        self._kv: dict[str, str | int | float] = {}

    @property
    def dry_run(self) -> bool:
        return bool(self.c.dry_run)

    def tensor_types(self, output: int | None, token_embedding: int | None, overrides: list[tuple[str, int]]) -> None:
        L = lib()
        if output is not None:
            self.c.output_tensor_type = output
        if token_embedding is not None:
            self.c.token_embedding_type = token_embedding
        if overrides:
            arr = (L.llama_model_tensor_override * (len(overrides) + 1))()
            for i, (pattern, ttype) in enumerate(overrides):
                arr[i].pattern, arr[i].type = pattern.encode(), ttype
            arr[len(overrides)].pattern, arr[len(overrides)].type = None, L.GGML_TYPE_COUNT
            self._keep.append(arr)
            self.c.tt_overrides = arr

    def imatrix(self, means: dict, kv: dict[str, str | int]) -> None:
        """Per-tensor mean squared activations, and the provenance keys llama-quantize writes with them."""
        L = lib()
        arr = (L.llama_model_imatrix_data * (len(means) + 1))()
        for i, (name, values) in enumerate(means.items()):
            arr[i].name = name.encode()
            arr[i].data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
            arr[i].size = values.size
        self._keep += [arr, means]
        self.c.imatrix = arr
        self.metadata(kv)

    def metadata(self, kv: dict[str, str | int | float]) -> None:
        """Keys written into the output's metadata (added to those already asked for; strings of at most 127 bytes)."""
        L = lib()
        self._kv = {**self._kv, **kv}
        overrides = (L.llama_model_kv_override * (len(self._kv) + 1))()
        for o, (key, value) in zip(overrides, self._kv.items()):
            o.key = key.encode()
            if isinstance(value, int):
                o.tag, o.value.val_i64 = L.LLAMA_KV_OVERRIDE_TYPE_INT, value
            elif isinstance(value, float):
                o.tag, o.value.val_f64 = L.LLAMA_KV_OVERRIDE_TYPE_FLOAT, value
            else:
                o.tag, o.value.val_str = L.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()[:127]
        self._keep.append(overrides)
        self.c.kv_overrides = overrides


def run_quantizer(src: Path, dst: Path | None, params: QuantizeParams, ftype: int,
                  on_line: Callable[[str], None] | None = None) -> tuple[int, llama_log.LlamaLog]:
    """llama_model_quantize(src -> dst) with `ftype`; returns its code and llama.cpp's whole log of the call."""
    params.c.ftype = ftype
    with llama_log.captured(on_line) as log:
        rc = lib().llama_model_quantize(str(src).encode(), str(dst).encode() if dst else b"", ctypes.byref(params.c))
    return int(rc), log
