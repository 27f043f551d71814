"""LFM2 tool calls: `<|tool_call_start|>[f(a=1, b="x"), pkg.g(c=[1, 2])]<|tool_call_end|>`, parsed with the standard
library's `ast` (never eval) into names and JSON-ready argument dicts; Python and JSON literals are both accepted."""

from __future__ import annotations

import ast
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from lfmq.errors import ToolCallError, ToolsFileError

CALL_START, CALL_END = "<|tool_call_start|>", "<|tool_call_end|>"
JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
# a call list without markers: `[name(` or `[pkg.name(` at the very start (a markdown link `[text](url)` is not one)
MAX_CALLS = 4  # parallel calls a forced call list may hold (a model that never stops listing calls still ends)
BARE_CALLS = re.compile(r"^\s*\[\s*[A-Za-z_][\w.]*\s*\(")


@dataclass(frozen=True)
class ToolCall:
    """One call the model asked for."""

    name: str
    arguments: dict[str, Any]

    def to_openai(self, call_id: str | None = None) -> dict[str, Any]:
        """The OpenAI chat-completions shape (arguments as a JSON string)."""
        out: dict[str, Any] = {"type": "function",
                               "function": {"name": self.name, "arguments": json.dumps(self.arguments, ensure_ascii=False)}}
        return {"id": call_id, **out} if call_id else out


@dataclass(frozen=True)
class ParsedReply:
    """A reply split into its prose and its calls; a malformed call list leaves the text whole, with the error."""

    content: str
    calls: tuple[ToolCall, ...] = ()
    error: str | None = None


def _name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_name(node.value)}.{node.attr}"
    raise ToolCallError(f"a tool name must be a (dotted) identifier, not {ast.unparse(node)!r}")


def _value(node: ast.expr) -> Any:
    """A JSON value from a literal node: constants, lists/tuples, dicts, signed numbers, true/false/null names."""
    if isinstance(node, ast.Constant) and (node.value is None or isinstance(node.value, (str, bool, int, float))):
        return node.value
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_value(v) for v in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise ToolCallError("`**` inside a dict argument is not a literal")
        keys = [_value(k) for k in node.keys]  # type: ignore[arg-type]
        if not all(isinstance(k, str) for k in keys):
            raise ToolCallError(f"dict keys must be strings, not {[k for k in keys if not isinstance(k, str)][0]!r}")
        return {k: _value(v) for k, v in zip(keys, node.values)}
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _value(node.operand)
        if isinstance(inner, (int, float)) and not isinstance(inner, bool):
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.Name) and node.id in JSON_NAMES:
        return JSON_NAMES[node.id]
    raise ToolCallError(f"argument value {ast.unparse(node)!r} is not a literal")


def _call(node: ast.expr) -> ToolCall:
    if not isinstance(node, ast.Call):
        raise ToolCallError(f"expected a call like name(arg=value), got {ast.unparse(node)!r}")
    name = _name(node.func)
    if node.args:
        raise ToolCallError(f"{name}: positional arguments have no names; write name=value")
    args: dict[str, Any] = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise ToolCallError(f"{name}: `**` arguments are not literals")
        args[kw.arg] = _value(kw.value)
    return ToolCall(name, args)


def parse_calls(text: str) -> tuple[ToolCall, ...]:
    """`[f(a=1), g(b="x")]` (a single bare call is accepted too) -> calls; raises ToolCallError when malformed."""
    source = text.strip()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # invalid escapes such as "\/" warn in Python 3.12
            tree = ast.parse(source, mode="eval")
    except SyntaxError as e:
        raise ToolCallError(f"not a Python call list ({e.msg} at column {e.offset})") from None
    except (RecursionError, MemoryError, ValueError):
        raise ToolCallError("not a Python call list (too deeply nested or invalid)") from None
    body = tree.body
    try:
        items = body.elts if isinstance(body, ast.List) else [body]
        return tuple(_call(item) for item in items)
    except RecursionError:
        raise ToolCallError("a call argument is nested too deeply") from None


def _blocks(text: str) -> tuple[list[str], str]:
    """The call-list strings between markers (an unterminated last block runs to the end) and the remaining prose."""
    blocks, prose, pos = [], [], 0
    while (start := text.find(CALL_START, pos)) >= 0:
        prose.append(text[pos:start])
        end = text.find(CALL_END, start)
        body_end = end if end >= 0 else len(text)
        blocks.append(text[start + len(CALL_START) : body_end])
        pos = body_end + len(CALL_END) if end >= 0 else len(text)
    prose.append(text[pos:])
    return blocks, "".join(prose).strip()


def parse_reply(text: str) -> ParsedReply:
    """Split a model reply into prose and tool calls, with or without the markers; never raises."""
    blocks, prose = _blocks(text)
    if not blocks:
        if not BARE_CALLS.match(text) or not text.rstrip().endswith("]"):
            return ParsedReply(text)
        blocks, prose = [text], ""
    calls: list[ToolCall] = []
    for block in blocks:
        try:
            calls.extend(parse_calls(block))
        except ToolCallError as e:
            return ParsedReply(text, (), str(e))
    return ParsedReply(prose, tuple(calls))


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
    from lfmq.runtime.extract import converter, fix_char_rule

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
