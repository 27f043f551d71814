"""The syntax of one LFM2 tool-call block, read by lfmq's own tokenizer and parser: nothing is evaluated, and `ast` is
not used because it rejects what LFM2 writes (`memory_get(from=1)`, raw newlines inside a quoted string).

Accepted: `[f(a=1), pkg.g(b="x")]`, one call without brackets (`f(a=1)`), and the JSON shape LFM2 writes when its
system prompt asks for JSON calls (`[{"name": "f", "arguments": {"a": 1}}]`). Argument names are any identifier,
Python keywords included. Values are literals only: strings in any Python quoting (raw newlines kept as written),
numbers (signs, floats, exponents, hex/octal/binary, `_` separators; a zero-padded `007` reads as 7), True/False/None
and true/false/null, lists, tuples (which become lists) and dicts with string keys.

Refused with ToolCallError: every other expression (names, calls, attribute access, operators other than a sign on
a number, lambdas, comprehensions, f-strings, bytes, sets, complex and non-finite numbers), positional, `*` and `**`
arguments (LFM2 is trained on keyword calls; a value without a name cannot be bound safely), an argument or dict key
given twice (which one would the tool see?), and nesting deeper than MAX_DEPTH."""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from typing import Any, NamedTuple

from lfmq.errors import ToolCallError

MAX_DEPTH = 100  # brackets inside one block; a model that never closes them must not exhaust the stack
JSON_NAMES = {"true": True, "false": False, "null": None, "True": True, "False": False, "None": None}
PAIRS = {"(": ")", "[": "]", "{": "}"}
CLOSERS = {v: k for k, v in PAIRS.items()}

_SPACE = re.compile(r"(?:\s|\\\n)+")
_NAME = re.compile(r"[^\W\d]\w*")
_NUMBER = re.compile(r"0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
                     r"|(?:\d(?:_?\d)*(?:\.(?:\d(?:_?\d)*)?)?|\.\d(?:_?\d)*)(?:[eE][+-]?\d(?:_?\d)*)?[jJ]?")
_STRING = re.compile(r"([rRuUbBfF]{0,2})('''|\"\"\"|'|\")")
_PREFIXES = {"", "r", "u", "b", "f", "br", "rb", "fr", "rf"}
_ESCAPE = re.compile(r"\\(?:(\n)|([\\'\"abfnrtv/])|([0-7]{1,3})|x([0-9a-fA-F]{2})|u([0-9a-fA-F]{4})"
                     r"|U([0-9a-fA-F]{8})|N\{([^}]+)\})")
_SIMPLE = {"\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
           "v": "\v", "/": "/"}  # `\/` is JSON's escape for "/"; Python would keep the backslash
_TOOL_NAME = re.compile(r"[\w.-]+")


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


class _Tok(NamedTuple):
    kind: str  # "name", "number", "string", "op", "end"
    text: str
    start: int
    end: int


def _syntax(message: str) -> ToolCallError:
    return ToolCallError(f"not a Python call list: {message}")


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        newline, simple, octal, x, u, big, named = m.groups()
        if newline:
            return ""  # a backslash before a line break continues the line
        if simple:
            return _SIMPLE[simple]
        if octal:
            return chr(int(octal, 8))
        code = int(x or u or big or "0", 16)
        if named is not None:
            try:
                return unicodedata.lookup(named)
            except KeyError:
                return m.group(0)
        return chr(code) if code <= 0x10FFFF else m.group(0)

    text = _ESCAPE.sub(one, body)
    if any("\ud800" <= c <= "\udfff" for c in text):  # JSON writes 🦙 as a \ud83e\udd99 pair: join it
        text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


# a string body up to its closing quote: escaped characters skipped, raw newlines allowed (vLLM PR 48171)
_BODY = {q: re.compile(r"(?:[^\\%s]|\\.)*%s" % (q, q) if len(q) == 1 else r"(?:[^\\]|\\.)*?%s" % q, re.DOTALL)
         for q in ("'", '"', "'''", '"""')}


