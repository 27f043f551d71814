"""Chat sessions keep their tokens in LFM2's hybrid state (conv state + KV cache): a turn costs its own new tokens,
not the history; where the prompt diverges from the context the session re-evaluates instead of answering wrong;
overflow drops the oldest turns (system prompt kept) or raises a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from lfmq.runtime import Chat, chat, load
from lfmq.errors import ContextOverflowError

SYSTEM = "You are a terse assistant. Answer in one short sentence."
QUESTIONS = [f"Question {i}: what is {i} times {i + 3}, and why does it matter?" for i in range(10)]


def turn_tokens(model, user: str) -> list[int]:
    """The tokens a turn adds after the previous answer: that answer's end marker, the message, the next header."""
    return model.tokenize(f"<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def fresh_logits(path, tokens: list[int]) -> np.ndarray:
    with load(path, n_ctx=4096, threads=1) as other:
        other.sync(tokens)
        return other.logits()


@pytest.fixture
def model(tiny_f32):
    with load(tiny_f32, threads=1) as m:
        yield m


def test_ten_turns_each_cost_their_own_tokens(model, tiny_f32):
    session = Chat(model, system=SYSTEM, max_tokens=24, seed=11)
    evaluated, prompt, perf_prompt = [], [], []
    before = model.perf()
    for question in QUESTIONS:
        reply = session.send(question)
        after = model.perf()
        evaluated.append(reply.stats.prompt_evaluated)
        prompt.append(reply.stats.prompt_tokens)
        perf_prompt.append(after[0] - before[0])
        before = after
    # turn 1 reads system prompt and question; every later turn only its own new tokens
    assert evaluated[0] == prompt[0]
    assert evaluated[1:] == [len(turn_tokens(model, q)) for q in QUESTIONS[1:]]
    assert prompt[-1] > 5 * max(evaluated[1:])
    # llama.cpp's own counter agrees (turn 1 is skipped: the counter reports at least 1 before anything ran)
    assert perf_prompt[1:] == evaluated[1:]
    # and the context holds exactly the conversation the template renders, with the same next-token logits
    assert model.state == tuple(session._tokens)
    assert session._text == model.render(session.history, add_generation_prompt=False)[: len(session._text)]
    np.testing.assert_allclose(model.logits(), fresh_logits(tiny_f32, list(model.state)), atol=0.02)


def test_divergent_history_is_reevaluated_not_misread(model, tiny_f32):
    """LFM2.5's template drops the thinking of past answers: the rendered prompt then differs from the context, which
    cannot be cut back (recurrent state), so the session evaluates the prompt afresh and stays exact."""
    session = Chat(model, max_tokens=40, seed=5)
    thought = 'root ::= "<think>plan</think>Answer."'
    assert session.send("first", grammar=thought).text == "<think>plan</think>Answer."
    second = session.send("second", grammar=thought)
    assert second.stats.prompt_evaluated == len(turn_tokens(model, "second"))  # the thinking answer is the last one
    third = session.send("third")
    assert third.stats.prompt_evaluated == third.stats.prompt_tokens  # "<think>plan</think>" vanished from answer 1
    fourth = session.send("fourth")
    assert fourth.stats.prompt_evaluated == fourth.stats.prompt_tokens  # ... and now from answer 2
    fifth = session.send("fifth")
    assert fifth.stats.prompt_evaluated == len(turn_tokens(model, "fifth"))  # back to incremental
    # the context spells the conversation as the template renders it now (sampled tokens stay as sampled)
    assert model.render(session.history, add_generation_prompt=False).startswith(model.detokenize(model.state))
    np.testing.assert_allclose(model.logits(), fresh_logits(tiny_f32, list(model.state)), atol=0.02)


def test_system_prompt_change_and_reset(model):
    session = Chat(model, system="Be brief.", max_tokens=8, seed=1)
    session.send("hello")
    session.system = "Be verbose."
    reply = session.send("again")
    assert reply.stats.prompt_evaluated == reply.stats.prompt_tokens
    assert session.history[0] == {"role": "system", "content": "Be verbose."} and len(session.history) == 5
    session.reset()
    assert session.history == [{"role": "system", "content": "Be verbose."}] and session.last is None
    assert session.send("new start").stats.prompt_tokens == len(model.tokenize(model.render(
        [{"role": "system", "content": "Be verbose."}, {"role": "user", "content": "new start"}])))


def test_overflow_drops_oldest_turns_and_keeps_the_system_prompt(tiny_f32):
    with load(tiny_f32, n_ctx=512, threads=1) as small:
        session = Chat(small, system=SYSTEM, max_tokens=32, seed=2)
        for question in QUESTIONS:
            reply = session.send(question)
            assert reply.stats.prompt_tokens + 32 <= small.n_ctx
        assert session.trimmed > 0 and session.history[0] == {"role": "system", "content": SYSTEM}
        assert session.history[1]["role"] == "user" and session.history[-2]["content"] == QUESTIONS[-1]
        # what the model saw is the trimmed conversation (sampled tokens kept as sampled since the last overflow)
        assert small.detokenize(small.state[: reply.stats.prompt_tokens]) == small.render(session.history[:-1])


def test_a_message_too_long_for_the_context_is_an_error_and_leaves_history_alone(tiny_f32):
    with load(tiny_f32, n_ctx=256, threads=1) as small:
        session = Chat(small, max_tokens=16, seed=2)
        session.send("short")
        with pytest.raises(ContextOverflowError, match="the newest message needs .* keeps 16 free"):
            session.send("word " * 400)
        assert [m["content"] for m in session.history if m["role"] == "user"] == ["short"]
        assert session.send("still here").stats.finish_reason in ("stop", "length")


def test_a_stopped_answer_joins_the_history(model):
    session = Chat(model, max_tokens=50, seed=4)
    stream = session.stream("tell me a long story", ignore_eos=True)
    for i, _ in enumerate(stream):
        if i == 5:
            break
    stream.close()
    partial = session.history[-1]
    assert partial["role"] == "assistant" and session.last.stats is None
    assert model.detokenize(session._tokens[-6:]) == partial["content"]
    reply = session.send("go on")
    # the sixth token was shown but not yet evaluated when the stream closed: it is evaluated with the new turn
    assert reply.stats.prompt_evaluated == len(turn_tokens(model, "go on")) + 1


def test_interrupt_flag_stops_an_answer(model):
    session = Chat(model, max_tokens=500, seed=4)
    count = []
    for chunk in session.stream("long answer please", ignore_eos=True, interrupt=lambda: len(count) >= 3):
        count.append(chunk)
    assert session.last.stats.finish_reason == "interrupted" and session.last.stats.generated_tokens == 3


def test_one_shot_chat(model):
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]
    a = chat(model, messages, max_tokens=10, seed=9)
    b = chat(model, messages, max_tokens=10, seed=9)
    assert a.text == b.text and a.stats.prompt_tokens == len(model.tokenize(model.render(messages)))
    assert a.message == {"role": "assistant", "content": a.text}
