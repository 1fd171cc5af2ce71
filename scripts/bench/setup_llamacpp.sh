#!/usr/bin/env bash
# llama.cpp for the benchmark's llamacpp-f16 / llamacpp-q8_0 systems (issue 12):
# - llama-cpp-python, built from its PyPI sdist (llama.cpp's C/C++ sources inside; CPU only,
#   -march=native, OpenMP; its llava/mtmd library left out) into .venv-fixtures;
# - the same sdist unpacked under .bench/llamacpp/, for llama.cpp's own converter
#   (vendor/llama.cpp/convert_hf_to_gguf.py, which peers.py runs with its vendored gguf-py);
# - gguf from PyPI (GGUF reading, e.g. to check a converted file's tensor types).
# Takes 20-30 minutes on 2 cores. Idempotent: does nothing that is already done.
#
#     scripts/bench/setup_llamacpp.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
VERSION=0.3.36
PY=.venv-fixtures/bin/python
DIR=.bench/llamacpp
SDIST=$DIR/llama_cpp_python-$VERSION.tar.gz
mkdir -p "$DIR"
if [ ! -f "$SDIST" ]; then
    "$PY" -m pip download --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$DIR"
fi
if [ ! -f "$DIR/llama_cpp_python-$VERSION/vendor/llama.cpp/convert_hf_to_gguf.py" ]; then
    tar xzf "$SDIST" -C "$DIR"
fi
if ! "$PY" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$VERSION')" 2>/dev/null; then
    CMAKE_ARGS="-DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$PY" -m pip install --no-binary llama-cpp-python "$SDIST"
fi
"$PY" -m pip install --quiet gguf==0.19.0
"$PY" -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__, '|', llama_cpp.llama_print_system_info().decode().strip())"
