"""The compiled library: llama-cpp-python imported on first use (so `lfmq --help` and `lfmq convert` never load it),
checked once against the version lfmq is written against, and the facts of the build (versions, library hash,
system info) that reports record."""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

from lfmq.errors import LibraryMismatchError
from lfmq.llama.settings import BINDING_VERSION


@lru_cache(maxsize=1)
def lib() -> Any:
    """The llama_cpp module, after checking it is the version lfmq's structs and calls were written for."""
    try:
        import llama_cpp
    except ImportError as e:
        raise LibraryMismatchError(f"llama-cpp-python is not installed ({e}): run `make setup` or "
                                   f"scripts/install-llama-cpp-python.sh") from None
    found = getattr(llama_cpp, "__version__", "?")
    if found != BINDING_VERSION:
        raise LibraryMismatchError(f"lfmq needs llama-cpp-python {BINDING_VERSION}, this environment has {found}: "
                                   f"reinstall with scripts/install-llama-cpp-python.sh")
    return llama_cpp


def ggml_lib() -> Any:
    """The ggml shared library the binding loaded (gguf parser, ggml structs, op names)."""
    lib()
    from llama_cpp import _ggml

    return _ggml.libggml


def system_info() -> str:
    """llama.cpp's own line of CPU features compiled in and detected (AVX2, NEON, DOTPROD ...)."""
    return lib().llama_print_system_info().decode(errors="replace").strip()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()


def build_info() -> dict[str, str]:
    """The llama.cpp build lfmq runs: the binding's version, llama.cpp's, a hash of the library file, system info."""
    L = lib()
    spec = importlib.util.find_spec("llama_cpp")
    so = next(Path(spec.origin).parent.glob("lib/libllama.so*"), None) if spec and spec.origin else None
    return {"llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
            "llama_cpp": L.llama_version().decode() if hasattr(L, "llama_version") else "?",
            "libllama_sha256": _sha256(so)[:16] if so else "?",
            "system_info": system_info()}


def schema_converter() -> Any:
    """The binding's JSON-schema-to-GBNF converter object, for grammars assembled rule by rule (tool calls), taught
    integer and number ranges (lfmq/llama/grammar.py), which the binding's own leaves to validation."""
    lib()
    from llama_cpp.llama_grammar import SchemaConverter

    from lfmq.llama.grammar import range_converter

    return range_converter(SchemaConverter)(prop_order={}, allow_fetch=False, dotall=False, raw_pattern=False)


def json_schema_grammar(schema: dict[str, Any], origin: str = "schema") -> str:
    """GBNF for a JSON schema through the binding's converter (a port of llama.cpp's json-schema-to-grammar). It
    raises whatever the converter raises (AssertionError, KeyError, ValueError ...) on what it cannot express."""
    import copy

    conv = schema_converter()
    conv.visit(conv.resolve_refs(copy.deepcopy(schema), origin), "")  # the converter rewrites $refs in place
    return conv.format_grammar()
