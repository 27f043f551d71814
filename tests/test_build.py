"""Device builds: the Pi 5 and Snapdragon bundles are cross-compiled with zig (cached in ~/.cache/lfmq/builds, so
only the first run on a machine pays for the compile) and run under qemu-user with the profile's CPU model; their
greedy tokens must equal this machine's for F32, Q4_0 and Q8_0 models. The Snapdragon build under the Pi 5's CPU
model must fail as a one-line SIGILL error naming the missing feature. No Android NDK exists here: the NDK route is
tested by its CMake arguments only."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import lfmq
from lfmq.devices import build as B
from lfmq.devices.cpu_features import QEMU_CPUS, fitting_profiles, sigill_message
from lfmq.devices.profiles import Profile, build_spec, builtin_profiles, get_profile
from lfmq.devices.qemu import qemu_run
from lfmq.devices.toolchain import Toolchain, cmake_args, find_toolchain, target_triple
from lfmq.errors import BuildError, DeviceError, InputError, OutputExistsError

from conftest import SMALL

ARM = ("rpi5", "snapdragon-8-elite")
PROMPT = [1, 6, 1500, 220, 17, 900, 42, 7, 6, 300]  # ids < SMALL's vocab of 2048
N_TOKENS = 12

# ---------------------------------------------------------------------------------------------- fast: specs, args


def test_every_profile_has_a_checked_build_spec() -> None:
    specs = {name: build_spec(p) for name, p in builtin_profiles().items()}
    assert specs["rpi5"].cpu == "generic+v8_2a+dotprod+fullfp16" and specs["rpi5"].qemu_cpu == "cortex-a76"
    assert specs["rpi5"].target == specs["snapdragon-8-elite"].target == "aarch64-linux-musl"
    snap = specs["snapdragon-8-elite"]
    assert "i8mm" in snap.requires and "sve" not in snap.cpu and not any("sve" in f for f in snap.requires)
    assert "sve" in get_profile("snapdragon-8-elite").cpu["lacks"]
    assert snap.qemu_cpu == "max"
    for x86 in ("ryzen-ai-max-395", "ryzen-ai-9-hx-370"):
        assert specs[x86].toolchain == "gcc" and specs[x86].march == "znver4"
    host = build_spec(get_profile("host"))
    assert host.march == "native" and host.toolchain == "gcc"


def _profile(build: dict[str, Any], lacks: list[str] | None = None) -> Profile:
    return Profile("x", "x", "", {"arch": "aarch64", "lacks": lacks or []}, {}, build, {}, {})


@pytest.mark.parametrize("table, lacks, message", [
    ({}, [], "has no target"),
    ({"target": "aarch64-linux-musl", "toolchain": "cc"}, [], "toolchain 'cc'"),
    ({"target": "aarch64-linux-musl", "toolchain": "zig"}, [], "needs cpu"),
    ({"target": "x86_64-linux-gnu", "toolchain": "gcc"}, [], "needs march"),
    ({"target": "aarch64-linux-musl", "toolchain": "zig", "cpu": "generic+v8_2a+sve", "requires": ["asimd", "sve"]},
     ["sve"], "requires sve, which the device lacks"),
])
def test_bad_build_tables_are_refused(table: dict[str, Any], lacks: list[str], message: str) -> None:
    with pytest.raises(InputError, match=message):
        build_spec(_profile(table, lacks))


def _tc(name: str, path: str = "/usr/bin/gcc") -> Toolchain:
    return Toolchain(name, "1.0", path, "cmake", "3.25", "Ninja")


def test_zig_cross_args_are_static_generic_and_tuned(tmp_path: Path) -> None:
    args = cmake_args(build_spec(get_profile("rpi5")), _tc("zig", "/zig"), tmp_path)
    for a in ("-DCMAKE_SYSTEM_NAME=Linux", "-DCMAKE_SYSTEM_PROCESSOR=aarch64", "-DGGML_NATIVE=OFF",
              "-DGGML_OPENMP=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_CURL=OFF", "-DCMAKE_BUILD_TYPE=Release",
              "-DGGML_CPU_ARM_ARCH=generic+v8_2a+dotprod+fullfp16", "-DCMAKE_EXE_LINKER_FLAGS=-static -s",
              f"-DCMAKE_C_COMPILER={tmp_path / 'cc'}"):
        assert a in args


def test_x86_args_native_minus_amx_and_profile_isa() -> None:
    host = cmake_args(build_spec(get_profile("host")), _tc("gcc"))
    assert "-DGGML_NATIVE=ON" in host
    if build_spec(get_profile("host")).arch == "x86_64":
        assert "-DCMAKE_C_FLAGS=-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" in host
    zen = cmake_args(build_spec(get_profile("ryzen-ai-max-395")), _tc("gcc"))
    assert "-DGGML_NATIVE=OFF" in zen and "-DGGML_AVX512=ON" in zen and "-DGGML_AVX512_BF16=ON" in zen
    assert any(a.startswith("-DCMAKE_C_FLAGS=-march=znver4") for a in zen)


def test_a_gcc_without_the_profiles_march_takes_its_fallback(tmp_path: Path) -> None:
    from lfmq.devices.toolchain import resolve_march

    gcc = tmp_path / "gcc"  # a gcc 12.2: knows x86-64-v4, not znver4
    gcc.write_text('#!/bin/sh\ncase "$1" in -march=znver4) echo "bad value for -march" >&2; exit 1;; esac\nexit 0\n')
    gcc.chmod(0o755)
    spec = build_spec(get_profile("ryzen-ai-9-hx-370"))
    assert resolve_march(spec, _tc("gcc", str(gcc))).march == "x86-64-v4"
    gcc.write_text("#!/bin/sh\nexit 0\n")
    assert resolve_march(spec, _tc("gcc", str(gcc))).march == "znver4"


def test_ndk_route_cmake_arguments_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """NDK route, CMake arguments only: no Android NDK is installable here, so no NDK build ran."""
    ndk = tmp_path / "android-ndk-r27c"
    (ndk / "build" / "cmake").mkdir(parents=True)
    (ndk / "build" / "cmake" / "android.toolchain.cmake").write_text("# stand-in\n")
    (ndk / "source.properties").write_text("Pkg.Desc = Android NDK\nPkg.Revision = 27.2.12479018\n")
    monkeypatch.setenv("ANDROID_NDK", str(ndk))
    spec = build_spec(get_profile("snapdragon-8-elite"))
    tc = find_toolchain(spec)
    assert (tc.name, tc.version) == ("ndk", "27.2.12479018")
    args = cmake_args(spec, tc)
    for a in (f"-DCMAKE_TOOLCHAIN_FILE={ndk}/build/cmake/android.toolchain.cmake", "-DANDROID_ABI=arm64-v8a",
              "-DANDROID_PLATFORM=android-28", "-DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+fp16+i8mm",
              "-DGGML_NATIVE=OFF", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_OPENMP=OFF"):
        assert a in args
    assert target_triple(spec, tc) == "aarch64-linux-android28"
    assert find_toolchain(build_spec(get_profile("rpi5"))).name == "zig"  # only phone profiles take the NDK


def test_missing_zig_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ziglang", None)
    with pytest.raises(BuildError, match="pip install ziglang"):
        find_toolchain(build_spec(get_profile("rpi5")))


def test_build_tool_progress_and_last_error_line() -> None:
    script = ("import sys\nfor i in range(1, 4): print(f'[{i}/5] Building CXX object x{i}.o')\n"
              "print('[ 80%] Linking')\nprint('src/x.cpp:3:1: error: expected ; after expression')\n"
              "print('ninja: build stopped: subcommand failed.')\nsys.exit(1)\n")
    seen: list[tuple[str, int, int]] = []
    with pytest.raises(BuildError) as e:
        B._run("compile", [sys.executable, "-c", script], {}, lambda what, d, t: seen.append((what, d, t)))
    assert seen == [("compile", 1, 5), ("compile", 2, 5), ("compile", 3, 5), ("compile", 80, 100)]
    assert str(e.value) == "compile failed (python exit 1): src/x.cpp:3:1: error: expected ; after expression"
    assert "\n" not in str(e.value)


def test_out_dir_must_be_empty_without_force(tmp_path: Path) -> None:
    (tmp_path / "old").write_text("x")
    with pytest.raises(OutputExistsError, match="--force"):
        B._check_out(tmp_path, force=False)
    assert B._check_out(tmp_path, force=True) == tmp_path
    assert B._check_out(tmp_path / "new", force=False) == tmp_path / "new"


def test_runner_sources_hold_every_local_include_and_ship_in_the_wheel() -> None:
    """The runner is lfmq_run.cpp and its headers: each `#include "..."` of one is another (so that the build copies
    it and the cache key hashes it), and pyproject's package data ships every kind of file among them."""
    import re
    import tomllib

    sources = B.runner_sources()
    included = {name for data in sources.values() for name in re.findall(rb'#include "([^"]+)"', data)}
    own = {name for name in included if not name.startswith((b"llama", b"ggml"))}  # not llama.cpp's headers
    assert own and own <= {n.encode() for n in sources}
    assert {"lfmq_run.cpp", "CMakeLists.txt", "session.h"} <= set(sources)
    data = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    globs = data["tool"]["setuptools"]["package-data"]["lfmq"]
    assert {Path(n).suffix for n in sources} <= {g.rsplit("*", 1)[-1] for g in globs}


