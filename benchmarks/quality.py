"""The quality ladder that means something, and how long lfmq eval takes against llama-perplexity.

(a) The ladder on lfmq's trained tool-calling fixture (tests/fixtures/lfm2-tools-tiny: a small model trained by
    scripts/train_fixture.py, not Liquid's): F16 from `lfmq convert`, then Q8_0 ... Q2_K from `lfmq quantize`, and
    the mix `lfmq quantize --recipe auto --budget Q4_K_M` finds (searched on lfmq's calibration text), measured by
    `lfmq eval --task` against the F16: size, bits per weight, PPL, KLD, top-1 agreement on held-out conversations
    of the fixture's own kind (a seed neither training nor the task file uses, special tokens read as tokens), and
    task results on the fixture's held-out task file: right answers, exact calls, extraction fields, and agreement
    with the F16's own answers (flips). Then the recipe against Q4_K_M on that text and on lfmq's eval.txt.
    With --second CKPT (a checkpoint of other shapes, e.g. made by `scripts/train_fixture.py --layers 3
    --attention 1 --ff 768 --vocab 1024 ...`), the recipe against Q4_K_M on that model too.
    Target: the recipe within Q4_K_M's size with a mean KLD at least 10% below Q4_K_M's on held-out text.
(b) Eval speed: `lfmq eval Q4_K_M -r F16` (packed, n_batch 2048 as llama-perplexity's default) and the same with one
    chunk per decode, against `llama-perplexity -m F16` + `llama-perplexity -m Q4_K_M` (PPL only, which is less
    work than lfmq's PPL + KLD + top-1), on the shape-exact synthetic LFM2.5-350M (benchmarks/common.py), same
    text, context, chunk count and threads, each in a fresh process. Target: lfmq at most 1.05x llama-perplexity.
    The PPLs are printed side by side as a check that both measured the same thing.

    .venv/bin/python benchmarks/quality.py [--workdir benchmarks/out] [--threads N] [--ctx 512] [--chunks 8]
        [--skip-ladder] [--skip-speed] [--second CKPT] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from common import (REPO, default_threads, emit_json, ensure_f16, ensure_quantized, lfmq_cli, load_average,  # noqa: E402
                    run_child, tool, warm_page_cache)

FIXTURE = REPO / "tests" / "fixtures" / "lfm2-tools-tiny"
LADDER = ("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "Q2_K")
FIXTURE_CTX = 256  # the fixture is trained on conversations of at most 288 tokens
TARGET = 1.05
RECIPE_TARGET = 0.90  # the recipe's KLD at most this share of Q4_K_M's
SPECIAL = re.compile(r"<\|[a-z_]+\|>")
UNPACKED = r'''
import json, sys
from lfmq.quantize.eval import evaluate
q, f16, text, ctx, chunks, threads = sys.argv[1:]
r = evaluate([q], f16, file=text, n_ctx=int(ctx), chunks=int(chunks), threads=int(threads), n_batch=int(ctx))
print(json.dumps({"ref_ppl": r.reference.ppl, "ppl": r.models[0].ppl, "kld": r.models[0].kld_mean}))
'''


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out")
    ap.add_argument("--threads", type=int, default=default_threads())
    ap.add_argument("--ctx", type=int, default=512, help="chunk size for the speed comparison (default 512)")
    ap.add_argument("--chunks", type=int, default=8, help="chunks for the speed comparison (default 8)")
    ap.add_argument("--skip-ladder", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--second", type=Path, metavar="CKPT", help="a second trained checkpoint of other shapes")
    ap.add_argument("--recipe-chunks", type=int, default=16, help="calibration chunks for the recipe search")
    ap.add_argument("--json", type=Path, metavar="FILE")
    return ap.parse_args()


# ---------------------------------------------------------------- (a) the ladder on the trained fixture


def fixture_text(path: Path, conversations: int = 400, seed: int = 7) -> Path:
    """Held-out conversations of the fixture's kind (a seed neither training nor the task file uses), as the chat
    template renders them; evaluated with the special tokens parsed, as the model reads them."""
    import fixture_data

    from lfmq.runtime.template import builtin_template, render

    template = builtin_template()
    specials = {"bos_token": "", "eos_token": "<|im_end|>", "pad_token": "<|pad|>"}
    parts = [render(template, ex["messages"], tools=ex["tools"], add_generation_prompt=False, special_tokens=specials)
             for ex in fixture_data.examples(seed, conversations)]
    path.write_text("\n".join(parts), encoding="utf-8")
    return path


def recipe_against_q4(name: str, f16: Path, q4: Path, folder: Path, texts: dict[str, tuple[Path, bool]],
                      args: argparse.Namespace) -> dict[str, Any]:
    """`lfmq quantize --recipe auto --budget Q4_K_M` (in a child, as a user runs it), then the recipe and Q4_K_M
    measured on held-out texts the search never saw."""
    from lfmq.quantize.eval import evaluate

    out = folder / f16.name.replace("-F16.gguf", "-auto-Q4_K_M.gguf")
    log = folder / f"recipe-{f16.stem}.log"
    js = folder / f"recipe-{f16.stem}.json"
    run = run_child("lfmq quantize --recipe auto", lfmq_cli("quantize", f16, "--recipe", "auto", "--budget", "Q4_K_M",
                                                           "-o", out, "-c", FIXTURE_CTX, "--chunks", args.recipe_chunks,
                                                           "-t", args.threads, "--force", "--json"),
                    log, stdout=js, check_rss=False)
    recipe = json.loads(js.read_text())["recipe"]
    print(f"\n{name}: lfmq quantize --recipe auto --budget Q4_K_M in {run.seconds:.0f} s ({recipe['candidates']} "
          f"mixes measured on {recipe['chunks']} chunks of {recipe['n_ctx']} of {recipe['calibration']}; "
          f"{len(recipe['tensor_types'])} tensor-type lines)")
    print(f"    calibration KLD: recipe {recipe['kld']:.5f}, Q4_K_M {recipe['baseline_kld']:.5f}")
    rows = {}
    for label, (text, special) in texts.items():
        rep = evaluate([q4, out], f16, file=text, text_name=label, n_ctx=FIXTURE_CTX, threads=args.threads,
                       parse_special=special)
        a, b = rep.models
        rows[label] = {"q4_k_m": {"bytes": a.bytes, "kld": a.kld_mean, "ppl": a.ppl, "top1": a.top1_agreement},
                       "recipe": {"bytes": b.bytes, "kld": b.kld_mean, "ppl": b.ppl, "top1": b.top1_agreement},
                       "kld_ratio": b.kld_mean / a.kld_mean, "tokens": rep.tokens_scored}
        ok = b.bytes <= a.bytes and b.kld_mean <= RECIPE_TARGET * a.kld_mean
        print(f"    {label} ({rep.tokens_scored:,} tokens): Q4_K_M {a.bytes:,} B, KLD {a.kld_mean:.5f}, top-1 "
              f"{100 * a.top1_agreement:.1f}% | recipe {b.bytes:,} B, KLD {b.kld_mean:.5f}, top-1 "
              f"{100 * b.top1_agreement:.1f}% | KLD {100 * (b.kld_mean / a.kld_mean - 1):+.1f}% "
              f"(target <= {100 * (RECIPE_TARGET - 1):+.0f}% at <= Q4_K_M's size: {'PASS' if ok else 'FAIL'})")
    return {"recipe": recipe, "seconds": run.seconds, "held_out": rows}


def ladder(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    import lfmq
    from lfmq import ui
    from lfmq.quantize import quantize
    from lfmq.quantize.eval import evaluate

    threads = args.threads
    folder = workdir / "quality"
    folder.mkdir(parents=True, exist_ok=True)
    f16 = lfmq.convert(FIXTURE, folder / "lfm2-tools-tiny-F16.gguf", outtype="f16", force=True).path
    quants = quantize(f16, ",".join(LADDER), folder, force=True, threads=threads)
    text = fixture_text(folder / "fixture-eval.txt")
    q4 = next(q.path for q in quants if q.type == "Q4_K_M")
    texts = {"held-out fixture conversations": (text, True), "lfmq eval.txt": (REPO / "lfmq/quantize/data/eval.txt", False)}
    print(f"\n(a) the ladder on the trained fixture ({FIXTURE.relative_to(REPO)}: a SMALL TRAINED model, not Liquid's)")
    mix = recipe_against_q4("the fixture", f16, q4, folder, texts, args)
    rep = evaluate([q.path for q in quants] + [Path(mix["recipe"]["path"])], f16, file=text,
                   text_name="held-out fixture conversations", n_ctx=FIXTURE_CTX, threads=threads, parse_special=True,
                   task=FIXTURE / "tasks.jsonl")
    print(f"\nthe ladder; the last row is the recipe (its file type names its dominant type, {mix['recipe']['file_type']})")
    ui.show_eval(rep)
    return {"report": ui.to_jsonable(rep), "recipe": mix}


def second_model(ckpt: Path, folder: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The recipe against Q4_K_M on a second checkpoint of other shapes, on its own held-out conversations and
    lfmq's eval.txt."""
    import lfmq
    from lfmq.quantize import quantize

    sub = folder / "second"
    sub.mkdir(parents=True, exist_ok=True)
    cfg = json.loads((ckpt / "config.json").read_text())
    f16 = lfmq.convert(ckpt, sub / "second-F16.gguf", outtype="f16", force=True).path
    (q4,) = quantize(f16, "Q4_K_M", sub, force=True, threads=args.threads)
    shape = (f"{cfg['num_hidden_layers']} blocks {cfg['layer_types']}, hidden {cfg['hidden_size']}, FFN "
             f"{cfg['block_ff_dim']} before adjustment, vocabulary {cfg['vocab_size']}")
    print(f"\n(a') a second trained model of other shapes: {ckpt} ({shape})")
    texts = {"held-out conversations": (fixture_text(sub / "eval.txt", seed=11), True),
             "lfmq eval.txt": (REPO / "lfmq/quantize/data/eval.txt", False)}
    return {"checkpoint": str(ckpt), "shape": shape, **recipe_against_q4("the second model", f16, q4.path, sub, texts, args)}


