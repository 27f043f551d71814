"""Grammar beyond the binding's JSON-schema converter: integer and number ranges (`minimum`, `maximum` and their
exclusive forms), which the converter leaves to validation after decoding, and a check of whether llama.cpp's grammar
engine accepts a text (what the tests ask of a grammar).

Integer ranges are exact: the rule spells out the digit strings from the lower bound to the upper one (no leading
zeros, no "-0"), up to the 16 digits the converter's own integer rule allows. Number ranges bound the integral part
exactly and allow a fraction after it, with no exponent: 0..1 admits 1.5, which validation after decoding catches."""

from __future__ import annotations

import ctypes
import math
from typing import Any, Mapping

DIGITS = 16                 # the converter's integral-part rule: one digit, then up to 15
BIG = 10 ** DIGITS - 1
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
FRACTION = '("." [0-9]{1,15})?'


def _group(rule: str) -> str:
    return f"({rule})" if " " in rule or "|" in rule else rule


def _same_length(lo: str, hi: str) -> str:
    """The digit strings of one length from lo to hi (lo <= hi), leading zeros as they come."""
    if lo == hi:
        return f'"{lo}"'
    if len(lo) == 1:
        return f"[{lo}-{hi}]"
    if lo[0] == hi[0]:
        return f'"{lo[0]}" {_group(_same_length(lo[1:], hi[1:]))}'
    rest = len(lo) - 1
    first, last, alts, tail = int(lo[0]), int(hi[0]), [], None
    if lo[1:] != "0" * rest:  # lo's first digit with the rest from lo's rest up to 9...9
        alts.append(f'"{lo[0]}" {_group(_same_length(lo[1:], "9" * rest))}')
        first += 1
    if hi[1:] != "9" * rest:  # hi's first digit with the rest from 0...0 up to hi's rest
        tail = f'"{hi[0]}" {_group(_same_length("0" * rest, hi[1:]))}'
        last -= 1
    if first <= last:
        lead = f'"{first}"' if first == last else f"[{first}-{last}]"
        alts.append(f"{lead} [0-9]{{{rest}}}")
    if tail:
        alts.append(tail)
    return " | ".join(alts)


def _natural(lo: int, hi: int) -> list[str]:
    """Alternatives for the integers lo..hi (0 <= lo <= hi) as JSON writes them, one per digit count."""
    alts = []
    for n in range(len(str(lo)), len(str(hi)) + 1):
        a, b = max(lo, 10 ** (n - 1) if n > 1 else 0), min(hi, 10 ** n - 1)
        if a <= b:
            alts.append(_same_length(str(a), str(b)))
    return alts


def integer_range(lo: int | None, hi: int | None) -> str:
    """GBNF for exactly the integers lo..hi (None: unbounded, within 16 digits); ValueError when empty."""
    lo, hi = max(-BIG, -BIG if lo is None else lo), min(BIG, BIG if hi is None else hi)
    if lo > hi:
        raise ValueError(f"no integer lies in the range {lo}..{hi}")
    alts = []
    if lo < 0:
        alts.append('"-" ' + _group(" | ".join(_natural(max(1, -hi), -lo))))
    if hi >= 0:
        alts += _natural(max(lo, 0), hi)
    return " | ".join(_group(a) for a in alts)


def number_range(lo: float | None, hi: float | None) -> str:
    """GBNF for numbers whose integral part lies within lo..hi (None: unbounded), with an optional fraction."""
    lo_f, hi_f = -BIG if lo is None else max(-BIG, lo), BIG if hi is None else min(BIG, hi)
    if lo_f > hi_f:
        raise ValueError(f"no number lies in the range {lo}..{hi}")
    alts = []
    if lo_f < 0:  # negative values: magnitudes from max(0, -hi) to -lo
        alts.append(f'"-" ({" | ".join(_natural(math.floor(max(0.0, -hi_f)), math.floor(-lo_f)))}) {FRACTION}')
    if hi_f >= 0:
        alts.append(f'({" | ".join(_natural(math.floor(max(0.0, lo_f)), math.floor(hi_f)))}) {FRACTION}')
    return " | ".join(_group(a) for a in alts)


