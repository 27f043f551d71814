"""`lfmq inspect`: what a GGUF holds: architecture, layer map, hparams, tensor types, size, tokenizer, template."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gguf

from lfmq.errors import GGUFFileError, ModelNotFoundError

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


def _hparams(reader: gguf.GGUFReader, arch: str) -> dict[str, Any]:
    keys = {
        "context_length": K.LLM.CONTEXT_LENGTH, "embedding_length": K.LLM.EMBEDDING_LENGTH,
        "feed_forward_length": K.LLM.FEED_FORWARD_LENGTH, "block_count": K.LLM.BLOCK_COUNT,
        "vocab_size": K.LLM.VOCAB_SIZE, "head_count": K.Attention.HEAD_COUNT,
        "rms_epsilon": K.Attention.LAYERNORM_RMS_EPS, "rope_freq_base": K.Rope.FREQ_BASE,
        "shortconv_l_cache": K.ShortConv.L_CACHE,
    }
    out = {name: field_value(reader, key.format(arch=arch)) for name, key in keys.items()}
    kv = field_value(reader, K.Attention.HEAD_COUNT_KV.format(arch=arch))
    out["head_count_kv"] = max(kv) if isinstance(kv, list) else kv
    return {k: v for k, v in out.items() if v is not None}


def _layers(reader: gguf.GGUFReader, arch: str, n_layer: int) -> list[str]:
    kv = field_value(reader, K.Attention.HEAD_COUNT_KV.format(arch=arch))
    if isinstance(kv, list):
        return ["attention" if n else "conv" for n in kv]
    return ["attention"] * n_layer


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
    """Summarise a GGUF model file."""
    path = Path(path)
    reader = open_gguf(path)
    arch = field_value(reader, K.General.ARCHITECTURE)
    if not arch:
        raise GGUFFileError(f"{path} has no general.architecture: it is not a model file")
    n_params = sum(int(t.n_elements) for t in reader.tensors)
    hp = _hparams(reader, arch)
    ftype = field_value(reader, K.General.FILE_TYPE)
    from lfmq.convert.writer import KEY_LFMQ_REVISION, KEY_LFMQ_SOURCE, KEY_LFMQ_SYNTHETIC, KEY_LFMQ_VERSION

    prov = {k: field_value(reader, k) for k in (KEY_LFMQ_VERSION, KEY_LFMQ_SOURCE, KEY_LFMQ_REVISION)}
    size = path.stat().st_size
    return GGUFInfo(
        path=path.resolve(),
        architecture=arch,
        name=field_value(reader, K.General.NAME),
        file_type=gguf.LlamaFileType(ftype).name if ftype is not None and ftype in gguf.LlamaFileType._value2member_map_ else None,
        layers=_layers(reader, arch, int(hp.get("block_count", 0))),
        hparams=hp,
        tensors=len(reader.tensors),
        parameters=n_params,
        types=dict(Counter(t.tensor_type.name for t in reader.tensors).most_common()),
        bytes=size,
        bits_per_weight=8 * sum(int(t.n_bytes) for t in reader.tensors) / max(n_params, 1),
        tokenizer=_tokenizer(reader),
        chat_template=bool(field_value(reader, K.Tokenizer.CHAT_TEMPLATE)),
        synthetic=bool(field_value(reader, KEY_LFMQ_SYNTHETIC, False)),
        provenance={k: v for k, v in prov.items() if v},
    )
