"""`lfmq bench`: llama-bench's measurements (pp, tg, optional depth) through lfmq's runtime, each case in a fresh
process, with llama-bench-compatible JSON fields plus load time, time to first token and peak memory."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from lfmq.errors import BenchError, LfmqError, UsageError

Progress = Callable[[str, int, int], None]



@dataclass(frozen=True)
class Test:
    """One row, with llama-bench's JSON field names and lfmq's additions."""

    model_filename: str
    model_type: str
    model_size: int
    model_n_params: int
    model_sha256: str
    n_batch: int
    n_ubatch: int
    n_threads: int
    type_k: str
    type_v: str
    flash_attn: bool | None
    use_mmap: bool
    n_prompt: int
    n_gen: int
    n_depth: int
    test_time: str
    avg_ns: int
    stddev_ns: int
    avg_ts: float
    stddev_ts: float
    samples_ns: list[int]
    samples_ts: list[float]
    load_ms: float
    ttft_ms: float
    peak_rss_mb: float
    rss_anon_mb: float
    rss_file_mb: float
    file_bytes: int

    @property
    def name(self) -> str:
        return test_name(self.n_prompt, self.n_gen, self.n_depth)


def test_name(n_prompt: int, n_gen: int, n_depth: int) -> str:
    """llama-bench's labels: pp512, tg128, with `@ d4096` for a test at depth."""
    kind = f"pp{n_prompt}" if n_prompt else f"tg{n_gen}"
    return kind + (f" @ d{n_depth}" if n_depth else "")


@dataclass(frozen=True)
class BenchReport:
    """Everything needed to compare two runs: build, machine, settings, model hashes, results, predictions."""

    lfmq_version: str
    build: dict[str, str]
    machine: dict[str, Any]
    profile: str
    tests: list[Test]
    predictions: list[dict[str, Any]] = field(default_factory=list)
    created: str = ""


def sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def build_info() -> dict[str, str]:
    """The llama.cpp build lfmq runs: the binding's version, llama.cpp's, and a hash of the library file."""
    import importlib.metadata

    lib = next(Path(importlib.util.find_spec("llama_cpp").origin).parent.glob("lib/libllama.so*"), None)
    from lfmq.runtime.model import llama

    L = llama()
    return {"llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
            "llama_cpp": L.llama_version().decode() if hasattr(L, "llama_version") else "?",
            "libllama_sha256": sha256(lib)[:16] if lib else "?",
            "system_info": L.llama_print_system_info().decode().strip()}


