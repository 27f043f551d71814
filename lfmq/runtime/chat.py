"""Chat: one-shot `chat(model, messages, tools=...)` and the `Chat` session, which keeps the conversation's tokens in
the context so that each turn evaluates only its new tokens (LFM2's conv state cannot be cut back, only extended).

Context overflow policy of a session: before a turn, if the prompt plus the room kept for the answer (max_tokens,
or a quarter of the context) does not fit, the oldest whole turns are dropped (the system prompt and the newest
turn are kept) until the prompt and that room take at most (1 - overflow_share) of the context, and the prompt is
evaluated afresh. Dropping half the context at once (the default) makes that full re-evaluation happen once per
many turns instead of on every turn once the context is full (overflow_share 0 drops just enough, one turn at a
time). If the newest message alone does not fit, ContextOverflowError. An answer that reaches the end of the context
stops with finish_reason "context".

Regenerate and edit-last: at the end of each turn the session checkpoints the sequence state (Model.checkpoint,
bounded in memory, the oldest dropped first), so a new answer to the last message, or to an edited last message,
evaluates only the last turn's tokens instead of the whole conversation."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from lfmq.errors import UsageError
from lfmq.errors import ContextOverflowError
from lfmq.runtime.generate import Chunk, Stats, stream_generate
from lfmq.runtime.model import Model
from lfmq.runtime.tools import CALL_END, CALL_START, ToolCall, call_grammar, format_calls, parse_reply

TOOL_CHOICES = ("auto", "required", "none")
MARKS = 8  # turn ends whose tokens a session remembers (the model keeps the matching checkpoints)
Message = Mapping[str, Any]


@dataclass(frozen=True)
class ChatStats(Stats):
    """A session turn's Stats, with what fitting the conversation into the context cost."""

    dropped_turns: int = 0        # oldest turns dropped just before this one to fit the context
    dropped_tokens: int = 0       # the prompt tokens they took
    reprefill: bool = False       # the turn could not extend what the context held: the conversation was evaluated
    # again, from the start or from a snapshot (prompt_reused says how many tokens were kept)

    @classmethod
    def of(cls, stats: Stats, **extra: Any) -> ChatStats:
        return cls(**{f.name: getattr(stats, f.name) for f in fields(Stats)}, **extra)


@dataclass(frozen=True)
class Reply:
    """An assistant turn: the raw text (tool-call markers kept), its prose, and the calls parsed from it."""

    text: str
    content: str
    tool_calls: tuple[ToolCall, ...]
    tool_error: str | None
    stats: Stats | None

    @classmethod
    def from_text(cls, text: str, stats: Stats | None = None, tools: Sequence[Message] | None = None) -> Reply:
        """tools: the tools offered (a call without markers counts only for these; None: any name)."""
        parsed = parse_reply(text, tools)
        return cls(text, parsed.content, parsed.calls, parsed.error, stats)

    @property
    def reasoning(self) -> str:
        """The `<think>` text of the turn (content leaves it out)."""
        return parse_reply(self.text).reasoning

    @property
    def message(self) -> dict[str, Any]:
        """The turn as a message to send back in the history."""
        return {"role": "assistant", "content": self.text}


def _normalize(message: Message) -> Message:
    """An OpenAI-style assistant message with `tool_calls` gets them written into its content, where LFM2 expects them."""
    calls = message.get("tool_calls")
    if message.get("role") != "assistant" or not calls or CALL_START in str(message.get("content") or ""):
        return message
    content = (message.get("content") or "") + CALL_START + format_calls(calls) + CALL_END
    return {k: v for k, v in message.items() if k != "tool_calls"} | {"content": content}


def _constraints(model: Model, tools: Sequence[Message] | None, tool_choice: str) -> dict[str, Any]:
    if tool_choice not in TOOL_CHOICES:
        raise UsageError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)}, not {tool_choice!r}")
    if tool_choice == "required":
        if not tools:
            raise UsageError("tool_choice='required' needs tools")
        return {"grammar": call_grammar(tools), "ban_tokens": model.split_utf8_tokens()}
    if tool_choice == "none" and tools:
        return {"ban_tokens": model.tokenize(CALL_START)[:1]}
    return {}


def one_turn(text: str, system: str | None = None) -> list[Message]:
    """The messages of a one-shot prompt (`lfmq generate`, here or on a device): the system text if any, the user's."""
    return ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]


def stream_chat(model: Model, messages: Sequence[Message], *, tools: Sequence[Message] | None = None,
                tool_choice: str = "auto", max_tokens: int | None = None, **kwargs: Any) -> Iterator[Chunk]:
    """Render messages (and tools) through the model's template and stream the assistant's answer."""
    prompt = model.render([_normalize(m) for m in messages], tools=tools)
    yield from stream_generate(model, model.tokenize(prompt), max_tokens=max_tokens,
                               **{**_constraints(model, tools, tool_choice), **kwargs})