def test_changelog_names_the_vendored_commit() -> None:
    from lfmq.devices.llama_src import changelog_commit

    text = "## [Unreleased]\n\n## [0.3.36]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@0c1e57098\n\n" \
           "## [0.3.35]\n\n- feat: update llama.cpp to ggml-org/llama.cpp@4df29be4f\n"
    assert changelog_commit(text, "0.3.36") == "0c1e57098"
    assert changelog_commit(text, "0.3.35") == "4df29be4f"
    assert changelog_commit(text, "0.1.0") == ""


def test_sigill_message_names_the_feature_and_the_profile_that_fits() -> None:
    manifest = {"profile": "snapdragon-8-elite", "arch": "aarch64", "cpu": "generic+v8_6a+dotprod+i8mm+fullfp16",
                "requires": list(build_spec(get_profile("snapdragon-8-elite")).requires)}
    msg = sigill_message(manifest, QEMU_CPUS["cortex-a76"], "qemu's cortex-a76")
    assert msg == ("the snapdragon-8-elite build needs i8mm, bf16, which qemu's cortex-a76 lacks; "
                   "build for a profile that fits: lfmq build rpi5")
    assert fitting_profiles(QEMU_CPUS["max"], "aarch64") == ["snapdragon-8-elite", "rpi5"]
    assert fitting_profiles(QEMU_CPUS["cortex-a72"], "aarch64") == []
    assert sigill_message(manifest, QEMU_CPUS["cortex-a53"], "a Cortex-A53").endswith("no built-in profile fits this CPU")


