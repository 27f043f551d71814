"""The tensor plan: which checkpoint tensor becomes which GGUF tensor, in which type, checked against the config."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from types import ModuleType
from typing import Iterator

import gguf
import numpy as np

from lfmq.convert.safetensors import SafetensorsReader, to_float32
from lfmq.errors import CheckpointError, UnsupportedModelError, UsageError

Q = gguf.GGMLQuantizationType
F = gguf.LlamaFileType
# --outtype -> (tensor type for the big matrices, general.file_type)
OUTTYPES: dict[str, tuple[Q, F]] = {
    "f32": (Q.F32, F.ALL_F32),
    "f16": (Q.F16, F.MOSTLY_F16),
    "bf16": (Q.BF16, F.MOSTLY_BF16),
    "q8_0": (Q.Q8_0, F.MOSTLY_Q8_0),
}
CHECKPOINT_OUTTYPE = {"F32": "f32", "F16": "f16", "BF16": "bf16"}
SOURCE_TYPES = {"F32": Q.F32, "F16": Q.F16, "BF16": Q.BF16}
# tensors llama.cpp wants in F32 whatever the file type: norms (1-D), the short-conv kernel (the CPU op asserts F32)
# and the MoE router (llama.cpp's converter and quantizer keep it F32)
ALWAYS_F32 = (gguf.MODEL_TENSOR.SHORTCONV_CONV, gguf.MODEL_TENSOR.FFN_GATE_INP)
CHUNK_ELEMENTS = 1 << 22  # rows are converted in chunks of about this many values: bounded memory


@dataclass(frozen=True, eq=False)
class LowRankDelta:
    """`scale * B @ A`, added to a weight while it streams (a merged LoRA). A [r, in], B [out, r], float32."""

    a: np.ndarray
    b: np.ndarray
    scale: float

    def rows(self, lo: int, hi: int) -> np.ndarray:
        return (self.b[lo:hi] @ self.a) * np.float32(self.scale)  # same order as peft: (B @ A) * scaling


@dataclass(frozen=True)
class TensorPlan:
    src: str                 # HF name (for a stacked tensor, the merged name llama.cpp's tensor map knows)
    name: str                # GGUF name
    shape: tuple[int, ...]   # torch order, after any squeeze; a stacked tensor has the part count first
    qtype: Q
    parts: tuple[str, ...] = ()       # HF tensors stacked along a new first axis, in order (MoE experts)
    delta: LowRankDelta | None = None  # a LoRA merged into this weight

    @property
    def nbytes(self) -> int:
        size, block = gguf.GGML_QUANT_SIZES[self.qtype]
        rows = int(np.prod(self.shape[:-1], dtype=np.int64))
        return rows * (self.shape[-1] // size) * block

    @property
    def n_params(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def sources(self) -> tuple[str, ...]:
        return self.parts or (self.src,)


def resolve_outtype(outtype: str, reader: SafetensorsReader) -> str:
    """`auto` keeps the checkpoint's precision (the embedding's dtype); anything else must be in OUTTYPES."""
    outtype = outtype.lower()
    if outtype == "auto":
        return CHECKPOINT_OUTTYPE[reader.refs["model.embed_tokens.weight"].dtype]
    if outtype not in OUTTYPES:
        raise UsageError(f"unknown --outtype {outtype!r}: choose auto, {', '.join(OUTTYPES)}")
    return outtype


def _tensor_type(name_map: gguf.TensorNameMap, gguf_name: str, shape: tuple[int, ...], outtype: str) -> Q:
    base = OUTTYPES[outtype][0]
    key = name_map.get_type(gguf_name.removesuffix(".weight"))
    if len(shape) <= 1 or gguf_name.endswith("_norm.weight") or key in ALWAYS_F32:
        return Q.F32
    if base == Q.Q8_0 and shape[-1] % gguf.GGML_QUANT_SIZES[Q.Q8_0][0]:
        return Q.F16  # rows that do not split into 32-value blocks cannot be Q8_0 (llama.cpp falls back the same way)
    return base


def plan(arch: ModuleType, hp, reader: SafetensorsReader, outtype: str) -> list[TensorPlan]:
    """Check every tensor against the config and decide its GGUF name and type; reads headers only."""
    refs = reader.refs
    n_ff = _ffn_width(hp, refs)
    shapes = arch.expected_shapes(hp, n_ff)
    _check_head(arch, hp, refs, shapes)
    missing = [n for n in shapes if n not in refs]
    if missing:
        raise CheckpointError(f"checkpoint is missing tensor {missing[0]} ({len(missing)} missing in all): is it complete?")
    for src, want in shapes.items():
        if refs[src].shape != want:
            raise CheckpointError(f"tensor {src} has shape {list(refs[src].shape)} but config.json implies {list(want)}")
    unused = sorted(set(refs) - set(shapes) - {"lm_head.weight"})
    if unused:
        raise CheckpointError(f"checkpoint has tensor {unused[0]} that {arch.ARCHITECTURES[0]} does not use: "
                              "is this another architecture?")
    name_map = gguf.TensorNameMap(arch.GGUF_ARCH, hp.n_layer)
    groups = arch.stacked(hp)
    group_of = {part: merged for merged, parts in groups.items() for part in parts}
    plans = []
    for src, want in shapes.items():
        merged = group_of.get(src)
        if merged is not None:
            parts = groups[merged]
            if src != parts[0]:
                continue  # a stacked tensor takes its place at its first part, in layer order
            src, want = merged, (len(parts), *want)  # [n_expert, rows, cols]
        shape = want[:1] + want[2:] if src.endswith("conv.conv.weight") else want  # [E,1,L] -> [E,L]
        name = _gguf_name(name_map, src)
        plans.append(TensorPlan(src, name, shape, _tensor_type(name_map, name, shape, outtype),
                                parts=groups[merged] if merged else ()))
    return plans


def _check_head(arch: ModuleType, hp, refs: dict, shapes: dict[str, tuple[int, ...]]) -> None:
    """Tied (no lm_head), a redundant copy of the tied head (dropped), or untied (output.weight, where the graph has one)."""
    has_head = "lm_head.weight" in refs
    if not has_head and hp.tied is False:
        raise CheckpointError("config.json says the embeddings are untied but the checkpoint has no lm_head.weight")
    if not has_head or hp.tied is True:
        return  # a redundant copy of the tied head: llama.cpp reuses the embedding
    if arch.UNTIED_HEAD_REFUSAL:
        raise UnsupportedModelError(arch.UNTIED_HEAD_REFUSAL)
    shapes["lm_head.weight"] = (hp.n_vocab, hp.n_embd)


def _gguf_name(name_map: gguf.TensorNameMap, src: str) -> str:
    # a checkpoint buffer without a .weight/.bias suffix (the MoE expert_bias) is a bias in llama.cpp's naming
    key = src if src.endswith((".weight", ".bias")) else src + ".bias"
    name = name_map.get_name(key, try_suffixes=(".weight", ".bias"))
    if name is None:
        raise CheckpointError(f"no GGUF name for tensor {src}")
    return name


def _ffn_width(hp, refs: dict) -> int:
    if not hp.dense_ffn_layers:
        return hp.n_ff  # every block is MoE: no dense FFN tensor to read the width from
    first = f"model.layers.{hp.dense_ffn_layers[0]}.feed_forward.w1.weight"
    ref = refs.get(first)
    if ref is None:
        raise CheckpointError(f"checkpoint is missing tensor {first}: is it complete?")
    if ref.shape[0] not in hp.n_ff_candidates:
        raise CheckpointError(
            f"tensor {first} has {ref.shape[0]} rows but config.json implies an FFN width of {hp.n_ff}"
        )
    return int(ref.shape[0])


@lru_cache(maxsize=1)
def _bf16_to_f16() -> np.ndarray:
    """Every bfloat16 bit pattern's float16: one table lookup instead of widening to F32 and narrowing again."""
    with np.errstate(over="ignore"):
        return (np.arange(1 << 16, dtype=np.uint32) << 16).view(np.float32).astype(np.float16)


