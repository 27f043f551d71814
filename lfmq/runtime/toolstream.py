"""A model reply split into prose, reasoning and tool calls, while it streams and after.

What counts as a call:
- a block between `<|tool_call_start|>` and `<|tool_call_end|>` (whitespace allowed after the start marker). The
  end marker may be missing: the block then ends where its bracket closes (prose may follow) or at the end of text.
- a call list without markers (`[get_weather(city="Paris")]`, or the JSON shape `[{"name": "get_weather", ...}]`),
  anywhere in the prose, only when its first name is one of the offered tools (llama.cpp issue 24071: a `[` in prose
  is prose). With tools=None (no list given) any dotted name counts, as lfmq's parse_reply always did.
- `<think>...</think>` is reasoning wherever it opens; nothing inside it is parsed (a model reasoning about call
  syntax must not call anything). An unclosed block runs to the end. Stray `</think>` and end markers are dropped.

A block that does not parse yields an error event (its raw text kept for display) and is never a call. In the
summary (ParsedReply) one malformed block voids every call of the reply, so nothing runs on a half-understood
answer. Prose is emitted as soon as it cannot be the start of a marker or of a bare call to an offered tool: only
that ambiguous tail is held back. Feeding a text whole or one character at a time gives the same events joined."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence, Union

from lfmq.errors import StateError, ToolCallError
from lfmq.runtime.toolparse import CLOSERS, PAIRS, ToolCall, parse_calls

CALL_START, CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
THINK_START, THINK_END = "<think>", "</think>"
TAGS = (CALL_START, CALL_END, THINK_START, THINK_END)

_CANDIDATE = re.compile(r"[<\[{]")
_DOTTED = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*")
_BARE_NAME = re.compile(r"[\w.-]+")
_JSON_HEAD = re.compile(r'\{\s*"name"\s*:\s*"([^"\\]*)"')
_JSON_PREFIX = re.compile(r'\{\s*(?:"(?:n(?:a(?:m(?:e(?:"\s*(?::\s*(?:"([^"\\]*))?)?)?)?)?)?)?)?\Z')
_WS = re.compile(r"\s*")
YES, MAYBE, NO = "yes", "maybe", "no"


@dataclass(frozen=True)
class ContentEvent:
    """Prose for the user (markers removed)."""

    text: str


@dataclass(frozen=True)
class ReasoningEvent:
    """Text inside `<think>...</think>`."""

    text: str


@dataclass(frozen=True)
class CallEvent:
    """A complete call, emitted once its block has closed."""

    call: ToolCall


@dataclass(frozen=True)
class CallErrorEvent:
    """A block that looked like calls and does not parse: never run. raw is the block as the model wrote it."""

    error: str
    raw: str


ReplyEvent = Union[ContentEvent, ReasoningEvent, CallEvent, CallErrorEvent]


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its prose, its calls and its reasoning; a malformed call leaves the (non-reasoning) text
    whole, markers included, with no calls and the error."""

    content: str
    calls: tuple[ToolCall, ...] = ()
    error: str | None = None
    reasoning: str = ""


class _ToolNames:
    """The names a bare call may use: the offered tools, plus `a_b` for an offered `a-b` (LM Studio bug 1358:
    models write `resolve_library_id` for `resolve-library-id`)."""

    def __init__(self, tools: Sequence[Mapping[str, Any] | str] | None) -> None:
        self.any = tools is None
        self.offered = frozenset(t if isinstance(t, str) else _tool_name(t) for t in tools or ())
        alias: dict[str, list[str]] = {}
        for name in self.offered:
            alias.setdefault(name.replace("-", "_"), []).append(name)
        self.alias = {k: v[0] for k, v in alias.items() if len(v) == 1 and k not in self.offered}

    def allows(self, name: str) -> bool:
        return bool(_DOTTED.fullmatch(name)) if self.any else name in self.offered or name in self.alias

    def could_start(self, prefix: str) -> bool:
        if self.any:
            return bool(_DOTTED.fullmatch(prefix.rstrip(".")) or not prefix)
        return any(n.startswith(prefix) for n in (*self.offered, *self.alias))

    def canonical(self, call: ToolCall) -> ToolCall:
        name = self.alias.get(call.name) if call.name not in self.offered else None
        return ToolCall(name, call.arguments) if name else call

    @property
    def bare(self) -> bool:
        return self.any or bool(self.offered)


def _tool_name(tool: Mapping[str, Any]) -> str:
    fn = tool.get("function")
    return str((fn if isinstance(fn, Mapping) else tool).get("name", ""))


