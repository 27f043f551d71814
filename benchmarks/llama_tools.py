"""Build llama.cpp's own tools (llama-quantize, llama-imatrix, llama-perplexity, llama-bench, llama-batched-bench,
llama-server)
from the tree that llama-cpp-python 0.3.36 vendors, with the same flags lfmq's binding is built with, cached under
benchmarks/out (one build at a time: a lock file, as several benchmarks may ask at once).

    .venv/bin/python benchmarks/llama_tools.py [TARGET ...]     # prints the bin folder

Benchmarks import `tool(name)` to get a path; the first call builds (several minutes on 2 cores), later calls reuse.
"""

from __future__ import annotations

import fcntl
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

VERSION = "0.3.36"
OUT = Path(__file__).resolve().parent / "out"
SDIST = OUT / f"llama_cpp_python-{VERSION}.tar.gz"
TREE = OUT / "llama.cpp-src" / f"llama_cpp_python-{VERSION}" / "vendor" / "llama.cpp"
BUILD = OUT / "llama.cpp-build"
TARGETS = ("llama-quantize", "llama-imatrix", "llama-perplexity", "llama-bench", "llama-batched-bench", "llama-server")
# same as scripts/install-llama-cpp-python.sh: native, minus AMX (its matmul segfaults on these Xeons)
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" if platform.machine() == "x86_64" else ""


def source_tree() -> Path:
    if (TREE / "CMakeLists.txt").exists():
        return TREE
    if not SDIST.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={VERSION}", "-d", str(OUT)], check=True)
    prefix = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
    with tarfile.open(SDIST) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
        tar.extractall(TREE.parents[2], members=members, filter="data")
    return TREE


def build(targets: tuple[str, ...] = TARGETS) -> Path:
    """Configure once, build the targets that are missing; returns the bin folder."""
    bindir = BUILD / "bin"
    if all((bindir / t).exists() for t in targets):
        return bindir
    OUT.mkdir(parents=True, exist_ok=True)
    with (OUT / "llama-tools.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _build(targets, bindir)


def _build(targets: tuple[str, ...], bindir: Path) -> Path:
    missing = [t for t in targets if not (bindir / t).exists()]
    if not missing:
        return bindir
    tree = source_tree()
    cache = BUILD / "CMakeCache.txt"
    # llama-server is a target only when configured in (a cache made before it was one is configured again)
    if not cache.exists() or "LLAMA_BUILD_SERVER:BOOL=ON" not in cache.read_text():
        subprocess.run(["cmake", "-S", str(tree), "-B", str(BUILD), "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                        f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}", "-DLLAMA_CURL=OFF",
                        "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_SERVER=ON",
                        "-DBUILD_SHARED_LIBS=OFF"], check=True)
    subprocess.run(["cmake", "--build", str(BUILD), "-j2", "--target", *missing], check=True)
    return bindir


def tool(name: str) -> Path:
    return build((name,)) / name


if __name__ == "__main__":
    print(build(tuple(sys.argv[1:]) or TARGETS))
