"""Converted files reproduce transformers' Lfm2ForCausalLM in llama.cpp, across every config dialect."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import lfmq
from conftest import SAMPLE, edit_config, hf_ids, llama_logits, reference_logits


def _lfm2_dialect(cfg: dict[str, Any]) -> None:
    """LFM2 (first release) spelling: full_attn_idxs, top-level rope_theta, tie_embedding."""
    kinds = cfg.pop("layer_types")
    cfg["full_attn_idxs"] = [i for i, k in enumerate(kinds) if k == "full_attention"]
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["tie_embedding"] = cfg.pop("tie_word_embeddings")


def _intermediate_size(cfg: dict[str, Any]) -> None:
    cfg["intermediate_size"] = cfg.pop("block_ff_dim")


def _rope_per_layer_type(cfg: dict[str, Any]) -> None:
    cfg["rope_parameters"] = {"full_attention": {"rope_theta": 500000.0, "rope_type": "default"}}


def _rope_in_parameters(cfg: dict[str, Any]) -> None:
    cfg["rope_parameters"] = {"rope_theta": 250000.0, "rope_type": "default"}


DIALECTS = [
    # id, synth keyword arguments, config edit
    ("lfm2.5-layer_types-tied-bf16", {}, None),
    ("lfm2-full_attn_idxs-top-rope", {}, _lfm2_dialect),
    ("intermediate_size", {}, _intermediate_size),
    ("rope-per-layer-type", {}, _rope_per_layer_type),
    ("rope-in-rope_parameters", {}, _rope_in_parameters),
    ("untied-lm_head", {"tied": False}, None),
    ("sharded-index", {"shards": 3}, None),
    ("f16-weights", {"dtype": "f16"}, None),
    ("f32-weights", {"dtype": "f32"}, None),
    ("no-auto-adjust", {"overrides": {"block_auto_adjust_ff_dim": False, "block_ff_dim": 160}}, None),
    ("multiplier", {"overrides": {"block_ffn_dim_multiplier": 1.5}}, None),
    ("other-attention-layout", {"overrides": {"num_hidden_layers": 5, "layer_types": ["full_attention", "conv", "conv", "full_attention", "conv"]}}, None),
]


def _reference_copy(folder: Path, tmp_path: Path) -> Path:
    """transformers 5 cannot load rope parameters given per layer type; its reference gets the flat spelling."""
    ref = tmp_path / "reference"
    shutil.copytree(folder, ref)
    edit_config(ref, lambda c: c.update(rope_parameters=c["rope_parameters"]["full_attention"]))
    return ref


@pytest.mark.parametrize("kw,edit", [d[1:] for d in DIALECTS], ids=[d[0] for d in DIALECTS])
def test_f32_logits_match_reference(make_ckpt, tmp_path, kw, edit):
    folder = make_ckpt(edit=edit, **kw)
    out = lfmq.convert(folder, tmp_path / "m.gguf", outtype="f32").path
    ids = hf_ids(folder, SAMPLE)
    ref_folder = _reference_copy(folder, tmp_path) if edit is _rope_per_layer_type else folder
    ref = reference_logits(ref_folder, ids)
    got = llama_logits(out, ids)
    scale = np.abs(ref).max()
    assert scale > 1.0, "the fixture's logits are too flat to tell a wrong conversion from a right one"
    assert np.abs(got - ref).max() <= 1e-3 * scale
    assert (got.argmax(-1) == ref.argmax(-1)).all()


# q8_0 also quantizes the activations inside llama.cpp's matmul, hence its wider bound
@pytest.mark.parametrize("outtype,tol", [("f16", 0.01), ("bf16", 0.03), ("q8_0", 0.1)])
def test_reduced_precision_keeps_argmax(tiny_ckpt, tmp_path, outtype, tol):
    out = lfmq.convert(tiny_ckpt, tmp_path / f"m-{outtype}.gguf", outtype=outtype).path
    ids = hf_ids(tiny_ckpt, SAMPLE)
    ref = reference_logits(tiny_ckpt, ids)
    got = llama_logits(out, ids)
    err = np.abs(got - ref).max(-1)  # per position
    assert err.max() <= tol * np.abs(ref).max()
    # random weights leave near-ties that any rounding may flip (F16 flips 1 of 87 positions here); the argmax
    # must agree wherever rounding cannot flip it: the reference's top-2 margin exceeds twice that row's error
    top2 = np.sort(ref, axis=-1)[:, -2:]
    decisive = (top2[:, 1] - top2[:, 0]) > 2 * err
    agree = got.argmax(-1) == ref.argmax(-1)
    assert decisive.mean() > 0.25, "too few decisive positions for the check to mean anything"
    assert agree[decisive].all()
    assert agree.mean() >= 0.9


def test_a_wrong_conversion_is_caught(tiny_ckpt, tmp_path, monkeypatch):
    """The parity check itself can fail: swap the gate and up projections and the logits must disagree."""
    from lfmq.convert import tensors

    real_plan = tensors.plan

    def swapped(*a, **k):
        plans = real_plan(*a, **k)
        out = []
        for p in plans:
            if p.name.endswith("ffn_gate.weight"):
                p = tensors.TensorPlan(p.src.replace(".w1.", ".w3."), p.name, p.shape, p.qtype)
            elif p.name.endswith("ffn_up.weight"):
                p = tensors.TensorPlan(p.src.replace(".w3.", ".w1."), p.name, p.shape, p.qtype)
            out.append(p)
        return out

    monkeypatch.setattr(sys.modules["lfmq.convert"], "plan", swapped)
    out = lfmq.convert(tiny_ckpt, tmp_path / "bad.gguf", outtype="f32").path
    ids = hf_ids(tiny_ckpt, SAMPLE)
    ref, got = reference_logits(tiny_ckpt, ids), llama_logits(out, ids)
    assert np.abs(got - ref).max() > 1e-2 * np.abs(ref).max()


def test_q8_0_bytes_equal_llama_cpp_quantizer(tiny_ckpt, tmp_path):
    """lfmq's Q8_0 is what llama.cpp's own quantizer makes from the F32 conversion, tensor for tensor."""
    import ctypes

    import gguf
    import llama_cpp

    f32 = lfmq.convert(tiny_ckpt, tmp_path / "f32.gguf", outtype="f32").path
    ours = lfmq.convert(tiny_ckpt, tmp_path / "ours.gguf", outtype="q8_0").path
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    theirs = tmp_path / "theirs.gguf"
    assert llama_cpp.llama_model_quantize(str(f32).encode(), str(theirs).encode(), ctypes.byref(params)) == 0
    a = {t.name: t for t in gguf.GGUFReader(ours).tensors}
    b = {t.name: t for t in gguf.GGUFReader(theirs).tensors}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].tensor_type == b[name].tensor_type, name
        assert a[name].data.tobytes() == b[name].data.tobytes(), name