def _bare_start(text: str, i: int, names: _ToolNames, final: bool) -> str:
    """Whether text[i] (a `[` or `{`) starts a call list without markers: YES, NO, or MAYBE (more text decides)."""
    n, j = len(text), i
    if text[i] == "[":
        j = _WS.match(text, i + 1).end()
        if j == n:
            return NO if final else MAYBE
        if text[j] != "{":
            m = _BARE_NAME.match(text, j)
            if not m:
                return NO
            if m.end() == n:
                return MAYBE if not final and names.could_start(m.group()) else NO
            if not names.allows(m.group()):
                return NO
            k = _WS.match(text, m.end()).end()
            if k == n:
                return NO if final else MAYBE
            return YES if text[k] == "(" else NO
    if names.any:
        return NO  # JSON-shaped calls without markers count only for offered tools
    if (m := _JSON_HEAD.match(text, j)):
        return YES if names.allows(m.group(1)) else NO
    if not final and (m := _JSON_PREFIX.match(text, j)):
        return MAYBE if m.group(1) is None or names.could_start(m.group(1)) else NO
    return NO


class _Scanner:
    """Walks a call block: brackets and strings (any Python quoting) tracked, resumable as text arrives."""

    def __init__(self, marked: bool) -> None:
        self.marked = marked          # inside markers: only the end marker ends the block for sure
        self.pos = 0
        self.stack: list[str] = []
        self.quote: str | None = None
        self.broken = False           # a closer that matches nothing: the parser will say why
        self.closed: int | None = None  # where the outermost bracket closed

    def run(self, text: str, final: bool) -> tuple[str, int] | None:
        """("end", i): an end marker at i; ("closed", i): the outer bracket closed just before i; None: need more."""
        p, n = self.pos, len(text)
        while p < n:
            c = text[p]
            if self.marked and c == "<":
                if text.startswith(CALL_END, p):
                    self.pos = p
                    return "end", p
                if not final and CALL_END.startswith(text[p:]):
                    break
            if self.quote is not None:
                if c == "\\":
                    if p + 1 == n and not final:
                        break
                    p += 2
                elif text.startswith(self.quote, p):
                    p, self.quote = p + len(self.quote), None
                elif not final and n - p < len(self.quote) and self.quote.startswith(text[p:]):
                    break  # `"` or `""` at the end may still close a `"""` string
                else:
                    p += 1
                continue
            if c in "\"'":
                if not final and n - p < 3 and text[p:] == c * (n - p):
                    break  # `"` or `""` at the end could still become `"""`
                self.quote = c * 3 if text.startswith(c * 3, p) else c
                p += len(self.quote)
                continue
            p += 1
            if c in PAIRS:
                self.stack.append(c)
            elif c in CLOSERS:
                if self.stack and self.stack[-1] == CLOSERS[c]:
                    self.stack.pop()
                    if not self.stack and not self.broken:
                        self.pos = p
                        return "closed", p
                else:
                    self.broken = True
                    if not self.marked:
                        self.pos = p
                        return "closed", p
        self.pos = min(p, n)
        return None