# ---------------------------------------------------------------------------------------------- slow: real builds

needs_qemu = pytest.mark.skipif(shutil.which("qemu-aarch64") is None,
                                reason="qemu-user missing: run scripts/install-system-deps.sh (make test does)")


@pytest.fixture(scope="session")
def bundles() -> dict[str, B.BuildResult]:
    """The Pi 5, Snapdragon and host bundles (cold: a few minutes each on 2 cores; then from the cache)."""
    return {name: B.build(name) for name in (*ARM, "host")}


@needs_qemu
def test_qemu_cpu_table_is_what_qemu_exposes(tmp_path: Path) -> None:
    """QEMU_CPUS against getauxval(AT_HWCAP/HWCAP2) of a static probe run under each qemu CPU model."""
    from lfmq.devices.llama_src import cache_root
    from lfmq.devices.toolchain import zig_binary

    names1 = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm jscvt fcma lrcpc dcpop " \
             "sha3 sm3 sm4 asimddp sha512 sve asimdfhm dit uscat ilrcpc flagm ssbs sb paca pacg".split()
    names2 = "dcpodp sve2 sveaes svepmull svebitperm svesha3 svesm4 flagm2 frint svei8mm svef32mm svef64mm " \
             "svebf16 i8mm bf16 dgh rng bti mte ecv afp rpres mte3 sme".split()
    src = tmp_path / "hwcap.c"
    src.write_text('#include <stdio.h>\n#include <sys/auxv.h>\nint main(void){printf("%lu %lu\\n",'
                   "getauxval(AT_HWCAP), getauxval(AT_HWCAP2)); return 0;}\n")
    env = {"ZIG_GLOBAL_CACHE_DIR": str(cache_root() / "zig"), "PATH": "/usr/bin:/bin"}
    subprocess.run([zig_binary(), "cc", "-target", "aarch64-linux-musl", "-O1", str(src), "-o", str(tmp_path / "hw")],
                   check=True, env=env, capture_output=True)
    for cpu, table in QEMU_CPUS.items():
        out = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(tmp_path / "hw")], capture_output=True, text=True)
        h1, h2 = map(int, out.stdout.split())
        seen = [n for i, n in enumerate(names1) if h1 >> i & 1] + [n for i, n in enumerate(names2) if h2 >> i & 1]
        assert tuple(f for f in seen if f != "evtstrm") == table, cpu


