"""`lfmq imatrix`: an importance matrix computed in process through llama.cpp's evaluation callback.

For every matrix multiplication by a model weight (`blk.*`), the callback sees the input activations and adds,
per input column, the sum of their squares and the number of rows: what llama-imatrix accumulates, written in
the GGUF format it writes (`<tensor>.in_sum2`, `<tensor>.counts`). A MoE's stacked experts are multiplied through
MUL_MAT_ID: each token's activations count for the experts it was routed to, per expert, as llama-imatrix does."""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from lfmq.atomic import check_target
from lfmq.errors import InputError, UsageError
from lfmq.llama.ggml import GGMLTensor, eval_callback, op_namer, tensor_at
from lfmq.llama.gguf_index import tensor_index
from lfmq.progress import Progress
from lfmq.quantize.imatrix_file import Imatrix, write_imatrix
from lfmq.quantize.texts import choose_text
from lfmq.quantize.chunks import ChunkEvaluator, chunks_of

GGML_TYPE_F32 = 0
MIN_ROWS = 16  # llama-imatrix ignores multiplications over fewer tokens


@dataclass(frozen=True)
class ImatrixResult:
    """What `compute_imatrix` wrote."""

    path: Path
    entries: int
    chunks: int
    chunk_size: int
    tokens: int
    seconds: float
    dataset: str


def default_text() -> str:
    return resources.files("lfmq.quantize").joinpath("data/calibration.txt").read_text(encoding="utf-8")


def _weight_name(raw: bytes) -> str:
    """`CPU#blk.0.attn_k.weight#0` -> `blk.0.attn_k.weight`, as llama-imatrix filters names."""
    name = raw.decode(errors="replace")
    parts = name.split("#")
    return parts[1] if len(parts) > 1 else name


def _activations(t: GGMLTensor, dtype: type = np.float32) -> np.ndarray:
    """A [ne3, ne2, ne1, ne0] view of a host tensor's data (float32, or int32 for expert ids), following its strides."""
    ne, nb = list(t.ne), list(t.nb)
    extent = sum((n - 1) * s for n, s in zip(ne, nb)) + nb[0]
    buf = (ctypes.c_char * extent).from_address(t.data)
    return np.ndarray(shape=ne[::-1], dtype=dtype, buffer=buf, strides=nb[::-1])


class Collector:
    """The evaluation callback and what it has accumulated."""

    def __init__(self) -> None:
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: Exception | None = None
        self.op_name = op_namer()
        self.callback = eval_callback(self._on_tensor)

    def _wanted(self, t: GGMLTensor) -> bool:
        if self.op_name(t.op) == "MUL_MAT_ID":
            return True  # every routed expert product, whatever the batch (llama-imatrix collects them all)
        if self.op_name(t.op) != "MUL_MAT":
            return False
        src0 = tensor_at(t.src[0])
        src1 = tensor_at(t.src[1])
        return (src1.ne[1] >= MIN_ROWS and src1.type == GGML_TYPE_F32
                and _weight_name(src0.name).startswith("blk."))

    def _on_tensor(self, ptr: int, ask: bool, user_data: int) -> bool:
        try:
            t = tensor_at(ptr)
            if ask:
                return self._wanted(t)
            if self.op_name(t.op) == "MUL_MAT_ID":
                self._accumulate_experts(tensor_at(t.src[0]), tensor_at(t.src[1]), tensor_at(t.src[2]))
            else:
                self._accumulate(tensor_at(t.src[0]), tensor_at(t.src[1]))
            return True
        except Exception as e:  # an exception must not cross into C: stop the evaluation, re-raise after it
            self.error = e
            return False

    def _accumulate(self, src0: GGMLTensor, src1: GGMLTensor) -> None:
        name = _weight_name(src0.name)
        x = _activations(src1).astype(np.float64)
        n_mat = int(src0.ne[2] * src0.ne[3])
        if name not in self.sums:
            self.sums[name] = np.zeros((n_mat, x.shape[-1]), dtype=np.float64)
            self.counts[name] = np.zeros(n_mat, dtype=np.float64)
        if n_mat == 1:
            rows = x.reshape(-1, x.shape[-1])
            self.sums[name][0] += np.einsum("ri,ri->i", rows, rows)
            self.counts[name][0] += rows.shape[0]
            return
        for i3 in range(x.shape[0]):  # batched weights: activations i2/i3 map onto matrix i2 % ne2, i3 % ne3
            for i2 in range(x.shape[1]):
                mat = (i3 % int(src0.ne[3])) * int(src0.ne[2]) + (i2 % int(src0.ne[2]))
                rows = x[i3, i2]
                self.sums[name][mat] += np.einsum("ri,ri->i", rows, rows)
                self.counts[name][mat] += rows.shape[0]


    def _accumulate_experts(self, src0: GGMLTensor, src1: GGMLTensor, ids: GGMLTensor) -> None:
        """MUL_MAT_ID: src0 [cols, rows, n_expert] stacked experts, src1 [cols, n_used or 1, n_tokens] activations,
        ids [n_used, n_tokens] the experts each token was routed to."""
        name = _weight_name(src0.name)
        n_expert = int(src0.ne[2])
        x = _activations(src1)[0].astype(np.float64)       # [n_tokens, ne1, cols]
        routed = _activations(ids, np.int32)[0, 0]          # [n_tokens, n_used]
        if name not in self.sums:
            self.sums[name] = np.zeros((n_expert, x.shape[-1]), dtype=np.float64)
            self.counts[name] = np.zeros(n_expert, dtype=np.float64)
        slot = np.arange(routed.shape[1]) % x.shape[1]      # src1 broadcasts when ne1 == 1 (the gate and up inputs)
        sq = np.square(x[:, slot, :])                       # [n_tokens, n_used, cols]
        np.add.at(self.sums[name], routed.ravel(), sq.reshape(-1, sq.shape[-1]))
        self.counts[name] += np.bincount(routed.ravel(), minlength=n_expert)


