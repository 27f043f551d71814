"""`lfmq eval`: perplexity and the KL divergence of each model's next-token distribution from a reference's.

Scored as llama-perplexity scores: the text is tokenized with BOS first and special-token markers left as text, cut
into n_ctx-token chunks, each evaluated from an empty state with BOS as its first token, and only the second half
of each chunk is scored (every scored token has at least n_ctx/2 of context).
Chunks are packed n_batch / n_ctx to a decode (each its own sequence) as llama-perplexity packs them. Memory is
bounded by one decode's logits per model (llama.cpp's output buffer) plus one chunk's float64 arrays, whatever the
length of the text.

With a task file (lfmq/quantize/tasks.py), each model also answers tool-call and extraction cases through the runtime,
and its task scores sit beside its PPL and KLD."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from lfmq.errors import InputError, UsageError
from lfmq.progress import Progress
from lfmq.quantize.chunks import ChunkEvaluator, chunks_of
from lfmq.quantize.tasks import TaskScore, evaluate_tasks, load_tasks
from lfmq.quantize.texts import choose_text


@dataclass(frozen=True)
class ModelQuality:
    """One model's measures against the reference, on the same scored tokens."""

    path: Path
    file_type: str | None
    bytes: int
    bits_per_weight: float
    ppl: float
    ppl_error: float                 # one standard error, as llama-perplexity prints it
    delta_ppl: float                 # ppl - reference ppl
    kld_mean: float
    kld_error: float
    kld_p99: float
    top1_agreement: float            # share of scored tokens where the argmax equals the reference's
    task: TaskScore | None = None    # with a task file: calls, extraction, agreement with the reference's answers


@dataclass(frozen=True)
class EvalReport:
    reference: ModelQuality
    models: list[ModelQuality]
    text: str
    n_ctx: int
    chunks: int
    tokens_scored: int
    seconds: float
    synthetic: bool = False          # random-weight models: the numbers say nothing about real quality
    notes: list[str] = field(default_factory=list)
    task_file: str | None = None     # the task file's name, when tasks were run
    task_seconds: float = 0.0        # of `seconds`, the time the task cases took


def default_text() -> str:
    return resources.files("lfmq.quantize").joinpath("data/eval.txt").read_text(encoding="utf-8")


@dataclass
class _Rows:
    """One model's logits for one chunk's scored rows [n, n_vocab] and their log-normalizers, computed once. The
    elementwise work stays in the logits' dtype (float32 from llama.cpp); every sum accumulates in float64."""

    x: np.ndarray
    lse: np.ndarray                  # float64 [n]: log sum exp of each row
    _e: np.ndarray                   # exp(x - row max), the logits' dtype
    _s: np.ndarray                   # float64 [n]: its row sums

    @classmethod
    def of(cls, logits: np.ndarray) -> _Rows:
        m = logits.max(axis=-1, keepdims=True)
        e = logits - m
        np.exp(e, out=e)
        s = e.sum(axis=-1, dtype=np.float64)
        return cls(logits, m[:, 0].astype(np.float64) + np.log(s), e, s)

    def probs(self) -> np.ndarray:
        """The row distributions (the reference's p in KL(p || q)), formed on first use."""
        if not hasattr(self, "_p"):
            self._p = self._e  # in place: the exponentials are not needed again
            self._p /= self._s[:, None].astype(self._e.dtype)
        return self._p


class _Accumulator:
    """Per-token negative log-likelihoods and KL divergences, kept as small 1-D arrays."""

    def __init__(self) -> None:
        self.nll: list[np.ndarray] = []
        self.kld: list[np.ndarray] = []
        self.same_top: list[np.ndarray] = []

    def add(self, logits: np.ndarray | _Rows, targets: np.ndarray, ref: np.ndarray | _Rows | None) -> None:
        """One chunk's rows (logits, or log-probabilities: any per-row shift) against the reference's rows."""
        q = logits if isinstance(logits, _Rows) else _Rows.of(logits)
        self.nll.append(q.lse - q.x[np.arange(len(targets)), targets])
        if ref is not None:
            p = ref if isinstance(ref, _Rows) else _Rows.of(ref)
            # KL(p || q) = sum p (log p - log q) = sum p (x_p - x_q) - (lse_p - lse_q), since sum p = 1
            diff = p.x - q.x
            diff *= p.probs()
            cross = diff.sum(axis=-1, dtype=np.float64)
            self.kld.append(cross - (p.lse - q.lse))
            self.same_top.append(q.x.argmax(-1) == p.x.argmax(-1))

    def ppl(self) -> tuple[float, float]:
        nll = np.concatenate(self.nll)
        mean = nll.mean()
        ppl = float(np.exp(mean))
        err = float(ppl * np.sqrt(nll.var() / max(len(nll) - 1, 1)))
        return ppl, err

    def kld_stats(self) -> tuple[float, float, float, float]:
        if not self.kld:
            return 0.0, 0.0, 0.0, 1.0
        kld = np.maximum(np.concatenate(self.kld), 0.0)  # rounding can dip a hair below zero
        err = float(kld.std() / np.sqrt(max(len(kld) - 1, 1)))
        return float(kld.mean()), err, float(np.percentile(kld, 99)), float(np.concatenate(self.same_top).mean())


