"""`lfmq bench`: llama-bench's fields and arithmetic, knobs from profiles, fresh processes, compare, bad input.
Nothing here asserts a speed: benchmarks/bench_vs_llama_bench.py measures."""

from __future__ import annotations

import json
import re
import statistics

import pytest

import lfmq

from conftest import run_cli
from lfmq.bench.result import compare
from lfmq.bench.run import bench

LLAMA_BENCH_FIELDS = {"model_filename", "model_type", "model_size", "model_n_params", "n_batch", "n_ubatch", "n_threads",
                      "type_k", "type_v", "flash_attn", "use_mmap", "n_prompt", "n_gen", "n_depth", "test_time",
                      "avg_ns", "stddev_ns", "avg_ts", "stddev_ts", "samples_ns", "samples_ts"}


@pytest.fixture(scope="module")
def report(small_f16, tmp_path_factory):
    knobs = tmp_path_factory.mktemp("knobs") / "knobs.json"
    knobs.write_text(json.dumps({"use_mmap": False, "n_batch": 64, "n_ubatch": 32, "flash_attn": True}))
    return bench([small_f16], profile=str(knobs), n_prompt=48, n_gen=6, reps=3, threads=[1], depth=16)


def test_rows_have_llama_bench_fields_and_arithmetic(report, small_f16):
    from dataclasses import asdict

    assert [t.name for t in report.tests] == ["pp48 @ d16", "tg6 @ d16"]
    for t in report.tests:
        row = asdict(t)
        assert LLAMA_BENCH_FIELDS <= set(row)
        n = t.n_prompt + t.n_gen
        assert len(t.samples_ns) == len(t.samples_ts) == 3
        assert t.samples_ts == pytest.approx([n * 1e9 / ns for ns in t.samples_ns])
        assert t.avg_ts == pytest.approx(statistics.mean(t.samples_ts))
        assert t.avg_ns == int(statistics.mean(t.samples_ns))
        assert t.model_n_params == lfmq.inspect(t.model_filename).parameters
        assert t.model_filename == str(small_f16) and len(t.model_sha256) == 64


def test_knobs_from_a_profile_file_reach_llama_cpp(report):
    for t in report.tests:
        assert (t.use_mmap, t.n_batch, t.n_ubatch, t.flash_attn, t.n_threads) == (False, 64, 32, True, 1)


def test_memory_is_measured_per_case(report):
    for t in report.tests:
        assert 0 < t.rss_anon_mb + t.rss_file_mb <= t.peak_rss_mb + 1
        assert t.peak_rss_mb < 1000  # a fresh small process, not the test runner's footprint
        assert t.ttft_ms > 0 and t.load_ms > 0
    assert report.build.llama_cpp_python == "0.3.36"
    assert report.predictions and report.predictions[0].memory.total_mb > 0


def test_compare_reports(report, tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(report.to_dict()))
    data = report.to_dict()
    for t in data["tests"]:
        t["avg_ts"] *= 2
    b.write_text(json.dumps(data))
    rows = compare(a, b)
    assert [r.ts_ratio for r in rows] == pytest.approx([2.0, 2.0])
    assert [r.rss_ratio for r in rows] == pytest.approx([1.0, 1.0])


def test_host_profile_carries_its_measured_bandwidth(report, tmp_path):
    """The defect: `--profile host` measured the bandwidth, then the report said "0 GB/s (not measured)" because it
    looked the profile up again by name. The report now carries the profile as used, through report.json too."""
    from lfmq.bench.report import write_report
    from lfmq.bench.result import load_report

    prof = report.profile
    assert prof.name == "host" and prof.bandwidth_gbs > 0
    assert prof.memory["bandwidth_source"].startswith("measured")
    assert (prof.runtime["n_batch"], prof.runtime["n_ubatch"], prof.runtime["use_mmap"]) == (64, 32, False)  # as run
    json_path, md, html = write_report(report, tmp_path)
    assert load_report(json_path).profile == prof
    line = next(line for line in md.read_text(encoding="utf-8").splitlines() if "memory bandwidth" in line)
    assert line == f"- **memory bandwidth**: {round(prof.bandwidth_gbs, 1):g} GB/s, {prof.memory['bandwidth_source']}"
    assert "not measured" not in md.read_text(encoding="utf-8")
    assert not re.search(r"(?<![\d.])0 GB/s", html.read_text(encoding="utf-8"))


