"""Streaming generation: one chunk per sampled token (text, token id, time), the last chunk carries the stats.
generate, chat, extract and the CLI are all consumers of stream_generate."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator, Sequence

from lfmq.errors import StateError, UsageError
from lfmq.llama.engine import Sampling
from lfmq.runtime.model import Model


SAMPLING_FIELDS = tuple(f.name for f in fields(Sampling))


def resolve_sampling(base: Sampling | None = None, **overrides: Any) -> Sampling:
    """base (or the defaults) with the overrides that are not None."""
    unknown = sorted(set(overrides) - set(SAMPLING_FIELDS))
    if unknown:
        raise UsageError(f"unknown sampling option(s) {', '.join(unknown)}; known: {', '.join(SAMPLING_FIELDS)}")
    return replace(base or Sampling(), **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class Stats:
    """What one generation cost. prompt_evaluated < prompt_tokens when the context already held the start."""

    prompt_tokens: int
    prompt_evaluated: int
    generated_tokens: int
    prompt_seconds: float
    generate_seconds: float
    finish_reason: str            # stop (end of turn) | length (max_tokens) | context (window full) | interrupted

    @property
    def prompt_reused(self) -> int:
        return self.prompt_tokens - self.prompt_evaluated

    @property
    def prompt_tps(self) -> float:
        return self.prompt_evaluated / self.prompt_seconds if self.prompt_seconds > 0 else 0.0

    @property
    def generate_tps(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds > 0 else 0.0


@dataclass(frozen=True)
class Chunk:
    """One step of a stream: the text and token of one sampled token, or the closing chunk with stats."""

    text: str                     # may be "" while a UTF-8 character is split across tokens
    tokens: tuple[int, ...]
    seconds: float                # since the call started
    stats: Stats | None = None    # only on the last chunk


@dataclass(frozen=True)
class Generation:
    """A whole generation."""

    text: str
    tokens: tuple[int, ...]
    stats: Stats


def prompt_tokens(model: Model, prompt: str | Sequence[int]) -> list[int]:
    """Token ids of a raw prompt: text is tokenized with control tokens parsed and BOS added unless already there."""
    if not isinstance(prompt, str):
        return [int(t) for t in prompt]
    tokens = model.tokenize(prompt)
    return tokens if tokens[:1] == [model.bos_id] else [model.bos_id, *tokens]


def stream_generate(
    model: Model,
    prompt: str | Sequence[int],
    *,
    max_tokens: int | None = None,
    sampling: Sampling | None = None,
    grammar: str | None = None,
    ban_tokens: Sequence[int] = (),
    ignore_eos: bool = False,
    interrupt: Callable[[], bool] | None = None,
    snapshot_at: int = 0,
    **overrides: Any,
) -> Iterator[Chunk]:
    """Generate from a raw prompt (text or token ids), one chunk per token. Sampling options (temperature, top_k,
    top_p, min_p, repeat_penalty, repeat_last_n, seed) go in as keywords; `grammar` is GBNF; `interrupt` is polled
    before each token and ends the stream with finish_reason "interrupted"."""
    s = resolve_sampling(sampling, **overrides)
    if max_tokens is not None and max_tokens < 1:
        raise UsageError(f"max_tokens must be at least 1, not {max_tokens}")
    started = time.perf_counter()
    tokens = prompt_tokens(model, prompt)
    _, evaluated = model.sync(tokens, snapshot_at=snapshot_at)
    prompt_done = time.perf_counter()
    sampler = model.engine.sampler(s, tokens, grammar, [*ban_tokens, *(model.eog_tokens() if ignore_eos else ())])
    text = codecs.getincrementaldecoder("utf-8")("replace")
    n, finish, mine = 0, "stop", model.evaluated
    try:
        while True:
            if interrupt is not None and interrupt():
                finish = "interrupted"
                break
            if max_tokens is not None and n >= max_tokens:
                finish = "length"
                break
            if model.n_past >= model.n_ctx:
                finish = "context"
                break
            token = sampler.sample(-1)
            if model.is_eog(token):
                break
            n += 1
            yield Chunk(text.decode(model.piece(token)), (token,), time.perf_counter() - started)
            if model.evaluated != mine:  # someone else used the context while this stream was paused
                raise StateError("another generation used this model in between: run one stream per model at a time")
            model.decode([token])  # after the yield: the reader sees the token one evaluation earlier
            mine += 1
    finally:
        sampler.free()
    now = time.perf_counter()
    stats = Stats(len(tokens), evaluated, n, prompt_done - started, now - prompt_done, finish)
    yield Chunk(text.decode(b"", final=True), (), now - started, stats)


def generate(model: Model, prompt: str | Sequence[int], **kwargs: Any) -> Generation:
    """stream_generate, collected."""
    ids: list[int] = []
    stats = None
    for chunk in stream_generate(model, prompt, **kwargs):
        ids.extend(chunk.tokens)
        stats = chunk.stats or stats
    assert stats is not None
    return Generation(model.detokenize(ids), tuple(ids), stats)
