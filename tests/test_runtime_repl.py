"""`lfmq chat` driven through a real pseudo-terminal (pexpect): streamed answers, /commands, Ctrl-C stops the
answer and not the session, Ctrl-D and /exit leave cleanly."""

from __future__ import annotations

import json
import os
import re
import sys

import pexpect
import pytest

PROMPT = "> "
STATS = re.compile(r"prompt (\d+) tokens \((\d+) evaluated, (\d+) reused\).*?answer (\d+) tokens.*?tok/s \((\w+)\)")


def spawn(*args: str) -> pexpect.spawn:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    env.pop("LFMQ_DEBUG", None)
    child = pexpect.spawn(sys.executable, ["-m", "lfmq", "chat", *args, "--threads", "1"], env=env,
                          encoding="utf-8", timeout=60, dimensions=(50, 200))
    child.expect_exact("/reset  /system [TEXT]  /tool RESULT  /stats  /exit")
    child.startup = child.before  # what came before the help line: the model line and its warnings
    child.expect_exact(PROMPT)
    return child


def turn_cost(model_path, role: str, content: str) -> int:
    """Prompt tokens a turn should evaluate when the conversation so far is already in the context."""
    from lfmq.runtime import load

    with load(model_path, n_ctx=256, threads=1) as m:
        return len(m.tokenize(f"<|im_end|>\n<|im_start|>{role}\n{content}<|im_end|>\n<|im_start|>assistant\n"))


def stats(child: pexpect.spawn) -> tuple[int, int, int, int, str]:
    child.sendline("/stats")
    child.expect(STATS)
    prompt, evaluated, reused, answer, reason = child.match.groups()
    child.expect_exact(PROMPT)
    return int(prompt), int(evaluated), int(reused), int(answer), reason


def test_a_session(tiny_f32):
    child = spawn(str(tiny_f32), "--seed", "1", "--max-tokens", "12", "--system", "Be brief.")
    assert "RANDOM weights" in child.startup and "n_ctx 4096, 1 threads" in child.startup
    child.sendline("hello there")
    child.expect_exact(PROMPT)
    first = stats(child)
    assert first[1] == first[0] and first[3] <= 12
    child.sendline("and a second question")
    child.expect_exact(PROMPT)
    second = stats(child)
    assert second[2] > first[0] and second[1] == turn_cost(tiny_f32, "user", "and a second question")
    child.sendline("/system")
    child.expect_exact("system prompt: Be brief.")
    child.sendline("/system Be very brief.")
    child.expect_exact("system prompt set; the next turn re-reads the conversation")
    child.sendline("/reset")
    child.expect_exact("conversation cleared")
    child.expect_exact(PROMPT)
    child.sendline("/nonsense")
    child.expect_exact("unknown command /nonsense")
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_the_answer_not_the_session(tiny_f32):
    child = spawn(str(tiny_f32), "--seed", "2", "--ignore-eos", "--max-tokens", "30000", "--n-ctx", "32768")
    child.sendline("tell me an endless story")
    child.expect_exact("tell me an endless story")
    child.expect(r"[\s\S]{40}")  # the answer is streaming
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(PROMPT)
    prompt, evaluated, reused, answer, reason = stats(child)
    assert reason == "interrupted" and 0 < answer < 30000
    child.sendintr()  # Ctrl-C at the prompt: a fresh prompt, the session goes on
    child.expect_exact(PROMPT)
    child.sendline("are you still there")
    child.expect_exact("are you still there")
    child.expect(r"[\s\S]{40}")
    child.sendintr()
    child.expect_exact("[stopped]")
    child.expect_exact(PROMPT)
    later = stats(child)
    assert later[2] >= prompt + answer  # the stopped answer stayed in the conversation and in the context
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_a_tool_round_in_the_terminal(tiny_f32, tmp_path):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {
        "type": "object", "properties": {"location": {"type": "string", "maxLength": 12}}, "required": ["location"]}}}]
    (tmp_path / "tools.json").write_text(json.dumps(tools))
    child = spawn(str(tiny_f32), "--tools", str(tmp_path / "tools.json"), "--tool-choice", "required", "--seed", "3",
                  "--max-tokens", "80")
    child.sendline("Weather in Oslo?")
    child.expect(r'tool call get_weather \{"location": ')
    child.expect_exact(PROMPT)
    child.sendline('/tool {"temperature": -3}')
    child.expect_exact(PROMPT)
    assert stats(child)[1] == turn_cost(tiny_f32, "tool", '{"temperature": -3}')  # only the tool turn was evaluated
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_regen_and_edit_evaluate_only_the_last_turn(tiny_f32):
    child = spawn(str(tiny_f32), "--seed", "1", "--max-tokens", "12", "--temperature", "0", "--system", "Be brief.")
    for line in ("first question", "second question"):
        child.sendline(line)
        child.expect_exact(PROMPT)
    answered = stats(child)
    child.sendline("/regen")
    child.expect_exact(PROMPT)
    child.sendline("/stats")
    child.expect(STATS)
    prompt, evaluated = int(child.match.group(1)), int(child.match.group(2))
    assert prompt == answered[0] and evaluated == turn_cost(tiny_f32, "user", "second question")
    child.expect(r"context (\d+) of 4096 tokens; the conversation was evaluated again \((\d+) tokens\)")
    assert int(child.match.group(2)) == evaluated
    child.expect_exact(PROMPT)
    child.sendline("/edit another one")
    child.expect_exact(PROMPT)
    assert stats(child)[1] == turn_cost(tiny_f32, "user", "another one")
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_stats_say_what_an_overflow_dropped(tiny_f32):
    child = spawn(str(tiny_f32), "--seed", "1", "--max-tokens", "16", "--ignore-eos", "--n-ctx", "256",
                  "--overflow-share", "0.5")
    for i in range(20):
        child.sendline(f"question number {i}")
        child.expect_exact(PROMPT)
        child.sendline("/stats")
        child.expect(STATS)
        prompt = int(child.match.group(1))
        child.expect(r"context \d+ of 256 tokens(; (\d+) old turns \(\d+ tokens\) dropped to fit)?(.*)\r\n")
        if child.match.group(1):
            break
    assert int(child.match.group(2)) > 1 and prompt + 16 <= 128  # half the context freed in one step
    assert "the conversation was evaluated again" in child.match.group(3)
    child.expect_exact(PROMPT)
    child.sendline("/exit")
    child.expect(pexpect.EOF)


