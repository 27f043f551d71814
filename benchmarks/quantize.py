"""Benchmark `lfmq quantize` against llama.cpp's own `llama-quantize` on the five-type ladder.

What it measures, in one run:

1. Synthesizes the shape-exact, random-weight LFM2.5-350M checkpoint (`lfmq.synth`, in a child, cached in the
   work dir and shared with benchmarks/convert.py) and converts it to F16 with `lfmq convert` (in a child, cached).
2. Quantizes that F16 to Q4_0, Q4_K_M, Q5_K_M, Q6_K and Q8_0 with both tools, the same thread count for both:
   lfmq as one `python -m lfmq quantize F16 -q Q4_0,... --threads N` child (all five types in one call, as a user
   would run it), llama-quantize as one `llama-quantize IN OUT TYPE N` child per type (built from the llama.cpp
   that lfmq's binding vendors, same flags: benchmarks/llama_tools.py). The tools alternate which goes first,
   `--warmup` untimed then `--reps` timed rounds each; medians are reported. A tool's total is the lfmq child's
   wall time vs the sum of the five llama-quantize children's; the lfmq/llama-quantize ratio is checked against
   the target (<= 1.05x). Peak RSS is each child's `ru_maxrss` from `os.wait4`: Linux counts the parent's own
   peak into that number, so this script stays small (synth and convert run in children) and refuses a child
   peak that is not clearly above its own.
3. Checks, per type, that both outputs have the same file size and that every tensor (compared by name) has the
   same type, shape and bytes; lists metadata that differs (informational). Exits 1 on any size or tensor mismatch.

Run it from the repository root (about 10 minutes on 2 cores with the defaults):

    .venv/bin/python benchmarks/quantize.py [--workdir benchmarks/out] [--reps 3] [--warmup 1] [--threads N]
                                            [--types Q4_0,Q4_K_M,Q5_K_M,Q6_K,Q8_0] [--keep] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import gguf

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (ChildRun, compare_tensors, default_threads, emit_json, ensure_f16, lfmq_cli,  # noqa: E402
                    load_average, own_peak_mb, run_child, tool, warm_page_cache)

LADDER = ("Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0")
TOOLS = ("lfmq", "llama-quantize")
TARGET = 1.05  # lfmq / llama-quantize total wall time, at most
REPO = Path(__file__).resolve().parent.parent


@dataclass
class Round:
    """One tool quantizing the whole ladder once."""

    tool: str
    seconds: float                   # lfmq: its one child; llama-quantize: the sum of its children
    cpu_seconds: float
    peak_rss_mb: float               # the largest child peak
    per_type_seconds: dict[str, float] = field(default_factory=dict)  # lfmq: in-process, from its --json
    per_type_rss_mb: dict[str, float] = field(default_factory=dict)   # llama-quantize only
    load_before: float = 0.0         # 1-minute load average when the round started (other work on the machine)


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out",
                    help="checkpoint, F16, outputs and logs (default: benchmarks/out)")
    ap.add_argument("--reps", type=int, default=3, help="timed rounds per tool (default: 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds per tool first (default: 1)")
    ap.add_argument("--threads", type=int, default=default_threads(),
                    help=f"quantizer threads for both tools (default: {default_threads()}, the usable cores)")
    ap.add_argument("--types", default=",".join(LADDER), help="comma-separated (default: the five-type ladder)")
    ap.add_argument("--keep", action="store_true", help="keep the quantized files")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON summary to FILE")
    args = ap.parse_args()
    if args.reps < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--reps and --threads must be at least 1, --warmup at least 0")
    args.types = [t.strip().upper() for t in args.types.split(",") if t.strip()]
    return args


def outputs(workdir: Path, f16: Path, types: list[str]) -> dict[str, dict[str, Path]]:
    """Per tool, per type: the output path, `<stem>-<TYPE>.gguf` in a folder of the tool's own."""
    stem = f16.name.removesuffix("-F16.gguf")
    dirs = {t: workdir / "quantize" / t for t in TOOLS}
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return {t: {q: dirs[t] / f"{stem}-{q}.gguf" for q in types} for t in TOOLS}


def run_lfmq(f16: Path, outs: dict[str, Path], threads: int, logs: Path, tag: str) -> Round:
    folder = next(iter(outs.values())).parent
    argv = lfmq_cli("quantize", f16, "-q", ",".join(outs), "-o", folder, "--force", "--threads", threads, "--json")
    stdout = logs / f"lfmq-{tag}.json"
    run = run_child("lfmq quantize", argv, logs / f"lfmq-{tag}.log", stdout=stdout)
    results = json.loads(stdout.read_text())["outputs"]
    per_type = {}
    for r in results:
        if Path(r["path"]) != outs[r["type"]].resolve():
            sys.exit(f"lfmq wrote {r['type']} to {r['path']}, expected {outs[r['type']]}")
        per_type[r["type"]] = r["seconds"]
    if set(per_type) != set(outs):
        sys.exit(f"lfmq made {sorted(per_type)}, expected {sorted(outs)}")
    return Round("lfmq", run.seconds, run.cpu_seconds, run.peak_rss_mb, per_type_seconds=per_type)


