"""`lfmq convert REPO_ID` goes through huggingface_hub: tested offline (HF_HUB_OFFLINE=1) against a populated cache."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import gguf

from conftest import run_cli
from lfmq.inspect import field_value

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def populate_cache(cache: Path, repo_id: str, files: dict[str, Path], ref: str = "main") -> None:
    """Lay files out the way huggingface_hub stores them: content-addressed blobs, snapshot symlinks, a ref."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / ref).write_text(COMMIT)
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "blobs").mkdir(exist_ok=True)
    for name, src in files.items():
        data = src.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / name)


def offline(cache: Path) -> dict[str, str]:
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "hf-home")}


def test_convert_from_cached_repo(tiny_ckpt, tmp_path):
    cache = tmp_path / "hub"
    populate_cache(cache, "LiquidAI/LFM2.5-Tiny", {p.name: p for p in tiny_ckpt.iterdir()})
    out = tmp_path / "m.gguf"
    r = run_cli("convert", "LiquidAI/LFM2.5-Tiny", "-o", str(out), "--json", env=offline(cache))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["source"] == f"LiquidAI/LFM2.5-Tiny@{COMMIT}"
    reader = gguf.GGUFReader(out)
    assert field_value(reader, "lfmq.source.revision") == COMMIT
    assert field_value(reader, gguf.Keys.General.SOURCE_URL) == "https://huggingface.co/LiquidAI/LFM2.5-Tiny"
    assert field_value(reader, gguf.Keys.General.NAME) == "LFM2.5-Tiny"


def test_default_output_name_in_cwd(tiny_ckpt, tmp_path):
    cache = tmp_path / "hub"
    populate_cache(cache, "LiquidAI/LFM2.5-Tiny", {p.name: p for p in tiny_ckpt.iterdir()})
    r = run_cli("convert", "LiquidAI/LFM2.5-Tiny", "--outtype", "f16", env=offline(cache), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "LFM2.5-Tiny-F16.gguf").is_file()


def test_offline_and_not_cached_is_one_clear_line(tmp_path):
    r = run_cli("convert", "LiquidAI/LFM2.5-350M", env=offline(tmp_path / "empty"))
    assert r.returncode == 1
    assert r.stderr == (
        "error: LiquidAI/LFM2.5-350M is not in the local Hugging Face cache and the Hub cannot be reached "
        "(HF_HUB_OFFLINE or no network): download it on a connected machine or pass a local folder\n"
    )


def test_unknown_revision_offline(tiny_ckpt, tmp_path):
    cache = tmp_path / "hub"
    populate_cache(cache, "LiquidAI/LFM2.5-Tiny", {p.name: p for p in tiny_ckpt.iterdir()})
    r = run_cli("convert", "LiquidAI/LFM2.5-Tiny", "--revision", "v9", env=offline(cache))
    assert r.returncode == 1 and "LiquidAI/LFM2.5-Tiny at revision v9 is not in the local Hugging Face cache" in r.stderr


def test_architecture_is_checked_before_weights(tmp_path):
    """Only config.json is cached: a config llama.cpp cannot run is refused from it, before any weight is needed."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"architectures": ["Lfm2MoeForCausalLM"], "model_type": "lfm2_moe", "norm_topk_prob": False}))
    cache = tmp_path / "hub"
    populate_cache(cache, "LiquidAI/LFM2-8B-A1B", {"config.json": cfg})
    r = run_cli("convert", "LiquidAI/LFM2-8B-A1B", env=offline(cache))
    assert r.returncode == 1
    assert r.stderr == (
        "error: config.json sets norm_topk_prob: false, but llama.cpp's lfm2moe graph always renormalises the top-k "
        "expert weights; converting would give a file that loads and computes something else, so lfmq refuses this "
        "checkpoint\n"
    )


def test_only_needed_files_are_requested():
    """The download filter takes weights, tokenizer and template, not other formats."""
    from fnmatch import fnmatch

    from lfmq.convert.source import NEEDED_FILES

    def wanted(name: str) -> bool:
        return any(fnmatch(name, pat) for pat in NEEDED_FILES)

    assert all(wanted(n) for n in ["config.json", "model.safetensors", "model-00001-of-00002.safetensors",
                                   "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json",
                                   "chat_template.jinja"])
    assert not any(wanted(n) for n in ["pytorch_model.bin", "onnx/model.onnx", "LFM2.5-350M-Q4_K_M.gguf", "README.md"])
