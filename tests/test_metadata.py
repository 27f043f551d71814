"""The GGUF carries every key llama.cpp's lfm2 loader needs, the tokenizer and the provenance, read back with GGUFReader."""

from __future__ import annotations

import json

import gguf
import pytest

import lfmq
from conftest import run_cli
from lfmq.inspect import field_value

K = gguf.Keys


def _read(path):
    return gguf.GGUFReader(path)


def test_hparams_round_trip(tiny_f32):
    r = _read(tiny_f32)
    a = "lfm2"
    assert field_value(r, K.General.ARCHITECTURE) == a
    expect = {
        K.LLM.BLOCK_COUNT: 4,
        K.LLM.CONTEXT_LENGTH: 128000,
        K.LLM.EMBEDDING_LENGTH: 64,
        K.LLM.FEED_FORWARD_LENGTH: 192,  # int(2*256/3)=170 rounded up to a multiple of 32
        K.LLM.VOCAB_SIZE: 1024,
        K.Attention.HEAD_COUNT: 4,
        K.Attention.HEAD_COUNT_KV: [0, 2, 0, 2],  # per layer: 0 marks the conv blocks
        K.ShortConv.L_CACHE: 3,
        K.Rope.FREQ_BASE: 1_000_000.0,
    }
    for key, value in expect.items():
        assert field_value(r, key.format(arch=a)) == value, key
    assert field_value(r, K.Attention.LAYERNORM_RMS_EPS.format(arch=a)) == pytest.approx(1e-5)
    assert field_value(r, K.General.FILE_TYPE) == gguf.LlamaFileType.ALL_F32
    assert field_value(r, K.General.QUANTIZATION_VERSION) == gguf.GGML_QUANT_VERSION


def test_tokenizer_round_trip(tiny_f32, tiny_ckpt):
    r = _read(tiny_f32)
    assert field_value(r, K.Tokenizer.MODEL) == "gpt2"
    assert field_value(r, K.Tokenizer.PRE) == "lfm2"
    tokens = field_value(r, K.Tokenizer.LIST)
    assert len(tokens) == 1024
    assert tokens[:8] == ["<|pad|>", "<|startoftext|>", "<|endoftext|>", "<|fim_pre|>", "<|fim_mid|>", "<|fim_suf|>",
                          "<|im_start|>", "<|im_end|>"]
    types = field_value(r, K.Tokenizer.TOKEN_TYPE)
    assert types[:14] == [gguf.TokenType.CONTROL] * 14 and set(types[14:]) == {gguf.TokenType.NORMAL}
    assert (field_value(r, K.Tokenizer.BOS_ID), field_value(r, K.Tokenizer.EOS_ID), field_value(r, K.Tokenizer.PAD_ID)) == (1, 7, 0)
    assert field_value(r, K.Tokenizer.ADD_BOS) is True and field_value(r, K.Tokenizer.ADD_EOS) is False
    assert len(field_value(r, K.Tokenizer.MERGES)) == 1024 - 14 - 256
    template = (tiny_ckpt / "tokenizer_config.json").read_text()
    assert "<|im_start|>" in field_value(r, K.Tokenizer.CHAT_TEMPLATE)
    assert "List of tools" in template


def test_provenance_and_random_weights_flag(tiny_f32, tiny_ckpt):
    r = _read(tiny_f32)
    assert field_value(r, "lfmq.version") == lfmq.__version__
    assert field_value(r, "lfmq.source") == tiny_ckpt.name  # the folder's name, never the machine's path
    assert str(tiny_ckpt.parent) not in str(field_value(r, "lfmq.source"))
    assert field_value(r, "lfmq.synthetic") is True
    assert "RANDOM WEIGHTS" in field_value(r, K.General.DESCRIPTION)


@pytest.mark.parametrize("outtype,matrix_type", [
    ("f32", "F32"), ("f16", "F16"), ("bf16", "BF16"), ("q8_0", "Q8_0"), ("auto", "BF16"),
])
def test_tensor_names_and_types(tiny_ckpt, tmp_path, outtype, matrix_type):
    out = lfmq.convert(tiny_ckpt, tmp_path / "m.gguf", outtype=outtype).path
    tensors = {t.name: t for t in _read(out).tensors}
    assert "output.weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert "output_norm.weight" not in tensors and "token_embd_norm.weight" in tensors
    for name, t in tensors.items():
        keep_f32 = name.endswith("norm.weight") or "shortconv.conv" in name
        assert t.tensor_type.name == ("F32" if keep_f32 else matrix_type), name
    assert list(tensors["blk.0.shortconv.conv.weight"].shape) == [3, 64]  # squeezed [E,1,3] -> [E,3], GGUF order
    assert {n for n in tensors if n.startswith("blk.1.")} >= {"blk.1.attn_q.weight", "blk.1.attn_q_norm.weight"}
    assert not any(n.startswith("blk.1.shortconv") for n in tensors)
    assert len(tensors) == 2 + 4 * 5 + 2 * 3 + 2 * 6  # embd+norm, per block 5, conv 3, attention 6


