"""Does the suite catch what it claims to? Put small, realistic defects into a scratch copy of the repository one at
a time, run the tests that should catch each, and say caught or NOT CAUGHT (issue 14).

    .venv/bin/python scripts/mutate.py              every row      (make mutate)
    .venv/bin/python scripts/mutate.py kl-reversed  only these rows
    .venv/bin/python scripts/mutate.py --check      only check that every row still applies to the code

A row is data: the file, the exact text to find (it must occur exactly once: a row whose text is missing or
ambiguous is refused, so the table follows the code as it moves), its replacement, the tests that should fail, and
what a user would meet. Grow the table with each feature. The tests first run once on the unmutated copy: a
defect is caught when a test that passes there fails with the defect in. Exit code 0 only if every row is caught.
Not part of `make test`: it runs the named tests once per row (minutes)."""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON = ROOT / ".venv" / "bin" / "python"
TIMEOUT = 1200  # seconds per run of a row's tests; a defect that hangs them counts as caught (CI would time out)

D = "tests/test_defects.py"
B = "tests/test_error_boundary.py"

MUTATIONS: list[dict] = [
    # -- the six of issue 14, which passed every test before tests/test_defects.py ---------------------------------
    {"id": "norm-eps-spelling",
     "file": "lfmq/convert/arch/lfm2.py",
     "find": 'norm_eps=float(cfg.get("norm_eps", cfg.get("rms_norm_eps", 1e-5))),',
     "replace": 'norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),',
     "tests": [f"{D}::test_norm_eps_is_written_in_either_spelling", f"{D}::test_norm_eps_reaches_the_logits"],
     "description": "a checkpoint spelling the RMS-norm epsilon `norm_eps` (as LFM2's do) gets the default 1e-5"},
    {"id": "rms-norm-eps-spelling",
     "file": "lfmq/convert/arch/lfm2.py",
     "find": 'norm_eps=float(cfg.get("norm_eps", cfg.get("rms_norm_eps", 1e-5))),',
     "replace": 'norm_eps=float(cfg.get("norm_eps", 1e-5)),',
     "tests": [f"{D}::test_norm_eps_is_written_in_either_spelling", f"{D}::test_norm_eps_reaches_the_logits"],
     "description": "a checkpoint spelling it `rms_norm_eps` gets the default 1e-5"},
    {"id": "rope-theta-top-level-ignored",
     "file": "lfmq/convert/arch/lfm2.py",
     "find": '        return float(cfg["rope_theta"])\n',
     "replace": "        pass\n",
     "tests": [f"{D}::test_rope_base_is_written_from_each_place"],
     "description": "found building this table: LFM2's top-level rope_theta ignored (every fixture used the default)"},
    {"id": "cli-drops-imatrix",
     "file": "lfmq/cli/quantize.py",
     "find": "results = run(model, types, output, imatrix=imatrix,",
     "replace": "results = run(model, types, output, imatrix=None,",
     "tests": [f"{D}::test_cli_quantize_passes_imatrix"],
     "description": "`lfmq quantize --imatrix FILE` never reaches the library: a k-quant is made without the matrix"},
    {"id": "kl-reversed",
     "file": "lfmq/quantize/eval.py",
     "find": "            diff = p.x - q.x\n"
             "            diff *= p.probs()\n"
             "            cross = diff.sum(axis=-1, dtype=np.float64)\n"
             "            self.kld.append(cross - (p.lse - q.lse))\n",
     "replace": "            diff = q.x - p.x\n"
                "            diff *= q.probs()\n"
                "            cross = diff.sum(axis=-1, dtype=np.float64)\n"
                "            self.kld.append(cross - (q.lse - p.lse))\n",
     "tests": [f"{D}::test_kl_is_of_the_model_from_the_reference",
               f"{D}::test_eval_loop_measures_each_model_against_the_first"],
     "description": "KL(q||ref) instead of KL(ref||q): still 0 for the reference, still orders the ladder"},
    {"id": "bench-timer-before-depth",
     "file": "lfmq/bench/case.py",
     "find": "            if case.n_depth:\n"
             "                _prompt(model, rng.integers(model.n_vocab, size=case.n_depth, dtype=np.int64))\n"
             "            t = time.perf_counter_ns()\n",
     "replace": "            t = time.perf_counter_ns()\n"
                "            if case.n_depth:\n"
                "                _prompt(model, rng.integers(model.n_vocab, size=case.n_depth, dtype=np.int64))\n",
     "tests": [f"{D}::test_bench_times_only_the_test_not_the_depth"],
     "description": "pp/tg with --depth include the depth prefill in their time"},
    {"id": "peak-is-vmrss",
     "file": "lfmq/bench/run.py",
     "find": "peak_rss_mb=r.vmhwm,",
     "replace": "peak_rss_mb=r.vmrss,",
     "tests": [f"{D}::test_bench_peak_memory_is_vmhwm"],
     "description": "the \"peak\" memory is the resident memory at the end of the case"},
    {"id": "memory-status-units",
     "file": "lfmq/bench/case.py",
     "find": "out[key] = int(value.split()[0]) / 1024",
     "replace": "out[key] = int(value.split()[0]) / 1000",
     "tests": [f"{D}::test_memory_status_reads_the_peak_apart", f"{D}::test_bench_peak_memory_is_vmhwm"],
     "description": "kB read as thousands of MB: every memory figure 2.4% too high"},
    {"id": "predict-drops-decode-efficiency",
     "file": "lfmq/devices/predict.py",
     "find": "decode = decode_tps(p, eff.decode, eff.overhead_ms / 1e3, m.bytes_per_token) if",
     "replace": "decode = decode_tps(p, 1.0, eff.overhead_ms / 1e3, m.bytes_per_token) if",
     "tests": [f"{D}::test_predict_gives_back_the_figure_it_was_calibrated_on", f"{D}::test_predict_by_hand"],
     "description": "predicted decode speed at the nominal bandwidth: several times the published figures"},
    {"id": "predict-drops-overhead",
     "file": "lfmq/devices/predict.py",
     "find": "decode = decode_tps(p, eff.decode, eff.overhead_ms / 1e3, m.bytes_per_token) if",
     "replace": "decode = decode_tps(p, eff.decode, 0.0, m.bytes_per_token) if",
     "tests": [f"{D}::test_predict_gives_back_the_figure_it_was_calibrated_on", f"{D}::test_predict_by_hand"],
     "description": "the per-token overhead the factors were fitted with left out of the prediction"},
    {"id": "predict-drops-prefill-efficiency",
     "file": "lfmq/devices/predict.py",
     "find": "prefill = prefill_tps(p, eff.prefill, m.active_params or m.params) if",
     "replace": "prefill = prefill_tps(p, 1.0, m.active_params or m.params) if",
     "tests": [f"{D}::test_predict_gives_back_the_figure_it_was_calibrated_on", f"{D}::test_predict_by_hand"],
     "description": "predicted prefill speed at the nominal peak compute"},
    # -- the seventh: a quantize failure reaching the user as a traceback --------------------------------------------
    {"id": "quantize-error-outside-the-tree",
     "file": "lfmq/errors.py",
     "find": "class QuantizeError(LlamaError):",
     "replace": "class QuantizeError(RuntimeError):",
     "tests": [f"{B}::test_cli_quantize_refuses_an_imatrix_type_without_one"],
     "description": "QuantizeError is not an LfmqError: the CLI shows a traceback"},
    {"id": "quantize-raises-bare-runtimeerror",
     "file": "lfmq/quantize/quantize.py",
     "find": 'raise QuantizeError(f"quantizing to {qt.name} failed: {reason}")',
     "replace": 'raise RuntimeError(f"quantizing to {qt.name} failed: {reason}")',
     "tests": [f"{B}::test_cli_quantize_failing_inside_llama_cpp"],
     "description": "llama.cpp's refusal surfaces as a RuntimeError: a traceback instead of one line"},
    {"id": "boundary-reraises",
     "file": "lfmq/cli/app.py",
     "find": "    except LfmqError as e:\n        if debug:\n",
     "replace": "    except LfmqError as e:\n        if True:\n",
     "tests": [f"{B}::test_every_error_class_is_one_line_and_its_exit_code"],
     "description": "the CLI boundary no longer catches LfmqError: every user error is a traceback"},
    {"id": "boundary-exit-code",
     "file": "lfmq/cli/app.py",
     "find": "        ui.error(str(e))\n        sys.exit(e.exit_code)\n",
     "replace": "        ui.error(str(e))\n        sys.exit(1)\n",
     "tests": [f"{B}::test_every_error_class_is_one_line_and_its_exit_code"],
     "description": "usage errors exit 1 like every other error, not 2"},
    # -- defects the suite caught before issue 14: the comparisons against references ------------------------------
    {"id": "ffn-gate-up-swapped",
     "file": "lfmq/convert/tensors.py",
     "find": "name = _gguf_name(name_map, src)",
     "replace": "name = _gguf_name(name_map, src.replace('.w1.', '.w9.').replace('.w3.', '.w1.')"
                ".replace('.w9.', '.w3.'))",
     "tests": ["tests/test_convert_parity.py::test_f32_logits_match_reference[lfm2.5-layer_types-tied-bf16]"],
     "description": "the FFN gate and up projections written under each other's names"},
    {"id": "conv-blocks-get-kv-heads",
     "file": "lfmq/convert/arch/lfm2.py",
     "find": "return [self.n_head_kv if self.is_attention(i) else 0 for i in range(self.n_layer)]",
     "replace": "return [self.n_head_kv for i in range(self.n_layer)]",
     "tests": ["tests/test_metadata.py::test_hparams_round_trip"],
     "description": "conv blocks written with KV heads: llama.cpp takes them for attention blocks"},
    {"id": "rope-theta-per-layer-type-ignored",
     "file": "lfmq/convert/arch/lfm2.py",
     "find": 'per_type = params.get("full_attention") or {}',
     "replace": "per_type = {}",
     "tests": ["tests/test_convert_parity.py::test_f32_logits_match_reference[rope-per-layer-type]"],
     "description": "a rope base given per layer type is replaced by the default"},
    {"id": "special-tokens-not-control",
     "file": "lfmq/convert/vocab.py",
     "find": 'types.append(gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED)',
     "replace": "types.append(gguf.TokenType.USER_DEFINED)",
     "tests": ["tests/test_metadata.py::test_tokenizer_round_trip"],
     "description": "<|im_start|> and the other special tokens written as user-defined text"},
    {"id": "temp-file-left-behind",
     "file": "lfmq/atomic.py",
     "find": "        tmp.unlink(missing_ok=True)\n",
     "replace": "        pass\n",
     "tests": ["tests/test_cli_errors.py::test_failure_midway_leaves_no_file_and_keeps_the_old_one"],
     "description": "a failed write leaves its .partial file beside the target"},
    {"id": "chunk-bos-not-replaced",
     "file": "lfmq/quantize/chunks.py",
     "find": "            chunk[0] = bos\n",
     "replace": "            pass\n",
     "tests": ["tests/test_imatrix_eval.py::test_chunks_are_cut_as_llama_cpp_cuts_them"],
     "description": "chunks after the first start mid-text instead of with BOS, unlike llama-perplexity"},
    {"id": "eval-scores-whole-chunk",
     "file": "lfmq/quantize/eval.py",
     "find": "    first = n_ctx // 2\n",
     "replace": "    first = 0\n",
     "tests": ["tests/test_imatrix_eval.py::test_eval_ppl_equals_reference_computation"],
     "description": "PPL scored on every token of a chunk, not the second half as llama-perplexity scores"},
    {"id": "eval-targets-off-by-one",
     "file": "lfmq/quantize/eval.py",
     "find": "targets = chunk[first + 1 :]",
     "replace": "targets = chunk[first : -1]",
     "tests": ["tests/test_imatrix_eval.py::test_eval_ppl_equals_reference_computation"],
     "description": "each row's likelihood read for the token it was given, not the next one"},
    {"id": "imatrix-sums-not-squared",
     "file": "lfmq/quantize/imatrix.py",
     "find": 'self.sums[name][0] += np.einsum("ri,ri->i", rows, rows)',
     "replace": "self.sums[name][0] += np.abs(rows).sum(axis=0)",
     "tests": ["tests/test_imatrix_eval.py::test_imatrix_equals_reference_activations"],
     "description": "the importance matrix sums activations instead of their squares"},
    {"id": "bench-rate-counts-prompt-only",
     "file": "lfmq/bench/run.py",
     "find": "ts = [(n_prompt + n_gen) * 1e9 / s for s in ns]",
     "replace": "ts = [max(n_prompt, 1) * 1e9 / s for s in ns]",
     "tests": ["tests/test_bench.py::test_rows_have_llama_bench_fields_and_arithmetic"],
     "description": "tokens per second of a tg test counted from the prompt length"},
    {"id": "chat-reuses-a-divergent-prefix",
     "file": "lfmq/runtime/model.py",
     "find": "while keep < min(len(held), len(tokens)) and held[keep] == tokens[keep]:",
     "replace": "while keep < min(len(held), len(tokens)):",
     "tests": ["tests/test_runtime_chat.py::test_divergent_history_is_reevaluated_not_misread"],
     "description": "the context's tokens kept without comparing them: an edited history is answered from the old one"},
]


