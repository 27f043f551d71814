"""`lfmq synth`: shape-exact LFM2 checkpoints with seeded random weights, numpy only, for offline demos and tests."""

from __future__ import annotations

import json
import shutil
import struct
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import gguf
import numpy as np

from lfmq.convert import arch as archs
from lfmq.convert.synth_vocab import build_tokenizer, tokenizer_config
from lfmq.errors import OutputExistsError, UsageError
from lfmq.progress import Progress

# name -> (config.json fields that differ per size, published parameter count or None)
PRESETS: dict[str, dict[str, Any]] = {
    "lfm2.5-350m": dict(hidden_size=1024, num_hidden_layers=16, attn=(2, 5, 8, 10, 12, 14), num_attention_heads=16,
                        block_ff_dim=6656, vocab_size=65536, dialect="lfm2.5", params=354_483_968),
    "lfm2-700m": dict(hidden_size=1536, num_hidden_layers=16, attn=(2, 5, 8, 10, 12, 14), num_attention_heads=24,
                      block_ff_dim=10240, vocab_size=65536, dialect="lfm2", params=742_489_344),
    "lfm2.5-1.2b": dict(hidden_size=2048, num_hidden_layers=16, attn=(2, 5, 8, 10, 12, 14), num_attention_heads=32,
                        block_ff_dim=12288, vocab_size=65536, dialect="lfm2.5", params=1_170_340_608),
    "lfm2-2.6b": dict(hidden_size=2048, num_hidden_layers=30, attn=(2, 5, 9, 13, 17, 21, 24, 27),
                      num_attention_heads=32, block_ff_dim=10752, block_auto_adjust_ff_dim=False, vocab_size=65536,
                      dialect="lfm2", params=None),
    # a few hundred KB: for tests; wide enough weights that its logits are far from uniform
    "tiny": dict(hidden_size=64, num_hidden_layers=4, attn=(1, 3), num_attention_heads=4, num_key_value_heads=2,
                 block_ff_dim=256, block_multiple_of=32, vocab_size=1024, dialect="lfm2.5", params=None),
    # MoE (Lfm2MoeForCausalLM). LFM2-8B-A1B: 24 blocks, 6 attention, 2 dense FFN blocks then 32 experts, top-4;
    # Liquid publishes "8.3B total, 1.5B active"; these shapes give 8,339,930,560 total, 1,557,740,992 active
    "lfm2-8b-a1b": dict(moe=True, hidden_size=2048, num_hidden_layers=24, attn=(2, 6, 10, 14, 18, 21),
                        num_attention_heads=32, intermediate_size=7168, moe_intermediate_size=1792, num_experts=32,
                        num_experts_per_tok=4, num_dense_layers=2, vocab_size=65536, dialect="lfm2", params=None),
    # 769M parameters (1.5 GB in bf16): LFM2-8B-A1B's layout at half the width, for benchmarks that fit a small machine
    "lfm2-moe-mid": dict(moe=True, hidden_size=1024, num_hidden_layers=16, attn=(2, 6, 10, 14),
                         num_attention_heads=16, intermediate_size=3584, moe_intermediate_size=896, num_experts=16,
                         num_experts_per_tok=4, num_dense_layers=2, vocab_size=65536, dialect="lfm2.5", params=None),
    "tiny-moe": dict(moe=True, hidden_size=64, num_hidden_layers=4, attn=(1, 3), num_attention_heads=4,
                     num_key_value_heads=2, intermediate_size=256, moe_intermediate_size=64, num_experts=8,
                     num_experts_per_tok=2, num_dense_layers=1, vocab_size=1024, dialect="lfm2.5", params=None),
}
TINY = ("tiny", "tiny-moe")
DTYPES = {"bf16": "BF16", "f16": "F16", "f32": "F32"}
RANDOM_NOTE = "RANDOM WEIGHTS: shape-exact for speed and memory measurements; the model knows no language"


@dataclass(frozen=True)
class SynthResult:
    """What `synth` wrote."""

    path: Path
    preset: str
    parameters: int
    bytes: int
    seconds: float
    seed: int
    active_parameters: int = 0  # what one token computes with: all but the idle experts of a MoE


