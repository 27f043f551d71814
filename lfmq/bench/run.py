"""`lfmq bench`: llama-bench's measurements (pp, tg, optional depth) through lfmq's runtime, each case in a fresh
process, with llama-bench-compatible JSON fields plus load time, time to first token and peak memory. Returns a
BenchReport (lfmq.bench.result) that carries the profile as it was used and the predictions made with it."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lfmq.bench.case import CaseResult, case_ctx, chat_tokens
from lfmq.bench.result import BenchReport, BuildInfo, Device, Machine, Test
from lfmq.devices.profiles import Profile
from lfmq.devices.transport import sha256_file
from lfmq.errors import BenchError, UsageError
from lfmq.llama.settings import default_threads
from lfmq.progress import Progress


def build_info() -> BuildInfo:
    """The llama.cpp build lfmq runs: the binding's version, llama.cpp's, a hash of the library file, system info."""
    from lfmq.llama.binding import build_info as info

    return BuildInfo(**info())


def _run_case(model: Path, n_prompt: int, n_gen: int, depth: int, reps: int, knobs: dict) -> CaseResult:
    case = {"model": str(model), "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": depth, "reps": reps, "knobs": knobs}
    proc = subprocess.run([sys.executable, "-m", "lfmq.bench.case"], input=json.dumps(case),
                          capture_output=True, text=True, env={**os.environ, "LFMQ_DEBUG": "0"})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"benchmark case {model.name} pp{n_prompt}/tg{n_gen} failed: {tail}")
    return CaseResult.from_dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def _test(model: Path, digest: str, n_prompt: int, n_gen: int, depth: int, r: CaseResult) -> Test:
    ns = r.samples_ns
    ts = [(n_prompt + n_gen) * 1e9 / s for s in ns]
    s = r.settings
    return Test(
        model_filename=str(model), model_type=r.model_type, model_size=r.model_size,
        model_n_params=r.model_n_params, model_sha256=digest, n_batch=s.n_batch, n_ubatch=s.n_ubatch,
        n_threads=s.threads or default_threads(), type_k=s.type_k, type_v=s.type_v, flash_attn=s.flash_attn,
        use_mmap=s.use_mmap, n_prompt=n_prompt, n_gen=n_gen, n_depth=depth,
        test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        avg_ns=int(statistics.mean(ns)), stddev_ns=int(statistics.stdev(ns)) if len(ns) > 1 else 0,
        avg_ts=statistics.mean(ts), stddev_ts=statistics.stdev(ts) if len(ts) > 1 else 0.0,
        samples_ns=ns, samples_ts=ts, load_ms=r.load_ms, ttft_ms=r.ttft_ms,
        peak_rss_mb=r.vmhwm, rss_anon_mb=r.rssanon, rss_file_mb=r.rssfile,
        file_bytes=model.stat().st_size,
    )


def bench(
    models: list[str | Path],
    *,
    profile: str | None = None,
    n_prompt: int = 512,
    n_gen: int = 128,
    reps: int = 5,
    threads: list[int] | None = None,
    depth: int = 0,
    knobs: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> BenchReport:
    """Measure pp and tg for every model and thread count, each case in its own process (on a device:
    lfmq.bench.device.bench_on_device)."""
    from lfmq import __version__
    from lfmq.devices.predict import predict, shape_of
    from lfmq.meta import read_meta

    check_args(reps, n_prompt, n_gen, depth)
    paths = [Path(m) for m in models]
    metas = [read_meta(p) for p in paths]  # clear errors before any process starts
    base = _load_knobs(profile_used(profile, knobs, measure=False).runtime)
    base_ctx = int(base.get("n_ctx", 4096))
    cases = [(p, t, np_, ng) for p in paths for t in (threads or [base.get("threads") or default_threads()])
             for np_, ng in ((n_prompt, 0), (0, n_gen)) if np_ or ng]
    digests = {p: sha256_file(p) for p in paths}
    n_chat = {p: len(chat_tokens(p)) for p in paths}
    tests = []
    for i, (path, t, np_, ng) in enumerate(cases):
        if progress:
            progress("cases", i, len(cases))
        n_ctx = case_ctx(base_ctx, np_, ng, depth, n_chat[path])
        result = _run_case(path, np_, ng, depth, reps, {**base, "threads": t, "n_ctx": n_ctx})
        tests.append(_test(path, digests[path], np_, ng, depth, result))
    if progress:
        progress("cases", len(cases), len(cases))
    # the host's bandwidth is measured after the cases: it copies and frees half a gigabyte, and pp512 of a case
    # started right after ran 4% slower on this project's VMs (0.956x, 12 alternating rounds)
    prof = profile_used(profile, knobs)
    machine = _machine()
    return BenchReport(__version__, build_info(), machine, prof, tests, [predict(prof, shape_of(m)) for m in metas],
                       metas, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       Device(kind="local", features=machine.features))


def check_args(reps: int, n_prompt: int, n_gen: int, depth: int) -> None:
    if reps < 1 or n_prompt < 0 or n_gen < 0 or depth < 0 or not (n_prompt or n_gen):
        raise UsageError("bench needs reps >= 1 and a prompt (-p) or a generation (-n) length")


def profile_used(profile: str | Path | None, knobs: dict[str, Any] | None = None, *, measure: bool = True) -> Profile:
    """The profile a run uses, as it runs: a named device profile, or this machine (`host`, or a file of runtime
    knobs) with its memory bandwidth measured (unless `measure` is False), so that its predictions can be checked
    against the measurements; the file's and the caller's knobs are its runtime."""
    from lfmq.devices.predict import measure_bandwidth
    from lfmq.devices.profiles import HOST, get_profile, host_profile, profile_file
    from lfmq.runtime.profile import profile_knobs

    is_file = profile is not None and Path(profile).is_file()
    device_file = profile_file(Path(profile)) if is_file else None   # e.g. written by lfmq devices calibrate
    if device_file is not None:
        prof, is_file = device_file, False
    elif is_file or str(profile or HOST) == HOST:
        prof = host_profile(measure_bandwidth() if measure else None)
    else:
        prof = get_profile(str(profile))
    runtime = {**prof.runtime, **(profile_knobs(profile) if is_file else {}), **(knobs or {})}
    return replace(prof, runtime=runtime)


def _load_knobs(base: dict[str, Any]) -> dict[str, Any]:
    from lfmq.runtime.profile import KNOBS

    return {k: v for k, v in base.items() if k in KNOBS}


def _machine() -> Machine:
    from lfmq.devices.profiles import cpuinfo

    info = cpuinfo()
    return Machine(cpu=info["model"], arch=info["arch"], cpus=info["cores"], features=info["features"],
                   os=platform.platform(), python=platform.python_version())
