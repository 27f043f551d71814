"""Batched extraction (issue 13 item 2): N inputs decoded as N sequences of one context, each under its own grammar,
give what one input at a time gives; where a token differs (batched kernels round differently), the two candidates
were a near-tie. When llama.cpp cannot hold N sequences, a warning quotes it and the inputs go one at a time."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest

import lfmq
from conftest import run_cli
from lfmq.errors import LfmqWarning, UsageError
from lfmq.runtime import extract_many, load, load_schema
from lfmq.runtime.batch import Job, generate_many
from lfmq.runtime.extract import Input, _banned, _Prompter
from lfmq.runtime.generate import generate, resolve_sampling

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lfm2-tools-tiny"
GREEDY = {"temperature": 0.0, "repeat_penalty": 1.0, "seed": 0}
SCHEMA = {"type": "object", "required": ["name", "age"], "properties": {
    "name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}}}
TEXTS = [f"{name} is {age} years old and lives in {city}." * (1 + i % 3)
         for i, (name, age, city) in enumerate([("Ann Lee", 31, "Oslo"), ("Bo", 7, "Rome"), ("Cy Varga", 50, "Lima"),
                                                 ("Di", 19, "Kyiv"), ("Ed Moss", 64, "Bern"), ("Flo", 42, "Nice")])]


@pytest.fixture(scope="module")
def tiny(tiny_f32):
    with load(tiny_f32, threads=1, n_ctx=512) as m:
        yield m


def _cases(n: int) -> tuple[dict, list[str], list[dict]]:
    """The trained fixture's held-out extraction cases of people (name, age, city): the schema, n texts, answers."""
    cases = [json.loads(line) for line in (FIXTURE / "tasks.jsonl").read_text().splitlines() if '"schema"' in line]
    people = [c for c in cases if set(c["schema"]["properties"]) == {"name", "age", "city"}][:n]
    return people[0]["schema"], [c["messages"][-1]["content"] for c in people], [c["expected"] for c in people]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = lfmq.convert(FIXTURE, tmp_path_factory.mktemp("fixture") / "fixture-F16.gguf", outtype="f16").path
    with load(path, threads=2, n_ctx=512) as m:
        yield m


def _gap(model, prompt: list[int], a: int, b: int) -> float:
    """|logit(a) - logit(b)| after prompt, decoded as one sequence."""
    model.reset()
    model.sync(prompt)
    logits = model.logits()
    return float(abs(logits[a] - logits[b]))


def test_batched_tokens_are_the_sequential_tokens_or_a_near_tie(trained):
    schema, texts, expected = _cases(8)
    spec, prompter = load_schema(schema), _Prompter(trained, load_schema(schema), None)
    sampling, ban = resolve_sampling(None, **GREEDY), _banned(trained)
    prompts = [prompter(t) for t in texts]
    alone = [generate(trained, tokens, grammar=spec.grammar, ban_tokens=ban, max_tokens=80, snapshot_at=shared,
                      **GREEDY).tokens for tokens, shared in prompts]
    jobs = [Job(tuple(tokens), sampling, spec.grammar, ban, 80) for tokens, _ in prompts]
    done = list(generate_many(trained, jobs, 4, prefix=prompter.prefix))
    together = [d.tokens for d in done]
    assert trained.n_seq == 4 and len(together) == len(alone)
    same = 0
    for (tokens, _), a, b in zip(prompts, alone, together):
        if a == b:
            same += 1
            continue
        k = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
        gap = _gap(trained, tokens + list(a[:k]), a[k], b[k])
        assert gap < 1e-2, f"token {k} differs ({a[k]} alone, {b[k]} batched) with a logit gap of {gap}"
    assert same >= len(alone) - 2
    # the trained model fills the schema: the outputs are the expected answers, not grammar-shaped noise
    assert [d.finish for d in done] == ["stop"] * len(done)
    assert sum(json.loads(trained.detokenize(t)) == e for t, e in zip(together, expected)) >= 6


def test_extract_many_parallel_equals_one_at_a_time(trained):
    schema, texts, _ = _cases(6)
    items = [Input(f"t{i}", t) for i, t in enumerate(texts)]
    items.insert(2, Input("unreadable", None, "cannot read unreadable: No such file or directory"))
    items.insert(4, Input("long", "word " * 600))  # more than n_ctx=512 tokens: an item error, in its place
    alone = list(extract_many(trained, items, schema, max_tokens=80, **GREEDY))
    together = list(extract_many(trained, items, schema, max_tokens=80, parallel=3, **GREEDY))
    assert [r.source for r in together] == [i.source for i in items]
    assert [(r.data, r.error, r.tokens) for r in together] == [(r.data, r.error, r.tokens) for r in alone]
    assert together[2].error == "cannot read unreadable: No such file or directory"
    assert together[4].error.startswith("the prompt is ") and "the context holds 512" in together[4].error
    assert sum(r.ok for r in together) >= 5