def make_config(preset: str, *, tied: bool = True) -> dict[str, Any]:
    """config.json for a preset, in the dialect its family publishes (LFM2.5: layer_types + rope_parameters)."""
    p = dict(PRESETS[preset])
    attn, dialect, moe = p.pop("attn"), p.pop("dialect"), p.pop("moe", False)
    p.pop("params")
    n = p["num_hidden_layers"]
    cfg: dict[str, Any] = {
        "architectures": ["Lfm2ForCausalLM"], "model_type": "lfm2",
        "num_key_value_heads": 8, "max_position_embeddings": 128000, "norm_eps": 1e-5,
        "conv_bias": False, "conv_L_cache": 3, "block_multiple_of": 256, "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": True, "initializer_range": 0.02,
        "bos_token_id": 1, "eos_token_id": 7, "pad_token_id": 0, "use_cache": True,
        **p,
    }
    if moe:
        # Lfm2MoeConfig: intermediate_size as is (no block_* rounding), layer_types in every dialect
        for key in ("block_multiple_of", "block_ffn_dim_multiplier", "block_auto_adjust_ff_dim"):
            del cfg[key]
        cfg.update(architectures=["Lfm2MoeForCausalLM"], model_type="lfm2_moe", norm_topk_prob=True,
                   routed_scaling_factor=1.0, use_expert_bias=True,
                   layer_types=["full_attention" if i in attn else "conv" for i in range(n)])
    if dialect == "lfm2.5":
        cfg["layer_types"] = ["full_attention" if i in attn else "conv" for i in range(n)]
        cfg["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "default"}
        cfg["tie_word_embeddings"] = tied
        cfg["dtype"] = "bfloat16"
    else:
        if not moe:
            cfg["full_attn_idxs"] = list(attn)
        cfg["rope_theta"] = 1000000.0
        cfg["tie_embedding"] = tied
        cfg["torch_dtype"] = "bfloat16"
    return cfg


def _scale(name: str, shape: tuple[int, ...], preset: str) -> tuple[float, float]:
    """(mean, std) of a tensor's random values: norms near 1, matrices like a trained model's init."""
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):
        return 1.0, 0.1
    if name.endswith("expert_bias"):
        return 0.0, 0.1  # load-balancing offsets of the order of the sigmoid scores: they change which experts win
    if preset in TINY:
        return 0.0, 0.5 if "conv.conv" in name else 1.5 / np.sqrt(shape[-1])
    return 0.0, 0.02


def _encode(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "F32":
        return values.astype("<f4")
    if dtype == "F16":
        return values.astype("<f2")
    return gguf.quants.quantize(values, gguf.GGMLQuantizationType.BF16).view("<u2")


def _write_safetensors(path: Path, shapes: dict[str, tuple[int, ...]], dtype: str, fill: Callable[[str], np.ndarray]) -> int:
    width = {"F32": 4, "F16": 2, "BF16": 2}[dtype]
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, shape in shapes.items():
        n = int(np.prod(shape)) * width
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in shapes:
            f.write(fill(name).tobytes())
    return 8 + len(raw) + offset


def synth(
    preset: str,
    output: str | Path,
    *,
    seed: int = 0,
    dtype: str = "bf16",
    tied: bool = True,
    shards: int = 1,
    overrides: dict[str, Any] | None = None,
    force: bool = False,
    progress: Progress | None = None,
) -> SynthResult:
    """Write a Hugging Face-format LFM2 checkpoint with the preset's exact shapes and seeded random weights."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}: choose one of {', '.join(PRESETS)}")
    if dtype not in DTYPES:
        raise UsageError(f"unknown dtype {dtype!r}: choose one of {', '.join(DTYPES)}")
    output = Path(output)
    if output.exists() and any(output.iterdir()) and not force:
        raise OutputExistsError(f"{output} exists and is not empty: pass --force to overwrite it")
    started = time.perf_counter()
    cfg = {**make_config(preset, tied=tied), **(overrides or {})}
    cfg["lfmq_synthetic"] = {"preset": preset, "seed": seed, "note": RANDOM_NOTE}
    arch = archs.for_config(cfg)
    hp = arch.parse_hparams(cfg)
    shapes = arch.expected_shapes(hp, hp.n_ff)
    if not tied:
        shapes["lm_head.weight"] = (hp.n_vocab, hp.n_embd)
    rng = np.random.default_rng(seed)

    def fill(name: str) -> np.ndarray:
        mean, std = _scale(name, shapes[name], preset)
        values = rng.standard_normal(shapes[name], dtype=np.float32) * np.float32(std) + np.float32(mean)
        return _encode(values, DTYPES[dtype])

    tmp = output.with_name(f".{output.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        size = _write_all(tmp, cfg, shapes, DTYPES[dtype], fill, shards, seed, progress)
        if output.exists():
            shutil.rmtree(output)
        tmp.rename(output)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    n_params = sum(int(np.prod(s)) for s in shapes.values())
    head = hp.n_vocab * hp.n_embd if "lm_head.weight" in shapes else 0
    return SynthResult(output.resolve(), preset, n_params, size, time.perf_counter() - started, seed,
                       active_parameters=arch.active_parameters(hp, hp.n_ff) + head)


def _write_all(folder: Path, cfg: dict, shapes: dict, dtype: str, fill: Callable, shards: int, seed: int,
               progress: Progress | None) -> int:
    names = list(shapes)
    groups = [names[i::shards] for i in range(shards)] if shards > 1 else [names]
    size, weight_map = 0, {}
    for k, group in enumerate(groups):
        fname = "model.safetensors" if shards == 1 else f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
        size += _write_safetensors(folder / fname, {n: shapes[n] for n in group}, dtype, fill)
        weight_map.update({n: fname for n in group})
        if progress:
            progress("files", k + 1, len(groups) + 1)
    if shards > 1:
        index = {"metadata": {"total_size": size}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    template = resources.files("lfmq.templates").joinpath("lfm2.5-instruct.jinja").read_text(encoding="utf-8")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    (folder / "tokenizer.json").write_text(json.dumps(build_tokenizer(cfg["vocab_size"], seed), ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config(template), indent=2, ensure_ascii=False))
    (folder / "README.md").write_text(f"# lfmq synthetic checkpoint\n\n{RANDOM_NOTE}.\n")
    if progress:
        progress("files", len(groups) + 1, len(groups) + 1)
    return size
