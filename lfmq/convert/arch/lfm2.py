"""LFM2 / LFM2.5 dense (`Lfm2ForCausalLM`): config dialects, hyperparameters and GGUF metadata."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gguf

from lfmq.errors import CheckpointError, UnsupportedModelError

MODEL_TYPE = "lfm2"
ARCHITECTURES = ("Lfm2ForCausalLM", "LFM2ForCausalLM")
GGUF_ARCH = gguf.MODEL_ARCH.LFM2
# architectures that look related but are not this graph: say what they are instead of a generic refusal
SIBLINGS = {
    "Lfm2VlForConditionalGeneration": "LFM2-VL is a vision-language model; lfmq converts the text models only",
    "Lfm2AudioForConditionalGeneration": "LFM2-Audio is an audio model; lfmq converts the text models only",
}
UNTIED_HEAD_REFUSAL: str | None = None  # an untied lm_head becomes output.weight


@dataclass(frozen=True)
class Hparams:
    """The hyperparameters of one LFM2 checkpoint, normalised across config dialects."""

    n_layer: int
    n_embd: int
    n_ff: int                       # the effective FFN width, the real weight shape
    n_ff_candidates: tuple[int, ...]  # widths the config allows (transformers' and llama.cpp's rounding)
    n_head: int
    n_head_kv: int
    head_dim: int
    attn_layers: tuple[int, ...]
    n_vocab: int
    n_ctx_train: int
    rope_theta: float
    norm_eps: float
    l_cache: int
    tied: bool | None               # None: the config does not say; the tensors decide
    dtype: str | None

    def is_attention(self, layer: int) -> bool:
        return layer in self.attn_layers

    @property
    def dense_ffn_layers(self) -> range:
        return range(self.n_layer)

    @property
    def head_count_kv_per_layer(self) -> list[int]:
        # llama.cpp tells conv blocks from attention blocks by a KV head count of 0
        return [self.n_head_kv if self.is_attention(i) else 0 for i in range(self.n_layer)]


def _require(cfg: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if cfg.get(key) is not None:
            return cfg[key]
    raise CheckpointError(f"config.json has no {' or '.join(repr(k) for k in keys)}: is this a complete LFM2 config?")


def ffn_widths(cfg: dict[str, Any]) -> tuple[int, ...]:
    """The FFN widths the config allows, first the one transformers computes, then llama.cpp's if different."""
    ff = int(_require(cfg, "block_ff_dim", "intermediate_size"))
    if not cfg.get("block_auto_adjust_ff_dim", True):
        return (ff,)
    mult = cfg.get("block_ffn_dim_multiplier", 1.0)
    multiple_of = int(cfg.get("block_multiple_of", 256))
    ff = int(2 * ff / 3)
    if mult is not None:
        ff = int(mult * ff)
    rounded = multiple_of * ((ff + multiple_of - 1) // multiple_of)
    # transformers rounds only when a multiplier is set; llama.cpp always rounds
    return (rounded,) if mult is not None or rounded == ff else (ff, rounded)


def attention_layers(cfg: dict[str, Any], n_layer: int) -> tuple[int, ...]:
    """Layer indices of the attention blocks, from `layer_types` or the older `full_attn_idxs`."""
    if cfg.get("layer_types") is not None:
        kinds = list(cfg["layer_types"])
        if len(kinds) != n_layer:
            raise CheckpointError(f"config.json lists {len(kinds)} layer_types for {n_layer} layers")
        unknown = sorted({k for k in kinds if k not in ("conv", "full_attention")})
        if unknown:
            raise UnsupportedModelError(f"unknown LFM2 layer type(s) {unknown}: lfmq knows 'conv' and 'full_attention'")
        return tuple(i for i, k in enumerate(kinds) if k == "full_attention")
    if cfg.get("full_attn_idxs") is not None:
        idxs = sorted(int(i) for i in cfg["full_attn_idxs"])
        if any(i < 0 or i >= n_layer for i in idxs):
            raise CheckpointError(f"config.json full_attn_idxs {idxs} is out of range for {n_layer} layers")
        return tuple(idxs)
    raise CheckpointError("config.json has neither 'layer_types' nor 'full_attn_idxs': cannot tell conv from attention blocks")


def rope_theta(cfg: dict[str, Any]) -> float:
    """Rope base from the top level (LFM2), `rope_parameters` (transformers 5) or per layer type."""
    if cfg.get("rope_theta") is not None:
        return float(cfg["rope_theta"])
    params = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if params.get("rope_theta") is not None:
        return float(params["rope_theta"])
    per_type = params.get("full_attention") or {}
    if isinstance(per_type, dict) and per_type.get("rope_theta") is not None:
        return float(per_type["rope_theta"])
    return 1_000_000.0  # transformers' Lfm2Config default


def _check_supported(cfg: dict[str, Any]) -> None:
    if cfg.get("conv_bias"):
        raise UnsupportedModelError(
            "config.json sets conv_bias: true, but llama.cpp's lfm2 graph has no conv biases; "
            "converting would silently drop them, so lfmq refuses this checkpoint"
        )
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if isinstance(rope, dict) and isinstance(rope.get("full_attention"), dict):
        rope = rope["full_attention"]
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise UnsupportedModelError(f"rope scaling {rope_type!r} is not supported by lfmq's LFM2 converter yet")


def parse_hparams(cfg: dict[str, Any]) -> Hparams:
    """Normalise an LFM2 config.json (any published dialect) into Hparams, refusing what llama.cpp cannot run."""
    _check_supported(cfg)
    n_layer = int(_require(cfg, "num_hidden_layers"))
    n_embd = int(_require(cfg, "hidden_size"))
    n_head = int(_require(cfg, "num_attention_heads"))
    n_head_kv = int(cfg.get("num_key_value_heads") or n_head)
    if n_embd % n_head or n_head % n_head_kv:
        raise CheckpointError(
            f"config.json heads do not divide: hidden_size {n_embd}, {n_head} heads, {n_head_kv} KV heads"
        )
    widths = ffn_widths(cfg)
    tied = cfg.get("tie_word_embeddings", cfg.get("tie_embedding"))
    return Hparams(
        n_layer=n_layer,
        n_embd=n_embd,
        n_ff=widths[0],
        n_ff_candidates=widths,
        n_head=n_head,
        n_head_kv=n_head_kv,
        head_dim=n_embd // n_head,
        attn_layers=attention_layers(cfg, n_layer),
        n_vocab=int(_require(cfg, "vocab_size")),
        n_ctx_train=int(cfg.get("max_position_embeddings") or 128_000),
        rope_theta=rope_theta(cfg),
        norm_eps=float(cfg.get("norm_eps", cfg.get("rms_norm_eps", 1e-5))),
        l_cache=int(cfg.get("conv_L_cache", 3)),
        tied=None if tied is None else bool(tied),
        dtype=cfg.get("dtype") or cfg.get("torch_dtype"),
    )


def expected_shapes(hp: Hparams, n_ff: int) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name this architecture needs, with its torch-order shape (lm_head excluded)."""
    e, q, kv = hp.n_embd, hp.n_head * hp.head_dim, hp.n_head_kv * hp.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (hp.n_vocab, e),
        "model.embedding_norm.weight": (e,),
    }
    for i in range(hp.n_layer):
        p = f"model.layers.{i}."
        shapes[p + "operator_norm.weight"] = (e,)
        shapes[p + "ffn_norm.weight"] = (e,)
        shapes[p + "feed_forward.w1.weight"] = (n_ff, e)
        shapes[p + "feed_forward.w3.weight"] = (n_ff, e)
        shapes[p + "feed_forward.w2.weight"] = (e, n_ff)
        if hp.is_attention(i):
            shapes[p + "self_attn.q_proj.weight"] = (q, e)
            shapes[p + "self_attn.k_proj.weight"] = (kv, e)
            shapes[p + "self_attn.v_proj.weight"] = (kv, e)
            shapes[p + "self_attn.out_proj.weight"] = (e, q)
            shapes[p + "self_attn.q_layernorm.weight"] = (hp.head_dim,)
            shapes[p + "self_attn.k_layernorm.weight"] = (hp.head_dim,)
        else:
            shapes[p + "conv.in_proj.weight"] = (3 * e, e)
            shapes[p + "conv.conv.weight"] = (e, 1, hp.l_cache)
            shapes[p + "conv.out_proj.weight"] = (e, e)
    return shapes


def stacked(hp: Hparams) -> dict[str, tuple[str, ...]]:
    """GGUF tensors built from several checkpoint tensors: none in the dense model."""
    return {}


def active_parameters(hp: Hparams, n_ff: int) -> int:
    """Parameters one token computes with: all of them in a dense model."""
    return sum(math.prod(s) for s in expected_shapes(hp, n_ff).values())


def write_hparams(writer: gguf.GGUFWriter, hp: Hparams, n_ff: int) -> None:
    """The lfm2.* keys llama.cpp's loader reads (see the facts file, section 3)."""
    writer.add_block_count(hp.n_layer)
    writer.add_context_length(hp.n_ctx_train)
    writer.add_embedding_length(hp.n_embd)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(hp.n_head)
    writer.add_head_count_kv(hp.head_count_kv_per_layer)
    writer.add_rope_freq_base(hp.rope_theta)
    writer.add_layer_norm_rms_eps(hp.norm_eps)
    writer.add_shortconv_l_cache(hp.l_cache)
    writer.add_vocab_size(hp.n_vocab)
