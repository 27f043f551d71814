"""`lfmq bench --device URI`: the same cases as a local bench, run by lfmq-run on the device (lfmq/devices/session.py
gets it there), read back as the CaseResults a local case prints and reported in the same BenchReport, with the
device, its CPU features and the build's manifest recorded. Runs under qemu are labelled emulated."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from lfmq.bench.case import CaseResult, case_ctx, chat_tokens
from lfmq.bench.result import BenchReport, BuildInfo, Device
from lfmq.devices.profiles import Profile
from lfmq.progress import Progress


def bench_on_device(models: list[str | Path], *, device: str, profile: str | None = None, n_prompt: int = 512,
                    n_gen: int = 128, reps: int = 5, threads: list[int] | None = None, depth: int = 0,
                    knobs: dict[str, Any] | None = None, progress: Progress | None = None) -> BenchReport:
    """lfmq.bench.run.bench's cases, run on `device` (a URI: ssh://..., adb[:SERIAL], qemu:PROFILE)."""
    from lfmq import __version__
    from lfmq.bench.run import _load_knobs, _machine, _test, check_args
    from lfmq.devices.predict import predict, shape_of
    from lfmq.devices.profiles import HOST, get_profile
    from lfmq.devices.session import DeviceSession, runner_flags
    from lfmq.devices.transport import sha256_file
    from lfmq.errors import DeviceError, UsageError
    from lfmq.meta import read_meta

    check_args(reps, n_prompt, n_gen, depth)
    paths = [Path(m) for m in models]
    metas = [read_meta(p) for p in paths]   # clear errors before any connection

    if knobs and knobs.get("lora"):
        raise UsageError("--lora is not supported with --device: merge the adapter (lfmq convert --lora) and bench "
                         "the merged file")
    ttft = {p: chat_tokens(p) for p in paths}   # before connecting: a model lfmq cannot load fails here
    n_chat = max(len(t) for t in ttft.values())
    n_ctx = case_ctx(1, n_prompt, n_gen, depth, n_chat)   # covers every case's context: the fit check's
    with DeviceSession.open(device, paths, profile=profile, n_ctx=n_ctx, progress=progress) as s:
        from lfmq.bench.run import profile_used

        # the host's bandwidth is measured after the cases, as in a local bench (lfmq.bench.run)
        prof: Profile = profile_used(HOST, measure=False) if s.profile == HOST else get_profile(s.profile)
        base = _load_knobs(prof.runtime)
        base_ctx = int(base.get("n_ctx", 4096))
        counts = threads or [base.get("threads") or s.info.cores or 1]
        cases = [(p, t, np_, ng) for p in paths for t in counts for np_, ng in ((n_prompt, 0), (0, n_gen))
                 if np_ or ng]
        digests = {p: sha256_file(p) for p in paths}   # hashed once already, for the push
        tests, system_info = [], "?"
        for i, (path, t, np_, ng) in enumerate(cases):
            if progress:
                progress("cases", i, len(cases))
            argv = [s.runner, "bench", "-m", s.models[path], "-p", str(np_), "-n", str(ng), "-d", str(depth),
                    "-r", str(reps),
                    *runner_flags({**base, "threads": t, "n_ctx": case_ctx(base_ctx, np_, ng, depth, len(ttft[path]))}),
                    "--ttft-tokens", ",".join(map(str, ttft[path]))]
            raw = next((e for e in reversed(s.run_json(argv)) if "samples_ns" in e), None)
            if raw is None:
                raise DeviceError(f"lfmq-run printed no result on {s.device.uri}: rebuild with lfmq build --force")
            system_info = raw.get("system_info", system_info)
            tests.append(_test(path, digests[path], np_, ng, depth, CaseResult.from_dict(raw)))
        if progress:
            progress("cases", len(cases), len(cases))
        if s.profile == HOST:
            prof = profile_used(HOST)
        manifest = s.build.manifest
        runner_sha = manifest.get("files", {}).get("lfmq-run", {}).get("sha256", "?")
        src = manifest.get("llama_cpp", "?")
        if isinstance(src, dict):
            src = f"{src.get('commit', '?')} (ggml {src.get('ggml_version', '?')})"
        build = BuildInfo(llama_cpp_python=str(manifest.get("llama_cpp_python", "?")),
                          llama_cpp=str(src), libllama_sha256=runner_sha[:16],
                          system_info=system_info)
        record = Device(**s.record())
    prof = replace(prof, runtime={**prof.runtime, **base, "n_ctx": max(base_ctx, n_ctx)})
    return BenchReport(__version__, build, _machine(), prof, tests, [predict(prof, shape_of(m)) for m in metas], metas,
                       time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), record)
