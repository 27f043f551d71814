"""LFM2 MoE (`Lfm2MoeForCausalLM`, LFM2-8B-A1B / LFM2.5-8B-A1B / LFM2-24B-A2B): config, hyperparameters, GGUF metadata.

The backbone is LFM2's (short-conv and GQA blocks, the same tensors); the first `num_dense_layers` blocks keep a dense
FFN, every later one has a sigmoid-gated top-k MoE whose experts are stacked per layer into one 3-D GGUF tensor."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import gguf

from lfmq.convert.arch import lfm2
from lfmq.errors import CheckpointError, UnsupportedModelError

MODEL_TYPE = "lfm2_moe"
ARCHITECTURES = ("Lfm2MoeForCausalLM",)
GGUF_ARCH = gguf.MODEL_ARCH.LFM2MOE
SIBLINGS: dict[str, str] = {}
UNTIED_HEAD_REFUSAL = ("the checkpoint has its own lm_head.weight (untied), but llama.cpp's lfm2moe graph has no separate "
                       "output head; converting would give a file that loads and computes something else, so lfmq "
                       "refuses this checkpoint")
EXPERT_WEIGHTS = ("w1", "w2", "w3")  # gate, down, up: one stacked GGUF tensor each

# what llama.cpp's lfm2moe graph computes; a checkpoint that differs would load and give other logits
_GRAPH = "llama.cpp's lfm2moe graph"
_REFUSE = "converting would give a file that loads and computes something else, so lfmq refuses this checkpoint"


@dataclass(frozen=True)
class Hparams(lfm2.Hparams):
    """LFM2's hyperparameters plus the mixture of experts."""

    n_expert: int = 0
    n_expert_used: int = 0
    n_ff_exp: int = 0
    n_dense: int = 0                # leading blocks with a dense FFN of n_ff

    def is_moe(self, layer: int) -> bool:
        return layer >= self.n_dense

    @property
    def dense_ffn_layers(self) -> range:
        return range(min(self.n_dense, self.n_layer))


def _check_supported(cfg: dict[str, Any]) -> None:
    if cfg.get("norm_topk_prob", True) is not True:
        raise UnsupportedModelError(
            f"config.json sets norm_topk_prob: false, but {_GRAPH} always renormalises the top-k expert weights; {_REFUSE}")
    scale = cfg.get("routed_scaling_factor", 1.0)
    if scale is not None and float(scale) != 1.0:
        raise UnsupportedModelError(
            f"config.json sets routed_scaling_factor: {scale}, but {_GRAPH} applies no routed scaling factor; {_REFUSE}")
    if cfg.get("use_expert_bias", True) is not True:
        raise UnsupportedModelError(
            f"config.json sets use_expert_bias: false, but {_GRAPH} requires the expert bias (exp_probs_b); {_REFUSE}")
    tied = cfg.get("tie_word_embeddings", cfg.get("tie_embedding"))
    if tied is False:
        raise UnsupportedModelError(
            f"config.json unties the LM head (tie_word_embeddings: false), but {_GRAPH} has no separate output head; "
            f"{_REFUSE}")


def parse_hparams(cfg: dict[str, Any]) -> Hparams:
    """Normalise an LFM2 MoE config.json into Hparams, refusing what llama.cpp's lfm2moe graph would compute differently."""
    _check_supported(cfg)
    # the dense FFN width is `intermediate_size` as is: Lfm2MoeConfig has no block_* adjustment
    dense = {**cfg, "block_auto_adjust_ff_dim": False, "block_ff_dim": None}
    base = lfm2.parse_hparams(dense)
    n_expert = int(lfm2._require(cfg, "num_experts", "num_local_experts"))
    n_used = int(lfm2._require(cfg, "num_experts_per_tok"))
    n_dense = int(cfg.get("num_dense_layers", 2))  # transformers' Lfm2MoeConfig default
    if not 0 < n_used <= n_expert:
        raise CheckpointError(f"config.json routes each token to {n_used} of {n_expert} experts: that cannot be")
    if not 0 <= n_dense <= base.n_layer:
        raise CheckpointError(f"config.json has num_dense_layers {n_dense} for {base.n_layer} layers")
    fields = {f: getattr(base, f) for f in lfm2.Hparams.__dataclass_fields__}
    return Hparams(**fields, n_expert=n_expert, n_expert_used=n_used,
                   n_ff_exp=int(lfm2._require(cfg, "moe_intermediate_size")), n_dense=n_dense)


def expert_name(layer: int, expert: int, weight: str) -> str:
    return f"model.layers.{layer}.feed_forward.experts.{expert}.{weight}.weight"


def stacked(hp: Hparams) -> dict[str, tuple[str, ...]]:
    """GGUF tensors built from several checkpoint tensors: each MoE layer's experts, stacked along a new first axis.
    Keys are the merged names llama.cpp's tensor map knows (`layers.N.feed_forward.experts.w1.weight`)."""
    return {
        f"layers.{i}.feed_forward.experts.{w}.weight": tuple(expert_name(i, x, w) for x in range(hp.n_expert))
        for i in range(hp.n_layer) if hp.is_moe(i) for w in EXPERT_WEIGHTS
    }


def expected_shapes(hp: Hparams, n_ff: int) -> dict[str, tuple[int, ...]]:
    """Every HF tensor name this architecture needs (each expert's own), with its torch-order shape (lm_head excluded)."""
    shapes = lfm2.expected_shapes(hp, n_ff)
    e, f = hp.n_embd, hp.n_ff_exp
    for i in range(hp.n_layer):
        if not hp.is_moe(i):
            continue
        p = f"model.layers.{i}.feed_forward."
        for w in EXPERT_WEIGHTS:
            del shapes[p + f"{w}.weight"]
        shapes[p + "gate.weight"] = (hp.n_expert, e)   # the router
        shapes[p + "expert_bias"] = (hp.n_expert,)
        for x in range(hp.n_expert):
            shapes[expert_name(i, x, "w1")] = (f, e)
            shapes[expert_name(i, x, "w3")] = (f, e)
            shapes[expert_name(i, x, "w2")] = (e, f)
    return shapes


def active_parameters(hp: Hparams, n_ff: int) -> int:
    """Parameters one token computes with: everything but the experts it is not routed to."""
    total = sum(math.prod(s) for s in expected_shapes(hp, n_ff).values())
    idle = hp.n_expert - hp.n_expert_used
    per_expert = 3 * hp.n_embd * hp.n_ff_exp
    return total - idle * per_expert * sum(1 for i in range(hp.n_layer) if hp.is_moe(i))


def write_hparams(writer: gguf.GGUFWriter, hp: Hparams, n_ff: int) -> None:
    """The lfm2moe.* keys llama.cpp's loader reads: LFM2's plus the experts (see the facts file, section 8)."""
    lfm2.write_hparams(writer, hp, n_ff)
    writer.add_expert_count(hp.n_expert)
    writer.add_expert_used_count(hp.n_expert_used)
    writer.add_expert_feed_forward_length(hp.n_ff_exp)
    writer.add_leading_dense_block_count(hp.n_dense)
    writer.add_expert_gating_func(gguf.ExpertGatingFuncType.SIGMOID)
