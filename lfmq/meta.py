"""What a GGUF says about its model: `read_meta(path) -> ModelMeta`, the one reader of model facts (architecture,
layer map, dimensions, file type, sizes, bits per weight, bytes a decoded token reads, provenance), built on gguf.Keys.

`read_meta` goes through llama.cpp's own parser (lfmq.llama.gguf_index, milliseconds). `meta_from_reader` reads the
same facts from a gguf.GGUFReader, so that `lfmq inspect` runs without the compiled library. Both end in
`meta_from_fields`, so the two paths cannot disagree."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import gguf

from lfmq.errors import GGUFFileError
from lfmq.llama.gguf_index import MAX_ARRAY, TensorEntry

K = gguf.Keys
EMBEDDING, OUTPUT = "token_embd.weight", "output.weight"


@dataclass(frozen=True)
class ModelMeta:
    """The facts of one GGUF model file. A dimension the file does not state is None."""

    path: Path
    architecture: str
    name: str | None
    file_type: str | None              # gguf.LlamaFileType name: MOSTLY_Q4_K_M, ALL_F32, ...
    layers: tuple[str, ...]            # "conv" or "attention" per block, from the per-layer head_count_kv
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None              # of the attention blocks (the largest entry of the per-layer array)
    head_dim: int | None
    n_ff: int | None
    n_vocab: int | None
    context_length: int | None
    rope_freq_base: float | None
    rms_eps: float | None
    l_cache: int | None                # short-convolution cache length (LFM2)
    file_bytes: int
    tensor_bytes: int
    n_params: int
    bytes_per_token: int               # weights read to decode one token (a tied embedding is read whole as LM head)
    tied: bool                         # no output.weight: the token embedding is the LM head
    chat_template: bool
    synthetic: bool                    # random weights (lfmq synth)
    source: str | None                 # provenance the lfmq converter writes
    source_revision: str | None
    lfmq_version: str | None
    tensor_types: dict[str, int] = field(default_factory=dict)   # tensor type -> count, most frequent first
    n_tensors: int = 0
    expert_count: int | None = None    # MoE only; None for dense models
    expert_used_count: int | None = None
    leading_dense_blocks: int | None = None
    n_ff_expert: int | None = None
    n_params_active: int = 0           # what one token computes with: all but the experts it is not routed to
    recipe_budget: str | None = None   # a mix by `lfmq quantize --recipe auto`: the budget it was searched within

    @property
    def n_layer(self) -> int:
        return len(self.layers)

    @property
    def n_attn(self) -> int:
        return sum(1 for kind in self.layers if kind == "attention")

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.tensor_bytes / max(self.n_params, 1)

    @property
    def type_name(self) -> str | None:
        """The file type as quantization presets spell it: Q4_K_M, Q8_0, F16."""
        return self.file_type.removeprefix("MOSTLY_").removeprefix("ALL_") if self.file_type else None

    @property
    def provenance(self) -> dict[str, str]:
        """lfmq's provenance keys and their values, those the file has."""
        from lfmq.convert.writer import KEY_LFMQ_REVISION, KEY_LFMQ_SOURCE, KEY_LFMQ_VERSION

        pairs = ((KEY_LFMQ_VERSION, self.lfmq_version), (KEY_LFMQ_SOURCE, self.source),
                 (KEY_LFMQ_REVISION, self.source_revision))
        return {k: v for k, v in pairs if v}


def read_meta(path: str | Path) -> ModelMeta:
    """The facts of a GGUF model file, read by llama.cpp's parser; clear errors for a missing or damaged file."""
    from lfmq.llama.gguf_index import tensor_index

    ix = tensor_index(path)
    return meta_from_fields(ix.meta, ix.tensors, path)


def meta_from_reader(reader: gguf.GGUFReader, path: str | Path) -> ModelMeta:
    """The same facts from a gguf.GGUFReader (no compiled library needed). Long arrays (tokens, merges) are skipped."""
    fields = {}
    for key, f in reader.fields.items():
        if key.startswith("GGUF.") or not f.types:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY and len(f.data) > MAX_ARRAY:
            continue
        fields[key] = f.contents()
    tensors = {t.name: TensorEntry(tuple(int(d) for d in t.shape), t.tensor_type.name, int(t.n_bytes))
               for t in reader.tensors}
    return meta_from_fields(fields, tensors, path)


