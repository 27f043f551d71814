"""A real byte-level BPE tokenizer of an exact vocabulary size, built without training: LFM2's special tokens at
their ids, the 256 byte symbols, then merges grown as a trie (every token is a shorter token plus one byte symbol),
so the merge list is valid by construction and llama.cpp and HF tokenizers must agree on it."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np

from lfmq.convert.vocab import LFM2_SPLIT

SPECIAL_TOKENS = [
    "<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
    "<|im_start|>", "<|im_end|>", "<|tool_list_start|>", "<|tool_list_end|>",
    "<|tool_call_start|>", "<|tool_call_end|>", "<|tool_response_start|>", "<|tool_response_end|>",
]
BOS, EOS, PAD = "<|startoftext|>", "<|im_end|>", "<|pad|>"

# seed words: the kind of text LFM2.5 sees (prose in several languages, JSON, tool calls, code)
SEED_TEXT = """
the of and to in is that for it as with was on be by at this are from or have an not they which you one
all were we there can been has more if will when would who so what about out up into than them only other
new some could time these two may first then do any like my now over such our man me even most made after
name value type description location unit celsius fahrenheit weather get_weather search query result true
false null None True False def return import from class self print for while elif else try except lambda
function const let var async await json schema object array string number integer boolean properties
required items enum tool call response assistant user system content role message tools arguments
le la les des une est pour dans que qui sur avec pas plus par nous vous ils elle être avoir fait très
der die das und ist nicht mit sich auf für von ein eine dem den zu wird werden auch nach bei aus oder
el los las por con para una del que como más pero sus este esta está son fue ser han hay también
il di che non per una sono della questo anche come più alla nel gli delle
и в не на что с по это как он к из у за то мы вы они был она для так все его
的 是 在 我 有 他 这 个 们 中 来 上 大 为 和 国 地 到 以 说 时 要 就 出 会 可 也 你 对 生 能 而 子 那 得 于 着 下 自 之
の に は を た が で て と し れ さ ある いる も する から な こと として い や れる など なっ ない この ため その
"""


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by every byte-level BPE."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


BYTE_CHARS = bytes_to_unicode()


def _symbols(text: str) -> list[str]:
    return [BYTE_CHARS[b] for b in text.encode("utf-8")]


def _pseudo_words(rng: np.random.Generator) -> Iterator[str]:
    """An endless stream of pronounceable made-up words, 2 to 9 letters, so token lengths look natural."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
              "br", "ch", "cl", "dr", "fl", "gr", "pl", "pr", "sh", "st", "str", "th", "tr"]
    vowels = ["a", "e", "i", "o", "u", "ai", "ea", "ee", "ie", "io", "oo", "ou", "y"]
    codas = ["", "", "n", "s", "t", "r", "l", "m", "nd", "ng", "nt", "rs", "st", "ck", "tion", "ing", "ed", "er"]
    while True:
        n = int(rng.integers(1, 4))
        word = "".join(onsets[rng.integers(len(onsets))] + vowels[rng.integers(len(vowels))] for _ in range(n))
        word += codas[rng.integers(len(codas))]
        yield word.capitalize() if rng.random() < 0.15 else word


def _candidates(rng: np.random.Generator) -> Iterator[str]:
    """Strings to become tokens, most useful first (byte-level words with and without a leading space)."""
    yield from ("  ", "   ", "    ", "\n\n", "\n", "\t", "\t\t", "        ")
    yield from (str(i) for i in range(1000))  # llama.cpp splits digits in runs of 1-3
    for word in SEED_TEXT.split():
        yield " " + word
        yield word
    for p in ('{"', '":', '",', '"}', '": "', '[{', '}]', '()', '):', '->', '==', '!=', '<=', '>=', '""', "''", "```"):
        yield p
    for word in _pseudo_words(rng):
        yield " " + word
        yield word


def build_tokenizer(n_vocab: int, seed: int = 0) -> dict[str, Any]:
    """tokenizer.json content for an LFM2-style tokenizer of exactly n_vocab tokens."""
    base = len(SPECIAL_TOKENS) + 256
    if n_vocab < base:
        raise ValueError(f"vocabulary of {n_vocab} is smaller than the {base} special and byte tokens")
    vocab: dict[str, int] = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    for b in range(256):
        vocab[BYTE_CHARS[b]] = len(vocab)
    merges: list[list[str]] = []
    rng = np.random.default_rng(seed)
    for text in _candidates(rng):
        if len(vocab) >= n_vocab:
            break
        syms = _symbols(text)
        prefix = syms[0]
        for sym in syms[1:]:
            token = prefix + sym
            if token not in vocab:
                vocab[token] = len(vocab)
                merges.append([prefix, sym])
                if len(vocab) >= n_vocab:
                    break
            prefix = token
    return _tokenizer_json(vocab, merges)


def _tokenizer_json(vocab: dict[str, int], merges: list[list[str]]) -> dict[str, Any]:
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False, "normalized": False, "special": True}
        for i, t in enumerate(SPECIAL_TOKENS)
    ]
    bos_id = SPECIAL_TOKENS.index(BOS)
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": LFM2_SPLIT}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
            ],
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [
                {"SpecialToken": {"id": BOS, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                {"SpecialToken": {"id": BOS, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}},
            ],
            "special_tokens": {BOS: {"id": BOS, "ids": [bos_id], "tokens": [BOS]}},
        },
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
            "vocab": vocab, "merges": merges,
        },
    }


def tokenizer_config(chat_template: str) -> dict[str, Any]:
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "tokenizer_class": "PreTrainedTokenizerFast",
        "chat_template": chat_template,
    }
