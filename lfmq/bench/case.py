"""One benchmark case, run in a fresh process (`python -m lfmq.bench.case` with a JSON case on stdin) so that
its peak memory is its own. Measures what llama-bench measures, the same way: after a warm-up, `reps` runs from an
empty state, each timing either a prompt of n_prompt random tokens in batches (pp) or n_gen single-token decodes (tg),
optionally after n_depth tokens already in the context. Adds load time, time to first token for a chat-sized
prompt and peak memory (VmHWM, with RssAnon and RssFile apart)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lfmq.llama.settings import Settings

CHAT = [  # a chat-sized request: system prompt, tool-style instruction, a short user message
    {"role": "system", "content": "You are a helpful assistant that extracts structured data from messages. "
                                  "Answer with JSON only, using the keys name, date, amount and currency."},
    {"role": "user", "content": "Hi, this is Dana Whitfield. I paid the invoice from March 3rd, 2026 this morning: "
                                "1,284.50 euros by bank transfer, reference INV-2026-0117. Could you confirm that it "
                                "arrived and send the receipt to my office address? Thanks a lot, Dana."},
]


def chat_tokens(model: Path | str) -> list[int]:
    """The time-to-first-token prompt as lfmq renders it (the model's Jinja template), tokenized here."""
    from lfmq.runtime.model import load

    with load(model, n_ctx=512, threads=1, use_mmap=True) as m:   # the tokenizer is all it needs
        return list(m.tokenize(m.render(CHAT, add_generation_prompt=True), special=True))


def case_ctx(n_ctx: int, n_prompt: int, n_gen: int, depth: int, n_chat: int) -> int:
    """The context of one case: `n_ctx` (the profile's), raised to what the case needs. llama-bench sizes each test's
    context to its own tokens (pp512 in 512, tg128 in 128), so a run pinned to a small n_ctx gets the same KV cache
    layout; the time-to-first-token prompt of n_chat tokens runs in the same context, so it must fit too."""
    return max(n_ctx, n_prompt + n_gen + depth, n_chat)


@dataclass(frozen=True)
class CaseResult:
    """What one case measured, as a case process prints it (a native runner on a device prints the same keys)."""

    samples_ns: list[int]       # one per repetition: the timed part only
    load_ms: float
    ttft_ms: float
    settings: Settings          # as the context was created (threads resolved)
    model_type: str             # llama_model_desc, e.g. "lfm2 350M Q4_K - Medium"
    model_size: int             # bytes of the weights
    model_n_params: int
    vmhwm: float                # MB: peak resident memory of the process
    vmrss: float
    rssanon: float
    rssfile: float

    @classmethod
    def from_dict(cls, data: Any) -> CaseResult:
        """From the JSON object a case process prints; InputError when it is not one."""
        from lfmq.bench.result import from_data

        return from_data(cls, data, "case result")

    def to_dict(self) -> dict[str, Any]:
        from lfmq.bench.result import to_data

        return to_data(self)


@dataclass(frozen=True)
class Case:
    model: str
    n_prompt: int
    n_gen: int
    n_depth: int
    reps: int
    knobs: dict[str, Any]
    seed: int = 42


def memory_status(status: str | None = None) -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile in MB, from a /proc/<pid>/status text (this process's by default)."""
    out = {}
    text = Path("/proc/self/status").read_text() if status is None else status
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def _sync(model: Any) -> None:
    model.engine.synchronize()


def _prompt(model: Any, tokens: np.ndarray) -> None:
    model.decode(tokens.tolist())
    _sync(model)


def _gen(model: Any, rng: np.random.Generator, n: int) -> None:
    token = int(rng.integers(model.n_vocab))
    for _ in range(n):
        model.decode([token])
        _sync(model)
        token = int(rng.integers(model.n_vocab))  # the token does not change the work; llama-bench draws at random


def _ttft(model: Any) -> float:
    """Seconds from a rendered chat prompt to its first sampled token (greedy), from an empty context."""
    model.reset()
    started = time.perf_counter()
    tokens = model.tokenize(model.render(CHAT, add_generation_prompt=True), special=True)
    model.decode(tokens)
    int(np.argmax(model.logits()))
    return time.perf_counter() - started


def run(case: Case) -> CaseResult:
    from lfmq.runtime import load

    rng = np.random.default_rng(case.seed)
    started = time.perf_counter()
    model = load(case.model, **case.knobs)
    load_s = time.perf_counter() - started
    try:
        if case.n_prompt:  # warm-up, as llama-bench does: one batch of prompt, one generated token
            _prompt(model, rng.integers(model.n_vocab, size=min(case.n_prompt, model.n_batch), dtype=np.int64))
        if case.n_gen:
            _gen(model, rng, 1)
        samples = []
        for _ in range(case.reps):
            model.reset()
            if case.n_depth:
                _prompt(model, rng.integers(model.n_vocab, size=case.n_depth, dtype=np.int64))
            t = time.perf_counter_ns()
            if case.n_prompt:
                _prompt(model, rng.integers(model.n_vocab, size=case.n_prompt, dtype=np.int64))
            if case.n_gen:
                _gen(model, rng, case.n_gen)
            samples.append(time.perf_counter_ns() - t)
        ttft = _ttft(model)
        desc = _describe(model)
        settings = model.settings
        memory = memory_status()  # with the model still loaded: anon and file-backed pages as they stand
    finally:
        model.close()
    return CaseResult(samples_ns=samples, load_ms=1e3 * load_s, ttft_ms=1e3 * ttft, settings=settings, **desc,
                      **{k.lower(): v for k, v in memory.items()})


def _describe(model: Any) -> dict[str, Any]:
    d = model.engine.describe()
    return {"model_type": d.desc, "model_size": d.size, "model_n_params": d.n_params}


if __name__ == "__main__":
    result = run(Case(**json.loads(sys.stdin.read())))
    sys.stdout.write(json.dumps(result.to_dict()) + "\n")
