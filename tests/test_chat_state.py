"""A session's state over a long conversation: overflow frees a share of the context in one step (system prompt and
newest turn kept) so the full re-evaluation it forces on LFM2's recurrent state happens once per many turns; turn
boundaries are checkpointed (bounded), so regenerate and edit-last evaluate only the last turn, and answer exactly
as a fresh evaluation of the same tokens does."""

from __future__ import annotations

import numpy as np
import pytest

from lfmq.errors import UsageError
from lfmq.runtime import Chat, generate, load

SYSTEM = "You are a terse assistant."
ANSWER = 24


def question(i: int) -> str:
    return f"Question {i}: what is {i} times {i + 3}?"


def turn_tokens(model, user: str) -> list[int]:
    """The tokens a turn adds after the previous answer: that answer's end marker, the message, the next header."""
    return model.tokenize(f"<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")


def fresh(path, tokens: list[int], max_tokens: int) -> tuple[str, np.ndarray]:
    """Greedy answer to the prompt tokens on a model that evaluates them all, and its logits at the prompt's end."""
    with load(path, n_ctx=4096, threads=1) as other:
        other.sync(tokens)
        logits = other.logits()
        return generate(other, tokens, max_tokens=max_tokens, temperature=0).text, logits


@pytest.fixture
def model(tiny_f32):
    with load(tiny_f32, threads=1) as m:
        yield m


def run_turns(session: Chat, n: int, start: int = 0) -> list:
    return [session.send(question(i)).stats for i in range(start, start + n)]


@pytest.mark.parametrize("share", [0.5, 0.3])
def test_overflow_frees_a_share_of_the_context_in_one_step(tiny_f32, share):
    with load(tiny_f32, n_ctx=512, threads=1) as small:
        session = Chat(small, system=SYSTEM, max_tokens=ANSWER, ignore_eos=True, seed=3, overflow_share=share)
        stats, histories = [], []
        for i in range(30):
            histories.append(session.history)
            stats.append(session.send(question(i)).stats)
        first = next(i for i, s in enumerate(stats) if s.dropped_turns)
        hit = stats[first]
        # one step drops several turns, down to (1 - share) of the context with the answer's room
        assert hit.dropped_turns > 2 and hit.reprefill and hit.dropped_tokens > share * 512 - 2 * ANSWER
        assert hit.prompt_tokens + ANSWER <= 512 - int(share * 512)
        # ... and no more than that: keeping one more of the old turns would not leave that room
        old = histories[first][1:] + [{"role": "user", "content": question(first)}]
        starts = [i for i, m in enumerate(old) if m["role"] == "user"]
        one_more = small.tokenize(small.render(histories[first][:1] + old[starts[hit.dropped_turns - 1]:]))
        assert len(one_more) + ANSWER > 512 - int(share * 512)
        assert stats[first - 1].prompt_tokens + ANSWER + len(turn_tokens(small, question(first))) > 512
        # after it, each turn evaluates only its own tokens again, until the context is full once more
        following = stats[first + 1:]
        again = next(i for i, s in enumerate(following) if s.dropped_turns)
        assert again >= 3
        for i, s in enumerate(following[:again]):
            assert s.prompt_evaluated == len(turn_tokens(small, question(first + 1 + i)))
            assert not s.reprefill and s.dropped_turns == 0 and s.dropped_tokens == 0
        # the system prompt and the newest turn stay; the model holds exactly the trimmed conversation
        assert session.history[0] == {"role": "system", "content": SYSTEM}
        assert session.history[-2] == {"role": "user", "content": question(29)}
        assert session.dropped_turns == sum(s.dropped_turns for s in stats)
        assert small.detokenize(small.state) == small.render(session.history, add_generation_prompt=False)[
            : len(small.detokenize(small.state))]


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


@pytest.mark.parametrize("system, tools", [(SYSTEM, None), (None, TOOLS), (SYSTEM, TOOLS)])
def test_share_zero_drops_one_turn_at_a_time_and_a_reprefill_starts_after_the_system_turn(tiny_f32, system, tools):
    with load(tiny_f32, n_ctx=512, threads=1) as small:
        session = Chat(small, system=system, tools=tools, max_tokens=ANSWER, ignore_eos=True, seed=3,
                       overflow_share=0)
        stats = run_turns(session, 20)
        first = next(i for i, s in enumerate(stats) if s.dropped_turns)
        later = stats[first + 1:]
        assert all(s.dropped_turns <= 2 for s in later) and sum(s.reprefill for s in later) >= 0.7 * len(later)
        # the system turn (prompt and tools) is not evaluated again: Model.sync keeps a snapshot after it
        text = small.render(session.history[:1] if system else [{"role": "user", "content": "x"}], tools=tools)
        head = len(small.tokenize(text[: text.index("<|im_end|>\n") + len("<|im_end|>\n")]))
        assert head > 10 and all(s.prompt_reused == head for s in stats[first:] if s.reprefill)


