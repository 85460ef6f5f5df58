#!/bin/sh
# Builds llama.cpp's own command-line tools from source, offline, so that the
# GGUF files ar-pack writes can be judged by the reference implementation
# (tests/bench/gguf_kld.sh): llama-quantize, llama-imatrix, llama-perplexity,
# and a wrapper around convert_hf_to_gguf.py.
#
# Source: the llama-cpp-python source distribution on PyPI, which carries a
# recent llama.cpp under vendor/llama.cpp (pip's cache is used when it holds
# it). Build: CPU only, Release, static, only those three targets, niced and
# one job at a time (the machine's cores are shared). Not part of `make test`.
#
# Layout under $LLAMA_DIR (default build/llama.cpp, ignored by git):
#   src/        the vendored llama.cpp tree
#   cmake/      the CMake build folder
#   bin/        llama-quantize, llama-imatrix, llama-perplexity (links) and
#               convert_hf_to_gguf (runs the converter with build/venv's
#               Python and the gguf package of the same source tree)
# Idempotent: when the three tools are there it only rewrites the converter
# wrapper and prints the bin folder.
#
# Environment: LLAMA_DIR, LLAMA_PY_VERSION (llama-cpp-python version to fetch,
# default: the newest), LLAMA_JOBS (default 1), VENV (default build/venv).
# Usage: sh tests/bench/llama_tools.sh   (about 20-30 min on one core)
set -eu
cd "$(dirname "$0")/../.."
LD=${LLAMA_DIR:-build/llama.cpp}
VENV=${VENV:-build/venv}
JOBS=${LLAMA_JOBS:-1}
TOOLS="llama-quantize llama-imatrix llama-perplexity"

tools_built() { # and with the flags below (a change of flags rebuilds)
  for t in $TOOLS; do [ -x "$LD/bin/$t" ] || return 1; done
  [ "$(cat "$LD/cmake/ar-flags" 2>/dev/null)" = "$CMAKE_FLAGS" ]
}

# Unpack vendor/llama.cpp of the llama-cpp-python sdist into $LD/src.
fetch_source() {
  [ -f "$LD/src/CMakeLists.txt" ] && return 0
  mkdir -p "$LD/sdist"
  spec=llama-cpp-python${LLAMA_PY_VERSION:+==$LLAMA_PY_VERSION}
  set -- "$LD"/sdist/llama_cpp_python-*.tar.gz
  if [ ! -f "$1" ]; then
    "$VENV/bin/python" -m pip download -q --no-deps --no-binary :all: "$spec" -d "$LD/sdist"
    set -- "$LD"/sdist/llama_cpp_python-*.tar.gz
  fi
  top=$(basename "$1" .tar.gz)
  rm -rf "$LD/unpack" && mkdir -p "$LD/unpack"
  tar xzf "$1" -C "$LD/unpack" "$top/vendor/llama.cpp"
  rm -rf "$LD/src" && mv "$LD/unpack/$top/vendor/llama.cpp" "$LD/src" && rm -rf "$LD/unpack"
  echo "$top" > "$LD/src/FROM_SDIST"
}

# Configure and build the three tools. Everything not needed is switched off:
# no network code (curl, OpenSSL), no server, tests or examples, no GPU. Not
# -march=native: this machine's CPU reports AMX, but the kernel does not let
# processes use its tiles, and llama-perplexity died with SIGILL (tilezero in
# ggml's AMX matmul) on the first k-quant file. The x86-64-v3 set (AVX2, FMA,
# F16C, BMI2) runs here and on any recent x86 host the build folder is taken to.
CMAKE_FLAGS="-DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_BACKEND_DL=OFF -DGGML_NATIVE=OFF
  -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF
  -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF
  -DLLAMA_BUILD_NUMBER=0"
build_tools() {
  # shellcheck disable=SC2086
  nice -n 19 cmake -S "$LD/src" -B "$LD/cmake" $CMAKE_FLAGS > "$LD/cmake-configure.log" 2>&1 ||
    { tail -20 "$LD/cmake-configure.log" >&2; exit 1; }
  # shellcheck disable=SC2086
  nice -n 19 cmake --build "$LD/cmake" -j "$JOBS" --target $TOOLS > "$LD/cmake-build.log" 2>&1 ||
    { grep -m 5 -B 2 -A 5 'error' "$LD/cmake-build.log" >&2; exit 1; }
  echo "$CMAKE_FLAGS" > "$LD/cmake/ar-flags"
  mkdir -p "$LD/bin"
  for t in $TOOLS; do ln -sf "../cmake/bin/$t" "$LD/bin/$t"; done
}

# The converter needs numpy, torch, transformers (build/venv has them), the
# gguf package (the one in the same source tree matches its constants) and
# sentencepiece, which its Llama class imports before it looks for a
# tokenizer.model (pip-installed into the venv when missing). It runs through
# tests/bench/llama_convert.py, which names the GPT-2 pre-tokenizer of our
# home-made vocabularies (unknown to its hash table). Rewritten on every run.
write_converter() {
  "$VENV/bin/python" -c "import sentencepiece" 2>/dev/null ||
    "$VENV/bin/python" -m pip install -q "sentencepiece>=0.1.98,<0.3.0"
  src=$(cd "$LD/src" && pwd) py=$(cd "$VENV/bin" && pwd)/python shim=$(pwd)/tests/bench/llama_convert.py
  mkdir -p "$LD/bin"
  cat > "$LD/bin/convert_hf_to_gguf" <<EOF
#!/bin/sh
# convert_hf_to_gguf.py of $(cat "$LD/src/FROM_SDIST" 2>/dev/null || echo llama.cpp) (written by tests/bench/llama_tools.sh)
exec "$py" "$shim" "$src" "\$@"
EOF
  chmod +x "$LD/bin/convert_hf_to_gguf"
}

if tools_built; then write_converter; echo "$(cd "$LD/bin" && pwd)"; exit 0; fi
mkdir -p "$LD"
fetch_source
t0=$(date +%s)
build_tools
write_converter
tools_built || { echo "llama_tools.sh: build finished but tools are missing in $LD/bin" >&2; exit 1; }
echo "llama_tools.sh: built in $(( $(date +%s) - t0 )) s" >&2
echo "$(cd "$LD/bin" && pwd)"
