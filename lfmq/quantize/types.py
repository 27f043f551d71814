"""The quantization types llama.cpp's quantizer offers, by name: one table built from the binding's enums."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import gguf

from lfmq.errors import UsageError

LADDER = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
# llama-quantize's shorthands
ALIASES = {"Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M"}
# types the quantizer refuses to make without an importance matrix (llama.cpp's tensor_requires_imatrix)
NEEDS_IMATRIX = {"IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS"}
SKIP = {"GUESSED", "MXFP4_MOE"}  # not a target / for MoE models only


@dataclass(frozen=True)
class QuantType:
    name: str        # as llama-quantize spells it: Q4_K_M
    ftype: int       # llama_ftype value
    file_type: gguf.LlamaFileType | None  # gguf's enum where it knows the type

    @property
    def needs_imatrix(self) -> bool:
        return self.name in NEEDS_IMATRIX


@lru_cache(maxsize=1)
def quant_types() -> dict[str, QuantType]:
    """Every llama_ftype the binding exposes, keyed by upper-case name (F32, F16, BF16, Q8_0, Q4_K_M, IQ2_XS ...)."""
    from lfmq.llama.quantizer import ftypes

    table = {name: QuantType(name, value, gguf.LlamaFileType._value2member_map_.get(value))
             for name, value in ftypes().items() if name not in SKIP}
    return dict(sorted(table.items(), key=lambda kv: kv[1].ftype))


def tensor_types() -> dict[str, int]:
    """ggml tensor types by upper-case name, for --output-tensor-type, --token-embedding-type, --tensor-type."""
    from lfmq.llama.quantizer import ggml_types

    return ggml_types()


def parse_quant_types(spec: str) -> list[QuantType]:
    """`Q4_0,q4_k_m` or `ladder` -> the types, in order, without repeats."""
    table = quant_types()
    names: list[str] = []
    for raw in spec.split(","):
        name = raw.strip().upper()
        if not name:
            continue
        for n in LADDER if name == "LADDER" else (ALIASES.get(name, name),):
            if n not in table:
                raise UsageError(f"unknown quantization type {raw.strip()!r}: choose from {', '.join(table)} or ladder")
            if n not in names:
                names.append(n)
    if not names:
        raise UsageError("no quantization type given: pass -q with e.g. Q4_K_M, Q4_0,Q8_0 or ladder")
    return [table[n] for n in names]


def parse_tensor_type(name: str, option: str) -> int:
    types = tensor_types()
    value = types.get(name.strip().upper())
    if value is None:
        raise UsageError(f"unknown tensor type {name!r} for {option}: choose from {', '.join(types)}")
    return value


def parse_tensor_overrides(specs: list[str]) -> list[tuple[str, int]]:
    """`REGEX=TYPE` pairs for --tensor-type (a regex searched in the tensor name, as llama-quantize does)."""
    import re

    out = []
    for spec in specs:
        pattern, sep, type_name = spec.rpartition("=")
        if not sep or not pattern:
            raise UsageError(f"--tensor-type {spec!r} is not REGEX=TYPE (e.g. attn_v=q8_0)")
        try:
            re.compile(pattern)
        except re.error as e:
            raise UsageError(f"--tensor-type {spec!r}: bad regular expression ({e})") from None
        out.append((pattern, parse_tensor_type(type_name, "--tensor-type")))
    return out
