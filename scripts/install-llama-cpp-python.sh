#!/usr/bin/env bash
# Install llama-cpp-python (compiled from source: PyPI has no wheel) into the given Python environment, building the
# wheel once per version and build flags into a cache outside the repo.
#
# On x86-64 the build keeps -march=native but switches AMX off: llama.cpp's AMX matmul segfaults on quantized
# weights on Sapphire Rapids-class CPUs (llama.cpp issue 20824, unfixed), which is what these machines are.
set -euo pipefail
PY=${1:?usage: install-llama-cpp-python.sh PYTHON}
VERSION=${LLAMA_CPP_PYTHON_VERSION:-0.3.36}
CACHE=${LFMQ_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lfmq/wheels}

flags=""
if [ "$(uname -m)" = "x86_64" ]; then
    flags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
args="${LFMQ_CMAKE_ARGS:-} -DCMAKE_C_FLAGS='$flags' -DCMAKE_CXX_FLAGS='$flags'"
key=$(printf '%s|%s|%s' "$VERSION" "$args" "$(uname -m)" | sha256sum | cut -c1-12)
dir="$CACHE/llama-cpp-python-$VERSION-$key"

if "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null \
   && [ -f "$("$PY" -c 'import sys; print(sys.prefix)')/.llama-cpp-build-$key" ]; then
    exit 0
fi
if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "building llama-cpp-python $VERSION from source (about 6-8 minutes on 2 cores, once per machine)..."
    mkdir -p "$dir.tmp"
    CMAKE_ARGS="$args" "$PY" -m pip wheel --no-cache-dir --no-deps -w "$dir.tmp" "llama-cpp-python==$VERSION"
    rm -rf "$dir" && mv "$dir.tmp" "$dir"
fi
"$PY" -m pip install --force-reinstall --no-deps "$dir"/llama_cpp_python-*.whl
"$PY" -m pip install "llama-cpp-python==$VERSION"   # its own dependencies (numpy, jinja2, diskcache)
touch "$("$PY" -c 'import sys; print(sys.prefix)')/.llama-cpp-build-$key"