def collect(model: Model, stream: Iterable[Chunk], on_text: Callable[[str], None] | None = None,
            tools: Sequence[Message] | None = None) -> Reply:
    """Consume a stream into a Reply, handing each piece of text to on_text as it comes."""
    ids: list[int] = []
    stats = None
    for chunk in stream:
        if on_text is not None:
            on_text(chunk.text)
        ids.extend(chunk.tokens)
        stats = chunk.stats or stats
    return Reply.from_text(model.detokenize(ids), stats, tools)


def chat(model: Model, messages: Sequence[Message], **kwargs: Any) -> Reply:
    """One assistant turn for a list of messages; tool calls in it come back parsed."""
    return collect(model, stream_chat(model, messages, **kwargs), tools=kwargs.get("tools") or ())


def check_overflow_share(share: float) -> None:
    if not 0 <= share < 1:
        raise UsageError(f"overflow_share is the share of the context freed at once when it is full: 0 to below 1, "
                         f"not {share}")


class Chat:
    """A conversation that lives in the model's context: send() a message, get a Reply; regenerate() or edit_last()
    to redo the last turn; reset() to start over. overflow_share: the share of the context freed at once when the
    conversation no longer fits (0: drop the oldest turns one at a time)."""

    def __init__(self, model: Model, *, system: str | None = None, tools: Sequence[Message] | None = None,
                 tool_choice: str = "auto", max_tokens: int | None = None, overflow_share: float = 0.5,
                 **sampling: Any) -> None:
        check_overflow_share(overflow_share)
        self.model = model
        self.system = system
        self.tools = list(tools) if tools else None
        self.max_tokens = max_tokens
        self.overflow_share = overflow_share
        self.sampling = sampling
        self.last: Reply | None = None
        self.trimmed = 0                      # messages dropped so far to fit the context
        self.dropped_turns = 0                # turns dropped so far to fit the context
        _constraints(model, self.tools, tool_choice)  # fail early on a bad choice
        self.tool_choice = tool_choice
        self._messages: list[dict[str, Any]] = []
        self._text, self._tokens = "", []     # the prompt text evaluated so far, and its tokens
        self._marks: list[tuple[str, list[int]]] = []  # (text, tokens) at recent turn ends, newest last

    @property
    def history(self) -> list[dict[str, Any]]:
        """The messages as the template sees them, system prompt first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self._messages]

    def reset(self) -> None:
        """Forget the conversation (the system prompt and tools stay)."""
        self._messages, self.last, self.trimmed, self.dropped_turns = [], None, 0, 0
        self._text, self._tokens, self._marks = "", [], []

    def _render(self) -> tuple[str, list[int]]:
        """The prompt text and its tokens; the part up to a recent turn end keeps the tokens it was evaluated as
        (sampled tokens need not re-tokenize alike)."""
        text = self.model.render(self.history, tools=self.tools)
        best = max((m for m in self._marks if text.startswith(m[0])), key=lambda m: len(m[0]), default=None)
        if best is None:
            return text, self.model.tokenize(text)
        return text, best[1] + self.model.tokenize(text[len(best[0]):])

    def _fit(self, reserve: int) -> tuple[str, list[int], int, int]:
        """The prompt, after dropping old turns if it does not fit; also how many turns and tokens were dropped.
        The fewest oldest turns whose removal leaves (1 - overflow_share) of the context are found by bisection, so
        a long conversation on a large context costs a few renders, not one per turn."""
        n_ctx = self.model.n_ctx
        text, tokens = self._render()
        if len(tokens) + reserve <= n_ctx:
            return text, tokens, 0, 0
        goal = n_ctx - int(self.overflow_share * n_ctx)  # room to leave once something has to go
        messages = self._messages
        starts = [i for i, m in enumerate(messages) if m["role"] == "user"]  # turn k begins at starts[k]

        def without(k: int) -> tuple[str, list[int]]:
            self._messages = messages[starts[k]:] if k else messages
            return self._render()

        hi = max(len(starts) - 1, 0)  # only the newest turn left
        lo = min(1, hi)
        while lo < hi:
            mid = (lo + hi) // 2
            if len(without(mid)[1]) + reserve <= goal:
                hi = mid
            else:
                lo = mid + 1
        cut, (text, shorter) = starts[lo] if lo else 0, without(lo)
        if len(shorter) + reserve > n_ctx:
            self._messages = messages
            raise ContextOverflowError(
                f"the newest message needs {len(shorter)} prompt tokens and the context of {n_ctx} "
                f"keeps {reserve} free for the answer: shorten it, lower max_tokens or load with a larger n_ctx")
        self.trimmed += cut
        return text, shorter, lo, len(tokens) - len(shorter)

    def _head(self, text: str, tokens: list[int]) -> int:
        """How many of the prompt's tokens are its system turn (system prompt and tools): Model.sync keeps a
        snapshot there, so a re-evaluation after an overflow starts after it."""
        start = text.find("<|im_start|>")
        end = text.find("<|im_end|>\n", start) + len("<|im_end|>\n")
        if start < 0 or not text.startswith("<|im_start|>system\n", start) or end <= start:
            return 0
        head = self.model.tokenize(text[:end])
        return len(head) if len(head) < len(tokens) and tokens[: len(head)] == head else 0

    def _remember(self, text: str, tokens: list[int]) -> None:
        self._text, self._tokens = text, tokens
        self._marks = [*self._marks[-(MARKS - 1):], (text, tokens)]

    def _answer(self, saved: tuple[list[dict[str, Any]], int], role: str, max_tokens: int | None,
                interrupt: Callable[[], bool] | None, overrides: dict[str, Any]) -> Iterator[Chunk]:
        """Stream the answer to the messages as they are now; `saved` (messages, trimmed) is put back if no answer
        starts."""
        max_tokens = max_tokens or self.max_tokens
        try:
            text, tokens, turns, dropped = self._fit(max_tokens or self.model.n_ctx // 4)
        except BaseException:  # a turn that cannot be sent leaves the conversation as it was
            self._messages, self.trimmed = saved
            raise
        held = self.model.state
        reprefill = bool(self._tokens) and not (len(held) < len(tokens) and tuple(tokens[: len(held)]) == held)
        choice = self.tool_choice if role == "user" else "auto"  # "required" forces a call, not an answer to it
        constraints = _constraints(self.model, self.tools, choice)
        ids: list[int] = []
        stats, started = None, False
        try:
            for chunk in stream_generate(self.model, tokens, max_tokens=max_tokens, interrupt=interrupt,
                                         snapshot_at=self._head(text, tokens),
                                         **{**constraints, **self.sampling, **overrides}):
                started = True
                ids.extend(chunk.tokens)
                if chunk.stats is not None:
                    stats = ChatStats.of(chunk.stats, dropped_turns=turns, dropped_tokens=dropped, reprefill=reprefill)
                    chunk = replace(chunk, stats=stats)
                yield chunk
        finally:
            if started:
                reply = self.model.detokenize(ids)
                self._messages.append({"role": "assistant", "content": reply})
                self._remember(text + reply, tokens + ids)
                self.dropped_turns += turns
                self.model.checkpoint()  # a turn boundary: redoing the next turn starts from here
                self.last = Reply.from_text(reply, stats, self.tools or ())
            else:
                self._messages, self.trimmed = saved

    def stream(self, content: Any, *, role: str = "user", max_tokens: int | None = None,
               interrupt: Callable[[], bool] | None = None, **overrides: Any) -> Iterator[Chunk]:
        """Add a message (role "tool" for a tool result) and stream the answer; the answer joins the history even
        when the stream is stopped early."""
        saved = (list(self._messages), self.trimmed)
        self._messages.append({"role": role, "content": content})
        yield from self._answer(saved, role, max_tokens, interrupt, overrides)

    def send(self, content: Any, **kwargs: Any) -> Reply:
        """Add a message and return the whole answer."""
        return self._collect(self.stream(content, **kwargs))

    def stream_regenerate(self, *, max_tokens: int | None = None, interrupt: Callable[[], bool] | None = None,
                          **overrides: Any) -> Iterator[Chunk]:
        """Replace the last answer with a new one, streamed (pass another seed or temperature for a different one)."""
        if len(self._messages) < 2 or self._messages[-1]["role"] != "assistant":
            raise UsageError("nothing to regenerate: the conversation does not end with an answer")
        saved = (list(self._messages), self.trimmed)
        del self._messages[-1]
        yield from self._answer(saved, self._messages[-1]["role"], max_tokens, interrupt, overrides)

    def regenerate(self, **kwargs: Any) -> Reply:
        """Replace the last answer with a new one; only the last turn is evaluated again."""
        return self._collect(self.stream_regenerate(**kwargs))

    def stream_edit_last(self, content: Any, *, max_tokens: int | None = None,
                         interrupt: Callable[[], bool] | None = None, **overrides: Any) -> Iterator[Chunk]:
        """Replace the last user message (and what followed it) with `content` and stream the new answer."""
        last = max((i for i, m in enumerate(self._messages) if m["role"] == "user"), default=None)
        if last is None:
            raise UsageError("no message to edit: the conversation has no user message yet")
        saved = (list(self._messages), self.trimmed)
        self._messages[last:] = [{"role": "user", "content": content}]
        yield from self._answer(saved, "user", max_tokens, interrupt, overrides)

    def edit_last(self, content: Any, **kwargs: Any) -> Reply:
        """Replace the last user message and answer it anew; only the last turn is evaluated again."""
        return self._collect(self.stream_edit_last(content, **kwargs))

    def _collect(self, stream: Iterator[Chunk]) -> Reply:
        for _ in stream:
            pass
        assert self.last is not None
        return self.last
