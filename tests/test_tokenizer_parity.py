"""llama.cpp's token ids for a converted file equal Hugging Face tokenizers' ids, on a full 65,536-token vocabulary."""

from __future__ import annotations

import pytest

import lfmq

SAMPLES = [
    "Hello world! The quick brown fox jumps over the lazy dog.",
    "Le château où nous étions coûtait 1 234,56 € — très cher.",
    "Über die Brücke gehen wir morgen früh um 7:30 Uhr.",
    "¿Dónde está la estación? Está allí.",
    "我想在苹果公司工作1314151天～ 你好，世界！",
    "東京の天気は晴れです。これはテストです。",
    "Привет, мир! Как дела? Всё хорошо.",
    "مرحبا بالعالم 123",
    "🚀 rockets and 😶‍🌫️ emojis ✅ 🦙🦙",
    '{"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius", "days": [1, 2, 3]}}',
    "def f(x):\n\treturn x ** 2  # square\n\n\nclass A:\n    pass\n",
    "digits 3 33 333 3333 33333 333333 3333333 3.3 3..3 3...3 1e-5 0x1F",
    "   leading spaces\n\n\n   \t\t  trailing spaces   \n",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n<|im_start|>assistant\n",
    "<|tool_call_start|>[get_weather(location=\"Paris\")]<|tool_call_end|>",
    "------======= '''''''```````\"\"\"\"......!!!!!!??????",
    "",
]


@pytest.fixture(scope="module")
def big_vocab(tmp_path_factory):
    """A tiny model with LFM2's full 65,536-token vocabulary: the tokenizer is what is tested here."""
    folder = tmp_path_factory.mktemp("vocab") / "ckpt"
    lfmq.synth("tiny", folder, overrides={"vocab_size": 65536})
    out = lfmq.convert(folder, folder.parent / "m.gguf", outtype="f16").path
    return folder, out


def test_vocabulary_is_exact(big_vocab):
    from transformers import AutoTokenizer

    folder, _ = big_vocab
    tok = AutoTokenizer.from_pretrained(folder)
    assert len(tok) == 65536
    assert tok.convert_ids_to_tokens([0, 1, 7, 10, 13]) == [
        "<|pad|>", "<|startoftext|>", "<|im_end|>", "<|tool_call_start|>", "<|tool_response_end|>",
    ]


@pytest.mark.parametrize("text", SAMPLES, ids=range(len(SAMPLES)))
def test_llama_cpp_ids_equal_hf_ids(big_vocab, text):
    import llama_cpp
    from transformers import AutoTokenizer

    folder, gguf_path = big_vocab
    hf = AutoTokenizer.from_pretrained(folder)(text).input_ids
    llm = llama_cpp.Llama(str(gguf_path), vocab_only=True, verbose=False)
    try:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        assert ids == hf
        # and back: llama.cpp's detokenizer returns the text (special tokens rendered)
        assert llm.detokenize(ids[1:], special=True).decode("utf-8") == text
    finally:
        llm.close()


def test_merges_are_used(big_vocab):
    """A real BPE, not a byte tokenizer: common words are single tokens."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(big_vocab[0])
    assert tok(" the weather and the location").input_ids[1:] == tok.convert_tokens_to_ids(
        ["Ġthe", "Ġweather", "Ġand", "Ġthe", "Ġlocation"]
    )