def test_second_build_is_instant_and_manifest_complete(bundles: dict[str, B.BuildResult]) -> None:
    for name, first in bundles.items():
        again = B.build(name)
        assert again.cached and again.seconds < 2.0 and again.bundle == first.bundle
        m = again.manifest
        assert m["profile"] == name and m["llama_cpp"]["commit"] == "0c1e57098"
        assert m["llama_cpp_python"] == "0.3.36" and m["lfmq"] == lfmq.__version__
        assert m["seconds"] > 0 and m["toolchain"]["version"]
        for file, info in m["files"].items():
            assert B._sha256(again.bundle / file) == info["sha256"]
    assert bundles["rpi5"].manifest["toolchain"]["name"] == "zig"
    assert bundles["rpi5"].manifest["target"] == "aarch64-linux-musl"
    assert bundles["snapdragon-8-elite"].manifest["cpu"] == "generic+v8_6a+dotprod+i8mm+fullfp16"


def _elf(path: Path) -> tuple[int, bool]:
    """(e_machine, has a PT_INTERP program header) of a 64-bit little-endian ELF file."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF"
    machine = struct.unpack_from("<H", data, 18)[0]
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    interp = any(struct.unpack_from("<I", data, phoff + i * phentsize)[0] == 3 for i in range(phnum))
    return machine, interp


def test_arm_bundles_are_static_stripped_aarch64(bundles: dict[str, B.BuildResult]) -> None:
    for name in ARM:
        runner = bundles[name].runner
        assert _elf(runner) == (183, False), name  # EM_AARCH64, no dynamic loader: runs from adb shell as is
        assert runner.stat().st_size < 20e6, "stripped"


def test_out_dir_gets_a_copy(bundles: dict[str, B.BuildResult], tmp_path: Path) -> None:
    out = B.build("rpi5", tmp_path / "bundle")
    assert out.cached and out.bundle == tmp_path / "bundle"
    assert sorted(p.name for p in out.bundle.iterdir()) == sorted([*out.manifest["files"], "manifest.json"])
    with pytest.raises(OutputExistsError):
        B.build("rpi5", tmp_path / "bundle")
    assert B.build("rpi5", tmp_path / "bundle", force=True).cached


# ---------------------------------------------------------------------------------------------- models and runs


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A small LFM2 (hidden 256, vocab 2048) as F32, Q4_0 and Q8_0: rows that hit the repacked Q4_0 kernels."""
    from lfmq.quantize import quantize

    folder = tmp_path_factory.mktemp("build-models")
    lfmq.synth("tiny", folder / "ckpt", overrides=SMALL)
    f32 = lfmq.convert(folder / "ckpt", folder / "small-F32.gguf", outtype="f32").path
    out = {"F32": f32}
    for r in quantize(f32, ["Q4_0", "Q8_0"], folder):
        out[r.type] = r.path
    return out


