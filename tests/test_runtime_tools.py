"""LFM2 tool calls: a table of call strings (llama.cpp's own LFM2 parser cases, restated, plus harder ones), the
round trip format -> parse, parsing without eval, forced calls from a random-weight model, and a full tool round."""

from __future__ import annotations

import json

import jsonschema
import pytest

from lfmq.runtime import Chat, ToolCall, format_calls, load, parse_calls, parse_reply
from lfmq.errors import ToolCallError, ToolsFileError
from lfmq.runtime.tools import call_grammar, load_tools

S, E = "<|tool_call_start|>", "<|tool_call_end|>"

# id, model text, expected calls [(name, arguments)], expected prose, expected error fragment (None: parses)
CASES = [
    # the cases llama.cpp's test-chat.cpp checks for its LFM2 / LFM2.5 parser
    ("plain-content", "Hello, world!\nWhat's up?", [], "Hello, world!\nWhat's up?", None),
    ("int-argument", f"{S}[special_function(arg1=1)]{E}", [("special_function", {"arg1": 1})], "", None),
    ("string-argument", f'{S}[get_time(city="XYZCITY")]{E}', [("get_time", {"city": "XYZCITY"})], "", None),
    ("python-true", f"{S}[toggle(enabled=True)]{E}", [("toggle", {"enabled": True})], "", None),
    ("python-none", f"{S}[set_nullable(value=None)]{E}", [("set_nullable", {"value": None})], "", None),
    ("nested-python-literals", f'{S}[set_config(config={{"enabled": True, "count": 3}})]{E}',
     [("set_config", {"config": {"enabled": True, "count": 3}})], "", None),
    ("nested-json-literals", f'{S}[set_config(config={{"enabled": true, "note": null}})]{E}',
     [("set_config", {"config": {"enabled": True, "note": None}})], "", None),
    ("dotted-name-structured-args",
     f'{S}[Calendar.create_event(title="demo", participants=["Alice", "Bob"], metadata={{"priority": "high", "reminder": true}})]{E}',
     [("Calendar.create_event", {"title": "demo", "participants": ["Alice", "Bob"],
                                 "metadata": {"priority": "high", "reminder": True}})], "", None),
    ("markdown-links-stay-content", "Use this format: [link text](url). Example: [Wikipedia](https://www.wikipedia.org).",
     [], "Use this format: [link text](url). Example: [Wikipedia](https://www.wikipedia.org).", None),
    ("newline-escape-in-code", f'{S}[python(code="def hello():\\n    print(\'hey\')")]{E}',
     [("python", {"code": "def hello():\n    print('hey')"})], "", None),
    ("newline-and-tab-escapes", f'{S}[python(code="First line\\nSecond line\\tindented")]{E}',
     [("python", {"code": "First line\nSecond line\tindented"})], "", None),
    ("escaped-quotes", f'{S}[python(code="print(\\"hi\\")")]{E}', [("python", {"code": 'print("hi")'})], "", None),
    ("content-before-call", f'Let me check the time.{S}[get_time(city="Paris")]{E}',
     [("get_time", {"city": "Paris"})], "Let me check the time.", None),
    ("parallel-calls", f"{S}[special_function(arg1=1), special_function_with_opt(arg1=1, arg2=2)]{E}",
     [("special_function", {"arg1": 1}), ("special_function_with_opt", {"arg1": 1, "arg2": 2})], "", None),
    ("partial-call", f"{S}[special_function(arg1=", [], f"{S}[special_function(arg1=", "never closed"),
    ("empty-arguments", f"{S}[empty_args()]{E}", [("empty_args", {})], "", None),
    # harder ones
    ("no-markers", '[get_weather(location="Paris")]', [("get_weather", {"location": "Paris"})], "", None),
    ("no-markers-parallel-multiline", '[\n  f(a=1),\n  g(b="x")\n]\n', [("f", {"a": 1}), ("g", {"b": "x"})], "", None),
    ("text-after-call", f'{S}[f(a=1)]{E} Done.', [("f", {"a": 1})], "Done.", None),
    ("two-call-blocks", f"A {S}[f(a=1)]{E} B {S}[g()]{E}", [("f", {"a": 1}), ("g", {})], "A  B", None),
    ("missing-end-marker", f"{S}[f(a=1)]", [("f", {"a": 1})], "", None),
    ("single-bare-call", f"{S}f(x=2){E}", [("f", {"x": 2})], "", None),
    ("empty-call-list", f"{S}[]{E}", [], "", None),
    ("numbers", f"{S}[f(a=-1, b=+2.5, c=1e3, d=-0.0, e=10000000000000000000)]{E}",
     [("f", {"a": -1, "b": 2.5, "c": 1000.0, "d": -0.0, "e": 10**19})], "", None),
    ("tuple-becomes-list", f"{S}[f(p=(1, 2), q=[(3,), []])]{E}", [("f", {"p": [1, 2], "q": [[3], []]})], "", None),
    ("brackets-and-markers-in-strings", f'{S}[f(s="a]b)c(d[e", t="{E}?")]{E}'.replace(f'"{E}?"', '"<|x|>?"'),
     [("f", {"s": "a]b)c(d[e", "t": "<|x|>?"})], "", None),
    ("single-quotes-and-unicode", f"{S}[f(s='héllo 🦙', t=\"\\u00e9\")]{E}", [("f", {"s": "héllo 🦙", "t": "é"})], "", None),
    ("implicit-concatenation", f'{S}[f(s="ab" "cd")]{E}', [("f", {"s": "abcd"})], "", None),
    ("deep-nesting", f'{S}[f(x={{"a": [{{"b": {{"c": [1, [2, [3]]]}}}}]}})]{E}',
     [("f", {"x": {"a": [{"b": {"c": [1, [2, [3]]]}}]}})], "", None),
    ("trailing-comma", f"{S}[f(a=1,),]{E}", [("f", {"a": 1})], "", None),
    ("positional-argument", f"{S}[f(1)]{E}", [], f"{S}[f(1)]{E}", "positional arguments"),
    ("unquoted-name-value", f"{S}[f(unit=celsius)]{E}", [], f"{S}[f(unit=celsius)]{E}", "is not a literal"),
    ("call-as-value", f"{S}[f(a=g(1))]{E}", [], f"{S}[f(a=g(1))]{E}", "is not a literal"),
    ("set-literal", f"{S}[f(a={{1, 2}})]{E}", [], f"{S}[f(a={{1, 2}})]{E}", "is not a literal"),
    ("non-string-dict-key", f"{S}[f(a={{1: 2}})]{E}", [], f"{S}[f(a={{1: 2}})]{E}", "keys must be strings"),
    ("double-star", f"{S}[f(**{{'a': 1}})]{E}", [], f"{S}[f(**{{'a': 1}})]{E}", "`**`"),
    ("not-a-call", f"{S}[42]{E}", [], f"{S}[42]{E}", "expected a call"),
    ("garbage", f"{S}[f(a=1]]{E}", [], f"{S}[f(a=1]]{E}", "not a Python call list"),
    ("subscript-name", f"{S}[f[0](a=1)]{E}", [], f"{S}[f[0](a=1)]{E}", "(dotted) identifier"),
    ("injection", f'{S}[__import__("os").system("touch /tmp/lfmq-pwned")]{E}', [],
     f'{S}[__import__("os").system("touch /tmp/lfmq-pwned")]{E}', "(dotted) identifier"),
    ("bytes-value", f"{S}[f(a=b'x')]{E}", [], f"{S}[f(a=b'x')]{E}", "is not a literal"),
    ("not-a-call-list-without-markers", "[1, 2, 3] are numbers", [], "[1, 2, 3] are numbers", None),
]


