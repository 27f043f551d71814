"""`lfmq eval --task`: task files read strictly, answers scored as documented, and on the trained fixture, task
agreement with the F16 that falls as the quantization gets cruder."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import lfmq
from conftest import run_cli
from lfmq.errors import InputError
from lfmq.quantize.eval import evaluate
from lfmq.quantize.tasks import TaskAnswer, calls_key, evaluate_tasks, load_tasks, score

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "lfm2-tools-tiny"
TASKS = FIXTURE / "tasks.jsonl"
WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"location": {"type": "string"}}}}
USER = [{"role": "user", "content": "Weather in Paris?"}]
CALL_CASE = {"messages": USER, "tools": [WEATHER], "expected": [{"name": "get_weather", "arguments": {"location": "Paris"}}]}
SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}}}
EXTRACT_CASE = {"messages": [{"role": "user", "content": "Ana is 3."}], "schema": SCHEMA,
                "expected": {"name": "Ana", "age": 3}}


def _write(tmp_path: Path, *lines: object) -> Path:
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


BAD_FILES = [
    (["{"], "tasks.jsonl:1: not JSON"),
    ([[1, 2]], "tasks.jsonl:1: a task case is a JSON object, not list"),
    ([{"tools": [WEATHER], "expected": []}], "'messages' must be a non-empty list"),
    ([{"messages": USER, "tools": [WEATHER]}], "has no 'expected' answer"),
    ([{**CALL_CASE, "schema": SCHEMA}], "give 'tools' or 'schema', not both"),
    ([{"messages": USER, "expected": []}], "needs 'tools'"),
    ([{**CALL_CASE, "expected": [{"arguments": {}}]}], "'expected' calls must be a list"),
    ([{**EXTRACT_CASE, "expected": []}], "needs a 'schema' object and an 'expected' object"),
    ([""], "holds no cases"),
    ([CALL_CASE, "", "nope"], "tasks.jsonl:3: not JSON"),
]


@pytest.mark.parametrize("lines, message", BAD_FILES)
def test_bad_task_files_name_the_line_and_the_fault(tmp_path, lines, message):
    with pytest.raises(InputError, match=re.escape(message)):
        load_tasks(_write(tmp_path, *lines))


def test_task_file_kinds(tmp_path):
    cases = load_tasks(_write(tmp_path, CALL_CASE, "", EXTRACT_CASE))
    assert [(c.line, c.kind) for c in cases] == [(1, "calls"), (3, "extract")]
    with pytest.raises(InputError, match="does not exist"):
        load_tasks(tmp_path / "missing.jsonl")


def test_calls_compare_as_json_values_in_any_order():
    a = [{"name": "f", "arguments": {"n": 3, "s": "x"}}, {"name": "g", "arguments": {}}]
    b = [{"name": "g", "arguments": {}}, {"name": "f", "arguments": {"s": "x", "n": 3.0}}]
    assert calls_key(a) == calls_key(b)
    assert calls_key(a) != calls_key([{"name": "f", "arguments": {"n": 3, "s": "y"}}])


def test_scores_against_expected_and_reference(tmp_path):
    cases = load_tasks(_write(tmp_path, CALL_CASE, CALL_CASE, EXTRACT_CASE, EXTRACT_CASE))
    right = calls_key(CALL_CASE["expected"])
    wrong = calls_key([{"name": "get_weather", "arguments": {"location": "Rome"}}])
    ref = [TaskAnswer(right, True, ""), TaskAnswer(wrong, True, ""),
           TaskAnswer({"name": "Ana", "age": 3}, True, ""), TaskAnswer({"name": "Ana", "age": 4}, True, "")]
    quant = [TaskAnswer((), False, "[get_weather(location=)"), TaskAnswer(right, True, ""),
             TaskAnswer({"name": "Ana", "age": 3}, True, ""), TaskAnswer(None, False, "output is not JSON")]
    r = score(cases, ref)
    assert (r.cases, r.call_cases, r.extract_cases) == (4, 2, 2)
    assert (r.correct, r.call_exact, r.call_well_formed) == (0.5, 0.5, 1.0)
    assert (r.schema_valid, r.field_agreement) == (1.0, 0.75)
    assert r.agreement is None and r.flips is None
    q = score(cases, quant, ref)
    assert (q.correct, q.call_exact, q.call_well_formed, q.schema_valid, q.field_agreement) == (0.5, 0.5, 0.5, 0.5, 0.5)
    assert (q.agreement, q.flips, q.lost, q.gained) == (0.25, 3, 1, 1)


# -- on the trained fixture ------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fixture_ladder(tmp_path_factory) -> dict[str, Path]:
    from lfmq.quantize import quantize

    folder = tmp_path_factory.mktemp("fixture-ladder")
    f16 = lfmq.convert(FIXTURE, folder / "fixture-F16.gguf", outtype="f16").path
    results = quantize(f16, "Q8_0,Q4_K_M,Q2_K", folder)
    return {"F16": f16, **{r.type: r.path for r in results}}


def test_task_agreement_falls_with_cruder_quants(fixture_ladder):
    """Q8_0 >= Q4_K_M >= Q2_K in agreement with the F16's own answers (and Q8_0 nearly always agrees)."""
    quants = ["Q8_0", "Q4_K_M", "Q2_K"]
    scores = evaluate_tasks([fixture_ladder[q] for q in quants], fixture_ladder["F16"], TASKS)
    ref, by = scores[0], dict(zip(quants, scores[1:]))
    assert ref.correct >= 0.9
    assert by["Q8_0"].agreement >= by["Q4_K_M"].agreement >= by["Q2_K"].agreement
    assert by["Q8_0"].agreement >= 0.95
    assert by["Q2_K"].flips > by["Q8_0"].flips  # the crudest quant changes answers the near-lossless one keeps
    for s in scores[1:]:
        assert s.flips == round((1 - s.agreement) * s.cases)
        assert s.correct - ref.correct == pytest.approx((s.gained - s.lost) / s.cases)


