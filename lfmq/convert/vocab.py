"""tokenizer.json -> GGUF tokenizer metadata (byte-level BPE, `lfm2` pre-tokenizer) and the chat template."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gguf

from lfmq.errors import CheckpointError, UnsupportedModelError

# The split LFM2 tokenizers run before byte-level BPE; llama.cpp's `lfm2` pre-tokenizer implements exactly this
# (it is the Llama-3 expression, also accepted in llama.cpp's case-expanded spelling).
LFM2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LFM2_SPLIT_EXPANDED = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER = "lfm2"
TOKENIZER_MODEL = "gpt2"


@dataclass(frozen=True)
class Vocab:
    """Everything the GGUF tokenizer section needs."""

    tokens: list[str]
    types: list[int]
    special: gguf.SpecialVocab  # merges, bos/eos/pad ids, add_bos/add_eos, chat template

    @property
    def n_control(self) -> int:
        return sum(t == gguf.TokenType.CONTROL for t in self.types)


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.name} is missing from {path.parent}: the tokenizer cannot be converted without it") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path.name} is not valid JSON ({e}): re-download it") from None


def _splits(node: dict | None) -> list[dict]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [p for sub in node.get("pretokenizers", []) for p in _splits(sub)]
    return [node]


def check_pre_tokenizer(tok: dict) -> None:
    """Refuse a tokenizer whose pre-tokenization llama.cpp's `lfm2` mode would not reproduce."""
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise UnsupportedModelError(f"tokenizer.json model is {model.get('type')!r}; LFM2 uses byte-level BPE")
    if tok.get("normalizer"):
        raise UnsupportedModelError("tokenizer.json has a normalizer; LFM2's tokenizer has none and llama.cpp would not apply it")
    parts = _splits(tok.get("pre_tokenizer"))
    regexes = [(p.get("pattern") or {}).get("Regex") for p in parts if p.get("type") == "Split"]
    byte_level = [p for p in parts if p.get("type") == "ByteLevel"]
    if regexes != [LFM2_SPLIT] and regexes != [LFM2_SPLIT_EXPANDED]:
        raise UnsupportedModelError(
            "tokenizer.json pre-tokenizer is not LFM2's split (expected one Split with the Llama-3 expression); "
            "llama.cpp's lfm2 tokenizer would segment text differently"
        )
    if len(byte_level) != 1 or byte_level[0].get("use_regex", True) or byte_level[0].get("add_prefix_space", False):
        raise UnsupportedModelError(
            "tokenizer.json pre-tokenizer lacks LFM2's ByteLevel step (use_regex false, no prefix space)"
        )


def token_table(tok: dict, n_vocab: int) -> tuple[list[str], list[int]]:
    """Token strings and types for ids 0..n_vocab-1; every special added token is CONTROL."""
    vocab: dict[str, int] = (tok.get("model") or {}).get("vocab") or {}
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    added: dict[int, dict] = {}
    for entry in tok.get("added_tokens") or []:
        by_id[int(entry["id"])] = entry["content"]
        added[int(entry["id"])] = entry
    if by_id and max(by_id) >= n_vocab:
        raise CheckpointError(f"tokenizer.json has token id {max(by_id)} but config.json vocab_size is {n_vocab}")
    tokens, types = [], []
    for i in range(n_vocab):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    return tokens, types


def load_vocab(folder: Path, n_vocab: int, config: dict) -> Vocab:
    """Read tokenizer.json (+ tokenizer_config.json, chat_template.jinja) from a checkpoint folder."""
    tok = _load_json(folder / "tokenizer.json")
    check_pre_tokenizer(tok)
    tokens, types = token_table(tok, n_vocab)
    logging.getLogger("gguf.vocab").setLevel(logging.ERROR)
    try:
        special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=n_vocab)
    except (ValueError, json.JSONDecodeError) as e:
        raise CheckpointError(f"tokenizer files in {folder} could not be read ({e}): re-download them") from None
    if not special.merges:
        raise CheckpointError("tokenizer.json has no BPE merges: the tokenizer would not work")
    # config.json's ids fill what the tokenizer files leave unsaid
    for typ in ("bos", "eos", "pad"):
        tid = config.get(f"{typ}_token_id")
        if typ not in special.special_token_ids and isinstance(tid, int) and 0 <= tid < n_vocab:
            special.special_token_ids[typ] = tid
    special.add_special_token.setdefault("bos", True)
    special.add_special_token.setdefault("eos", False)
    return Vocab(tokens, types, special)


def write_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model(TOKENIZER_MODEL)
    writer.add_tokenizer_pre(PRE_TOKENIZER)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    vocab.special.add_to_gguf(writer, quiet=True)
