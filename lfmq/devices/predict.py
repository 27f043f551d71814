"""Predictions for devices not at hand: decode is memory-bound (bytes read per token against bandwidth), prefill is
compute-bound (2 FLOPs per weight against peak SIMD throughput), each scaled by one efficiency factor per profile,
calibrated on that profile's published figures. Memory is the budget llama.cpp allocates: weights, KV cache of the
attention layers, conv state, compute buffers."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lfmq.devices.profiles import Profile, Published, builtin_profiles
from lfmq.errors import GGUFFileError
from lfmq.meta import ModelMeta, read_meta

from lfmq.devices.calibration import (ASSUMED_QUANT, REFERENCE_BYTES, REFERENCE_PARAMS, builtin_fit,  # noqa: F401
                                      decode_tps, factors, peak_gflops, prefill_tps)
RUNTIME_OVERHEAD_MB = 50.0  # the process before a model loads: Python, numpy, llama.cpp libraries (48.6 MB measured)


@dataclass(frozen=True)
class ModelShape:
    """What a prediction needs to know of a GGUF (derived from lfmq.meta's ModelMeta)."""

    path: Path
    file_bytes: int
    tensor_bytes: int
    bytes_per_token: int   # weights read to decode one token (a tied embedding is read whole, as the LM head)
    params: int
    n_layer: int
    n_attn: int
    n_embd: int
    kv_dim: int            # n_head_kv * head_dim
    n_vocab: int
    l_cache: int
    active_params: int | None = None  # a MoE's parameters per token (prefill compute); None: all of them


def model_shape(path: str | Path) -> ModelShape:
    return shape_of(read_meta(path))


def shape_of(meta: ModelMeta) -> ModelShape:
    """The part of a model's metadata a prediction uses; a file that lacks a dimension cannot be predicted."""
    need = {"embedding_length": meta.n_embd, "head dimension": meta.head_dim, "vocabulary size": meta.n_vocab}
    missing = [name for name, value in need.items() if not value]
    if missing:
        raise GGUFFileError(f"{meta.path} does not state its {', '.join(missing)}: lfmq cannot predict for it")
    return ModelShape(
        path=meta.path, file_bytes=meta.file_bytes, tensor_bytes=meta.tensor_bytes,
        bytes_per_token=meta.bytes_per_token, params=meta.n_params, n_layer=meta.n_layer, n_attn=meta.n_attn,
        n_embd=meta.n_embd, kv_dim=(meta.n_head_kv or 0) * meta.head_dim, n_vocab=meta.n_vocab,
        l_cache=meta.l_cache or 3, active_params=meta.n_params_active or None,
    )


@dataclass(frozen=True)
class MemoryBudget:
    weights_mb: float
    kv_cache_mb: float
    conv_state_mb: float
    compute_mb: float
    overhead_mb: float

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_cache_mb + self.conv_state_mb + self.compute_mb + self.overhead_mb


def memory_budget(m: ModelShape, n_ctx: int, n_ubatch: int, kv_bytes: float = 2.0, use_mmap: bool = False) -> MemoryBudget:
    """What llama.cpp allocates: weights (twice with mmap: mapped pages plus the repacked copy), the KV cache of the
    attention layers only, the conv layers' rolling state, and compute buffers sized for one ubatch."""
    mb = 1024 * 1024
    weights = m.tensor_bytes * (2 if use_mmap else 1)
    kv = m.n_attn * n_ctx * m.kv_dim * 2 * kv_bytes
    conv = (m.n_layer - m.n_attn) * (m.l_cache - 1) * 3 * m.n_embd * 4
    # activations of one ubatch through the widest layer, plus the logits row of the last token
    compute = n_ubatch * (4 * m.n_embd + 3 * m.kv_dim) * 4 * 2 + m.n_vocab * 4 * 2
    return MemoryBudget(weights / mb, kv / mb, conv / mb, compute / mb, RUNTIME_OVERHEAD_MB)


@dataclass(frozen=True)
class Efficiency:
    decode: float | None
    prefill: float | None
    basis: str
    overhead_ms: float = 0.0      # fixed time per decoded token, shared by every device (lfmq.devices.calibration)


def efficiency(p: Profile) -> Efficiency:
    """The factors of a profile from the fit over every built-in profile's published figures (its own figures
    included when it is not built in); a profile without figures takes its architecture's mean."""
    from lfmq.devices.calibration import figures, fit

    if p.calibration:   # measured on the device itself: `lfmq devices calibrate`
        c = p.calibration
        return Efficiency(c.get("decode_efficiency"), c.get("prefill_efficiency"), c.get("basis", "calibrated"),
                          float(c.get("overhead_ms", 0.0)))
    profiles = builtin_profiles()
    f = builtin_fit()
    if p.name not in profiles or profiles[p.name] != p:
        profiles = {**profiles, p.name: p}
        f = fit(figures(profiles.values()), profiles)
    dec, pre, basis = factors(f, profiles, p)
    return Efficiency(dec, pre, basis, f.overhead_s * 1e3)


def calibrate(p: Profile) -> Efficiency:
    """The profile's own factors (None where it has no figure), from the shared fit."""
    f = builtin_fit()
    return Efficiency(f.decode.get(p.name), f.prefill.get(p.name), f.basis.get(p.name, ""), f.overhead_s * 1e3)


@dataclass(frozen=True)
class Prediction:
    """Predicted figures for one model on one profile: labelled as predictions everywhere they are shown."""

    profile: str
    model: str
    decode_tps: float | None
    prefill_tps: float | None
    memory: MemoryBudget
    efficiency: Efficiency
    published: list[Published] = field(default_factory=list)


def predict(p: Profile, m: ModelShape, n_ctx: int | None = None) -> Prediction:
    eff = efficiency(p)
    rt = p.runtime
    decode = decode_tps(p, eff.decode, eff.overhead_ms / 1e3, m.bytes_per_token) if eff.decode and p.bandwidth_gbs else None
    prefill = prefill_tps(p, eff.prefill, m.active_params or m.params) if eff.prefill else None
    budget = memory_budget(m, n_ctx or rt.get("n_ctx", 4096), rt.get("n_ubatch", 512), use_mmap=rt.get("use_mmap", False))
    return Prediction(p.name, m.path.name, decode, prefill, budget, eff, p.published)


def measure_bandwidth(mb: int = 256, repeats: int = 5) -> float:
    """Copy bandwidth of this machine in GB/s (bytes read + written per second, best of a few copies)."""
    src = np.ones(mb * 1024 * 1024 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.nbytes / best / 1e9
