"""Fixtures: tiny LFM2 checkpoints written at test time (kilobytes), the reference model, llama.cpp loading."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

import lfmq

SAMPLE = 'Hello world, the answer is 42 {"name": "Paris", "unit": "celsius"} def f(x):\n    return x'


def edit_config(folder: Path, fn: Callable[[dict[str, Any]], None]) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    fn(cfg)
    path.write_text(json.dumps(cfg, indent=2))


@pytest.fixture
def make_ckpt(tmp_path: Path) -> Callable[..., Path]:
    """Write a tiny synthetic checkpoint; keyword arguments go to lfmq.synth, `edit` rewrites its config.json."""
    count = iter(range(1000))

    def make(preset: str = "tiny", edit: Callable[[dict], None] | None = None, **kw: Any) -> Path:
        folder = tmp_path / f"ckpt{next(count)}"
        lfmq.synth(preset, folder, **kw)
        if edit:
            edit_config(folder, edit)
        return folder

    return make


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tiny") / "ckpt"
    lfmq.synth("tiny", folder)
    return folder


@pytest.fixture(scope="session")
def tiny_f32(tiny_ckpt: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-gguf") / "tiny-F32.gguf"
    lfmq.convert(tiny_ckpt, out, outtype="f32")
    return out


def reference_logits(folder: Path, ids: list[int]) -> np.ndarray:
    """Logits of transformers' Lfm2ForCausalLM, in float32, for one sequence."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def llama_logits(gguf_path: Path, ids: list[int]) -> np.ndarray:
    """Logits of llama.cpp (through llama-cpp-python) for the same token ids, every position."""
    import llama_cpp

    # an F32 KV cache: llama.cpp's default F16 cache rounds attention inputs, which is not what is under test
    llm = llama_cpp.Llama(str(gguf_path), n_ctx=256, n_batch=256, logits_all=True, verbose=False, n_threads=2,
                          type_k=llama_cpp.GGML_TYPE_F32, type_v=llama_cpp.GGML_TYPE_F32)
    try:
        llm.eval(ids)
        return np.array(llm.scores[: len(ids)], dtype=np.float32)
    finally:
        llm.close()


def hf_ids(folder: Path, text: str) -> list[int]:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)(text).input_ids


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the installed `lfmq` command in a fresh process, as a user would."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("LFMQ_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "lfmq", *args], capture_output=True, text=True, env=full_env, cwd=cwd, timeout=600
    )


# hidden 256 and FFN 512: rows that split into 256-value super-blocks, so the k-quants apply as on real models
SMALL = {"hidden_size": 256, "block_ff_dim": 768, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 2048}


@pytest.fixture(scope="session")
def small_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("small") / "small"
    lfmq.synth("tiny", folder, overrides=SMALL)
    return folder


@pytest.fixture(scope="session")
def small_f16(small_ckpt: Path) -> Path:
    return lfmq.convert(small_ckpt, small_ckpt.parent / "small-F16.gguf", outtype="f16").path


@pytest.fixture(scope="session")
def small_ladder(small_f16: Path) -> dict[str, Path]:
    from lfmq.quantize import quantize

    results = quantize(small_f16, "ladder", small_f16.parent / "ladder")
    return {r.type: r.path for r in results}


def calibration_text(repeat: int = 4) -> str:
    """Test text: the repository's README, repeated (enough tokens for a few chunks)."""
    return (Path(__file__).resolve().parent.parent / "README.md").read_text() * repeat
