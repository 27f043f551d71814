"""A chat-completions request, checked field by field against what OpenAI's API accepts and what lfmq can serve:
anything wrong raises RequestError (HTTP 400) naming the field, before the model sees it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

from lfmq.errors import RequestError

ROLES = ("system", "developer", "user", "assistant", "tool")
TOOL_CHOICES = ("auto", "none", "required")
MAX_STOPS = 4


@dataclass(frozen=True)
class ChatRequest:
    """The fields of /v1/chat/completions that lfmq serves, checked."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None      # the function objects (name, description, parameters)
    tool_choice: str = "auto"                       # auto | none | required | named
    tool_name: str | None = None                    # the function a named tool_choice forces
    response_format: str = "text"                   # text | json_object | json_schema
    schema: dict[str, Any] | None = None
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    sampling: dict[str, Any] = field(default_factory=dict)  # Sampling fields given (temperature, top_k, seed ...)
    ignore_eos: bool = False


def _fail(message: str, param: str | None = None, code: str | None = None) -> RequestError:
    return RequestError(message, param, code)


def _number(body: Mapping[str, Any], name: str, lo: float, hi: float, *, integer: bool = False) -> Any:
    value = body.get(name)
    if value is None:
        return None
    ok = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok or not lo <= value <= hi:
        kind = "an integer" if integer else "a number"
        raise _fail(f"{name} must be {kind} from {lo:g} to {hi:g}, not {value!r}", name)
    return value