def test_untied_checkpoint_writes_output(make_ckpt, tmp_path):
    out = lfmq.convert(make_ckpt(tied=False), tmp_path / "m.gguf", outtype="f16").path
    assert "output.weight" in {t.name for t in _read(out).tensors}


def test_bf16_to_bf16_is_bit_exact(tiny_ckpt, tmp_path):
    """`auto` on a bf16 checkpoint copies the stored bits; nothing is rounded twice."""
    import json
    import struct

    import numpy as np

    out = lfmq.convert(tiny_ckpt, tmp_path / "m.gguf").path
    st = tiny_ckpt / "model.safetensors"
    raw = st.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    info = json.loads(raw[8 : 8 + n])["model.layers.0.feed_forward.w2.weight"]
    lo, hi = info["data_offsets"]
    src = np.frombuffer(raw[8 + n + lo : 8 + n + hi], dtype=np.uint16)
    t = next(t for t in _read(out).tensors if t.name == "blk.0.ffn_down.weight")
    assert t.data.tobytes() == src.tobytes()


def test_inspect_summary(tiny_f32):
    info = lfmq.inspect(tiny_f32)
    assert info.architecture == "lfm2"
    assert info.layers == ["conv", "attention", "conv", "attention"]
    assert info.types == {"F32": 40}
    assert info.parameters == 271_360
    assert info.bits_per_weight == pytest.approx(32.0)
    assert info.chat_template and info.synthetic
    assert info.tokenizer["tokens"] == 1024 and info.tokenizer["control_tokens"] == 14


def _template_to_jinja_file(ck):
    cfg_path = ck / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    (ck / "chat_template.jinja").write_text(cfg.pop("chat_template"))
    cfg_path.write_text(json.dumps(cfg))


def test_chat_template_from_jinja_file(make_ckpt, tmp_path):
    ck = make_ckpt()
    _template_to_jinja_file(ck)
    result = lfmq.convert(ck, tmp_path / "m.gguf")
    template = field_value(_read(result.path), K.Tokenizer.CHAT_TEMPLATE)
    assert template == (ck / "chat_template.jinja").read_text() and result.warnings == ()


def test_missing_chat_template_is_warned(make_ckpt, tmp_path):
    ck = make_ckpt()
    _template_to_jinja_file(ck)
    (ck / "chat_template.jinja").unlink()
    result = lfmq.convert(ck, tmp_path / "m.gguf")
    assert field_value(_read(result.path), K.Tokenizer.CHAT_TEMPLATE) is None
    assert len(result.warnings) == 1 and "no chat template" in result.warnings[0]


def test_inspect_cli_output_is_exact(tiny_f32, tiny_ckpt):
    r = run_cli("inspect", str(tiny_f32))
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout.splitlines() == [
        f"file           {tiny_f32} (1.1 MB, 32.00 bits/weight)",
        "model          ckpt  arch lfm2  type ALL_F32",
        "weights        RANDOM (lfmq synthetic checkpoint)",
        "layers         4 blocks: 2 conv [0, 2], 2 attention [1, 3]",
        "hparams        context_length=128000, embedding_length=64, feed_forward_length=192, block_count=4, "
        "vocab_size=1024, head_count=4, rms_epsilon=1e-05, rope_freq_base=1e+06, shortconv_l_cache=3, head_count_kv=2",
        "tensors        40 (271,360 parameters): F32 40",
        "tokenizer      gpt2/lfm2, 1024 tokens, 754 merges, bos 1 eos 7 pad 0, add_bos True",
        "chat template  yes",
        f"lfmq.version   {lfmq.__version__}",
        f"lfmq.source    {tiny_ckpt.name}",
    ]
    info = json.loads(run_cli("inspect", str(tiny_f32), "--json").stdout)
    assert info["layers"] == ["conv", "attention", "conv", "attention"] and info["types"] == {"F32": 40}


