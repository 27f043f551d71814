"""The tool-call conformance corpus (tests/data/tool_calls/*.jsonl): shapes LFM2 / LFM2.5 models emit, gathered from
llama.cpp's tests, other runtimes' fixes and user reports, each with its exact calls, content and reasoning, or its
refusal. Every case also goes through the streaming parser whole, one character at a time and in random pieces,
which must agree. Pure Python: no model, no llama.cpp."""

from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from lfmq.errors import StateError
from lfmq.runtime.tools import (CALL_END, CALL_START, CallErrorEvent, CallEvent, ContentEvent, ReasoningEvent,
                                ReplyParser, parse_reply)

CORPUS = sorted((Path(__file__).parent / "data" / "tool_calls").glob("*.jsonl"))
CASES = [json.loads(line) | {"file": path.stem} for path in CORPUS for line in path.read_text("utf-8").splitlines()
         if line.strip()]
IDS = [f"{c['file']}:{c['id']}" for c in CASES]
MARKUP = (CALL_START, CALL_END, "<think>", "</think>")


def as_json(calls: Any) -> str:
    """Calls compared strictly: key order, and 1 vs 1.0 vs True, matter to the tool that receives them."""
    return json.dumps([[c.name, c.arguments] if hasattr(c, "name") else [c["name"], c["arguments"]] for c in calls])


def stream(case: dict[str, Any], pieces: list[str]) -> tuple[ReplyParser, list[Any]]:
    parser = ReplyParser(case["tools"], in_reasoning=case.get("in_reasoning", False))
    events = [e for piece in pieces for e in parser.feed(piece)] + parser.finish()
    return parser, events


def splits(text: str, seed: int) -> list[str]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(text):
        n = rng.randint(1, 7)
        out.append(text[i : i + n])
        i += n
    return out


def summary(events: list[Any]) -> tuple[str, str, str, list[str]]:
    return ("".join(e.text for e in events if isinstance(e, ContentEvent)),
            "".join(e.text for e in events if isinstance(e, ReasoningEvent)),
            as_json(e.call for e in events if isinstance(e, CallEvent)),
            [e.error for e in events if isinstance(e, CallErrorEvent)])


def test_the_corpus_is_large_and_sourced():
    assert len(CASES) >= 60
    assert len(set(IDS)) == len(IDS)
    for case in CASES:
        assert case["source"] and isinstance(case["text"], str)
        assert set(case) <= {"id", "source", "text", "tools", "calls", "content", "error", "reasoning", "in_reasoning",
                             "note", "file"}, case["id"]
    by_source = Counter(c["source"].split(" (")[0] for c in CASES)
    assert by_source["lfmq"] < len(CASES) / 2  # most cases come from what models were seen to emit


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_parse_reply(case):
    parsed = parse_reply(case["text"], case["tools"], in_reasoning=case.get("in_reasoning", False))
    assert as_json(parsed.calls) == as_json(case["calls"])
    assert parsed.content == case["content"]
    assert parsed.reasoning == case.get("reasoning", "")
    if case["error"] is None:
        assert parsed.error is None
    else:
        assert parsed.error is not None and case["error"] in parsed.error
        assert not parsed.calls


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_streaming_agrees_however_the_text_is_cut(case):
    text = case["text"]
    whole_parser, whole = stream(case, [text])
    expected = summary(whole)
    for pieces in ([*text], splits(text, 0), splits(text, 1)):
        parser, events = stream(case, pieces)
        assert summary(events) == expected
        assert parser.reply == whole_parser.reply
    content, _, calls, errors = expected
    assert not any(m in content for m in MARKUP)  # a user never sees raw markers
    if case["error"] is None:
        assert calls == as_json(case["calls"]) and not errors
        assert content.strip() == case["content"]