def _partial(text: str, tag: str) -> int:
    """Length of the longest end of text that is a proper beginning of tag (what may still become the tag)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


class ReplyParser:
    """Feed a reply as it streams (`feed(chunk)`), get events back: ContentEvent, ReasoningEvent, CallEvent and
    CallErrorEvent. `finish()` flushes what was held back; `reply` sums the events up as a ParsedReply.

    tools: the offered tools (OpenAI-style definitions or names); calls without markers count only for these.
    None accepts any name. in_reasoning: the prompt already opened `<think>` (the reply starts inside it)."""

    def __init__(self, tools: Sequence[Mapping[str, Any] | str] | None = None, *, in_reasoning: bool = False) -> None:
        self._names = _ToolNames(tools)
        self._mode = "reasoning" if in_reasoning else "prose"
        self._buf = ""
        self._scan: _Scanner | None = None
        self._marker = ""         # the start marker of the open block ("" without markers)
        self._started = False     # the answer has begun: its leading whitespace is dropped until then
        self._done = False
        self._content: list[str] = []
        self._reasoning: list[str] = []
        self._calls: list[ToolCall] = []
        self._errors: list[str] = []
        self._raw: list[str] = []  # everything but reasoning, as written (shown whole when a call is malformed)

    def feed(self, text: str) -> list[ReplyEvent]:
        """Take the next piece of the reply; return the events it completes."""
        if self._done:
            raise StateError("this ReplyParser has finished: start a new one for the next reply")
        self._buf += text
        return self._run(final=False)

    def finish(self) -> list[ReplyEvent]:
        """The reply has ended: flush held-back text and close an unterminated block or reasoning."""
        if self._done:
            return []
        events = self._run(final=True)
        self._done = True
        return events

    @property
    def reply(self) -> ParsedReply:
        """Everything so far, summed up (call after finish() for the whole reply)."""
        error = self._errors[0] if self._errors else None
        content = "".join(self._raw if error else self._content).strip()
        return ParsedReply(content, () if error else tuple(self._calls), error, "".join(self._reasoning).strip())

    def _run(self, final: bool) -> list[ReplyEvent]:
        out: list[ReplyEvent] = []
        steps = {"prose": self._prose, "reasoning": self._think, "block": self._block}
        while steps[self._mode](out, final):
            pass
        return out

    def _say(self, out: list[ReplyEvent], text: str) -> None:
        self._raw.append(text)
        if not self._started:
            text = text.lstrip()
            self._started = bool(text)
        if text:
            self._content.append(text)
            out.append(ContentEvent(text))

    def _prose(self, out: list[ReplyEvent], final: bool) -> bool:
        """Emit prose up to the next marker or bare call; True when the mode changed."""
        buf, pos = self._buf, 0
        while (m := _CANDIDATE.search(buf, pos)):
            i = m.start()
            if buf[i] == "<":
                tag = next((t for t in TAGS if buf.startswith(t, i)), None)
                if tag is not None:
                    self._say(out, buf[:i])
                    self._buf = buf[i + len(tag):]
                    self._open(tag)
                    return True
                if not final and any(t.startswith(buf[i:]) for t in TAGS):
                    break
            elif self._names.bare:
                verdict = _bare_start(buf, i, self._names, final)
                if verdict == YES:
                    self._say(out, buf[:i])
                    self._buf = buf[i:]
                    self._open("")
                    return True
                if verdict == MAYBE:
                    break
            pos = i + 1
        else:
            i = len(buf)
        self._say(out, buf[:i])
        self._buf = buf[i:]
        return False

    def _open(self, tag: str) -> None:
        if tag == THINK_START:
            self._mode = "reasoning"
        elif tag in (CALL_START, ""):
            self._mode, self._marker, self._scan = "block", tag, _Scanner(marked=bool(tag))
        elif tag == CALL_END:
            self._raw.append(tag)  # a stray end marker: not shown, but kept in the raw text
        # a stray THINK_END is dropped

    def _think(self, out: list[ReplyEvent], final: bool) -> bool:
        buf = self._buf
        end = buf.find(THINK_END)
        keep = len(buf) - end if end >= 0 else (0 if final else _partial(buf, THINK_END))
        text, self._buf = buf[: len(buf) - keep], buf[len(buf) - keep:]
        if text:
            self._reasoning.append(text)
            out.append(ReasoningEvent(text))
        if end >= 0:
            self._buf = self._buf[len(THINK_END):]
            self._mode = "prose"
            return True
        return False

    def _block(self, out: list[ReplyEvent], final: bool) -> bool:
        scan, buf = self._scan, self._buf
        assert scan is not None
        while scan.closed is None:
            hit = scan.run(buf, final)
            if hit is None:
                return self._end_block(out, len(buf), len(buf)) if final else False
            kind, at = hit
            if kind == "end":
                return self._end_block(out, at, at + len(CALL_END))
            if not scan.marked:
                return self._end_block(out, at, at)
            scan.closed = at
        # inside markers the outer bracket has closed: the end marker may follow, after whitespace
        k = _WS.match(buf, scan.closed).end()
        if buf.startswith(CALL_END, k):
            return self._end_block(out, scan.closed, k + len(CALL_END))
        if CALL_END.startswith(buf[k:]) and not final:
            return False
        return self._end_block(out, scan.closed, scan.closed)  # no end marker: what follows is prose

    def _end_block(self, out: list[ReplyEvent], body_end: int, consumed: int) -> bool:
        body, raw = self._buf[:body_end], self._marker + self._buf[:consumed]
        self._buf, self._mode, self._scan = self._buf[consumed:], "prose", None
        self._raw.append(raw)
        try:
            calls = parse_calls(body)
        except ToolCallError as e:
            self._errors.append(str(e))
            out.append(CallErrorEvent(str(e), raw))
            return True
        for call in calls:
            call = self._names.canonical(call)
            self._calls.append(call)
            out.append(CallEvent(call))
        return True


def parse_reply(text: str, tools: Sequence[Mapping[str, Any] | str] | None = None, *,
                in_reasoning: bool = False) -> ParsedReply:
    """Split a whole reply into prose, tool calls and reasoning, with or without the markers; never raises.

    tools: the offered tools (a call list without markers counts only for these; None: any name)."""
    parser = ReplyParser(tools, in_reasoning=in_reasoning)
    parser.feed(text)
    parser.finish()
    return parser.reply