def _tokens(events: list[dict[str, Any]]) -> list[int]:
    done = events[-1]
    assert done["event"] == "done", events
    assert [e["id"] for e in events[:-1]] == done["tokens"]
    return done["tokens"]


def _generate_argv(model: Path, prompt: list[int] = PROMPT, n: int = N_TOKENS, top: int = 5) -> list[str]:
    return ["lfmq-run", "generate", "-m", str(model), "--tokens", ",".join(map(str, prompt)), "-n", str(n),
            "-t", "2", "-c", "256", "--ignore-eos", "--top", str(top)]


def _host_run(bundle: B.BuildResult, argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bundle.bundle / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300)


def _events(out: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert out.returncode == 0, (out.stdout, out.stderr[-2000:])
    return [json.loads(line) for line in out.stdout.splitlines()]


@pytest.fixture(scope="session")
def host_tokens(bundles: dict[str, B.BuildResult], models: dict[str, Path]) -> dict[str, list[int]]:
    return {q: _tokens(_events(_host_run(bundles["host"], _generate_argv(m)))) for q, m in models.items()}


def test_host_runner_matches_the_python_binding(host_tokens: dict[str, list[int]], models: dict[str, Path]) -> None:
    """The reference itself: lfmq-run built here decodes what llama-cpp-python (same llama.cpp) decodes."""
    import llama_cpp
    import numpy as np

    for q, model in models.items():
        llm = llama_cpp.Llama(str(model), n_ctx=256, n_batch=256, verbose=False, n_threads=2, logits_all=True)
        try:
            ids: list[int] = []
            llm.eval(PROMPT)
            for _ in range(N_TOKENS):
                ids.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
                llm.eval([ids[-1]])
        finally:
            llm.close()
        assert ids == host_tokens[q], q


# Measured on this llama.cpp with the small random-weight model: the ARM builds' logits differ from x86's by up to
# 8e-4 for F32 and 0.094 for Q4_0/Q8_0 (x86 itself moves 0.012 between 2 threads and 1: which rows take the repacked
# GEMM and which the GEMV path, whose activation rounding differs). Random weights leave near-ties (top-2 margins of
# 0.01) on most greedy paths, so a rounding difference may flip one; a real miscompile moves logits far more.
LOGIT_TOL = {"F32": 2e-3, "Q4_0": 0.15, "Q8_0": 0.15}


def _compare(device: Any, host: Any, q: str) -> tuple[int, float]:
    """Greedy decoding on the device and on the host from PROMPT. Their tokens must be equal, except where the host's
    own choice was a near-tie (margin under LOGIT_TOL); there both continue from the host's token. Every shared top
    logit must agree within LOGIT_TOL. Returns (near-tie flips, largest logit difference)."""
    prefix, done, flips, worst = list(PROMPT), 0, 0, 0.0
    while done < N_TOKENS:
        h, d = host(prefix, N_TOKENS - done), device(prefix, N_TOKENS - done)
        for eh, ed in zip(h[:-1], d[:-1]):
            th, td = dict(map(tuple, eh["top"])), dict(map(tuple, ed["top"]))
            worst = max(worst, max(abs(th[k] - td[k]) for k in th.keys() & td.keys()))
            done += 1
            prefix.append(eh["id"])
            if eh["id"] != ed["id"]:
                assert ed["id"] in th and th[eh["id"]] - th[ed["id"]] < LOGIT_TOL[q], (q, done, eh, ed)
                flips += 1
                break
    assert worst < LOGIT_TOL[q], (q, worst)
    return flips, worst


@needs_qemu
@pytest.mark.parametrize("profile", ARM)
@pytest.mark.parametrize("quant", ["F32", "Q4_0", "Q8_0"])
def test_greedy_tokens_under_qemu_equal_the_host(profile: str, quant: str, bundles: dict[str, B.BuildResult],
                                                 models: dict[str, Path], host_tokens: dict[str, list[int]]) -> None:
    model = models[quant]
    out = _events(qemu_run(bundles[profile].bundle, _generate_argv(model), timeout=600))
    if quant == "F32":  # no quantized activations: the tokens are equal outright
        assert _tokens(out) == host_tokens[quant]

    def device(prefix: list[int], n: int) -> list[dict[str, Any]]:
        return _events(qemu_run(bundles[profile].bundle, _generate_argv(model, prefix, n), timeout=600))

    def host(prefix: list[int], n: int) -> list[dict[str, Any]]:
        return _events(_host_run(bundles["host"], _generate_argv(model, prefix, n)))

    flips, worst = _compare(device, host, quant)
    print(f"{profile} {quant}: {flips} near-tie flips in {N_TOKENS} tokens, max |dlogit| {worst:.2e}")
    if quant == "F32":
        assert flips == 0


@pytest.fixture(scope="session")
def trained_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Path], list[list[int]]]:
    """The trained tool-calling fixture as F32, Q4_0 and Q8_0, and three of its held-out prompts as lfmq renders
    them (three tool calls): a model whose greedy answers have real margins. (Its extraction answers hold near-ties:
    one of them flips under Q8_0 at a top-2 margin of 0.001 on the host, which the random-weight test above
    allows.)"""
    from lfmq.quantize import quantize

    fixture = Path(__file__).parent / "fixtures" / "lfm2-tools-tiny"
    folder = tmp_path_factory.mktemp("trained-build")
    f32 = lfmq.convert(fixture, folder / "fx-F32.gguf", outtype="f32").path
    out = {"F32": f32, **{r.type: r.path for r in quantize(f32, ["Q4_0", "Q8_0"], folder)}}
    cases = [json.loads(line) for line in (fixture / "tasks.jsonl").read_text().splitlines()]
    picked = [c for c in cases if "tools" in c][:3]
    with lfmq.load(f32, n_ctx=512, threads=1) as m:
        prompts = [m.tokenize(m.render(c["messages"], tools=[{"type": "function", "function": t}
                                                              for t in c.get("tools", [])] or None))
                   for c in picked]
    return out, prompts


