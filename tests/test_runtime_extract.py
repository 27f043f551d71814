"""Schema-constrained extraction: from a random-weight model, every finished output parses and validates against its
schema (nested objects, arrays, enums, numbers, ...); bad schemas and unreadable inputs are clear errors."""

from __future__ import annotations

import io
import json

import jsonschema
import pytest

from lfmq.runtime import extract, extract_many, load, load_schema
from lfmq.errors import ExtractionFailed, OutputExistsError, SchemaError, UsageError
from lfmq.runtime.extract import ExtractionInterrupted, ExtractSummary, Input, extract_files, read_inputs

TEXTS = ["Invoice 2024-118 from ACME Corp: 3 widgets at 19.99 EUR, paid on 2024-05-02 by Jane Roe.",
         "Bob (42) adopted a dog named Rex in Oslo; he also has two cats.",
         "No data here at all."]

# id, schema: strings carry maxLength and arrays maxItems, so that a random model must finish within max_tokens
SCHEMAS = [
    ("flat", {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"]}),
    ("nested-objects", {"type": "object", "required": ["buyer", "seller"], "properties": {
        "buyer": {"type": "object", "required": ["name", "address"], "properties": {
            "name": {"type": "string", "maxLength": 12},
            "address": {"type": "object", "required": ["city", "zip"], "properties": {
                "city": {"type": "string", "maxLength": 10}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}}}}},
        "seller": {"type": "object", "required": ["name"], "properties": {"name": {"type": "string", "maxLength": 12}}}}}),
    ("arrays", {"type": "object", "required": ["items", "tags"], "properties": {
        "items": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
            "type": "object", "required": ["sku", "qty", "price"], "properties": {
                "sku": {"type": "string", "maxLength": 8}, "qty": {"type": "integer"}, "price": {"type": "number"}}}},
        "tags": {"type": "array", "maxItems": 4, "items": {"type": "string", "maxLength": 6}}}}),
    ("enums-and-consts", {"type": "object", "required": ["animal", "mood", "kind"], "properties": {
        "animal": {"enum": ["dog", "cat", "bird", None]}, "mood": {"type": "string", "enum": ["happy", "sad"]},
        "kind": {"const": "pet"}}}),
    ("numbers-and-booleans", {"type": "object", "required": ["total", "count", "paid", "ratio"], "properties": {
        "total": {"type": "number"}, "count": {"type": "integer"}, "paid": {"type": "boolean"},
        "ratio": {"type": ["number", "null"]}}}),
    ("refs-formats-optional", {"$defs": {"money": {"type": "object", "required": ["amount", "currency"], "properties": {
        "amount": {"type": "number"}, "currency": {"enum": ["EUR", "USD"]}}}},
        "type": "object", "required": ["id", "date", "price"], "properties": {
            "id": {"type": "string", "format": "uuid"}, "date": {"type": "string", "format": "date"},
            "price": {"$ref": "#/$defs/money"}, "note": {"type": "string", "maxLength": 10}}}),
    ("top-level-array", {"type": "array", "maxItems": 3, "items": {"type": "integer"}}),
]


@pytest.fixture(scope="module")
def model(tiny_f32):
    with load(tiny_f32, threads=1) as m:
        yield m


@pytest.mark.parametrize("schema", [s for _, s in SCHEMAS], ids=[i for i, _ in SCHEMAS])
def test_outputs_parse_and_validate(model, schema):
    spec = load_schema(schema)
    for seed in range(2):
        for text in TEXTS:
            result = extract(model, text, spec, seed=seed, temperature=0.8, max_tokens=400)
            assert result.ok, result.error
            jsonschema.validate(result.data, schema)  # independently of lfmq's own check
            line = json.loads(result.to_json_line())
            assert line == {"source": "<text>", "data": result.data}


def test_unenforced_keywords_are_listed_and_still_checked(model):
    schema = {"type": "object", "required": ["n", "s"], "properties": {
        "n": {"type": "integer", "minimum": 10**30}, "s": {"type": "string", "format": "email", "maxLength": 5},
        "minimum": {"type": "string", "maxLength": 3}}}  # a property named like a keyword is not a keyword
    spec = load_schema(schema)
    assert spec.unenforced == ("format: email", "minimum")
    result = extract(model, "anything", spec, seed=0)
    assert not result.ok and result.data is None
    assert result.error == "output breaks the schema at $.n: " + result.error.split("$.n: ")[1]
    assert "is less than the minimum" in result.error


def test_truncated_output_is_an_error_not_broken_json(model):
    schema = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}
    result = extract(model, "write a lot", schema, max_tokens=6, seed=0)
    assert not result.ok and "did not finish the JSON (length, max_tokens=6)" in result.error
    assert json.loads(result.to_json_line()) == {"source": "<text>", "error": result.error}


def test_shared_system_prompt_is_evaluated_once(model):
    from lfmq.runtime.extract import _Prompter

    spec = load_schema(SCHEMAS[0][1])
    first = list(extract_many(model, [Input("a", TEXTS[0])], spec, seed=0))
    start = model.evaluated
    outputs = list(extract_many(model, [Input(f"t{i}", t) for i, t in enumerate(TEXTS)], spec, seed=0))
    prompter = _Prompter(model, spec, None)
    shared = prompter(TEXTS[0])[1]
    assert shared > len(model.tokenize(json.dumps(spec.schema)))  # the system prompt carries the schema
    # each input costs its own user turn and its answer: the system prompt comes back from a state snapshot
    assert model.evaluated - start == sum(len(prompter(t)[0]) - shared + o.tokens for t, o in zip(TEXTS, outputs))
    assert [o.source for o in first + outputs] == ["a", "t0", "t1", "t2"] and all(o.ok for o in outputs)
    assert outputs[0].data == first[0].data  # restoring the snapshot answers as evaluating afresh did


