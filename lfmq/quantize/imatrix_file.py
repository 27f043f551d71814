"""Importance matrix files: llama.cpp's GGUF format (`<tensor>.in_sum2`, `<tensor>.counts`) and its legacy .dat."""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from lfmq.atomic import atomic_path
from lfmq.errors import GGUFFileError, ImatrixError, ModelNotFoundError

IN_SUM2, COUNTS = ".in_sum2", ".counts"



@dataclass
class Imatrix:
    """Per weight: summed squared input activations per column, per matrix (experts), and the token counts."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)    # name -> float32 [n_mat, n_cols]
    counts: dict[str, np.ndarray] = field(default_factory=dict)  # name -> float32 [n_mat]
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What the quantizer takes: mean squared activation per column (1 where a matrix saw no tokens)."""
        out = {}
        for name, s in self.sums.items():
            c = self.counts[name][:, None]
            out[name] = np.where(c > 0, s / np.maximum(c, 1), 1.0).astype(np.float32).ravel()
        return out


def write_imatrix(im: Imatrix, path: Path, force: bool = False) -> int:
    """Write the GGUF form llama-imatrix writes and llama-quantize reads; returns the file size."""
    with atomic_path(path, force) as tmp:
        w = gguf.GGUFWriter(tmp, arch="imatrix")
        del w.kv_data[0][gguf.Keys.General.ARCHITECTURE]  # llama-imatrix's files have no architecture
        w.add_type(gguf.GGUFType.IMATRIX)
        w.add_array(gguf.Keys.IMatrix.DATASETS, im.datasets or ["unknown"])
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_COUNT, im.chunk_count)
        w.add_uint32(gguf.Keys.IMatrix.CHUNK_SIZE, im.chunk_size)
        for name in sorted(im.sums):
            w.add_tensor(name + IN_SUM2, np.ascontiguousarray(im.sums[name], dtype=np.float32))
            w.add_tensor(name + COUNTS, np.ascontiguousarray(im.counts[name], dtype=np.float32).reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    return path.stat().st_size


def read_imatrix(path: str | Path) -> Imatrix:
    """Read an importance matrix made by lfmq or by llama-imatrix (GGUF, or the legacy .dat format)."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"imatrix file {path} does not exist")
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_gguf(path) if magic == b"GGUF" else _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    from lfmq.inspect import field_value, open_gguf

    try:
        reader = open_gguf(path)
    except GGUFFileError as e:
        raise ImatrixError(str(e)) from None
    im = Imatrix(
        datasets=list(field_value(reader, gguf.Keys.IMatrix.DATASETS, []) or []),
        chunk_count=int(field_value(reader, gguf.Keys.IMatrix.CHUNK_COUNT, 0) or 0),
        chunk_size=int(field_value(reader, gguf.Keys.IMatrix.CHUNK_SIZE, 0) or 0),
    )
    tensors = {t.name: t for t in reader.tensors}
    for name, t in tensors.items():
        if not name.endswith(IN_SUM2):
            continue
        base = name.removesuffix(IN_SUM2)
        counts = tensors.get(base + COUNTS)
        if counts is None:
            raise ImatrixError(f"{path}: {name} has no matching {base + COUNTS}: not an importance matrix file")
        n_mat = int(counts.n_elements)
        im.sums[base] = np.array(t.data, dtype=np.float32).reshape(n_mat, -1)
        im.counts[base] = np.array(counts.data, dtype=np.float32).reshape(n_mat)
    if not im.sums:
        raise ImatrixError(f"{path} holds no importance data (no <tensor>.in_sum2 entries)")
    return im


def _read_legacy(path: Path) -> Imatrix:
    """llama-imatrix's .dat: entries of (name, ncall, values = mean*ncall), then chunk count and dataset."""
    data = path.read_bytes()
    im = Imatrix()
    try:
        (n,), pos = struct.unpack_from("<i", data, 0), 4
        if n < 1:
            raise ValueError
        for _ in range(n):
            (length,) = struct.unpack_from("<i", data, pos)
            name = data[pos + 4 : pos + 4 + length].decode()
            ncall, nval = struct.unpack_from("<ii", data, pos + 4 + length)
            pos += 12 + length
            values = np.frombuffer(data, dtype="<f4", count=nval, offset=pos)
            pos += 4 * nval
            im.sums[name] = values.reshape(1, -1).astype(np.float32)  # sums of means: counts are the calls
            im.counts[name] = np.array([max(ncall, 0)], dtype=np.float32)
        if pos < len(data):
            (im.chunk_count,) = struct.unpack_from("<i", data, pos)
            (length,) = struct.unpack_from("<i", data, pos + 4)
            if length > 0:
                im.datasets.append(data[pos + 8 : pos + 8 + length].decode())
    except (struct.error, ValueError, UnicodeDecodeError):
        raise ImatrixError(f"{path} is neither a GGUF nor a legacy .dat importance matrix") from None
    return im


def check_against_model(im: Imatrix, model_tensors: dict[str, tuple[int, ...]], path: Path) -> None:
    """Refuse an imatrix made for another model: every entry must be a model weight with as many columns."""
    matched = 0
    for name, sums in im.sums.items():
        shape = model_tensors.get(name)
        if shape is None:
            raise ImatrixError(
                f"imatrix {path.name} has an entry for {name}, which this model does not have: "
                "it was computed for another model"
            )
        if sums.shape[1] != shape[0]:  # GGUF order: shape[0] is the number of columns (inputs)
            raise ImatrixError(
                f"imatrix {path.name} has {sums.shape[1]} values for {name}, but the model's tensor has "
                f"{shape[0]} inputs: it was computed for another model"
            )
        matched += 1
    if not matched:
        raise ImatrixError(f"imatrix {path.name} has no entry for any weight of this model")
