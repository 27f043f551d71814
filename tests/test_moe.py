"""LFM2 MoE (Lfm2MoeForCausalLM -> lfm2moe): converted files reproduce transformers in llama.cpp, refused variants say
why, the presets have the published sizes, and experts stream into their stacked tensors one at a time."""

from __future__ import annotations

import ctypes
import math
from typing import Any

import gguf
import numpy as np
import pytest

import lfmq
from conftest import SAMPLE, hf_ids, llama_logits, reference_logits
from lfmq.convert import arch as archs
from lfmq.convert.synth import make_config
from lfmq.errors import UnsupportedModelError


def _lfm2_dialect(cfg: dict[str, Any]) -> None:
    """LFM2-8B-A1B's own spelling: top-level rope_theta and tie_embedding."""
    cfg["rope_theta"] = cfg.pop("rope_parameters")["rope_theta"]
    cfg["tie_embedding"] = cfg.pop("tie_word_embeddings")


VARIANTS = [
    # id, synth keyword arguments, config edit
    ("one-dense-top2-of-8", {}, None),
    ("no-dense-layers", {"overrides": {"num_dense_layers": 0}}, None),
    ("two-dense-top1", {"overrides": {"num_dense_layers": 2, "num_experts_per_tok": 1}}, None),
    ("top4-of-4", {"overrides": {"num_experts": 4, "num_experts_per_tok": 4}}, None),
    ("top3-of-16-wider-experts", {"overrides": {"num_experts": 16, "num_experts_per_tok": 3,
                                                "moe_intermediate_size": 96}}, None),
    ("lfm2-dialect-tie_embedding", {}, _lfm2_dialect),
    ("other-attention-layout", {"overrides": {"num_hidden_layers": 5,
                                              "layer_types": ["full_attention", "conv", "conv", "full_attention", "conv"]}},
     None),
    ("sharded-f32-weights", {"shards": 3, "dtype": "f32"}, None),
]