def test_cli_json_output_and_compare(small_f16, tmp_path):
    """`--json` prints report.json's shape on stdout, `-o` writes it, `--compare` reads both back."""
    from lfmq.bench.result import BenchReport

    out = tmp_path / "a.json"
    r = run_cli("bench", str(small_f16), "-p", "8", "-n", "2", "-r", "1", "-t", "1", "--json", "-o", str(out))
    assert r.returncode == 0, r.stderr
    printed = BenchReport.from_dict(json.loads(r.stdout))
    assert BenchReport.from_dict(json.loads(out.read_text())) == printed
    assert [t.name for t in printed.tests] == ["pp8", "tg2"] and printed.profile.bandwidth_gbs > 0
    r = run_cli("bench", "--compare", str(out), str(out), "--json")
    assert r.returncode == 0 and [row["ts_ratio"] for row in json.loads(r.stdout)] == [1.0, 1.0]


@pytest.mark.parametrize("args,code,needle", [
    (["bench"], 2, "give one or more GGUF files"),
    (["bench", "x.gguf", "-t", "two"], 2, "Invalid value for '-t' / '--threads'"),
    (["bench", "x.gguf", "-t", "1", "-t", "0"], 2, "Invalid value for '-t' / '--threads'"),
    (["bench", "--compare", "nope-a.json", "nope-b.json"], 2, "report nope-a.json does not exist"),
])
def test_bad_input(args, code, needle, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == code and needle in r.stderr and "Traceback" not in r.stderr


def test_not_a_gguf(tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_text("no")
    r = run_cli("bench", str(junk))
    assert (r.returncode, r.stderr) == (1, f"error: {junk} is not a GGUF file (it does not start with 'GGUF')\n")


def test_use_mmap_reaches_llama_cpp(small_f16):
    """With mmap the weights are file-backed pages; without, they are not (the knob once went nowhere, silently)."""
    import subprocess
    import sys

    def rss_file(use_mmap: bool) -> float:
        case = {"model": str(small_f16), "n_prompt": 0, "n_gen": 2, "n_depth": 0, "reps": 1,
                "knobs": {"threads": 1, "use_mmap": use_mmap, "n_ctx": 256}}
        out = subprocess.run([sys.executable, "-m", "lfmq.bench.case"], input=json.dumps(case),
                             capture_output=True, text=True, check=True).stdout
        return json.loads(out)["rssfile"]

    size_mb = small_f16.stat().st_size / 2**20
    assert rss_file(True) - rss_file(False) > 0.8 * size_mb


def test_a_small_pinned_context_sizes_each_case_as_llama_bench_does(small_f16, tmp_path, monkeypatch):
    """llama-bench gives each test a context of its own tokens; with the profile's n_ctx pinned below that, so does
    lfmq bench, each case at least as large as the time-to-first-token prompt that runs in it."""
    import lfmq.bench.run as run
    from lfmq.bench.case import chat_tokens

    seen, real = [], run._run_case

    def spy(model, n_prompt, n_gen, depth, reps, knobs):
        result = real(model, n_prompt, n_gen, depth, reps, knobs)
        seen.append((n_prompt, n_gen, knobs["n_ctx"], result.settings.n_ctx))
        return result

    monkeypatch.setattr(run, "_run_case", spy)
    knobs = tmp_path / "knobs.json"
    knobs.write_text(json.dumps({"n_ctx": 1}))
    n_chat = len(chat_tokens(small_f16))
    bench([small_f16], profile=str(knobs), n_prompt=n_chat + 40, n_gen=4, reps=1, threads=[1])
    assert seen == [(n_chat + 40, 0, n_chat + 40, n_chat + 40), (0, 4, n_chat, n_chat)]
    seen.clear()
    knobs.write_text(json.dumps({"n_ctx": 1024}))   # a profile's larger context is kept: that is how the model runs
    bench([small_f16], profile=str(knobs), n_prompt=8, n_gen=4, reps=1, threads=[1])
    assert [s[2:] for s in seen] == [(1024, 1024), (1024, 1024)]


def test_the_host_bandwidth_is_measured_after_the_cases(small_f16, tmp_path, monkeypatch):
    """Measuring the bandwidth copies and frees half a gigabyte; a case started right after it ran slower, so the
    cases go first and the report still carries the measured figure."""
    import lfmq.bench.run as run
    import lfmq.devices.predict as predict

    events, real_case, real_bw = [], run._run_case, predict.measure_bandwidth

    def case(*args):
        events.append("case")
        return real_case(*args)

    def bandwidth(*args, **kwargs):
        events.append("bandwidth")
        return real_bw(*args, **kwargs)

    monkeypatch.setattr(run, "_run_case", case)
    monkeypatch.setattr(predict, "measure_bandwidth", bandwidth)
    report = bench([small_f16], profile="host", n_prompt=8, n_gen=2, reps=1, threads=[1])
    assert events == ["case", "case", "bandwidth"]
    assert report.profile.bandwidth_gbs > 0 and report.profile.memory["bandwidth_source"].startswith("measured")