def test_overflow_share_out_of_range_is_a_usage_error(tiny_f32):
    from conftest import run_cli

    r = run_cli("chat", str(tiny_f32), "--overflow-share", "1")
    assert r.returncode == 2 and "overflow_share is the share of the context" in r.stderr
    assert "RANDOM weights" not in r.stderr  # refused before the model is loaded


@pytest.mark.parametrize("line, hint", [("/tool", "usage: /tool RESULT"), ("/edit", "usage: /edit TEXT")])
def test_usage_hint(tiny_f32, line, hint):
    child = spawn(str(tiny_f32))
    child.sendline(line)
    child.expect_exact(hint)
    child.sendline("/quit")
    child.expect(pexpect.EOF)


@pytest.mark.parametrize("show_reasoning", [True, False])
def test_reply_printer_shows_prose_hides_markers_and_places_reasoning(capsys, show_reasoning):
    """What the terminal gets while an answer streams in arbitrary pieces: the thinking (or nothing with
    --hide-reasoning), then the prose on a line of its own, and never a tool-call block or a marker."""
    from lfmq import ui

    reply = ('<think>The user wants Paris weather.</think>Checking. <|tool_call_start|>[get_weather(location="Paris")]'
             '<|tool_call_end|> Done.')
    printer = ui.ReplyPrinter([{"type": "function", "function": {"name": "get_weather"}}], show_reasoning)
    for i in range(0, len(reply), 3):
        printer(reply[i:i + 3])
    printer.finish()
    out = capsys.readouterr().out
    assert "<|" not in out and "get_weather" not in out and "<think>" not in out
    if show_reasoning:
        assert out.startswith("The user wants Paris weather.\nChecking.") and out.rstrip().endswith("Done.")
    else:
        assert out.startswith("Checking.") and "Paris weather" not in out