@pytest.mark.parametrize("content,message", [
    ("{not json", "is not JSON (line 1 column 2"),
    ('{"type": "strnig"}', "is not a valid JSON Schema at type"),
    ('{"type": "object", "required": "name"}', "is not a valid JSON Schema at required"),
    ("[1, 2]", "a schema must be a JSON object, not list"),
    ('{"type": "string", "pattern": "[0-9]+"}', 'cannot turn this schema into a grammar (AssertionError: Pattern must start'),
    ('{"properties": {"a": {"$ref": "#/$defs/nope"}}}', "cannot turn this schema into a grammar"),
    ('{"$ref": "https://example.com/s.json"}', "cannot turn this schema into a grammar"),
])
def test_bad_schemas(tmp_path, content, message):
    path = tmp_path / "schema.json"
    path.write_text(content)
    with pytest.raises(SchemaError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_schema(path)


def test_missing_schema_file(tmp_path):
    with pytest.raises(SchemaError, match="cannot read schema .*absent.json: No such file"):
        load_schema(tmp_path / "absent.json")


def test_read_inputs(tmp_path):
    (tmp_path / "a.txt").write_text("first\n\nsecond line\n")
    (tmp_path / "bad.bin").write_bytes(b"\xff\xfe\x00garbage")
    (tmp_path / "dir").mkdir()
    items = read_inputs([tmp_path / "a.txt", tmp_path / "bad.bin", tmp_path / "dir", tmp_path / "absent.txt"])
    assert [(i.source.replace(str(tmp_path) + "/", ""), i.text, i.error and i.error.replace(str(tmp_path) + "/", ""))
            for i in items] == [
        ("a.txt", "first\n\nsecond line\n", None),
        ("bad.bin", None, "bad.bin is not UTF-8 text"),
        ("dir", None, "cannot read dir: Is a directory"),
        ("absent.txt", None, "cannot read absent.txt: No such file or directory"),
    ]
    lines = read_inputs([tmp_path / "a.txt"], lines=True)
    assert [(i.source.split("/")[-1], i.text) for i in lines] == [("a.txt:1", "first"), ("a.txt:3", "second line")]


def test_unreadable_inputs_do_not_stop_the_batch(model, tmp_path):
    (tmp_path / "ok.txt").write_text(TEXTS[1])
    items = read_inputs([tmp_path / "missing.txt", tmp_path / "ok.txt"])
    results = list(extract_many(model, items, SCHEMAS[0][1], seed=1))
    assert [r.ok for r in results] == [False, True]
    assert results[0].error.endswith("missing.txt: No such file or directory")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _never() -> None:
    raise AssertionError("the model was opened before the cheap checks")


def test_extract_files_checks_schema_output_and_inputs_before_the_model(tmp_path):
    (tmp_path / "a.txt").write_text(TEXTS[1])
    (tmp_path / "out.jsonl").write_text("precious")
    schema = SCHEMAS[0][1]
    with pytest.raises(SchemaError):
        extract_files(_never, [tmp_path / "a.txt"], tmp_path / "absent.json")
    with pytest.raises(OutputExistsError, match="pass --force"):
        extract_files(_never, [tmp_path / "a.txt"], schema, tmp_path / "out.jsonl")
    with pytest.raises(UsageError, match="no input: give text files, or pipe text into stdin"):
        extract_files(_never, [], schema, stdin=_Terminal())
    assert (tmp_path / "out.jsonl").read_text() == "precious"


def test_extract_files_to_a_file_and_to_stdout(model, tmp_path):
    (tmp_path / "ok.txt").write_text(TEXTS[1])
    out = tmp_path / "sub" / "out.jsonl"
    summary = extract_files(model, [tmp_path / "missing.txt", tmp_path / "ok.txt"], SCHEMAS[0][1], out, seed=1)
    assert summary == ExtractSummary(total=2, ok=1, failed=1, output=str(out))
    assert [json.loads(line)["source"] for line in out.read_text().splitlines()] == [
        str(tmp_path / "missing.txt"), str(tmp_path / "ok.txt")]
    with pytest.raises(ExtractionFailed, match="1 of 2 inputs failed"):
        summary.check()
    stdout = io.StringIO()
    summary = extract_files(model, ["-"], SCHEMAS[0][1], lines=True, stdin=io.StringIO("Ann, 31\n\nBo, 7\n"),
                            stdout=stdout, seed=1)
    assert summary.check() == ExtractSummary(2, 2, 0, "<stdout>")
    assert [json.loads(line)["source"] for line in stdout.getvalue().splitlines()] == ["<stdin>:1", "<stdin>:3"]
    assert model.n_ctx  # a Model passed in stays open


def test_extract_files_interrupted_keeps_the_finished_lines(model, tmp_path):
    (tmp_path / "many.txt").write_text("Ann, 31\nBo, 7\nCy, 50\n")
    out = tmp_path / "out.jsonl"

    def ctrl_c_after_two(what: str, done: int, total: int) -> None:
        if done == 2:
            raise KeyboardInterrupt

    with pytest.raises(ExtractionInterrupted) as caught:
        extract_files(model, [tmp_path / "many.txt"], SCHEMAS[0][1], out, lines=True, seed=1, progress=ctrl_c_after_two)
    assert isinstance(caught.value, KeyboardInterrupt) and (caught.value.done, caught.value.total) == (2, 3)
    assert str(caught.value) == f"interrupted after 2 of 3 inputs: their lines are in {out}"
    assert [json.loads(line)["source"].split("/")[-1] for line in out.read_text().splitlines()] == [
        "many.txt:1", "many.txt:2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["many.txt", "out.jsonl"]
