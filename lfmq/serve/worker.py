"""The generation worker: one thread owns the llama.cpp context and serves up to `parallel` requests at once, each
in its own sequence, all advanced together in one batch per step (continuous batching: a request joins or leaves
between steps, and a new prompt's tokens fill the batch beside the others' next tokens). Requests beyond the slots
wait in arrival order.

State reuse: each slot remembers the tokens (and their text) its sequence holds, and a snapshot taken just before
the last token of its latest prompt. A request whose prompt extends what a slot holds (the next turn of the same
conversation) evaluates only its new tokens; one that shares the snapshot's tokens (a regenerated or edited last
turn) restores it and evaluates only the rest. LFM2's conv layers are recurrent, so llama.cpp cannot cut a sequence
back to an arbitrary position: anything else is evaluated afresh."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from lfmq.errors import LfmqError
from lfmq.llama.engine import Sampler, Sampling

# ("token", id, piece bytes) | ("end", finish_reason, Usage) | ("error", message, http_status): finish_reason is
# stop (end of turn), length (max_tokens or the context) or cancelled
Event = tuple


@dataclass(frozen=True)
class Usage:
    """What a request cost: prompt tokens, those served from the slot's state, and generated tokens."""

    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    first_token_seconds: float


@dataclass
class Job:
    """One request: its prompt (text and tokens), sampling, constraints, and where its events go (`emit` is called
    from the worker thread; it must not block)."""

    text: str
    tokens: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    grammar: str | None = None
    ban: tuple[int, ...] = ()
    max_tokens: int | None = None
    cancelled: bool = False
    submitted: float = field(default_factory=time.perf_counter)

    def cancel(self) -> None:
        """Stop generating (the client went away or a stop string matched); the slot is freed at the next step."""
        self.cancelled = True


