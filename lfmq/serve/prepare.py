"""From a checked request to what the worker runs: the prompt through the model's chat template (assistant turns
written back as the model wrote them, so a continued conversation re-uses its state), its tokens, the grammar that
forces a tool call or a JSON answer, the tokens to ban; and the replies remembered for that."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from lfmq.errors import LfmqError, RequestError, SchemaError, TemplateError
from lfmq.runtime.extract import Schema, load_schema
from lfmq.runtime.model import Model
from lfmq.runtime.tools import CALL_END, CALL_START, call_grammar, format_calls
from lfmq.serve.request import ChatRequest


class ReplyMemory:
    """The raw text of recent replies, by the ids of their tool calls and by the content the client was sent: an
    assistant turn sent back is rendered as the model wrote it (markers, spacing, reasoning), so its tokens match
    what the slot holds. Bounded: the oldest go first."""

    def __init__(self, size: int = 512) -> None:
        self._raw: OrderedDict[Any, str] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def remember(self, raw: str, content: str | None, call_ids: list[str]) -> None:
        with self._lock:
            for key in ([("calls", tuple(call_ids))] if call_ids else []) + ([("content", content)] if content else []):
                self._raw[key] = raw
                self._raw.move_to_end(key)
            while len(self._raw) > self._size:
                self._raw.popitem(last=False)

    def recall(self, message: dict[str, Any]) -> str | None:
        ids = tuple(c.get("id") for c in message.get("tool_calls") or ())
        key = ("calls", ids) if ids and all(ids) else ("content", message.get("content"))
        with self._lock:
            return self._raw.get(key)


@dataclass(frozen=True)
class Prepared:
    """A request ready for the worker."""

    text: str
    tokens: list[int]
    grammar: str | None
    ban: tuple[int, ...]
    schema: Schema | None
    tools: list[dict[str, Any]] | None    # what the reply parser accepts as bare calls
    in_reasoning: bool


def _history(req: ChatRequest, memory: ReplyMemory) -> list[dict[str, Any]]:
    out = []
    for m in req.messages:
        if m["role"] == "assistant":
            raw = memory.recall(m)
            content = raw if raw is not None else m.get("content") or ""
            if raw is None and m.get("tool_calls"):
                content += CALL_START + format_calls(m["tool_calls"]) + CALL_END
            m = {"role": "assistant", "content": content}
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _constraints(model: Model, req: ChatRequest) -> tuple[str | None, tuple[int, ...], Schema | None]:
    if req.tool_choice in ("required", "named"):
        tools = req.tools if req.tool_choice == "required" else [t for t in req.tools or () if t["name"] == req.tool_name]
        try:
            grammar = call_grammar(tools)
        except LfmqError:
            raise
        except Exception as e:  # the schema converter asserts or raises KeyError on what it cannot express
            raise RequestError(f"the tools' parameter schemas cannot become a grammar ({type(e).__name__}: {e})",
                               "tools") from None
        return grammar, model.split_utf8_tokens(), None
    ban: tuple[int, ...] = ()
    if req.tool_choice == "none" and req.tools:
        ban = tuple(model.tokenize(CALL_START)[:1])
    if req.response_format == "text":
        return None, ban, None
    try:
        schema = load_schema(req.schema if req.response_format == "json_schema" else {"type": "object"})
    except SchemaError as e:
        raise RequestError(f"response_format: {e}", "response_format") from None
    return schema.grammar, model.control_tokens() + model.split_utf8_tokens(), schema


def prepare(model: Model, req: ChatRequest, n_ctx: int, memory: ReplyMemory) -> Prepared:
    """The prompt text and tokens (RequestError when it cannot fit `n_ctx`), the grammar and the bans."""
    try:
        text = model.render(_history(req, memory), tools=req.tools)
    except TemplateError as e:
        raise RequestError(str(e), "messages") from None
    tokens = model.tokenize(text)
    if len(tokens) >= n_ctx:
        raise RequestError(f"the prompt is {len(tokens)} tokens and the context holds {n_ctx} per request: shorten the "
                           "messages, or start the server with a larger -c/--n-ctx", "messages",
                           "context_length_exceeded")
    grammar, ban, schema = _constraints(model, req)
    in_reasoning = text.rstrip().endswith("<think>")
    return Prepared(text, tokens, grammar, ban, schema, req.tools or [], in_reasoning)