def _bound(value: Any) -> float | None:
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _integer_bounds(schema: Mapping[str, Any]) -> tuple[int | None, int | None]:
    lo, hi = _bound(schema.get("minimum")), _bound(schema.get("maximum"))
    ex_lo, ex_hi = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if ex_lo is True and lo is not None:  # draft 4: a flag on minimum
        lo = math.floor(lo) + 1
    elif _bound(ex_lo) is not None:
        lo = max(lo if lo is not None else -math.inf, math.floor(ex_lo) + 1)
    if ex_hi is True and hi is not None:
        hi = math.ceil(hi) - 1
    elif _bound(ex_hi) is not None:
        hi = min(hi if hi is not None else math.inf, math.ceil(ex_hi) - 1)
    return (None if lo is None else math.ceil(lo)), (None if hi is None else math.floor(hi))


def exact_range(schema: Mapping[str, Any]) -> bool:
    """Whether the grammar enforces this schema's bounds exactly: an integer whose bounds reach into the 16 digits
    JSON integers are written with here (beyond them the bound is left to validation)."""
    if schema.get("type") != "integer" or not any(k in schema for k in BOUNDS):
        return False
    lo, hi = _integer_bounds(schema)
    return (lo is None or lo <= BIG) and (hi is None or hi >= -BIG)


def range_rule(schema: Mapping[str, Any]) -> str | None:
    """The GBNF body for an integer or number schema with bounds, or None when it has none to enforce."""
    kind = schema.get("type")
    if kind not in ("integer", "number") or not any(k in schema for k in BOUNDS):
        return None
    if kind == "integer":
        return integer_range(*_integer_bounds(schema)) if exact_range(schema) else None
    lo, hi = _bound(schema.get("minimum")), _bound(schema.get("maximum"))
    ex_lo, ex_hi = _bound(schema.get("exclusiveMinimum")), _bound(schema.get("exclusiveMaximum"))
    lo = ex_lo if lo is None else lo if ex_lo is None else max(lo, ex_lo)
    hi = ex_hi if hi is None else hi if ex_hi is None else min(hi, ex_hi)
    if (lo is not None and lo > BIG) or (hi is not None and hi < -BIG):
        return None
    return number_range(lo, hi)


def range_converter(base: type) -> type:
    """The binding's SchemaConverter class, taught integer and number ranges."""
    from llama_cpp.llama_grammar import RESERVED_NAMES

    class RangeConverter(base):  # type: ignore[misc, valid-type]
        def visit(self, schema: Any, name: str) -> str:
            structural = {"$ref", "oneOf", "anyOf", "allOf", "const", "enum"}
            body = range_rule(schema) if isinstance(schema, dict) and not structural & set(schema) else None
            if body is None:
                return super().visit(schema, name)
            rule_name = name + "-" if name in RESERVED_NAMES else name or "root"
            return self._add_rule(rule_name, f"({body}) space")

    return RangeConverter


def accepts(engine: Any, grammar: str, text: str) -> bool:
    """Whether llama.cpp's grammar engine takes `text` (in the engine's tokens) as a whole sentence of `grammar`."""
    from lfmq.errors import LlamaError
    from lfmq.llama import log as llama_log
    from lfmq.llama.binding import lib

    L = lib()
    sampler = L.llama_sampler_init_grammar(engine.vocab, grammar.encode("utf-8"), b"root")
    if not sampler:
        raise LlamaError(f"llama.cpp rejected the grammar: {llama_log.tail()}")
    try:
        for token in [*engine.tokenize(text, special=False), engine.eos_id]:
            data = (L.llama_token_data * 1)(L.llama_token_data(token, 0.0, 0.0))
            candidates = L.llama_token_data_array(data, 1, -1, False)
            L.llama_sampler_apply(sampler, ctypes.byref(candidates))
            if data[0].logit == -math.inf:
                return False
            if token != engine.eos_id:
                L.llama_sampler_accept(sampler, token)
        return True  # the end of turn was allowed: the grammar is complete
    finally:
        L.llama_sampler_free(sampler)