@needs_qemu
@pytest.mark.parametrize("profile", ARM)
def test_trained_model_answers_identically_under_qemu(profile: str, bundles: dict[str, B.BuildResult],
                                                      trained_models: tuple[dict[str, Path], list[list[int]]]) -> None:
    """On a model with real margins, each ARM build under qemu decodes exactly the host build's greedy tool calls,
    for F32, Q4_0 and Q8_0: no near-tie allowance (the random-weight model above needs one)."""
    models, prompts = trained_models
    for (quant, model), prompt in zip(models.items(), prompts):   # one prompt each: emulated prefill is slow
        argv = ["lfmq-run", "generate", "-m", str(model), "--tokens", ",".join(map(str, prompt)), "-n", "48",
                "-t", "2", "-c", "512"]
        there = _tokens(_events(qemu_run(bundles[profile].bundle, argv, timeout=600)))
        here = _tokens(_events(_host_run(bundles["host"], argv)))
        assert there == here and len(here) > 5, (profile, quant, prompt)


@needs_qemu
def test_snapdragon_build_on_a_pi5_cpu_is_a_clear_sigill(bundles: dict[str, B.BuildResult],
                                                         models: dict[str, Path]) -> None:
    with pytest.raises(DeviceError) as e:
        qemu_run(bundles["snapdragon-8-elite"].bundle, _generate_argv(models["Q4_0"]), cpu="cortex-a76", timeout=600)
    assert str(e.value) == ("lfmq-run died with SIGILL (illegal instruction) on qemu's cortex-a76: the "
                            "snapdragon-8-elite build needs i8mm, bf16, which qemu's cortex-a76 lacks; "
                            "build for a profile that fits: lfmq build rpi5")


# ---------------------------------------------------------------------------------------------- the runner contract


