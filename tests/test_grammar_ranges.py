"""Integer and number ranges in the schema grammar (lfmq/llama/grammar.py), checked by llama.cpp's own grammar engine:
every value around a small range, the edges and a spread of magnitudes of large ones, and the shapes JSON forbids."""

from __future__ import annotations

import random

import pytest

import lfmq
from lfmq.errors import SchemaError
from lfmq.llama.binding import json_schema_grammar
from lfmq.llama.grammar import accepts, integer_range, range_rule
from lfmq.runtime.extract import load_schema
from lfmq.runtime.tools import call_grammar


@pytest.fixture(scope="module")
def engine(tiny_f32):
    with lfmq.load(tiny_f32, n_ctx=64, threads=1) as m:
        yield m.engine


SMALL = [(-15, 1234), (0, 9), (18, 30), (1, 90), (-100, -7), (95, 205), (0, 0), (-3, 3), (7, 7), (999, 1001),
         (-1, 0), (10, 99)]


@pytest.mark.parametrize("lo,hi", SMALL, ids=str)
def test_small_integer_ranges_are_exact(engine, lo, hi):
    grammar = json_schema_grammar({"type": "integer", "minimum": lo, "maximum": hi})
    wrong = [v for v in range(lo - 40, hi + 41) if accepts(engine, grammar, str(v)) != (lo <= v <= hi)]
    assert wrong == []
    for text in ("-0", "007", "01", "1.0", "1e1", "+5", "", " ", "--1", "12a"):
        assert not accepts(engine, grammar, text), text


LARGE = [(0, 10**12), (-10**9, 10**9), (123_456, 98_765_432), (-5_000_000_000, -4_999_999_000), (None, 250),
         (-250, None), (10**15, None)]


@pytest.mark.parametrize("lo,hi", LARGE, ids=str)
def test_large_integer_ranges_are_exact_at_the_edges_and_across_digit_counts(engine, lo, hi):
    schema = {"type": "integer", **({"minimum": lo} if lo is not None else {}), **({"maximum": hi} if hi is not None else {})}
    grammar = json_schema_grammar(schema)
    rng = random.Random(7)
    low, high = -(10**16) + 1 if lo is None else lo, 10**16 - 1 if hi is None else hi
    values = {low, high, low - 1, high + 1, 0, -1, 1, low + 1, high - 1}
    for digits in range(1, 17):
        for sign in (1, -1):
            values.update(sign * rng.randrange(10 ** (digits - 1), 10**digits) for _ in range(3))
    values.update(rng.randrange(low, high + 1) for _ in range(40))
    wrong = [v for v in sorted(values) if abs(v) < 10**16 and accepts(engine, grammar, str(v)) != (low <= v <= high)]
    assert wrong == []


def test_exclusive_bounds_both_drafts():
    assert range_rule({"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 10}) == integer_range(1, 9)
    assert range_rule({"type": "integer", "minimum": 0, "exclusiveMinimum": True, "maximum": 10,
                       "exclusiveMaximum": True}) == integer_range(1, 9)
    assert range_rule({"type": "integer", "minimum": 0.5, "maximum": 9.5}) == integer_range(1, 9)
    assert range_rule({"type": "integer"}) is None and range_rule({"type": "string", "minimum": 3}) is None


def test_number_ranges_bound_the_integral_part(engine):
    grammar = json_schema_grammar({"type": "number", "minimum": -2.5, "maximum": 100})
    for text in ("-2.5", "-2", "0", "0.125", "99.99", "100", "7"):
        assert accepts(engine, grammar, text), text
    for text in ("101", "-3", "-3.5", "1e2", "250.5", "1000", "00.5"):
        assert not accepts(engine, grammar, text), text
    # within the digits of the bound, the fraction is left to validation after decoding
    assert accepts(engine, grammar, "100.5")
    positive = json_schema_grammar({"type": "number", "exclusiveMinimum": 0, "maximum": 1})
    assert accepts(engine, positive, "0.5") and not accepts(engine, positive, "-0.5") and not accepts(engine, positive, "2")


def test_ranges_inside_objects_arrays_and_tool_calls(engine):
    grammar = load_schema({"type": "object", "properties": {
        "scores": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 5}}},
        "required": ["scores"]}).grammar
    assert accepts(engine, grammar, '{"scores": [1, 5, 3]}')
    assert not accepts(engine, grammar, '{"scores": [1, 6]}') and not accepts(engine, grammar, '{"scores": [0]}')
    timer = {"name": "set_timer", "parameters": {"type": "object", "properties": {
        "minutes": {"type": "integer", "minimum": 1, "maximum": 90}}, "required": ["minutes"]}}
    calls = call_grammar([timer])
    assert accepts(engine, calls, "<|tool_call_start|>[set_timer(minutes=45)]<|tool_call_end|>")
    assert not accepts(engine, calls, "<|tool_call_start|>[set_timer(minutes=120)]<|tool_call_end|>")


def test_an_empty_range_is_a_schema_error():
    with pytest.raises(SchemaError, match="no integer lies in the range 5..3"):
        load_schema({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5, "maximum": 3}}})


def test_enforced_ranges_are_not_listed_as_unenforced():
    spec = load_schema({"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 0, "maximum": 130}, "huge": {"type": "integer", "minimum": 10**30},
        "ratio": {"type": "number", "minimum": 0, "maximum": 1}}})
    assert spec.unenforced == ("maximum", "minimum")  # huge's (beyond 16 digits) and the number's fraction
    assert f"age ::= ({integer_range(0, 130)}) space" in spec.grammar.splitlines()