def _text(content: Any, where: str) -> str | None:
    """Message content: a string, null, or a list of text parts (lfmq serves text models only)."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if not isinstance(part, Mapping) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                raise _fail(f"{where}.content[{i}]: only text parts are supported, not {kind!r}", f"{where}.content")
            parts.append(part["text"])
        return "".join(parts)
    raise _fail(f"{where}.content must be a string or a list of text parts", f"{where}.content")


def _tool_calls(calls: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(calls, list):
        raise _fail(f"{where}.tool_calls must be a list", f"{where}.tool_calls")
    out = []
    for i, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
            raise _fail(f"{where}.tool_calls[{i}] needs a function with a name", f"{where}.tool_calls")
        args = fn.get("arguments", "{}")
        try:
            parsed = json.loads(args) if isinstance(args, str) else args
        except ValueError:
            raise _fail(f"{where}.tool_calls[{i}].function.arguments is not JSON", f"{where}.tool_calls") from None
        if not isinstance(parsed, dict):
            raise _fail(f"{where}.tool_calls[{i}].function.arguments must be a JSON object", f"{where}.tool_calls")
        out.append({"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": parsed}})
    return out


def _messages(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or not value:
        raise _fail("messages must be a non-empty list of chat messages", "messages")
    out = []
    for i, m in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(m, Mapping):
            raise _fail(f"{where} must be an object with a role and content", "messages")
        role = m.get("role")
        if role not in ROLES:
            raise _fail(f"{where}.role must be one of {', '.join(ROLES)}, not {role!r}", f"{where}.role")
        content = _text(m.get("content"), where)
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": content}
        if role == "assistant" and m.get("tool_calls"):
            msg["tool_calls"] = _tool_calls(m["tool_calls"], where)
        elif content is None:
            raise _fail(f"{where} ({role}) has no content", f"{where}.content")
        if role == "tool" and m.get("tool_call_id") is not None:
            msg["tool_call_id"] = m["tool_call_id"]
        out.append(msg)
    return out


def _tools(value: Any) -> list[dict[str, Any]] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise _fail("tools must be a list of function tools", "tools")
    out = []
    for i, tool in enumerate(value):
        fn = tool.get("function") if isinstance(tool, Mapping) else None
        if not isinstance(tool, Mapping) or tool.get("type", "function") != "function" or not isinstance(fn, Mapping) \
                or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise _fail(f"tools[{i}] must be {{\"type\": \"function\", \"function\": {{\"name\": ..., \"parameters\": "
                        "{...}}}", "tools")
        if fn.get("parameters") is not None and not isinstance(fn["parameters"], Mapping):
            raise _fail(f"tools[{i}].function.parameters must be a JSON schema object", "tools")
        out.append(dict(fn))
    return out or None


def _tool_choice(value: Any, tools: list[dict[str, Any]] | None) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    if isinstance(value, str):
        if value not in TOOL_CHOICES:
            raise _fail(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or a named function, not {value!r}",
                        "tool_choice")
        if value == "required" and not tools:
            raise _fail("tool_choice 'required' needs tools", "tool_choice")
        return value, None
    fn = value.get("function") if isinstance(value, Mapping) else None
    if not isinstance(fn, Mapping) or not isinstance(fn.get("name"), str):
        raise _fail("tool_choice must be auto, none, required or {\"type\": \"function\", \"function\": {\"name\": ...}}",
                    "tool_choice")
    names = [t["name"] for t in tools or ()]
    if fn["name"] not in names:
        raise _fail(f"tool_choice names the function {fn['name']!r}, which is not among the tools "
                    f"({', '.join(names) or 'none given'})", "tool_choice")
    return "named", fn["name"]


def _response_format(value: Any) -> tuple[str, dict[str, Any] | None]:
    if value is None:
        return "text", None
    kind = value.get("type") if isinstance(value, Mapping) else None
    if kind in ("text", "json_object"):
        return kind, None
    if kind == "json_schema":
        spec = value.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise _fail("response_format json_schema needs json_schema.schema, a JSON schema object", "response_format")
        return kind, dict(schema)
    raise _fail("response_format.type must be text, json_object or json_schema", "response_format")


def _stop(value: Any) -> tuple[str, ...]:
    stops = [value] if isinstance(value, str) else value if value is not None else []
    if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
        raise _fail(f"stop must be a non-empty string or a list of at most {MAX_STOPS} of them", "stop")
    return tuple(stops)


def _flag(body: Mapping[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise _fail(f"{name} must be true or false", name)
    return value


def parse_request(body: Any) -> ChatRequest:
    """A request body (parsed JSON) checked into a ChatRequest; RequestError names what is wrong."""
    if not isinstance(body, Mapping):
        raise _fail("the request body must be a JSON object")
    if body.get("n", 1) != 1:
        raise _fail("lfmq serve returns one choice: n must be 1", "n")
    if body.get("logprobs"):
        raise _fail("logprobs are not supported", "logprobs")
    messages = _messages(body.get("messages"))
    tools = _tools(body.get("tools"))
    tool_choice, tool_name = _tool_choice(body.get("tool_choice"), tools)
    fmt, schema = _response_format(body.get("response_format"))
    if fmt != "text" and tool_choice in ("required", "named"):
        raise _fail("a forced tool call and a JSON response_format exclude each other", "response_format")
    max_tokens = _number(body, "max_completion_tokens", 1, 1 << 31, integer=True)
    max_tokens = _number(body, "max_tokens", 1, 1 << 31, integer=True) if max_tokens is None else max_tokens
    sampling = {"temperature": _number(body, "temperature", 0, 2), "top_p": _number(body, "top_p", 0, 1),
                "top_k": _number(body, "top_k", 0, 1 << 20, integer=True),
                "min_p": _number(body, "min_p", 0, 1),
                "repeat_penalty": _number(body, "repeat_penalty", 0, 10),
                "seed": _number(body, "seed", -(1 << 63), 1 << 64, integer=True)}
    if sampling["top_p"] == 0:
        raise _fail("top_p must be above 0", "top_p")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, Mapping):
        raise _fail("stream_options must be an object", "stream_options")
    stream = _flag(body, "stream")
    return ChatRequest(messages, tools, tool_choice, tool_name, fmt, schema, stream,
                       bool(stream and options and options.get("include_usage")), max_tokens, _stop(body.get("stop")),
                       {k: v for k, v in sampling.items() if v is not None}, _flag(body, "ignore_eos"))