def test_prose_is_emitted_at_once_and_only_the_ambiguous_tail_waits():
    parser = ReplyParser(["get_weather"])
    assert parser.feed("Hello wor") == [ContentEvent("Hello wor")]
    assert parser.feed("ld <|tool") == [ContentEvent("ld ")]           # `<|tool` may be a marker
    assert parser.feed("box|> see [get") == [ContentEvent("<|toolbox|> see ")]  # `[get` may become [get_weather(
    assert parser.feed("ter] and [get_") == [ContentEvent("[getter] and ")]
    assert parser.feed("weather (city='Oslo')] ok") == [CallEvent(parse_reply("[get_weather(city='Oslo')]").calls[0]),
                                                          ContentEvent(" ok")]
    assert parser.finish() == []


def test_a_call_is_emitted_when_its_block_closes():
    parser = ReplyParser(["f"])
    assert parser.feed(f"{CALL_START}[f(a=1), f(") == []
    assert parser.feed("b=2)]") == []                                    # the end marker may still follow
    events = parser.feed(CALL_END)
    assert [e.call.arguments for e in events] == [{"a": 1}, {"b": 2}]


def test_reasoning_streams_separately():
    parser = ReplyParser(None)
    assert parser.feed("<think>plan") == [ReasoningEvent("plan")]
    assert parser.feed(" more</thi") == [ReasoningEvent(" more")]
    assert parser.feed("nk>\n\nAnswer") == [ContentEvent("Answer")]     # the answer's leading blank lines dropped
    assert parser.reply.reasoning == "plan more" and parser.reply.content == "Answer"


def test_finish_flushes_once_and_then_the_parser_is_closed():
    parser = ReplyParser(["f"])
    assert parser.feed("x <|tool_c") == [ContentEvent("x ")]
    assert parser.finish() == [ContentEvent("<|tool_c")]                # not a marker after all: the text ended
    assert parser.finish() == []
    with pytest.raises(StateError):
        parser.feed("more")


def test_a_refused_block_comes_back_as_an_error_event_with_its_raw_text():
    parser = ReplyParser(["f"])
    events = parser.feed(f"See {CALL_START}[f(a=os.environ)]{CALL_END} end") + parser.finish()
    assert [type(e) for e in events] == [ContentEvent, CallErrorEvent, ContentEvent]
    assert events[1].raw == f"{CALL_START}[f(a=os.environ)]{CALL_END}" and "is not a literal" in events[1].error
    assert parser.reply.calls == () and parser.reply.content == f"See {CALL_START}[f(a=os.environ)]{CALL_END} end"


def test_tool_definitions_are_accepted_as_well_as_names():
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    assert parse_reply('[get_weather(city="Oslo")]', [tool]).calls[0].name == "get_weather"
    assert parse_reply('[get_weather(city="Oslo")]', [{"name": "other"}]).calls == ()


def test_long_replies_stream_in_linear_time():
    """A 200 KB code argument fed in 3-character pieces: the block is scanned once, not once per piece."""
    code = "x = [1, 2]  # ')' \\n\n" * 10_000
    text = f"{CALL_START}[write(path='a.py', content={json.dumps(code)})]{CALL_END}"
    parser = ReplyParser(["write"])
    for i in range(0, len(text), 3):
        parser.feed(text[i : i + 3])
    parser.finish()
    assert parser.reply.calls[0].arguments["content"] == code


ATOMS = [*"[]{}()\"'\\ ,=:.-+*#\n_fa01e", CALL_START, CALL_END, "<think>", "</think>", "<|tool", "f(", "[f(", "a=",
         "True", '"""', '[{"name": "f"', "get-w", "get_w("]


@pytest.mark.parametrize("seed", range(4))
def test_random_text_never_raises_and_streams_alike(seed):
    """Text no model should write, cut anywhere: the parser neither raises nor depends on where the cuts fall."""
    rng = random.Random(seed)
    for _ in range(500):
        text = "".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 40)))
        case = {"tools": rng.choice([None, [], ["f"], ["get-w", "f"]]), "in_reasoning": rng.random() < 0.1}
        whole, events = stream(case, [text])
        for pieces in ([*text], splits(text, seed)):
            parser, cut = stream(case, pieces)
            assert summary(cut) == summary(events) and parser.reply == whole.reply, text
