"""`lfmq quantize`: llama.cpp's quantizer in process, every type by name, options, sizes, clear failures."""

from __future__ import annotations

import json
import math

import gguf
import pytest

from conftest import run_cli
from lfmq.errors import LfmqError, UsageError
from lfmq.inspect import field_value
from lfmq.quantize import LADDER, quantize
from lfmq.quantize.types import parse_quant_types, quant_types


def _tensors(path):
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_type_table_covers_what_llama_quantize_offers():
    names = set(quant_types())
    assert {"Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q2_K_S", "Q3_K_S", "Q3_K_M", "Q3_K_L", "Q4_K_S",
            "Q4_K_M", "Q5_K_S", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS", "IQ1_S", "IQ1_M", "IQ2_XXS", "IQ2_XS", "IQ2_S",
            "IQ2_M", "IQ3_XXS", "IQ3_XS", "IQ3_S", "IQ3_M", "TQ1_0", "TQ2_0", "F16", "BF16", "F32"} <= names
    for name, qt in quant_types().items():  # where gguf knows the type, the enums agree
        assert qt.file_type is None or qt.file_type.name.endswith(name)


@pytest.mark.parametrize("spec,expect", [
    ("q4_k_m", ["Q4_K_M"]),
    ("Q4_K", ["Q4_K_M"]),
    ("ladder", list(LADDER)),
    ("Q8_0, q4_0,Q8_0", ["Q8_0", "Q4_0"]),
    ("ladder,IQ4_XS", [*LADDER, "IQ4_XS"]),
])
def test_type_names(spec, expect):
    assert [t.name for t in parse_quant_types(spec)] == expect


@pytest.mark.parametrize("spec", ["Q9_9", "", "q4_k_m,nope"])
def test_unknown_type_is_a_usage_error(spec):
    with pytest.raises(UsageError):
        parse_quant_types(spec)


