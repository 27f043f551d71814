"""`lfmq generate` and `lfmq extract` as a script would use them: exact output, exit codes, one-line errors, and an
extraction batch that survives bad items and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import jsonschema
import pytest

from conftest import run_cli

SCHEMA = {"type": "object", "required": ["name", "age", "pets"], "properties": {
    "name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"},
    "pets": {"type": "array", "maxItems": 3, "items": {"enum": ["dog", "cat", "fish"]}}}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather for a city", "parameters": {
    "type": "object", "properties": {"location": {"type": "string", "maxLength": 16}}, "required": ["location"]}}}]
RUN = ("--threads", "1", "--seed", "3")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "tools.json").write_text(json.dumps(TOOLS))
    (tmp_path / "a.txt").write_text("Ann is 31 and has a dog.")
    (tmp_path / "b.txt").write_text("Bo, 7, owns two cats and a fish.")
    return tmp_path


def test_generate_streams_the_same_text_json_reports(tiny_f32):
    as_json = run_cli("generate", str(tiny_f32), "-p", "Hello", "--max-tokens", "8", *RUN, "--json")
    assert as_json.returncode == 0, as_json.stderr
    reply = json.loads(as_json.stdout)
    assert set(reply) == {"text", "content", "tool_calls", "tool_error", "stats"}
    assert reply["stats"]["generated_tokens"] == 8 and reply["stats"]["finish_reason"] == "length"
    plain = run_cli("generate", str(tiny_f32), "-p", "Hello", "--max-tokens", "8", *RUN)
    assert plain.returncode == 0 and plain.stdout == reply["text"] + "\n"
    assert "RANDOM weights" in plain.stderr and plain.stderr.endswith("[cut: max_tokens reached]\n")


def test_generate_forced_tool_call(tiny_f32, files):
    r = run_cli("generate", str(tiny_f32), "-p", "Weather in Oslo?", "--tools", str(files / "tools.json"),
                "--tool-choice", "required", *RUN, "--json")
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert [c["name"] for c in reply["tool_calls"]] == ["get_weather"] and reply["tool_error"] is None
    assert reply["text"].startswith("<|tool_call_start|>[get_weather(location=")


def test_extract_writes_one_valid_line_per_input(tiny_f32, files):
    out = files / "out" / "result.jsonl"
    r = run_cli("extract", str(tiny_f32), "--schema", str(files / "schema.json"), str(files / "a.txt"),
                str(files / "b.txt"), "-o", str(out), *RUN)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "" and r.stderr.endswith(f"extracted 2 of 2 inputs (0 failed) -> {out}\n")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["source"] for line in lines] == [str(files / "a.txt"), str(files / "b.txt")]
    for line in lines:
        jsonschema.validate(line["data"], SCHEMA)
    again = run_cli("extract", str(tiny_f32), "--schema", str(files / "schema.json"), str(files / "a.txt"), "-o", str(out))
    assert (again.returncode, again.stderr) == (1, f"error: {out} exists: pass --force to overwrite it\n")


def test_extract_from_stdin_lines_with_a_bad_item(tiny_f32, files):
    r = subprocess.run([sys.executable, "-m", "lfmq", "extract", str(tiny_f32), "--schema", str(files / "schema.json"),
                        "--lines", "-", str(files / "missing.txt"), *RUN],
                       input="Ann is 31.\n\nBo is 7.\n", capture_output=True, text=True, timeout=300)
    assert r.returncode == 1
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["source"] for line in lines] == ["<stdin>:1", "<stdin>:3", str(files / "missing.txt")]
    assert lines[2] == {"source": str(files / "missing.txt"),
                        "error": f"cannot read {files / 'missing.txt'}: No such file or directory"}
    assert r.stderr.endswith("extracted 2 of 3 inputs (1 failed) -> <stdout>\n"
                             "error: 1 of 3 inputs failed: the 'error' field of their lines says why\n")


@pytest.mark.parametrize("args,code,message", [
    (["generate", "{tmp}/absent.gguf", "-p", "x"], 1, "error: {tmp}/absent.gguf does not exist\n"),
    (["generate", "{tmp}/a.txt", "-p", "x"], 1, "error: {tmp}/a.txt is not a GGUF file (it does not start with 'GGUF')\n"),
    (["extract", "{model}", "--schema", "{tmp}/bad.json", "{tmp}/a.txt"], 1,
     "error: schema {tmp}/bad.json is not JSON (line 1 column 2: Expecting property name enclosed in double quotes)\n"),
    (["extract", "{model}", "--schema", "{tmp}/notschema.json", "{tmp}/a.txt"], 1,
     "error: {tmp}/notschema.json is not a valid JSON Schema at type: 'strnig' is not valid under any of the given schemas\n"),
    (["extract", "{model}", "--schema", "{tmp}/absent.json", "{tmp}/a.txt"], 1,
     "error: cannot read schema {tmp}/absent.json: No such file or directory\n"),
    (["chat", "{model}", "--tools", "{tmp}/a.txt"], 1,
     "error: tools file {tmp}/a.txt is not JSON: Expecting value: line 1 column 1 (char 0)\n"),
    (["generate", "{model}", "-p", "x", "--tool-choice", "maybe", "--tools", "{tmp}/tools.json"], 2,
     "error: tool_choice must be one of auto, required, none, not 'maybe'\n"),
    (["generate", "{model}", "-p", "x", "--raw", "--system", "s"], 2,
     "error: --raw sends the prompt without the chat template: drop --tools and --system, or --raw\n"),
    (["generate", "{model}", "-p", "x", "--n-ctx", "999999"], 2,
     "error: n_ctx=999999: choose 64 to 128000 (the model is trained for 32768)\n"),
    (["chat", "{model}", "--profile", "{tmp}/a.txt"], 1, "error: profile {tmp}/a.txt does not parse: "),
])
def test_errors_are_one_line(tiny_f32, files, args, code, message):
    (files / "bad.json").write_text("{oops")
    (files / "notschema.json").write_text('{"type": "strnig"}')
    fill = {"tmp": files, "model": tiny_f32}
    r = run_cli(*[a.format(**fill) for a in args])
    assert r.returncode == code
    tail = r.stderr.splitlines(keepends=True)[-1]
    assert tail.startswith(message.format(**fill)) and "Traceback" not in r.stderr


def test_ctrl_c_keeps_every_line_already_written(tiny_f32, files):
    """Interrupt a long batch: the lines written so far are kept, each one whole, and the exit code says interrupted."""
    (files / "many.txt").write_text("".join(f"Person {i} is {i % 90} years old and has a cat.\n" for i in range(3000)))
    out = files / "partial.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "lfmq", "extract", str(tiny_f32), "--schema", str(files / "schema.json"),
                             "--lines", str(files / "many.txt"), "-o", str(out), *RUN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ})
    partial = files / f".{out.name}.{proc.pid}.partial"  # written beside the output, renamed at the end
    deadline = time.monotonic() + 120
    while (not partial.exists() or partial.read_text().count("\n") < 3) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not out.exists()  # the output appears whole or not at all
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert not partial.exists()
    text = out.read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    assert 3 <= len(lines) < 3000
    assert [line["source"] for line in lines] == [f"{files / 'many.txt'}:{i + 1}" for i in range(len(lines))]
    assert all("data" in line for line in lines)
    assert stderr.endswith(f"warning: interrupted after {len(lines)} of 3000 inputs: their lines are in {out}\n")