def _run_case(model: Path, n_prompt: int, n_gen: int, depth: int, reps: int, knobs: dict) -> dict[str, Any]:
    case = {"model": str(model), "n_prompt": n_prompt, "n_gen": n_gen, "n_depth": depth, "reps": reps, "knobs": knobs}
    proc = subprocess.run([sys.executable, "-m", "lfmq.bench.case"], input=json.dumps(case),
                          capture_output=True, text=True, env={**os.environ, "LFMQ_DEBUG": "0"})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BenchError(f"benchmark case {model.name} pp{n_prompt}/tg{n_gen} failed: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _test(model: Path, digest: str, n_prompt: int, n_gen: int, depth: int, raw: dict[str, Any]) -> Test:
    ns = raw["samples_ns"]
    n_tokens = n_prompt + n_gen
    ts = [n_tokens * 1e9 / s for s in ns]
    s = raw["settings"]
    return Test(
        model_filename=str(model), model_type=raw["model_type"], model_size=raw["model_size"],
        model_n_params=raw["model_n_params"], model_sha256=digest, n_batch=s["n_batch"], n_ubatch=s["n_ubatch"],
        n_threads=s["threads"], type_k=s["type_k"], type_v=s["type_v"], flash_attn=s["flash_attn"],
        use_mmap=s["use_mmap"], n_prompt=n_prompt, n_gen=n_gen, n_depth=depth,
        test_time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        avg_ns=int(statistics.mean(ns)), stddev_ns=int(statistics.stdev(ns)) if len(ns) > 1 else 0,
        avg_ts=statistics.mean(ts), stddev_ts=statistics.stdev(ts) if len(ts) > 1 else 0.0,
        samples_ns=ns, samples_ts=ts, load_ms=raw["load_ms"], ttft_ms=raw["ttft_ms"],
        peak_rss_mb=raw["vmhwm"], rss_anon_mb=raw["rssanon"], rss_file_mb=raw["rssfile"],
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
    """Measure pp and tg for every model and thread count, each case in its own process."""
    from lfmq import __version__
    from lfmq.devices.predict import measure_bandwidth, model_shape
    from lfmq.devices.profiles import HOST, get_profile, host_profile
    from lfmq.llama.gguf_index import tensor_index

    if reps < 1 or n_prompt < 0 or n_gen < 0 or depth < 0 or not (n_prompt or n_gen):
        raise UsageError("bench needs reps >= 1 and a prompt (-p) or a generation (-n) length")
    paths = [Path(m) for m in models]
    for p in paths:
        tensor_index(p)  # clear errors before any process starts
    # the host's bandwidth is measured, so its predictions can be checked against its measurements;
    # a file of runtime knobs (JSON/TOML) runs on the host with those knobs
    from lfmq.runtime.profile import profile_knobs

    is_file = profile is not None and Path(profile).is_file()
    prof = host_profile(measure_bandwidth()) if is_file or (profile or HOST) == HOST else get_profile(profile)
    base = {**prof.runtime, **(profile_knobs(profile) if is_file else {}), **(knobs or {})}
    base["n_ctx"] = max(int(base.get("n_ctx", 4096)), n_prompt + n_gen + depth + 1)  # the test must fit
    cases = [(p, t, np_, ng) for p in paths for t in (threads or [base.get("threads") or os.cpu_count()])
             for np_, ng in ((n_prompt, 0), (0, n_gen)) if np_ or ng]
    tests = []
    for i, (path, t, np_, ng) in enumerate(cases):
        if progress:
            progress("cases", i, len(cases))
        raw = _run_case(path, np_, ng, depth, reps, {**_load_knobs(base), "threads": t})
        tests.append(_test(path, sha256(path), np_, ng, depth, raw))
    if progress:
        progress("cases", len(cases), len(cases))
    predictions = [_prediction(prof, model_shape(p)) for p in paths]
    return BenchReport(__version__, build_info(), _machine(), prof.name, tests, predictions,
                       time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))


def _load_knobs(base: dict[str, Any]) -> dict[str, Any]:
    from lfmq.runtime.profile import KNOBS

    return {k: v for k, v in base.items() if k in KNOBS}


def _machine() -> dict[str, Any]:
    from lfmq.devices.profiles import cpuinfo

    info = cpuinfo()
    return {"cpu": info["model"], "arch": info["arch"], "cpus": info["cores"], "features": info["features"],
            "os": platform.platform(), "python": platform.python_version()}


def _prediction(prof: Any, shape: Any) -> dict[str, Any]:
    from lfmq.devices.predict import predict

    pred = predict(prof, shape)
    return {"profile": prof.name, "model": shape.path.name, "decode_tps": pred.decode_tps,
            "prefill_tps": pred.prefill_tps, "memory": asdict(pred.memory), "memory_total_mb": pred.memory.total_mb,
            "efficiency": asdict(pred.efficiency), "published": [asdict(p) for p in pred.published]}


def load_report(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UsageError(f"report {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UsageError(f"{path} is not a bench report (JSON)") from None


def compare(a: str | Path, b: str | Path) -> list[dict[str, Any]]:
    """Rows matched by model hash, test and threads: B's tok/s and peak memory as ratios of A's."""
    ra, rb = load_report(a), load_report(b)

    def key(t: dict) -> tuple:
        return (t["model_sha256"], t["n_prompt"], t["n_gen"], t["n_depth"], t["n_threads"])

    index = {key(t): t for t in ra.get("tests", [])}
    rows = []
    for t in rb.get("tests", []):
        base = index.get(key(t))
        if base is None:
            continue
        rows.append({"model": Path(t["model_filename"]).name, "test": test_name(t["n_prompt"], t["n_gen"], t["n_depth"]),
                     "threads": t["n_threads"],
                     "a_ts": base["avg_ts"], "b_ts": t["avg_ts"], "ts_ratio": t["avg_ts"] / base["avg_ts"],
                     "a_rss_mb": base["peak_rss_mb"], "b_rss_mb": t["peak_rss_mb"],
                     "rss_ratio": t["peak_rss_mb"] / base["peak_rss_mb"]})
    if not rows:
        raise UsageError(f"{a} and {b} share no test (same model file, test and threads)")
    return rows