def run_llama(f16: Path, outs: dict[str, Path], threads: int, logs: Path, tag: str) -> Round:
    exe = tool("llama-quantize")
    runs: dict[str, ChildRun] = {}
    for qtype, out in outs.items():
        runs[qtype] = run_child(f"llama-quantize {qtype}", [exe, f16, out, qtype, threads],
                                logs / f"llama-quantize-{qtype}-{tag}.log")
        if not out.exists():
            sys.exit(f"llama-quantize {qtype} exited 0 but wrote no {out}")
    return Round("llama-quantize", sum(r.seconds for r in runs.values()), sum(r.cpu_seconds for r in runs.values()),
                 max(r.peak_rss_mb for r in runs.values()),
                 per_type_seconds={q: r.seconds for q, r in runs.items()},
                 per_type_rss_mb={q: r.peak_rss_mb for q, r in runs.items()})


def benchmark(f16: Path, outs: dict[str, dict[str, Path]], threads: int, reps: int, warmup: int,
              logs: Path) -> list[Round]:
    rounds: list[Round] = []
    for i in range(warmup + reps):
        for name in (TOOLS if i % 2 == 0 else TOOLS[::-1]):
            for p in outs[name].values():
                p.unlink(missing_ok=True)
            os.sync()  # the previous round's dirty pages are not this round's cost
            load = load_average()
            run = (run_lfmq if name == "lfmq" else run_llama)(f16, outs[name], threads, logs, str(i))
            run.load_before = load
            label = "warm-up" if i < warmup else f"rep {i - warmup + 1}/{reps}"
            print(f"  {label:>9}  {name:<15} {run.seconds:7.2f} s wall  {run.cpu_seconds:7.2f} s CPU  "
                  f"{run.peak_rss_mb:6.0f} MB peak   (load avg {load:.2f} before)", flush=True)
            if i >= warmup:
                rounds.append(run)
    return rounds


def med(values: Any) -> float:
    return statistics.median(list(values))


def summarize(rounds: list[Round], types: list[str], threads: int) -> dict[str, Any]:
    by_tool = {t: [r for r in rounds if r.tool == t] for t in TOOLS}
    median = {
        t: {
            "seconds": med(r.seconds for r in rs),
            "cpu_seconds": med(r.cpu_seconds for r in rs),
            "peak_rss_mb": med(r.peak_rss_mb for r in rs),
            "per_type_seconds": {q: med(r.per_type_seconds[q] for r in rs) for q in types},
            "per_type_rss_mb": {q: med(r.per_type_rss_mb[q] for r in rs) for q in types} if t != "lfmq" else {},
            "runs": [asdict(r) for r in rs],
        }
        for t, rs in by_tool.items()
    }
    ratio = {
        "time": median["lfmq"]["seconds"] / median["llama-quantize"]["seconds"],
        "cpu": median["lfmq"]["cpu_seconds"] / median["llama-quantize"]["cpu_seconds"],
        "rss": median["lfmq"]["peak_rss_mb"] / median["llama-quantize"]["peak_rss_mb"],
    }
    return {"types": types, "threads": threads, "median": median, "ratio": ratio, "target_time": TARGET,
            "meets_target": ratio["time"] <= TARGET}


def print_timing(summary: dict[str, Any], reps: int) -> None:
    m, ratio = summary["median"], summary["ratio"]
    n = len(summary["types"])
    print(f"\n{'median of ' + str(reps):<28}{'wall s':>9}{'CPU s':>9}{'peak RSS MB':>13}")
    for name, label in (("lfmq", "lfmq (1 process)"), ("llama-quantize", f"llama-quantize ({n} processes)")):
        print(f"{label:<28}{m[name]['seconds']:>9.2f}{m[name]['cpu_seconds']:>9.2f}{m[name]['peak_rss_mb']:>13.0f}")
    verdict = "PASS" if summary["meets_target"] else "FAIL"
    print(f"lfmq/llama-quantize wall  {ratio['time']:>9.3f}x  (target <= {TARGET}x: {verdict})")
    print(f"lfmq/llama-quantize CPU   {ratio['cpu']:>9.3f}x  (no target)")
    print(f"lfmq/llama-quantize RSS   {ratio['rss']:>9.3f}x  (no target; llama-quantize: largest of its children)")