def test_eval_report_carries_task_scores(fixture_ladder, tmp_path):
    cases = [line for line in TASKS.read_text().splitlines() if line.strip()]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(cases[:12]) + "\n")
    rep = evaluate([fixture_ladder["Q8_0"]], fixture_ladder["F16"], task=subset, chunks=2, n_ctx=128)
    assert rep.task_file == "subset.jsonl" and 0 < rep.task_seconds < rep.seconds
    assert rep.reference.task.cases == rep.models[0].task.cases == 12
    assert rep.reference.task.agreement is None and rep.models[0].task.agreement is not None


def test_cli_eval_task_json_and_table(fixture_ladder, tmp_path):
    cases = [line for line in TASKS.read_text().splitlines() if line.strip()]
    subset = tmp_path / "subset.jsonl"
    subset.write_text("\n".join(cases[:6]) + "\n")
    args = ["eval", str(fixture_ladder["Q4_K_M"]), "-r", str(fixture_ladder["F16"]), "--task", str(subset),
            "--chunks", "1", "-c", "128"]
    res = run_cli(*args, "--json")
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    task = body["models"][0]["task"]
    assert set(task) == {"cases", "correct", "call_cases", "call_exact", "call_well_formed", "extract_cases",
                         "schema_valid", "field_agreement", "agreement", "flips", "lost", "gained", "seconds"}
    assert body["reference"]["task"]["agreement"] is None and body["task_file"] == "subset.jsonl"
    res = run_cli(*args)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines()[0].split()[-6:] == ["task", "ok", "calls", "fields", "same", "answer"]
    assert res.stdout.splitlines()[2].split()[0] == "Q4_K_M" and "flips)" in res.stdout.splitlines()[2]
    assert "6 task cases (subset.jsonl:" in res.stdout


def test_cli_eval_bad_task_file_is_one_line(fixture_ladder, tmp_path):
    bad = _write(tmp_path, {"messages": USER})
    res = run_cli("eval", str(fixture_ladder["Q8_0"]), "-r", str(fixture_ladder["F16"]), "--task", str(bad))
    assert res.returncode == 1
    assert res.stderr.strip() == "error: tasks.jsonl:1: the case has no 'expected' answer"
