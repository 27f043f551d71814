"""Generated tokens to OpenAI's message deltas: UTF-8 put back together, stop strings cut (with the text that might
begin one held back), then LFM2's reply parser splits prose, `<think>` reasoning and tool calls. A streamed answer
and a whole one are the same deltas, sent one by one or joined."""

from __future__ import annotations

import codecs
import secrets
from typing import Any, Sequence

from lfmq.runtime.tools import CallErrorEvent, CallEvent, ContentEvent, ReasoningEvent, ReplyParser


def call_id() -> str:
    return "call_" + secrets.token_hex(12)


class _Stops:
    """Cuts the text at the first stop string; holds back a tail that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops, self.buf, self.hit = tuple(stops), "", False

    def feed(self, text: str) -> str:
        if not self.stops or self.hit:
            return "" if self.hit else text
        self.buf += text
        cut = min((i for i in (self.buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            self.hit, out, self.buf = True, self.buf[:cut], ""
            return out
        keep = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[: len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def finish(self) -> str:
        out, self.buf = self.buf, ""
        return out


class ReplyStream:
    """Feed token pieces (bytes); get OpenAI deltas back ({"content": ...}, {"reasoning_content": ...} or
    {"tool_calls": [...]}). `stopped` turns true once a stop string has matched: generation should end."""

    def __init__(self, tools: list[dict[str, Any]] | None, stops: Sequence[str] = (), in_reasoning: bool = False) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._stops = _Stops(stops)
        self._parser = ReplyParser(tools, in_reasoning=in_reasoning)
        self.raw = ""                   # the text as generated (up to a stop string)
        self.call_ids: list[str] = []

    @property
    def stopped(self) -> bool:
        return self._stops.hit

    def feed(self, piece: bytes) -> list[dict[str, Any]]:
        text = self._stops.feed(self._utf8.decode(piece))
        self.raw += text
        return self._deltas(self._parser.feed(text)) if text else []

    def finish(self) -> list[dict[str, Any]]:
        text = self._stops.feed(self._utf8.decode(b"", final=True)) + self._stops.finish()
        self.raw += text
        return self._deltas([*self._parser.feed(text), *self._parser.finish()])

    def _deltas(self, events: list[Any]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for e in events:
            if isinstance(e, ContentEvent):
                out.append({"content": e.text})
            elif isinstance(e, ReasoningEvent):
                out.append({"reasoning_content": e.text})
            elif isinstance(e, CallErrorEvent):
                out.append({"content": e.raw})  # a malformed call is shown as written, never run
            elif isinstance(e, CallEvent):
                self.call_ids.append(call_id())
                call = e.call.to_openai(self.call_ids[-1])
                out.append({"tool_calls": [{"index": len(self.call_ids) - 1, **call}]})
        return out


def join(deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """The assistant message that a list of deltas adds up to."""
    content = "".join(d.get("content", "") for d in deltas)
    reasoning = "".join(d.get("reasoning_content", "") for d in deltas)
    calls = [{k: v for k, v in c.items() if k != "index"} for d in deltas for c in d.get("tool_calls", ())]
    message: dict[str, Any] = {"role": "assistant", "content": content if content or not calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = calls
    return message
