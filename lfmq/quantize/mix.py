"""A mix: one llama.cpp type per quantizable tensor. Its tensors grouped by LFM2 role (token embedding, shortconv
in_proj / out_proj, attention q / k / v / o, FFN gate / up / down), its exact size, its spelling as llama-quantize's
--tensor-type patterns (one per role, then the layers that differ), and the choice of the least-loss mix under a
byte limit (a multiple-choice knapsack solved exactly on a fine byte grid)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass

import numpy as np

# the ladder a recipe chooses from, cheapest first
TYPES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
# the llama_ftype named after a mix's dominant tensor type (it only names the file type; every tensor is listed)
FTYPE_OF = {"Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K", "Q8_0": "Q8_0"}
NAME = re.compile(r"^(?:blk\.(\d+)\.)?(.+)\.weight$")
ALIGN = 32  # GGUF's default data alignment


def role_of(name: str) -> tuple[int | None, str]:
    """`blk.3.ffn_down.weight` -> (3, "ffn_down"); `token_embd.weight` -> (None, "token_embd")."""
    m = NAME.match(name)
    if not m:
        return None, name
    return (int(m.group(1)) if m.group(1) is not None else None), m.group(2)


def tensor_bytes(shape: tuple[int, ...], type_name: str) -> int:
    """Bytes of a tensor of GGUF-order `shape` in `type_name`, padded to the GGUF alignment."""
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    n = int(shape[0]) // block * size * math.prod(int(d) for d in shape[1:])
    return -(-n // ALIGN) * ALIGN


def fits(shape: tuple[int, ...], type_name: str) -> bool:
    """The quantizer uses `type_name` for this tensor as asked (rows a whole number of blocks), without a fallback."""
    import gguf

    block, _ = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[type_name]]
    return int(shape[0]) % block == 0


@dataclass(frozen=True)
class Layout:
    """What a mix is chosen over: the quantizable tensors' shapes, and the bytes of everything else."""

    shapes: dict[str, tuple[int, ...]]   # quantizable tensors, file order
    fixed_bytes: int                     # norms, the conv kernels and other tensors the quantizer leaves alone
    n_params: int

    def allowed(self, name: str) -> list[str]:
        return [t for t in TYPES if fits(self.shapes[name], t)] or ["F16"]

    def data_bytes(self, mix: dict[str, str]) -> int:
        return self.fixed_bytes + sum(tensor_bytes(self.shapes[n], mix[n]) for n in self.shapes)

    def roles(self) -> dict[str, list[str]]:
        """Role -> its tensors, in file order."""
        out: dict[str, list[str]] = {}
        for name in self.shapes:
            out.setdefault(role_of(name)[1], []).append(name)
        return out


def uniform(layout: Layout, type_name: str) -> dict[str, str]:
    """Every tensor in `type_name` (or the nearest type it fits)."""
    return {n: type_name if fits(s, type_name) else layout.allowed(n)[-1] for n, s in layout.shapes.items()}


def dominant(layout: Layout, mix: dict[str, str]) -> str:
    weight: Counter[str] = Counter()
    for n, t in mix.items():
        weight[t] += tensor_bytes(layout.shapes[n], t)
    return weight.most_common(1)[0][0]


# -- the mix as llama-quantize --tensor-type patterns ------------------------------------------------------------------

def _pattern(role: str, layer: int | None, in_block: bool) -> str:
    """The regex for one tensor (a layer given) or for the role in every block."""
    if not in_block:
        return "^" + re.escape(role) + "\\.weight"
    return (f"^blk\\.{layer}\\." if layer is not None else "\\.") + re.escape(role) + "\\.weight"


def to_patterns(layout: Layout, mix: dict[str, str]) -> list[str]:
    """`REGEX=type` lines that give every tensor its type under llama.cpp's first-match rule: the layers that differ
    from their role's most common type first, then one line per role. Lower case, as llama-quantize reads them."""
    exceptions, defaults = [], []
    for role, names in layout.roles().items():
        in_block = role_of(names[0])[0] is not None
        common = Counter(mix[n] for n in names).most_common(1)[0][0]
        exceptions += [f"{_pattern(role, role_of(n)[0], True)}={mix[n].lower()}" for n in names if mix[n] != common]
        defaults.append(f"{_pattern(role, None, in_block)}={common.lower()}")
    return exceptions + defaults


def apply_patterns(layout: Layout, lines: list[str]) -> dict[str, str]:
    """The type each tensor gets from `lines` under llama.cpp's rule (the first pattern found in the name)."""
    rules = [(re.compile(p), t.upper()) for p, _, t in (line.rpartition("=") for line in lines)]
    out = {}
    for name in layout.shapes:
        out[name] = next((t for rx, t in rules if rx.search(name)), "")
    return out


# -- the least-loss mix under a byte limit -----------------------------------------------------------------------------

def knapsack(costs: list[list[int]], losses: list[list[float]], limit: int, grid: int = 4000) -> list[int] | None:
    """For each group the index of one option, minimising the summed loss with summed cost <= limit; None if even the
    cheapest options exceed it. Costs are rounded up to a grid of limit/grid bytes, so the answer always fits."""
    unit = max(1, -(-limit // grid))
    cap = limit // unit
    inf = float("inf")
    best = np.full(cap + 1, inf)
    best[0] = 0.0
    choice = []
    for cost, loss in zip(costs, losses):
        nxt = np.full(cap + 1, inf)
        pick = np.full(cap + 1, -1, dtype=np.int16)
        for k, (c, l) in enumerate(zip(cost, loss)):
            u = -(-c // unit)
            if u > cap:
                continue
            cand = np.full(cap + 1, inf)
            cand[u:] = best[: cap + 1 - u] + l
            better = cand < nxt
            nxt[better], pick[better] = cand[better], k
        best = nxt
        choice.append(pick)
    end = int(np.argmin(best))
    if not np.isfinite(best[end]):
        return None
    picks = []
    for cost, pick in zip(reversed(costs), reversed(choice)):
        k = int(pick[end])
        picks.append(k)
        end -= -(-cost[k] // unit)
    return picks[::-1]
