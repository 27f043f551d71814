"""Benchmark lfmq's HF -> GGUF converter against llama.cpp's own `convert_hf_to_gguf.py`.

What it measures, in one run:

1. Synthesizes a random-weight checkpoint with `lfmq.synth` (bf16 safetensors plus tokenizer files, in a child
   process) into the work dir, reusing it if it is already there: `--preset lfm2.5-350m` (default, the dense row)
   or `--preset lfm2-moe-mid` (the MoE row: LFM2-8B-A1B's layout at half the width, 769M parameters, 16 experts
   per layer stacked into one tensor by each tool).
2. Fetches llama.cpp's converter from the llama-cpp-python 0.3.36 source distribution (`pip download`,
   cached in the work dir) and runs it through a small wrapper that puts the vendored `gguf-py` first on
   the path and forces the pre-tokenizer to "lfm2" (the synthetic tokenizer's probe hash is unknown to
   llama.cpp; the vendored files on disk are never edited).
3. Converts the checkpoint to f16 with both tools, alternately, `--reps` times each, every run in its own
   child process, after warming the page cache. Wall time comes from the parent's clock; peak RSS is the
   child's `ru_maxrss` from `os.wait4` (Linux counts the parent's own peak into that number, so this
   script keeps itself small and refuses a child peak that is not clearly above its own). Medians are
   reported, with the lfmq/llama.cpp ratios checked against the targets (time <= 0.5x, peak RSS <= 0.35x).
4. Checks that the two GGUF files hold byte-identical tensors (compared by name: type, shape, bytes) and
   lists metadata keys found in only one file. Exits 1 if any tensor differs.

Run it from the repository root:

    .venv/bin/python benchmarks/convert.py [--preset lfm2-moe-mid] [--workdir benchmarks/out] [--reps 3] [--keep]
                                           [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import gguf
import numpy as np

PRESETS = ("lfm2.5-350m", "lfm2-moe-mid")  # the dense row and the MoE row
PRESET = PRESETS[0]  # the checkpoint the other benchmarks (common.py) share
LLAMA_CPP_PYTHON = "0.3.36"
SDIST_ROOT = f"llama_cpp_python-{LLAMA_CPP_PYTHON}"
VENDOR = "vendor/llama.cpp"
# the parts of the vendored llama.cpp tree the converter needs
VENDOR_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/", "models/templates/")
TARGETS = {"time": 0.5, "rss": 0.35}  # lfmq / llama.cpp, at most
TOOLS = ("llama.cpp", "lfmq")
REPO = Path(__file__).resolve().parent.parent

# Runs llama.cpp's converter with the vendored gguf-py and a fixed pre-tokenizer: argv = [wrapper, tree, args...]
WRAPPER = '''\
"""Run llama.cpp's convert_hf_to_gguf.py with get_vocab_base_pre forced to "lfm2" (written by benchmarks/convert.py)."""
import runpy
import sys
from pathlib import Path

tree = Path(sys.argv.pop(1)).resolve()
sys.path[:0] = [str(tree / "gguf-py"), str(tree)]

import gguf  # noqa: E402
from conversion.base import TextModel  # noqa: E402

if not Path(gguf.__file__).resolve().is_relative_to(tree):
    sys.exit(f"wrapper: imported gguf from {gguf.__file__}, not the vendored gguf-py")