@pytest.mark.parametrize("text,calls,content,error", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parse_reply(text, calls, content, error):
    parsed = parse_reply(text)
    assert [(c.name, c.arguments) for c in parsed.calls] == calls
    assert parsed.content == content
    if error is None:
        assert parsed.error is None
    else:
        assert parsed.error is not None and error in parsed.error


def test_parse_never_evaluates(tmp_path):
    target = tmp_path / "pwned"
    for text in (f'[f(a=__import__("os").system("touch {target}"))]', f'[open("{target}", "w")]',
                 f'[f(a=(lambda: open("{target}", "w"))())]', "[f(a=" + "[" * 100_000 + "]" * 100_000 + ")]"):
        parsed = parse_reply(text)
        assert parsed.error is not None and not parsed.calls
    assert not target.exists()


@pytest.mark.parametrize("arguments", [
    {}, {"a": 1}, {"s": 'quote " and \\ backslash\nnewline\ttab'}, {"u": "ünïcödé 🦙 «»"},
    {"n": None, "t": True, "f": False}, {"x": -1.5e-7, "big": 2**70}, {"nested": {"l": [1, [2, {"k": None}]], "e": {}}},
])
def test_format_then_parse_round_trips(arguments):
    calls = (ToolCall("pkg.tool", arguments), ToolCall("other", {"k": "v"}))
    text = format_calls(calls)
    assert parse_calls(text) == calls
    assert parse_reply(S + text + E).calls == calls


def test_a_reply_knows_its_tools_and_its_reasoning():
    """Chat passes the offered tools: a call list without markers counts only for them; <think> is not content."""
    from lfmq.runtime.chat import Reply

    text = '<think>weather first</think>[get_weather(location="Oslo")]'
    assert [c.name for c in Reply.from_text(text, None, [WEATHER]).tool_calls] == ["get_weather"]
    prose = Reply.from_text(text, None, ())
    assert prose.tool_calls == () and prose.content == '[get_weather(location="Oslo")]'
    assert prose.reasoning == "weather first"


def test_openai_shapes():
    call = ToolCall("get_weather", {"location": "Paris"})
    assert call.to_openai("c1") == {"id": "c1", "type": "function",
                                    "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'}}
    assert format_calls([call.to_openai()]) == '[get_weather(location="Paris")]'
    with pytest.raises(ToolCallError, match="positional"):
        parse_calls("[f(1)]")


WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
    "type": "object", "properties": {"location": {"type": "string", "maxLength": 16},
                                     "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                                     "days": {"type": "integer"}},
    "required": ["location"]}}}
