"""PEFT LoRA adapters (adapter_config.json + adapter_model.safetensors), read torch-free and checked against a base.

A LoRA changes a weight W [out, in] into W + s * B @ A with A [r, in], B [out, r] and s = alpha / r (alpha / sqrt(r)
with rslora; `rank_pattern` / `alpha_pattern` override r and alpha per module, matched as peft matches them). lfmq
either merges that into the base while it streams (`convert --lora`) or writes A and B as a GGUF LoRA adapter for
llama.cpp (`convert --lora-out`). Both start here: one clear error for an adapter that does not fit the base."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lfmq.convert.safetensors import SafetensorsReader
from lfmq.convert.tensors import LowRankDelta
from lfmq.errors import CheckpointError, ModelNotFoundError, UnsupportedModelError

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# "base_model.model.model.layers.1.self_attn.q_proj.lora_A.weight" (an adapter name may stand before .weight)
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$")
# modules a LoRA may target that llama.cpp's graph cannot apply one to, and why
_NOT_MATMULS = {
    "conv.conv": "the short-conv kernel is a depthwise convolution, not a matrix product",
    "feed_forward.experts": "LoRA on MoE experts is not supported (llama.cpp applies adapters to plain matrices only)",
    "feed_forward.gate": "LoRA on the MoE router is not supported",
    "embed_tokens": "LoRA on the token embedding is not supported",
}


@dataclass(frozen=True)
class LoraModule:
    """One adapted weight: its base tensor, the adapter's A and B tensors, rank and peft's scaling."""

    weight: str        # base tensor, e.g. model.layers.1.self_attn.q_proj.weight
    a: str             # adapter tensor names
    b: str
    rank: int
    scale: float
    shape: tuple[int, int]  # the [out, in] of the weight the adapter was trained on


@dataclass(frozen=True)
class Adapter:
    """A PEFT LoRA adapter on disk: its settings and modules (tensor headers only, no data read yet)."""

    folder: Path
    config: dict[str, Any]
    modules: tuple[LoraModule, ...]

    @property
    def base_name(self) -> str | None:
        return self.config.get("base_model_name_or_path") or None

    @property
    def dtype(self) -> str:
        with SafetensorsReader([self.folder / WEIGHTS]) as r:
            return r.refs[self.modules[0].a].dtype

    def deltas(self, reader: SafetensorsReader) -> dict[str, LowRankDelta]:
        """Base tensor name -> the low-rank update to add to it, in float32 (A and B are small: rank x width)."""
        return {m.weight: LowRankDelta(reader.float32(m.a), reader.float32(m.b), m.scale) for m in self.modules}


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / CONFIG).is_file()


def load_adapter(folder: str | Path) -> Adapter:
    """Read and check a PEFT LoRA adapter folder: plain LoRA only, every A paired with a B of the configured rank."""
    folder = Path(folder).expanduser()
    if not (folder / CONFIG).is_file():
        raise ModelNotFoundError(f"{folder} has no {CONFIG}: pass the folder a PEFT LoRA adapter was saved to")
    try:
        cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{folder / CONFIG} is not valid JSON ({e})") from None
    _check_kind(cfg)
    if not (folder / WEIGHTS).is_file():
        other = " (lfmq reads safetensors, not adapter_model.bin)" if (folder / "adapter_model.bin").exists() else ""
        raise ModelNotFoundError(f"{folder} has no {WEIGHTS}{other}")
    with SafetensorsReader([folder / WEIGHTS]) as reader:
        pairs = _pairs(reader)
        modules = tuple(_module(cfg, name, a, b, reader) for name, (a, b) in sorted(pairs.items(), key=_layer_order))
    if not modules:
        raise CheckpointError(f"{folder / WEIGHTS} holds no LoRA matrices")
    return Adapter(folder.resolve(), cfg, modules)


def _check_kind(cfg: dict[str, Any]) -> None:
    kind = cfg.get("peft_type", "LORA")
    if kind != "LORA":
        raise UnsupportedModelError(f"{CONFIG} is a {kind} adapter: lfmq converts LoRA adapters only")
    for key, what in (("use_dora", "DoRA"), ("lora_bias", "LoRA biases"), ("fan_in_fan_out", "fan_in_fan_out layouts")):
        if cfg.get(key):
            raise UnsupportedModelError(f"{CONFIG} sets {key}: {what} are not supported, only plain LoRA")
    if cfg.get("bias", "none") != "none":
        raise UnsupportedModelError(f"{CONFIG} trains biases (bias: {cfg['bias']!r}): llama.cpp's LFM2 graph has none")
    if cfg.get("modules_to_save") or cfg.get("trainable_token_indices"):
        raise UnsupportedModelError(f"{CONFIG} also trains whole modules or tokens (modules_to_save / "
                                    "trainable_token_indices): lfmq converts plain LoRA adapters only")


def _pairs(reader: SafetensorsReader) -> dict[str, tuple[str, str]]:
    found: dict[str, dict[str, str]] = {}
    for name in reader.refs:
        if name.endswith(".base_layer.weight"):
            continue  # peft saves the base's own head or embedding next to their LoRA: a copy, not a change
        m = _KEY.match(name)
        if m is None:
            raise UnsupportedModelError(f"{WEIGHTS} holds {name}, which is not a LoRA A or B matrix: lfmq converts "
                                        "plain LoRA adapters only")
        found.setdefault(m["module"], {})[m["ab"]] = name
    for module, ab in found.items():
        if len(ab) != 2:
            missing = "B" if "A" in ab else "A"
            raise CheckpointError(f"{WEIGHTS} has no lora_{missing} for {module}: the adapter file is incomplete")
    return {module: (ab["A"], ab["B"]) for module, ab in found.items()}


def _layer_order(item: tuple[str, Any]) -> tuple[int, str]:
    m = re.search(r"\.layers\.(\d+)\.", item[0])
    return (int(m[1]) if m else -1, item[0])


def _pattern(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """peft's rank_pattern / alpha_pattern lookup: the first key that matches the end of the module's name."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def _module(cfg: dict[str, Any], module: str, a: str, b: str, reader: SafetensorsReader) -> LoraModule:
    for part, why in _NOT_MATMULS.items():
        if f".{part}" in f".{module}":
            raise UnsupportedModelError(f"the adapter changes {module}: {why}")
    sa, sb = reader.refs[a].shape, reader.refs[b].shape
    if len(sa) != 2 or len(sb) != 2:
        raise UnsupportedModelError(f"{WEIGHTS}: {module} is not a linear layer's LoRA (A {list(sa)}, B {list(sb)})")
    rank = _pattern(cfg.get("rank_pattern") or {}, module, cfg.get("r"))
    if rank is None:
        raise CheckpointError(f"{CONFIG} has no 'r' (the LoRA rank)")
    if sa[0] != sb[1] or sa[0] != int(rank):
        raise CheckpointError(f"rank mismatch: {module} has lora_A {list(sa)} and lora_B {list(sb)}, but {CONFIG} "
                              f"gives it rank {rank}: the adapter files do not belong together")
    alpha = float(_pattern(cfg.get("alpha_pattern") or {}, module, cfg.get("lora_alpha", 8)))
    scale = alpha / math.sqrt(rank) if cfg.get("use_rslora") else alpha / rank
    return LoraModule(module + ".weight", a, b, int(rank), scale, (sb[0], sa[1]))


