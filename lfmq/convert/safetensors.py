"""Torch-free safetensors: read headers, memory-map the data and hand out one tensor at a time as numpy."""

from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from lfmq.errors import CheckpointError

# safetensors dtype -> (numpy storage dtype, bytes per element); BF16 is stored as uint16 and widened on read
DTYPES: dict[str, tuple[np.dtype, int]] = {
    "F32": (np.dtype("<f4"), 4),
    "F16": (np.dtype("<f2"), 2),
    "BF16": (np.dtype("<u2"), 2),
}
MAX_HEADER = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorRef:
    """Where one tensor lives: file, dtype, shape and byte range inside the data section."""

    name: str
    path: Path
    dtype: str
    shape: tuple[int, ...]
    start: int  # absolute file offset
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.start


def read_header(path: Path) -> dict[str, TensorRef]:
    """Parse one safetensors file's header, checking that every range lies inside the file."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path.name} is not a safetensors file (too short): re-download it")
        (n,) = struct.unpack("<Q", raw)
        if n > MAX_HEADER or 8 + n > size:
            raise CheckpointError(f"{path.name} is not a safetensors file or is truncated: re-download it")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{path.name} has a corrupt safetensors header: re-download it") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path.name} has a corrupt safetensors header: re-download it")
    refs = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        refs[name] = _ref(path, name, info, 8 + n, size)
    return refs


def _ref(path: Path, name: str, info: dict, base: int, size: int) -> TensorRef:
    try:
        dtype, shape, (lo, hi) = info["dtype"], tuple(int(d) for d in info["shape"]), info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise CheckpointError(f"{path.name}: tensor {name} has a corrupt header entry: re-download the file") from None
    if dtype not in DTYPES:
        raise CheckpointError(
            f"{path.name}: tensor {name} is {dtype}; lfmq reads BF16, F16 and F32 checkpoints "
            "(a pre-quantized checkpoint cannot be converted)"
        )
    want = DTYPES[dtype][1] * int(np.prod(shape, dtype=np.int64))
    if hi - lo != want or base + hi > size or lo < 0:
        raise CheckpointError(f"{path.name} is truncated or corrupt (tensor {name} lies outside the file): re-download it")
    return TensorRef(name, path, dtype, shape, base + lo, base + hi)


class SafetensorsReader:
    """All tensors of a checkpoint (one file or shards), memory-mapped lazily, closed on exit."""

    def __init__(self, files: list[Path]):
        self.refs: dict[str, TensorRef] = {}
        for path in files:
            for name, ref in read_header(path).items():
                if name in self.refs:
                    raise CheckpointError(f"tensor {name} appears in two shards ({self.refs[name].path.name}, {path.name})")
                self.refs[name] = ref
        self._maps: dict[Path, mmap.mmap] = {}

    def __enter__(self) -> SafetensorsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for m in self._maps.values():
            m.close()
        self._maps.clear()

    def _map(self, path: Path) -> mmap.mmap:
        if path not in self._maps:
            with open(path, "rb") as f:
                self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return self._maps[path]

    def raw(self, name: str) -> np.ndarray:
        """The stored array without conversion (BF16 as uint16), a view on the memory map."""
        ref = self.refs[name]
        np_dtype = DTYPES[ref.dtype][0]
        buf = self._map(ref.path)
        return np.frombuffer(buf, dtype=np_dtype, count=ref.nbytes // np_dtype.itemsize, offset=ref.start).reshape(ref.shape)

    def float32(self, name: str) -> np.ndarray:
        """The tensor widened to float32 exactly (BF16 is the top half of an F32)."""
        return to_float32(self.raw(name))

    def release(self, name: str, start: int = 0, end: int | None = None) -> None:
        """Drop bytes [start, end) of a tensor from this process's resident set once written (the pages stay in the
        page cache and fault back in if read again), so peak memory stays near one chunk, not the checkpoint."""
        ref = self.refs[name]
        m = self._maps.get(ref.path)
        if m is None or not hasattr(mmap, "MADV_DONTNEED"):
            return
        lo = ref.start + start
        lo -= lo % mmap.PAGESIZE
        hi = ref.end if end is None else ref.start + end
        if hi > lo:
            m.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    def iter_names(self) -> Iterator[str]:
        return iter(self.refs)


def to_float32(arr: np.ndarray) -> np.ndarray:
    """Widen stored values to float32 exactly; uint16 storage means BF16 (the top half of an F32)."""
    if arr.dtype == np.uint16:
        return (arr.astype(np.uint32) << 16).view(np.float32)
    return arr.astype(np.float32)
