"""Chat: one-shot `chat(model, messages, tools=...)` and the `Chat` session, which keeps the conversation's tokens in
the context so that each turn evaluates only its new tokens (LFM2's conv state cannot be cut back, only extended).

Context overflow policy of a session: before a turn, if the prompt plus the room kept for the answer (max_tokens,
or a quarter of the context) does not fit, the oldest whole turns are dropped (the system prompt is kept) and the
prompt is evaluated afresh; if the newest message alone does not fit, ContextOverflowError. An answer that reaches
the end of the context stops with finish_reason "context"."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from lfmq.errors import UsageError
from lfmq.errors import ContextOverflowError
from lfmq.runtime.generate import Chunk, Stats, stream_generate
from lfmq.runtime.model import Model
from lfmq.runtime.tools import CALL_END, CALL_START, ToolCall, call_grammar, format_calls, parse_reply

TOOL_CHOICES = ("auto", "required", "none")
Message = Mapping[str, Any]


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


class Chat:
    """A conversation that lives in the model's context: send() a message, get a Reply; reset() to start over."""

    def __init__(self, model: Model, *, system: str | None = None, tools: Sequence[Message] | None = None,
                 tool_choice: str = "auto", max_tokens: int | None = None, **sampling: Any) -> None:
        self.model = model
        self.system = system
        self.tools = list(tools) if tools else None
        self.max_tokens = max_tokens
        self.sampling = sampling
        self.last: Reply | None = None
        self.trimmed = 0                      # messages dropped so far to fit the context
        _constraints(model, self.tools, tool_choice)  # fail early on a bad choice
        self.tool_choice = tool_choice
        self._messages: list[dict[str, Any]] = []
        self._text, self._tokens = "", []     # the prompt text evaluated so far, and its tokens

    @property
    def history(self) -> list[dict[str, Any]]:
        """The messages as the template sees them, system prompt first."""
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self._messages]

    def reset(self) -> None:
        """Forget the conversation (the system prompt and tools stay)."""
        self._messages, self.last, self.trimmed = [], None, 0
        self._text, self._tokens = "", []

    def _prompt(self, reserve: int) -> tuple[str, list[int]]:
        kept, trimmed = list(self._messages), self.trimmed
        try:
            return self._fit(reserve)
        except BaseException:  # a turn that cannot be sent leaves the conversation as it was
            self._messages, self.trimmed = kept, trimmed
            raise

    def _fit(self, reserve: int) -> tuple[str, list[int]]:
        while True:
            text = self.model.render(self.history, tools=self.tools)
            if self._text and text.startswith(self._text):
                # the tokens the context already holds stay as they are (sampled tokens need not re-tokenize alike)
                tokens = self._tokens + self.model.tokenize(text[len(self._text):])
            else:
                tokens = self.model.tokenize(text)
            if len(tokens) + reserve <= self.model.n_ctx:
                return text, tokens
            if not self._drop_oldest_turn():
                raise ContextOverflowError(
                    f"the newest message needs {len(tokens)} prompt tokens and the context of {self.model.n_ctx} "
                    f"keeps {reserve} free for the answer: shorten it, lower max_tokens or load with a larger n_ctx")

    def _drop_oldest_turn(self) -> bool:
        starts = [i for i, m in enumerate(self._messages) if m["role"] == "user"]
        if len(starts) < 2:
            return False  # only the current turn is left
        self.trimmed += starts[1]
        del self._messages[: starts[1]]
        return True

    def stream(self, content: Any, *, role: str = "user", max_tokens: int | None = None,
               interrupt: Callable[[], bool] | None = None, **overrides: Any) -> Iterator[Chunk]:
        """Add a message (role "tool" for a tool result) and stream the answer; the answer joins the history even
        when the stream is stopped early."""
        max_tokens = max_tokens or self.max_tokens
        self._messages.append({"role": role, "content": content})
        try:
            text, tokens = self._prompt(max_tokens or self.model.n_ctx // 4)
        except BaseException:
            self._messages.pop()
            raise
        choice = self.tool_choice if role == "user" else "auto"  # "required" forces a call, not an answer to it
        constraints = _constraints(self.model, self.tools, choice)
        ids: list[int] = []
        stats, started = None, False
        try:
            for chunk in stream_generate(self.model, tokens, max_tokens=max_tokens, interrupt=interrupt,
                                         **{**constraints, **self.sampling, **overrides}):
                started = True
                ids.extend(chunk.tokens)
                stats = chunk.stats or stats
                yield chunk
        finally:
            if started:
                reply = self.model.detokenize(ids)
                self._messages.append({"role": "assistant", "content": reply})
                self._text, self._tokens = text + reply, tokens + ids
                self.last = Reply.from_text(reply, stats, self.tools or ())
            else:
                self._messages.pop()

    def send(self, content: Any, **kwargs: Any) -> Reply:
        """Add a message and return the whole answer."""
        for _ in self.stream(content, **kwargs):
            pass
        assert self.last is not None
        return self.last