@pytest.mark.parametrize("kw,edit", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_moe_f32_logits_match_reference(make_ckpt, tmp_path, kw, edit):
    folder = make_ckpt("tiny-moe", edit=edit, **kw)
    out = lfmq.convert(folder, tmp_path / "m.gguf", outtype="f32").path
    ids = hf_ids(folder, SAMPLE)
    ref, got = reference_logits(folder, ids), llama_logits(out, ids)
    scale = np.abs(ref).max()
    assert scale > 1.0, "the fixture's logits are too flat to tell a wrong conversion from a right one"
    assert np.abs(got - ref).max() <= 1e-3 * scale
    assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_moe_file_layout(make_ckpt, tmp_path):
    """The keys and stacked tensors llama.cpp's lfm2moe loader reads, in llama.cpp's dimension order."""
    folder = make_ckpt("tiny-moe")
    out = lfmq.convert(folder, tmp_path / "m.gguf", outtype="f16").path
    r = gguf.GGUFReader(out)
    key = lambda k: r.fields[k.format(arch="lfm2moe")].contents()  # noqa: E731
    assert key(gguf.Keys.General.ARCHITECTURE) == "lfm2moe"
    assert (key(gguf.Keys.LLM.EXPERT_COUNT), key(gguf.Keys.LLM.EXPERT_USED_COUNT)) == (8, 2)
    assert key(gguf.Keys.LLM.EXPERT_FEED_FORWARD_LENGTH) == 64
    assert key(gguf.Keys.LLM.LEADING_DENSE_BLOCK_COUNT) == 1
    assert key(gguf.Keys.LLM.EXPERT_GATING_FUNC) == gguf.ExpertGatingFuncType.SIGMOID
    assert key(gguf.Keys.Attention.HEAD_COUNT_KV) == [0, 2, 0, 2]
    t = {x.name: x for x in r.tensors}
    assert "blk.0.ffn_gate.weight" in t and "blk.0.ffn_gate_exps.weight" not in t
    assert [int(d) for d in t["blk.1.ffn_gate_exps.weight"].shape] == [64, 64, 8]  # [n_embd, n_ff_exp, n_expert]
    assert [int(d) for d in t["blk.1.ffn_down_exps.weight"].shape] == [64, 64, 8]
    assert t["blk.1.ffn_gate_exps.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    assert t["blk.1.ffn_gate_inp.weight"].tensor_type == gguf.GGMLQuantizationType.F32  # the router stays F32
    assert t["blk.1.exp_probs_b.bias"].tensor_type == gguf.GGMLQuantizationType.F32
    assert "output.weight" not in t


_WHY = "converting would give a file that loads and computes something else, so lfmq refuses this checkpoint"
REFUSED = [
    ("norm_topk_prob-false", {"norm_topk_prob": False},
     "config.json sets norm_topk_prob: false, but llama.cpp's lfm2moe graph always renormalises the top-k expert "
     f"weights; {_WHY}"),
    ("routed_scaling_factor", {"routed_scaling_factor": 2.5},
     f"config.json sets routed_scaling_factor: 2.5, but llama.cpp's lfm2moe graph applies no routed scaling factor; {_WHY}"),
    ("no-expert-bias", {"use_expert_bias": False},
     f"config.json sets use_expert_bias: false, but llama.cpp's lfm2moe graph requires the expert bias (exp_probs_b); {_WHY}"),
    ("untied-lm_head", {"tie_word_embeddings": False},
     "config.json unties the LM head (tie_word_embeddings: false), but llama.cpp's lfm2moe graph has no separate output "
     f"head; {_WHY}"),
]


@pytest.mark.parametrize("change,message", [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_variants_say_which(make_ckpt, tmp_path, change, message):
    folder = make_ckpt("tiny-moe", edit=lambda c: c.update(change))
    with pytest.raises(UnsupportedModelError) as e:
        lfmq.convert(folder, tmp_path / "m.gguf")
    assert str(e.value) == message
    assert not (tmp_path / "m.gguf").exists()


def test_untied_head_in_the_tensors_is_refused(make_ckpt, tmp_path):
    """A config that does not say, with an lm_head.weight in the checkpoint: refused from the tensor list."""
    from lfmq.convert.arch import lfm2_moe

    folder = make_ckpt("tiny-moe", edit=lambda c: c.pop("tie_word_embeddings"))
    _add_tensor(folder / "model.safetensors", "lm_head.weight", np.zeros((1024, 64), np.float32))
    with pytest.raises(UnsupportedModelError) as e:
        lfmq.convert(folder, tmp_path / "m.gguf")
    assert str(e.value) == lfm2_moe.UNTIED_HEAD_REFUSAL


@pytest.mark.parametrize("change", [{"norm_topk_prob": False}, {"routed_scaling_factor": 2.5}],
                         ids=["norm_topk_prob-false", "routed_scaling_factor"])
def test_the_refusals_are_not_hypothetical(make_ckpt, tmp_path, monkeypatch, change):
    """Converted anyway, these checkpoints load in llama.cpp and compute other logits than transformers."""
    from lfmq.convert.arch import lfm2_moe

    folder = make_ckpt("tiny-moe", edit=lambda c: c.update(change))
    monkeypatch.setattr(lfm2_moe, "_check_supported", lambda cfg: None)
    out = lfmq.convert(folder, tmp_path / "m.gguf", outtype="f32").path
    ids = hf_ids(folder, SAMPLE)
    ref, got = reference_logits(folder, ids), llama_logits(out, ids)
    assert np.abs(got - ref).max() > 1e-2 * np.abs(ref).max()


def test_8b_a1b_preset_has_published_sizes():
    """LFM2-8B-A1B: 8.3B parameters in all, about 1.5B active per token (Liquid's model card)."""
    cfg = make_config("lfm2-8b-a1b")
    arch = archs.for_config(cfg)
    hp = arch.parse_hparams(cfg)
    total = sum(math.prod(s) for s in arch.expected_shapes(hp, hp.n_ff).values())
    active = arch.active_parameters(hp, hp.n_ff)
    assert (total, active) == (8_339_930_560, 1_557_740_992)
    assert round(total / 1e9, 1) == 8.3 and round(active / 1e9, 1) == 1.6
    assert (hp.n_layer, hp.attn_layers, hp.n_dense, hp.n_expert, hp.n_expert_used) == (24, (2, 6, 10, 14, 18, 21), 2, 32, 4)


def test_synth_reports_active_parameters(tmp_path):
    r = lfmq.synth("tiny-moe", tmp_path / "ck")
    assert (r.parameters, r.active_parameters) == (469_528, 248_344)
    assert lfmq.synth("tiny", tmp_path / "dense").active_parameters == lfmq.synth("tiny", tmp_path / "d2").parameters


def test_experts_stream_one_at_a_time(make_ckpt):
    """A stacked tensor is written part after part: no chunk spans two experts, so a layer's experts are never held
    together (let alone twice)."""
    from lfmq.convert import tensors
    from lfmq.convert.safetensors import SafetensorsReader
    from lfmq.convert.source import resolve

    ckpt = resolve(make_ckpt("tiny-moe", overrides={"moe_intermediate_size": 96}))
    arch = archs.for_config(ckpt.config)
    hp = arch.parse_hparams(ckpt.config)
    with SafetensorsReader(ckpt.weight_files()) as reader:
        plans = tensors.plan(arch, hp, reader, "f32")
        gate = next(p for p in plans if p.name == "blk.2.ffn_gate_exps.weight")
        assert gate.shape == (8, 96, 64) and len(gate.parts) == 8
        sizes = [c.shape for c in tensors.chunks(reader, gate)]
        assert len(sizes) == 8 and all(s == (96, 64) for s in sizes)
        whole = np.concatenate(list(tensors.chunks(reader, gate))).reshape(8, 96, 64)
        assert np.array_equal(whole[3], reader.float32("model.layers.2.feed_forward.experts.3.w1.weight"))


def test_q8_0_bytes_equal_llama_cpp_quantizer(make_ckpt, tmp_path):
    """lfmq's Q8_0 of the stacked experts is what llama.cpp's own quantizer makes from the F32 conversion."""
    import llama_cpp

    folder = make_ckpt("tiny-moe")
    f32 = lfmq.convert(folder, tmp_path / "f32.gguf", outtype="f32").path
    ours = lfmq.convert(folder, tmp_path / "ours.gguf", outtype="q8_0").path
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


def test_moe_cli_convert_and_inspect(make_ckpt, tmp_path):
    from conftest import run_cli

    folder = make_ckpt("tiny-moe")
    out = tmp_path / "m.gguf"
    r = run_cli("convert", str(folder), "-o", str(out), "--outtype", "f16")
    assert r.returncode == 0, r.stderr
    r = run_cli("inspect", str(out))
    assert r.returncode == 0, r.stderr
    assert "lfm2moe" in r.stdout
    for fact in ("expert_count=8", "expert_used_count=2", "expert_feed_forward_length=64", "leading_dense_block_count=1"):
        assert fact in r.stdout


def _add_tensor(path, name: str, value: np.ndarray) -> None:
    """Rewrite a safetensors file with one more F32 tensor."""
    import json
    import struct

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    data = raw[8 + n :]
    header[name] = {"dtype": "F32", "shape": list(value.shape), "data_offsets": [len(data), len(data) + value.nbytes]}
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    path.write_bytes(struct.pack("<Q", len(head)) + head + data + value.astype("<f4").tobytes())


def test_imatrix_collects_each_expert_and_the_quantizer_uses_it(make_ckpt, tmp_path):
    """MUL_MAT_ID products are counted per expert, as llama-imatrix does: every token adds its activations to the
    experts it was routed to. Checked against the router's own input (the same activations, once per token), and
    through llama.cpp's quantizer: changing one expert's entry changes that expert's quantized bytes only."""
    from lfmq.quantize import quantize
    from lfmq.quantize.imatrix import compute_imatrix
    from lfmq.quantize.imatrix_file import read_imatrix, write_imatrix

    f16 = lfmq.convert(make_ckpt("tiny-moe"), tmp_path / "f16.gguf", outtype="f16").path
    result = compute_imatrix(f16, tmp_path / "imatrix.gguf", n_ctx=128, chunks=2)
    im = read_imatrix(result.path)
    top_k = 2
    for layer in (1, 2, 3):  # the MoE blocks (block 0 is dense)
        gate, router = f"blk.{layer}.ffn_gate_exps.weight", f"blk.{layer}.ffn_gate_inp.weight"
        assert im.counts[gate].shape == (8,) and im.counts[gate].sum() == result.tokens * top_k
        assert (im.counts[gate] > 0).sum() >= 2
        np.testing.assert_allclose(im.sums[gate].sum(0), top_k * im.sums[router][0], rtol=1e-5)
        np.testing.assert_array_equal(im.counts[f"blk.{layer}.ffn_down_exps.weight"], im.counts[gate])
        assert im.sums[f"blk.{layer}.ffn_down_exps.weight"].shape == (8, 64)  # the expert width

    def q4_0(imatrix_path, name):
        out = quantize(f16, "Q4_0", tmp_path / name, imatrix=imatrix_path)[0].path
        return {t.name: t.data for t in gguf.GGUFReader(out).tensors}

    base = q4_0(result.path, "a")
    gate = "blk.2.ffn_gate_exps.weight"
    changed = im.sums[gate].copy()
    changed[5] = changed[5][::-1]  # expert 5's column weights reversed
    im.sums[gate] = changed
    write_imatrix(im, tmp_path / "changed.gguf")
    other = q4_0(tmp_path / "changed.gguf", "b")
    a, b = np.asarray(base[gate]), np.asarray(other[gate])  # [n_expert, rows, blocks...]
    differs = [not np.array_equal(a[e], b[e]) for e in range(8)]
    assert differs == [e == 5 for e in range(8)]


def test_predictions_count_the_active_experts(make_ckpt, tmp_path):
    """Decode reads, and prefill computes with, the routed experts only: top-2 of 8 here."""
    from dataclasses import replace

    from lfmq.devices.predict import predict, shape_of
    from lfmq.devices.profiles import get_profile
    from lfmq.meta import read_meta

    synth = lfmq.synth("tiny-moe", tmp_path / "ck")
    meta = read_meta(lfmq.convert(synth.path, tmp_path / "m.gguf", outtype="f32").path)
    assert (meta.n_params, meta.n_params_active) == (synth.parameters, synth.active_parameters)
    experts = sum(int(t.n_bytes) for t in gguf.GGUFReader(meta.path).tensors if "_exps." in t.name)
    assert meta.tensor_bytes - meta.bytes_per_token == experts * 6 // 8  # 6 of 8 experts unread per token
    shape = shape_of(meta)
    moe, dense = predict(get_profile("rpi5"), shape), predict(get_profile("rpi5"), replace(shape, active_params=None))
    assert moe.prefill_tps / dense.prefill_tps == pytest.approx(synth.parameters / synth.active_parameters)
