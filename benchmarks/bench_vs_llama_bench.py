"""Benchmark `lfmq bench` against llama-bench, and lfmq's memory knobs against the binding's defaults.

In one run, on the synthetic LFM2.5-350M (random weights; speed and memory depend on shapes and types only):
1. Overhead: llama-bench (built from the llama.cpp tree llama-cpp-python 0.3.36 vendors, same flags as lfmq's
   binding, see benchmarks/llama_tools.py) and `lfmq bench` measure pp512 and tg128 on Q4_0 and Q8_0 with the
   same threads, batch, ubatch, mmap, flash-attention and KV cache settings and a context just large enough. The
   two tools take turns in short runs (ABBA order over `--rounds`), and each lfmq run is divided by the llama-bench
   run next to it: on a shared 2-core VM the speed of both drifts by 10-20% within a minute, which a ratio of two
   medians taken minutes apart cannot tell from a difference between the tools. Reports the median of those paired
   ratios with its interquartile range, the ratio of the medians, and the geometric mean of the paired ratios with
   a 95% interval (target: the median paired ratio at least 0.97x for pp and tg; the interval says how far one
   run's median can be trusted: about +-4-5% for 16 rounds on these VMs).
2. Memory: `lfmq bench` on Q4_0 at n_ctx 4096 with the host profile's knobs (no mmap) against the binding's
   defaults (mmap): peak RSS as a multiple of the file size (target: at most 1.3x) and tg of the two (target: the
   profile's knobs lose at most 3%).

    .venv/bin/python benchmarks/bench_vs_llama_bench.py [--rounds 10] [--reps 2] [--memory-rounds 3] [--threads N]
        [--types Q4_0,Q8_0] [--json FILE]

`--types Q8_0` runs the overhead part on one type only: rounds twice as close together, for a focused look at one
figure (the memory part always uses Q4_0).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (REPO, default_threads, emit_json, ensure_f16, ensure_quantized, lfmq_cli,  # noqa: E402
                    load_average, run_child, tool, warm_page_cache)

TYPES = ("Q4_0", "Q8_0")
# llama-bench: -b 2048 -ub 512 -lm mmap -fa off, f16 KV cache (every knob pinned: the host profile's are not these).
# Its context is as large as each test (512 for pp512, 128 for tg128, padded by llama.cpp to 512 and 256 cells).
# n_ctx 1 here makes lfmq bench size each case the same way (at least the 192-token TTFT prompt: 256 cells for tg128),
# not at the profile's 4096, whose larger KV cache alone costs tg about 3% (0.934x against 0.968x of llama-bench at
# -t 1, 8 paired rounds of a direct decode loop; one context of 641 for both tests still cost about 1%).
SAME = {"n_ctx": 1, "n_batch": 2048, "n_ubatch": 512, "use_mmap": True, "flash_attn": False, "type_k": "f16",
        "type_v": "f16"}
BINDING_DEFAULTS = {"n_ctx": 4096, "n_batch": 512, "n_ubatch": 512, "use_mmap": True, "flash_attn": None,
                    "type_k": "f16", "type_v": "f16"}


def types(text: str) -> tuple[str, ...]:
    chosen = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in chosen if t not in TYPES]
    if not chosen or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(TYPES)} (got {text!r})")
    return chosen


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--rounds", type=int, default=10, help="paired rounds of both tools (default 10)")
    ap.add_argument("--reps", type=int, default=2, help="repetitions inside each tool run (default 2)")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--memory-rounds", type=int, default=3, help="alternating rounds of the memory part (default 3)")
    ap.add_argument("--memory-only", action="store_true", help="skip the llama-bench comparison")
    ap.add_argument("--types", type=types, default=TYPES, metavar="T,T",
                    help=f"quant types of the overhead part, comma-separated (default {','.join(TYPES)})")
    ap.add_argument("--json", type=Path, metavar="FILE")
    return ap.parse_args()


def llama_bench(model: Path, threads: int, reps: int, log: Path) -> dict[str, float]:
    out = log.with_suffix(".json")
    argv = [tool("llama-bench"), "-m", model, "-t", threads, "-p", 512, "-n", 128, "-r", reps, "-b", 2048, "-ub", 512,
            "-lm", "mmap", "-fa", "off", "-o", "json"]
    run = run_child("llama-bench", argv, log, stdout=out, check_rss=False)
    rows = json.loads(out.read_text())
    ts = {("pp" if r["n_prompt"] else "tg"): r["avg_ts"] for r in rows}
    return {**ts, "peak_rss_mb": run.peak_rss_mb}


def lfmq_bench(model: Path, threads: int, reps: int, knobs: dict, log: Path, n_gen: int = 128,
               n_prompt: int = 512) -> dict[str, float]:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(knobs, f)
    out = log.with_suffix(".json")
    argv = lfmq_cli("bench", model, "-t", threads, "-p", n_prompt, "-n", n_gen, "-r", reps, "--profile", f.name,
                    "-o", out, "--force")
    run_child("lfmq bench", argv, log, check_rss=False)
    Path(f.name).unlink()
    tests = json.loads(out.read_text())["tests"]
    res = {("pp" if t["n_prompt"] else "tg"): t["avg_ts"] for t in tests}
    res["peak_rss_mb"] = max(t["peak_rss_mb"] for t in tests)
    res["tg_peak_rss_mb"] = next((t["peak_rss_mb"] for t in tests if t["n_gen"]), 0.0)
    return res


def quartiles(xs: list[float]) -> tuple[float, float, float]:
    if len(xs) < 2:
        return xs[0], xs[0], xs[0]
    q1, q2, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    return q1, q2, q3


def geomean_ci(ratios: list[float]) -> tuple[float, float, float]:
    """Geometric mean of paired ratios with a 95% interval from the spread of their logs (normal approximation):
    how far one run's figure can be trusted, which the median alone does not say."""
    logs = [math.log(x) for x in ratios]
    m = statistics.mean(logs)
    half = 1.96 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else 0.0
    return math.exp(m), math.exp(m - half), math.exp(m + half)