ADD = {"name": "math.add", "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                                          "required": ["a", "b"]}}
PING = {"name": "ping", "parameters": {"type": "object", "properties": {}}}
SCHEMAS = {"get_weather": WEATHER["function"]["parameters"], "math.add": ADD["parameters"], "ping": PING["parameters"]}


@pytest.fixture(scope="module")
def model(tiny_f32):
    with load(tiny_f32, n_ctx=2048, threads=1) as m:
        yield m


def test_grammar_names_every_tool():
    grammar = call_grammar([WEATHER, ADD, PING])
    assert grammar.startswith("char ::=") or "root ::=" in grammar
    assert '"get_weather" "("' in grammar and '"math.add" "("' in grammar and '"ping" "()"' in grammar


@pytest.mark.parametrize("seed", range(4))
def test_required_tool_choice_makes_even_random_weights_call_a_tool(model, seed):
    """tool_choice="required" constrains decoding to a call list whose arguments match each tool's schema."""
    session = Chat(model, tools=[WEATHER, ADD, PING], tool_choice="required", max_tokens=200, seed=seed)
    reply = session.send("What's the weather in Paris?")
    assert reply.stats.finish_reason == "stop" and reply.tool_error is None and reply.tool_calls
    assert reply.text.startswith(S) and reply.text.endswith(E) and reply.content == ""
    assert 1 <= len(reply.tool_calls) <= 4
    for call in reply.tool_calls:
        jsonschema.validate(call.arguments, SCHEMAS[call.name])


def test_a_full_tool_round(model, tiny_ckpt):
    """The model calls, the tool's result goes back with role tool, the model answers; the prompt is the template's."""
    from transformers import AutoTokenizer

    session = Chat(model, system="Use tools.", tools=[WEATHER], tool_choice="required", max_tokens=40, seed=1)
    call = session.send("Weather in Oslo?")
    assert [c.name for c in call.tool_calls] == ["get_weather"]
    result = json.dumps({"temperature": -3})
    answer = session.send(result, role="tool")
    # only the tool turn is evaluated: the call's tokens are already in the context
    turn = model.tokenize(f"<|im_end|>\n<|im_start|>tool\n{result}<|im_end|>\n<|im_start|>assistant\n")
    assert answer.stats.prompt_evaluated == len(turn) < answer.stats.prompt_tokens
    history = session.history
    assert [m["role"] for m in history] == ["system", "user", "assistant", "tool", "assistant"]
    assert history[2]["content"] == call.text and history[4]["content"] == answer.text
    hf = AutoTokenizer.from_pretrained(tiny_ckpt)
    assert model.render(history, tools=[WEATHER]) == hf.apply_chat_template(history, tools=[WEATHER], tokenize=False,
                                                                            add_generation_prompt=True)


def test_openai_tool_calls_in_history_are_written_for_the_model(model):
    """chat() accepts an assistant message in OpenAI form (tool_calls) and renders it as LFM2 expects."""
    from lfmq.runtime.chat import _normalize

    msg = {"role": "assistant", "content": None, "tool_calls": [ToolCall("get_weather", {"location": "Oslo"}).to_openai("c1")]}
    assert _normalize(msg) == {"role": "assistant", "content": f'{S}[get_weather(location="Oslo")]{E}'}
    assert _normalize({"role": "user", "content": "hi"}) == {"role": "user", "content": "hi"}


def test_tool_choice_none_never_starts_a_call(model):
    session = Chat(model, tools=[WEATHER], tool_choice="none", max_tokens=60)
    for seed in range(3):
        assert S not in session.send("call a tool", seed=seed).text


def test_load_tools(tmp_path):
    good = tmp_path / "tools.json"
    good.write_text(json.dumps([WEATHER, ADD]))
    assert load_tools(good) == [WEATHER, ADD]
    good.write_text(json.dumps({"tools": [PING]}))
    assert load_tools(good) == [PING]
    for content, message in [("{nope", "is not JSON"), ("[]", "non-empty JSON list"), ('[{"x": 1}]', "tool 0 has no name")]:
        good.write_text(content)
        with pytest.raises(ToolsFileError, match=message):
            load_tools(good)
    with pytest.raises(ToolsFileError, match="cannot read tools file"):
        load_tools(tmp_path / "absent.json")
