"""`lfmq quantize`: GGUF -> quantized GGUFs through llama.cpp's own quantizer, in process."""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

from lfmq.atomic import atomic_path, check_target
from lfmq.errors import QuantizeError, UsageError
from lfmq.llama import log as llama_log
from lfmq.llama.quantizer import QuantizeParams, run_quantizer
from lfmq.llama.gguf_index import tensor_index
from lfmq.progress import Progress
from lfmq.quantize.imatrix_file import check_against_model, read_imatrix
from lfmq.quantize.types import QuantType, parse_quant_types, parse_tensor_overrides, parse_tensor_type

# the provenance keys llama-quantize writes when it uses an importance matrix
KEY_IMATRIX_FILE = "quantize.imatrix.file"
KEY_IMATRIX_DATASET = "quantize.imatrix.dataset"
KEY_IMATRIX_ENTRIES = "quantize.imatrix.entries_count"
KEY_IMATRIX_CHUNKS = "quantize.imatrix.chunks_count"
UNQUANTIZED = {"F32", "F16", "BF16"}
PROGRESS = re.compile(r"^\[\s*(\d+)/\s*(\d+)\]")


@dataclass(frozen=True)
class QuantizeResult:
    """One output of `quantize` (in a dry run: the size it would have, and no file)."""

    path: Path | None
    type: str
    bytes: int
    bits_per_weight: float
    seconds: float
    dry_run: bool = False


@dataclass(frozen=True)
class _Source:
    path: Path
    tensors: dict[str, tuple[int, ...]]   # GGUF-order shapes
    types: dict[str, str]
    n_params: int
    header_bytes: int                     # metadata and tensor index, up to the aligned data start


def _read_source(path: Path) -> _Source:
    index = tensor_index(path)
    tensors = {name: t.shape for name, t in index.tensors.items()}
    types = {name: t.type for name, t in index.tensors.items()}
    return _Source(path, tensors, types, index.n_params, index.data_offset)


def _check_requantize(src: _Source, allow: bool) -> None:
    quantized = sorted({t for t in src.types.values() if t not in UNQUANTIZED})
    if quantized and not allow:
        raise QuantizeError(
            f"{src.path.name} is already quantized ({', '.join(quantized)}): quantize from the F16/BF16/F32 "
            "conversion, or pass --allow-requantize (quality suffers)"
        )


def output_paths(src: Path, types: list[QuantType], output: str | Path | None) -> list[Path]:
    """`<stem>-<TYPE>.gguf` in DIR (the input's folder by default); a FILE only for a single type."""
    stem = re.sub(r"[-_.](f32|f16|bf16)$", "", src.stem, flags=re.IGNORECASE)
    if output is not None and str(output).lower().endswith(".gguf"):
        if len(types) > 1:
            raise UsageError(f"-o {output} names one file but {len(types)} types were asked for: give a folder")
        return [Path(output)]
    folder = Path(output) if output is not None else src.parent
    return [folder / f"{stem}-{t.name}.gguf" for t in types]


def _imatrix_params(params: QuantizeParams, src: _Source, path: str | Path) -> None:
    im = read_imatrix(path)
    check_against_model(im, src.tensors, Path(path))
    kv: dict[str, str | int] = {KEY_IMATRIX_FILE: str(path), KEY_IMATRIX_ENTRIES: len(im.sums)}
    if im.datasets:
        kv[KEY_IMATRIX_DATASET] = im.datasets[0]
    if im.chunk_count > 0:
        kv[KEY_IMATRIX_CHUNKS] = im.chunk_count
    params.imatrix(im.means(), kv)