def overhead(models: dict[str, Path], args: argparse.Namespace, logs: Path) -> dict[str, dict]:
    """Both tools in turns, ABBA (so neither always runs first), each lfmq run paired with its llama-bench run."""
    results: dict[str, dict[str, list[dict]]] = {q: {"llama-bench": [], "lfmq": []} for q in models}
    for r in range(args.rounds):
        for q, model in models.items():
            order = ("llama-bench", "lfmq") if r % 2 == 0 else ("lfmq", "llama-bench")
            for name in order:
                log = logs / f"{name}-{q}-{r}.log"
                res = (llama_bench(model, args.threads, args.reps, log) if name == "llama-bench"
                       else lfmq_bench(model, args.threads, args.reps, SAME, log))
                results[q][name].append(res)
            lf, lb = results[q]["lfmq"][-1], results[q]["llama-bench"][-1]
            print(f"  round {r + 1}/{args.rounds} {q:5s} pp lfmq {lf['pp']:7.2f} llama-bench {lb['pp']:7.2f} "
                  f"({lf['pp'] / lb['pp']:.3f}x)   tg lfmq {lf['tg']:6.2f} llama-bench {lb['tg']:6.2f} "
                  f"({lf['tg'] / lb['tg']:.3f}x)", flush=True)
    summary = {}
    for q, by_tool in results.items():
        med = {name: {k: statistics.median(r[k] for r in runs) for k in ("pp", "tg", "peak_rss_mb")}
               for name, runs in by_tool.items()}
        s = {"median": med}
        for k in ("pp", "tg"):
            paired = [a[k] / b[k] for a, b in zip(by_tool["lfmq"], by_tool["llama-bench"])]
            q1, q2, q3 = quartiles(paired)
            s[f"{k}_paired"] = paired
            s[f"{k}_ratio"], s[f"{k}_iqr"] = q2, (q1, q3)
            s[f"{k}_ratio_of_medians"] = med["lfmq"][k] / med["llama-bench"][k]
            s[f"{k}_geomean"], *s[f"{k}_ci95"] = geomean_ci(paired)
        summary[q] = s
    return summary