def check_base(adapter: Adapter, arch_name: str, shapes: dict[str, tuple[int, ...]], n_ff_choices: tuple[int, ...] = (),
               tied: bool = True) -> None:
    """Every adapted module must be a matrix of the base with the shape the adapter was trained on."""
    known = f" (adapter_config.json names {adapter.base_name})" if adapter.base_name else ""
    for m in adapter.modules:
        module = m.weight.removesuffix(".weight")
        if module == "lm_head" and tied:
            raise UnsupportedModelError("the adapter changes lm_head, but the base ties it to the token embedding: "
                                        "llama.cpp has no separate head to apply it to")
        want = shapes.get(m.weight)
        if want is None:
            raise CheckpointError(f"the adapter changes {module}, which the base {arch_name} does not have{_kind(module)}: "
                                  f"is the base the model the adapter was trained on{known}?")
        if tuple(want) != m.shape and not _ffn_width_only(m, want, n_ff_choices):
            raise CheckpointError(f"the adapter was trained on another base model{known}: its {module} is "
                                  f"{m.shape[0]} x {m.shape[1]}, the base's is {want[0]} x {want[1]}")


def _kind(module: str) -> str:
    m = re.search(r"\.layers\.(\d+)\.(self_attn|conv)\.", module)
    if m is None:
        return ""
    other = "a conv block" if m[2] == "self_attn" else "an attention block"
    return f" (its layer {m[1]} is {other})"


def _ffn_width_only(m: LoraModule, want: tuple[int, ...], n_ff_choices: tuple[int, ...]) -> bool:
    """The base's FFN width is only known from its tensors when the config allows two; either is fine here."""
    if not m.weight.endswith(("feed_forward.w1.weight", "feed_forward.w3.weight", "feed_forward.w2.weight")):
        return False
    return {m.shape[0], m.shape[1]} - set(want) <= set(n_ff_choices)


def uniform_alpha(adapter: Adapter) -> float:
    """The one `adapter.lora.alpha` llama.cpp scales every module with (alpha / rank, rank from each B): it exists
    when s * r is the same for all modules, which covers plain LoRA, rslora and rank_pattern alike."""
    values = {m.weight: m.scale * m.rank for m in adapter.modules}
    first = next(iter(values.values()))
    odd = [w for w, v in values.items() if not math.isclose(v, first, rel_tol=1e-6)]
    if odd:
        raise UnsupportedModelError(
            f"the adapter scales {odd[0].removesuffix('.weight')} differently from the rest (alpha_pattern, or rslora "
            "with rank_pattern), which one GGUF adapter alpha cannot express: merge it into the base instead "
            "(lfmq convert BASE --lora ADAPTER)")
    return first


def base_warnings(adapter: Adapter, base: Any) -> tuple[str, ...]:
    """A note when adapter_config.json names a base other than the one given (same shapes: it may be intended)."""
    named = adapter.base_name
    given = base.repo_id or base.folder.name
    if not named or Path(named).name.lower() == Path(given).name.lower():
        return ()
    return (f"adapter_config.json says the adapter was trained on {named}, and it is applied to {given}: the shapes "
            "fit, but check that this is the base you mean",)