def compute_imatrix(
    model: str | Path,
    output: str | Path = "imatrix.gguf",
    *,
    text: str | None = None,
    file: str | Path | None = None,
    dataset: str | None = None,
    chunks: int | None = None,
    n_ctx: int = 512,
    threads: int | None = None,
    parse_special: bool = True,
    force: bool = False,
    progress: Progress | None = None,
) -> ImatrixResult:
    """Run the model over calibration text and write the importance matrix of every `blk.*` weight. Chunks are cut as
    llama-imatrix cuts them; `<|...|>` markers are control tokens (llama-imatrix --parse-special), since lfmq's
    calibration text holds chat and tool-call transcripts the model sees with those tokens in real use."""
    output = Path(output)
    check_target(output, force)
    if n_ctx < 2 * MIN_ROWS:
        raise UsageError(f"--n-ctx {n_ctx} is too small: use at least {2 * MIN_ROWS} tokens")
    text = choose_text(text, file, default_text)
    dataset = dataset or (Path(file).name if file is not None else "lfmq calibration.txt")
    if not text.strip():
        raise InputError("the calibration text is empty: give a file with some text (-f)")
    tensor_index(model)  # a clear error for a missing, foreign or truncated file
    started = time.perf_counter()
    collector = Collector()
    with ChunkEvaluator(model, n_ctx, threads, cb_eval=collector.callback) as ev:
        tokens = ev.tokenize(text, parse_special)
        pieces = chunks_of(tokens, n_ctx, chunks, ev.bos)
        if not pieces:
            raise InputError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}: give more text or a smaller --n-ctx")
        for i, chunk in enumerate(pieces):
            try:
                # outputs at every position, as llama-imatrix asks: llama.cpp prunes the last block to the
                # positions whose outputs are wanted, and its FFN would otherwise go unmeasured
                ev.decode(chunk, 0)
            finally:
                if collector.error is not None:
                    raise collector.error
            if progress:
                progress("chunks", i + 1, len(pieces))
    im = Imatrix(
        sums={k: v.astype(np.float32) for k, v in collector.sums.items()},
        counts={k: v.astype(np.float32) for k, v in collector.counts.items()},
        datasets=[dataset], chunk_count=len(pieces), chunk_size=n_ctx,
    )
    write_imatrix(im, output, force)
    return ImatrixResult(output.resolve(), len(im.sums), len(pieces), n_ctx, len(pieces) * n_ctx,
                         time.perf_counter() - started, dataset)
