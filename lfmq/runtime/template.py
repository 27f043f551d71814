"""Chat templates rendered the way transformers' apply_chat_template renders them (same jinja setup and globals)."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Mapping, Sequence

from lfmq.errors import UsageError
from lfmq.errors import TemplateError

BUILTIN_NAME = "lfm2.5-instruct.jinja"
REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


def builtin_template() -> str:
    """lfmq's LFM2.5 chat template: the fallback for a GGUF that carries none."""
    return resources.files("lfmq.templates").joinpath(BUILTIN_NAME).read_text(encoding="utf-8")


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators: Any = None,
            sort_keys: bool = False) -> str:
    # transformers replaces jinja's tojson, which escapes HTML characters and sorts keys
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


@lru_cache(maxsize=8)
def compile_template(source: str) -> Any:
    """Compile a template once; a syntax error becomes a TemplateError."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class Generation(jinja2.ext.Extension):
        # `{% generation %}...{% endgeneration %}` marks assistant tokens for training masks: render the body only
        tags = {"generation"}

        def parse(self, parser: Any) -> Any:
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller: Any) -> str:
            return caller()

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[Generation, jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise TemplateError(f"the chat template does not compile (line {e.lineno}: {e.message})") from None


def _alias_reasoning(message: Mapping[str, Any]) -> dict[str, Any]:
    # as transformers does: reasoning given under an older name is also offered as `thinking` and `reasoning_content`
    reasoning = next((message[k] for k in REASONING_FIELDS if message.get(k) is not None), None)
    if reasoning is None:
        return dict(message)
    return {"thinking": reasoning, **message, "reasoning_content": reasoning}


def _check(messages: Sequence[Mapping[str, Any]], tools: Sequence[Any] | None) -> None:
    for m in messages:
        if not isinstance(m, Mapping) or "role" not in m:
            raise UsageError(f"a chat message must be a dict with a 'role' (and usually 'content'), not {m!r}")
    for t in tools or ():
        if not isinstance(t, Mapping):
            raise UsageError(f"a tool must be a dict (an OpenAI-style function definition), not {type(t).__name__}")


def render(
    source: str,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    add_generation_prompt: bool = True,
    special_tokens: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> str:
    """Render messages (and tools) to the prompt text; special_tokens supplies bos_token, eos_token, pad_token."""
    import jinja2

    _check(messages, tools)
    template = compile_template(source)
    variables = {**(special_tokens or {}), **kwargs}
    try:
        return template.render(messages=[_alias_reasoning(m) for m in messages], tools=list(tools) if tools is not None else None,
                               documents=None, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.TemplateError as e:
        raise TemplateError(f"the chat template refused these messages: {e}") from None
