"""Helpers shared by benchmarks/quantize.py and benchmarks/quality_crosscheck.py (not a benchmark itself).

The synthetic checkpoint comes from benchmarks/convert.py's `ensure_checkpoint` (same folder and marker, so the
benchmarks share one copy); this module adds the cached F16 conversion and Q4_K_M made from it, and one way to run
a child process that measures wall time, CPU time and peak RSS (see `run_child` for the ru_maxrss caveat).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from convert import PRESET, REPO, compare_tensors, ensure_checkpoint, first_difference, own_peak_mb  # noqa: E402
from llama_tools import tool  # noqa: E402

__all__ = ["PRESET", "REPO", "ChildRun", "compare_tensors", "default_threads", "emit_json", "ensure_checkpoint", "ensure_f16",
           "ensure_quantized", "first_difference", "lfmq_cli", "load_average", "own_peak_mb", "run_child", "tail",
           "tool", "warm_page_cache"]

F16_NAME = f"{PRESET}-F16.gguf"


@dataclass(frozen=True)
class ChildRun:
    seconds: float       # wall, parent's clock, spawn .. reap
    cpu_seconds: float   # user + system of the child (and anything it waited for)
    peak_rss_mb: float   # the child's ru_maxrss


def warm_page_cache(*files: Path) -> None:
    """Read each file once, in small pieces (this process's RSS stays low), so no tool pays for cold reads."""
    total = 0
    for f in files:
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                total += len(chunk)
    print(f"page cache warmed: {total / 1e6:.0f} MB read")


def load_average() -> float:
    """The 1-minute load average: other work on the machine makes wall times noisy; reported, not corrected."""
    return os.getloadavg()[0]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)))


def lfmq_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "lfmq", *map(str, args)]


def tail(path: Path, n: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:])


def run_child(label: str, argv: list[str], log: Path, stdout: Path | None = None,
              check_rss: bool = True) -> ChildRun:
    """Run `argv` in a fresh child, stderr (and stdout, unless `stdout` names its own file) into `log`.

    Wall time is measured around spawn..reap and peak RSS comes from the child's rusage (os.wait4). Linux folds
    the spawning process's own peak RSS into the child's ru_maxrss, so a child's peak only means something above
    ours: callers keep this process small (synth and convert run in children too) and, with `check_rss`, a
    child peak that is not clearly above our own is refused as unmeasurable. Exits with the log's tail on failure.
    """
    floor = own_peak_mb()
    with log.open("wb") as err, (stdout.open("wb") if stdout else open(os.devnull, "wb")) as out:
        started = time.perf_counter()
        proc = subprocess.Popen([str(a) for a in argv], stdout=out if stdout else err, stderr=err, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.exit(f"{label} failed (exit {code}): {' '.join(map(str, argv))}\nlast lines of {log}:\n{tail(log)}")
    peak = usage.ru_maxrss / 1024  # KiB on Linux
    if check_rss and peak <= floor * 1.05:
        sys.exit(f"{label}: child peak RSS {peak:.0f} MB is not above this process's own {floor:.0f} MB: unmeasurable")
    return ChildRun(seconds, usage.ru_utime + usage.ru_stime, peak)


def _fresh(target: Path, *sources: Path) -> bool:
    """`target` and its completion marker exist and the marker is newer than every source."""
    marker = target.with_name(target.name + ".complete")
    return target.exists() and marker.exists() and all(marker.stat().st_mtime >= s.stat().st_mtime for s in sources)


def _mark(target: Path, text: str) -> None:
    target.with_name(target.name + ".complete").write_text(text + "\n")


def ensure_f16(workdir: Path) -> Path:
    """The synthetic checkpoint converted to F16 by `lfmq convert` (in a child), cached in the work dir."""
    ckpt = ensure_checkpoint(workdir)
    f16 = workdir / F16_NAME
    marker = ckpt / ".benchmark-complete"
    if _fresh(f16, marker):
        print(f"reusing {f16}")
        return f16
    print(f"converting {ckpt} to {f16} ...", flush=True)
    log = workdir / "logs" / "convert-f16.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run_child("lfmq convert", lfmq_cli("convert", ckpt, "-o", f16, "--outtype", "f16", "--force"), log,
              check_rss=False)
    _mark(f16, f"lfmq convert {ckpt} --outtype f16")
    return f16


def ensure_quantized(workdir: Path, f16: Path, qtype: str, threads: int) -> Path:
    """`qtype` made from `f16` by `lfmq quantize` (in a child), cached in the work dir.

    benchmarks/quantize.py checks that lfmq's and llama-quantize's outputs are byte-identical per tensor."""
    out = workdir / f16.name.replace("-F16.gguf", f"-{qtype}.gguf")
    if _fresh(out, f16.with_name(f16.name + ".complete")):
        print(f"reusing {out}")
        return out
    print(f"quantizing {f16.name} to {qtype} ...", flush=True)
    log = workdir / "logs" / f"quantize-{qtype}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run_child("lfmq quantize", lfmq_cli("quantize", f16, "-q", qtype, "-o", out, "--force", "--threads", threads),
              log, check_rss=False)
    _mark(out, f"lfmq quantize {f16.name} -q {qtype}")
    return out


def emit_json(summary: dict[str, Any], path: Path | None) -> None:
    """The summary as one `JSON {...}` line on stdout, and in `path` if given."""
    line = json.dumps(summary, separators=(",", ":"), default=str)
    print(f"\nJSON {line}")
    if path:
        path.write_text(line + "\n")
