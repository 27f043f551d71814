"""LFM2 tool calls: `<|tool_call_start|>[f(a=1, b="x"), pkg.g(c=[1, 2])]<|tool_call_end|>`.

Reading them lives in toolparse.py (the syntax of one call block, never evaluated) and toolstream.py (a reply split
into prose, reasoning and calls, while it streams or whole); this module writes calls back as the model writes
them, builds the grammar that forces a call, and loads tool definitions."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from lfmq.errors import ToolsFileError
from lfmq.runtime.toolparse import ToolCall, parse_calls
from lfmq.runtime.toolstream import (CALL_END, CALL_START, CallErrorEvent, CallEvent, ContentEvent, ParsedReply,
                                     ReasoningEvent, ReplyEvent, ReplyParser, parse_reply)

__all__ = ["CALL_END", "CALL_START", "CallErrorEvent", "CallEvent", "ContentEvent", "MAX_CALLS", "ParsedReply",
           "ReasoningEvent", "ReplyEvent", "ReplyParser", "ToolCall", "call_grammar", "format_calls", "load_tools",
           "parse_calls", "parse_reply"]

MAX_CALLS = 4  # parallel calls a forced call list may hold (a model that never stops listing calls still ends)


def _literal(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def format_calls(calls: Sequence[ToolCall | Mapping[str, Any]]) -> str:
    """Calls as the model writes them: `[f(a=1, b="x")]` (JSON literals, which parse_calls reads back)."""
    parts = []
    for c in calls:
        name, args = (c.name, c.arguments) if isinstance(c, ToolCall) else _openai_call(c)
        parts.append(f"{name}(" + ", ".join(f"{k}={_literal(v)}" for k, v in args.items()) + ")")
    return "[" + ", ".join(parts) + "]"


def _openai_call(call: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    fn = call.get("function", call)
    args = fn.get("arguments", {})
    return fn["name"], json.loads(args) if isinstance(args, str) else dict(args)


def _function(tool: Mapping[str, Any]) -> Mapping[str, Any]:
    return tool["function"] if isinstance(tool.get("function"), Mapping) else tool


def _value_schema(schema: Any) -> Any:
    """A parameter schema the grammar converter understands; one without structure (just a description) is any value."""
    structural = {"type", "enum", "const", "anyOf", "oneOf", "allOf", "$ref", "properties", "items", "pattern"}
    if isinstance(schema, Mapping) and structural & set(schema):
        return schema
    return {"type": ["string", "number", "boolean", "object", "array", "null"]}


def call_grammar(tools: Sequence[Mapping[str, Any]]) -> str:
    """GBNF that forces a list of 1 to MAX_CALLS calls to the given tools, each argument matching its JSON schema
    (tool_choice "required"). Required arguments come first in schema order, then the optional ones, each of which
    may be left out."""
    from lfmq.llama.binding import schema_converter as converter
    from lfmq.runtime.extract import fix_char_rule

    conv = converter()
    calls = []
    for i, tool in enumerate(tools):
        fn = _function(tool)
        params = fn.get("parameters") or {}
        conv.resolve_refs(params, f"tool{i}")
        props = params.get("properties") or {}
        required = [p for p in props if p in set(params.get("required") or ())]
        optional = [p for p in props if p not in required]
        arg = {p: f'{_literal(p + "=")} {conv.visit(_value_schema(props[p]), f"t{i}-{p}")}' for p in props}
        body = ' ", " '.join(arg[p] for p in required)
        for p in optional:
            body += f' (", " {arg[p]})?' if body else f" ({arg[p]})?"
        name = _literal(fn["name"])
        calls.append(f'{name} "(" {body} ")"' if body else f'{name} "()"')
    rules = [f"root ::= {_literal(CALL_START + '[')} call (\", \" call){{0,{MAX_CALLS - 1}}} {_literal(']' + CALL_END)}",
             "call ::= " + " | ".join(f"( {c} )" for c in calls)]
    return fix_char_rule(conv.format_grammar()) + "\n" + "\n".join(rules) + "\n"


def load_tools(path: str | Path) -> list[dict[str, Any]]:
    """Tool definitions from a JSON file: a list of OpenAI-style function definitions (or {"tools": [...]})."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ToolsFileError(f"cannot read tools file {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ToolsFileError(f"tools file {path} is not JSON: {e}") from None
    tools = value.get("tools") if isinstance(value, dict) else value
    if not isinstance(tools, list) or not tools:
        raise ToolsFileError(f"{path}: expected a non-empty JSON list of function definitions")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(_function(tool).get("name"), str):
            raise ToolsFileError(f"{path}: tool {i} has no name (expected {{\"type\": \"function\", \"function\": "
                             "{\"name\": ..., \"parameters\": {...}}})")
    return tools