def test_bench_json_has_the_keys_of_a_python_bench_case(bundles: dict[str, B.BuildResult],
                                                        models: dict[str, Path]) -> None:
    from dataclasses import asdict, fields

    from lfmq.bench.case import Case, CaseResult, run

    argv = ["lfmq-run", "bench", "-m", str(models["Q4_0"]), "-p", "32", "-n", "8", "-d", "16", "-r", "2", "-t", "2",
            "-b", "64", "-ub", "32", "-c", "512", "--mmap", "0", "-fa", "1", "--ttft-tokens", "1,6,1500,220"]
    out = _events(_host_run(bundles["host"], argv))
    assert len(out) == 1
    got = out[0]
    knobs = {"n_ctx": 512, "threads": 2, "n_batch": 64, "n_ubatch": 32, "use_mmap": False, "flash_attn": True}
    ref = run(Case(str(models["Q4_0"]), 32, 8, 16, 2, knobs))
    assert set(got) == {f.name for f in fields(CaseResult)} | {"system_info", "runner"}
    assert got["runner"] == "lfmq-run" and len(got["samples_ns"]) == 2 and all(s > 0 for s in got["samples_ns"])
    assert got["settings"] == {**knobs, "type_k": "f16", "type_v": "f16", "n_seq_max": 1}
    # every knob the runner reports as the Python case does; knobs it has no use for (adapters) keep their defaults
    assert got["settings"] == {k: v for k, v in asdict(ref.settings).items() if k in got["settings"]}
    assert CaseResult.from_dict(got).settings == ref.settings  # the bench report reads it as it reads its own
    for k in ("model_type", "model_size", "model_n_params"):
        assert got[k] == getattr(ref, k), k
    assert got["vmhwm"] >= got["vmrss"] > 0 and got["ttft_ms"] > 0 and got["load_ms"] > 0
    assert "CPU" in got["system_info"]


@needs_qemu
@pytest.mark.parametrize("profile, i8mm", [("rpi5", False), ("snapdragon-8-elite", True)])
def test_bench_runs_under_qemu_with_the_profiles_kernels(profile: str, i8mm: bool, bundles: dict[str, B.BuildResult],
                                                         models: dict[str, Path]) -> None:
    argv = ["lfmq-run", "bench", "-m", str(models["Q4_0"]), "-p", "16", "-n", "4", "-r", "1", "-t", "2", "-c", "256"]
    got = _events(qemu_run(bundles[profile].bundle, argv, timeout=600))[0]
    assert got["ttft_ms"] > 0 and len(got["samples_ns"]) == 1  # TTFT from the built-in chat template
    assert "DOTPROD = 1" in got["system_info"] and "SVE" not in got["system_info"]
    assert ("MATMUL_INT8 = 1" in got["system_info"]) == i8mm


@pytest.mark.parametrize("argv, code, message", [
    (["generate", "-m", "/nonexistent.gguf", "--tokens", "1,2", "-n", "2"], 1, "cannot load the model"),
    (["generate", "-m", "x.gguf", "-n", "2"], 2, "one of --tokens"),
    (["bench", "-m", "x.gguf", "--frobnicate", "1"], 2, "unknown option --frobnicate"),
    (["bench", "-m", "x.gguf", "-p", "many"], 2, "-p takes an integer"),
    (["explode"], 2, "unknown command explode"),
])
def test_runner_failures_are_one_json_line(bundles: dict[str, B.BuildResult], argv: list[str], code: int,
                                           message: str) -> None:
    out = _host_run(bundles["host"], ["lfmq-run", *argv])
    assert out.returncode == code
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["event"] == "error"
    assert message in json.loads(lines[0])["message"]


def test_prompt_text_streams_tokens_with_text(bundles: dict[str, B.BuildResult], models: dict[str, Path]) -> None:
    out = _events(_host_run(bundles["host"], ["lfmq-run", "generate", "-m", str(models["Q8_0"]), "--prompt",
                                              "Hello world", "-n", "5", "--ignore-eos", "-t", "2"]))
    assert len(out) == 6 and all(isinstance(e["text"], str) for e in out[:-1])
    assert out[-1]["vmhwm"] > 0 and out[-1]["ttft_ms"] > 0
