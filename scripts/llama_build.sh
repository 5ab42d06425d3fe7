#!/usr/bin/env bash
# Build and install llama-cpp-python into .venv portably, and prove it decodes on this machine.
#
# Why not `pip install llama-cpp-python`: its default build compiles llama.cpp with
# -march=native, so the wheel pip caches is tied to the CPU that built it (an AVX-512 wheel dies
# with SIGILL elsewhere), and on Intel CPUs with AMX it enables ggml's AMX kernels, which crash
# (SIGSEGV) on prompts of a few dozen tokens. Here the CPU features are fixed by architecture,
# never read from the build machine:
#   x86_64  "x86-64-v3": AVX, AVX2, FMA, F16C, BMI2 (every x86-64 CPU since 2013-2015);
#           no AVX-512 and no AMX. Where even that fails the check, "x86-64": SSE only.
#   arm64   the architecture's baseline (NEON); Metal on macOS as llama.cpp's default.
# The wheel is kept under ~/.cache/dvai-bridge/wheels, keyed by version and flags, not in pip's
# cache (whose key ignores CMAKE_ARGS), so a machine never reuses a wheel built another way.
# After installing, scripts/llama_check.py decodes a 96-token prompt in a child process; a build
# that cannot is replaced by the next, safer tier, and the script says what failed.
#
#   DVAI_LLAMA_CMAKE_ARGS="..."  build with these flags instead (e.g. -DGGML_CUDA=on), checked the same way.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=${LLAMA_CPP_VERSION:-0.3.36}
PY=.venv/bin/python
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/dvai-bridge/wheels
MARK=.venv/.dvai-llama-build
# Only what the bridge and its tests use: no vision (mtmd), tests, examples or server.
COMMON="-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_NATIVE=OFF"
X86_OFF="-DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF -DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"

tiers() {  # name<TAB>cmake args, safest last
  if [ -n "${DVAI_LLAMA_CMAKE_ARGS:-}" ]; then
    printf 'custom\t%s\n' "$DVAI_LLAMA_CMAKE_ARGS"; return
  fi
  case "$(uname -m)" in
    x86_64|amd64)
      printf 'x86-64-v3\t%s -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON %s\n' "$COMMON" "$X86_OFF"
      printf 'x86-64\t%s -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF -DGGML_BMI2=OFF %s\n' "$COMMON" "$X86_OFF" ;;
    *)
      printf 'baseline\t%s\n' "$COMMON" ;;
  esac
}

build() {  # $1 dir, $2 args: a wheel in $1, built once
  if ls "$1"/llama_cpp_python-*.whl >/dev/null 2>&1; then return 0; fi
  echo "Building llama-cpp-python ${VERSION} ($(basename "$1"); about 6 minutes on 2 cores, once per machine)..." >&2
  mkdir -p "$1.partial"
  CMAKE_ARGS="$2" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc 2>/dev/null || echo 2) \
    "$PY" -m pip wheel -q --no-deps --no-cache-dir --no-binary llama-cpp-python \
      -w "$1.partial" "llama-cpp-python==${VERSION}"
  rm -rf "$1" && mv "$1.partial" "$1"
}

while IFS=$'\t' read -r tier args; do
  key="llama-cpp-python-${VERSION}-$(uname -s)-$(uname -m)-${tier}-$(printf %s "$args" | sha256sum | cut -c1-12)"
  if [ "$(cat "$MARK" 2>/dev/null)" = "$key" ] && "$PY" -c "import llama_cpp" 2>/dev/null; then
    installed=1
  else
    installed=0
    build "$CACHE/$key" "$args"
    "$PY" -m pip install -q --force-reinstall --no-deps "$CACHE/$key"/llama_cpp_python-*.whl
    "$PY" -m pip install -q "diskcache>=5.6.1" "typing-extensions>=4.5" "numpy>=1.20" "jinja2>=2.11.3"
  fi
  if "$PY" scripts/llama_check.py; then
    echo "$key" > "$MARK"
    [ "$installed" = 1 ] || echo "llama-cpp-python ${VERSION} (${tier}) decodes on this machine." >&2
    exit 0
  fi
  rm -f "$MARK"
  echo "llama-cpp-python built as ${tier} cannot decode on this machine (see above); trying a safer build." >&2
done < <(tiers)

"$PY" -m pip uninstall -q -y llama-cpp-python || true
cat >&2 <<EOF
llama-cpp-python could not be made to decode on this machine; it is uninstalled, so the bridge
serves GGUF files through MLX and the llama tests are skipped. To try flags of your own:
  DVAI_LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF ..." scripts/llama_build.sh
EOF
exit 1