def evaluate(
    models: list[str | Path],
    reference: str | Path,
    *,
    text: str | None = None,
    file: str | Path | None = None,
    text_name: str | None = None,
    n_ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    n_batch: int = 2048,
    parse_special: bool = False,
    task: str | Path | None = None,
    progress: Progress | None = None,
) -> EvalReport:
    """Perplexity, delta PPL, KL divergence (mean, p99) and top-1 agreement of `models` against `reference`; with a
    `task` file (JSONL of tool-call and extraction cases), each model's task scores too. n_batch // n_ctx chunks go
    into one decode, as llama-perplexity's -b packs them (1 for one chunk at a time). `parse_special` reads
    `<|...|>` markers in the text as control tokens (llama-perplexity never does; chat transcripts need it).
    progress counts "chunks", then "task cases"."""
    if n_ctx < 16 or n_ctx % 2:
        raise UsageError(f"--n-ctx {n_ctx}: use an even context of at least 16 tokens")
    text = choose_text(text, file, default_text)
    text_name = text_name or (Path(file).name if file is not None else "lfmq eval.txt")
    if not text.strip():
        raise InputError("the evaluation text is empty: give a file with some text (-f)")
    infos = [_file(p) for p in [reference, *models]]  # clear errors for missing or broken files first
    cases = load_tasks(task) if task is not None else None  # a broken task file fails before the long part
    started = time.perf_counter()
    evaluators = []
    try:
        n_seq = max(1, min(n_batch // n_ctx, chunks or n_batch))
        for info in infos:
            evaluators.append(ChunkEvaluator(info.path, n_ctx, threads, n_seq=n_seq))
        accs = _run(evaluators, text, n_ctx, chunks, progress, parse_special)
    finally:
        for ev in evaluators:
            ev.close()
    n_chunks = len(accs[0].nll)
    ref_ppl = accs[0].ppl()[0]
    task_started = time.perf_counter()
    tasks = evaluate_tasks(models, reference, cases, threads=threads, progress=progress) if cases is not None else [None] * len(infos)
    task_seconds = time.perf_counter() - task_started if cases is not None else 0.0
    qualities = [_quality(info, acc, ref_ppl, t) for info, acc, t in zip(infos, accs, tasks)]
    return EvalReport(
        reference=qualities[0],
        models=qualities[1:],
        text=text_name,
        n_ctx=n_ctx,
        chunks=n_chunks,
        tokens_scored=int(sum(len(x) for x in accs[0].nll)),
        seconds=time.perf_counter() - started,
        synthetic=any(i.synthetic for i in infos),
        task_file=Path(task).name if task is not None else None,
        task_seconds=task_seconds,
    )


def _run(evaluators: list[ChunkEvaluator], text: str, n_ctx: int, limit: int | None,
         progress: Progress | None, parse_special: bool = False) -> list[_Accumulator]:
    ref = evaluators[0]
    if any(ev.n_vocab != ref.n_vocab for ev in evaluators):
        raise InputError("the models do not share the reference's vocabulary: they are not quantizations of it")
    tokens = ref.tokenize(text, parse_special=parse_special)  # llama-perplexity never parses special tokens
    pieces = chunks_of(tokens, n_ctx, limit, ref.bos)
    if not pieces:
        raise InputError(f"the text has {len(tokens)} tokens, fewer than one chunk of {n_ctx}: give more text or a smaller --n-ctx")
    first = n_ctx // 2
    accs = [_Accumulator() for _ in evaluators]
    for g in range(0, len(pieces), ref.n_seq):
        group = pieces[g : g + ref.n_seq]
        for ev in evaluators:  # each context keeps its group's logits until its next decode
            ev.decode_packed(group, first)
        for k, chunk in enumerate(group):
            targets = chunk[first + 1 :]
            ref_rows = None
            for ev, acc in zip(evaluators, accs):
                rows = _Rows.of(ev.rows(k)[:-1])  # row j predicts token j+1
                acc.add(rows, targets, ref_rows)
                if ref_rows is None:
                    ref_rows = rows
        if progress:
            progress("chunks", g + len(group), len(pieces))
    return accs


@dataclass(frozen=True)
class _File:
    path: Path
    file_type: str | None
    bytes: int
    bits_per_weight: float
    synthetic: bool


def _file(path: str | Path) -> _File:
    """What the report says of a file, from its metadata and tensor index (the vocabulary is not read)."""
    from lfmq.meta import read_meta

    m = read_meta(path)
    # a recipe's mix is named for its budget: its file type only names its dominant tensor type
    label = f"auto-{m.recipe_budget}" if m.recipe_budget else m.file_type
    return _File(Path(path).resolve(), label, m.file_bytes, m.bits_per_weight, m.synthetic)


def _quality(info: _File, acc: _Accumulator, ref_ppl: float, task: TaskScore | None) -> ModelQuality:
    ppl, err = acc.ppl()
    kld, kld_err, p99, top1 = acc.kld_stats()
    return ModelQuality(
        path=info.path, file_type=info.file_type, bytes=info.bytes, bits_per_weight=info.bits_per_weight,
        ppl=ppl, ppl_error=err, delta_ppl=ppl - ref_ppl, kld_mean=kld, kld_error=kld_err, kld_p99=p99,
        top1_agreement=top1, task=task,
    )
