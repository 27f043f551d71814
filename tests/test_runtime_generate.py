"""load() and stream_generate(): settings and profiles, errors, chunks, sampling defaults and seeds, limits."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from lfmq.errors import GGUFFileError, ModelNotFoundError, UsageError
from lfmq.runtime import Sampling, generate, load, stream_generate
from lfmq.errors import ContextOverflowError, LlamaError, StateError


@pytest.fixture(scope="module")
def model(tiny_f32):
    with load(tiny_f32, threads=1) as m:
        yield m


def test_load_sets_context_explicitly(model):
    assert model.n_ctx == 4096 and model.n_ctx_train == 128000  # not the metadata's 128000
    assert model.settings.threads == 1 and model.settings.n_batch == 512
    assert model.template_source == "gguf" and model.synthetic and model.architecture == "lfm2"
    assert model.special_tokens == {"bos_token": "<|startoftext|>", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}


def test_profile_knobs_apply_and_explicit_arguments_win(tiny_f32, tmp_path):
    knobs = {"n_ctx": 1024, "threads": 1, "n_batch": 64, "n_ubatch": 32, "use_mmap": False, "flash_attn": "off"}
    with load(tiny_f32, profile=knobs) as m:
        assert (m.n_ctx, m.settings.n_batch, m.settings.n_ubatch, m.settings.use_mmap, m.settings.flash_attn) == \
            (1024, 64, 32, False, False)
    path = tmp_path / "device.json"
    path.write_text(json.dumps({"name": "test", "runtime": {"n_ctx": 512, "threads": 1}}))
    with load(tiny_f32, profile=str(path), n_ctx=256) as m:
        assert (m.n_ctx, m.settings.threads) == (256, 1)
    with load(tiny_f32, profile=SimpleNamespace(runtime={"n_ctx": 768, "threads": 1})) as m:  # lfmq.devices' shape
        assert m.n_ctx == 768
    with pytest.raises(UsageError, match="unknown runtime knob.*n_gpu"):
        load(tiny_f32, profile={"n_gpu": 3})


@pytest.mark.parametrize("kwargs,message", [
    ({"n_ctx": 200000}, "n_ctx=200000: choose 64 to 128000"),
    ({"n_ctx": 8}, "n_ctx=8"),
    ({"type_k": "q9_9"}, "unknown cache type 'q9_9'"),
])
def test_bad_settings(tiny_f32, kwargs, message):
    with pytest.raises(UsageError, match=message):
        load(tiny_f32, **kwargs)


def test_other_architectures_are_refused(tmp_path):
    import gguf

    from lfmq.errors import UnsupportedModelError

    path = tmp_path / "llama.gguf"
    writer = gguf.GGUFWriter(path, "llama")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(UnsupportedModelError, match="holds a 'llama' model: lfmq runs lfm2, lfm2moe"):
        load(path)


def test_bad_files(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        load(tmp_path / "absent.gguf")
    junk = tmp_path / "junk.gguf"
    junk.write_text("not a model")
    with pytest.raises(GGUFFileError, match="not a GGUF"):
        load(junk)


def test_sampling_defaults_are_liquids():
    s = Sampling()
    assert (s.temperature, s.top_k, s.repeat_penalty, s.top_p, s.min_p, s.seed) == (0.1, 50, 1.05, 1.0, 0.0, None)


def test_chunks_carry_text_tokens_and_stats(model):
    prompt = model.render([{"role": "user", "content": "Hello there"}])
    chunks = list(stream_generate(model, prompt, max_tokens=12, seed=3))
    *tokens, last = chunks
    assert len(tokens) == 12 and all(len(c.tokens) == 1 and c.stats is None for c in tokens)
    assert last.tokens == () and last.stats is not None
    assert [c.seconds for c in chunks] == sorted(c.seconds for c in chunks)
    ids = [t for c in chunks for t in c.tokens]
    assert "".join(c.text for c in chunks) == model.detokenize(ids)
    s = last.stats
    assert (s.prompt_tokens, s.generated_tokens, s.finish_reason) == (len(model.tokenize(prompt)), 12, "length")
    assert model.state == tuple(model.tokenize(prompt) + ids)  # every yielded token is in the context


def test_seed_makes_runs_reproducible(model):
    prompt = model.render([{"role": "user", "content": "Tell me something"}])
    a = generate(model, prompt, max_tokens=24, seed=7, temperature=1.0)
    b = generate(model, prompt, max_tokens=24, seed=7, temperature=1.0)
    c = generate(model, prompt, max_tokens=24, seed=8, temperature=1.0)
    assert a.tokens == b.tokens and a.text == b.text
    assert a.tokens != c.tokens


def test_greedy_takes_the_argmax(model):
    tokens = model.tokenize(model.render([{"role": "user", "content": "argmax please"}]))
    model.reset()
    model.sync(tokens)
    best = int(np.argmax(model.logits()))
    out = generate(model, tokens, max_tokens=1, temperature=0, repeat_penalty=1.0, ignore_eos=True)
    assert out.tokens == (best,)


def test_raw_prompt_gets_one_bos(model):
    generate(model, "plain text", max_tokens=1)
    assert model.state[:2] == (1, model.tokenize("plain text")[0])
    generate(model, "<|startoftext|>plain text", max_tokens=1)
    assert model.state[0] == 1 and model.state[1] != 1


def test_interrupt_is_polled_before_each_token(model):
    prompt = model.render([{"role": "user", "content": "go"}])
    chunks = list(stream_generate(model, prompt, interrupt=lambda: True))
    assert len(chunks) == 1 and chunks[0].stats.finish_reason == "interrupted" and chunks[0].stats.generated_tokens == 0
    seen: list = []
    for chunk in stream_generate(model, prompt, ignore_eos=True, interrupt=lambda: len(seen) >= 5):
        seen.append(chunk)
    assert seen[-1].stats.finish_reason == "interrupted" and seen[-1].stats.generated_tokens == 5


def test_context_limits(tiny_f32):
    with load(tiny_f32, n_ctx=256, threads=1) as small:
        with pytest.raises(ContextOverflowError, match="the prompt is .* tokens and the context holds 256"):
            generate(small, "word " * 300)
        out = generate(small, "hello", ignore_eos=True)  # no max_tokens: the window is the limit
        assert out.stats.finish_reason == "context" and small.n_past == 256


def test_bad_arguments(model):
    with pytest.raises(UsageError, match="unknown sampling option.*temprature"):
        generate(model, "x", temprature=0.5)
    with pytest.raises(UsageError, match="max_tokens must be at least 1"):
        generate(model, "x", max_tokens=0)
    with pytest.raises(LlamaError, match="rejected the grammar"):
        generate(model, "x", grammar="root ::= nonsense (")


def test_interleaved_streams_are_refused(model):
    first = stream_generate(model, "one", max_tokens=5, ignore_eos=True)
    next(first)
    generate(model, "two", max_tokens=2)
    with pytest.raises(StateError, match="another generation used this model in between"):
        list(first)


def test_closed_model_says_so(tiny_f32):
    m = load(tiny_f32, n_ctx=128, threads=1)
    m.close()
    with pytest.raises(StateError, match="is closed"):
        generate(m, "x", max_tokens=1)
