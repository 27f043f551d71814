"""Streaming generation: one chunk per sampled token (text, token id, time), the last chunk carries the stats.
generate, chat, extract and the CLI are all consumers of stream_generate."""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterator, Sequence

from lfmq.errors import UsageError
from lfmq.errors import LlamaError
from lfmq.runtime.model import Model, llama, log_tail


@dataclass(frozen=True)
class Sampling:
    """Sampling settings; the defaults are Liquid's recommendation for LFM2.5."""

    temperature: float = 0.1      # 0 = greedy
    top_k: int = 50
    top_p: float = 1.0
    min_p: float = 0.0
    repeat_penalty: float = 1.05
    repeat_last_n: int = 64
    seed: int | None = None       # None: a different run each time


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


def _sampler(model: Model, s: Sampling, history: Sequence[int], grammar: str | None, ban: Sequence[int]) -> Any:
    """llama.cpp sampler chain: bans, grammar, repeat penalty (primed with the prompt's tail), top-k/p, min-p, temp."""
    L = llama()
    chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
    if ban:
        biases = (L.llama_logit_bias * len(ban))(*[L.llama_logit_bias(t, float("-inf")) for t in ban])
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_logit_bias(model.n_vocab, len(ban), biases))
    if grammar is not None:
        g = L.llama_sampler_init_grammar(model.vocab, grammar.encode("utf-8"), b"root")
        if not g:
            L.llama_sampler_free(chain)
            raise LlamaError(f"llama.cpp rejected the grammar: {log_tail()}")
        L.llama_sampler_chain_add(chain, g)
    if s.repeat_penalty != 1.0 and s.repeat_last_n != 0:
        pen = L.llama_sampler_init_penalties(model.n_vocab, s.repeat_last_n, s.repeat_penalty, 0.0, 0.0)
        for t in history[-s.repeat_last_n:] if s.repeat_last_n > 0 else history:
            L.llama_sampler_accept(pen, t)
        L.llama_sampler_chain_add(chain, pen)
    if s.temperature <= 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        return chain
    if s.top_k > 0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(s.top_k))
    if s.top_p < 1.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_p(s.top_p, 1))
    if s.min_p > 0.0:
        L.llama_sampler_chain_add(chain, L.llama_sampler_init_min_p(s.min_p, 1))
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_temp(s.temperature))
    seed = L.LLAMA_DEFAULT_SEED if s.seed is None else s.seed & 0xFFFFFFFF
    L.llama_sampler_chain_add(chain, L.llama_sampler_init_dist(seed))
    return chain


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
    chain = _sampler(model, s, tokens, grammar, [*ban_tokens, *(model.eog_tokens() if ignore_eos else ())])
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
            token = llama().llama_sampler_sample(chain, model.ctx, -1)
            if model.is_eog(token):
                break
            n += 1
            yield Chunk(text.decode(model.piece(token)), (token,), time.perf_counter() - started)
            if model.evaluated != mine:  # someone else used the context while this stream was paused
                raise UsageError("another generation used this model in between: run one stream per model at a time")
            model.decode([token])  # after the yield: the reader sees the token one evaluation earlier
            mine += 1
    finally:
        llama().llama_sampler_free(chain)
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