def _string_end(text: str, pos: int, quote: str) -> int:
    """Index just past the closing quote of a string whose body starts at pos."""
    m = _BODY[quote].match(text, pos)
    if m is None:
        raise _syntax(f"a string opened with {quote} is never closed")
    return m.end()


def tokenize(text: str) -> list[_Tok]:
    """Names (Python keywords among them), numbers, strings and single-character operators; whitespace is dropped."""
    toks, pos, n = [], 0, len(text)
    while True:
        if (m := _SPACE.match(text, pos)):
            pos = m.end()
        if pos >= n:
            toks.append(_Tok("end", "", n, n))
            return toks
        if (m := _STRING.match(text, pos)) and m.group(1).lower() in _PREFIXES:
            end = _string_end(text, m.end(), m.group(2))
            toks.append(_Tok("string", text[pos:end], pos, end))
        elif (m := _NUMBER.match(text, pos)):
            toks.append(_Tok("number", m.group(), pos, m.end()))
        elif (m := _NAME.match(text, pos)):
            toks.append(_Tok("name", m.group(), pos, m.end()))
        else:
            toks.append(_Tok("op", text[pos], pos, pos + 1))
        pos = toks[-1].end


def _match_brackets(toks: list[_Tok]) -> dict[int, int]:
    """Opening token index -> closing token index; raises on a bracket that is never closed or closed wrongly."""
    match: dict[int, int] = {}
    stack: list[int] = []
    for i, tok in enumerate(toks):
        if tok.kind != "op":
            continue
        if tok.text in PAIRS:
            stack.append(i)
            if len(stack) > MAX_DEPTH:
                raise ToolCallError(f"a call argument is nested too deeply (more than {MAX_DEPTH} brackets)")
        elif tok.text in CLOSERS:
            if not stack:
                raise _syntax(f"unmatched {tok.text!r}")
            opener = stack.pop()
            if CLOSERS[tok.text] != toks[opener].text:
                raise _syntax(f"closing {tok.text!r} does not match {toks[opener].text!r}")
            match[opener] = i
    if stack:
        raise _syntax(f"{toks[stack[-1]].text!r} was never closed")
    return match


