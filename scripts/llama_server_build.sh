#!/usr/bin/env bash
# Build llama-server, the peer benchmarks/llama.py measures our llama backend against, from the
# llama.cpp that the installed llama-cpp-python vendors (its sdist), for the CPU, with the same
# portable flags as scripts/llama_build.sh (x86-64-v3: AVX2/FMA/F16C/BMI2, no AVX-512, no AMX),
# so both run the same kernels. Nothing goes into the repository: the source, the build and the
# binary live in ~/.cache/dvai-bridge/llama-server (bin/llama-server). About 10 minutes on 2
# cores, once.
#
#   scripts/llama_server_build.sh            # then: python benchmarks/llama.py
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${LLAMA_CPP_VERSION:-0.3.36}
PY=.venv/bin/python
DIR=${XDG_CACHE_HOME:-$HOME/.cache}/dvai-bridge/llama-server
SRC="$DIR/llama_cpp_python-${VERSION}/vendor/llama.cpp"
BIN="$DIR/bin/llama-server"

if [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; then
  echo "$BIN is built." >&2
  exit 0
fi
mkdir -p "$DIR/bin"
if [ ! -d "$SRC" ]; then
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==${VERSION}" -d "$DIR"
  tar xzf "$DIR/llama_cpp_python-${VERSION}.tar.gz" -C "$DIR"
fi
case "$(uname -m)" in
  x86_64|amd64)
    CPU="-DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" ;;
  *) CPU="" ;;
esac
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$SRC/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF $CPU \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF >/dev/null
cmake --build "$SRC/build" --target llama-server -j "$(nproc 2>/dev/null || echo 2)"
cp "$SRC/build/bin/llama-server" "$BIN"
"$BIN" --version