def test_sampled_and_cut_outputs_match_too(tiny):
    """Seeded sampling draws the same per input, and a max_tokens cut is the same item error."""
    items = [(f"t{i}", t) for i, t in enumerate(TEXTS)]
    for knobs in ({"temperature": 0.8, "seed": 3, "max_tokens": 60}, {"temperature": 0.0, "max_tokens": 9}):
        alone = list(extract_many(tiny, items, SCHEMA, **knobs))
        together = list(extract_many(tiny, items, SCHEMA, parallel=4, **knobs))
        assert [(r.source, r.data, r.error) for r in together] == [(r.source, r.data, r.error) for r in alone]
    assert all(r.error and "did not finish the JSON (length, max_tokens=9)" in r.error for r in together)


def test_model_is_usable_after_a_batch(tiny):
    before = generate(tiny, "Hello there", max_tokens=8, **GREEDY).tokens
    list(extract_many(tiny, [("a", TEXTS[0]), ("b", TEXTS[1])], SCHEMA, parallel=2, max_tokens=40))
    assert tiny.n_seq >= 2 and tiny.n_ctx == 512
    assert generate(tiny, "Hello there", max_tokens=8, **GREEDY).tokens == before


def test_fallback_when_llama_cpp_cannot_hold_the_sequences(tiny):
    """llama.cpp holds at most 256 sequences: asked for more, it refuses, the warning says so, one at a time."""
    items = [(f"t{i}", t) for i, t in enumerate(TEXTS[:3])]
    alone = list(extract_many(tiny, items, SCHEMA, max_tokens=60, **GREEDY))
    n_seq = tiny.n_seq
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        together = list(extract_many(tiny, items, SCHEMA, max_tokens=60, parallel=300, **GREEDY))
    messages = [str(w.message) for w in caught if issubclass(w.category, LfmqWarning)]
    assert len(messages) == 1
    assert messages[0].startswith(f"llama.cpp cannot hold 300 sequences of {tiny.path.name}: ")
    assert "n_seq_max must be <= 256" in messages[0] and messages[0].endswith(": extracting one input at a time")
    assert [(r.data, r.error) for r in together] == [(r.data, r.error) for r in alone]
    assert tiny.n_seq == n_seq  # the old context is back


@pytest.mark.parametrize("bad", [0, -2, True, 1.5])
def test_bad_parallel_is_a_usage_error(tiny, bad):
    with pytest.raises(UsageError, match=f"parallel must be a whole number of at least 1, not {bad!r}"):
        next(extract_many(tiny, [("a", "x")], SCHEMA, parallel=bad))


@pytest.mark.parametrize("bad", ["0", "-3"])
def test_cli_bad_parallel_exits_2_before_loading(tmp_path, bad):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "a.txt").write_text("Ann is 31.")
    out = tmp_path / "out.jsonl"
    r = run_cli("extract", str(tmp_path / "absent.gguf"), "--schema", str(tmp_path / "schema.json"),
                str(tmp_path / "a.txt"), "--parallel", bad, "-o", str(out))
    assert (r.returncode, r.stderr) == (2, f"error: parallel must be a whole number of at least 1, not {bad}\n")
    assert not out.exists()


def test_cli_parallel_writes_the_same_lines(tiny_f32, tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n")
    outs = []
    for n in ("1", "3"):
        out = tmp_path / f"out{n}.jsonl"
        r = run_cli("extract", str(tiny_f32), "--schema", str(tmp_path / "schema.json"), "--lines",
                    str(tmp_path / "in.txt"), "--parallel", n, "--temperature", "0", "-o", str(out), "-c", "512")
        assert r.returncode == 0, r.stderr
        assert r.stderr.endswith(f"extracted {len(TEXTS)} of {len(TEXTS)} inputs (0 failed) -> {out}\n")
        outs.append(out.read_text())
    assert outs[0] == outs[1] and outs[0].count("\n") == len(TEXTS)


def test_generate_many_rejects_a_bad_parallel(tiny):
    with pytest.raises(UsageError):
        next(generate_many(tiny, [Job((1, 2, 3))], 0))
