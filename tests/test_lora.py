"""PEFT LoRA adapters: merged while converting (against peft's merge_and_unload in transformers), written as GGUF
adapters that llama.cpp applies at run time (against the merged file), and one clear error per bad adapter."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

import lfmq
from conftest import SAMPLE, hf_ids, llama_logits
from lfmq.errors import CheckpointError, LlamaError, UnsupportedModelError, UsageError

ALL = ["q_proj", "k_proj", "v_proj", "out_proj", "in_proj", "w1", "w2", "w3"]


def make_adapter(base: Path, out: Path, **lora: Any) -> Path:
    """A PEFT LoRA adapter for `base` with random A and B (peft's default B = 0 would change nothing)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(lora.pop("seed", 0))
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    cfg = LoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ALL, "init_lora_weights": False, **lora})
    get_peft_model(model, cfg).save_pretrained(out)
    return out


def peft_merged_logits(base: Path, adapter: Path, ids: list[int]) -> np.ndarray:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()
    with torch.no_grad():
        return merged(torch.tensor([ids])).logits[0].float().numpy()


def engine_logits(path: Path, ids: list[int], lora: Any = None) -> np.ndarray:
    """Every position's logits through lfmq's runtime (F32 KV cache: the cache's rounding is not under test)."""
    with lfmq.load(path, n_ctx=256, type_k="f32", type_v="f32", lora=lora) as m:
        m.engine.decode(ids, 0, outputs="all")
        return m.engine.logits_rows(len(ids))


def assert_close(got: np.ndarray, ref: np.ndarray) -> None:
    scale = np.abs(ref).max()
    assert scale > 1.0
    assert np.abs(got - ref).max() <= 1e-3 * scale
    assert (got.argmax(-1) == ref.argmax(-1)).all()


VARIANTS = [
    # id, synth preset and keyword arguments, LoraConfig keyword arguments
    ("all-projections", ("tiny", {}), {}),
    ("attention-only-rank8", ("tiny", {}), {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "k_proj", "v_proj"]}),
    ("conv-projections-rslora", ("tiny", {}), {"target_modules": ["in_proj", "out_proj"], "use_rslora": True,
                                               "lora_alpha": 3}),
    ("rank_pattern", ("tiny", {}), {"rank_pattern": {"w2": 2, "q_proj": 6}}),
    ("bf16-base", ("tiny", {"dtype": "bf16"}), {"target_modules": ["w1", "w3", "out_proj"]}),
    ("untied-lm_head", ("tiny", {"tied": False}), {"target_modules": ["q_proj", "lm_head"]}),
    ("moe-base-attention-conv-dense", ("tiny-moe", {}), {"target_modules": ["q_proj", "v_proj", "in_proj", "w1", "w2"]}),
]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, tuple[Path, Path, Path, Path, list[int]]]:
    """Per variant: base checkpoint, adapter, lfmq's merged F32 GGUF, base F32 GGUF and the sample's token ids."""
    return {}


def _build(built: dict, tmp_path_factory, vid: str, preset: tuple[str, dict], lora: dict):
    if vid not in built:
        root = tmp_path_factory.mktemp(vid)
        base = lfmq.synth(preset[0], root / "base", **preset[1]).path
        adapter = make_adapter(base, root / "adapter", **lora)
        merged = lfmq.convert(base, root / "merged.gguf", outtype="f32", lora=adapter)
        assert merged.lora == "adapter"
        plain = lfmq.convert(base, root / "base.gguf", outtype="f32").path
        built[vid] = (base, adapter, merged.path, plain, hf_ids(base, SAMPLE))
    return built[vid]