def test_ladder_outputs_and_sizes(small_f16, small_ladder):
    assert list(small_ladder) == list(LADDER)
    dry = {r.type: r.bytes for r in quantize(small_f16, "ladder", dry_run=True)}
    for name, path in small_ladder.items():
        assert path.name == f"small-{name}.gguf"
        reader = gguf.GGUFReader(path)
        assert field_value(reader, gguf.Keys.General.FILE_TYPE) == quant_types()[name].ftype
        # every tensor's bytes follow from its type's block size, and the file from the tensors
        size = min(t.data_offset for t in reader.tensors)
        for t in reader.tensors:
            block, nbytes = gguf.GGML_QUANT_SIZES[t.tensor_type]
            assert t.n_bytes == int(t.shape[0]) // block * nbytes * math.prod(int(d) for d in t.shape[1:]), t.name
            size += -(-int(t.n_bytes) // 32) * 32
            if t.name.endswith("norm.weight") or "shortconv.conv" in t.name:
                assert t.tensor_type == gguf.GGMLQuantizationType.F32, t.name
        assert path.stat().st_size == size == dry[name]
    sizes = [small_ladder[n].stat().st_size for n in ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")]
    assert sizes == sorted(sizes)


def test_pure_and_per_tensor_types(small_f16, tmp_path):
    pure = _tensors(quantize(small_f16, "Q4_K_M", tmp_path / "pure.gguf", pure=True)[0].path)
    mixed = _tensors(quantize(small_f16, "Q4_K_M", tmp_path / "mix.gguf")[0].path)
    weights = [n for n, t in pure.items() if len(t.shape) == 2 and "shortconv.conv" not in n]
    assert {pure[n].tensor_type.name for n in weights} == {"Q4_K"}
    assert {mixed[n].tensor_type.name for n in weights} > {"Q4_K"}  # the M mix raises some tensors
    custom = _tensors(quantize(small_f16, "Q4_0", tmp_path / "custom.gguf", token_embedding_type="q8_0",
                               tensor_type=[r"attn_v=q8_0", r"ffn_down=q5_0"])[0].path)
    assert custom["token_embd.weight"].tensor_type.name == "Q8_0"
    assert {t.tensor_type.name for n, t in custom.items() if "attn_v" in n} == {"Q8_0"}
    assert {t.tensor_type.name for n, t in custom.items() if "ffn_down" in n} == {"Q5_0"}
    assert custom["blk.0.ffn_up.weight"].tensor_type.name == "Q4_0"


def test_requantize_needs_the_flag(small_ladder, tmp_path):
    with pytest.raises(LfmqError, match=r"already quantized \(Q8_0\).*--allow-requantize"):
        quantize(small_ladder["Q8_0"], "Q4_0", tmp_path)
    assert not list(tmp_path.iterdir())
    r = quantize(small_ladder["Q8_0"], "Q4_0", tmp_path, allow_requantize=True)[0]
    assert r.path.is_file()


def test_imatrix_types_are_refused_before_anything_is_written(small_f16, tmp_path):
    with pytest.raises(LfmqError, match="IQ1_S, IQ2_XS needs an importance matrix"):
        quantize(small_f16, "Q4_0,IQ1_S,IQ2_XS", tmp_path)
    assert not list(tmp_path.iterdir())


def test_existing_output_and_failure_midway(small_f16, tmp_path, monkeypatch):
    (tmp_path / "small-Q8_0.gguf").write_bytes(b"mine")
    with pytest.raises(LfmqError, match="exists: pass --force"):
        quantize(small_f16, "Q4_0,Q8_0", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small-Q8_0.gguf"]  # checked before the first output

    import llama_cpp

    monkeypatch.setattr(llama_cpp, "llama_model_quantize", lambda *a: 1)  # llama.cpp fails, having written a bit
    with pytest.raises(LfmqError, match="quantizing to Q8_0 failed"):
        quantize(small_f16, "Q8_0", tmp_path, force=True)
    assert (tmp_path / "small-Q8_0.gguf").read_bytes() == b"mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["small-Q8_0.gguf"]


def test_cli_quantize_json_and_errors(small_f16, tmp_path):
    r = run_cli("quantize", str(small_f16), "-q", "Q8_0,q4_0", "-o", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    outputs = json.loads(r.stdout)["outputs"]
    assert [(o["type"], o["dry_run"]) for o in outputs] == [("Q8_0", False), ("Q4_0", False)]
    assert all(o["bytes"] == (tmp_path / f"small-{o['type']}.gguf").stat().st_size for o in outputs)
    assert set(outputs[0]) == {"path", "type", "bytes", "bits_per_weight", "seconds", "dry_run"}
    r = run_cli("quantize", str(small_f16), "-q", "Q8_0", "-o", str(tmp_path))
    assert (r.returncode, r.stderr) == (1, f"error: {tmp_path / 'small-Q8_0.gguf'} exists: pass --force to overwrite it\n")
    r = run_cli("quantize", str(small_f16), "-q", "Q8_0,Q4_0", "-o", str(tmp_path / "one.gguf"))
    assert r.returncode == 2 and "names one file but 2 types" in r.stderr
    junk = tmp_path / "junk.gguf"
    junk.write_text("nope")
    r = run_cli("quantize", str(junk), "-q", "Q4_0")
    assert (r.returncode, r.stderr) == (1, f"error: {junk} is not a GGUF file (it does not start with 'GGUF')\n")
    r = run_cli("quantize", str(small_f16), "-q", "Q4_0", "--tensor-type", "attn_v")
    assert r.returncode == 2 and "is not REGEX=TYPE" in r.stderr


def test_llama_log_routing_survives_a_capture(tmp_path):
    """Captures ride on the one callback: after quantize-style capture ends, llama.cpp's errors still reach the
    runtime's buffer (they once went back to llama-cpp-python's own logger)."""
    import llama_cpp

    from lfmq.llama import log as llama_log

    with llama_log.captured() as log:
        llama_cpp.llama_model_load_from_file(str(tmp_path / "absent.gguf").encode(), llama_cpp.llama_model_default_params())
    assert any("absent.gguf" in line for _, line in log.lines)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 12)
    llama_cpp.llama_model_load_from_file(str(bad).encode(), llama_cpp.llama_model_default_params())
    assert "failed to load model from " + str(bad) in llama_log.tail()  # the newest error, not the capture's
