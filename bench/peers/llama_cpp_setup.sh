#!/usr/bin/env bash
# llama.cpp's OpenAI-compatible server (llama-cpp-python[server]) for the LLM peer benchmark
# (`uv run python -m infergraph.bench.llm_peers`), in its own venv: $PEERS/venv_llama (default
# /tmp/peers). Not a project dependency.
#
#   bash bench/peers/llama_cpp_setup.sh            # download, then build once (~10 min on 2 cores)
#   bash bench/peers/llama_cpp_setup.sh download   # only fetch the sdist and the server's wheels (no CPU)
#
# PyPI has no CPU wheel of llama-cpp-python, so pip builds llama.cpp from source (CMake, native CPU
# flags). The shared lib is all the server needs: the llava/mtmd library, tests, examples and tools
# are not built. The build takes both cores for its whole length: run it when nothing is measured.
# The peer then runs as:
#   $PEERS/venv_llama/bin/python -m llama_cpp.server --model <SmolLM2-135M-Instruct.Q4_1.gguf> \
#       --n_threads 2 --n_threads_batch 2 --n_ctx 2048 --host 127.0.0.1 --port 8012
# It answers one request at a time (requests queue on the server's lock).
set -euo pipefail
PEERS="${PEERS:-/tmp/peers}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
PY="${PYTHON:-python3}"
mkdir -p "$PEERS/dl_llama" "$PEERS/logs"
cd "$PEERS"

if [ -x venv_llama/bin/python ] && venv_llama/bin/python -c "import llama_cpp.server" 2>/dev/null; then
  echo "llama-cpp-python already built: $PEERS/venv_llama ($(venv_llama/bin/python -c 'import llama_cpp; print(llama_cpp.__version__)'))"
  exit 0
fi

# 1. Downloads only: the sdist and the server's dependencies, into $PEERS/dl_llama.
if [ ! -f "dl_llama/.done-$VERSION" ]; then
  if ! ls dl_llama/llama_cpp_python-"$VERSION".tar.gz >/dev/null 2>&1; then
    "$PY" -m pip download -q --no-deps --no-binary llama-cpp-python -d dl_llama "llama-cpp-python==$VERSION"
  fi
  [ -x venv_llama/bin/python ] || "$PY" -m venv venv_llama
  venv_llama/bin/pip install -q --upgrade pip
  venv_llama/bin/pip download -q -d dl_llama "llama-cpp-python[server]==$VERSION" \
    scikit-build-core cmake ninja 2>/dev/null || true
  # the server's dependencies and the build tools are wheels: installed now, the build only compiles
  venv_llama/bin/pip install -q --find-links dl_llama dl_llama/*.whl
  touch "dl_llama/.done-$VERSION"
fi
if [ "${1:-}" = "download" ]; then
  echo "downloaded into $PEERS/dl_llama"
  exit 0
fi

# 2. The build (both cores, ~10 min).
export CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}"
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_CURL=OFF}"
start=$(date +%s)
venv_llama/bin/pip install --no-build-isolation --find-links dl_llama "llama-cpp-python[server]==$VERSION" \
  > "logs/llama_cpp_build.log" 2>&1 || { tail -40 logs/llama_cpp_build.log; exit 1; }
venv_llama/bin/python -c "import llama_cpp.server, llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
echo "built in $(( $(date +%s) - start )) s: $PEERS/venv_llama (log: $PEERS/logs/llama_cpp_build.log)"
