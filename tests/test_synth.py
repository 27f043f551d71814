"""Synthetic checkpoints have the published shapes, load in transformers and quantize to Liquid's file sizes."""

from __future__ import annotations

import ctypes
import json

import pytest

import lfmq
from lfmq.convert.arch import lfm2
from lfmq.convert.synth import PRESETS, make_config


@pytest.mark.parametrize("preset,params", [
    ("lfm2.5-350m", 354_483_968), ("lfm2-700m", 742_489_344), ("lfm2.5-1.2b", 1_170_340_608),
])
def test_preset_shapes_have_published_parameter_counts(preset, params):
    hp = lfm2.parse_hparams(make_config(preset))
    shapes = lfm2.expected_shapes(hp, hp.n_ff)
    assert sum(int(__import__("numpy").prod(s)) for s in shapes.values()) == params
    assert PRESETS[preset]["params"] == params


def test_2_6b_uses_its_ffn_width_unadjusted():
    hp = lfm2.parse_hparams(make_config("lfm2-2.6b"))
    assert (hp.n_layer, hp.n_ff, hp.attn_layers) == (30, 10752, (2, 5, 9, 13, 17, 21, 24, 27))


def test_seed_makes_weights_reproducible(tmp_path):
    a, b, c = (lfmq.synth("tiny", tmp_path / n, seed=s) for n, s in [("a", 1), ("b", 1), ("c", 2)])
    read = lambda r: (r.path / "model.safetensors").read_bytes()  # noqa: E731
    assert read(a) == read(b) != read(c)


def test_loads_in_transformers_and_says_it_is_random(tiny_ckpt):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_ckpt)
    assert cfg.model_type == "lfm2"
    assert "RANDOM WEIGHTS" in json.loads((tiny_ckpt / "config.json").read_text())["lfmq_synthetic"]["note"]


@pytest.fixture(scope="module")
def f16_350m(tmp_path_factory):
    folder = tmp_path_factory.mktemp("s350")
    ck = lfmq.synth("lfm2.5-350m", folder / "ckpt")
    assert ck.parameters == 354_483_968
    out = lfmq.convert(ck.path, folder / "f16.gguf", outtype="f16")
    assert out.tensors == 148  # as in Liquid's official files (no output.weight: tied)
    return out.path


@pytest.mark.parametrize("ftype,published", [("Q8_0", 379_217_632), ("Q4_K_M", 229_312_224)])
def test_350m_quantizes_to_published_sizes(f16_350m, ftype, published):
    """Speed and memory depend on shapes and types: the random model must be as big as Liquid's real files."""
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype}")
    params.nthread = 2
    out = f16_350m.with_name(f"{ftype}.gguf")
    assert llama_cpp.llama_model_quantize(str(f16_350m).encode(), str(out).encode(), ctypes.byref(params)) == 0
    size = out.stat().st_size
    out.unlink()
    assert abs(size - published) / published < 0.001, size