def check(rows: list[dict], tree: Path) -> dict[str, str]:
    """Why each row cannot apply to the code in `tree`, by id (rows that apply are absent)."""
    refused = {}
    for row in rows:
        path = tree / row["file"]
        missing_tests = [t for t in row["tests"] if not (tree / t.split("::")[0]).is_file()]
        if not path.is_file():
            refused[row["id"]] = f"{row['file']} does not exist"
        elif missing_tests:
            refused[row["id"]] = f"test file {missing_tests[0].split('::')[0]} does not exist"
        else:
            n = path.read_text().count(row["find"])
            if n != 1:
                refused[row["id"]] = (f"find text not in {row['file']}: the code moved, update the row" if n == 0 else
                                      f"find text occurs {n} times in {row['file']}: make it unique")
    return refused


def scratch_copy() -> Path:
    """The working tree as it is now (uncommitted work included), without the venv, git and build outputs."""
    top_level = {".git", ".venv", "demo", "build"}
    anywhere = {"__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n in anywhere or n.endswith(".egg-info")}
        return skip | (top_level & set(names) if Path(folder) == ROOT else set())

    dest = Path(tempfile.mkdtemp(prefix="lfmq-mutate-")) / "repo"
    shutil.copytree(ROOT, dest, ignore=ignore, symlinks=True)
    return dest


def environment(tree: Path) -> dict[str, str]:
    # the scratch copy's lfmq first, also in the subprocesses tests start; no bytecode, so an edit is always seen
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("LFMQ_DEBUG", None)
    return env


def run_tests(tree: Path, tests: list[str], stop_early: bool) -> tuple[str, set[str], float]:
    """('ran' | 'timeout' | 'error: ...', ids of failed tests, seconds)."""
    report = tree.parent / "junit.xml"
    report.unlink(missing_ok=True)
    cmd = [str(PYTHON), "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}", *tests]
    if stop_early:
        cmd.insert(4, "-x")
    started = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=environment(tree), capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        return "timeout", set(), time.perf_counter() - started
    seconds = time.perf_counter() - started
    if proc.returncode not in (0, 1) or not report.is_file():
        tail = (proc.stdout.strip().splitlines() or proc.stderr.strip().splitlines() or ["no output"])[-1]
        return f"error: pytest exited {proc.returncode} ({tail})", set(), seconds
    failed = set()
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            failed.add(f"{case.get('classname')}::{case.get('name')}")
    return "ran", failed, seconds


def check_import(tree: Path) -> None:
    out = subprocess.run([str(PYTHON), "-c", "import lfmq; print(lfmq.__file__)"], cwd=tree, env=environment(tree),
                         capture_output=True, text=True).stdout.strip()
    if not out.startswith(str(tree)):
        sys.exit(f"mutate: the scratch copy imports lfmq from {out or '(nowhere)'}, not from {tree}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("ids", nargs="*", help="run only these rows")
    parser.add_argument("--check", action="store_true", help="only check that every row applies to the code")
    parser.add_argument("--keep", action="store_true", help="keep the scratch copy")
    args = parser.parse_args()
    unknown = set(args.ids) - {r["id"] for r in MUTATIONS}
    if unknown:
        sys.exit(f"mutate: no row {', '.join(sorted(unknown))}")
    rows = [r for r in MUTATIONS if not args.ids or r["id"] in args.ids]
    refused = check(rows, ROOT)
    for row_id, why in refused.items():
        print(f"REFUSED      {row_id}: {why}")
    if args.check:
        print(f"{len(rows) - len(refused)} of {len(rows)} rows apply to the code as it is")
        return 1 if refused else 0
    tree = scratch_copy()
    try:
        return run_rows([r for r in rows if r["id"] not in refused], tree, len(refused))
    finally:
        if args.keep:
            print(f"scratch copy kept: {tree}")
        else:
            shutil.rmtree(tree.parent, ignore_errors=True)


def run_rows(rows: list[dict], tree: Path, n_refused: int) -> int:
    check_import(tree)
    every_test = list(dict.fromkeys(t for r in rows for t in r["tests"]))
    status, broken, seconds = run_tests(tree, every_test, stop_early=False)
    print(f"baseline: {len(every_test)} test selections on the unmutated copy, {status}, "
          f"{len(broken)} failing ({seconds:.0f}s)")
    if status != "ran":
        return 2
    for test in sorted(broken):
        print(f"  failing before any mutation: {test} (cannot count as a catch)")
    caught = 0
    for row in rows:
        path = tree / row["file"]
        original = path.read_text()
        path.write_text(original.replace(row["find"], row["replace"], 1))
        try:
            status, failed, seconds = run_tests(tree, row["tests"], stop_early=not broken)
        finally:
            path.write_text(original)
        new = sorted(failed - broken)
        if status == "timeout" or new:
            caught += 1
            label, why = "caught", (f"timed out after {TIMEOUT}s" if status == "timeout" else
                                    f"{len(new)} failed: {new[0]}{' ...' if len(new) > 1 else ''}")
        else:
            label, why = "NOT CAUGHT", status if status != "ran" else "every test passed"
        print(f"{label:<12} {row['id']:<36} {seconds:5.0f}s  {row['description']}\n{'':<13}{why}", flush=True)
    total = len(rows) + n_refused
    print(f"\n{caught} of {total} caught" + (f", {n_refused} REFUSED (listed above)" if n_refused else "")
          + (f", {len(rows) - caught} NOT caught" if caught < len(rows) else ""))
    return 0 if caught == total else 1


if __name__ == "__main__":
    sys.exit(main())