TextModel.get_vocab_base_pre = lambda self, tokenizer: "lfm2"
sys.argv[0] = str(tree / "convert_hf_to_gguf.py")
runpy.run_path(sys.argv[0], run_name="__main__")
'''


@dataclass(frozen=True)
class Run:
    tool: str
    seconds: float
    cpu_seconds: float  # user + system, informational: steadier than wall time on a busy machine
    peak_rss_mb: float


@dataclass
class Comparison:
    matched: int
    mismatches: list[str]
    only_llama: list[str]  # metadata keys
    only_lfmq: list[str]
    differing_values: list[str]

    @property
    def identical(self) -> bool:
        return not self.mismatches


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default=PRESETS[0],
                    help="checkpoint to convert: the dense 350M or the mid-size MoE (default: lfm2.5-350m)")
    ap.add_argument("--workdir", type=Path, default=REPO / "benchmarks" / "out",
                    help="checkpoint, llama.cpp sources, outputs and logs (default: benchmarks/out)")
    ap.add_argument("--reps", type=int, default=3, help="timed conversions per tool (default: 3)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed conversions per tool first (default: 1)")
    ap.add_argument("--keep", action="store_true", help="keep the two output GGUF files")
    ap.add_argument("--json", type=Path, metavar="FILE", help="also write the JSON summary to FILE")
    args = ap.parse_args()
    if args.reps < 1 or args.warmup < 0:
        ap.error("--reps must be at least 1 and --warmup at least 0")
    return args


def ensure_checkpoint(workdir: Path, preset: str = PRESET) -> Path:
    """The synthetic checkpoint, written once; a marker file says a previous synth finished."""
    ckpt = workdir / ("ckpt" if preset == PRESETS[0] else f"ckpt-{preset}")
    marker = ckpt / ".benchmark-complete"
    if marker.exists():
        print(f"reusing checkpoint {ckpt}")
        return ckpt
    print(f"synthesizing {preset} into {ckpt} ...", flush=True)
    # in a child: synth's buffers would otherwise raise this process's peak RSS, which every later child
    # inherits as its ru_maxrss floor (see run_once)
    code = "import sys, lfmq; lfmq.synth(sys.argv[1], sys.argv[2], force=True)"
    subprocess.run([sys.executable, "-c", code, preset, str(ckpt)], check=True)
    marker.write_text(f"lfmq.synth({preset!r}) finished\n")
    return ckpt


def ensure_llama_cpp(workdir: Path) -> Path:
    """llama.cpp's converter tree from the llama-cpp-python sdist, downloaded and extracted once."""
    tree = workdir / SDIST_ROOT / VENDOR
    if (tree / "convert_hf_to_gguf.py").exists() and (tree / ".benchmark-complete").exists():
        print(f"reusing llama.cpp converter {tree}")
        return tree
    sdist = workdir / f"{SDIST_ROOT}.tar.gz"
    if not sdist.exists():
        print(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON} sdist ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={LLAMA_CPP_PYTHON}", "-d", str(workdir)], check=True)
    prefixes = tuple(f"{SDIST_ROOT}/{VENDOR}/{part}" for part in VENDOR_PARTS)
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefixes)]
        tar.extractall(workdir, members=members, filter="data")
    (tree / ".benchmark-complete").write_text(f"{len(members)} files from {sdist.name}\n")
    return tree


def commands(workdir: Path, ckpt: Path, tree: Path) -> dict[str, tuple[list[str], dict[str, str], Path]]:
    """Per tool: argv, environment and output path."""
    wrapper = workdir / "llama_convert_wrapper.py"
    wrapper.write_text(WRAPPER)
    out = {tool: workdir / f"{tool.replace('.', '')}-f16.gguf" for tool in TOOLS}
    llama_env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree / "gguf-py"), str(tree)]))
    return {
        "llama.cpp": ([sys.executable, str(wrapper), str(tree), str(ckpt), "--outtype", "f16",
                       "--outfile", str(out["llama.cpp"])], llama_env, out["llama.cpp"]),
        "lfmq": ([sys.executable, "-m", "lfmq", "convert", str(ckpt), "-o", str(out["lfmq"]),
                  "--outtype", "f16", "--force"], dict(os.environ), out["lfmq"]),
    }


def warm_page_cache(*paths: Path) -> None:
    """Read every file under `paths` once so neither tool pays for cold reads."""
    total = 0
    for root in paths:
        for f in sorted(p for p in root.rglob("*") if p.is_file()):
            with f.open("rb") as fh:
                while chunk := fh.read(1 << 20):  # small reads: keep this process's RSS low
                    total += len(chunk)
    print(f"page cache warmed: {total / 1e6:.0f} MB read")


def own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_once(tool: str, argv: list[str], env: dict[str, str], out: Path, log: Path) -> Run:
    """One conversion in a fresh child: wall time around spawn..reap, peak RSS from the child's rusage.

    Linux folds the spawning process's own peak RSS into the child's ru_maxrss (at exec the pre-exec image,
    under vfork this very process's, is recorded), so a child's peak is only meaningful above ours: this
    process stays small and the check below refuses a number that could be our footprint rather than the tool's.
    """
    out.unlink(missing_ok=True)
    os.sync()  # the previous run's dirty pages are not this run's cost
    floor = own_peak_mb()
    with log.open("wb") as fh:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0 or not out.exists():
        tail = log.read_text(errors="replace").splitlines()[-25:]
        sys.exit(f"{tool} conversion failed (exit {proc.returncode}); last lines of {log}:\n" + "\n".join(tail))
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    if peak <= floor * 1.05:
        sys.exit(f"{tool}: child peak RSS {peak:.0f} MB is not above this process's own {floor:.0f} MB: unmeasurable")
    return Run(tool, seconds, usage.ru_utime + usage.ru_stime, peak)


def benchmark(cmds: dict[str, tuple[list[str], dict[str, str], Path]], workdir: Path,
              reps: int, warmup: int) -> list[Run]:
    """Alternate the tools, warm-up runs first (discarded), then `reps` timed runs each."""
    logs = workdir / "logs"
    logs.mkdir(exist_ok=True)
    runs: list[Run] = []
    for i in range(warmup + reps):
        for tool in (TOOLS if i % 2 == 0 else TOOLS[::-1]):
            argv, env, out = cmds[tool]
            run = run_once(tool, argv, env, out, logs / f"{tool}-{i}.log")
            label = "warm-up" if i < warmup else f"rep {i - warmup + 1}/{reps}"
            print(f"  {label:>9}  {tool:<9}  {run.seconds:7.2f} s wall  {run.cpu_seconds:6.2f} s CPU  "
                  f"{run.peak_rss_mb:6.0f} MB", flush=True)
            if i >= warmup:
                runs.append(run)
    return runs


def summarize(runs: list[Run], preset: str) -> dict[str, Any]:
    """Medians per tool and the lfmq/llama.cpp ratios against the targets."""
    med = {
        tool: {
            "seconds": statistics.median(r.seconds for r in runs if r.tool == tool),
            "cpu_seconds": statistics.median(r.cpu_seconds for r in runs if r.tool == tool),
            "peak_rss_mb": statistics.median(r.peak_rss_mb for r in runs if r.tool == tool),
            "runs": [asdict(r) for r in runs if r.tool == tool],
        }
        for tool in TOOLS
    }
    ratio = {
        "time": med["lfmq"]["seconds"] / med["llama.cpp"]["seconds"],
        "rss": med["lfmq"]["peak_rss_mb"] / med["llama.cpp"]["peak_rss_mb"],
        "cpu": med["lfmq"]["cpu_seconds"] / med["llama.cpp"]["cpu_seconds"],
    }
    return {"preset": preset, "outtype": "f16", "median": med, "ratio": ratio, "targets": TARGETS,
            "meets_targets": {k: ratio[k] <= TARGETS[k] for k in TARGETS}}


def print_table(summary: dict[str, Any]) -> None:
    med, ratio = summary["median"], summary["ratio"]
    print(f"\n{'median of ' + str(len(med['lfmq']['runs'])):<24}{'wall s':>10}{'CPU s':>10}{'peak RSS MB':>14}")
    for tool in TOOLS:
        m = med[tool]
        print(f"{tool:<24}{m['seconds']:>10.2f}{m['cpu_seconds']:>10.2f}{m['peak_rss_mb']:>14.0f}")
    for key, label in (("time", "wall time"), ("rss", "peak RSS"), ("cpu", "CPU time")):
        verdict = "no target"
        if key in TARGETS:
            verdict = f"target <= {TARGETS[key]}x: {'PASS' if summary['meets_targets'][key] else 'FAIL'}"
        print(f"lfmq/llama.cpp {label:<9}{ratio[key]:>10.3f}x  ({verdict})")


def first_difference(a: np.ndarray, b: np.ndarray) -> str:
    """Byte offset of the first difference between two tensors' data, or why they cannot be compared."""
    x, y = np.asarray(a).reshape(-1).view(np.uint8), np.asarray(b).reshape(-1).view(np.uint8)
    if x.size != y.size:
        return f"sizes {x.size} vs {y.size} bytes"
    diff = np.flatnonzero(x != y)
    return f"first differing byte {diff[0]} of {x.size} ({diff.size} bytes differ)"


def compare_tensors(llama: gguf.GGUFReader, mine: gguf.GGUFReader, a_label: str = "llama.cpp",
                    b_label: str = "lfmq") -> tuple[int, list[str]]:
    """Compare tensors by name (the two files may order them differently): type, shape, then bytes."""
    a = {t.name: t for t in llama.tensors}
    b = {t.name: t for t in mine.tensors}
    problems = [f"{n}: only in {a_label}'s file" for n in sorted(a.keys() - b.keys())]
    problems += [f"{n}: only in {b_label}'s file" for n in sorted(b.keys() - a.keys())]
    matched = 0
    for name in sorted(a.keys() & b.keys()):
        ta, tb = a[name], b[name]
        if ta.tensor_type != tb.tensor_type or list(ta.shape) != list(tb.shape):
            problems.append(f"{name}: {a_label} {ta.tensor_type.name}{list(ta.shape)} "
                            f"vs {b_label} {tb.tensor_type.name}{list(tb.shape)}")
        elif ta.data.tobytes() != tb.data.tobytes():
            problems.append(f"{name} ({ta.tensor_type.name}): {first_difference(ta.data, tb.data)}")
        else:
            matched += 1
    return matched, problems


def field_value(field: Any) -> Any:
    value = field.contents()
    return f"<array of {len(value)}>" if isinstance(value, list) and len(value) > 8 else value


def compare_metadata(llama: gguf.GGUFReader, mine: gguf.GGUFReader) -> tuple[list[str], list[str], list[str]]:
    """Keys in only one file, and shared keys whose values differ (informational)."""
    a, b = llama.fields, mine.fields
    differing = []
    for key in sorted(a.keys() & b.keys()):
        if key.startswith("GGUF."):
            continue  # header counts, not metadata
        va, vb = a[key].contents(), b[key].contents()
        if va != vb:
            differing.append(f"{key}: llama.cpp {field_value(a[key])!r} vs lfmq {field_value(b[key])!r}")
    return sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys()), differing


def compare_files(llama_path: Path, lfmq_path: Path) -> Comparison:
    llama, mine = gguf.GGUFReader(llama_path), gguf.GGUFReader(lfmq_path)
    matched, mismatches = compare_tensors(llama, mine)
    only_llama, only_lfmq, differing = compare_metadata(llama, mine)
    return Comparison(matched, mismatches, only_llama, only_lfmq, differing)


def print_comparison(cmp: Comparison) -> None:
    total = cmp.matched + len(cmp.mismatches)
    print(f"\ntensors: {cmp.matched}/{total} byte-identical" + ("" if cmp.identical else ", MISMATCHES:"))
    for line in cmp.mismatches:
        print(f"  {line}")
    for label, keys in (("only in llama.cpp's file", cmp.only_llama), ("only in lfmq's file", cmp.only_lfmq)):
        print(f"metadata keys {label}: {', '.join(keys) if keys else '(none)'}")
    print("metadata keys in both with different values:" + ("" if cmp.differing_values else " (none)"))
    for line in cmp.differing_values:
        print(f"  {line}")


def main() -> int:
    args = parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = ensure_checkpoint(workdir, args.preset)
    tree = ensure_llama_cpp(workdir)
    cmds = commands(workdir, ckpt, tree)
    warm_page_cache(ckpt, tree)
    print(f"converting {args.preset} to f16, {args.warmup} warm-up + {args.reps} timed runs per tool, alternating:")
    summary = summarize(benchmark(cmds, workdir, args.reps, args.warmup), args.preset)
    summary["harness_peak_rss_mb"] = own_peak_mb()  # the floor under every child's ru_maxrss
    print_table(summary)
    cmp = compare_files(cmds["llama.cpp"][2], cmds["lfmq"][2])
    print_comparison(cmp)
    summary["tensors"] = asdict(cmp) | {"identical": cmp.identical}
    line = json.dumps(summary, separators=(",", ":"))
    print(f"\nJSON {line}")
    if args.json:
        args.json.write_text(line + "\n")
    if not args.keep:
        for _, _, out in cmds.values():
            out.unlink(missing_ok=True)
    return 0 if cmp.identical else 1


if __name__ == "__main__":
    sys.exit(main())