class _Parser:
    """Recursive descent over the tokens of one block; brackets are known to balance (see _match_brackets)."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.toks = tokenize(text)
        self.match = _match_brackets(self.toks)
        self.toks += [self.toks[-1]] * 3  # look-ahead past the end reads more "end" tokens

    def is_op(self, i: int, chars: str) -> bool:
        return self.toks[i].kind == "op" and self.toks[i].text in chars

    def span(self, i: int) -> str:
        """The source of the expression starting at token i: up to the next comma, colon or closer at its level."""
        j = i
        while not (self.toks[j].kind == "end" or self.is_op(j, ",)]}") or (j > i and self.is_op(j, ":"))):
            j = self.match.get(j, j) + 1
        return self.text[self.toks[i].start : self.toks[max(j - 1, i)].end]

    def not_literal(self, i: int) -> ToolCallError:
        return ToolCallError(f"argument value {self.span(i)!r} is not a literal")

    def expect_follow(self, start: int, i: int, close: int, allowed: str = ",") -> int:
        """After a value that began at token start: the next token must be a comma or the closer at index close."""
        if i == close or self.is_op(i, allowed):
            return i
        if self.toks[i].kind == "end" or self.is_op(i, ")]}"):
            raise _syntax(f"unexpected {self.toks[i].text or 'end'!r} at column {self.toks[i].start + 1}")
        if self.toks[i].kind == "name" and self.is_op(i + 1, "="):
            raise _syntax(f"missing ',' before {self.toks[i].text + '='!r}")
        raise self.not_literal(start)

    # values

    def value(self, i: int) -> tuple[Any, int]:
        """The literal starting at token i and the index of the token after it."""
        tok = self.toks[i]
        if tok.kind == "end" or self.is_op(i, ",)]}:"):
            raise _syntax(f"a value is missing at column {tok.start + 1}")
        if tok.kind == "string":
            return self.strings(i)
        if tok.kind == "number":
            return self.number(i), i + 1
        if tok.kind == "name" and tok.text in JSON_NAMES:
            return JSON_NAMES[tok.text], i + 1
        if self.is_op(i, "-+"):
            inner, nxt = self.value(i + 1) if self.toks[i + 1].kind == "number" or self.is_op(i + 1, "-+") \
                else (None, i + 1)
            if isinstance(inner, (int, float)) and not isinstance(inner, bool):
                return (-inner if tok.text == "-" else inner), nxt
            raise self.not_literal(i)
        if self.is_op(i, "["):
            return self.items(i, self.match[i]), self.match[i] + 1
        if self.is_op(i, "("):
            return self.parens(i, self.match[i]), self.match[i] + 1
        if self.is_op(i, "{"):
            return self.mapping(i, self.match[i]), self.match[i] + 1
        raise self.not_literal(i)

    def strings(self, i: int) -> tuple[str, int]:
        parts = []
        while self.toks[i].kind == "string":  # "ab" "cd" is one string, as in Python
            m = _STRING.match(self.toks[i].text)
            assert m is not None
            prefix, quote = m.group(1).lower(), m.group(2)
            if "b" in prefix or "f" in prefix:
                raise self.not_literal(i)
            body = self.toks[i].text[m.end() : -len(quote)]
            parts.append(body if "r" in prefix else _unescape(body))
            i += 1
        return "".join(parts), i

    def number(self, i: int) -> int | float:
        text = self.toks[i].text
        clean = text.replace("_", "")
        if clean[-1] in "jJ":
            raise self.not_literal(i)
        if clean[:2].lower() in ("0x", "0o", "0b"):
            return int(clean, 0)
        if not any(c in clean for c in ".eE"):
            return int(clean, 10)  # zero-padded decimals (`month=05`) read as decimals
        value = float(clean)
        if not math.isfinite(value):
            raise ToolCallError(f"argument value {text!r} is not a finite number")
        return value

    def items(self, i: int, close: int) -> list[Any]:
        """The values between token i (an opener) and close, comma separated, a trailing comma allowed."""
        out, j = [], i + 1
        while j < close:
            value, nxt = self.value(j)
            out.append(value)
            j = self.expect_follow(j, nxt, close)
            j += j < close
        return out

    def parens(self, i: int, close: int) -> Any:
        """`(x)` is x; `()`, `(x,)` and `(x, y)` are tuples, written as lists."""
        if close == i + 1:
            return []
        value, nxt = self.value(i + 1)
        if nxt == close:
            return value
        return self.items(i, close)

    def mapping(self, i: int, close: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        j = i + 1
        while j < close:
            if self.is_op(j, "*") and self.is_op(j + 1, "*"):
                raise ToolCallError("`**` inside a dict argument is not a literal")
            key, nxt = self.value(j)
            if not self.is_op(nxt, ":"):
                if nxt == close or self.is_op(nxt, ","):
                    raise ToolCallError(f"argument value {self.text[self.toks[i].start:self.toks[close].end]!r} "
                                        "is not a literal (a set)")
                raise self.not_literal(j)
            if not isinstance(key, str):
                raise ToolCallError(f"dict keys must be strings, not {key!r}")
            if key in out:
                raise ToolCallError(f"dict key {key!r} is given twice")
            out[key], nxt = self.value(nxt + 1)
            j = self.expect_follow(j, nxt, close)
            j += j < close
        return out

    # calls

    def call(self, i: int) -> tuple[ToolCall, int]:
        """`name(key=value, ...)` or a JSON call object starting at token i."""
        if self.is_op(i, "{"):
            return json_call(self.mapping(i, self.match[i])), self.match[i] + 1
        if self.toks[i].kind != "name":
            raise ToolCallError(f"expected a call like name(arg=value), got {self.span(i)!r}")
        # dotted names (`math.sqrt`); a `-` written without spaces joins parts too (tool names like `get-weather`)
        j, parts = i, [self.toks[i].text]
        while self.toks[j + 2].kind == "name" and (self.is_op(j + 1, ".") or self.is_op(j + 1, "-") and
                                                    self.toks[j].end == self.toks[j + 1].start == self.toks[j + 2].start - 1):
            parts += [self.toks[j + 1].text, self.toks[j + 2].text]
            j += 2
        name = "".join(parts)
        if not self.is_op(j + 1, "("):
            if self.toks[j + 1].kind == "end" or self.is_op(j + 1, ",)]}"):
                raise ToolCallError(f"expected a call like name(arg=value), got {self.span(i)!r}")
            raise ToolCallError(f"a tool name must be a (dotted) identifier, not {self.span(i)!r}")
        close = self.match[j + 1]
        if self.is_op(close + 1, ".(["):
            # `__import__("os").system(...)`: the callee is an expression, not a name
            raise ToolCallError(f"a tool name must be a (dotted) identifier, not {self.span(i)!r}")
        return ToolCall(name, self.arguments(name, j + 1, close)), close + 1

    def arguments(self, name: str, i: int, close: int) -> dict[str, Any]:
        args: dict[str, Any] = {}
        j = i + 1
        while j < close:
            if self.is_op(j, "*"):
                star = "`**` arguments" if self.is_op(j + 1, "*") else "`*` arguments"
                raise ToolCallError(f"{name}: {star} are not literals; write name=value")
            if not (self.toks[j].kind == "name" and self.is_op(j + 1, "=")):
                raise ToolCallError(f"{name}: positional arguments have no names; write name=value "
                                    f"(got {self.span(j)!r})")
            key = self.toks[j].text
            if key in args:
                raise ToolCallError(f"{name}: argument {key!r} is given twice")
            args[key], nxt = self.value(j + 2)
            j = self.expect_follow(j + 2, nxt, close)
            j += j < close
        return args

    def block(self) -> tuple[ToolCall, ...]:
        """The whole block: `[call, ...]`, one call, or nothing."""
        if self.toks[0].kind == "end":
            return ()
        if not self.is_op(0, "["):
            call, end = self.call(0)
            calls = [call]
        else:
            end, calls, j = self.match[0] + 1, [], 1
            while j < end - 1:
                call, nxt = self.call(j)
                calls.append(call)
                j = self.after_call(nxt, end - 1)
                j += j < end - 1
        if self.toks[end].kind != "end":
            raise _syntax(f"unexpected {self.text[self.toks[end].start:]!r} after the calls")
        return tuple(calls)

    def after_call(self, i: int, close: int) -> int:
        if i == close or self.is_op(i, ","):
            return i
        if self.toks[i].kind == "name" and self.is_op(i + 1, "("):
            raise _syntax(f"missing ',' before {self.span(i)!r}")
        raise _syntax(f"unexpected {self.span(i)!r} after a call")


def json_call(obj: Any) -> ToolCall:
    """`{"name": "f", "arguments": {...}}` (also "parameters", arguments as a JSON string, or OpenAI's nesting)."""
    fn = obj.get("function") if isinstance(obj.get("function"), dict) else obj
    name = fn.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        raise ToolCallError(f"a JSON tool call needs a \"name\" that is a tool name, got {name!r}")
    args = fn.get("arguments", fn.get("parameters", {}))
    if isinstance(args, str):  # OpenAI's shape: the arguments object written as a JSON string
        try:
            args = _literal(args) if args.strip() else {}
        except ToolCallError as e:
            raise ToolCallError(f"{name}: \"arguments\" is a string that is not a JSON object ({e})") from None
    if not isinstance(args, dict):
        raise ToolCallError(f"{name}: \"arguments\" must be an object, not {type(args).__name__}")
    return ToolCall(name, args)


def _literal(text: str) -> Any:
    parser = _Parser(text)
    value, end = parser.value(0)
    if parser.toks[end].kind != "end":
        raise _syntax(f"unexpected {parser.span(end)!r} after the value")
    return value


def parse_calls(text: str) -> tuple[ToolCall, ...]:
    """`[f(a=1), g(b="x")]`, `f(a=1)` or `[{"name": "f", "arguments": {...}}]` -> calls; ToolCallError if malformed."""
    try:
        return _Parser(text.strip()).block()
    except RecursionError:  # unreachable below MAX_DEPTH; kept so a change of limit can never crash a caller
        raise ToolCallError("a call argument is nested too deeply") from None