def _convert(part: np.ndarray, src_dtype: str, qtype: Q) -> np.ndarray:
    if SOURCE_TYPES[src_dtype] == qtype:
        return part  # exact copy: no float round trip
    if src_dtype == "BF16" and qtype == Q.F16:
        return _bf16_to_f16()[part]  # same bits as to_float32(part).astype(np.float16), in one pass
    return gguf.quants.quantize(to_float32(part), qtype)


def chunks(reader: SafetensorsReader, p: TensorPlan) -> Iterator[np.ndarray]:
    """The converted tensor data, row chunk by row chunk (a chunk is whole rows, so block types split cleanly);
    each chunk's source pages are released once the consumer has taken it. A stacked tensor streams its parts one
    after another: stacking along the first axis is concatenating their bytes, so no part is held twice."""
    for src in p.sources:
        yield from _part_chunks(reader, src, p.shape[1:] if p.parts else p.shape, p)


def _part_chunks(reader: SafetensorsReader, src: str, shape: tuple[int, ...], p: TensorPlan) -> Iterator[np.ndarray]:
    dtype = reader.refs[src].dtype
    flat = reader.raw(src).reshape(shape)
    rows = flat.reshape(-1, shape[-1]) if flat.ndim > 1 else flat.reshape(1, -1)
    step = max(1, CHUNK_ELEMENTS // rows.shape[1])
    row_bytes = rows.shape[1] * rows.itemsize
    for lo in range(0, rows.shape[0], step):
        hi = min(lo + step, rows.shape[0])
        if p.delta is None:
            yield _convert(rows[lo:hi], dtype, p.qtype)
        else:
            merged = to_float32(rows[lo:hi]) + p.delta.rows(lo, hi)
            yield merged if p.qtype == Q.F32 else gguf.quants.quantize(merged, p.qtype)
        reader.release(src, lo * row_bytes, hi * row_bytes)
