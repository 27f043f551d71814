"""Benchmark a long conversation on a small context (issue 13 item 1) and a regenerate after 10 turns (issue 10 item 3).

In one run, on one model (default: a tiny synthetic LFM2 with the 350M's 65536-token vocabulary, made in the work
dir; the counts depend on the tokenizer and the turn lengths only, so the synthetic 350M gives the same; pass --model
for seconds that mean something):
1. Overflow: n_ctx 1024, a short system prompt, short questions and 24-token answers (end of turn banned), as in the
   issue. Turns run until the context first overflows, then --turns more: before (lfmq until now: one turn dropped
   at a time and the whole prompt evaluated again), overflow_share 0 (one turn at a time, the system prompt's state
   kept) and after (overflow_share 0.5, the default). Prints the mean prompt tokens evaluated per turn over the
   turns after the first overflow against the turn's own new tokens (target: at most 3x), the same counting the
   answer's tokens too, the re-prefills and the prompt seconds per turn.
2. Regenerate: 10 turns, then Chat.regenerate(): prompt tokens evaluated before (no checkpoints, no system prompt
   snapshot: the whole conversation again) and after (from the turn-boundary checkpoint: the last turn only).

    .venv/bin/python benchmarks/chat_overflow.py [--model GGUF] [--turns 100] [--threads N] [--json FILE]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, default_threads, emit_json  # noqa: E402

import lfmq  # noqa: E402
from lfmq.runtime import Chat, load  # noqa: E402

SYSTEM = "You are a terse assistant. Answer in one short sentence."
ANSWER = 24
N_CTX = 1024


def question(i: int) -> str:
    return f"What is {i} times {i + 3}?"


def own_tokens(model: lfmq.Model, user: str) -> int:
    """The tokens a turn adds after the previous answer: its end marker, the message, the next header."""
    return len(model.tokenize(f"<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"))


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="an LFM2 GGUF (default: a tiny synthetic one in --workdir)")
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "chat-overflow")
    ap.add_argument("--turns", type=int, default=100, help="turns measured after the first overflow (default 100)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--skip", action="append", default=[], choices=["before", "share_0"],
                    help="leave out a slow overflow run (repeatable; on a real-size model each takes minutes)")
    ap.add_argument("--json", type=Path, metavar="FILE")
    return ap.parse_args()


def tiny_model(workdir: Path) -> Path:
    out = workdir / "tiny-v65536-F32.gguf"
    if not out.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        lfmq.synth("tiny", workdir / "tiny", overrides={"vocab_size": 65536}, force=True)
        lfmq.convert(workdir / "tiny", out, outtype="f32", force=True)
    return out


class OldChat(Chat):
    """The session as it was before: no snapshot after the system prompt (with share 0: one turn at a time)."""

    def _head(self, text: str, tokens: list[int]) -> int:
        return 0


def fresh(model: lfmq.Model) -> None:
    """Empty the context and forget every snapshot, as after loading."""
    model.reset()
    model._snapshot, model._checkpoints = None, []


def overflow_run(model: lfmq.Model, share: float, turns: int, kind: type[Chat] = Chat) -> dict:
    fresh(model)
    session = kind(model, system=SYSTEM, max_tokens=ANSWER, ignore_eos=True, seed=7, overflow_share=share)
    rows, first, i = [], None, 0
    while first is None or i < first + 1 + turns:
        s = session.send(question(i)).stats
        if first is None and s.dropped_turns:
            first = i
        rows.append((i, s, own_tokens(model, question(i))))
        i += 1
    after = [(s, own) for j, s, own in rows if first < j <= first + turns]
    evaluated = statistics.fmean(s.prompt_evaluated for s, _ in after)
    own = statistics.fmean(o for _, o in after)
    generated = statistics.fmean(s.generated_tokens for s, _ in after)
    return {
        "overflow_share": share, "first_overflow_turn": first + 1, "turns_measured": len(after),
        "own_tokens_per_turn": round(own, 2),
        "turns_before_overflow_evaluated": statistics.fmean(s.prompt_evaluated for j, s, _ in rows[1:first]),
        "prompt_evaluated_per_turn": round(evaluated, 2), "ratio": round(evaluated / own, 2),
        "with_answer_ratio": round((evaluated + generated) / (own + generated), 2),
        "reprefills": sum(s.reprefill for s, _ in after), "overflow_steps": sum(bool(s.dropped_turns) for s, _ in after),
        "turns_dropped_per_step": round(statistics.fmean([s.dropped_turns for s, _ in after if s.dropped_turns] or [0]), 2),
        "max_prompt_evaluated": max(s.prompt_evaluated for s, _ in after),
        "prompt_seconds_per_turn": round(statistics.fmean(s.prompt_seconds for s, _ in after), 4),
    }


def regenerate_run(model: lfmq.Model, checkpoints: bool) -> dict:
    fresh(model)
    model.checkpoint_bytes = lfmq.runtime.model.CHECKPOINT_BYTES if checkpoints else 0
    session = (Chat if checkpoints else OldChat)(model, system=SYSTEM, max_tokens=ANSWER, ignore_eos=True, seed=7)
    for i in range(10):
        session.send(question(i))
    s = session.regenerate().stats
    model.checkpoint_bytes = lfmq.runtime.model.CHECKPOINT_BYTES
    return {"checkpoints": checkpoints, "prompt_tokens": s.prompt_tokens, "prompt_evaluated": s.prompt_evaluated,
            "prompt_seconds": round(s.prompt_seconds, 4), "checkpoint_bytes": sum(b for _, b in model.checkpoints)}


def main() -> None:
    args = parse_args()
    path = args.model or tiny_model(args.workdir)
    summary: dict = {"model": str(path), "n_ctx": N_CTX, "answer_tokens": ANSWER}
    with load(path, n_ctx=N_CTX, threads=args.threads) as model:
        runs = {}
        for key, label, share, kind in (("before", "before (one turn at a time)", 0.0, OldChat),
                                        ("share_0", "share 0 (system prompt kept)", 0.0, Chat),
                                        ("after", "after (share 0.5)", 0.5, Chat)):
            if key in args.skip:
                continue
            r = runs[key] = overflow_run(model, share, args.turns, kind)
            print(f"{label}: first overflow at turn {r['first_overflow_turn']}; over the {r['turns_measured']} turns "
                  f"after it, {r['prompt_evaluated_per_turn']} prompt tokens evaluated per turn for "
                  f"{r['own_tokens_per_turn']} of its own = {r['ratio']}x (counting the {ANSWER}-token answers: "
                  f"{r['with_answer_ratio']}x); {r['reprefills']} re-prefills, {r['overflow_steps']} overflow steps "
                  f"of {r['turns_dropped_per_step']} turns; {r['prompt_seconds_per_turn'] * 1000:.1f} ms prompt/turn",
                  flush=True)
        summary["overflow"] = runs
        before, after = runs.get("before") or runs.get("share_0"), runs["after"]
        if before:
            print(f"overflow: after/before tokens evaluated per turn = "
                  f"{after['prompt_evaluated_per_turn'] / before['prompt_evaluated_per_turn']:.3f}")
        print(f"overflow target, after <= 3x the turn's own tokens: {'met' if after['ratio'] <= 3 else 'MISSED'} "
              f"({after['ratio']}x)")
        without, with_ = regenerate_run(model, False), regenerate_run(model, True)
        summary["regenerate"] = {"before": without, "after": with_}
        print(f"regenerate after 10 turns: before {without['prompt_evaluated']} of {without['prompt_tokens']} prompt "
              f"tokens evaluated ({without['prompt_seconds'] * 1000:.1f} ms), after {with_['prompt_evaluated']} "
              f"({with_['prompt_seconds'] * 1000:.1f} ms, checkpoints holding {with_['checkpoint_bytes']} bytes): "
              f"{without['prompt_evaluated'] / with_['prompt_evaluated']:.1f}x fewer")
    emit_json(summary, args.json)


if __name__ == "__main__":
    main()
