"""The llama.cpp boundary: lfmq/llama/ is the only package that imports llama_cpp; the engine's decode, logits,
snapshot/restore and sampler; the ggml struct and binding version checks fail with a clear error, not a crash."""

from __future__ import annotations

import ast
import ctypes
from pathlib import Path

import numpy as np
import pytest

from lfmq.errors import LibraryMismatchError, StateError
from lfmq.llama import binding, ggml
from lfmq.llama.engine import Engine, Sampling
from lfmq.llama.settings import Settings

PACKAGE = Path(__file__).resolve().parent.parent / "lfmq"


def _imports_llama_cpp(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        if any(n == "llama_cpp" or n.startswith("llama_cpp.") for n in names):
            lines.append(node.lineno)
    return lines


def test_only_lfmq_llama_imports_llama_cpp():
    offenders = {str(p.relative_to(PACKAGE)): _imports_llama_cpp(p) for p in PACKAGE.rglob("*.py")
                 if p.parent.name != "llama" or p.parent.parent != PACKAGE}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert _imports_llama_cpp(PACKAGE / "llama" / "binding.py")  # the check itself can see an import


def test_struct_layout_matches_the_library():
    assert ggml.layout_problems(ggml.checked()) == []


def test_a_wrong_struct_layout_is_a_clear_error(monkeypatch):
    class Short(ctypes.Structure):
        _fields_ = [f for f in ggml.GGMLTensor._fields_ if f[0] != "view_offs"]

    ggml.checked.cache_clear()
    monkeypatch.setattr(ggml, "GGMLTensor", Short)
    try:
        with pytest.raises(LibraryMismatchError, match=r"sizeof\(ggml_tensor\) is \d+ bytes, lfmq expects \d+"):
            ggml.checked()
        with pytest.raises(LibraryMismatchError):
            ggml.eval_callback(lambda ptr, ask, data: True)  # no callback is made over an unchecked struct
    finally:
        ggml.checked.cache_clear()


def test_another_binding_version_is_a_clear_error(monkeypatch):
    binding.lib.cache_clear()
    monkeypatch.setattr(binding, "BINDING_VERSION", "0.0.1")
    try:
        with pytest.raises(LibraryMismatchError, match="lfmq needs llama-cpp-python 0.0.1"):
            binding.lib()
    finally:
        binding.lib.cache_clear()


@pytest.fixture(scope="module")
def engine(tiny_f32: Path):
    with Engine(tiny_f32, Settings(n_ctx=128, n_batch=32, n_ubatch=32, threads=2)) as e:
        yield e


def test_decode_outputs_and_batches(engine: Engine):
    ids = engine.tokenize("Hello world, the answer is 42 and the question is long enough", add_bos=True)
    engine.clear()
    engine.decode(ids, 0, outputs="all")  # several batches of 32 would drop the first rows: keep it in one
    every = engine.logits_rows(len(ids)) if len(ids) <= 32 else None
    engine.clear()
    engine.decode(ids, 0, outputs="last")
    last = engine.logits(-1)
    if every is not None:
        np.testing.assert_allclose(every[-1], last, rtol=1e-5, atol=1e-5)
    engine.clear()
    engine.decode(ids[:-1], 0, outputs="none")
    engine.decode(ids[-1:], len(ids) - 1)  # the same sequence in two calls ends at the same logits
    np.testing.assert_allclose(engine.logits(-1), last, rtol=1e-4, atol=1e-4)


def test_snapshot_restore_is_exact(engine: Engine):
    ids = engine.tokenize("The state of a conversation", add_bos=True)
    engine.clear()
    engine.decode(ids, 0)
    state = engine.snapshot(0)
    before = engine.logits(-1)
    engine.decode([ids[1]], len(ids))
    after_more = engine.logits(-1)
    engine.clear()
    assert engine.restore(state, 0)
    engine.decode([ids[1]], len(ids))
    np.testing.assert_array_equal(engine.logits(-1), after_more)
    assert not np.array_equal(before, after_more)


def test_greedy_sampler_picks_the_argmax(engine: Engine):
    ids = engine.tokenize("Paris is the capital of", add_bos=True)
    engine.clear()
    engine.decode(ids, 0)
    with engine.sampler(Sampling(temperature=0, repeat_penalty=1.0)) as s:
        assert s.sample(-1) == int(np.argmax(engine.logits(-1)))


def test_closed_engine_is_a_state_error(tiny_f32: Path):
    e = Engine(tiny_f32, Settings(n_ctx=64, threads=1))
    e.close()
    with pytest.raises(StateError, match="is closed"):
        e.tokenize("x")