@pytest.mark.parametrize("preset,lora", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_merged_gguf_matches_peft_merge_and_unload(built, tmp_path_factory, request, preset, lora):
    base, adapter, merged, plain, ids = _build(built, tmp_path_factory, request.node.callspec.id, preset, lora)
    ref = peft_merged_logits(base, adapter, ids)
    assert_close(llama_logits(merged, ids), ref)
    # and the adapter matters: the base alone is far from the reference
    assert np.abs(llama_logits(plain, ids) - ref).max() > 1e-2 * np.abs(ref).max()


@pytest.mark.parametrize("preset,lora", [v[1:] for v in VARIANTS], ids=[v[0] for v in VARIANTS])
def test_gguf_adapter_at_run_time_matches_merged(built, tmp_path_factory, request, preset, lora):
    base, adapter, merged, plain, ids = _build(built, tmp_path_factory, request.node.callspec.id, preset, lora)
    out = lfmq.convert(adapter, adapter.parent / "adapter.gguf", base=base, lora_out=True, force=True)
    assert out.lora == "adapter" and out.outtype == "f32"
    assert_close(engine_logits(plain, ids, lora=out.path), engine_logits(merged, ids))


def test_adapter_scale_is_applied(built, tmp_path_factory):
    base, adapter, merged, plain, ids = _build(built, tmp_path_factory, "all-projections", *VARIANTS[0][1:])
    out = lfmq.convert(adapter, adapter.parent / "a.gguf", base=base, lora_out=True, force=True).path
    assert_close(engine_logits(plain, ids, lora=[(out, 0.0)]), engine_logits(plain, ids))
    half = engine_logits(plain, ids, lora=[(str(out), 0.5)])
    assert np.abs(half - engine_logits(merged, ids)).max() > 1e-2


def test_gguf_adapter_layout(built, tmp_path_factory):
    """What llama.cpp's adapter loader reads: type adapter, arch, adapter.lora.alpha, A [r, in] and B [out, r]."""
    base, adapter, *_ = _build(built, tmp_path_factory, "rank_pattern", *VARIANTS[3][1:])
    path = lfmq.convert(adapter, adapter.parent / "layout.gguf", base=base, lora_out=True, outtype="f16", force=True).path
    r = gguf.GGUFReader(path)
    field = lambda k: r.fields[k].contents()  # noqa: E731
    assert field(gguf.Keys.General.TYPE) == "adapter"
    assert field(gguf.Keys.General.ARCHITECTURE) == "lfm2"
    assert field(gguf.Keys.Adapter.TYPE) == "lora"
    assert field(gguf.Keys.Adapter.LORA_ALPHA) == 8.0
    t = {x.name: x for x in r.tensors}
    assert [int(d) for d in t["blk.1.attn_q.weight.lora_a"].shape] == [64, 6]   # GGUF order: [in, r]
    assert [int(d) for d in t["blk.1.attn_q.weight.lora_b"].shape] == [6, 64]   # [r, out]
    assert [int(d) for d in t["blk.0.ffn_down.weight.lora_b"].shape] == [2, 64]
    assert t["blk.0.shortconv.in_proj.weight.lora_a"].tensor_type == gguf.GGMLQuantizationType.F16
    assert len(t) == 2 * (2 * 5 + 2 * 7)  # A and B of 5 matrices per conv block and 7 per attention block
    assert field("lfmq.lora.base") == "base"


# -- bad adapters --------------------------------------------------------------------------------------------------

def _edit_adapter(adapter: Path, fn) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    fn(cfg)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bad")
    base = lfmq.synth("tiny", root / "base").path
    return base, make_adapter(base, root / "adapter")


def _copy(adapter: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(adapter, tmp_path / "adapter"))


def test_adapter_for_another_base_is_refused(tiny_adapter, make_ckpt, tmp_path):
    _, adapter = tiny_adapter
    wider = make_ckpt(overrides={"hidden_size": 96, "num_attention_heads": 4})
    message = ("the adapter was trained on another base model (adapter_config.json names {base}): its "
               "model.layers.0.conv.in_proj is 192 x 64, the base's is 288 x 96")
    with pytest.raises(CheckpointError) as e:
        lfmq.convert(wider, tmp_path / "m.gguf", lora=adapter)
    assert str(e.value) == message.format(base=tiny_adapter[0])
    with pytest.raises(CheckpointError) as e:
        lfmq.convert(adapter, tmp_path / "a.gguf", base=wider, lora_out=True)
    assert str(e.value) == message.format(base=tiny_adapter[0])
    assert not list(tmp_path.glob("*.gguf"))


def test_module_the_base_lacks_is_refused(make_ckpt, tmp_path):
    # trained where layer 0 is attention; the tiny base's layer 0 is a conv block
    other = make_ckpt(overrides={"layer_types": ["full_attention", "conv", "conv", "full_attention"]})
    adapter = make_adapter(other, tmp_path / "adapter", target_modules=["q_proj"])
    with pytest.raises(CheckpointError) as e:
        lfmq.convert(make_ckpt(), tmp_path / "m.gguf", lora=adapter)
    assert str(e.value) == (
        "the adapter changes model.layers.0.self_attn.q_proj, which the base Lfm2ForCausalLM does not have (its layer 0 "
        f"is a conv block): is the base the model the adapter was trained on (adapter_config.json names {other})?")


def test_rank_mismatch_is_refused(tiny_adapter, tmp_path):
    base, adapter = tiny_adapter
    bad = _copy(adapter, tmp_path)
    _edit_adapter(bad, lambda c: c.update(r=8))
    with pytest.raises(CheckpointError) as e:
        lfmq.convert(base, tmp_path / "m.gguf", lora=bad)
    assert str(e.value) == ("rank mismatch: model.layers.0.conv.in_proj has lora_A [4, 64] and lora_B [192, 4], but "
                            "adapter_config.json gives it rank 8: the adapter files do not belong together")


def _drop_tensor(adapter: Path, name: str) -> None:
    from safetensors.numpy import load_file, save_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    del tensors[name]
    save_file(tensors, adapter / "adapter_model.safetensors")


BAD = [
    # id, adapter config edit, expected error type, message
    ("dora", lambda c: c.update(use_dora=True), UnsupportedModelError,
     "adapter_config.json sets use_dora: DoRA are not supported, only plain LoRA"),
    ("not-lora", lambda c: c.update(peft_type="IA3"), UnsupportedModelError,
     "adapter_config.json is a IA3 adapter: lfmq converts LoRA adapters only"),
    ("modules_to_save", lambda c: c.update(modules_to_save=["lm_head"]), UnsupportedModelError,
     "adapter_config.json also trains whole modules or tokens (modules_to_save / trainable_token_indices): lfmq "
     "converts plain LoRA adapters only"),
]


@pytest.mark.parametrize("edit,err,message", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_unsupported_adapter_kinds(tiny_adapter, tmp_path, edit, err, message):
    base, adapter = tiny_adapter
    bad = _copy(adapter, tmp_path)
    _edit_adapter(bad, edit)
    with pytest.raises(err) as e:
        lfmq.convert(base, tmp_path / "m.gguf", lora=bad)
    assert str(e.value) == message


def test_half_a_pair_is_refused(tiny_adapter, tmp_path):
    base, adapter = tiny_adapter
    bad = _copy(adapter, tmp_path)
    _drop_tensor(bad, "base_model.model.model.layers.1.self_attn.k_proj.lora_B.weight")
    with pytest.raises(CheckpointError) as e:
        lfmq.convert(base, tmp_path / "m.gguf", lora=bad)
    assert str(e.value) == ("adapter_model.safetensors has no lora_B for model.layers.1.self_attn.k_proj: the adapter "
                            "file is incomplete")


@pytest.mark.parametrize("target,message", [
    ("lm_head", "the adapter changes lm_head, but the base ties it to the token embedding: llama.cpp has no separate "
                "head to apply it to"),
    ("conv.conv", "the adapter changes model.layers.0.conv.conv: the short-conv kernel is a depthwise convolution, not "
                  "a matrix product"),
], ids=["lm_head-on-tied-base", "short-conv-kernel"])
def test_modules_llama_cpp_cannot_adapt(tiny_adapter, tmp_path, target, message):
    base, _ = tiny_adapter
    # peft adapts a grouped convolution only with a rank divisible by its groups (64 channels here)
    adapter = make_adapter(base, tmp_path / "adapter", target_modules=[target], r=64)
    with pytest.raises(UnsupportedModelError) as e:
        lfmq.convert(base, tmp_path / "m.gguf", lora=adapter)
    assert str(e.value) == message


def test_alpha_pattern_needs_merging_for_a_gguf_adapter(tiny_adapter, tmp_path):
    base, _ = tiny_adapter
    adapter = make_adapter(base, tmp_path / "adapter", alpha_pattern={"q_proj": 2})
    with pytest.raises(UnsupportedModelError, match="one GGUF adapter alpha cannot express: merge it into the base"):
        lfmq.convert(adapter, tmp_path / "a.gguf", base=base, lora_out=True)
    ids = hf_ids(base, SAMPLE)
    merged = lfmq.convert(base, tmp_path / "m.gguf", outtype="f32", lora=adapter).path
    assert_close(llama_logits(merged, ids), peft_merged_logits(base, adapter, ids))


def test_gguf_adapter_on_another_base_is_refused_at_load(tiny_adapter, make_ckpt, tmp_path):
    base, adapter = tiny_adapter
    out = lfmq.convert(adapter, tmp_path / "a.gguf", base=base, lora_out=True).path
    wider = lfmq.convert(make_ckpt(overrides={"hidden_size": 96}), tmp_path / "w.gguf", outtype="f32").path
    with pytest.raises(LlamaError) as e:
        lfmq.load(wider, lora=out)
    assert str(e.value).startswith(f"llama.cpp could not apply the LoRA adapter {out} to w.gguf: ")
    assert "has incorrect shape (hint: maybe wrong base model?)" in str(e.value)


@pytest.mark.parametrize("kw,message", [
    ({"lora_out": True}, "--lora-out writes a GGUF adapter for a base model: pass --base BASE, the checkpoint the "
                         "adapter was trained on"),
    ({}, "{adapter} is a LoRA adapter, not a model: pass --base BASE (add --lora-out for a GGUF adapter, leave it out "
         "to merge the adapter into the base)"),
])
def test_adapter_roles_are_usage_errors(tiny_adapter, tmp_path, kw, message):
    _, adapter = tiny_adapter
    with pytest.raises(UsageError) as e:
        lfmq.convert(adapter, tmp_path / "a.gguf", **kw)
    assert str(e.value) == message.format(adapter=adapter)


def test_adapter_given_as_src_with_base_merges(tiny_adapter, tmp_path):
    base, adapter = tiny_adapter
    a = lfmq.convert(adapter, tmp_path / "a.gguf", base=base, outtype="f32")
    b = lfmq.convert(base, tmp_path / "b.gguf", lora=adapter, outtype="f32")
    ra, rb = gguf.GGUFReader(a.path), gguf.GGUFReader(b.path)
    assert all(x.data.tobytes() == y.data.tobytes() for x, y in zip(ra.tensors, rb.tensors))
    assert ra.fields["lfmq.lora"].contents() == "adapter"


def test_a_renamed_base_gets_a_warning(tiny_adapter, tmp_path):
    base, adapter = tiny_adapter
    bad = _copy(adapter, tmp_path)
    _edit_adapter(bad, lambda c: c.update(base_model_name_or_path="LiquidAI/LFM2.5-1.2B"))
    r = lfmq.convert(base, tmp_path / "m.gguf", lora=bad)
    assert ("adapter_config.json says the adapter was trained on LiquidAI/LFM2.5-1.2B, and it is applied to base: the "
            "shapes fit, but check that this is the base you mean") in r.warnings


# -- the command line ----------------------------------------------------------------------------------------------

def test_cli_merge_write_inspect_and_apply(tiny_adapter, tmp_path):
    from conftest import run_cli

    base, adapter = tiny_adapter
    merged, plain, out = tmp_path / "merged.gguf", tmp_path / "base.gguf", tmp_path / "adapter.gguf"
    for args in (["convert", str(base), "--lora", str(adapter), "-o", str(merged), "--outtype", "f32"],
                 ["convert", str(base), "-o", str(plain), "--outtype", "f32"],
                 ["convert", str(adapter), "--base", str(base), "--lora-out", "-o", str(out)]):
        r = run_cli(*args)
        assert r.returncode == 0, r.stderr
    r = run_cli("inspect", str(out))
    assert "adapter       lora for base: 24 matrices, rank 4, alpha 8\n" in r.stdout
    assert "LoRA adapter merged into the weights" in run_cli("inspect", str(merged)).stdout
    replies = [json.loads(run_cli("generate", str(m), "-p", "Hello", "--max-tokens", "8", "--temperature", "0",
                                  "--json", *extra).stdout)["text"]
               for m, extra in ((merged, ()), (plain, ("--lora", str(out))))]
    assert replies[0] == replies[1]


def test_cli_bad_adapter_is_one_line(tiny_adapter, tmp_path):
    from conftest import run_cli

    base, adapter = tiny_adapter
    bad = _copy(adapter, tmp_path)
    _edit_adapter(bad, lambda c: c.update(r=8))
    r = run_cli("convert", str(base), "--lora", str(bad), "-o", str(tmp_path / "m.gguf"))
    assert r.returncode == 1
    assert r.stderr == ("error: rank mismatch: model.layers.0.conv.in_proj has lora_A [4, 64] and lora_B [192, 4], but "
                        "adapter_config.json gives it rank 8: the adapter files do not belong together\n")
    r = run_cli("generate", str(tmp_path / "none.gguf"), "-p", "x", "--lora", str(tmp_path / "none-lora.gguf"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1


def test_cli_bench_with_an_adapter(tiny_adapter, tmp_path):
    from conftest import run_cli

    base, adapter = tiny_adapter
    model = lfmq.convert(base, tmp_path / "base.gguf", outtype="f16").path
    out = lfmq.convert(adapter, tmp_path / "a.gguf", base=base, lora_out=True).path
    r = run_cli("bench", str(model), "--lora", str(out), "-p", "16", "-n", "4", "-r", "1", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["profile"]["runtime"]["lora"] == [[str(out), 1.0]]
