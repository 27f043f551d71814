"""Soak: many chat turns and many extraction items in one process, with the resident memory sampled along the way.

1. Chat: `--turns` turns (default 1,000) of a short question and a `--answer`-token answer (default 24, end of turn
   ignored so every answer has that length) through lfmq.Chat on a `--n-ctx` context (default 1024), so that the
   conversation overflows many times. Reported: time and tokens evaluated per turn before the first overflow and
   after it, how many overflows, and RSS.
2. Extraction: `--items` inputs (default 10,000) through lfmq.extract_many with `--parallel` sequences (default 4)
   and a schema with bounded strings. Reported: items per second, item errors, and RSS.

RSS (VmRSS) is sampled every `--sample-every` turns or items; after the warm-up (the first 10% of each phase) the
target is flat within 5%: (max - min) / min of the samples at most 0.05. Any exception fails the run; item errors
are counted and must be zero. The model is a GGUF given with --model, or the synthetic `--preset` (tiny by default:
random weights, so the text is noise, but the code paths, the memory and the context handling are the real ones).

    .venv/bin/python benchmarks/soak.py [--turns 1000] [--items 10000] [--parallel 4] [--model FILE] [--json FILE]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, default_threads, emit_json, load_average  # noqa: E402

SCHEMA = {"type": "object", "required": ["name", "age", "city"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
    "city": {"type": "string", "maxLength": 16}}}
WORDS = "the a river city blue quick answer model token small cold light north market paper garden".split()
NAMES = ["Ann Lee", "Bo Varga", "Cy Moss", "Di Rossi", "Ed Silva", "Flo Costa", "Gus Weber", "Hal Nguyen"]
CITIES = ["Oslo", "Rome", "Lima", "Kyiv", "Bern", "Nice", "Porto", "Lagos"]
WARMUP = 0.1


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out" / "soak")
    ap.add_argument("--model", type=Path, help="a GGUF to soak (default: the synthetic --preset)")
    ap.add_argument("--preset", default="tiny", help="lfmq synth preset when no --model is given (default tiny)")
    ap.add_argument("--turns", type=int, default=1000, help="chat turns (default 1000)")
    ap.add_argument("--answer", type=int, default=24, help="tokens per answer (default 24)")
    ap.add_argument("--items", type=int, default=10000, help="extraction inputs (default 10000)")
    ap.add_argument("--parallel", type=int, default=4, help="extraction sequences decoded at once (default 4)")
    ap.add_argument("--n-ctx", type=int, default=1024, help="context per sequence (default 1024)")
    ap.add_argument("--sample-every", type=int, default=0, help="RSS sample period (default: 1/50 of a phase)")
    ap.add_argument("--threads", type=int, default=1,
                    help="default 1: a tiny model gains nothing from more, and on a busy machine idle-spinning "
                         "threads cost much (the machine has %d)" % default_threads())
    ap.add_argument("--json", type=Path, metavar="FILE")
    return ap.parse_args()


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def flatness(samples: list[tuple[int, float]], total: int) -> dict[str, Any]:
    """RSS after the warm-up: first, last, min, max and (max - min) / min."""
    after = [v for i, v in samples if i >= WARMUP * total] or [v for _, v in samples]
    spread = (max(after) - min(after)) / min(after)
    return {"first_mib": after[0], "last_mib": after[-1], "min_mib": min(after), "max_mib": max(after),
            "spread": spread, "flat_within_5pct": spread <= 0.05, "samples": len(after)}


def ensure_model(args: argparse.Namespace) -> Path:
    if args.model:
        return args.model
    import lfmq

    out = args.workdir / f"{args.preset}-F16.gguf"
    if not out.exists():
        args.workdir.mkdir(parents=True, exist_ok=True)
        lfmq.synth(args.preset, args.workdir / f"ckpt-{args.preset}", force=True)
        lfmq.convert(args.workdir / f"ckpt-{args.preset}", out, outtype="f16", force=True)
    return out


def chat_phase(m: Any, args: argparse.Namespace, every: int) -> dict[str, Any]:
    import lfmq

    rng = random.Random(0)
    session = lfmq.Chat(m, system="You are a helpful assistant. Answer in one short sentence.",
                        max_tokens=args.answer, ignore_eos=True, temperature=0.0)
    samples, rows, overflows, first_overflow = [], [], 0, None
    for turn in range(args.turns):
        question = f"Question {turn}: what about the {' '.join(rng.choices(WORDS, k=6))}?"
        trimmed = session.trimmed
        started = time.perf_counter()
        reply = session.send(question)
        seconds = time.perf_counter() - started
        overflowed = session.trimmed > trimmed
        overflows += overflowed
        if overflowed and first_overflow is None:
            first_overflow = turn
        rows.append((seconds, reply.stats.prompt_evaluated, reply.stats.generated_tokens))
        if turn % every == 0 or turn == args.turns - 1:
            samples.append((turn, rss_mib()))
        if turn % max(1, args.turns // 10) == 0:
            print(f"  turn {turn}: {seconds * 1000:.1f} ms, {reply.stats.prompt_evaluated} evaluated, "
                  f"RSS {samples[-1][1]:.1f} MiB, overflows {overflows}", flush=True)
    split = first_overflow if first_overflow is not None else len(rows)
    before, after = rows[:split], rows[split:]

    def summary(part: list[tuple[float, int, int]]) -> dict[str, float]:
        if not part:
            return {"turns": 0}
        return {"turns": len(part), "mean_ms": 1000 * statistics.mean(r[0] for r in part),
                "median_ms": 1000 * statistics.median(r[0] for r in part),
                "max_ms": 1000 * max(r[0] for r in part),
                "mean_evaluated": statistics.mean(r[1] for r in part),
                "mean_generated": statistics.mean(r[2] for r in part)}

    return {"turns": len(rows), "first_overflow_turn": first_overflow, "overflows": overflows,
            "before_first_overflow": summary(before), "after_first_overflow": summary(after),
            "rss": flatness(samples, len(rows))}


def inputs(n: int) -> Iterator[tuple[str, str]]:
    rng = random.Random(1)
    for i in range(n):
        yield (f"item{i}", f"{rng.choice(NAMES)} ({rng.randrange(18, 90)}) moved to {rng.choice(CITIES)}; "
                           f"{' '.join(rng.choices(WORDS, k=rng.randrange(4, 40)))}.")


def extraction_phase(m: Any, args: argparse.Namespace, every: int) -> dict[str, Any]:
    import lfmq

    samples, errors, ok, tokens = [], [], 0, 0
    started = time.perf_counter()
    for i, result in enumerate(lfmq.extract_many(m, inputs(args.items), SCHEMA, parallel=args.parallel,
                                                 temperature=0.0, max_tokens=200)):
        ok += result.ok
        tokens += result.tokens
        if not result.ok and len(errors) < 5:
            errors.append(f"{result.source}: {result.error}")
        if i % every == 0 or i == args.items - 1:
            samples.append((i, rss_mib()))
        if i % max(1, args.items // 10) == 0:
            print(f"  item {i}: {(i + 1) / (time.perf_counter() - started):.1f} items/s, RSS {samples[-1][1]:.1f} MiB",
                  flush=True)
    seconds = time.perf_counter() - started
    return {"items": args.items, "ok": ok, "item_errors": args.items - ok, "first_errors": errors,
            "items_per_s": args.items / seconds, "output_tokens": tokens, "seconds": seconds,
            "parallel": args.parallel, "rss": flatness(samples, args.items)}


def main() -> None:
    args = parse_args()
    import lfmq

    model = ensure_model(args)
    m = lfmq.load(model, n_ctx=args.n_ctx, threads=args.threads)
    print(f"soak {model.name}: {args.turns} turns, {args.items} items (parallel {args.parallel}), n_ctx {args.n_ctx}, "
          f"threads {args.threads}, load average {load_average():.2f}; RSS at start {rss_mib():.1f} MiB", flush=True)
    started = time.perf_counter()
    print("chat:", flush=True)
    chat = chat_phase(m, args, args.sample_every or max(1, args.turns // 50))
    print("extraction:", flush=True)
    extraction = extraction_phase(m, args, args.sample_every or max(1, args.items // 50))
    m.close()
    b, a = chat["before_first_overflow"], chat["after_first_overflow"]
    print(f"\nchat: {chat['turns']} turns, first overflow at turn {chat['first_overflow_turn']}, "
          f"{chat['overflows']} overflows")
    for name, part in (("before the first overflow", b), ("after it", a)):
        if part["turns"]:
            print(f"  {name}: {part['turns']} turns, mean {part['mean_ms']:.1f} ms (median {part['median_ms']:.1f}, "
                  f"max {part['max_ms']:.1f}), {part['mean_evaluated']:.1f} tokens evaluated per turn")
    for name, phase in (("chat", chat), ("extraction", extraction)):
        r = phase["rss"]
        print(f"  {name} RSS after warm-up: {r['first_mib']:.1f} -> {r['last_mib']:.1f} MiB (min {r['min_mib']:.1f}, "
              f"max {r['max_mib']:.1f}, spread {100 * r['spread']:.2f}%: "
              f"{'flat within 5%' if r['flat_within_5pct'] else 'NOT flat within 5%'})")
    print(f"extraction: {extraction['items']} items, {extraction['item_errors']} item errors, "
          f"{extraction['items_per_s']:.1f} items/s at parallel {extraction['parallel']}")
    for e in extraction["first_errors"]:
        print(f"  {e}")
    emit_json({"model": str(model), "n_ctx": args.n_ctx, "threads": args.threads, "chat": chat,
               "extraction": extraction, "seconds": time.perf_counter() - started, "load_average": load_average(),
               "command": " ".join(sys.argv)}, args.json)
    if extraction["item_errors"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
