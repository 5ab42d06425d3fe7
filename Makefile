.PHONY: serve test test-fast lint bench

serve:  ## set up .venv and serve the embedded SmolLM2 model on 127.0.0.1:38883
	scripts/setup.sh
	.venv/bin/dvai-bridge serve --backend mlx

test:  ## set up .venv with the dev tools, check style, and run the whole test suite
	scripts/setup.sh --dev
	$(MAKE) lint
	.venv/bin/python -m pytest -q

lint:  ## style and layering: ruff, ruff format, the import contract, mypy
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/lint-imports
	.venv/bin/mypy  # the whole package; strict on core and engine ([tool.mypy] in pyproject.toml)

test-fast:  ## the tests that need no real model
	.venv/bin/python -m pytest -q -m "not e2e and not llama"

bench:
	.venv/bin/python benchmarks/foundation.py
