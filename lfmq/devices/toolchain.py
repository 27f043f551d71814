"""Toolchains for device builds and the CMake arguments each needs.

- zig (PyPI `ziglang`): static aarch64-linux-musl binaries with no root and no system cross-compiler. zig reads
  -march/-mcpu as its own CPU names (generic+v8_2a+dotprod+fullfp16), so the profile's `cpu` goes to llama.cpp's
  GGML_CPU_ARM_ARCH in zig's spelling; zig is called directly (`python -m ziglang` makes configure slow).
- gcc: this machine's compiler for x86 builds: -march=native for `host` (minus AMX), a profile's -march otherwise.
- ndk: the Android NDK's CMake toolchain file, when ANDROID_NDK is set, for a phone profile (bionic, not musl)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from lfmq.devices.profiles import BuildSpec
from lfmq.errors import BuildError

# x86 /proc/cpuinfo flags -> the ggml option that turns the same ISA on (its kernels and its feature report)
GGML_X86 = {"avx2": "GGML_AVX2", "fma": "GGML_FMA", "f16c": "GGML_F16C", "avx512f": "GGML_AVX512",
            "avx512_vnni": "GGML_AVX512_VNNI", "avx512_bf16": "GGML_AVX512_BF16", "avx_vnni": "GGML_AVX_VNNI",
            "bmi2": "GGML_BMI2"}
# every build: a static, self-contained binary, no OpenMP runtime, no downloads, no debug info
COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_OPENMP=OFF", "-DLLAMA_CURL=OFF",
          "-DGGML_BACKEND_DL=OFF"]


@dataclass(frozen=True)
class Toolchain:
    """A compiler that builds one profile's target."""

    name: str           # zig, gcc, ndk
    version: str
    path: str           # the zig binary, gcc, or the NDK folder
    cmake: str
    cmake_version: str
    generator: str      # Ninja or Unix Makefiles

    def describe(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "cmake": self.cmake_version, "generator": self.generator}


def find_toolchain(spec: BuildSpec, prefer: str | None = None) -> Toolchain:
    """The toolchain for a build spec: the NDK when asked for (or ANDROID_NDK is set for an Android profile),
    else the spec's own. Missing tools raise BuildError saying how to get them."""
    cmake = shutil.which("cmake")
    if not cmake:
        raise BuildError("find toolchain: cmake is not installed: pip install cmake (or apt-get install cmake)")
    cmake_version = _first_line([cmake, "--version"]).split()[-1]
    generator = "Ninja" if shutil.which("ninja") else "Unix Makefiles"
    name = prefer or ("ndk" if spec.android_abi and os.environ.get("ANDROID_NDK") else spec.toolchain)
    if name == "zig":
        zig = zig_binary()
        return Toolchain("zig", _first_line([zig, "version"]), zig, cmake, cmake_version, generator)
    if name == "gcc":
        if spec.arch != _machine():
            raise BuildError(f"find toolchain: gcc here builds for {_machine()}, not {spec.arch}: use the zig toolchain")
        gcc = shutil.which("gcc")
        if not gcc or not shutil.which("g++"):
            raise BuildError("find toolchain: gcc/g++ are not installed: apt-get install build-essential")
        return Toolchain("gcc", _first_line([gcc, "-dumpfullversion"]), gcc, cmake, cmake_version, generator)
    if name == "ndk":
        return _ndk(cmake, cmake_version, generator, spec)
    raise BuildError(f"find toolchain: unknown toolchain {name!r} (zig, gcc or ndk)")


def zig_binary() -> str:
    """The zig executable inside the `ziglang` package (called directly: `python -m ziglang` is slow to start)."""
    try:
        import ziglang
    except ImportError:
        raise BuildError("find toolchain: zig is not installed: pip install ziglang "
                         "(or pip install 'lfmq[build]')") from None
    folder = Path(ziglang.__file__).parent
    zig = folder / ("zig.exe" if os.name == "nt" else "zig")
    if not zig.is_file():
        raise BuildError(f"find toolchain: the ziglang package has no zig binary in {folder}: pip install --force-reinstall ziglang")
    if not os.access(zig, os.X_OK):
        zig.chmod(zig.stat().st_mode | 0o111)
    return str(zig)


