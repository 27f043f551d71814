"""Several generations at once: up to `parallel` prompts decoded as sequences of one context, each under its own
sampler chain (grammar, bans, repeat penalty), so that one decode reads the weights once for all of them.

A shared prompt prefix (extraction's system prompt) is evaluated once; its state is restored into each sequence as a
new prompt takes it, so a prompt costs only its own tokens. A sequence that finishes takes the next prompt at once
(continuous batching). Each sequence samples exactly as stream_generate would: the same chain, primed with the same
history, the same stops (end of turn, max_tokens, a full context). Batched kernels may round differently from one
sequence alone, so where two candidates are within rounding of each other the choice may differ."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Sequence

from lfmq.errors import UsageError
from lfmq.llama.engine import Sampling
from lfmq.runtime.model import Model


@dataclass(frozen=True)
class Job:
    """One prompt to generate from: its whole token ids (the shared prefix included) and how to sample."""

    tokens: tuple[int, ...]
    sampling: Sampling = field(default_factory=Sampling)
    grammar: str | None = None
    ban: tuple[int, ...] = ()
    max_tokens: int | None = None


@dataclass(frozen=True)
class Done:
    """What one job generated, or why it could not start."""

    index: int                    # the job's place in the input
    tokens: tuple[int, ...]
    finish: str                   # stop | length | context | overflow (the prompt alone does not fit)
    error: str | None = None
    prompt_evaluated: int = 0     # prompt tokens decoded (those past the shared prefix when it was restored)
    seconds: float = 0.0          # from the job's start to its end (jobs overlap)


class _Slot:
    """A sequence at work on one job."""

    def __init__(self, seq: int, index: int, job: Job, pending: list[int], pos: int, sampler: Any) -> None:
        self.seq, self.index, self.job, self.pending, self.pos, self.sampler = seq, index, job, pending, pos, sampler
        self.out: list[int] = []
        self.evaluated = len(pending)
        self.started = time.perf_counter()
        self.output = -1          # the batch index of this sequence's logits in the last decode (-1: none)

    def done(self, finish: str) -> Done:
        self.sampler.free()
        return Done(self.index, tuple(self.out), finish, None, self.evaluated, time.perf_counter() - self.started)


def overflow_message(n_tokens: int, n_ctx: int) -> str:
    return (f"the prompt is {n_tokens} tokens and the context holds {n_ctx}: shorten it or load the model with a "
            "larger n_ctx")


class _Batcher:
    def __init__(self, model: Model, parallel: int, prefix: Sequence[int]) -> None:
        self.model, self.engine, self.parallel = model, model.engine, parallel
        self.prefix = tuple(prefix)
        self.slots: list[_Slot | None] = [None] * parallel
        self.snapshot: Any = None
        model.hold_sequences(parallel)
        model.reset()
        if self.prefix:
            self.engine.decode(list(self.prefix), 0, outputs="none", seq=0)
            model.evaluated += len(self.prefix)
            self.snapshot = self.engine.snapshot(0)
            self.engine.forget(0)

    def start(self, seq: int, index: int, job: Job) -> _Slot | Done:
        """Put a job into sequence `seq`: the shared prefix's state restored when the prompt starts with it."""
        tokens = list(job.tokens)
        if not tokens:
            raise UsageError("nothing to evaluate: the prompt is empty")
        if len(tokens) >= self.model.n_ctx:
            return Done(index, (), "overflow", overflow_message(len(tokens), self.model.n_ctx))
        self.engine.forget(seq)
        pos = 0
        n = len(self.prefix)
        if self.snapshot is not None and len(tokens) > n and tuple(tokens[:n]) == self.prefix:
            if self.engine.restore(self.snapshot, seq):
                pos = n
            else:
                self.engine.forget(seq)
        sampler = self.engine.sampler(job.sampling, tokens, job.grammar, job.ban)
        return _Slot(seq, index, job, tokens[pos:], pos, sampler)

    def step(self) -> list[Done]:
        """One decode for every busy sequence: a sampled token each, and prompt tokens as the batch allows."""
        active = [s for s in self.slots if s is not None]
        budget = self.engine.n_batch - sum(1 for s in active if not s.pending)
        items: list[tuple[int, int, int, bool]] = []
        for s in active:  # in sequence order: llama.cpp splits a batch of consecutive sequences evenly
            s.output = -1
            if s.pending:
                if budget <= 0:
                    continue
                part, s.pending = s.pending[:budget], s.pending[budget:]
                budget -= len(part)
                items += [(t, s.pos + i, s.seq, False) for i, t in enumerate(part)]
                s.pos += len(part)
                if not s.pending:
                    items[-1] = items[-1][:3] + (True,)
                    s.output = len(items) - 1
            else:
                items.append((s.out[-1], s.pos, s.seq, True))
                s.pos += 1
                s.output = len(items) - 1
        self.engine.decode_many(items)
        self.model.evaluated += len(items)
        finished = []
        for s in active:
            if s.output < 0:
                continue
            token = s.sampler.sample(s.output)
            finish = None
            if self.model.is_eog(token):
                finish = "stop"
            else:
                s.out.append(token)
                if s.job.max_tokens is not None and len(s.out) >= s.job.max_tokens:
                    finish = "length"
                elif s.pos + 1 >= self.model.n_ctx:  # as stream_generate: the context holds the token, then is full
                    finish = "context"
            if finish:
                finished.append(s.done(finish))
                self.slots[s.seq] = None
        return finished

    def close(self) -> None:
        for s in self.slots:
            if s is not None:
                s.sampler.free()
        self.slots = [None] * self.parallel
        self.model.reset()


def generate_many(model: Model, jobs: Iterable[Job], parallel: int, *, prefix: Sequence[int] = ()) -> Iterator[Done]:
    """Generate from each job, up to `parallel` at a time as sequences of the model's context (re-created with that
    many sequences if it holds fewer; LlamaError if llama.cpp cannot); yields a Done per job, in the jobs' order.
    `prefix`: token ids that many prompts start with, evaluated once. The context is reset at the end."""
    if parallel < 1:
        raise UsageError(f"parallel must be at least 1, not {parallel}")
    batcher = _Batcher(model, parallel, prefix)
    source = iter(enumerate(jobs))
    ready: dict[int, Done] = {}
    next_out, exhausted = 0, False
    try:
        while True:
            for seq in range(parallel):
                while batcher.slots[seq] is None and not exhausted:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                        break
                    got = batcher.start(seq, item[0], item[1])
                    if isinstance(got, Done):
                        ready[got.index] = got
                    else:
                        batcher.slots[seq] = got
            while next_out in ready:
                yield ready.pop(next_out)
                next_out += 1
            if all(s is None for s in batcher.slots):
                break
            for done in batcher.step():
                ready[done.index] = done
        while next_out in ready:
            yield ready.pop(next_out)
            next_out += 1
    finally:
        batcher.close()