def test_fast_index_agrees_with_gguf_reader(tiny_f32):
    """The C-parser index the runtime, quantizer and bench use reads what GGUFReader reads (minus long arrays)."""
    from lfmq.llama.gguf_index import tensor_index

    ix = tensor_index(tiny_f32)
    reader = _read(tiny_f32)
    # skipped: string arrays (tokens, merges); numeric arrays this short (1,024 token types) are kept
    assert ix.meta.keys() == {k for k in reader.fields if not k.startswith("GGUF.")} - {K.Tokenizer.LIST, K.Tokenizer.MERGES}
    for key, value in ix.meta.items():
        assert value == pytest.approx(field_value(reader, key)) if isinstance(value, float) else value == field_value(reader, key), key
    tensors = {t.name: t for t in reader.tensors}
    assert ix.tensors.keys() == tensors.keys()
    for name, entry in ix.tensors.items():
        t = tensors[name]
        assert (list(entry.shape), entry.type, entry.nbytes) == ([int(d) for d in t.shape], t.tensor_type.name, int(t.n_bytes))
    assert ix.data_offset == min(t.data_offset for t in reader.tensors)


# ---- lfmq.meta: one reader of model facts, through either parser ----

def test_read_meta_round_trip(tiny_f32):
    """What the converter wrote comes back through read_meta (llama.cpp's parser)."""
    from lfmq.meta import read_meta

    m = read_meta(tiny_f32)
    r = _read(tiny_f32)
    assert (m.architecture, m.file_type, m.type_name) == ("lfm2", "ALL_F32", "F32")
    assert m.layers == ("conv", "attention", "conv", "attention") and (m.n_layer, m.n_attn) == (4, 2)
    assert (m.n_embd, m.n_head, m.n_head_kv, m.head_dim, m.n_ff, m.n_vocab) == (64, 4, 2, 16, 192, 1024)
    assert (m.context_length, m.rope_freq_base, m.l_cache) == (128000, 1_000_000.0, 3)
    assert m.rms_eps == pytest.approx(1e-5)
    assert m.file_bytes == tiny_f32.stat().st_size
    assert m.tensor_bytes == sum(int(t.n_bytes) for t in r.tensors) and m.n_params == 271_360
    assert m.bits_per_weight == pytest.approx(32.0) and m.tensor_types == {"F32": 40} and m.n_tensors == 40
    assert m.tied and m.bytes_per_token == m.tensor_bytes  # tied: the embedding is read whole, as the LM head
    assert m.chat_template and m.synthetic
    assert (m.lfmq_version, m.source) == (lfmq.__version__, field_value(r, "lfmq.source"))
    assert m.provenance == {"lfmq.version": lfmq.__version__, "lfmq.source": m.source}
    assert (m.expert_count, m.expert_used_count, m.leading_dense_blocks, m.n_ff_expert) == (None,) * 4  # dense


def test_both_parsers_give_the_same_meta(tiny_f32):
    """`lfmq inspect` reads with GGUFReader (no compiled library), the rest with llama.cpp's parser: same facts."""
    from lfmq.meta import meta_from_reader, read_meta

    assert meta_from_reader(_read(tiny_f32), tiny_f32) == read_meta(tiny_f32)


def test_read_meta_untied(make_ckpt, tmp_path):
    """Untied: output.weight is the LM head; a decoded token reads one row of the embedding, not all of it."""
    from lfmq.meta import meta_from_reader, read_meta

    out = lfmq.convert(make_ckpt(tied=False), tmp_path / "m.gguf", outtype="f16").path
    m = read_meta(out)
    embd = next(t for t in _read(out).tensors if t.name == "token_embd.weight")
    assert not m.tied and m.file_type == "MOSTLY_F16"
    assert m.bytes_per_token == m.tensor_bytes - int(embd.n_bytes) + int(embd.n_bytes) // 1024
    assert meta_from_reader(_read(out), out) == m


def test_read_meta_of_quantized_files(small_ladder):
    """llama.cpp's quantizer writes general.file_type: the type names tell Q4_K_M from Q5_K_M."""
    from lfmq.meta import read_meta

    for name, path in small_ladder.items():
        assert read_meta(path).type_name == name, name


def test_read_meta_errors(tmp_path):
    from lfmq.errors import GGUFFileError, ModelNotFoundError
    from lfmq.meta import read_meta

    with pytest.raises(ModelNotFoundError):
        read_meta(tmp_path / "missing.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"nope")
    with pytest.raises(GGUFFileError, match="not a GGUF file"):
        read_meta(junk)