def _ndk(cmake: str, cmake_version: str, generator: str, spec: BuildSpec) -> Toolchain:
    ndk = os.environ.get("ANDROID_NDK", "")
    if not ndk or not (Path(ndk) / "build" / "cmake" / "android.toolchain.cmake").is_file():
        raise BuildError(f"find toolchain: ANDROID_NDK={ndk!r} is not an Android NDK "
                         "(no build/cmake/android.toolchain.cmake)")
    props = Path(ndk) / "source.properties"
    text = props.read_text() if props.is_file() else ""
    m = re.search(r"Pkg\.Revision\s*=\s*(\S+)", text)
    return Toolchain("ndk", m.group(1) if m else "unknown", ndk, cmake, cmake_version, generator)


def resolve_march(spec: BuildSpec, tc: Toolchain) -> BuildSpec:
    """The spec with a -march this gcc accepts: the profile's march_fallback when gcc does not know march."""
    if tc.name != "gcc" or spec.march == "native" or not spec.march_fallback:
        return spec
    probe = subprocess.run([tc.path, f"-march={spec.march}", "-x", "c", "-E", "-"], input="", capture_output=True,
                           text=True)
    if probe.returncode == 0:
        return spec
    return replace(spec, march=spec.march_fallback)


def cmake_args(spec: BuildSpec, tc: Toolchain, wrappers: Path | None = None) -> list[str]:
    """Configure arguments for one spec and toolchain (wrappers: the folder holding the zig cc/c++/ar scripts)."""
    args = [*COMMON, f"-G{tc.generator}"]
    if tc.name == "zig":
        if wrappers is None:
            raise ValueError("zig builds need the wrapper folder")
        args += ["-DCMAKE_SYSTEM_NAME=Linux", f"-DCMAKE_SYSTEM_PROCESSOR={spec.arch}",
                 f"-DCMAKE_C_COMPILER={wrappers / 'cc'}", f"-DCMAKE_CXX_COMPILER={wrappers / 'c++'}",
                 f"-DCMAKE_AR={wrappers / 'ar'}", f"-DCMAKE_RANLIB={wrappers / 'ranlib'}",
                 "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={spec.cpu}",
                 "-DCMAKE_EXE_LINKER_FLAGS=-static -s"]
    elif tc.name == "ndk":
        args += [f"-DCMAKE_TOOLCHAIN_FILE={Path(tc.path) / 'build' / 'cmake' / 'android.toolchain.cmake'}",
                 f"-DANDROID_ABI={spec.android_abi or 'arm64-v8a'}",
                 f"-DANDROID_PLATFORM={spec.android_platform or 'android-28'}",
                 "-DGGML_NATIVE=OFF", f"-DGGML_CPU_ARM_ARCH={spec.march}", "-DCMAKE_EXE_LINKER_FLAGS=-s"]
    else:
        flags = " ".join(spec.cflags)
        args += [f"-DCMAKE_C_COMPILER={tc.path}", f"-DCMAKE_CXX_COMPILER={shutil.which('g++') or 'g++'}",
                 "-DCMAKE_EXE_LINKER_FLAGS=-s"]
        if spec.march == "native":
            args += ["-DGGML_NATIVE=ON"]
        else:  # the profile's ISA: -march for the compiler, ggml's options so its kernels and report agree
            flags = f"-march={spec.march} {flags}".strip()
            args += ["-DGGML_NATIVE=OFF",
                     *sorted({f"-D{GGML_X86[f]}=ON" for f in spec.requires if f in GGML_X86})]
        if flags:
            args += [f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}"]
    return args


def target_triple(spec: BuildSpec, tc: Toolchain) -> str:
    if tc.name == "ndk":
        level = (spec.android_platform or "android-28").removeprefix("android-")
        return f"{spec.arch}-linux-android{level}"
    return spec.target


def write_zig_wrappers(folder: Path, zig: str, target: str) -> Path:
    """cc, c++, ar and ranlib scripts that run zig for one target (CMake takes one executable per tool)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, sub in (("cc", f"cc -target {target}"), ("c++", f"c++ -target {target}"), ("ar", "ar"),
                      ("ranlib", "ranlib")):
        path = folder / name
        path.write_text(f'#!/bin/sh\nexec "{zig}" {sub} "$@"\n')
        path.chmod(0o755)
    return folder


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BuildError(f"find toolchain: {' '.join(cmd)} failed: {e}") from None
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def _machine() -> str:
    m = os.uname().machine
    return "aarch64" if m == "arm64" else m