# ---------------------------------------------------------------- (b) eval speed against llama-perplexity


def llama_perplexity(model: Path, text: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    log = logs / f"llama-perplexity-{model.stem}.log"
    run = run_child("llama-perplexity", [tool("llama-perplexity"), "-m", model, "-f", text, "-c", args.ctx,
                                         "--chunks", args.chunks, "-t", args.threads], log, check_rss=False)
    body = log.read_text(errors="replace")
    final = re.search(r"Final estimate: PPL = ([\d.]+)", body)
    if not final:
        sys.exit(f"llama-perplexity: no final estimate in {log}")
    return {"ppl": float(final[1]), "seconds": run.seconds}


def speed(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    f16 = ensure_f16(workdir)
    q4 = ensure_quantized(workdir, f16, "Q4_K_M", args.threads)
    text = REPO / "lfmq" / "quantize" / "data" / "eval.txt"
    logs = workdir / "logs" / "quality"
    logs.mkdir(parents=True, exist_ok=True)
    tool("llama-perplexity")
    warm_page_cache(f16, q4)
    load = load_average()
    ll = {name: llama_perplexity(m, text, args, logs) for name, m in (("F16", f16), ("Q4_K_M", q4))}
    out = logs / "lfmq-eval.json"
    run = run_child("lfmq eval", lfmq_cli("eval", q4, "-r", f16, "-f", text, "-c", args.ctx, "--chunks", args.chunks,
                                          "-t", args.threads, "--json"), logs / "lfmq-eval.log", stdout=out,
                    check_rss=False)
    packed = json.loads(out.read_text())
    out1 = logs / "lfmq-eval-unpacked.json"
    run1 = run_child("lfmq eval (one chunk per decode)",
                     [sys.executable, "-c", UNPACKED, q4, f16, text, args.ctx, args.chunks, args.threads],
                     logs / "lfmq-eval-unpacked.log", stdout=out1, check_rss=False)
    unpacked = json.loads(out1.read_text())
    base = ll["F16"]["seconds"] + ll["Q4_K_M"]["seconds"]
    summary = {"threads": args.threads, "ctx": args.ctx, "chunks": args.chunks, "load_before": load,
               "load_after": load_average(), "llama_perplexity": ll, "llama_perplexity_seconds": base,
               "lfmq_packed_seconds": run.seconds, "lfmq_unpacked_seconds": run1.seconds,
               "ratio_packed": run.seconds / base, "ratio_unpacked": run1.seconds / base,
               "ppl": {"F16": [packed["reference"]["ppl"], unpacked["ref_ppl"], ll["F16"]["ppl"]],
                       "Q4_K_M": [packed["models"][0]["ppl"], unpacked["ppl"], ll["Q4_K_M"]["ppl"]]},
               "kld": [packed["models"][0]["kld_mean"], unpacked["kld"]]}
    print(f"\n(b) eval time on {f16.name} + {q4.name}: {args.chunks} chunks of {args.ctx}, {args.threads} threads "
          f"(load average {load:.1f} before, {summary['load_after']:.1f} after)")
    print(f"    llama-perplexity F16 + Q4_K_M (PPL only): {ll['F16']['seconds']:.1f} s + {ll['Q4_K_M']['seconds']:.1f} s"
          f" = {base:.1f} s")
    print(f"    lfmq eval, packed (PPL, KLD, top-1):      {run.seconds:.1f} s = {summary['ratio_packed']:.2f}x"
          f"  (target <= {TARGET:.2f}x: {'PASS' if summary['ratio_packed'] <= TARGET else 'FAIL'})")
    print(f"    lfmq eval, one chunk per decode:          {run1.seconds:.1f} s = {summary['ratio_unpacked']:.2f}x")
    for name, (a, b, c) in summary["ppl"].items():
        print(f"    PPL {name:<7} lfmq packed {a:.4f}  unpacked {b:.4f}  llama-perplexity {c:.4f}")
    print(f"    KLD Q4_K_M   packed {summary['kld'][0]:.6f}  unpacked {summary['kld'][1]:.6f}")
    return summary


def main() -> int:
    args = parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {}
    if not args.skip_ladder:
        summary["ladder"] = ladder(workdir, args)
    if args.second:
        summary["second"] = second_model(args.second, workdir / "quality", args)
    if not args.skip_speed:
        summary["speed"] = speed(workdir, args)
    emit_json(summary, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