def memory(model: Path, args: argparse.Namespace, logs: Path) -> dict[str, float]:
    """Host profile knobs (no mmap, n_ctx 4096) against the binding's defaults (mmap), tg128 and peak RSS."""
    runs: dict[str, list[dict]] = {"profile": [], "binding defaults": []}
    knobs = {"profile": {"n_ctx": 4096}, "binding defaults": BINDING_DEFAULTS}
    for r in range(args.memory_rounds):
        for name in (("profile", "binding defaults") if r % 2 == 0 else ("binding defaults", "profile")):
            res = lfmq_bench(model, args.threads, args.reps, knobs[name], logs / f"mem-{name.replace(' ', '_')}-{r}.log",
                             n_prompt=0)
            runs[name].append(res)
            print(f"  round {r + 1}/{args.memory_rounds} Q4_0 {name:16s} tg {res['tg']:7.2f} tok/s  "
                  f"peak {res['tg_peak_rss_mb']:.0f} MB", flush=True)
    size_mb = model.stat().st_size / 2**20
    med = {n: {k: statistics.median(x[k] for x in v) for k in ("tg", "tg_peak_rss_mb")} for n, v in runs.items()}
    return {"file_mb": size_mb, "profile_peak_mb": med["profile"]["tg_peak_rss_mb"],
            "default_peak_mb": med["binding defaults"]["tg_peak_rss_mb"],
            "profile_peak_ratio": med["profile"]["tg_peak_rss_mb"] / size_mb,
            "default_peak_ratio": med["binding defaults"]["tg_peak_rss_mb"] / size_mb,
            "tg_ratio": med["profile"]["tg"] / med["binding defaults"]["tg"]}


def main() -> int:
    args = parse_args()
    logs = args.workdir / "logs" / "bench"
    logs.mkdir(parents=True, exist_ok=True)
    f16 = ensure_f16(args.workdir)
    models = {q: ensure_quantized(args.workdir, f16, q, args.threads) for q in args.types}
    q4 = models.get("Q4_0") or ensure_quantized(args.workdir, f16, "Q4_0", args.threads)
    tool("llama-bench")
    warm_page_cache(*dict.fromkeys([*models.values(), q4]))
    print(f"threads {args.threads}, load average {load_average():.2f}")
    over = {} if args.memory_only else overhead(models, args, logs)
    mem = memory(q4, args, logs)
    print("\nmedians                 pp512 t/s   tg128 t/s   peak MB")
    ok = True
    for q, s in over.items():
        for name, m in s["median"].items():
            print(f"{q:5s} {name:12s} {m['pp']:12.2f} {m['tg']:11.2f} {m['peak_rss_mb']:9.0f}")
        good = s["pp_ratio"] >= 0.97 and s["tg_ratio"] >= 0.97
        ok &= good
        print(f"{q:5s} lfmq/llama-bench, median of {len(s['pp_paired'])} paired runs: pp {s['pp_ratio']:.3f}x "
              f"(IQR {s['pp_iqr'][0]:.3f}-{s['pp_iqr'][1]:.3f}), tg {s['tg_ratio']:.3f}x (IQR {s['tg_iqr'][0]:.3f}-"
              f"{s['tg_iqr'][1]:.3f}); ratio of medians pp {s['pp_ratio_of_medians']:.3f}x tg "
              f"{s['tg_ratio_of_medians']:.3f}x  (target >= 0.97x: {'PASS' if good else 'FAIL'})")
        print(f"{q:5s} geometric mean of the paired ratios (95% interval): pp {s['pp_geomean']:.3f}x "
              f"({s['pp_ci95'][0]:.3f}-{s['pp_ci95'][1]:.3f}), tg {s['tg_geomean']:.3f}x "
              f"({s['tg_ci95'][0]:.3f}-{s['tg_ci95'][1]:.3f}); the target is read on the median above")
    mem_ok = mem["profile_peak_ratio"] <= 1.3 and mem["tg_ratio"] >= 0.97
    ok &= mem_ok
    print(f"\nQ4_0 at n_ctx 4096: file {mem['file_mb']:.0f} MB; peak RSS with the profile's knobs "
          f"{mem['profile_peak_mb']:.0f} MB = {mem['profile_peak_ratio']:.2f}x the file (target <= 1.3x), with the "
          f"binding's defaults {mem['default_peak_mb']:.0f} MB = {mem['default_peak_ratio']:.2f}x; tg profile/defaults "
          f"{mem['tg_ratio']:.3f}x (target >= 0.97x): {'PASS' if mem_ok else 'FAIL'}")
    emit_json({"threads": args.threads, "overhead": over, "memory": mem, "meets_targets": ok}, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