def compare_type(a_path: Path, b_path: Path) -> dict[str, Any]:
    """lfmq's file (a) vs llama-quantize's (b): sizes, tensors by name, metadata keys/values (informational)."""
    a, b = gguf.GGUFReader(a_path), gguf.GGUFReader(b_path)
    ta, tb = {t.name: t for t in a.tensors}, {t.name: t for t in b.tensors}
    matched, problems = compare_tensors(a, b, "lfmq", "llama-quantize")
    types = dict(Counter(ta[n].tensor_type.name for n in sorted(ta.keys() & tb.keys())))
    meta = []
    for key in sorted((a.fields.keys() | b.fields.keys()) - {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count"}):
        if key not in a.fields or key not in b.fields:
            meta.append(f"{key}: only in {'lfmq' if key in a.fields else 'llama-quantize'}'s file")
        elif a.fields[key].contents() != b.fields[key].contents():
            meta.append(f"{key}: lfmq {a.fields[key].contents()!r} vs llama-quantize {b.fields[key].contents()!r}")
    size_a, size_b = a_path.stat().st_size, b_path.stat().st_size
    return {"lfmq_bytes": size_a, "llama_bytes": size_b, "sizes_equal": size_a == size_b,
            "tensors": len(ta.keys() | tb.keys()), "tensors_identical": matched, "tensor_types": types,
            "mismatches": problems, "metadata_differences": meta,
            "ok": size_a == size_b and not problems}


def print_types(summary: dict[str, Any], checks: dict[str, dict[str, Any]]) -> None:
    m = summary["median"]
    print(f"\n{'type':<8}{'lfmq s*':>9}{'llama s':>9}{'llama MB':>10}{'lfmq bytes':>13}{'llama bytes':>13}"
          f"{'size':>7}{'tensors identical':>19}  tensor types")
    for q, c in checks.items():
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(c["tensor_types"].items()))
        print(f"{q:<8}{m['lfmq']['per_type_seconds'][q]:>9.2f}{m['llama-quantize']['per_type_seconds'][q]:>9.2f}"
              f"{m['llama-quantize']['per_type_rss_mb'][q]:>10.0f}{c['lfmq_bytes']:>13,}{c['llama_bytes']:>13,}"
              f"{'equal' if c['sizes_equal'] else 'DIFF':>7}{c['tensors_identical']:>12}/{c['tensors']:<6}  {kinds}")
    print("* lfmq's in-process time per type (from its --json; excludes its start-up, which the total includes);"
          "\n  llama s / llama MB: each llama-quantize child's wall time and peak RSS")
    for q, c in checks.items():
        for line in c["mismatches"]:
            print(f"  MISMATCH {q}: {line}")
        for line in c["metadata_differences"]:
            print(f"  metadata {q}: {line}")
    if all(not c["metadata_differences"] for c in checks.values()):
        print("metadata: identical keys and values in every pair")


def main() -> int:
    args = parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs" / "quantize"
    logs.mkdir(parents=True, exist_ok=True)
    f16 = ensure_f16(workdir)
    tool("llama-quantize")  # build it now if missing, not inside a timed round
    outs = outputs(workdir, f16, args.types)
    warm_page_cache(f16)
    print(f"quantizing {f16.name} to {','.join(args.types)} with {args.threads} threads, {args.warmup} warm-up + "
          f"{args.reps} timed rounds per tool, alternating:", flush=True)
    rounds = benchmark(f16, outs, args.threads, args.reps, args.warmup, logs)
    summary = summarize(rounds, args.types, args.threads)
    summary["harness_peak_rss_mb"] = own_peak_mb()  # the floor under every child's ru_maxrss; before the checks
    print_timing(summary, args.reps)
    checks = {q: compare_type(outs["lfmq"][q], outs["llama-quantize"][q]) for q in args.types}
    print_types(summary, checks)
    summary["files"] = checks
    summary["identical"] = all(c["ok"] for c in checks.values())
    bad = [q for q, c in checks.items() if not c["ok"]]
    verdict = f"all {len(checks)} types identical (sizes and tensors)" if not bad else f"MISMATCH in {', '.join(bad)}"
    print(f"\noutputs: {verdict}")
    print(f"time target (lfmq <= {TARGET}x llama-quantize): {'PASS' if summary['meets_target'] else 'FAIL'}")
    emit_json(summary, args.json)
    if not args.keep:
        for per_tool in outs.values():
            for p in per_tool.values():
                p.unlink(missing_ok=True)
    return 0 if summary["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