class Slot:
    """One llama.cpp sequence and the request it serves."""

    def __init__(self, seq: int) -> None:
        self.seq = seq
        self.tokens: list[int] = []      # what the sequence holds, position by position
        self.text = ""                   # their text
        self.snap: tuple[tuple[int, ...], str, Any] | None = None  # (tokens, text, state) before a prompt's last token
        self.used = 0.0
        self.clear_job()

    def clear_job(self) -> None:
        self.job: Job | None = None
        self.todo: list[int] = []        # prompt tokens still to evaluate
        self.sampler: Sampler | None = None
        self.pending: int | None = None  # a sampled token to evaluate at the next step
        self.generated = 0
        self.cached = 0
        self.prompt_len = 0
        self.first = 0.0
        self.snap_due = False


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class Worker:
    """The thread that runs every generation. submit() a Job; its events arrive through job.emit."""

    def __init__(self, model: Any, parallel: int) -> None:
        self.model, self.engine = model, model.engine
        self.slots = [Slot(i) for i in range(parallel)]
        self.n_ctx_seq = self.engine.n_ctx_seq  # llama.cpp splits the context between the sequences
        self.n_batch = self.engine.n_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stop = False
        # batched_steps: decodes that advanced more than one request at once
        self.counters = {"requests": 0, "cancelled": 0, "generated_tokens": 0, "prompt_tokens_evaluated": 0,
                         "prompt_tokens_cached": 0, "batched_steps": 0}
        self._thread = threading.Thread(target=self._run, name="lfmq-serve-worker", daemon=True)

    # -- the public side (any thread) ----------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify()
        self._thread.join(timeout=30)

    def submit(self, job: Job) -> None:
        with self._cond:
            self._queue.append(job)
            self.counters["requests"] += 1
            self._cond.notify()

    def status(self) -> dict[str, int]:
        with self._cond:
            busy = sum(s.job is not None for s in self.slots)
            return {"slots": len(self.slots), "active": busy, "queued": len(self._queue), **self.counters}

    # -- the worker thread ---------------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stop and not self._queue and not self._busy():
                    self._cond.wait()
                if self._stop:
                    break
                self._drop_cancelled_queued()
                admit = []
                while self._queue and any(s.job is None for s in self.slots):
                    job = self._queue.popleft()
                    slot = self._choose(job)
                    slot.job = job  # taken: the next choice sees it busy
                    admit.append((slot, job))
            for slot, job in admit:
                try:
                    self._admit(slot, job)
                except Exception as e:  # the thread must outlive any one request
                    self.engine.forget(slot.seq)
                    slot.tokens, slot.text = [], ""
                    self._fail(slot, f"internal error: {type(e).__name__}: {e}", 500)
            try:
                self._step()
            except Exception as e:  # llama.cpp refused a batch (or a bug): fail what runs, start the sequences afresh
                message = str(e) if isinstance(e, LfmqError) else f"internal error: {type(e).__name__}: {e}"
                for slot in self._busy():
                    self._fail(slot, message, 500)
                self.engine.clear()
                for slot in self.slots:
                    slot.tokens, slot.text, slot.snap = [], "", None
        for slot in self._busy():
            self._finish(slot, "cancelled")

    def _busy(self) -> list[Slot]:
        return [s for s in self.slots if s.job is not None]

    def _drop_cancelled_queued(self) -> None:
        for job in [j for j in self._queue if j.cancelled]:
            self._queue.remove(job)
            self.counters["cancelled"] += 1

    def _plan(self, slot: Slot, job: Job) -> tuple[int, str]:
        """How many of the job's tokens this slot can serve from its state, and how (extend / restore / fresh)."""
        if slot.tokens and _common(slot.tokens, job.tokens) == len(slot.tokens) < len(job.tokens):
            return len(slot.tokens), "extend"
        if slot.text and job.text.startswith(slot.text) and len(job.text) > len(slot.text):
            return len(slot.tokens), "extend-text"  # the sampled tokens need not re-tokenize alike: keep them
        if slot.snap and len(slot.snap[0]) < len(job.tokens) and tuple(job.tokens[: len(slot.snap[0])]) == slot.snap[0]:
            return len(slot.snap[0]), "restore"
        return 0, "fresh"

    def _choose(self, job: Job) -> Slot:
        free = [s for s in self.slots if s.job is None]
        return max(free, key=lambda s: (self._plan(s, job)[0], -s.used))

    def _admit(self, slot: Slot, job: Job) -> None:
        keep, how = self._plan(slot, job)
        tokens = job.tokens
        if how == "extend-text":
            tokens = slot.tokens + self.model.tokenize(job.text[len(slot.text):])
        elif how == "restore":
            self.engine.forget(slot.seq)
            if self.engine.restore(slot.snap[2], slot.seq):
                slot.tokens, slot.text = list(slot.snap[0]), slot.snap[1]
            else:
                keep, how = 0, "fresh"
        if how == "fresh" or len(tokens) >= self.n_ctx_seq:
            keep, tokens = 0, job.tokens
            self.engine.forget(slot.seq)
            slot.tokens, slot.text = [], ""
        slot.job, slot.todo, slot.cached, slot.prompt_len = job, tokens[keep:], keep, len(tokens)
        self.counters["prompt_tokens_cached"] += keep
        slot.snap_due = len(slot.todo) > 1
        slot.used = time.perf_counter()
        try:
            s = job.sampling
            slot.sampler = self.engine.sampler(s, tokens, job.grammar, job.ban)
        except LfmqError as e:  # llama.cpp refused the request's grammar
            self._fail(slot, str(e), 400)

    def _step(self) -> None:
        busy = self._busy()
        for slot in busy:
            if slot.job.cancelled:
                self.counters["cancelled"] += 1
                self._finish(slot, "cancelled")
        items: list[tuple[int, int, int, bool]] = []
        outs: list[tuple[Slot, int]] = []
        for slot in self._busy():
            if slot.pending is not None:
                items.append((slot.pending, len(slot.tokens), slot.seq, True))
                outs.append((slot, len(items) - 1))
        added: list[tuple[Slot, list[int]]] = []
        for slot in sorted((s for s in self._busy() if s.todo), key=lambda s: s.job.submitted):
            room = self.n_batch - len(items)
            if room <= 0:
                break
            if slot.snap_due and len(slot.todo) == 1:
                self._snapshot(slot)
            part = slot.todo[: min(room, len(slot.todo) - 1 if slot.snap_due else room)]
            start = len(slot.tokens) + sum(len(p) for s, p in added if s is slot)
            last = len(part) == len(slot.todo)
            for i, token in enumerate(part):
                items.append((token, start + i, slot.seq, last and i == len(part) - 1))
            if last:
                outs.append((slot, len(items) - 1))
            added.append((slot, part))
        if not items:
            return
        self.engine.decode_many(items)
        self.counters["batched_steps"] += len({seq for _, _, seq, _ in items}) > 1
        for slot in self._busy():
            if slot.pending is not None:
                self._hold(slot, [slot.pending])
                slot.pending = None
        for slot, part in added:
            self._hold(slot, part)
            del slot.todo[: len(part)]
            self.counters["prompt_tokens_evaluated"] += len(part)
        for slot, index in outs:
            self._sample(slot, index)

    def _hold(self, slot: Slot, tokens: list[int]) -> None:
        slot.tokens.extend(tokens)
        slot.text += self.model.detokenize(tokens)

    def _snapshot(self, slot: Slot) -> None:
        slot.snap_due = False
        state = self.engine.snapshot(slot.seq)
        if state is not None:
            slot.snap = (tuple(slot.tokens), slot.text, state)

    def _sample(self, slot: Slot, index: int) -> None:
        job = slot.job
        token = slot.sampler.sample(index)
        if slot.generated == 0:
            slot.first = time.perf_counter() - job.submitted
        if self.engine.is_eog(token):
            self._finish(slot, "stop")
            return
        slot.generated += 1
        self.counters["generated_tokens"] += 1
        job.emit(("token", token, self.engine.piece(token)))
        if job.max_tokens is not None and slot.generated >= job.max_tokens:
            self._finish(slot, "length")
        elif len(slot.tokens) + 1 >= self.n_ctx_seq:
            self._finish(slot, "length")  # the context is full
        else:
            slot.pending = token

    def _finish(self, slot: Slot, reason: str | None) -> None:
        job, usage = slot.job, Usage(slot.prompt_len, slot.cached, slot.generated, slot.first)
        if slot.sampler is not None:
            slot.sampler.free()
        with self._cond:
            slot.clear_job()  # before the job hears of its end, so that /health never shows it running after
        if job is not None and reason is not None:
            job.emit(("end", reason, usage))

    def _fail(self, slot: Slot, message: str, status: int) -> None:
        if slot.job is not None:
            slot.job.emit(("error", message, status))
        self._finish(slot, None)
