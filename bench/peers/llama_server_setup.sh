#!/usr/bin/env bash
# llama.cpp's own HTTP server (`llama-server`: continuous batching over parallel slots), a second LLM
# peer for `uv run python -m infergraph.bench.llm_peers`. Not a project dependency.
#
#   bash bench/peers/llama_server_setup.sh        # build once into $PEERS/llama-server (~15 min on 2 cores)
#
# It compiles the llama.cpp source vendored in the llama-cpp-python sdist that
# bench/peers/llama_cpp_setup.sh downloads (the same llama.cpp as that peer), target llama-server
# only, native CPU flags, no curl. The build takes both cores for its whole length: run it when
# nothing is measured. The peer then runs as:
#   $PEERS/llama-server/build/bin/llama-server -m <SmolLM2-135M-Instruct.Q4_1.gguf> -t 2 -tb 2 \
#       -np 16 -c 32768 --host 127.0.0.1 --port 8013      # 16 slots of 2,048 tokens
set -euo pipefail
PEERS="${PEERS:-/tmp/peers}"
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
SDIST="$PEERS/dl_llama/llama_cpp_python-$VERSION.tar.gz"
OUT="$PEERS/llama-server"
BIN="$OUT/build/bin/llama-server"

if [ -x "$BIN" ]; then
  echo "llama-server already built: $BIN"
  exit 0
fi
if [ ! -f "$SDIST" ]; then
  mkdir -p "$PEERS/dl_llama"
  python3 -m pip download -q --no-deps --no-binary llama-cpp-python -d "$PEERS/dl_llama" "llama-cpp-python==$VERSION"
fi
command -v cmake >/dev/null 2>&1 || PATH="$PEERS/venv_llama/bin:$PATH"  # the other peer's pip cmake
rm -rf "$OUT" && mkdir -p "$OUT"
tar xzf "$SDIST" -C "$OUT" --strip-components=3 "llama_cpp_python-$VERSION/vendor/llama.cpp"
cd "$OUT"
rm -f .git  # the sdist keeps the submodule's .git pointer; CMake only warns about it
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF > "$OUT/cmake.log"
echo "building llama-server (log: $OUT/build.log)"
cmake --build build --target llama-server -j"$(nproc)" > "$OUT/build.log"
echo "built: $BIN"