def test_overflow_share_is_checked(model):
    for bad in (1, 1.5, -0.1):
        with pytest.raises(UsageError, match="overflow_share"):
            Chat(model, overflow_share=bad)


def test_regenerate_evaluates_only_the_last_turn_and_answers_as_a_fresh_evaluation(model, tiny_f32):
    session = Chat(model, system=SYSTEM, max_tokens=16, temperature=0)
    run_turns(session, 10)
    last = session.last
    prompt = list(model.state[: last.stats.prompt_tokens])
    again = session.regenerate()
    assert again.stats.prompt_evaluated == len(turn_tokens(model, question(9)))
    assert again.stats.prompt_tokens == last.stats.prompt_tokens and again.stats.reprefill
    text, logits = fresh(tiny_f32, prompt, 16)
    assert again.text == text == last.text
    assert [m["role"] for m in session.history].count("assistant") == 10
    # the state restored from the snapshot gives the logits of a full evaluation of the same tokens
    model.sync(prompt)
    np.testing.assert_allclose(model.logits(), logits, atol=0.02)


def test_without_checkpoints_a_regenerate_re_reads_the_whole_conversation(model):
    session = Chat(model, system=SYSTEM, max_tokens=16, temperature=0)
    model.checkpoint_bytes = 0
    run_turns(session, 4)
    again = session.regenerate()
    assert again.stats.prompt_evaluated > 3 * len(turn_tokens(model, question(3))) and not model.checkpoints


def test_edit_last_evaluates_only_the_edited_turn(model, tiny_f32):
    session = Chat(model, system=SYSTEM, max_tokens=16, temperature=0)
    run_turns(session, 6)
    edited = session.edit_last("Something else entirely?")
    assert edited.stats.prompt_evaluated == len(turn_tokens(model, "Something else entirely?"))
    users = [m["content"] for m in session.history if m["role"] == "user"]
    assert users == [question(i) for i in range(5)] + ["Something else entirely?"]
    assert session.history[-1] == {"role": "assistant", "content": edited.text}
    text, _ = fresh(tiny_f32, list(model.state[: edited.stats.prompt_tokens]), 16)
    assert edited.text == text
    # the conversation goes on from the edited turn, incrementally
    assert session.send(question(7)).stats.prompt_evaluated == len(turn_tokens(model, question(7)))


def test_regenerate_after_a_tool_result_answers_the_tool_again(model):
    session = Chat(model, max_tokens=8, temperature=0)
    session.send("weather?")
    first = session.send('{"temperature_c": 21}', role="tool")
    again = session.regenerate()
    assert again.text == first.text and session.history[-2]["role"] == "tool"
    assert again.stats.prompt_evaluated == len(model.tokenize(
        '<|im_end|>\n<|im_start|>tool\n{"temperature_c": 21}<|im_end|>\n<|im_start|>assistant\n'))


def test_two_sessions_on_one_model_resume_from_their_checkpoints(model):
    """Sessions taking turns on one model (a server's queue, say): each turn restores that session's last turn end
    instead of re-reading its conversation, with or without a system prompt snapshot in between."""
    a = Chat(model, system=SYSTEM, max_tokens=12, seed=1)
    b = Chat(model, system="Another system prompt, for the other session.", max_tokens=12, seed=2)
    for i in range(4):
        for session in (a, b):
            reply = session.send(question(i))
            if i:
                assert reply.stats.prompt_evaluated == len(turn_tokens(model, question(i))) and reply.stats.reprefill


def test_nothing_to_regenerate_or_edit(model):
    session = Chat(model, max_tokens=4)
    with pytest.raises(UsageError, match="nothing to regenerate"):
        session.regenerate()
    with pytest.raises(UsageError, match="no message to edit"):
        session.edit_last("x")
    assert session.history == []


def test_checkpoints_are_bounded_oldest_dropped_first(model):
    model.checkpoint_count = 3
    session = Chat(model, max_tokens=8, seed=1)
    run_turns(session, 6)
    kept = model.checkpoints
    assert len(kept) == 3 and kept[-1][0] == model.n_past
    assert [n for n, _ in kept] == sorted(n for n, _ in kept)  # the newest turn ends
    one = kept[-1][1]
    model.checkpoint_count, model.checkpoint_bytes = 8, int(2.5 * one)
    run_turns(session, 3, start=6)
    # a state grows with its tokens: the byte budget, not the count, now bounds what is kept
    assert 1 <= len(model.checkpoints) < 3 and sum(b for _, b in model.checkpoints) <= 2.5 * one
    assert model.checkpoints[-1][0] == model.n_past
