"""`lfmq devices recipe NAME`: the exact steps to build llama.cpp and llama-cpp-python for a device."""

from __future__ import annotations

from dataclasses import dataclass

from lfmq.devices.profiles import Profile

LLAMA_CPP_PYTHON = "0.3.36"
SDIST = f"llama_cpp_python-{LLAMA_CPP_PYTHON}"


@dataclass(frozen=True)
class Recipe:
    profile: str
    title: str
    steps: list[tuple[str, str]]  # (what, shell commands)
    notes: str


def _linux(p: Profile) -> list[tuple[str, str]]:
    args = p.build.get("cmake_args", "-DGGML_NATIVE=ON")
    return [
        ("toolchain", "sudo apt-get install -y build-essential cmake python3-venv python3-dev"),
        ("python binding (compiles llama.cpp; pin the version lfmq tests)",
         f'python3 -m venv .venv\nCMAKE_ARGS="{args}" .venv/bin/pip install --no-cache-dir '
         f"llama-cpp-python=={LLAMA_CPP_PYTHON}\n.venv/bin/pip install lfmq"),
        ("llama.cpp's own tools from the same source (llama-bench, llama-quantize, ...)",
         f"pip download --no-deps --no-binary :all: llama-cpp-python=={LLAMA_CPP_PYTHON} && tar xzf {SDIST}.tar.gz\n"
         f"cmake -S {SDIST}/vendor/llama.cpp -B build -DCMAKE_BUILD_TYPE=Release {args} -DLLAMA_CURL=OFF\n"
         "cmake --build build -j --target llama-bench llama-cli llama-quantize"),
        ("check", ".venv/bin/lfmq devices detect\n.venv/bin/lfmq bench MODEL.gguf --profile " + p.name),
    ]


def _android(p: Profile) -> list[tuple[str, str]]:
    args = p.build.get("cmake_args", "")
    abi, plat = p.build.get("android_abi", "arm64-v8a"), p.build.get("android_platform", "android-28")
    return [
        ("on a Linux or macOS host: the NDK (r27 or newer)", "export ANDROID_NDK=$HOME/android-ndk  # unpacked NDK"),
        ("cross-build llama.cpp's tools and libraries",
         f"pip download --no-deps --no-binary :all: llama-cpp-python=={LLAMA_CPP_PYTHON} && tar xzf {SDIST}.tar.gz\n"
         f"cmake -S {SDIST}/vendor/llama.cpp -B build-android \\\n"
         "  -DCMAKE_TOOLCHAIN_FILE=$ANDROID_NDK/build/cmake/android.toolchain.cmake \\\n"
         f"  -DANDROID_ABI={abi} -DANDROID_PLATFORM={plat} -DCMAKE_BUILD_TYPE=Release \\\n"
         f"  {args} -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF\n"
         "cmake --build build-android -j --target llama-bench llama-cli"),
        ("run on the phone over adb",
         "adb push build-android/bin/llama-bench MODEL.gguf /data/local/tmp/\n"
         "adb shell 'cd /data/local/tmp && ./llama-bench -m MODEL.gguf -t "
         f"{p.runtime.get('threads', 4)} -p 512 -n 128'"),
        ("the Python binding and lfmq on the phone: Termux (from F-Droid)",
         "pkg install -y python clang cmake ninja git\n"
         f'CMAKE_ARGS="{args}" pip install --no-cache-dir llama-cpp-python=={LLAMA_CPP_PYTHON}\n'
         f"pip install lfmq\nlfmq bench MODEL.gguf --profile {p.name}"),
    ]


def recipe(p: Profile) -> Recipe:
    """Build steps for a profile: the Android NDK and Termux route for phones, a native build elsewhere."""
    steps = _android(p) if p.build.get("android_abi") else _linux(p)
    return Recipe(p.name, p.title, steps, p.build.get("notes", ""))
