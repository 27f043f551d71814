"""Prompts rendered by lfmq from a GGUF equal transformers' apply_chat_template on the same tokenizer files, string for
string and token for token; a GGUF without a template gets lfmq's LFM2.5 template with one warning, never llama-2."""

from __future__ import annotations

import json
import warnings

import pytest

import lfmq
from lfmq.runtime import load
from lfmq.errors import LfmqWarning, TemplateError
from lfmq.runtime.template import builtin_template, render

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city, «in» any language",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["location"]}}}
SEARCH = {"name": "web.search", "description": "Search <the> web & return JSON", "parameters": {
    "type": "object", "properties": {"q": {"type": "string"}, "n": {"type": "integer", "default": 3}}}}
SYSTEM = {"role": "system", "content": "You are a careful assistant."}
USER = {"role": "user", "content": "What's the weather in Paris? Answer in °C."}
CALL = {"role": "assistant", "content": '<|tool_call_start|>[get_weather(location="Paris", unit="celsius")]<|tool_call_end|>'}
RESULT = {"role": "tool", "content": '{"temperature": 21, "sky": "clear"}'}
THOUGHT = {"role": "assistant", "content": "<think>\nThe user wants weather.\n</think>\n\nIt is 21 °C and clear."}

# id, messages, tools
CASES = [
    ("user-only", [USER], None),
    ("system", [SYSTEM, USER], None),
    ("tools-no-system", [USER], [WEATHER]),
    ("tools-and-system", [SYSTEM, USER], [WEATHER, SEARCH]),
    ("tool-round", [SYSTEM, USER, CALL, RESULT], [WEATHER]),
    ("multi-turn", [SYSTEM, USER, {"role": "assistant", "content": "21 °C."}, {"role": "user", "content": "And Oslo?"}], None),
    ("thinking-last", [USER, THOUGHT], None),
    ("thinking-kept-in-last-assistant", [USER, THOUGHT, {"role": "user", "content": "Thanks! And tomorrow?"}], None),
    ("thinking-stripped-when-not-last", [USER, THOUGHT, {"role": "user", "content": "Thanks!"},
                                         {"role": "assistant", "content": "You are welcome."},
                                         {"role": "user", "content": "And tomorrow?"}], None),
    ("content-not-a-string", [{"role": "user", "content": [{"type": "text", "text": "hi"}]}], None),
    ("tool-result-as-dict", [USER, CALL, {"role": "tool", "content": {"temperature": 21}}], [WEATHER]),
    ("unicode-and-specials-in-text", [{"role": "user", "content": "ünïcödé 🦙 <|im_start|> text"}], None),
    ("empty-system", [{"role": "system", "content": ""}, USER], None),
]


@pytest.fixture(scope="module")
def model(tiny_f32):
    with load(tiny_f32, n_ctx=512, threads=1) as m:
        yield m


@pytest.fixture(scope="module")
def hf_tok(tiny_ckpt):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_ckpt)


@pytest.mark.parametrize("gen", [True, False], ids=["gen-prompt", "no-gen-prompt"])
@pytest.mark.parametrize("messages,tools", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_render_equals_transformers(model, hf_tok, messages, tools, gen):
    ours = model.render(messages, tools=tools, add_generation_prompt=gen)
    theirs = hf_tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=gen)
    assert ours == theirs
    assert model.tokenize(ours) == hf_tok(ours, add_special_tokens=False).input_ids


def test_render_shapes(model):
    """Spot checks of what the LFM2.5 format looks like, so that a parity test on two broken renderers cannot pass."""
    text = model.render([SYSTEM, USER], tools=[WEATHER])
    assert text.startswith("<|startoftext|><|im_start|>system\nYou are a careful assistant.\nList of tools: [{")
    assert json.dumps(WEATHER, ensure_ascii=False) in text  # tojson keeps «» and does not escape <, >, &
    assert text.endswith(f"<|im_end|>\n<|im_start|>user\n{USER['content']}<|im_end|>\n<|im_start|>assistant\n")
    stripped = model.render(CASES[8][1])
    assert "The user wants weather" not in stripped and "<|im_start|>assistant\nIt is 21 °C and clear.<|im_end|>" in stripped
    assert model.tokenize("<|im_start|>")[0] == 6 and model.tokenize(text)[0] == 1  # BOS comes from the template


def test_gguf_template_is_lfmqs_builtin(model):
    assert model.template_source == "gguf" and model.template == builtin_template()


def test_no_template_falls_back_to_builtin_with_one_warning(make_ckpt, tmp_path):
    ck = make_ckpt()
    cfg_path = ck / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    del cfg["chat_template"]
    cfg_path.write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = lfmq.convert(ck, tmp_path / "bare.gguf", outtype="f32").path
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with load(out, n_ctx=256, threads=1) as m:
            text = m.render([USER])
            m.render([SYSTEM, USER])
    ours = [w for w in caught if issubclass(w.category, LfmqWarning)]
    assert len(ours) == 1 and "no chat template" in str(ours[0].message) and "llama-2" in str(ours[0].message)
    assert m.template_source == "builtin" and m.warnings == (str(ours[0].message),)
    assert text == f"<|startoftext|><|im_start|>user\n{USER['content']}<|im_end|>\n<|im_start|>assistant\n"
    assert "[INST]" not in text


def test_template_errors_are_clear():
    with pytest.raises(TemplateError, match="does not compile"):
        render("{% if %}", [USER])
    refusing = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be the user') }}{% endif %}ok"
    assert render(refusing, [USER]) == "ok"
    with pytest.raises(TemplateError, match="refused these messages: first message must be the user"):
        render(refusing, [SYSTEM, USER])
    with pytest.raises(lfmq.LfmqError, match="must be a dict"):
        render(builtin_template(), ["hello"])


def test_generation_tag_and_globals_render_like_transformers(hf_tok):
    source = ("{% for m in messages %}{% generation %}{{ m.content | tojson }}{% endgeneration %}{% endfor %}"
              "{{ bos_token }}{{ strftime_now('%Y') | length }}{% set ns = namespace(n=1) %}{{ ns.n }}")
    ours = render(source, [USER], special_tokens={"bos_token": "<|startoftext|>"})
    theirs = hf_tok.apply_chat_template([USER], chat_template=source, tokenize=False)
    assert ours == theirs == json.dumps(USER["content"], ensure_ascii=False) + "<|startoftext|>41"