def meta_from_fields(fields: Mapping[str, Any], tensors: Mapping[str, TensorEntry], path: str | Path,
                     file_bytes: int | None = None) -> ModelMeta:
    """ModelMeta from a GGUF's key/value pairs and tensor index, whichever parser read them."""
    from lfmq.convert.writer import (KEY_LFMQ_RECIPE_BUDGET, KEY_LFMQ_REVISION, KEY_LFMQ_SOURCE, KEY_LFMQ_SYNTHETIC,
                                     KEY_LFMQ_VERSION)

    path = Path(path)
    arch = fields.get(K.General.ARCHITECTURE)
    if not arch:
        raise GGUFFileError(f"{path} has no general.architecture: it is not a model file")

    def get(key: str) -> Any:
        return fields.get(key.format(arch=arch))

    layers = _layers(get(K.Attention.HEAD_COUNT_KV), get(K.LLM.BLOCK_COUNT))
    n_embd, n_head, n_head_kv = _int(get(K.LLM.EMBEDDING_LENGTH)), _int(get(K.Attention.HEAD_COUNT)), \
        _int(get(K.Attention.HEAD_COUNT_KV))
    head_dim = _int(get(K.Attention.KEY_LENGTH)) or (n_embd // n_head if n_embd and n_head else None)
    embd = tensors.get(EMBEDDING)
    n_params = sum(math.prod(t.shape) for t in tensors.values())
    expert_count, expert_used = _int(get(K.LLM.EXPERT_COUNT)), _int(get(K.LLM.EXPERT_USED_COUNT))
    return ModelMeta(
        path=path, architecture=arch, name=fields.get(K.General.NAME),
        file_type=_file_type(fields.get(K.General.FILE_TYPE)),
        layers=layers, n_embd=n_embd, n_head=n_head, n_head_kv=n_head_kv if n_head_kv else None, head_dim=head_dim,
        n_ff=_int(get(K.LLM.FEED_FORWARD_LENGTH)),
        n_vocab=_int(get(K.LLM.VOCAB_SIZE)) or (int(embd.shape[1]) if embd and len(embd.shape) > 1 else None),
        context_length=_int(get(K.LLM.CONTEXT_LENGTH)), rope_freq_base=_float(get(K.Rope.FREQ_BASE)),
        rms_eps=_float(get(K.Attention.LAYERNORM_RMS_EPS)), l_cache=_int(get(K.ShortConv.L_CACHE)),
        file_bytes=file_bytes if file_bytes is not None else path.stat().st_size,
        tensor_bytes=sum(t.nbytes for t in tensors.values()), n_params=n_params,
        bytes_per_token=_bytes_per_token(tensors, expert_count, expert_used),
        tied=OUTPUT not in tensors, chat_template=bool(fields.get(K.Tokenizer.CHAT_TEMPLATE)),
        synthetic=bool(fields.get(KEY_LFMQ_SYNTHETIC, False)), source=fields.get(KEY_LFMQ_SOURCE),
        source_revision=fields.get(KEY_LFMQ_REVISION), lfmq_version=fields.get(KEY_LFMQ_VERSION),
        tensor_types=dict(Counter(t.type for t in tensors.values()).most_common()), n_tensors=len(tensors),
        expert_count=expert_count, expert_used_count=expert_used,
        leading_dense_blocks=_int(get(K.LLM.LEADING_DENSE_BLOCK_COUNT)) if expert_count else None,
        n_ff_expert=_int(get(K.LLM.EXPERT_FEED_FORWARD_LENGTH)) if expert_count else None,
        n_params_active=sum(_active(name, math.prod(t.shape), expert_count, expert_used) for name, t in tensors.items()),
        recipe_budget=fields.get(KEY_LFMQ_RECIPE_BUDGET),
    )


def _active(name: str, n: int, expert_count: int | None, expert_used: int | None) -> int:
    """A tensor's parameters one token computes with: a stacked expert tensor counts its routed experts only."""
    return n * expert_used // expert_count if "_exps." in name and expert_count and expert_used else n


def _int(value: Any) -> int | None:
    """A count from a key that may be per layer (an array): the largest entry."""
    if isinstance(value, list):
        value = max(value, default=None)
    return None if value is None else int(value)


def _file_type(value: Any) -> str | None:
    try:
        return gguf.LlamaFileType(value).name if value is not None else None
    except ValueError:  # a file type newer than this gguf package
        return None


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _layers(head_count_kv: Any, block_count: Any) -> tuple[str, ...]:
    # llama.cpp tells LFM2's conv blocks from its attention blocks by a KV head count of 0
    if isinstance(head_count_kv, list):
        return tuple("attention" if n else "conv" for n in head_count_kv)
    return ("attention",) * int(block_count or 0)


def _bytes_per_token(tensors: Mapping[str, TensorEntry], expert_count: int | None, expert_used: int | None) -> int:
    """Weights one decoded token reads: all of them, except the rows of an untied embedding (one row per token)
    and the experts a MoE token does not route to."""
    total = 0
    for name, t in tensors.items():
        if "_exps." in name and expert_count and expert_used:
            total += t.nbytes * expert_used // expert_count
        else:
            total += t.nbytes
    embd = tensors.get(EMBEDDING)
    if embd is not None and OUTPUT in tensors and len(embd.shape) > 1:  # untied: the LM head is read instead
        total += embd.nbytes // embd.shape[1] - embd.nbytes
    return total
