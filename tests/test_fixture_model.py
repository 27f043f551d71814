"""The trained fixture (tests/fixtures/lfm2-tools-tiny, made by scripts/train_fixture.py): it converts with lfmq,
llama.cpp tokenizes and computes it as transformers does, and at F16 it calls tools and fills schemas right on its
held-out cases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lfmq
from conftest import llama_logits, reference_logits
from lfmq.quantize.tasks import evaluate_tasks, load_tasks
from lfmq.runtime.template import render

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lfm2-tools-tiny"
TASKS = FIXTURE / "tasks.jsonl"
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def fixture_f16(tmp_path_factory) -> Path:
    return lfmq.convert(FIXTURE, tmp_path_factory.mktemp("fixture") / "fixture-F16.gguf", outtype="f16").path


def test_checkpoint_is_small_and_labelled():
    cfg = json.loads((FIXTURE / "config.json").read_text())
    assert cfg["architectures"] == ["Lfm2ForCausalLM"] and "conv" in cfg["layer_types"]
    assert "full_attention" in cfg["layer_types"] and cfg["hidden_size"] % 256 == 0
    assert "TRAINED" in cfg["lfmq_fixture"]["note"]
    assert (FIXTURE / "model.safetensors").stat().st_size < 10_000_000
    assert "scripts/train_fixture.py" in (FIXTURE / "README.md").read_text()


def test_converts_with_lfm2_tokenizer_and_template(fixture_f16):
    import gguf

    from lfmq.inspect import field_value

    reader = gguf.GGUFReader(fixture_f16)
    assert field_value(reader, gguf.Keys.Tokenizer.PRE) == "lfm2"
    assert field_value(reader, gguf.Keys.Tokenizer.CHAT_TEMPLATE).startswith("{{- bos_token -}}")
    with lfmq.load(fixture_f16, n_ctx=512) as m:
        assert m.template_source == "gguf" and m.architecture == "lfm2" and not m.synthetic
        assert [m.piece(i).decode() for i in (1, 6, 7, 10, 11)] == ["<|startoftext|>", "<|im_start|>", "<|im_end|>",
                                                                  "<|tool_call_start|>", "<|tool_call_end|>"]


def test_llama_cpp_tokenizes_prompts_as_the_trained_tokenizer(fixture_f16):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(FIXTURE / "tokenizer.json"))
    template = json.loads((FIXTURE / "tokenizer_config.json").read_text())["chat_template"]
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    with lfmq.load(fixture_f16, n_ctx=512) as m:
        for case in load_tasks(TASKS)[:40]:
            text = render(template, case.messages, tools=case.tools, special_tokens=specials) + '{"name": "Zoë 42"}'
            assert m.tokenize(text) == tok.encode(text, add_special_tokens=False).ids


def test_llama_cpp_computes_what_transformers_computes(tmp_path):
    f32 = lfmq.convert(FIXTURE, tmp_path / "fixture-F32.gguf", outtype="f32").path
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(FIXTURE / "tokenizer.json")).encode(
        "<|startoftext|><|im_start|>user\nWhat's the weather in Oslo?<|im_end|>\n<|im_start|>assistant\n",
        add_special_tokens=False).ids
    ref, got = reference_logits(FIXTURE, ids), llama_logits(f32, ids)
    assert np.abs(ref - got).max() < 2e-3 * np.abs(ref).max()  # weights are bf16, so both compute the same values
    assert (ref.argmax(-1) == got.argmax(-1)).all()


def test_held_out_task_accuracy_at_f16(fixture_f16):
    """At F16, well-formed calls with the right names and arguments on at least 90% of the held-out tool cases."""
    (score,) = evaluate_tasks([], fixture_f16, TASKS)
    print(f"\nheld-out at F16: calls {score.call_exact:.3f} of {score.call_cases}, well-formed {score.call_well_formed:.3f}; "
          f"extraction valid {score.schema_valid:.3f}, fields {score.field_agreement:.3f} of {score.extract_cases} cases")
    assert score.call_cases >= 100 and score.call_exact >= 0.9 and score.call_well_formed >= 0.95
    assert score.schema_valid == 1.0 and score.field_agreement >= 0.9


def test_chat_session_calls_a_tool_then_answers_from_its_result(fixture_f16):
    cases = [c for c in load_tasks(TASKS) if c.tools and any(x["name"] == "get_weather" for x in c.expected)]
    tools = [t for t in cases[0].tools]
    with lfmq.load(fixture_f16, n_ctx=1024) as m:
        chat = lfmq.Chat(m, tools=tools, max_tokens=64, **GREEDY)
        reply = chat.send("What's the weather in Lisbon?")
        assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"location": "Lisbon"})]
        answer = chat.send(json.dumps({"temperature": 21, "condition": "sunny"}), role="tool")
        assert not answer.tool_calls and "21" in answer.content and "Lisbon" in answer.content
