"""Bad input gets one clear line on stderr, exit 1 (2 for usage), no traceback and no output file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable

import pytest

import lfmq
from conftest import edit_config, run_cli


def _rewrite_json(path: Path, fn: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _corrupt_header(ck: Path) -> None:
    raw = bytearray((ck / "model.safetensors").read_bytes())
    raw[8:20] = b"\x00garbage!!!!"
    (ck / "model.safetensors").write_bytes(bytes(raw))


def _truncate(ck: Path) -> None:
    path = ck / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _only_bin(ck: Path) -> None:
    (ck / "model.safetensors").rename(ck / "pytorch_model.bin")


def _pre_tokenizer(ck: Path) -> None:
    _rewrite_json(ck / "tokenizer.json", lambda t: t["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=r"\s+"))


# id, how to break a fresh tiny checkpoint (config edit or file edit), expected stderr after "error: "
CONVERT_ERRORS = [
    ("other-architecture", lambda c: c.update(architectures=["LlamaForCausalLM"], model_type="llama"), None,
     "LlamaForCausalLM is not an architecture lfmq converts (supported: Lfm2ForCausalLM, Lfm2MoeForCausalLM)"),
    ("vl-sibling", lambda c: c.update(architectures=["Lfm2VlForConditionalGeneration"], model_type="lfm2_vl"), None,
     "Lfm2VlForConditionalGeneration: LFM2-VL is a vision-language model; lfmq converts the text models only"),
    ("conv-bias", lambda c: c.update(conv_bias=True), None,
     "config.json sets conv_bias: true, but llama.cpp's lfm2 graph has no conv biases; converting would silently "
     "drop them, so lfmq refuses this checkpoint"),
    ("missing-tensor", lambda c: c.update(num_hidden_layers=5, layer_types=c["layer_types"] + ["conv"]), None,
     "checkpoint is missing tensor model.layers.4.operator_norm.weight (8 missing in all): is it complete?"),
    ("shape-mismatch", lambda c: c.update(num_key_value_heads=1), None,
     "tensor model.layers.1.self_attn.k_proj.weight has shape [32, 64] but config.json implies [16, 64]"),
    ("ffn-width", lambda c: c.update(block_ff_dim=512), None,
     "tensor model.layers.0.feed_forward.w1.weight has 192 rows but config.json implies an FFN width of 352"),
    ("no-layer-kinds", lambda c: c.pop("layer_types"), None,
     "config.json has neither 'layer_types' nor 'full_attn_idxs': cannot tell conv from attention blocks"),
    ("corrupt-safetensors", None, _corrupt_header, "model.safetensors has a corrupt safetensors header: re-download it"),
    ("truncated-safetensors", None, _truncate,
     "model.safetensors is truncated or corrupt (tensor model.layers.1.feed_forward.w3.weight lies outside the file): "
     "re-download it"),
    ("no-safetensors", None, _only_bin, "no .safetensors weights in {ck}: lfmq converts safetensors checkpoints (not .bin or .pt)"),
    ("no-tokenizer", None, lambda ck: (ck / "tokenizer.json").unlink(),
     "tokenizer.json is missing from {ck}: the tokenizer cannot be converted without it"),
    ("foreign-pre-tokenizer", None, _pre_tokenizer,
     "tokenizer.json pre-tokenizer is not LFM2's split (expected one Split with the Llama-3 expression); llama.cpp's "
     "lfm2 tokenizer would segment text differently"),
    ("bad-config-json", None, lambda ck: (ck / "config.json").write_text("{not json"),
     "{ck}/config.json is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 2 (char 1)): "
     "re-download it"),
]


@pytest.mark.parametrize("edit,damage,message", [c[1:] for c in CONVERT_ERRORS], ids=[c[0] for c in CONVERT_ERRORS])
def test_convert_refuses_bad_checkpoint(tmp_path, edit, damage, message):
    ck = tmp_path / "ck"
    lfmq.synth("tiny", ck)
    if edit:
        edit_config(ck, edit)
    if damage:
        damage(ck)
    out = tmp_path / "out.gguf"
    r = run_cli("convert", str(ck), "-o", str(out))
    assert (r.returncode, r.stdout) == (1, "")
    assert r.stderr == f"error: {message.format(ck=ck.resolve() if 'config.json' not in message else ck)}\n"
    assert not out.exists() and not list(tmp_path.glob(".*partial*"))


def test_missing_folder(tmp_path):
    r = run_cli("convert", str(tmp_path / "nope"))
    assert r.returncode == 1
    assert r.stderr == f"error: {tmp_path / 'nope'}: no such folder (and not a Hub repo id like LiquidAI/LFM2.5-350M)\n"


def test_existing_output_needs_force(tiny_ckpt, tmp_path):
    out = tmp_path / "m.gguf"
    out.write_bytes(b"precious")
    r = run_cli("convert", str(tiny_ckpt), "-o", str(out))
    assert (r.returncode, r.stderr) == (1, f"error: {out} exists: pass --force to overwrite it\n")
    assert out.read_bytes() == b"precious"
    r = run_cli("convert", str(tiny_ckpt), "-o", str(out), "--force", "--json")
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["path"] == str(out.resolve()) and result["outtype"] == "bf16" and result["tensors"] == 40
    assert set(result) == {"path", "source", "outtype", "tensors", "parameters", "bytes", "seconds", "synthetic", "warnings",
                           "lora"}
    assert out.stat().st_size == result["bytes"]


@pytest.mark.parametrize("args,needle", [
    (["convert", "X", "--outtype", "q3"], "error: unknown --outtype 'q3': choose auto, f32, f16, bf16, q8_0\n"),
    (["convert", "X", "--bogus"], "No such option: --bogus"),
    (["convert"], "Missing argument"),
    (["synth", "huge", "-o", "x"], "error: unknown preset 'huge': choose one of lfm2.5-350m, lfm2-700m, lfm2.5-1.2b, lfm2-2.6b, tiny, lfm2-8b-a1b, "
                                     "lfm2-moe-mid, tiny-moe\n"),
    (["frobnicate"], "No such command"),
])
def test_usage_errors_exit_2(tmp_path, args, needle):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    assert needle in r.stderr
    assert "Traceback" not in r.stderr


def test_inspect_rejects_non_gguf_and_truncated(tiny_f32, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("hello")
    r = run_cli("inspect", str(junk))
    assert (r.returncode, r.stderr) == (1, f"error: {junk} is not a GGUF file (it does not start with 'GGUF')\n")
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_f32.read_bytes()[:4000])
    r = run_cli("inspect", str(cut))
    assert r.returncode == 1 and r.stderr.startswith(f"error: {cut} is truncated") and r.stderr.count("\n") == 1
    cut.write_bytes(tiny_f32.read_bytes()[:-100])  # header intact, last tensor cut short
    r = run_cli("inspect", str(cut))
    assert r.returncode == 1 and r.stderr.startswith(f"error: {cut} is truncated") and r.stderr.count("\n") == 1
    r = run_cli("inspect", str(tmp_path / "absent.gguf"))
    assert (r.returncode, r.stderr) == (1, f"error: {tmp_path / 'absent.gguf'} does not exist\n")


def test_debug_env_keeps_traceback(tmp_path):
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "lfmq", "inspect", str(tmp_path / "absent.gguf")], capture_output=True,
                       text=True, env={**os.environ, "LFMQ_DEBUG": "1"})
    assert r.returncode == 1 and "Traceback" in r.stderr and "ModelNotFoundError" in r.stderr


class Boom(Exception):
    pass


@pytest.mark.parametrize("exc", [Boom, KeyboardInterrupt, OSError], ids=["error", "ctrl-c", "disk-full"])
def test_failure_midway_leaves_no_file_and_keeps_the_old_one(tiny_ckpt, tmp_path, monkeypatch, exc):
    from lfmq.convert import writer

    real = writer.chunks
    seen = []

    def failing(reader, plan):
        seen.append(plan.name)
        if len(seen) == 10:
            raise exc("injected")
        yield from real(reader, plan)

    monkeypatch.setattr(writer, "chunks", failing)
    fresh, kept = tmp_path / "fresh.gguf", tmp_path / "kept.gguf"
    kept.write_bytes(b"the user's previous file")
    with pytest.raises(exc):
        lfmq.convert(tiny_ckpt, fresh, outtype="f32")
    seen.clear()
    with pytest.raises(exc):
        lfmq.convert(tiny_ckpt, kept, outtype="f32", force=True)
    assert not fresh.exists()
    assert kept.read_bytes() == b"the user's previous file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.gguf"]


def test_synth_cli_says_weights_are_random(tmp_path):
    r = run_cli("synth", "tiny", "-o", str(tmp_path / "s"))
    assert r.returncode == 0, r.stderr
    assert "RANDOM" in r.stdout
    r = run_cli("synth", "tiny", "-o", str(tmp_path / "s"))
    assert (r.returncode, r.stderr) == (1, f"error: {tmp_path / 's'} exists and is not empty: pass --force to overwrite it\n")
    shutil.rmtree(tmp_path / "s")


def test_error_text_with_brackets_is_not_markup(tmp_path):
    """rich would read `[/x]` as a closing tag; the error line must show it as text."""
    r = run_cli("convert", "./[/x]")
    assert (r.returncode, r.stderr) == (1, "error: ./[/x]: no such folder (and not a Hub repo id like LiquidAI/LFM2.5-350M)\n")
