"""`lfmq inspect`: what a GGUF holds: the model facts of lfmq.meta (architecture, layer map, hparams, tensor types,
size, provenance) plus the tokenizer, read with gguf.GGUFReader so that it runs without the compiled library."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from lfmq.errors import GGUFFileError, ModelNotFoundError
from lfmq.meta import ModelMeta, meta_from_reader

K = gguf.Keys
GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class GGUFInfo:
    """A summary of one GGUF file."""

    path: Path
    architecture: str
    name: str | None
    file_type: str | None
    layers: list[str]                       # "conv" / "attention" per block, from head_count_kv
    hparams: dict[str, Any]
    tensors: int
    parameters: int
    types: dict[str, int]                   # tensor type -> count
    bytes: int
    bits_per_weight: float
    tokenizer: dict[str, Any]
    chat_template: bool
    synthetic: bool
    provenance: dict[str, str] = field(default_factory=dict)
    adapter: dict[str, Any] = field(default_factory=dict)  # a LoRA merged into the weights, or this file's LoRA


def open_gguf(path: str | Path) -> gguf.GGUFReader:
    """Open a GGUF for reading, with one clear error for a missing, foreign, truncated or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise GGUFFileError(f"{path} is not a GGUF file (it does not start with 'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader fails in many ways on damaged files; all mean the same to the user
        raise GGUFFileError(f"{path} is truncated or corrupt ({type(e).__name__}): re-create or re-download it") from None
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise GGUFFileError(f"{path} is truncated (tensor {t.name} ends past the end of the file): re-create it")
    return reader


def field_value(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    if f is None or not f.types:
        return default
    return f.contents()


def _hparams(meta: ModelMeta) -> dict[str, Any]:
    """The hyperparameters the file states, under the names `lfmq inspect` has always printed."""
    out = {
        "context_length": meta.context_length, "embedding_length": meta.n_embd, "feed_forward_length": meta.n_ff,
        "block_count": meta.n_layer or None, "vocab_size": meta.n_vocab, "head_count": meta.n_head,
        "rms_epsilon": meta.rms_eps, "rope_freq_base": meta.rope_freq_base, "shortconv_l_cache": meta.l_cache,
        "head_count_kv": meta.n_head_kv,
        "expert_count": meta.expert_count, "expert_used_count": meta.expert_used_count,
        "expert_feed_forward_length": meta.n_ff_expert, "leading_dense_block_count": meta.leading_dense_blocks,
    }
    return {k: v for k, v in out.items() if v is not None}


def _adapter(reader: gguf.GGUFReader) -> dict[str, Any]:
    """A GGUF LoRA adapter's facts (alpha, matrices, ranks, the base lfmq checked it against), or the adapter merged
    into a model's weights."""
    from lfmq.convert.writer import KEY_LFMQ_LORA, KEY_LFMQ_LORA_BASE

    if field_value(reader, K.General.TYPE) != "adapter":
        merged = field_value(reader, KEY_LFMQ_LORA)
        return {"merged": merged} if merged else {}
    b = [t for t in reader.tensors if t.name.endswith(".lora_b")]
    return {"type": field_value(reader, K.Adapter.TYPE), "alpha": field_value(reader, K.Adapter.LORA_ALPHA),
            "matrices": len(b), "ranks": sorted({int(t.shape[0]) for t in b}),
            "base": field_value(reader, KEY_LFMQ_LORA_BASE)}


def _tokenizer(reader: gguf.GGUFReader) -> dict[str, Any]:
    tok = reader.fields.get(K.Tokenizer.LIST)
    merges = reader.fields.get(K.Tokenizer.MERGES)
    info = {
        "model": field_value(reader, K.Tokenizer.MODEL),
        "pre": field_value(reader, K.Tokenizer.PRE),
        "tokens": len(tok.data) if tok else 0,
        "merges": len(merges.data) if merges else 0,
        "bos_id": field_value(reader, K.Tokenizer.BOS_ID),
        "eos_id": field_value(reader, K.Tokenizer.EOS_ID),
        "pad_id": field_value(reader, K.Tokenizer.PAD_ID),
        "add_bos": field_value(reader, K.Tokenizer.ADD_BOS),
        "add_eos": field_value(reader, K.Tokenizer.ADD_EOS),
    }
    types = reader.fields.get(K.Tokenizer.TOKEN_TYPE)
    if types:
        info["control_tokens"] = sum(int(types.parts[i][0]) == gguf.TokenType.CONTROL for i in types.data)
    return info


def inspect(path: str | Path) -> GGUFInfo:
    """Summarise a GGUF model file: its ModelMeta plus the vocabulary, read without the compiled library."""
    path = Path(path)
    reader = open_gguf(path)
    meta = meta_from_reader(reader, path)
    return GGUFInfo(
        path=path.resolve(),
        architecture=meta.architecture,
        name=meta.name,
        file_type=meta.file_type,
        layers=list(meta.layers),
        hparams=_hparams(meta),
        tensors=meta.n_tensors,
        parameters=meta.n_params,
        types=meta.tensor_types,
        bytes=meta.file_bytes,
        bits_per_weight=meta.bits_per_weight,
        tokenizer=_tokenizer(reader),
        chat_template=meta.chat_template,
        synthetic=meta.synthetic,
        provenance=meta.provenance,
        adapter=_adapter(reader),
    )
