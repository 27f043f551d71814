"""Benchmark batched decoding (`lfmq extract --parallel N`) against llama.cpp's llama-batched-bench.

In one run, on the synthetic LFM2.5-350M at Q4_0 (random weights; speed depends on shapes and types only):
1. Aggregate throughput: llama-batched-bench (built from the llama.cpp tree llama-cpp-python 0.3.36 vendors, see
   benchmarks/llama_tools.py) decodes N sequences of PP prompt tokens and TG generated tokens each, for N = 1, 2, 4;
   lfmq does the same work through lfmq.runtime.batch.generate_many (the path `extract --parallel` takes: one
   sampler chain per sequence, here greedy with the end-of-turn tokens banned so every sequence runs TG tokens).
   Both count the tokens they decode over the wall time of the whole run; the same context (N_max sequences of
   PP + TG cells, the same batch, ubatch and threads) serves every N. Target: lfmq at least 0.9x at each N. Rounds
   alternate the two; medians are compared.
2. Items per second: lfmq.extract_many with a schema whose strings and arrays are bounded, `--items` inputs, at
   parallel 1, 2, 4 (no peer: llama.cpp has no schema-extraction tool); the speed-up over parallel 1 is reported.

    .venv/bin/python benchmarks/extract_parallel.py [--pp 128] [--tg 128] [--rounds 3] [--items 24] [--json FILE]

The items part runs on its own context of 1024 cells per sequence (the extraction prompt carries the schema).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, default_threads, emit_json, ensure_f16, ensure_quantized, load_average, tool  # noqa: E402

NS = (1, 2, 4)
SCHEMA = {"type": "object", "required": ["name", "age", "city", "tags"], "properties": {
    "name": {"type": "string", "maxLength": 24}, "age": {"type": "integer"},
    "city": {"type": "string", "maxLength": 16},
    "tags": {"type": "array", "maxItems": 3, "items": {"type": "string", "maxLength": 8}}}}
NAMES = ["Ann Lee", "Bo Varga", "Cy Moss", "Di Rossi", "Ed Silva", "Flo Costa", "Gus Weber", "Hal Nguyen"]
CITIES = ["Oslo", "Rome", "Lima", "Kyiv", "Bern", "Nice", "Porto", "Lagos"]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--pp", type=int, default=128, help="prompt tokens per sequence (default 128)")
    ap.add_argument("--tg", type=int, default=128, help="generated tokens per sequence (default 128)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds of both tools (default 3; 0: only "
                    "the items per second)")
    ap.add_argument("--items", type=int, default=24, help="inputs for the items-per-second part (default 24)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--json", type=Path, metavar="FILE")
    return ap.parse_args()


def context_cells(args: argparse.Namespace) -> int:
    """Cells per sequence: PP + TG rounded up to llama.cpp's 256-cell padding."""
    return -(-(args.pp + args.tg) // 256) * 256


def batched_bench(model: Path, args: argparse.Namespace, log: Path) -> dict[int, float]:
    """llama-batched-bench's aggregate speed (its S t/s: all tokens decoded over the run's time) per N."""
    argv = [tool("llama-batched-bench"), "-m", model, "-c", context_cells(args) * max(NS), "-b", 2048, "-ub", 512,
            "-npp", args.pp, "-ntg", args.tg, "-npl", ",".join(map(str, NS)), "-t", args.threads,
            "--output-format", "jsonl"]
    run = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=REPO)
    log.write_text(run.stdout + run.stderr)
    if run.returncode != 0:
        sys.exit(f"llama-batched-bench failed (exit {run.returncode}), see {log}")
    rows = [json.loads(line) for line in (run.stdout + run.stderr).splitlines() if line.startswith('{"n_kv_max"')]
    got = {int(r["pl"]): float(r["speed"]) for r in rows}
    if set(got) != set(NS):
        sys.exit(f"llama-batched-bench printed rows for {sorted(got)}, not {NS}: see {log}")
    return got


def lfmq_batched(m, args: argparse.Namespace, rng: random.Random) -> dict[int, float]:
    """The same work through generate_many: N jobs of PP random prompt tokens, TG greedy tokens each."""
    from lfmq.llama.engine import Sampling
    from lfmq.runtime.batch import Job, generate_many

    greedy = Sampling(temperature=0.0, repeat_penalty=1.0)
    ban = m.eog_tokens()
    out = {}
    for n in NS:
        jobs = [Job(tuple(rng.randrange(100, m.n_vocab) for _ in range(args.pp)), greedy, None, ban, args.tg)
                for _ in range(n)]
        before = m.evaluated
        started = time.perf_counter()
        done = list(generate_many(m, jobs, n))
        seconds = time.perf_counter() - started
        assert all(len(d.tokens) == args.tg for d in done), [d.finish for d in done]
        out[n] = (m.evaluated - before) / seconds  # PP + TG - 1 per sequence: the last token is sampled, not decoded
    return out


