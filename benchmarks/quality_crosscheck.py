"""Cross-check lfmq's importance matrix and perplexity against llama.cpp's own llama-imatrix and llama-perplexity.

On the synthetic, random-weight LFM2.5-350M (F16 from `lfmq convert`, and Q4_K_M made from it by `lfmq quantize`;
both cached in the work dir, checkpoint shared with the other benchmarks), with the same text, context, chunk count
and thread count for both tools (llama tools built from the llama.cpp lfmq's binding vendors: llama_tools.py):

(a) `lfmq imatrix F16 -f TEXT --n-ctx C --chunks N` vs `llama-imatrix -m F16 -f TEXT -c C --chunks N --no-ppl
    --parse-special` (lfmq parses special tokens such as <|im_start|> in calibration text; llama-imatrix does so
    only with --parse-special; --no-ppl only skips its perplexity printout, every position's output is computed
    either way). Compared: tensor names, counts, and per tensor the relative difference of the mean squares
    (sums / counts) per column: median and max per tensor and overall. Target: every value within 1%.
(b) `lfmq eval Q4_K_M -r F16 -f TEXT --n-ctx C --chunks N` vs `llama-perplexity -m {F16,Q4_K_M} -f TEXT -c C
    --chunks N` ("Final estimate: PPL = X +/- Y"). Target: PPL within 1% for each file.

Before that, a child process tokenizes each text both ways (lfmq's ChunkEvaluator.tokenize + chunks_of, and
llama.cpp's common_tokenize as the tools call it: BOS added, special tokens parsed only for llama-imatrix
--parse-special; chunks of C tokens with the first replaced by BOS) and reports whether the chunks are identical:
the two tools must evaluate the same tokens for the comparison to mean anything, so that is checked too.

Diagnostics (skip with --no-diagnose) rerun lfmq on derived texts that isolate why numbers differ, against the same
llama-imatrix file / llama-perplexity on the matching text: the text with lfmq's BOS token spelled out in front (so
lfmq's chunks start where llama.cpp's do), and for perplexity the text with its special-token markers removed (so
parsing them or not cannot matter). They are informational: targets are judged on the plain text only.

Random weights give perplexities in the tens of thousands: meaningless as quality, but both tools must agree.
Exits 1 if a target or a same-tokens check fails, naming it.

Run it from the repository root (about 8 minutes on 2 cores with the defaults):

    .venv/bin/python benchmarks/quality_crosscheck.py [--workdir benchmarks/out] [--threads N] [--ctx 512]
        [--chunks 8] [--imatrix-text FILE] [--ppl-text FILE] [--no-diagnose] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import gguf
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (REPO, default_threads, emit_json, ensure_f16, ensure_quantized, lfmq_cli,  # noqa: E402
                    run_child, tool)

DATA = REPO / "lfmq" / "quantize" / "data"
TOLERANCE = 0.01  # relative, for imatrix values and perplexities
SPECIAL = re.compile(r"<\|[A-Za-z0-9_]+\|>")
TINY = 1e-30

# Run in a child (it loads the model): lfmq's chunks of one text vs the chunks a llama.cpp tool cuts from another.
# argv: model ctx chunks JSON[[label, lfmq_text, llama_text, parse_special], ...]; prints one JSON object.
TOKEN_CHECK = r'''
import json, sys
import numpy as np
import llama_cpp
from lfmq.quantize.chunks import ChunkEvaluator, chunks_of

model, ctx, limit, pairs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), json.loads(sys.argv[4])
out = {}
with ChunkEvaluator(model, ctx, 1) as ev:
    bos = llama_cpp.llama_vocab_bos(ev.vocab)
    def common_tokenize(text, parse_special):  # what llama-perplexity / llama-imatrix call: add_special=true
        raw = text.encode()
        buf = (llama_cpp.llama_token * (len(raw) + 16))()
        n = llama_cpp.llama_tokenize(ev.vocab, raw, len(raw), buf, len(raw) + 16, True, parse_special)
        return np.ctypeslib.as_array(buf)[:n].astype(np.int32)
    def llama_chunks(tokens):  # perplexity.cpp / imatrix.cpp: chunk i = tokens[i*ctx:(i+1)*ctx], first -> BOS
        n = min(len(tokens) // ctx, limit)
        return [np.concatenate([[bos], tokens[i * ctx + 1:(i + 1) * ctx]]) for i in range(n)]
    for label, lfmq_text, llama_text, special in pairs:
        mine = ev.tokenize(open(lfmq_text, encoding="utf-8").read(), special)
        ref = common_tokenize(open(llama_text, encoding="utf-8").read(), special)
        lf, ll = chunks_of(mine, ctx, limit, ev.bos), llama_chunks(ref)
        same = sum(np.array_equal(a, b) for a, b in zip(lf, ll))
        out[label] = {"lfmq_text": lfmq_text, "llama_text": llama_text, "parse_special": special,
                      "lfmq_tokens": len(mine), "llama_tokens": len(ref), "lfmq_chunks": len(lf),
                      "llama_chunks": len(ll), "identical_chunks": int(same),
                      "lfmq_stream_is_llama_stream_minus_bos":
                          bool(len(ref) == len(mine) + 1 and np.array_equal(ref[1:], mine))}
print(json.dumps(out))
'''


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out",
                    help="checkpoint, models, imatrix files and logs (default: benchmarks/out)")
    ap.add_argument("--threads", type=int, default=default_threads(), help="threads for every tool (default: all)")
    ap.add_argument("--ctx", type=int, default=512, help="tokens per chunk (default: 512)")
    ap.add_argument("--chunks", type=int, default=8, help="chunks of text to use (default: 8)")
    ap.add_argument("--imatrix-text", type=Path, default=DATA / "calibration.txt",
                    help="text for the importance matrices (default: lfmq's calibration.txt)")
    ap.add_argument("--ppl-text", type=Path, default=None,
                    help="text for perplexity (default: lfmq's eval.txt, or calibration.txt if there is none)")
    ap.add_argument("--no-diagnose", action="store_true", help="skip the diagnostic reruns on derived texts")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON summary to FILE")
    args = ap.parse_args()
    if args.ppl_text is None:
        args.ppl_text = DATA / "eval.txt"
        if not args.ppl_text.exists():
            print(f"note: {args.ppl_text} does not exist (yet): using calibration.txt for perplexity too")
            args.ppl_text = DATA / "calibration.txt"
    return args


# ---------------------------------------------------------------- texts and tokens


def bos_text(f16: Path) -> str:
    """The BOS token's text (e.g. <|startoftext|>): put in front of a text, lfmq's special-token parsing turns it
    into BOS, so lfmq's token stream becomes the one llama.cpp's tools cut chunks from."""
    r = gguf.GGUFReader(f16)
    bos = int(r.fields["tokenizer.ggml.bos_token_id"].contents())
    return r.fields["tokenizer.ggml.tokens"].contents(bos)


def derived_texts(xdir: Path, args: argparse.Namespace, bos: str) -> dict[str, Path]:
    """The texts the diagnostics use, written into the work dir."""
    out = {}
    for key, src in (("imatrix", args.imatrix_text), ("ppl", args.ppl_text)):
        text = src.read_text(encoding="utf-8")
        out[f"{key}+bos"] = xdir / f"{src.stem}.bos.txt"
        out[f"{key}+bos"].write_text(bos + text, encoding="utf-8")
        if key == "ppl" and SPECIAL.search(text):
            stripped = SPECIAL.sub("", text)
            out["ppl-special"] = xdir / f"{src.stem}.nospecial.txt"
            out["ppl-special"].write_text(stripped, encoding="utf-8")
            out["ppl-special+bos"] = xdir / f"{src.stem}.nospecial.bos.txt"
            out["ppl-special+bos"].write_text(bos + stripped, encoding="utf-8")
    return out


def token_pairs(args: argparse.Namespace, derived: dict[str, Path]) -> list[tuple[str, Path, Path, bool]]:
    """(label, text lfmq reads, text the llama.cpp tool reads, whether that tool parses special tokens)."""
    pairs = [("(a) imatrix", args.imatrix_text, args.imatrix_text, True),
             ("(b) perplexity", args.ppl_text, args.ppl_text, False)]
    if "imatrix+bos" in derived:
        pairs.append(("diag imatrix: lfmq BOS+", derived["imatrix+bos"], args.imatrix_text, True))
    if "ppl-special" in derived:
        pairs.append(("diag PPL: no markers", derived["ppl-special"], derived["ppl-special"], False))
        pairs.append(("diag PPL: no markers, lfmq BOS+", derived["ppl-special+bos"], derived["ppl-special"], False))
    elif "ppl+bos" in derived:
        pairs.append(("diag PPL: lfmq BOS+", derived["ppl+bos"], args.ppl_text, False))
    return pairs


def check_tokens(f16: Path, args: argparse.Namespace, pairs: list[tuple[str, Path, Path, bool]],
                 logs: Path) -> dict[str, Any]:
    stdout = logs / "tokens.json"
    spec = json.dumps([[label, str(a), str(b), special] for label, a, b, special in pairs])
    run_child("token check", [sys.executable, "-c", TOKEN_CHECK, f16, args.ctx, args.chunks, spec],
              logs / "tokens.log", stdout=stdout, check_rss=False)
    return json.loads(stdout.read_text())


def print_tokens(report: dict[str, Any]) -> None:
    print("\ntokens: lfmq's chunks (ChunkEvaluator.tokenize + chunks_of) vs the chunks the llama.cpp tool cuts")
    print(f"  {'case':<33}{'lfmq reads':<24}{'llama tool reads':<36}{'tokens lfmq/llama':>18}{'same chunks':>13}")
    for label, r in report.items():
        tool_text = Path(r["llama_text"]).name + (" (--parse-special)" if r["parse_special"] else "")
        minus_bos = r["lfmq_stream_is_llama_stream_minus_bos"]
        note = "  lfmq's stream = llama's minus its first token (BOS)" if minus_bos else ""
        print(f"  {label:<33}{Path(r['lfmq_text']).name:<24}{tool_text:<36}"
              f"{str(r['lfmq_tokens']) + '/' + str(r['llama_tokens']):>18}"
              f"{str(r['identical_chunks']) + '/' + str(min(r['lfmq_chunks'], r['llama_chunks'])):>13}{note}")


def same_tokens(row: dict[str, Any], tool_name: str) -> bool:
    """Whether lfmq evaluated exactly the chunks `tool_name` did (a precondition of the comparison); printed."""
    n = min(row["lfmq_chunks"], row["llama_chunks"])
    ok = row["lfmq_chunks"] == row["llama_chunks"] and row["identical_chunks"] == n
    why = ""
    if not ok and row["lfmq_stream_is_llama_stream_minus_bos"]:
        why = ("\n      lfmq's token stream lacks the BOS llama.cpp puts in front, so each of its chunks starts one text"
               " token later\n      (and the text's first token is never seen)")
    elif not ok:
        why = (f"\n      the text tokenizes differently: {row['lfmq_tokens']} tokens for lfmq, "
               f"{row['llama_tokens']} for the tool")
        if not row["parse_special"]:
            why += ("\n      (lfmq parses special-token markers such as <|im_start|> into single tokens; "
                    "this tool never does)")
    print(f"    same tokens as {tool_name}: {row['identical_chunks']}/{n} chunks identical "
          f"({'PASS' if ok else 'FAIL'}){why}")
    return ok


# ---------------------------------------------------------------- (a) importance matrix


def lfmq_imatrix(f16: Path, text: Path, out: Path, args: argparse.Namespace, logs: Path, tag: str) -> dict[str, Any]:
    stdout = logs / f"lfmq-imatrix-{tag}.json"
    run = run_child("lfmq imatrix", lfmq_cli("imatrix", f16, "-f", text, "-o", out, "--chunks", args.chunks, "--n-ctx",
                                            args.ctx, "--threads", args.threads, "--force", "--json"),
                    logs / f"lfmq-imatrix-{tag}.log", stdout=stdout, check_rss=False)
    return json.loads(stdout.read_text()) | {"wall_seconds": run.seconds}


def llama_imatrix(f16: Path, text: Path, out: Path, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    log = logs / "llama-imatrix.log"
    out.unlink(missing_ok=True)
    run = run_child("llama-imatrix", [tool("llama-imatrix"), "-m", f16, "-f", text, "-o", out, "--chunks", args.chunks,
                                      "-c", args.ctx, "-t", args.threads, "--no-ppl", "--parse-special"],
                    log, check_rss=False)
    m = re.search(r"computing over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", log.read_text())
    if not m or not out.exists():
        sys.exit(f"llama-imatrix: no 'computing over' line in {log} or no {out}")
    return {"chunks": int(m[1]), "n_ctx": int(m[2]), "batch_size": int(m[3]), "n_seq": int(m[4]),
            "log_line": m[0], "wall_seconds": run.seconds}


def compare_imatrix(lfmq_path: Path, llama_path: Path) -> dict[str, Any]:
    from lfmq.quantize.imatrix_file import read_imatrix

    a, b = read_imatrix(lfmq_path), read_imatrix(llama_path)
    ma, mb = a.means(), b.means()
    names = sorted(a.sums.keys() & b.sums.keys())
    per_tensor, values = {}, []
    counts_equal = 0
    for n in names:
        if a.sums[n].shape != b.sums[n].shape:
            per_tensor[n] = {"shape_mismatch": [list(a.sums[n].shape), list(b.sums[n].shape)]}
            continue
        rel = np.abs(ma[n].astype(np.float64) - mb[n]) / np.maximum(np.abs(mb[n].astype(np.float64)), TINY)
        values.append(rel)
        same = bool(np.array_equal(a.counts[n], b.counts[n]))
        counts_equal += same
        per_tensor[n] = {"median": float(np.median(rel)), "max": float(rel.max()), "counts_equal": same,
                         "lfmq_counts": a.counts[n].tolist(), "llama_counts": b.counts[n].tolist()}
    allrel = np.concatenate(values) if values else np.array([np.inf])
    overall = {"median": float(np.median(allrel)), "p99": float(np.percentile(allrel, 99)), "max": float(allrel.max()),
               "values": int(allrel.size)}
    same_names = a.sums.keys() == b.sums.keys()
    return {
        "lfmq_tensors": len(a.sums), "llama_tensors": len(b.sums), "same_names": same_names,
        "only_lfmq": sorted(a.sums.keys() - b.sums.keys()), "only_llama": sorted(b.sums.keys() - a.sums.keys()),
        "counts_equal": counts_equal, "compared": len(names),
        "chunk_count": [a.chunk_count, b.chunk_count], "chunk_size": [a.chunk_size, b.chunk_size],
        "overall": overall, "per_tensor": per_tensor,
        "pass": same_names and counts_equal == len(names) and overall["max"] <= TOLERANCE,
    }


def print_imatrix(cmp: dict[str, Any], lf: dict[str, Any], ll: dict[str, Any], text: Path, verbose: bool) -> None:
    print(f"\n(a) importance matrix of the F16 over {text.name}")
    print(f"    lfmq imatrix:  {lf['chunks']} chunks x {lf['chunk_size']} = {lf['tokens']} tokens, "
          f"{lf['entries']} entries, {lf['wall_seconds']:.1f} s")
    print(f"    llama-imatrix: '{ll['log_line']}', {ll['wall_seconds']:.1f} s")
    print(f"    chunk count / size in the files: lfmq {cmp['chunk_count'][0]}/{cmp['chunk_size'][0]}, "
          f"llama-imatrix {cmp['chunk_count'][1]}/{cmp['chunk_size'][1]}")
    print(f"    tensors: lfmq {cmp['lfmq_tensors']}, llama-imatrix {cmp['llama_tensors']}, same names: "
          f"{'yes' if cmp['same_names'] else 'NO'}"
          + ("" if cmp["same_names"] else f" (only lfmq: {cmp['only_lfmq']}, only llama-imatrix: {cmp['only_llama']})"))
    counts = sorted({c for t in cmp["per_tensor"].values() for c in t.get("llama_counts", [])})
    print(f"    counts equal in {cmp['counts_equal']}/{cmp['compared']} tensors (llama-imatrix's counts: {counts})")
    if verbose:
        print(f"\n    {'tensor':<36}{'median rel':>12}{'max rel':>12}  counts")
        for n, t in cmp["per_tensor"].items():
            if "median" in t:
                print(f"    {n:<36}{t['median']:>12.2e}{t['max']:>12.2e}  {'equal' if t['counts_equal'] else 'DIFFER'}")
            else:
                print(f"    {n:<36}  SHAPE MISMATCH {t['shape_mismatch']}")
    o = cmp["overall"]
    medians = [t["median"] for t in cmp["per_tensor"].values() if "median" in t]
    maxes = [t["max"] for t in cmp["per_tensor"].values() if "max" in t]
    print(f"    relative difference of mean squares, {o['values']} values: median {o['median']:.2e}, "
          f"p99 {o['p99']:.2e}, max {o['max']:.2e}")
    if medians:
        print(f"    per tensor: median of medians {np.median(medians):.2e}, largest median {max(medians):.2e}, "
              f"tensors with max > {TOLERANCE:.0%}: {sum(m > TOLERANCE for m in maxes)}/{len(maxes)}")
    print(f"    target (every value within {TOLERANCE:.0%}, same names and counts): "
          f"{'PASS' if cmp['pass'] else 'FAIL'}")


# ---------------------------------------------------------------- (b) perplexity


def lfmq_eval(q: Path, f16: Path, text: Path, args: argparse.Namespace, logs: Path, tag: str) -> dict[str, Any]:
    stdout = logs / f"lfmq-eval-{tag}.json"
    run = run_child("lfmq eval", lfmq_cli("eval", q, "-r", f16, "-f", text, "--n-ctx", args.ctx, "--chunks",
                                         args.chunks, "--threads", args.threads, "--json"),
                    logs / f"lfmq-eval-{tag}.log", stdout=stdout, check_rss=False)
    report = json.loads(stdout.read_text())
    return {"F16": {"ppl": report["reference"]["ppl"], "ppl_error": report["reference"]["ppl_error"]},
            "Q4_K_M": {"ppl": report["models"][0]["ppl"], "ppl_error": report["models"][0]["ppl_error"]},
            "chunks": report["chunks"], "tokens_scored": report["tokens_scored"], "wall_seconds": run.seconds}


def llama_perplexity(model: Path, text: Path, args: argparse.Namespace, logs: Path, tag: str) -> dict[str, Any]:
    log = logs / f"llama-perplexity-{tag}.log"
    run = run_child("llama-perplexity", [tool("llama-perplexity"), "-m", model, "-f", text, "-c", args.ctx,
                                         "--chunks", args.chunks, "-t", args.threads], log, check_rss=False)
    body = log.read_text(errors="replace")
    final = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", body)
    over = re.search(r"calculating perplexity over (\d+) chunks, n_ctx=(\d+), batch_size=(\d+), n_seq=(\d+)", body)
    if not final or not over:
        sys.exit(f"llama-perplexity: no final estimate in {log}:\n" + "\n".join(body.splitlines()[-15:]))
    return {"ppl": float(final[1]), "ppl_error": float(final[2]), "chunks": int(over[1]), "log_line": over[0],
            "wall_seconds": run.seconds}


def ppl_rows(lf: dict[str, Any], ll: dict[str, dict[str, Any]]) -> dict[str, Any]:
    rows = {}
    for name in ("F16", "Q4_K_M"):
        a, b = lf[name], ll[name]
        rel = abs(a["ppl"] - b["ppl"]) / b["ppl"]
        rows[name] = {"lfmq": a, "llama": {k: b[k] for k in ("ppl", "ppl_error", "chunks")}, "rel_diff": rel,
                      "pass": rel <= TOLERANCE and b["chunks"] == lf["chunks"]}
    return rows


def print_ppl(rows: dict[str, Any], lf: dict[str, Any], ll: dict[str, dict[str, Any]], text: Path) -> None:
    print(f"\n(b) perplexity over {text.name}")
    print(f"    lfmq eval: {lf['chunks']} chunks, {lf['tokens_scored']} tokens scored, {lf['wall_seconds']:.1f} s "
          f"(both models); llama-perplexity: '{ll['F16']['log_line']}', "
          f"{ll['F16']['wall_seconds']:.1f} s + {ll['Q4_K_M']['wall_seconds']:.1f} s")
    print(f"    {'file':<8}{'lfmq PPL':>22}{'llama-perplexity PPL':>26}{'rel diff':>10}  target <= {TOLERANCE:.0%}")
    for name, r in rows.items():
        a, b = r["lfmq"], r["llama"]
        print(f"    {name:<8}{a['ppl']:>12.2f} +/- {a['ppl_error']:<7.2f}{b['ppl']:>14.2f} +/- {b['ppl_error']:<8.2f}"
              f"{r['rel_diff']:>9.3%}  {'PASS' if r['pass'] else 'FAIL'}")


# ---------------------------------------------------------------- main


def main() -> int:
    args = parse_args()
    workdir = args.workdir.resolve()
    xdir = workdir / "crosscheck"
    logs = workdir / "logs" / "crosscheck"
    for d in (xdir, logs):
        d.mkdir(parents=True, exist_ok=True)
    f16 = ensure_f16(workdir)
    q4 = ensure_quantized(workdir, f16, "Q4_K_M", args.threads)
    for name in ("llama-imatrix", "llama-perplexity"):
        tool(name)  # build now if missing
    derived = {} if args.no_diagnose else derived_texts(xdir, args, bos_text(f16))
    print("checking tokenization ...", flush=True)
    tokens = check_tokens(f16, args, token_pairs(args, derived), logs)
    print_tokens(tokens)
    summary: dict[str, Any] = {"threads": args.threads, "ctx": args.ctx, "chunks": args.chunks,
                               "imatrix_text": str(args.imatrix_text), "ppl_text": str(args.ppl_text),
                               "tolerance": TOLERANCE, "tokens": tokens}

    print(f"\nrunning lfmq imatrix and llama-imatrix on {f16.name} ...", flush=True)
    llama_im = xdir / "llama-imatrix.gguf"
    lf_im = lfmq_imatrix(f16, args.imatrix_text, xdir / "lfmq-imatrix.gguf", args, logs, "plain")
    ll_im = llama_imatrix(f16, args.imatrix_text, llama_im, args, logs)
    im_cmp = compare_imatrix(xdir / "lfmq-imatrix.gguf", llama_im)
    print_imatrix(im_cmp, lf_im, ll_im, args.imatrix_text, verbose=True)
    same_im = same_tokens(tokens["(a) imatrix"], "llama-imatrix --parse-special")
    summary["imatrix"] = {"lfmq": lf_im, "llama": ll_im, **im_cmp}

    print(f"\nrunning lfmq eval and llama-perplexity on {f16.name} and {q4.name} ...", flush=True)
    lf_ppl = lfmq_eval(q4, f16, args.ppl_text, args, logs, "plain")
    ll_ppl = {"F16": llama_perplexity(f16, args.ppl_text, args, logs, "F16-plain"),
              "Q4_K_M": llama_perplexity(q4, args.ppl_text, args, logs, "Q4_K_M-plain")}
    rows = ppl_rows(lf_ppl, ll_ppl)
    print_ppl(rows, lf_ppl, ll_ppl, args.ppl_text)
    same_ppl = same_tokens(tokens["(b) perplexity"], "llama-perplexity")
    if not same_ppl and all(r["pass"] for r in rows.values()):
        print("    note: the PPLs agree within the target although the two tools scored different tokens: with random"
              "\n    weights any text gives a PPL near the same value, so that agreement shows little on its own")
    summary["perplexity"] = {"lfmq": lf_ppl, "llama": ll_ppl, "rows": rows}

    if derived:
        summary["diagnostics"] = diagnose(f16, q4, derived, llama_im, ll_ppl, args, xdir, logs)

    failed = ([] if same_im else ["same tokens as llama-imatrix"]) + ([] if im_cmp["pass"] else ["imatrix agreement"])
    failed += ([] if same_ppl else ["same tokens as llama-perplexity"])
    failed += [f"PPL {n}" for n, r in rows.items() if not r["pass"]]
    summary["same_tokens"] = {"imatrix": same_im, "perplexity": same_ppl}
    summary["failed"] = failed
    print("\ntargets: " + ("all PASS" if not failed else "FAIL: " + ", ".join(failed)))
    emit_json(summary, args.json)
    return 1 if failed else 0


def diagnose(f16: Path, q4: Path, derived: dict[str, Path], llama_im: Path, ll_ppl: dict[str, Any],
             args: argparse.Namespace, xdir: Path, logs: Path) -> dict[str, Any]:
    """lfmq rerun on derived texts, against llama.cpp's numbers on the text whose tokens they then match."""
    print("\ndiagnostics: lfmq on derived texts (informational; the targets above are judged on the plain texts)",
          flush=True)
    out: dict[str, Any] = {}
    lf = lfmq_imatrix(f16, derived["imatrix+bos"], xdir / "lfmq-imatrix-bos.gguf", args, logs, "bos")
    cmp = compare_imatrix(xdir / "lfmq-imatrix-bos.gguf", llama_im)
    o = cmp["overall"]
    print(f"  imatrix, lfmq on BOS + {args.imatrix_text.name} vs llama-imatrix on {args.imatrix_text.name}: "
          f"median {o['median']:.2e}, p99 {o['p99']:.2e}, max {o['max']:.2e}; counts equal "
          f"{cmp['counts_equal']}/{cmp['compared']}")
    out["imatrix_bos"] = {"overall": o, "counts_equal": cmp["counts_equal"], "lfmq": lf,
                          "per_tensor_max": {n: t.get("max") for n, t in cmp["per_tensor"].items()}}
    # perplexity: (text lfmq reads, text llama-perplexity reads, what still differs)
    cases = []
    if "ppl-special" in derived:
        cases.append(("no special markers", derived["ppl-special"], derived["ppl-special"], "BOS offset only"))
        cases.append(("BOS + no special markers", derived["ppl-special+bos"], derived["ppl-special"], "nothing"))
    else:
        cases.append(("BOS + text", derived["ppl+bos"], args.ppl_text, "nothing"))
    for label, lf_text, ll_text, differs in cases:
        lf = lfmq_eval(q4, f16, lf_text, args, logs, label.replace(" ", "-"))
        if ll_text == args.ppl_text:
            ll = ll_ppl
        else:
            ll = {"F16": llama_perplexity(f16, ll_text, args, logs, "F16-" + ll_text.stem),
                  "Q4_K_M": llama_perplexity(q4, ll_text, args, logs, "Q4_K_M-" + ll_text.stem)}
        rows = ppl_rows(lf, ll)
        print(f"  PPL, lfmq on {lf_text.name} vs llama-perplexity on {ll_text.name} "
              f"(token streams differ in: {differs}):")
        for name, r in rows.items():
            print(f"      {name:<7} lfmq {r['lfmq']['ppl']:>10.2f}   llama-perplexity {r['llama']['ppl']:>10.2f}   "
                  f"rel diff {r['rel_diff']:.4%}")
        out[f"ppl: {label}"] = {"lfmq_text": str(lf_text), "llama_text": str(ll_text), "differs_in": differs,
                                "rows": rows}
    return out


if __name__ == "__main__":
    sys.exit(main())