def quantize(
    model: str | Path,
    types: str | list[str],
    output: str | Path | None = None,
    *,
    imatrix: str | Path | None = None,
    output_tensor_type: str | None = None,
    token_embedding_type: str | None = None,
    tensor_type: list[str] | None = None,
    pure: bool = False,
    threads: int | None = None,
    dry_run: bool = False,
    allow_requantize: bool = False,
    force: bool = False,
    progress: Progress | None = None,
) -> list[QuantizeResult]:
    """Quantize a GGUF to one or more types with llama.cpp's quantizer; every check runs before the first output."""
    qtypes = parse_quant_types(types if isinstance(types, str) else ",".join(types))
    params = QuantizeParams(threads, allow_requantize, pure, dry_run)
    params.tensor_types(
        parse_tensor_type(output_tensor_type, "--output-tensor-type") if output_tensor_type else None,
        parse_tensor_type(token_embedding_type, "--token-embedding-type") if token_embedding_type else None,
        parse_tensor_overrides(tensor_type or []),
    )
    needy = [t.name for t in qtypes if t.needs_imatrix]
    if needy and imatrix is None and not dry_run:
        raise QuantizeError(
            f"{', '.join(needy)} needs an importance matrix: make one with `lfmq imatrix MODEL.gguf` and pass --imatrix"
        )
    src = _read_source(Path(model))
    _check_requantize(src, allow_requantize)
    targets = output_paths(src.path, qtypes, output)
    if not dry_run:
        for target in targets:
            if target.resolve() == src.path.resolve():
                raise UsageError(f"the output {target} is the input: choose another name or folder")
            check_target(target, force)
    if imatrix is not None:
        _imatrix_params(params, src, imatrix)
    return [_run_one(src, qt, target, params, force, progress) for qt, target in zip(qtypes, targets)]


def _run_one(src: _Source, qt: QuantType, target: Path, params: QuantizeParams, force: bool,
             progress: Progress | None) -> QuantizeResult:
    started = time.perf_counter()

    def on_line(line: str) -> None:
        m = PROGRESS.match(line)
        if m and progress:
            progress(qt.name, int(m.group(1)), int(m.group(2)))

    if params.dry_run:
        rc, log = run_quantizer(src.path, None, params, qt.ftype, on_line)
        _raise_on_failure(rc, log, qt)
        size, data = dry_run_size(src, log.lines)
        return QuantizeResult(None, qt.name, size, 8 * data / src.n_params, time.perf_counter() - started, True)
    with atomic_path(target, force) as tmp:
        rc, log = run_quantizer(src.path, tmp, params, qt.ftype, on_line)
        _raise_on_failure(rc, log, qt)
    data = tensor_index(target).tensor_bytes
    return QuantizeResult(target.resolve(), qt.name, target.stat().st_size, 8 * data / src.n_params,
                          time.perf_counter() - started)


def _raise_on_failure(rc: int, log: llama_log.LlamaLog, qt: QuantType) -> None:
    if rc == 0:
        return
    reason = log.failure(f"llama_model_quantize returned {rc}")
    missing = next((line for _, line in log.lines if "Missing importance matrix for tensor" in line), None)
    if missing:
        tensor = missing.split("for tensor", 1)[1].split()[0]
        reason = f"the importance matrix has no data for {tensor}, which {qt.name} needs: recompute it on this model"
    elif "requires an imatrix" in reason:
        reason = f"{qt.name} needs an importance matrix: make one with `lfmq imatrix MODEL.gguf` and pass --imatrix"
    raise QuantizeError(f"quantizing to {qt.name} failed: {reason}")


DRY_LINE = re.compile(r"^\[\s*\d+/\s*\d+\]\s+(\S+)\s.*?size =\s*[\d.]+ MiB(?: ->\s*[\d.]+ MiB \((\w+)\))?")


def dry_run_size(src: _Source, lines: list[tuple[int, str]]) -> tuple[int, int]:
    """(file bytes, tensor bytes) the output would have, from the target type llama.cpp chose for each tensor."""
    import gguf

    new_types = {}
    for _, line in lines:
        m = DRY_LINE.match(line)
        if m:
            new_types[m.group(1)] = (m.group(2) or src.types[m.group(1)]).upper()
    data = 0
    size = src.header_bytes
    for name, shape in src.tensors.items():
        qtype = gguf.GGMLQuantizationType[new_types.get(name, src.types[name])]
        block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        n = int(shape[0]) // block * nbytes * math.prod(shape[1:])
        data += n
        size += -(-n // gguf.GGUF_DEFAULT_ALIGNMENT) * gguf.GGUF_DEFAULT_ALIGNMENT
    return size, data