def texts(n: int, rng: random.Random) -> list[tuple[str, str]]:
    return [(f"item{i}", f"{rng.choice(NAMES)} ({rng.randrange(18, 90)}) moved to {rng.choice(CITIES)} last year; "
                         f"friends say {rng.choice(NAMES)} likes hiking, jazz and chess.") for i in range(n)]


def items_per_second(model: Path, args: argparse.Namespace) -> dict[int, dict[str, float]]:
    """extract_many at parallel 1, 2, 4 on a context of 1024 cells per sequence (the prompt holds the schema)."""
    import lfmq
    from lfmq.runtime.extract import extract_many, load_schema

    m = lfmq.load(model, n_ctx=1024, threads=args.threads, n_batch=2048, n_ubatch=512)
    spec = load_schema(SCHEMA)
    inputs = texts(args.items, random.Random(1))
    res, reference = {}, None
    for n in NS:
        started = time.perf_counter()
        results = list(extract_many(m, inputs, spec, parallel=n, temperature=0.0, max_tokens=160))
        seconds = time.perf_counter() - started
        outputs = [(r.data, r.error) for r in results]
        reference = reference or outputs
        res[n] = {"items_per_s": len(results) / seconds, "ok": sum(r.ok for r in results),
                  "output_tokens": sum(r.tokens for r in results), "same_as_parallel_1": outputs == reference}
        print(f"  extract_many parallel={n}: {res[n]['items_per_s']:.2f} items/s ({res[n]['ok']}/{len(results)} ok, "
              f"{res[n]['output_tokens']} output tokens, same outputs as parallel=1: {res[n]['same_as_parallel_1']})",
              flush=True)
        for r in [r for r in results if not r.ok][:2]:
            print(f"    {r.source}: {r.error}")
    m.close()
    return res


def main() -> None:
    args = parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    logs = args.workdir / "logs"
    logs.mkdir(exist_ok=True)
    model = ensure_quantized(args.workdir, ensure_f16(args.workdir), "Q4_0", args.threads)
    if args.rounds:
        tool("llama-batched-bench")  # build before timing anything

    import lfmq

    cells = context_cells(args)
    m = lfmq.load(model, n_ctx=cells, threads=args.threads, n_batch=2048, n_ubatch=512)
    m.hold_sequences(max(NS))  # the context batched-bench makes: max(N) sequences of `cells` each, for every N
    rng = random.Random(0)
    peer: dict[int, list[float]] = {n: [] for n in NS}
    ours: dict[int, list[float]] = {n: [] for n in NS}
    print(f"load average {load_average():.2f}; pp {args.pp}, tg {args.tg}, threads {args.threads}, "
          f"{cells} cells x {max(NS)} sequences", flush=True)
    for r in range(args.rounds):
        order = ("llama-batched-bench", "lfmq") if r % 2 == 0 else ("lfmq", "llama-batched-bench")
        for name in order:
            got = (batched_bench(model, args, logs / f"batched-bench-{r}.log") if name == "llama-batched-bench"
                   else lfmq_batched(m, args, rng))
            for n, v in got.items():
                (peer if name == "llama-batched-bench" else ours)[n].append(v)
            print(f"round {r + 1} {name:>19}: " + ", ".join(f"N={n} {v:.1f} tok/s" for n, v in got.items()),
                  flush=True)
    m.close()
    throughput = {}
    if args.rounds:
        print(f"\n{'N':>2} {'llama-batched-bench':>20} {'lfmq':>10} {'ratio':>7}  (aggregate tok/s, medians)")
    for n in NS if args.rounds else ():
        a, b = statistics.median(peer[n]), statistics.median(ours[n])
        throughput[n] = {"llama_batched_bench": a, "lfmq": b, "ratio": b / a, "target_met": b / a >= 0.9}
        print(f"{n:>2} {a:>20.1f} {b:>10.1f} {b / a:>6.3f}x {'ok' if b / a >= 0.9 else 'BELOW 0.9x'}")
    print(f"\nitems per second, {args.items} inputs, schema with bounded strings:")
    items = items_per_second(model, args)
    emit_json({"model": str(model), "pp": args.pp, "tg": args.tg, "threads": args.threads, "rounds": args.rounds,
               "load_average": load_average(), "throughput": throughput, "items": items,
               "command": " ".join(sys.argv)}, args.json)


if __name__ == "__main__":
    main()
