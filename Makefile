.PHONY: serve test test-fast bench

serve:  ## set up .venv and serve the embedded SmolLM2 model on 127.0.0.1:38883
	scripts/setup.sh
	.venv/bin/dvai-bridge serve --backend mlx

test:  ## set up .venv with the dev tools and run the whole test suite
	scripts/setup.sh --dev
	.venv/bin/python -m pytest -q

test-fast:  ## the tests that need no real model
	.venv/bin/python -m pytest -q -m "not e2e and not llama"

bench:
	.venv/bin/python benchmarks/foundation.py
